//! Byte ranges of a guest disk and the set operations the converter needs
//! (merge, subtract free space, clip). Pure functions, no I/O.

/// A half-open guest byte range `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

impl Extent {
    pub fn new(start: u64, len: u64) -> Self {
        Self { start, len }
    }
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Sorts and merges touching or overlapping extents; drops empty ones.
pub fn normalize(mut v: Vec<Extent>) -> Vec<Extent> {
    v.retain(|e| e.len > 0);
    v.sort_unstable();
    let mut out: Vec<Extent> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(last) if e.start <= last.end() => {
                let end = last.end().max(e.end());
                last.len = end - last.start;
            }
            _ => out.push(e),
        }
    }
    out
}

/// `a ∖ b`: the parts of `a` not covered by `b`. Both must be normalized.
pub fn subtract(a: &[Extent], b: &[Extent]) -> Vec<Extent> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for e in a {
        let mut cur = e.start;
        let end = e.end();
        while j < b.len() && b[j].end() <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < end && k < b.len() && b[k].start < end {
            if b[k].start > cur {
                out.push(Extent::new(cur, b[k].start - cur));
            }
            cur = cur.max(b[k].end());
            k += 1;
        }
        if cur < end {
            out.push(Extent::new(cur, end - cur));
        }
    }
    out
}

/// Total bytes covered by normalized extents.
pub fn total(v: &[Extent]) -> u64 {
    v.iter().map(|e| e.len).sum()
}

/// Clips normalized extents to `[start, end)`.
pub fn clip(v: &[Extent], start: u64, end: u64) -> Vec<Extent> {
    v.iter()
        .filter(|e| e.end() > start && e.start < end)
        .map(|e| {
            let s = e.start.max(start);
            Extent::new(s, e.end().min(end) - s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(v: &[(u64, u64)]) -> Vec<Extent> {
        v.iter().map(|&(s, l)| Extent::new(s, l)).collect()
    }

    #[test]
    fn normalize_merges_and_sorts() {
        assert_eq!(
            normalize(x(&[(10, 5), (0, 10), (20, 0), (14, 3), (30, 1)])),
            x(&[(0, 17), (30, 1)])
        );
    }

    #[test]
    fn subtract_cases() {
        let a = x(&[(0, 100), (200, 50)]);
        let b = x(&[(10, 10), (90, 120), (240, 100)]);
        assert_eq!(subtract(&a, &b), x(&[(0, 10), (20, 70), (210, 30)]));
        assert_eq!(subtract(&a, &[]), a);
        assert_eq!(subtract(&a, &x(&[(0, 1000)])), vec![]);
    }

    #[test]
    fn clip_cases() {
        let a = x(&[(0, 100), (200, 50)]);
        assert_eq!(clip(&a, 50, 220), x(&[(50, 50), (200, 20)]));
        assert_eq!(total(&a), 150);
    }
}
