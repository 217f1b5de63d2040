//! What the `hygiene` end-to-end tests share: the binary without the
//! caller's `HYGIENE_…` variables, and the example configurations of
//! `examples/config/` with the test's endpoints filled in.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binary, with no `HYGIENE_…` variable of the caller's leaking in.
pub fn hygiene(config: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hygiene"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HYGIENE_") {
            c.env_remove(k);
        }
    }
    c.arg("-c")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null());
    c
}

/// The `demo` program of the `examples` package (its `demo patch` is the
/// maintenance these tests run), beside this package's `hygiene` binary:
/// the workspace test run (`./scripts/test`) builds both. A test run of
/// this package alone needs `cargo build -p examples --bin demo` first,
/// and says so.
pub fn demo_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_hygiene")).with_file_name("demo");
    assert!(
        path.is_file(),
        "{} is missing: run ./scripts/test (the workspace builds it), or `cargo build -p examples --bin demo` before `cargo test -p hygiene`",
        path.display()
    );
    path
}

/// Whether a real HAProxy is here (skips loudly, or fails under
/// `HYGIENE_REQUIRE_INTEGRATION=1`).
pub fn have_haproxy() -> bool {
    hygiene_core::conformance::integration_available(
        "haproxy",
        examples::haproxy::haproxy_bin().is_some(),
        "run ./scripts/test, which installs it (apt-get install -y haproxy)",
    )
}

/// Exit code, stdout, stderr.
pub fn out(mut c: Command) -> (i32, String, String) {
    let o = c.output().expect("run hygiene");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `examples/config/<name>`, parsed.
pub fn example_config(name: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/config")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("example config");
    text.parse().expect("example config is TOML")
}

/// The table at a dotted path (`balancer.nginx`); panics when the example
/// has no such section (the test and the documentation drifted apart).
pub fn section<'a>(t: &'a mut toml::Table, dotted: &str) -> &'a mut toml::Table {
    dotted.split('.').fold(t, |t, k| {
        t.get_mut(k)
            .and_then(toml::Value::as_table_mut)
            .unwrap_or_else(|| panic!("the example config has no [{dotted}]"))
    })
}

/// Sets `key` of the section, and says whether the example had it (a key
/// the test replaces must be one the example documents).
pub fn replace(t: &mut toml::Table, dotted: &str, key: &str, v: impl Into<toml::Value>) {
    let s = section(t, dotted);
    assert!(
        s.insert(key.to_owned(), v.into()).is_some(),
        "the example's [{dotted}] has no {key}"
    );
}

/// Sets `key` of the section, one the example documents in a comment
/// only (`endpoint_url`).
pub fn set(t: &mut toml::Table, dotted: &str, key: &str, v: impl Into<toml::Value>) {
    section(t, dotted).insert(key.to_owned(), v.into());
}

/// Writes `t` as `dir/hygiene.toml`.
pub fn write(dir: &Path, t: &toml::Table) -> PathBuf {
    let path = dir.join("hygiene.toml");
    std::fs::write(&path, toml::to_string(t).expect("serialize")).expect("write config");
    path
}

/// The lines of `--json` output, parsed; the report is the last.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// moto's dummy credentials, and nothing of the caller's AWS setup.
pub fn aws_env(c: &mut Command, home: &Path) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"));
}
