//! The profile file format (see profiles/README.md). Parsing is strict:
//! unknown keys, a step with no or two actions, and malformed globs are
//! errors that name the file, line and column.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::glob;

/// A cleanup profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Part of the `defaults` set.
    pub default: bool,
    pub applies_if: Option<Condition>,
    pub vars: BTreeMap<String, Var>,
    pub steps: Vec<Step>,
    /// Where it came from: `built-in` or a file path.
    pub origin: String,
    /// The YAML text, for `profiles show`.
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileRaw {
    name: String,
    description: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    applies_if: Option<Condition>,
    #[serde(default)]
    vars: BTreeMap<String, Var>,
    steps: Vec<Step>,
}

/// A condition on the guest: true when any listed glob matches something.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub exists: Vec<PatternText>,
    /// True when none of these matches.
    #[serde(default)]
    pub missing: Vec<PatternText>,
}

/// A profile variable: a value or a list (a list expands one glob into many).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Var {
    One(ScalarText),
    List(Vec<ScalarText>),
}

/// A YAML scalar kept as text (numbers allowed).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ScalarText {
    S(String),
    I(i64),
}

impl ScalarText {
    pub fn text(&self) -> String {
        match self {
            Self::S(s) => s.clone(),
            Self::I(i) => i.to_string(),
        }
    }
}

impl Var {
    pub fn values(&self) -> Vec<String> {
        match self {
            Var::One(s) => vec![s.text()],
            Var::List(v) => v.iter().map(|s| s.text()).collect(),
        }
    }
}

/// A glob as written (may hold `${var}`), checked for syntax on parse.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "String")]
pub struct PatternText(pub String);

impl TryFrom<String> for PatternText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        // Variables are substituted later; check the rest of the syntax now.
        let probe = substitute_probe(&s)?;
        glob::compile(&probe).map_err(|e| e.to_string())?;
        Ok(Self(s))
    }
}

