//! The fault soak's CI smoke: about a minute of rollouts over two real
//! HAProxy nodes with a fixed seed, every fault kind injected at least
//! once; no target may be lost and no request may fail outside the
//! windows where a node came back with fresh state (a reload, a restart)
//! during a maintenance, and those windows stay within their bound.

use std::process::Command;

use examples::haproxy::haproxy_bin;
use hygiene_core::conformance::integration_available;

#[test]
fn seeded_soak_loses_nothing_and_fails_no_request() {
    if !integration_available(
        "haproxy",
        haproxy_bin().is_some(),
        "run ./scripts/test, which installs it (apt-get install -y haproxy)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args(["--seed", "7", "--rollouts", "9", "--verbose", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run soak");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("no JSON line ({e}): {stdout}\n{stderr}"));
    eprintln!("{line}");
    let log = std::fs::read_to_string(dir.path().join("soak.log")).unwrap_or_default();
    let at = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(at("targets_lost"), 0, "{line}\n{log}");
    for (kind, figures) in report["kinds"].as_object().expect("kinds") {
        assert!(
            figures["injected"].as_u64().unwrap_or(0) >= 1,
            "{kind} never injected: {line}"
        );
    }
    assert!(at("requests") > 1000, "the load ran: {line}");
    assert!(
        at("reaction_ms_max") <= at("reaction_bound_ms"),
        "reload reaction over its bound: {line}"
    );
    assert_eq!(
        at("failed_outside_reload"),
        0,
        "failed requests outside the windows of a node back with fresh state: {line}\n{log}"
    );
    assert_eq!(
        report["haproxy_outside_reload"].as_object().map(|o| o
            .values()
            .filter_map(serde_json::Value::as_u64)
            .sum::<u64>()),
        Some(0),
        "HAProxy counted errors outside those windows: {line}\n{log}"
    );
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "the soak could not run: {line}\n{log}"
    );
}
