//! Profile YAML, variable expansion and globs: parse, expand every pattern,
//! compile it and match it against a few paths; then `--set` assignments
//! (the input's first line) against the built-in profiles.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmfinal::profile::Registry;
use vmfinal::profile::glob;
use vmfinal::profile::schema::{self, Action};

const PATHS: [&[u8]; 4] = [b"/var/log/syslog", b"/usr/share/doc/x/copyright", b"/tmp", b"/a/b/c/d/e"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = schema::parse(text, "fuzz.yaml") {
        for s in &p.steps {
            let pats: Vec<&schema::PatternText> = match &s.action {
                Action::Delete(g) | Action::Truncate(g) | Action::EmptyDir(g) => {
                    g.iter().chain(&s.except).collect()
                }
                _ => s.except.iter().collect(),
            };
            for pat in pats {
                for e in schema::expand_vars(&pat.0, &p.vars).unwrap_or_default().iter().take(64) {
                    if let Ok(globs) = glob::compile(e) {
                        for g in globs.iter().take(16) {
                            for path in PATHS {
                                let _ = g.matches(path);
                                let _ = g.matches_self_or_ancestor(path);
                                let _ = g.may_match_below(path);
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(first) = text.lines().next() {
        static BUILTIN: OnceLock<Registry> = OnceLock::new();
        let mut r = BUILTIN.get_or_init(Registry::builtin).clone();
        let _ = r.set_var(first.trim_start_matches('#').trim());
    }
});