/// Replaces each `${name}` by a plain placeholder (`/v` at the very start,
/// where the variable must supply the leading `/`); errors on a bad
/// reference. Whether the expanded pattern is absolute is checked once the
/// variables are known (`parse`).
fn substitute_probe(s: &str) -> Result<String, String> {
    if s.len() > glob::MAX_PATTERN {
        return Err(format!(
            "a pattern of {} bytes is longer than {}",
            s.len(),
            glob::MAX_PATTERN
        ));
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find('}')
            .ok_or_else(|| format!("'{s}': '${{' is never closed"))?;
        let name = &rest[i + 2..i + end];
        if !valid_var(name) {
            return Err(format!("'{s}': bad variable name '{name}'"));
        }
        out.push_str(if out.is_empty() { "/v" } else { "v" });
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_var(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A count written as a number or as `${var}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Count {
    N(u32),
    Var(String),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WriteSpec {
    pub path: PatternText,
    pub content: String,
    /// Mode bits of the written file (permissions and setuid/setgid/sticky,
    /// at most 07777), given as octal text; `FileMode::DEFAULT` (0644) when
    /// absent. The file is owned by root. See `FileMode` for the spellings.
    #[serde(default)]
    pub mode: Option<FileMode>,
}

/// A file mode: octal digits as text, at most 0o7777 — `mode: 0644` (a
/// leading zero keeps a YAML scalar text), `mode: "0644"`, `"644"`,
/// `"0o644"`, `"1777"`. A YAML number (`mode: 420`, `mode: 644`,
/// `mode: 0o644`) is refused: whether 644 meant octal or decimal, or 420
/// meant 0644, is a guess, and a wrong guess writes a wrong mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FileMode {
    pub const DEFAULT: FileMode = FileMode(0o644);

    /// Parses the octal text of a mode.
    pub fn parse(t: &str) -> Result<Self, String> {
        let digits = t.strip_prefix("0o").unwrap_or(t);
        if digits.is_empty()
            || digits.len() > 5
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(format!("mode '{t}' is not an octal mode such as \"0644\""));
        }
        let m = u32::from_str_radix(digits, 8).map_err(|e| format!("mode '{t}': {e}"))?;
        if m > 0o7777 {
            return Err(format!("mode '{t}' is larger than 07777"));
        }
        Ok(Self(m))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ScalarText::deserialize(d)? {
            ScalarText::S(t) => FileMode::parse(&t).map_err(serde::de::Error::custom),
            ScalarText::I(n) => Err(serde::de::Error::custom(format!(
                "write.mode {n} is a YAML number; write the octal mode with a leading 0 or quoted, e.g. mode: \"0644\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SymlinkSpec {
    pub path: PatternText,
    pub target: String,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Delete(Vec<PatternText>),
    Truncate(Vec<PatternText>),
    EmptyDir(Vec<PatternText>),
    KeepNewestKernels(Count),
    Run(String),
    Write(WriteSpec),
    Symlink(SymlinkSpec),
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Delete(_) => "delete",
            Action::Truncate(_) => "truncate",
            Action::EmptyDir(_) => "empty-dir",
            Action::KeepNewestKernels(_) => "keep-newest-kernels",
            Action::Run(_) => "run",
            Action::Write(_) => "write",
            Action::Symlink(_) => "symlink",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub action: Action,
    pub except: Vec<PatternText>,
    pub when: Option<Condition>,
}

impl PartialEq for Condition {
    fn eq(&self, o: &Self) -> bool {
        self.exists == o.exists && self.missing == o.missing
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepRaw {
    #[serde(default)]
    delete: Option<Vec<PatternText>>,
    #[serde(default)]
    truncate: Option<Vec<PatternText>>,
    #[serde(default, rename = "empty-dir")]
    empty_dir: Option<Vec<PatternText>>,
    #[serde(default, rename = "keep-newest-kernels")]
    keep_newest_kernels: Option<Count>,
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    write: Option<WriteSpec>,
    #[serde(default)]
    symlink: Option<SymlinkSpec>,
    #[serde(default)]
    except: Vec<PatternText>,
    #[serde(default, rename = "if")]
    when: Option<Condition>,
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = StepRaw::deserialize(d)?;
        let mut acts = Vec::new();
        if let Some(v) = r.delete {
            acts.push(Action::Delete(v));
        }
        if let Some(v) = r.truncate {
            acts.push(Action::Truncate(v));
        }
        if let Some(v) = r.empty_dir {
            acts.push(Action::EmptyDir(v));
        }
        if let Some(v) = r.keep_newest_kernels {
            if let Count::Var(s) = &v {
                let name = s.strip_prefix("${").and_then(|x| x.strip_suffix('}'));
                if !name.is_some_and(valid_var) {
                    return Err(serde::de::Error::custom(format!(
                        "keep-newest-kernels takes a number or \"${{var}}\", not '{s}'"
                    )));
                }
            }
            acts.push(Action::KeepNewestKernels(v));
        }
        if let Some(v) = r.run {
            acts.push(Action::Run(v));
        }
        if let Some(v) = r.write {
            acts.push(Action::Write(v));
        }
        if let Some(v) = r.symlink {
            acts.push(Action::Symlink(v));
        }
        if acts.len() != 1 {
            return Err(serde::de::Error::custom(
                "each step needs exactly one of delete, truncate, empty-dir, keep-newest-kernels, run, write, symlink",
            ));
        }
        let action = acts.remove(0);
        if !r.except.is_empty()
            && !matches!(
                action,
                Action::Delete(_) | Action::Truncate(_) | Action::EmptyDir(_)
            )
        {
            return Err(serde::de::Error::custom(
                "except applies to delete, truncate and empty-dir steps only",
            ));
        }
        Ok(Step {
            action,
            except: r.except,
            when: r.when,
        })
    }
}

/// Largest profile text accepted.
pub const MAX_PROFILE_BYTES: usize = 1 << 20;

/// Why a profile file is refused; each error reads `ORIGIN[:LINE:COLUMN]: why`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("{origin}: {bytes} bytes; a profile may have at most {MAX_PROFILE_BYTES}")]
    TooLarge { origin: String, bytes: usize },
    /// The YAML does not parse or does not fit the schema.
    #[error("{origin}{}: {msg}", at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Syntax {
        origin: String,
        at: Option<(usize, usize)>,
        msg: String,
    },
    #[error(
        "{origin}: profile name '{name}' must be lowercase letters, digits, '-' or '_' (and not 'defaults' or 'all')"
    )]
    Name { origin: String, name: String },
    /// The variables, patterns or paths fail `validate`.
    #[error("{origin}: {why}")]
    Invalid { origin: String, why: String },
}

/// Parses a profile; errors read `ORIGIN:LINE:COLUMN: message`. Pure and
/// total (no panic, bounded recursion and allocation): the fuzz target
/// calls it on arbitrary text.
pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
    let origin = origin.to_string();
    if text.len() > MAX_PROFILE_BYTES {
        return Err(ProfileError::TooLarge {
            origin,
            bytes: text.len(),
        });
    }
    let raw: ProfileRaw = serde_yaml_ng::from_str(text).map_err(|e| {
        let msg = e.to_string();
        // serde_yaml appends " at line L column C"; we lead with it instead.
        let msg = match msg.find(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        ProfileError::Syntax {
            origin: origin.clone(),
            at: e.location().map(|l| (l.line(), l.column())),
            msg,
        }
    })?;
    if !raw
        .name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        || raw.name.is_empty()
        || matches!(raw.name.as_str(), "defaults" | "all")
    {
        return Err(ProfileError::Name {
            origin,
            name: raw.name,
        });
    }
    let p = Profile {
        name: raw.name,
        description: raw.description,
        default: raw.default,
        applies_if: raw.applies_if,
        vars: raw.vars,
        steps: raw.steps,
        origin: origin.clone(),
        source: text.to_string(),
    };
    validate(&p).map_err(|why| ProfileError::Invalid { origin, why })?;
    Ok(p)
}

/// Checks what needs the variables: every `${var}` is declared (also in
/// variables' own values), expansion ends (no cycle, within the limits),
/// every expanded glob compiles, write/symlink paths expand to one absolute
/// path, and a kernel count is a whole number. Run on parse and after
/// `--set`. Pure and total.
pub fn validate(p: &Profile) -> Result<(), String> {
    for (name, v) in &p.vars {
        if !valid_var(name) {
            return Err(format!(
                "variable name '{name}' must be letters, digits or '_'"
            ));
        }
        for value in v.values() {
            for r in var_refs(&value) {
                if !p.vars.contains_key(&r) {
                    return Err(format!(
                        "vars.{name} uses ${{{r}}}, which vars does not declare"
                    ));
                }
            }
        }
    }
    let check = |what: &str, texts: &[(Text, &str)]| -> Result<(), String> {
        for (kind, t) in texts {
            for v in var_refs(t) {
                if !p.vars.contains_key(&v) {
                    return Err(format!("{what} uses ${{{v}}}, which vars does not declare"));
                }
            }
            let expanded = expand_vars(t, &p.vars).map_err(|e| format!("{what}: {e}"))?;
            for e in &expanded {
                let shown = if e == t {
                    format!("'{t}'")
                } else {
                    format!("'{t}' (= '{e}')")
                };
                match kind {
                    Text::Glob | Text::Path => {
                        let g = glob::compile(e).map_err(|m| format!("{what}: {shown}: {m}"))?;
                        if *kind == Text::Path && (g.len() != 1 || e.contains(['*', '?', '['])) {
                            return Err(format!(
                                "{what}: {shown} must name one path, without wildcards"
                            ));
                        }
                    }
                    Text::Count => {
                        e.trim()
                            .parse::<u32>()
                            .map_err(|_| format!("{what}: {shown} is not a whole number"))?;
                    }
                }
            }
            if *kind != Text::Glob && expanded.len() != 1 {
                return Err(format!(
                    "{what}: '{t}' expands to {} values; it needs one",
                    expanded.len()
                ));
            }
        }
        Ok(())
    };
    if let Some(c) = &p.applies_if {
        check("applies_if", &condition_texts(c))?;
    }
    for (i, s) in p.steps.iter().enumerate() {
        check(&format!("step {}", i + 1), &step_texts(s))?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Text {
    Glob,
    /// One path (write, symlink).
    Path,
    /// A kernel count.
    Count,
}

fn condition_texts(c: &Condition) -> Vec<(Text, &str)> {
    c.exists
        .iter()
        .chain(&c.missing)
        .map(|p| (Text::Glob, p.0.as_str()))
        .collect()
}

fn step_texts(s: &Step) -> Vec<(Text, &str)> {
    let mut v: Vec<(Text, &str)> = s
        .except
        .iter()
        .map(|p| (Text::Glob, p.0.as_str()))
        .collect();
    if let Some(c) = &s.when {
        v.extend(condition_texts(c));
    }
    match &s.action {
        Action::Delete(g) | Action::Truncate(g) | Action::EmptyDir(g) => {
            v.extend(g.iter().map(|p| (Text::Glob, p.0.as_str())))
        }
        Action::KeepNewestKernels(Count::Var(s)) => v.push((Text::Count, s.as_str())),
        Action::Write(w) => v.push((Text::Path, w.path.0.as_str())),
        Action::Symlink(w) => v.push((Text::Path, w.path.0.as_str())),
        _ => {}
    }
    v
}

fn var_refs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let Some(end) = rest[i..].find('}') else {
            break;
        };
        out.push(rest[i + 2..i + end].to_string());
        rest = &rest[i + end + 1..];
    }
    out
}

/// Most patterns one text may expand to (list variables multiply).
pub const MAX_EXPANSIONS: usize = 1024;
/// Deepest chain of variables referring to variables.
pub const MAX_VAR_DEPTH: usize = 16;

/// Substitutes variables: each `${name}` is replaced by every value of
/// `name` (a list variable multiplies the text); a value may itself refer
/// to other variables. Errors name an undeclared variable or a cycle
/// (`a -> b -> a`), and stop expansions past `MAX_EXPANSIONS` patterns,
/// `glob::MAX_PATTERN` bytes or `MAX_VAR_DEPTH` levels. Pure and total.
pub fn expand_vars(s: &str, vars: &BTreeMap<String, Var>) -> Result<Vec<String>, String> {
    expand_in(s, vars, &mut Vec::new())
}

fn expand_in(
    s: &str,
    vars: &BTreeMap<String, Var>,
    stack: &mut Vec<String>,
) -> Result<Vec<String>, String> {
    if stack.len() > MAX_VAR_DEPTH {
        return Err(format!(
            "variables nest deeper than {MAX_VAR_DEPTH} levels ({})",
            stack.join(" -> ")
        ));
    }
    let mut out = vec![String::new()];
    let mut rest = s;
    loop {
        let Some(i) = rest.find("${") else {
            for o in &mut out {
                o.push_str(rest);
            }
            break;
        };
        let end = rest[i..]
            .find('}')
            .ok_or_else(|| format!("'{s}': '${{' is never closed"))?;
        let name = &rest[i + 2..i + end];
        let var = vars
            .get(name)
            .ok_or_else(|| format!("${{{name}}} is not declared in vars"))?;
        if stack.iter().any(|n| n == name) {
            return Err(format!("variable cycle: {} -> {name}", stack.join(" -> ")));
        }
        stack.push(name.to_string());
        let mut values = Vec::new();
        for v in var.values() {
            values.extend(expand_in(&v, vars, stack)?);
            if values.len() > MAX_EXPANSIONS {
                break;
            }
        }
        stack.pop();
        let lit = &rest[..i];
        if out.len().saturating_mul(values.len()) > MAX_EXPANSIONS {
            return Err(format!(
                "'{s}' expands to more than {MAX_EXPANSIONS} patterns"
            ));
        }
        let mut next = Vec::with_capacity(out.len() * values.len());
        for o in &out {
            for v in &values {
                let t = format!("{o}{lit}{v}");
                if t.len() > glob::MAX_PATTERN {
                    return Err(format!(
                        "'{s}' expands to a pattern longer than {} bytes",
                        glob::MAX_PATTERN
                    ));
                }
                next.push(t);
            }
        }
        out = next;
        rest = &rest[i + end + 1..];
    }
    Ok(out)
}

/// Expands `s` to exactly one text (a path a write or symlink step names).
pub fn expand_one(s: &str, vars: &BTreeMap<String, Var>) -> Result<String, String> {
    let mut v = expand_vars(s, vars)?;
    if v.len() != 1 {
        return Err(format!(
            "'{s}' expands to {} paths; a write or symlink step needs one",
            v.len()
        ));
    }
    Ok(v.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_positions() {
        let e = parse(
            "name: x\ndescription: d\nsteps:\n  - delete: [/a]\n    bogus: 1\n",
            "f.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("f.yaml:5:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = parse(
            "name: x\ndescription: d\nsteps:\n  - delete: [/a, \"/b/[c\"]\n",
            "f.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("f.yaml:4:"), "{e}");
        assert!(e.contains("never closed"), "{e}");
        let e = parse(
            "name: x\ndescription: d\nsteps:\n  - delete: [/a]\n    truncate: [/b]\n",
            "f.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exactly one"), "{e}");
    }

    #[test]
    fn vars_expand() {
        let p = parse(
            "name: x\ndescription: d\nvars: {keep: [C, 'en*']}\nsteps:\n  - delete: ['/l/*']\n    except: ['/l/${keep}']\n",
            "f",
        )
        .unwrap();
        assert_eq!(
            expand_vars("/l/${keep}", &p.vars).unwrap(),
            vec!["/l/C", "/l/en*"]
        );
        assert!(
            parse(
                "name: x\ndescription: d\nsteps:\n  - delete: ['/l/${nope}']\n",
                "f"
            )
            .is_err()
        );
    }

    fn prof(vars: &str, step: &str) -> Result<Profile, String> {
        parse(
            &format!("name: x\ndescription: d\nvars: {vars}\nsteps:\n  - {step}\n"),
            "f.yaml",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn variable_cycles_are_errors() {
        let e = prof("{x: '${x}'}", "delete: ['/a/${x}']").unwrap_err();
        assert!(e.contains("variable cycle: x -> x"), "{e}");
        let e = prof("{a: '${b}', b: ['${a}', c]}", "delete: ['/a/${a}']").unwrap_err();
        assert!(e.contains("variable cycle: a -> b -> a"), "{e}");
        // Nested references expand.
        let p = prof("{a: '${b}/x', b: [p, q]}", "delete: ['/r/${a}']").unwrap();
        assert_eq!(
            expand_vars("/r/${a}", &p.vars).unwrap(),
            vec!["/r/p/x", "/r/q/x"]
        );
        // A list multiplying past the limit.
        let e = prof(
            "{a: [a,b,c,d,e,f,g,h], b: '${a}${a}${a}${a}'}",
            "delete: ['/r/${b}']",
        )
        .unwrap_err();
        assert!(e.contains("more than 1024"), "{e}");
        // Undeclared inside a variable's value.
        let e = prof("{a: '${zz}'}", "delete: ['/r/${a}']").unwrap_err();
        assert!(e.contains("vars.a uses ${zz}"), "{e}");
    }

    #[test]
    fn globs_may_start_with_a_variable() {
        let p = prof("{dir: /opt/app}", "delete: ['${dir}/cache/*']").unwrap();
        assert_eq!(
            expand_vars("${dir}/cache/*", &p.vars).unwrap(),
            vec!["/opt/app/cache/*"]
        );
        let e = prof("{dir: opt/app}", "delete: ['${dir}/cache/*']").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e = parse(
            "name: x\ndescription: d\nsteps:\n  - delete: ['${dir}/cache/*']\n",
            "f.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("${dir}, which vars does not declare"), "{e}");
        assert!(!e.contains("absolute"), "{e}");
    }

    #[test]
    fn write_modes() {
        let w = |m: &str| {
            prof(
                "{}",
                &format!("write: {{path: /etc/x, content: c, mode: {m}}}"),
            )
        };
        let mode = |m: &str| match &w(m).unwrap().steps[0].action {
            Action::Write(w) => w.mode.map(|m| m.0),
            _ => None,
        };
        assert_eq!(mode("'0644'"), Some(0o644));
        assert_eq!(mode("0644"), Some(0o644));
        assert_eq!(mode("0755"), Some(0o755));
        assert_eq!(mode("\"644\""), Some(0o644));
        assert_eq!(mode("'0o600'"), Some(0o600));
        assert_eq!(mode("'1777'"), Some(0o1777));
        for bad in [
            "420", "644", "0o644", "'0999'", "'17777'", "''", "'rw'", "0999",
        ] {
            let e = w(bad).unwrap_err();
            assert!(e.contains("mode"), "{bad}: {e}");
        }
        assert!(w("420").unwrap_err().contains("quoted"));
    }

    #[test]
    fn write_paths_expand_to_one() {
        assert!(prof("{d: /etc}", "write: {path: '${d}/x', content: c}").is_ok());
        let e = prof("{d: [/a, /b]}", "write: {path: '${d}/x', content: c}").unwrap_err();
        assert!(e.contains("needs one"), "{e}");
        let e = prof("{}", "write: {path: '/etc/*', content: c}").unwrap_err();
        assert!(e.contains("one path"), "{e}");
        let e = prof("{k: two}", "keep-newest-kernels: '${k}'").unwrap_err();
        assert!(e.contains("whole number"), "{e}");
    }
}
