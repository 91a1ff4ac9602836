//! Guest path globs: absolute paths whose components may hold `*`, `?`,
//! `[...]` classes and `{a,b}` alternatives, and whole-component `**`
//! (zero or more directories). `*` and `?` also match names that start with
//! a dot: a cleanup that says `/tmp/*` means every entry. They never match
//! `/`.
//!
//! Hand-written rather than `glob`/`globset`: matching runs one component
//! at a time against directories opened inside the guest root (openat2), on
//! bytes rather than UTF-8 paths, with `*` matching dot names, and with the
//! bounds a profile from anywhere needs (length, alternatives, `**` count);
//! the crates walk host paths or match whole strings.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// One component of a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A plain name.
    Literal(OsString),
    /// A name pattern with wildcards.
    Pattern(Vec<Token>),
    /// `**`: zero or more directories.
    AnyDirs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Byte(u8),
    /// `?`
    One,
    /// `*`
    Any,
    /// `[...]`: ranges, and whether the class is negated.
    Class(Vec<(u8, u8)>, bool),
}

/// A compiled glob (after brace expansion: one alternative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pub text: String,
    pub segments: Vec<Segment>,
}

/// Longest pattern accepted, before and after expansion (PATH_MAX).
pub const MAX_PATTERN: usize = 4096;
/// Most alternatives `{a,b}` may expand one pattern to.
pub const MAX_ALTERNATIVES: usize = 1024;
/// Most `{` one pattern may hold (bounds the recursion).
const MAX_BRACES: usize = 64;
/// Most `**` components in one glob (each multiplies the walk).
pub const MAX_ANY_DIRS: usize = 8;

/// Why a pattern is not a glob; each names the pattern (or the brace
/// alternative) it was found in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("a glob of {0} bytes is longer than {MAX_PATTERN}")]
    TooLong(usize),
    #[error("glob '{0}': more than {MAX_BRACES} '{{'")]
    TooManyBraces(String),
    #[error("glob '{0}': '}}' without '{{'")]
    CloseBrace(String),
    #[error("glob '{0}': '{{' is never closed")]
    OpenBrace(String),
    #[error("glob '{0}': more than {MAX_ALTERNATIVES} alternatives")]
    TooManyAlternatives(String),
    #[error("glob '{0}': '**' must be a whole path component, as in /a/**/b")]
    AnyDirsInName(String),
    #[error("glob '{0}': trailing '\\'")]
    TrailingBackslash(String),
    #[error("glob '{0}': '[' is never closed")]
    OpenClass(String),
    #[error("glob '{0}': bad range in class")]
    BadRange(String),
    #[error("glob '{0}': ']' without '['")]
    CloseClass(String),
    #[error("glob '{0}' must be an absolute guest path (start with /)")]
    NotAbsolute(String),
    #[error("glob '{0}': '.' and '..' components are not allowed")]
    DotComponent(String),
    #[error("glob '{0}': more than {MAX_ANY_DIRS} '**' components")]
    TooManyAnyDirs(String),
    #[error("glob '{0}' names the guest root itself")]
    WholeRoot(String),
}

/// Expands `{a,b}` alternatives (nested allowed) into plain patterns.
fn expand_braces(p: &str) -> Result<Vec<String>, GlobError> {
    if p.bytes().filter(|&c| c == b'{').count() > MAX_BRACES {
        return Err(GlobError::TooManyBraces(p.into()));
    }
    let mut out = Vec::new();
    expand_braces_into(p, &mut out)?;
    Ok(out)
}

fn expand_braces_into(p: &str, out: &mut Vec<String>) -> Result<(), GlobError> {
    let b = p.as_bytes();
    let Some(open) = b.iter().position(|&c| c == b'{') else {
        if b.contains(&b'}') {
            return Err(GlobError::CloseBrace(p.into()));
        }
        if out.len() >= MAX_ALTERNATIVES {
            return Err(GlobError::TooManyAlternatives(p.into()));
        }
        out.push(p.to_string());
        return Ok(());
    };
    let mut depth = 0;
    let mut close = None;
    let mut commas = Vec::new();
    for (i, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            b',' if depth == 1 => commas.push(i),
            _ => {}
        }
    }
    let close = close.ok_or_else(|| GlobError::OpenBrace(p.into()))?;
    let mut cuts = vec![open];
    cuts.extend(&commas);
    cuts.push(close);
    for w in cuts.windows(2) {
        let alt = format!("{}{}{}", &p[..open], &p[w[0] + 1..w[1]], &p[close + 1..]);
        expand_braces_into(&alt, out)?;
    }
    Ok(())
}

