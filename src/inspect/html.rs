//! The `--html` report: one self-contained page (inline CSS and SVG, no
//! script, no font, no image, nothing fetched; a Content-Security-Policy
//! forbids every load). A squarified treemap of the guest by directory,
//! each leaf split into what stays and what each profile would remove; a
//! bar chart of the largest packages; the artifact estimates before and
//! after cleaning; tables of profiles, files and duplicates. Every name
//! from the guest is HTML-escaped.

use std::fmt::Write;

use super::{Inspection, Node};
use crate::report::human_bytes;
use crate::text::human_signed;

/// One guest state shown (finalize shows two: before and after cleaning).
pub struct Snapshot<'a> {
    pub label: String,
    pub insp: &'a Inspection,
}

pub struct Page<'a> {
    pub title: String,
    pub snapshots: Vec<Snapshot<'a>>,
    /// (what, bytes) bars: allocated now, estimates before and after.
    pub estimates: Vec<(String, u64)>,
}

/// Escapes text for HTML element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\n' => o.push('\n'),
            c if c.is_control() => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

fn escb(b: &[u8]) -> String {
    esc(&String::from_utf8_lossy(b))
}

const PALETTE: [&str; 12] = [
    "#e6194b", "#f58231", "#d4a017", "#3cb44b", "#1fa2c4", "#4363d8", "#911eb4", "#f032e6",
    "#9a6324", "#800000", "#469990", "#808000",
];
const KEPT: [&str; 4] = ["#b0bec5", "#c5d0d6", "#d5dde1", "#e1e7ea"];

