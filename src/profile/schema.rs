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
        glob::compile(&probe)?;
        Ok(Self(s))
    }
}

/// Replaces each `${name}` by a plain placeholder; errors on a bad reference.
fn substitute_probe(s: &str) -> Result<String, String> {
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
        out.push('v');
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
    /// Octal mode as a string ("0644") or number (420).
    #[serde(default)]
    pub mode: Option<ScalarText>,
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

/// Parses a profile; errors read `ORIGIN:LINE:COLUMN: message`.
pub fn parse(text: &str, origin: &str) -> Result<Profile, String> {
    let raw: ProfileRaw = serde_yaml_ng::from_str(text).map_err(|e| {
        let msg = e.to_string();
        // serde_yaml appends " at line L column C"; we lead with it instead.
        let msg = match msg.find(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        match e.location() {
            Some(l) => format!("{origin}:{}:{}: {msg}", l.line(), l.column()),
            None => format!("{origin}: {msg}"),
        }
    })?;
    if !raw
        .name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        || raw.name.is_empty()
        || matches!(raw.name.as_str(), "defaults" | "all")
    {
        return Err(format!(
            "{origin}: profile name '{}' must be lowercase letters, digits, '-' or '_' (and not 'defaults' or 'all')",
            raw.name
        ));
    }
    // Every ${var} used must be declared.
    let p = Profile {
        name: raw.name,
        description: raw.description,
        default: raw.default,
        applies_if: raw.applies_if,
        vars: raw.vars,
        steps: raw.steps,
        origin: origin.to_string(),
        source: text.to_string(),
    };
    for (i, s) in p.steps.iter().enumerate() {
        for t in step_texts(s) {
            for v in var_refs(&t) {
                if !p.vars.contains_key(&v) {
                    return Err(format!(
                        "{origin}: step {} uses ${{{v}}}, which vars does not declare",
                        i + 1
                    ));
                }
            }
        }
    }
    Ok(p)
}

fn step_texts(s: &Step) -> Vec<String> {
    let mut v: Vec<String> = s.except.iter().map(|p| p.0.clone()).collect();
    match &s.action {
        Action::Delete(g) | Action::Truncate(g) | Action::EmptyDir(g) => {
            v.extend(g.iter().map(|p| p.0.clone()))
        }
        Action::KeepNewestKernels(Count::Var(s)) => v.push(s.clone()),
        Action::Write(w) => v.push(w.path.0.clone()),
        Action::Symlink(w) => v.push(w.path.0.clone()),
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

/// Substitutes variables; a list variable multiplies the pattern.
pub fn expand_vars(s: &str, vars: &BTreeMap<String, Var>) -> Vec<String> {
    let Some(i) = s.find("${") else {
        return vec![s.to_string()];
    };
    let Some(end) = s[i..].find('}') else {
        return vec![s.to_string()];
    };
    let name = &s[i + 2..i + end];
    let values = vars.get(name).map(|v| v.values()).unwrap_or_default();
    let mut out = Vec::new();
    for v in values {
        let t = format!("{}{}{}", &s[..i], v, &s[i + end + 1..]);
        out.extend(expand_vars(&t, vars));
    }
    out
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
        .unwrap_err();
        assert!(e.starts_with("f.yaml:5:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = parse(
            "name: x\ndescription: d\nsteps:\n  - delete: [/a, \"/b/[c\"]\n",
            "f.yaml",
        )
        .unwrap_err();
        assert!(e.starts_with("f.yaml:4:"), "{e}");
        assert!(e.contains("never closed"), "{e}");
        let e = parse(
            "name: x\ndescription: d\nsteps:\n  - delete: [/a]\n    truncate: [/b]\n",
            "f.yaml",
        )
        .unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
    }

    #[test]
    fn vars_expand() {
        let p = parse(
            "name: x\ndescription: d\nvars: {keep: [C, 'en*']}\nsteps:\n  - delete: ['/l/*']\n    except: ['/l/${keep}']\n",
            "f",
        )
        .unwrap();
        assert_eq!(expand_vars("/l/${keep}", &p.vars), vec!["/l/C", "/l/en*"]);
        assert!(
            parse(
                "name: x\ndescription: d\nsteps:\n  - delete: ['/l/${nope}']\n",
                "f"
            )
            .is_err()
        );
    }
}