fn compile_component(c: &str, whole: &str) -> Result<Segment, GlobError> {
    if c == "**" {
        return Ok(Segment::AnyDirs);
    }
    if c.contains("**") {
        return Err(GlobError::AnyDirsInName(whole.into()));
    }
    if !c.contains(['*', '?', '[', ']', '\\']) {
        return Ok(Segment::Literal(OsString::from(c)));
    }
    let b = c.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'*' => toks.push(Token::Any),
            b'?' => toks.push(Token::One),
            b'\\' => {
                i += 1;
                let &e = b
                    .get(i)
                    .ok_or_else(|| GlobError::TrailingBackslash(whole.into()))?;
                toks.push(Token::Byte(e));
            }
            b'[' => {
                let mut j = i + 1;
                let neg = matches!(b.get(j), Some(b'!') | Some(b'^'));
                if neg {
                    j += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let &c0 = b.get(j).ok_or_else(|| GlobError::OpenClass(whole.into()))?;
                    if c0 == b']' && !first {
                        break;
                    }
                    first = false;
                    if b.get(j + 1) == Some(&b'-') && b.get(j + 2).is_some_and(|&e| e != b']') {
                        let hi = b[j + 2];
                        if hi < c0 {
                            return Err(GlobError::BadRange(whole.into()));
                        }
                        ranges.push((c0, hi));
                        j += 3;
                    } else {
                        ranges.push((c0, c0));
                        j += 1;
                    }
                }
                toks.push(Token::Class(ranges, neg));
                i = j;
            }
            b']' => return Err(GlobError::CloseClass(whole.into())),
            x => toks.push(Token::Byte(x)),
        }
        i += 1;
    }
    if toks.iter().all(|t| matches!(t, Token::Byte(_))) {
        let lit: Vec<u8> = toks
            .iter()
            .filter_map(|t| match t {
                Token::Byte(x) => Some(*x),
                _ => None,
            })
            .collect();
        return Ok(Segment::Literal(OsStr::from_bytes(&lit).to_owned()));
    }
    Ok(Segment::Pattern(toks))
}

/// Compiles a pattern into one glob per brace alternative. Errors name the
/// pattern and what is wrong with it.
pub fn compile(p: &str) -> Result<Vec<Glob>, GlobError> {
    if p.len() > MAX_PATTERN {
        return Err(GlobError::TooLong(p.len()));
    }
    let mut out = Vec::new();
    for alt in expand_braces(p)? {
        if !alt.starts_with('/') {
            return Err(GlobError::NotAbsolute(p.into()));
        }
        let mut segments = Vec::new();
        for c in alt.split('/').skip(1) {
            if c.is_empty() {
                // A trailing slash is allowed ("/tmp/"); empty middles are not.
                continue;
            }
            if c == "." || c == ".." {
                return Err(GlobError::DotComponent(p.into()));
            }
            let seg = compile_component(c, p)?;
            // `/**/**/` means the same as `/**/`.
            if seg == Segment::AnyDirs && segments.last() == Some(&Segment::AnyDirs) {
                continue;
            }
            segments.push(seg);
        }
        if segments.iter().filter(|s| **s == Segment::AnyDirs).count() > MAX_ANY_DIRS {
            return Err(GlobError::TooManyAnyDirs(p.into()));
        }
        if segments.is_empty() {
            return Err(GlobError::WholeRoot(p.into()));
        }
        out.push(Glob {
            text: alt,
            segments,
        });
    }
    Ok(out)
}

/// Does a name (one component) match the token list?
pub fn match_name(toks: &[Token], name: &[u8]) -> bool {
    // Iterative wildcard match with single backtrack point for `*`.
    let (mut t, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let ok = match toks.get(t) {
            Some(Token::Byte(c)) => *c == name[n],
            Some(Token::One) => true,
            Some(Token::Class(r, neg)) => {
                r.iter().any(|&(a, b)| (a..=b).contains(&name[n])) != *neg
            }
            Some(Token::Any) => {
                star = Some((t, n));
                t += 1;
                continue;
            }
            None => false,
        };
        if ok {
            t += 1;
            n += 1;
        } else if let Some((st, sn)) = star {
            t = st + 1;
            n = sn + 1;
            star = Some((st, sn + 1));
        } else {
            return false;
        }
    }
    toks[t..].iter().all(|x| matches!(x, Token::Any))
}

pub fn segment_matches(seg: &Segment, name: &[u8]) -> bool {
    match seg {
        Segment::Literal(l) => l.as_bytes() == name,
        Segment::Pattern(t) => match_name(t, name),
        Segment::AnyDirs => true,
    }
}

impl Glob {
    /// Does the whole guest path (absolute, no trailing slash) match?
    pub fn matches(&self, path: &[u8]) -> bool {
        let comps: Vec<&[u8]> = path
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        match_segments(&self.segments, &comps)
    }