/// A colour per profile: the palette in order over the profiles that free
/// something (so that no two of those share one while there are colours).
fn colors(insp: &Inspection) -> Vec<&'static str> {
    let mut k = 0;
    insp.profiles
        .iter()
        .map(|p| {
            if p.removed_bytes > 0 {
                k += 1;
                PALETTE[(k - 1) % PALETTE.len()]
            } else {
                KEPT[0]
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

fn worst(row: &[f64], side: f64) -> f64 {
    let s: f64 = row.iter().sum();
    let max = row.iter().cloned().fold(0.0, f64::max);
    let min = row.iter().cloned().fold(f64::INFINITY, f64::min);
    if s <= 0.0 || min <= 0.0 || side <= 0.0 {
        return f64::INFINITY;
    }
    let s2 = s * s;
    let side2 = side * side;
    (side2 * max / s2).max(s2 / (side2 * min))
}

/// Squarified treemap layout (Bruls, Huizing, van Wijk) of positive
/// `values` (largest first) in `r`.
fn squarify(values: &[f64], mut r: Rect) -> Vec<Rect> {
    let total: f64 = values.iter().sum();
    if total <= 0.0 || r.w <= 0.0 || r.h <= 0.0 {
        return vec![
            Rect {
                w: 0.0,
                h: 0.0,
                ..r
            };
            values.len()
        ];
    }
    let scale = r.w * r.h / total;
    let areas: Vec<f64> = values.iter().map(|v| v * scale).collect();
    let mut out = Vec::with_capacity(values.len());
    let mut i = 0;
    while i < areas.len() {
        let side = r.w.min(r.h);
        let mut j = i + 1;
        let mut best = worst(&areas[i..j], side);
        while j < areas.len() {
            let next = worst(&areas[i..=j], side);
            if next > best {
                break;
            }
            best = next;
            j += 1;
        }
        let row = &areas[i..j];
        let s: f64 = row.iter().sum();
        if r.w >= r.h {
            let cw = if r.h > 0.0 { s / r.h } else { 0.0 };
            let mut y = r.y;
            for a in row {
                let h = if cw > 0.0 { a / cw } else { 0.0 };
                out.push(Rect {
                    x: r.x,
                    y,
                    w: cw,
                    h,
                });
                y += h;
            }
            r.x += cw;
            r.w -= cw;
        } else {
            let rh = if r.w > 0.0 { s / r.w } else { 0.0 };
            let mut x = r.x;
            for a in row {
                let w = if rh > 0.0 { a / rh } else { 0.0 };
                out.push(Rect {
                    x,
                    y: r.y,
                    w,
                    h: rh,
                });
                x += w;
            }
            r.y += rh;
            r.h -= rh;
        }
        i = j;
    }
    out
}

fn base_name(path: &[u8]) -> String {
    let s = String::from_utf8_lossy(path);
    match s.rsplit('/').next() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => "/".to_string(),
    }
}

struct Tm<'a> {
    names: Vec<&'a str>,
    colors: Vec<&'static str>,
    svg: String,
}

impl Tm<'_> {
    fn tooltip(&self, path: &str, alloc: u64, removable: &[u64]) -> String {
        let mut t = format!("{path}: {}", human_bytes(alloc));
        for (i, b) in removable.iter().enumerate() {
            if *b > 0 {
                let _ = write!(t, "\n{} would remove {}", self.names[i], human_bytes(*b));
            }
        }
        esc(&t)
    }

    /// A leaf: what stays, then one slice per profile, along the longer side.
    fn leaf(&mut self, r: Rect, path: &str, label: &str, alloc: u64, rem: &[u64], depth: usize) {
        if r.w * r.h < 0.5 || alloc == 0 {
            return;
        }
        let removed: u64 = rem.iter().sum::<u64>().min(alloc);
        let mut parts: Vec<(f64, &str)> = vec![((alloc - removed) as f64, KEPT[depth.min(3)])];
        for (i, b) in rem.iter().enumerate() {
            if *b > 0 {
                parts.push((*b as f64, self.colors.get(i).copied().unwrap_or(KEPT[0])));
            }
        }
        let total: f64 = parts.iter().map(|p| p.0).sum();
        let tip = self.tooltip(path, alloc, rem);
        let _ = write!(self.svg, "<g><title>{tip}</title>");
        let mut off = 0.0;
        for (v, c) in parts {
            if v <= 0.0 || total <= 0.0 {
                continue;
            }
            let f = v / total;
            let q = if r.w >= r.h {
                Rect {
                    x: r.x + off * r.w,
                    y: r.y,
                    w: f * r.w,
                    h: r.h,
                }
            } else {
                Rect {
                    x: r.x,
                    y: r.y + off * r.h,
                    w: r.w,
                    h: f * r.h,
                }
            };
            off += f;
            let _ = write!(
                self.svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{c}\"/>",
                q.x, q.y, q.w, q.h
            );
        }
        let _ = write!(
            self.svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" class=\"edge\"/>",
            r.x, r.y, r.w, r.h
        );
        self.label(r, label, alloc);
        self.svg.push_str("</g>");
    }

    fn label(&mut self, r: Rect, name: &str, alloc: u64) {
        let text = format!("{name} {}", human_bytes(alloc));
        if r.h >= 13.0 && (text.chars().count() as f64) * 6.2 + 6.0 <= r.w {
            let _ = write!(
                self.svg,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                r.x + 3.0,
                r.y + 11.0,
                esc(&text)
            );
        }
    }

    fn node(&mut self, n: &Node, r: Rect) {
        let path = String::from_utf8_lossy(&n.path).into_owned();
        let name = base_name(&n.path);
        if n.children.is_empty() || r.w < 8.0 || r.h < 8.0 {
            self.leaf(r, &path, &name, n.allocated, &n.removable, n.depth);
            return;
        }
        let tip = self.tooltip(&path, n.allocated, &n.removable);
        let _ = write!(
            self.svg,
            "<g><title>{tip}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" class=\"dir\"/>",
            r.x, r.y, r.w, r.h
        );
        self.label(r, &name, n.allocated);
        self.svg.push_str("</g>");
        let head = if r.h >= 40.0 && r.w >= 40.0 {
            14.0
        } else {
            1.0
        };
        let inner = Rect {
            x: r.x + 1.0,
            y: r.y + head,
            w: (r.w - 2.0).max(0.0),
            h: (r.h - head - 1.0).max(0.0),
        };
        // Subdirectories, and the files directly in this directory.
        enum Item<'n> {
            Dir(&'n Node),
            Own,
        }
        let mut items: Vec<(u64, Item)> = n
            .children
            .iter()
            .filter(|c| c.allocated > 0)
            .map(|c| (c.allocated, Item::Dir(c)))
            .collect();
        if n.own_allocated > 0 {
            items.push((n.own_allocated, Item::Own));
        }
        items.sort_by_key(|i| std::cmp::Reverse(i.0));
        let values: Vec<f64> = items.iter().map(|i| i.0 as f64).collect();
        let rects = squarify(&values, inner);
        for ((_, it), rr) in items.iter().zip(rects) {
            match it {
                Item::Dir(c) => self.node(c, rr),
                Item::Own => {
                    let label = format!("{path} (files here)");
                    self.leaf(
                        rr,
                        &label,
                        "files",
                        n.own_allocated,
                        &n.own_removable,
                        n.depth + 1,
                    )
                }
            }
        }
    }
}

