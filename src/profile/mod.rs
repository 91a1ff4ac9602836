//! Cleanup profiles: the YAML schema, the built-ins, selection, planning
//! (the dry run) and execution.

pub mod alloc;
pub mod ctx;
pub mod glob;
pub mod kernels;
pub mod plan;
pub mod schema;
pub mod version;

use std::path::Path;

pub use schema::Profile;

/// The built-in profiles, in the order they run. Logs come last so that the
/// logs other steps write (dpkg's, for one) are cleaned too.
const BUILTIN: &[(&str, &str)] = &[
    ("kernels", include_str!("../../profiles/kernels.yaml")),
    ("apt", include_str!("../../profiles/apt.yaml")),
    ("dnf", include_str!("../../profiles/dnf.yaml")),
    ("yum", include_str!("../../profiles/yum.yaml")),
    ("apk", include_str!("../../profiles/apk.yaml")),
    ("pip", include_str!("../../profiles/pip.yaml")),
    ("pycache", include_str!("../../profiles/pycache.yaml")),
    ("npm", include_str!("../../profiles/npm.yaml")),
    ("docs", include_str!("../../profiles/docs.yaml")),
    ("locales", include_str!("../../profiles/locales.yaml")),
    ("tmp", include_str!("../../profiles/tmp.yaml")),
    ("cloud-init", include_str!("../../profiles/cloud-init.yaml")),
    (
        "ssh-hostkeys",
        include_str!("../../profiles/ssh-hostkeys.yaml"),
    ),
    ("machine-id", include_str!("../../profiles/machine-id.yaml")),
    (
        "shell-history",
        include_str!("../../profiles/shell-history.yaml"),
    ),
    ("logs", include_str!("../../profiles/logs.yaml")),
];

/// Every known profile: built-ins, then the user's.
#[derive(Debug, Clone)]
pub struct Registry {
    pub profiles: Vec<Profile>,
    /// Profiles given with --profile-file: selected unless excluded.
    pub forced: Vec<String>,
    pub notes: Vec<String>,
}

