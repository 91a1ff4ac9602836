//! How vmfinal writes text for people: sizes (`human_bytes`), quoting of
//! text that came from an image or a guest (`escape_bytes`), notes on
//! stderr and lines on stdout that turn a closed pipe into an error. The
//! ground floor: every layer may print through it, and it imports nothing
//! of vmfinal.

/// `1536` -> `1.50 KiB`: indicatif's binary units, the same text the
/// progress bars show.
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// A signed byte count: `-4 KiB` when negative (a net that grew).
pub fn human_signed(n: i64) -> String {
    let h = human_bytes(n.unsigned_abs());
    if n < 0 { format!("-{h}") } else { h }
}

/// Quotes text that came from an image or a guest so that printing it
/// cannot move the cursor, change colours or hide what follows: control
/// characters, bidirectional overrides, quotes and backslashes are escaped,
/// invalid UTF-8 bytes shown as `\xNN`, and the result is in single quotes.
pub fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 2);
    out.push('\'');
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\'' => out.push_str("\\'"),
                '\\' => out.push_str("\\\\"),
                c if is_hostile(c) => {
                    if (c as u32) < 0x100 {
                        out.push_str(&format!("\\x{:02x}", c as u32));
                    } else {
                        out.push_str(&format!("\\u{{{:x}}}", c as u32));
                    }
                }
                c => out.push(c),
            }
        }
        for &x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02x}"));
        }
    }
    out.push('\'');
    out
}

/// `escape_bytes` for text.
pub fn escape(s: &str) -> String {
    escape_bytes(s.as_bytes())
}

/// True for the characters `escape_bytes` never prints as they are.
fn is_hostile(c: char) -> bool {
    c.is_control()
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
        || c == '\u{200e}'
        || c == '\u{200f}'
}

/// One line for the terminal, whatever its parts held: every control
/// character (newlines included) and bidirectional override becomes an
/// escape, the rest is kept as it is. The last defence for messages that
/// carry a name from an image or a guest which no caller quoted.
pub fn one_safe_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            c if is_hostile(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if is_hostile(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A note on stderr: something vmfinal decided that the user should know.
pub fn note(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "vmfinal: note: {msg}");
}

/// Writes `text` and a newline to stdout. A closed pipe (`| head`) is an
/// error the caller returns, never a panic.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// `print_stdout` of a pretty JSON document.
pub fn print_json(v: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
    print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn escaping() {
        assert_eq!(escape("disk.raw"), "'disk.raw'");
        assert_eq!(escape("a\x1b[2Jb"), "'a\\x1b[2Jb'");
        assert_eq!(escape("it's"), "'it\\'s'");
        assert_eq!(escape_bytes(b"x\0\xff\n"), "'x\\x00\\xff\\x0a'");
        assert_eq!(escape("\u{202e}gpj"), "'\\u{202e}gpj'");
        assert_eq!(escape("caf\u{e9}"), "'caf\u{e9}'");
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }
}

#[cfg(test)]
mod line_tests {
    use super::one_safe_line;

    #[test]
    fn error_lines_cannot_drive_the_terminal() {
        let s = one_safe_line("lv vg/\u{1b}[2Jx\u{202e}y\nz\u{7}");
        assert_eq!(s, "lv vg/\\x1b[2Jx\\u{202e}y z\\x07");
        assert!(!s.chars().any(|c| c.is_control()));
        assert_eq!(one_safe_line("plain: über"), "plain: über");
    }
}