fn treemap(insp: &Inspection, w: f64, h: f64) -> String {
    let mut tm = Tm {
        names: insp.profiles.iter().map(|p| p.name.as_str()).collect(),
        colors: colors(insp),
        svg: String::new(),
    };
    tm.node(
        &insp.tree,
        Rect {
            x: 0.0,
            y: 0.0,
            w,
            h,
        },
    );
    format!(
        "<svg class=\"tm\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"treemap of the guest by directory\">{}</svg>",
        tm.svg
    )
}

/// Horizontal bars: (label, bytes, colour).
fn bars(rows: &[(String, u64, &str)], width: f64) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1) as f64;
    let (lw, vw, rh) = (260.0, 90.0, 20.0);
    let bw = width - lw - vw;
    let h = rows.len() as f64 * rh + 4.0;
    let mut s = format!(
        "<svg class=\"bars\" viewBox=\"0 0 {width} {h}\" width=\"{width}\" height=\"{h}\">"
    );
    for (i, (label, v, c)) in rows.iter().enumerate() {
        let y = i as f64 * rh + 2.0;
        let len = (*v as f64 / max * bw).max(if *v > 0 { 1.0 } else { 0.0 });
        let _ = write!(
            s,
            "<g><title>{t}: {b}</title><text x=\"{tx}\" y=\"{ty:.1}\" class=\"lab\">{t}</text><rect x=\"{lw}\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"{bh}\" fill=\"{c}\"/><text x=\"{vx:.1}\" y=\"{ty:.1}\">{b}</text></g>",
            t = esc(label),
            b = human_bytes(*v),
            tx = lw - 6.0,
            ty = y + 13.0,
            bh = rh - 5.0,
            vx = lw + len + 6.0,
        );
    }
    s.push_str("</svg>");
    s
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#222;background:#fff}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:22px 0 6px;border-bottom:1px solid #ddd}\
h3{font-size:15px;margin:14px 0 4px}.muted{color:#666}\
svg text{font:11px sans-serif;fill:#111}svg .lab{text-anchor:end}\
.tm .edge{fill:none;stroke:#fff;stroke-width:0.6}.tm .dir{fill:#eceff1;stroke:#fff;stroke-width:1}\
table{border-collapse:collapse;margin:4px 0}td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.sw{display:inline-block;width:12px;height:12px;vertical-align:-2px;margin:0 4px 0 10px}\
code{font:12px monospace}.li{white-space:nowrap}";

/// The whole page.
pub fn render(p: &Page) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>vmfinal: {t}</title><style>{STYLE}</style></head><body>\
<h1>Where the bytes go: <code>{t}</code></h1><p class=\"muted\">vmfinal {v}; the guest mounted read-only, profiles planned as a dry run (nothing changed).</p>",
        t = esc(&p.title),
        v = env!("CARGO_PKG_VERSION"),
    );
    if !p.estimates.is_empty() {
        s.push_str("<h2>Artifact size, before and after cleaning</h2>");
        let rows: Vec<(String, u64, &str)> = p
            .estimates
            .iter()
            .enumerate()
            .map(|(i, (l, b))| (l.clone(), *b, if i == 0 { "#78909c" } else { "#4363d8" }))
            .collect();
        s.push_str(&bars(&rows, 1100.0));
    }
    for snap in &p.snapshots {
        snapshot(&mut s, snap);
    }
    s.push_str("</body></html>\n");
    s
}

fn snapshot(s: &mut String, snap: &Snapshot) {
    let i = snap.insp;
    let total = i.tree.allocated;
    let freed = i.freed_bytes();
    let _ = write!(
        s,
        "<h2>{}: {} files, {} allocated, {} apparent</h2>",
        esc(&snap.label),
        i.files,
        human_bytes(total),
        human_bytes(i.tree.apparent)
    );
    let mounts: Vec<String> = i
        .mounts
        .iter()
        .map(|m| {
            format!(
                "<code>{}</code> ({} on partition {})",
                esc(&m.mountpoint),
                esc(&m.fstype),
                m.partition
            )
        })
        .collect();
    let _ = write!(s, "<p>Mounted: {}</p>", mounts.join(", "));
    for w in &i.warnings {
        let _ = write!(s, "<p class=\"muted\">warning: {}</p>", esc(w));
    }
    let _ = write!(
        s,
        "<h3>Directories (depth {}), coloured by the profile that would remove them</h3><p><span class=\"li\"><span class=\"sw\" style=\"background:{}\"></span>stays</span>",
        i.depth, KEPT[0]
    );
    let cs = colors(i);
    for (k, pl) in i.profiles.iter().enumerate() {
        if pl.removed_bytes > 0 {
            let _ = write!(
                s,
                "<span class=\"li\"><span class=\"sw\" style=\"background:{}\"></span>{} ({})</span>",
                cs[k],
                esc(&pl.name),
                human_signed(pl.freed_bytes)
            );
        }
    }
    s.push_str("</p>");
    s.push_str(&treemap(i, 1100.0, 460.0));
    for db in &i.packages {
        let _ = write!(
            s,
            "<h3>Packages ({}, <code>{}</code>)",
            esc(db.manager),
            esc(&db.database)
        );
        if !db.readable {
            let _ = write!(
                s,
                ": not read</h3><p>{}</p>",
                esc(db.reason.as_deref().unwrap_or(""))
            );
            continue;
        }
        let _ = write!(
            s,
            ": {} installed, {}</h3>",
            db.packages.len(),
            human_bytes(db.total_installed_bytes)
        );
        let rows: Vec<(String, u64, &str)> = db
            .packages
            .iter()
            .take(20)
            .map(|p| (p.name.clone(), p.installed_bytes, "#3cb44b"))
            .collect();
        s.push_str(&bars(&rows, 1100.0));
    }
    let _ = write!(
        s,
        "<h3>Profiles (dry run): {} would be freed, {} still in use after</h3><table><tr><th>profile</th><th>paths</th><th>frees</th><th>notes</th></tr>",
        human_signed(freed),
        human_bytes(total.saturating_sub(u64::try_from(freed).unwrap_or(0)))
    );
    for pl in &i.profiles {
        let note = if pl.applicable {
            String::new()
        } else {
            pl.reason.clone().unwrap_or_default()
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&pl.name),
            pl.paths().count(),
            human_signed(pl.freed_bytes),
            esc(&note)
        );
    }
    s.push_str("</table>");
    s.push_str(
        "<h3>Largest files</h3><table><tr><th>allocated</th><th>path</th><th>removed by</th></tr>",
    );
    for f in &i.top_files {
        let _ = write!(
            s,
            "<tr><td class=\"n\">{}</td><td><code>{}</code></td><td>{}</td></tr>",
            human_bytes(f.allocated_bytes),
            esc(&f.path),
            esc(f.removed_by.as_deref().unwrap_or(""))
        );
    }
    s.push_str("</table>");
    let d = &i.duplicates;
    let _ = write!(
        s,
        "<h3>Duplicates: {} files in {} groups; a dedup would save {}</h3><table><tr><th>saves</th><th>copies</th><th>size</th><th>paths</th></tr>",
        d.files,
        d.groups,
        human_bytes(d.saved_bytes)
    );
    for g in &d.largest {
        let paths: Vec<String> = g
            .paths
            .iter()
            .map(|p| format!("<code>{}</code>", esc(p)))
            .collect();
        let _ = write!(
            s,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            human_bytes(g.saved_bytes),
            g.paths.len(),
            human_bytes(g.size),
            paths.join("<br>")
        );
    }
    s.push_str("</table>");
    let dirs = i.largest_dirs(20);
    s.push_str("<h3>Largest directories</h3><table><tr><th>allocated</th><th>apparent</th><th>path</th></tr>");
    for n in dirs {
        let _ = write!(
            s,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td><code>{}</code></td></tr>",
            human_bytes(n.allocated),
            human_bytes(n.apparent),
            escb(&n.path)
        );
    }
    s.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(esc("a\x1bb"), "a\u{fffd}b");
    }

    #[test]
    fn squarified_areas() {
        let r = Rect {
            x: 0.0,
            y: 0.0,
            w: 600.0,
            h: 400.0,
        };
        let v = [6.0, 6.0, 4.0, 3.0, 2.0, 2.0, 1.0];
        let out = squarify(&v, r);
        let total: f64 = v.iter().sum();
        for (val, q) in v.iter().zip(&out) {
            let want = val / total * 240000.0;
            assert!(
                (q.w * q.h - want).abs() < 1e-6 * want.max(1.0),
                "{q:?} {want}"
            );
            assert!(
                q.x >= -1e-9
                    && q.y >= -1e-9
                    && q.x + q.w <= 600.0 + 1e-6
                    && q.y + q.h <= 400.0 + 1e-6
            );
        }
    }
}
