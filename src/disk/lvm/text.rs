//! LVM2's text metadata syntax (libdm's config format): `key = value`,
//! `name { ... }` sections, values that are integers, floats, `"strings"`
//! (backslash escapes), `'strings'` (raw) or `[lists]`, and `#` comments.
//! A total parser over bytes with bounded depth and node count.
//!
//! Not here: what the keys mean (see `meta.rs`).

use super::LvmError;

/// Section nesting accepted at most (libdm's own limit is 32).
const MAX_DEPTH: usize = 32;
/// Values and sections accepted at most in one document.
const MAX_NODES: usize = 1 << 20;

/// One value of the metadata tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    /// Kept as text: the metadata LVM writes has no floats that matter.
    Float(String),
    Str(String),
    List(Vec<Value>),
    Section(Section),
}

/// A section's entries, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Section(pub Vec<(String, Value)>);

impl Section {
    /// The first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key) {
            Some(Value::Section(s)) => Some(s),
            _ => None,
        }
    }
    pub fn list(&self, key: &str) -> Option<&[Value]> {
        match self.get(key) {
            Some(Value::List(l)) => Some(l),
            _ => None,
        }
    }
    /// The strings of a list value (`status = ["READ", "WRITE"]`).
    pub fn strings(&self, key: &str) -> Vec<&str> {
        self.list(key)
            .unwrap_or(&[])
            .iter()
            .filter_map(|v| match v {
                Value::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }
    /// The sub-sections, in order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.0.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Float(String),
    Str(String),
    Eq,
    Open,
    Close,
    ListOpen,
    ListClose,
    Comma,
    Eof,
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
    line: usize,
    nodes: usize,
}

/// Parses a metadata document into its top-level section.
pub fn parse(text: &[u8]) -> Result<Section, LvmError> {
    let mut p = Parser {
        b: text,
        pos: 0,
        line: 1,
        nodes: 0,
    };
    p.entries(0, true)
}

impl Parser<'_> {
    fn err(&self, what: impl Into<String>) -> LvmError {
        LvmError::Text {
            line: self.line,
            what: what.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied().filter(|&c| c != 0)
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'#' {
                while let Some(c) = self.peek() {
                    if c == b'\n' {
                        break;
                    }
                    self.pos += 1;
                }
            } else if c.is_ascii_whitespace() {
                if c == b'\n' {
                    self.line += 1;
                }
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// The next token; `value` says a number or bare word is a value here.
    fn token(&mut self, value: bool) -> Result<Tok, LvmError> {
        self.skip_space();
        let Some(c) = self.peek() else {
            return Ok(Tok::Eof);
        };
        let start = self.pos;
        self.pos += 1;
        Ok(match c {
            b'{' => Tok::Open,
            b'}' => Tok::Close,
            b'[' => Tok::ListOpen,
            b']' => Tok::ListClose,
            b',' => Tok::Comma,
            b'=' => Tok::Eq,
            b'"' => {
                let mut s = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err(self.err("unterminated string")),
                        Some(b'"') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b'\\') => {
                            self.pos += 1;
                            match self.peek() {
                                Some(e) => {
                                    s.push(e);
                                    self.pos += 1;
                                }
                                None => return Err(self.err("unterminated string")),
                            }
                        }
                        Some(ch) => {
                            if ch == b'\n' {
                                self.line += 1;
                            }
                            s.push(ch);
                            self.pos += 1;
                        }
                    }
                }
                Tok::Str(String::from_utf8_lossy(&s).into_owned())
            }
            b'\'' => {
                while self.peek().is_some_and(|ch| ch != b'\'') {
                    self.pos += 1;
                }
                if self.peek().is_none() {
                    return Err(self.err("unterminated string"));
                }
                let s = String::from_utf8_lossy(&self.b[start + 1..self.pos]).into_owned();
                self.pos += 1;
                Tok::Str(s)
            }
            b'0'..=b'9' | b'+' | b'-' | b'.' if value => {
                let mut float = c == b'.';
                while let Some(ch) = self.peek() {
                    if ch.is_ascii_digit() {
                        self.pos += 1;
                    } else if ch == b'.' && !float {
                        float = true;
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                let t = String::from_utf8_lossy(&self.b[start..self.pos]).into_owned();
                if float {
                    Tok::Float(t)
                } else {
                    Tok::Int(
                        t.parse()
                            .map_err(|_| self.err(format!("bad integer {t:?}")))?,
                    )
                }
            }
            _ => {
                while self
                    .peek()
                    .is_some_and(|ch| !ch.is_ascii_whitespace() && !b"#={}[],\"".contains(&ch))
                {
                    self.pos += 1;
                }
                let t = String::from_utf8_lossy(&self.b[start..self.pos]).into_owned();
                if value { Tok::Str(t) } else { Tok::Ident(t) }
            }
        })
    }

    fn count(&mut self) -> Result<(), LvmError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.err(format!("more than {MAX_NODES} values")));
        }
        Ok(())
    }

    /// Entries until `}` (or the end, at the top level).
    fn entries(&mut self, depth: usize, top: bool) -> Result<Section, LvmError> {
        if depth > MAX_DEPTH {
            return Err(self.err("sections nested too deeply"));
        }
        let mut out = Section::default();
        loop {
            let key = match self.token(false)? {
                Tok::Eof if top => return Ok(out),
                Tok::Close if !top => return Ok(out),
                Tok::Ident(k) => k,
                t => return Err(self.err(format!("expected a name, found {t:?}"))),
            };
            self.count()?;
            match self.token(false)? {
                Tok::Eq => {
                    let v = self.value(depth)?;
                    out.0.push((key, v));
                }
                Tok::Open => {
                    let s = self.entries(depth + 1, false)?;
                    out.0.push((key, Value::Section(s)));
                }
                t => return Err(self.err(format!("expected = or {{ after {key}, found {t:?}"))),
            }
        }
    }

    fn scalar(&mut self, t: Tok) -> Result<Value, LvmError> {
        Ok(match t {
            Tok::Int(i) => Value::Int(i),
            Tok::Float(f) => Value::Float(f),
            Tok::Str(s) => Value::Str(s),
            t => return Err(self.err(format!("expected a value, found {t:?}"))),
        })
    }

    fn value(&mut self, depth: usize) -> Result<Value, LvmError> {
        match self.token(true)? {
            Tok::ListOpen => {
                if depth > MAX_DEPTH {
                    return Err(self.err("lists nested too deeply"));
                }
                let mut items = Vec::new();
                let mut t = self.token(true)?;
                if t == Tok::ListClose {
                    return Ok(Value::List(items));
                }
                loop {
                    self.count()?;
                    items.push(self.scalar(t)?);
                    match self.token(true)? {
                        Tok::Comma => t = self.token(true)?,
                        Tok::ListClose => return Ok(Value::List(items)),
                        t => {
                            return Err(self.err(format!("expected , or ] in a list, found {t:?}")));
                        }
                    }
                    if t == Tok::ListClose {
                        return Ok(Value::List(items));
                    }
                }
            }
            t => self.scalar(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shapes_lvm_writes() {
        let t = br#"# comment
vg {
	id = "abc"   # trailing comment
	seqno = 4
	status = ["READ", "WRITE"]
	empty = []
	f = 1.5
	physical_volumes {
		pv0 { pe_start = 2048 pe_count = -1 }
	}
	raw = 'a\b'
	esc = "a\"b\\c"
}
contents = "Text Format Volume Group"
"#;
        let s = parse(t).unwrap();
        let vg = s.section("vg").unwrap();
        assert_eq!(vg.str("id"), Some("abc"));
        assert_eq!(vg.int("seqno"), Some(4));
        assert_eq!(vg.strings("status"), vec!["READ", "WRITE"]);
        assert_eq!(vg.list("empty"), Some(&[][..]));
        assert_eq!(vg.get("f"), Some(&Value::Float("1.5".into())));
        let pv = vg
            .section("physical_volumes")
            .unwrap()
            .section("pv0")
            .unwrap();
        assert_eq!(pv.int("pe_count"), Some(-1));
        assert_eq!(vg.str("raw"), Some("a\\b"));
        assert_eq!(vg.str("esc"), Some("a\"b\\c"));
        assert_eq!(s.str("contents"), Some("Text Format Volume Group"));
    }

    #[test]
    fn rejects_broken_text() {
        for t in [
            &b"vg {"[..],
            b"vg = ",
            b"vg = \"abc",
            b"= 3",
            b"a = [1, 2",
            b"a = 99999999999999999999999",
            b"a { b = [ [1] ] }",
            b"}",
        ] {
            assert!(parse(t).is_err(), "{:?}", String::from_utf8_lossy(t));
        }
        let deep = "a {".repeat(100) + &"}".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn stops_at_nul() {
        let s = parse(b"a = 1\0garbage {{{").unwrap();
        assert_eq!(s.int("a"), Some(1));
    }
}
