//! Profile YAML mistakes through the CLI: a variable that refers to itself
//! (in YAML or through `--set`) is an error naming the cycle, not a stack
//! overflow; a glob may start with a declared variable and an undeclared
//! one is reported as undeclared; `write.mode` numbers are refused.

mod common;

use common::*;

fn check(dir: &std::path::Path, yaml: &str) -> std::process::Output {
    let f = dir.join("p.yaml");
    std::fs::write(&f, yaml).unwrap();
    run(vmfinal().args(["profiles", "check"]).arg(&f))
}

const HEAD: &str = "name: mine\ndescription: x\n";

#[test]
fn variables_in_globs() {
    let d = tempfile::tempdir().unwrap();
    let out = check(
        d.path(),
        &format!("{HEAD}vars: {{dir: /opt/app}}\nsteps:\n  - delete: ['${{dir}}/cache/*']\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = assert_clean_failure(&check(
        d.path(),
        &format!("{HEAD}steps:\n  - delete: ['${{dir}}/cache/*']\n"),
    ));
    assert!(e.contains("${dir}, which vars does not declare"), "{e}");
    assert!(!e.contains("absolute"), "{e}");
    let e = assert_clean_failure(&check(
        d.path(),
        &format!("{HEAD}vars: {{dir: opt/app}}\nsteps:\n  - delete: ['${{dir}}/cache/*']\n"),
    ));
    assert!(e.contains("absolute"), "{e}");
}

#[test]
fn self_referring_variables_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let e = assert_clean_failure(&check(
        d.path(),
        &format!("{HEAD}vars: {{x: '${{x}}'}}\nsteps:\n  - delete: ['/a/${{x}}']\n"),
    ));
    assert!(e.contains("variable cycle: x -> x"), "{e}");
    let e = assert_clean_failure(&check(
        d.path(),
        &format!("{HEAD}vars: {{a: '/${{b}}', b: '${{a}}'}}\nsteps:\n  - delete: ['${{a}}/c']\n"),
    ));
    assert!(e.contains("variable cycle: a -> b -> a"), "{e}");
    // --set: checked before any work, so no root or image is needed to see it.
    let img = d.path().join("x.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } == 0 {
        let e = assert_clean_failure(&run(vmfinal()
            .args(["clean", "--dry-run", "--set", "kernels.keep=${keep}"])
            .arg(&img)));
        assert!(e.contains("variable cycle: keep -> keep"), "{e}");
    }
}

#[test]
fn write_modes_are_octal_text() {
    let d = tempfile::tempdir().unwrap();
    let step =
        |m: &str| format!("{HEAD}steps:\n  - write: {{path: /etc/motd, content: hi, mode: {m}}}\n");
    for good in ["0644", "'0600'", "\"1777\"", "'0o755'"] {
        let out = check(d.path(), &step(good));
        assert!(
            out.status.success(),
            "{good}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for bad in ["420", "644", "0o644", "'0999'", "'10000'"] {
        let e = assert_clean_failure(&check(d.path(), &step(bad)));
        assert!(e.contains("mode"), "{bad}: {e}");
    }
}