    /// Does the glob match `path` or any of its ancestors?
    pub fn matches_self_or_ancestor(&self, path: &[u8]) -> bool {
        let comps: Vec<&[u8]> = path
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        (1..=comps.len()).any(|n| match_segments(&self.segments, &comps[..n]))
    }

    /// Could a descendant of `path` match? (For pruning walks.)
    pub fn may_match_below(&self, path: &[u8]) -> bool {
        let comps: Vec<&[u8]> = path
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        prefix_possible(&self.segments, &comps)
    }
}

/// Does `segs` match `comps` exactly? Dynamic programming over (segment,
/// component), so `**` cannot make it exponential.
fn match_segments(segs: &[Segment], comps: &[&[u8]]) -> bool {
    let n = comps.len();
    // next[j]: segs[i+1..] matches comps[j..].
    let mut next = vec![false; n + 1];
    next[n] = true;
    for (i, s) in segs.iter().enumerate().rev() {
        let mut cur = vec![false; n + 1];
        for j in (0..=n).rev() {
            cur[j] = match s {
                // A trailing `**` means everything below, not the directory itself.
                Segment::AnyDirs if i == segs.len() - 1 => j < n,
                Segment::AnyDirs => next[j] || (j < n && cur[j + 1]),
                s => j < n && segment_matches(s, comps[j]) && next[j + 1],
            };
        }
        next = cur;
    }
    next[0]
}

fn prefix_possible(segs: &[Segment], comps: &[&[u8]]) -> bool {
    for (k, c) in comps.iter().enumerate() {
        match segs.get(k) {
            None => return false,
            Some(Segment::AnyDirs) => return true,
            Some(s) if !segment_matches(s, c) => return false,
            Some(_) => {}
        }
    }
    segs.len() > comps.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        compile(p)
            .unwrap()
            .iter()
            .any(|g| g.matches(path.as_bytes()))
    }

    #[test]
    fn wildcards() {
        assert!(m(
            "/var/cache/apt/archives/*.deb",
            "/var/cache/apt/archives/a_1.deb"
        ));
        assert!(!m(
            "/var/cache/apt/archives/*.deb",
            "/var/cache/apt/archives/partial/a.deb"
        ));
        assert!(m("/tmp/*", "/tmp/.X11-unix"));
        assert!(m("/var/log/**/*.gz", "/var/log/a.gz"));
        assert!(m("/var/log/**/*.gz", "/var/log/x/y/a.gz"));
        assert!(m("/usr/share/doc/**", "/usr/share/doc/a/b"));
        assert!(!m("/usr/share/doc/**", "/usr/share/doc"));
        assert!(m("/var/log/*.[0-9]", "/var/log/syslog.1"));
        assert!(!m("/var/log/*.[0-9]", "/var/log/syslog.x"));
        assert!(m("/var/log/*.[!0-9]", "/var/log/syslog.x"));
        assert!(m("/usr/share/{doc,man}/x", "/usr/share/man/x"));
        assert!(m("/a/f?o", "/a/foo"));
        assert!(m("/a/*b*c", "/a/xxbyyc"));
        assert!(!m("/a/*b*c", "/a/xxbyyd"));
    }

    #[test]
    fn limits() {
        // 2^20 alternatives, a pattern past PATH_MAX, too many `**`.
        assert!(compile(&"/{a,b}".repeat(20)).is_err());
        assert!(compile(&format!("/{}", "a".repeat(5000))).is_err());
        assert!(compile(&"/**/a".repeat(9)).is_err());
        assert!(compile(&"{".repeat(100)).is_err());
        // Consecutive `**` collapse; many of them do not blow up matching.
        let g = &compile("/**/**/**/x").unwrap()[0];
        assert_eq!(g.segments.len(), 2);
        let g = &compile(&format!("{}/x", "/**/a".repeat(8))).unwrap()[0];
        let deep = "/a".repeat(200);
        assert!(!g.matches(deep.as_bytes()));
        assert!(g.matches(format!("{deep}/x").as_bytes()));
    }

    #[test]
    fn bad_globs() {
        for p in [
            "var/log", "/a/[b", "/a/b**", "/a/../b", "/a/{b", "/", "/a/b]",
        ] {
            assert!(compile(p).is_err(), "{p} should fail");
        }
    }

    #[test]
    fn ancestors_and_pruning() {
        let g = &compile("/usr/share/doc/*/copyright").unwrap()[0];
        assert!(g.may_match_below(b"/usr/share/doc/bash"));
        assert!(!g.may_match_below(b"/usr/share/man"));
        assert!(g.matches_self_or_ancestor(b"/usr/share/doc/bash/copyright"));
        let g = &compile("/var/lib/apt/lists/partial").unwrap()[0];
        assert!(g.matches_self_or_ancestor(b"/var/lib/apt/lists/partial/x"));
    }
}