impl Registry {
    pub fn builtin() -> Self {
        let profiles = BUILTIN
            .iter()
            .map(|(name, text)| {
                let p = schema::parse(text, &format!("built-in:{name}"));
                // A broken built-in is a build defect; the unit test below parses them all.
                p.unwrap_or_else(|e| panic!("built-in profile {name}: {e}"))
            })
            .collect();
        Self {
            profiles,
            forced: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    fn insert(&mut self, p: Profile) {
        if let Some(old) = self.profiles.iter_mut().find(|o| o.name == p.name) {
            self.notes.push(format!(
                "profile '{}' from {} replaces the one from {}",
                p.name, p.origin, old.origin
            ));
            *old = p;
        } else {
            self.profiles.push(p);
        }
    }

    /// Adds a profile file; it is selected unless excluded.
    pub fn add_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let p = load_file(path)?;
        self.forced.push(p.name.clone());
        self.insert(p);
        Ok(())
    }

    /// Adds every `*.yaml`/`*.yml` in a directory (selectable by name).
    pub fn add_dir(&mut self, dir: &Path) -> anyhow::Result<()> {
        let rd = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot read profile directory {}: {e}", dir.display()))?;
        let mut files: Vec<_> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for f in files {
            let p = load_file(&f)?;
            self.insert(p);
        }
        Ok(())
    }

    /// Resolves `--profiles` (`defaults`, `all`, `name`, `+name`, `-name`,
    /// comma-separated, left to right) plus the forced profiles.
    pub fn select(&self, spec: &str) -> anyhow::Result<Vec<Profile>> {
        let mut chosen: Vec<String> = Vec::new();
        let mut excluded: Vec<String> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (minus, name) = match item.as_bytes()[0] {
                b'-' => (true, &item[1..]),
                b'+' => (false, &item[1..]),
                _ => (false, item),
            };
            let names: Vec<String> = match name {
                "defaults" => self
                    .profiles
                    .iter()
                    .filter(|p| p.default)
                    .map(|p| p.name.clone())
                    .collect(),
                "all" => self.profiles.iter().map(|p| p.name.clone()).collect(),
                "none" => Vec::new(),
                n if self.get(n).is_some() => vec![n.to_string()],
                n => anyhow::bail!(
                    "unknown profile '{n}' in --profiles (known: defaults, all, none, {})",
                    self.profiles
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            for n in names {
                if minus {
                    chosen.retain(|c| *c != n);
                    excluded.push(n);
                } else if !chosen.contains(&n) {
                    chosen.push(n);
                }
            }
        }
        for f in &self.forced {
            if !chosen.contains(f) && !excluded.contains(f) {
                chosen.push(f.clone());
            }
        }
        // Registry order, so built-ins keep their running order.
        Ok(self
            .profiles
            .iter()
            .filter(|p| chosen.contains(&p.name))
            .cloned()
            .collect())
    }

    /// Applies `--set PROFILE.VAR=VALUE` (a comma list for list variables).
    pub fn set_var(&mut self, assignment: &str) -> anyhow::Result<()> {
        let (lhs, value) = assignment
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set '{assignment}': expected PROFILE.VAR=VALUE"))?;
        let (pname, var) = lhs
            .split_once('.')
            .ok_or_else(|| anyhow::anyhow!("--set '{assignment}': expected PROFILE.VAR=VALUE"))?;
        let p = self
            .profiles
            .iter_mut()
            .find(|p| p.name == pname)
            .ok_or_else(|| anyhow::anyhow!("--set '{assignment}': no profile named '{pname}'"))?;
        let old = p.vars.get(var).ok_or_else(|| {
            anyhow::anyhow!(
                "--set '{assignment}': profile '{pname}' has no variable '{var}' (it has: {})",
                p.vars.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let new = match old {
            schema::Var::List(_) => schema::Var::List(
                value
                    .split(',')
                    .map(|s| schema::ScalarText::S(s.trim().to_string()))
                    .collect(),
            ),
            schema::Var::One(_) => schema::Var::One(schema::ScalarText::S(value.to_string())),
        };
        // Re-check everything that uses variables with the new value.
        let mut candidate = p.clone();
        candidate.vars.insert(var.to_string(), new);
        schema::validate(&candidate).map_err(|m| anyhow::anyhow!("--set '{assignment}': {m}"))?;
        let vars = candidate.vars;
        p.vars = vars;
        Ok(())
    }
}

/// Parses profile YAML, expands every pattern it holds and matches each
/// glob against `paths`; returns how many (glob, path) pairs match. Pure
/// and total: the entry point of the profile fuzz target (YAML, variables,
/// globs) — any input gives `Ok` or `Err`, never a panic, in bounded time
/// and memory.
pub fn check_text(text: &str, paths: &[&[u8]]) -> Result<usize, String> {
    let p = schema::parse(text, "fuzz").map_err(|e| e.to_string())?;
    let mut texts: Vec<&str> = Vec::new();
    for c in p
        .applies_if
        .iter()
        .chain(p.steps.iter().filter_map(|s| s.when.as_ref()))
    {
        texts.extend(c.exists.iter().chain(&c.missing).map(|t| t.0.as_str()));
    }
    for s in &p.steps {
        texts.extend(s.except.iter().map(|t| t.0.as_str()));
        if let schema::Action::Delete(g)
        | schema::Action::Truncate(g)
        | schema::Action::EmptyDir(g) = &s.action
        {
            texts.extend(g.iter().map(|t| t.0.as_str()));
        }
    }
    let mut n = 0;
    for t in texts {
        for e in schema::expand_vars(t, &p.vars)? {
            for g in glob::compile(&e).map_err(|e| e.to_string())? {
                for path in paths {
                    n += usize::from(g.matches(path));
                    n += usize::from(g.matches_self_or_ancestor(path));
                    n += usize::from(g.may_match_below(path));
                }
            }
        }
    }
    Ok(n)
}

pub fn load_file(path: &Path) -> anyhow::Result<Profile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read profile {}: {e}", path.display()))?;
    Ok(schema::parse(&text, &path.display().to_string())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_select() {
        let r = Registry::builtin();
        assert!(r.profiles.len() >= 15);
        let d = r.select("defaults").unwrap();
        assert!(d.iter().any(|p| p.name == "apt"));
        assert!(!d.iter().any(|p| p.name == "docs"));
        let s = r.select("defaults,-apt,+docs").unwrap();
        assert!(!s.iter().any(|p| p.name == "apt"));
        assert!(s.iter().any(|p| p.name == "docs"));
        assert!(r.select("defaults,bogus").is_err());
        assert_eq!(r.select("all").unwrap().len(), r.profiles.len());
        assert_eq!(s.last().map(|p| p.name.as_str()), Some("logs"));
    }

    #[test]
    fn set_vars() {
        let mut r = Registry::builtin();
        r.set_var("kernels.keep=2").unwrap();
        r.set_var("locales.keep=C,de*").unwrap();
        assert!(r.set_var("locales.nope=1").is_err());
        assert!(r.set_var("locales.keep=[x").is_err());
        // A value that refers to itself is a cycle, not a stack overflow.
        let e = r.set_var("kernels.keep=${keep}").unwrap_err().to_string();
        assert!(e.contains("variable cycle: keep -> keep"), "{e}");
        let e = r.set_var("locales.keep=${keep}").unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn check_text_is_total() {
        let paths: &[&[u8]] = &[b"/var/log/a.gz", b"/", b"", b"/a/b/c"];
        assert!(
            check_text(
                "name: x\ndescription: d\nsteps:\n  - delete: ['/var/log/**/*.gz']\n",
                paths
            )
            .unwrap()
                > 0
        );
        for t in [
            "",
            "[[[[",
            "{a: *b}",
            "name: x\ndescription: d\nvars: {x: '${x}'}\nsteps: [{delete: ['/${x}']}]\n",
        ] {
            assert!(check_text(t, paths).is_err(), "{t}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(check_text(&deep, paths).is_err());
    }
}
