//! Package version ordering: Debian's (`dpkg --compare-versions`) and RPM's
//! (`rpmvercmp`), for choosing the newest kernels.

use std::cmp::Ordering;

fn deb_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// Compares one upstream or revision part the way dpkg does.
fn deb_part(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, compared by dpkg's character order.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let cb = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            let (oa, ob) = (deb_order(ca), deb_order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            if ca.is_some() {
                i += 1;
            }
            if cb.is_some() {
                j += 1;
            }
        }
        // Numeric part.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (na, nb) = (&a[si..i], &b[sj..j]);
        let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// `dpkg --compare-versions a lt b` and friends.
pub fn deb_cmp(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.bytes().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| deb_part(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| deb_part(ra.as_bytes(), rb.as_bytes()))
}

/// RPM's `rpmvercmp` on one version or release string.
pub fn rpm_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        while i < a.len() && !a[i].is_ascii_alphanumeric() && a[i] != b'~' && a[i] != b'^' {
            i += 1;
        }
        while j < b.len() && !b[j].is_ascii_alphanumeric() && b[j] != b'~' && b[j] != b'^' {
            j += 1;
        }
        // Tilde sorts before everything, caret after the end.
        let (ta, tb) = (a.get(i) == Some(&b'~'), b.get(j) == Some(&b'~'));
        if ta || tb {
            if !(ta && tb) {
                return if ta {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
            }
            i += 1;
            j += 1;
            continue;
        }
        let (ca, cb) = (a.get(i) == Some(&b'^'), b.get(j) == Some(&b'^'));
        if ca || cb {
            if i >= a.len() {
                return Ordering::Less;
            }
            if j >= b.len() {
                return Ordering::Greater;
            }
            if !(ca && cb) {
                return if ca {
                    Ordering::Greater
                } else {
                    Ordering::Less
                };
            }
            i += 1;
            j += 1;
            continue;
        }
        if i >= a.len() || j >= b.len() {
            break;
        }
        let digit = a[i].is_ascii_digit();
        let take = |s: &[u8], mut k: usize| {
            let st = k;
            while k < s.len()
                && (if digit {
                    s[k].is_ascii_digit()
                } else {
                    s[k].is_ascii_alphabetic()
                })
            {
                k += 1;
            }
            (st, k)
        };
        let (sa, ea) = take(a, i);
        let (sb, eb) = take(b, j);
        if sb == eb {
            // Different kinds: numbers are newer than letters.
            return if digit {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let (mut pa, mut pb) = (&a[sa..ea], &b[sb..eb]);
        if digit {
            while pa.first() == Some(&b'0') && pa.len() > 1 {
                pa = &pa[1..];
            }
            while pb.first() == Some(&b'0') && pb.len() > 1 {
                pb = &pb[1..];
            }
            let o = pa.len().cmp(&pb.len()).then_with(|| pa.cmp(pb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            let o = pa.cmp(pb);
            if o != Ordering::Equal {
                return o;
            }
        }
        i = ea;
        j = eb;
    }
    match (i >= a.len(), j >= b.len()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn debian() {
        assert_eq!(deb_cmp("6.1.119-1", "6.12.9-1~bpo12+1"), Less);
        assert_eq!(deb_cmp("1.0~rc1", "1.0"), Less);
        assert_eq!(deb_cmp("1:0.9", "2.0"), Greater);
        assert_eq!(deb_cmp("1.0-1", "1.0-1"), Equal);
        assert_eq!(deb_cmp("1.0a", "1.0"), Greater);
        assert_eq!(deb_cmp("1.0+b1", "1.0"), Greater);
        assert_eq!(deb_cmp("6.1.0-28", "6.1.0-9"), Greater);
    }

    #[test]
    fn rpm() {
        assert_eq!(rpm_cmp("5.14.0-427.el9", "5.14.0-70.el9"), Greater);
        assert_eq!(rpm_cmp("1.0~rc1", "1.0"), Less);
        assert_eq!(rpm_cmp("1.0^git1", "1.0"), Greater);
        assert_eq!(rpm_cmp("6.8.5-301.fc40", "6.8.5-301.fc40"), Equal);
        assert_eq!(rpm_cmp("1.a", "1.1"), Less);
    }
}
