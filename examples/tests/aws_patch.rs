//! `aws-patch` end to end against a real moto server it starts itself.
#![cfg(feature = "aws")]

use std::process::Command;

use hygiene_core::conformance::integration_available;
use hygiene_core::{Outcome, Report, TargetResult};

#[test]
fn aws_patch_runs_end_to_end_against_moto() {
    if !integration_available(
        "moto",
        hygiene_aws::moto::find_moto_server().is_some(),
        "run ./scripts/test, which installs moto[server] into .venv",
    ) {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_aws-patch"))
        .args([
            "--moto-demo",
            "4",
            "--batch",
            "50%",
            "--min-healthy",
            "2",
            "--poll-ms",
            "200",
            "--json",
        ])
        .output()
        .expect("run aws-patch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "aws-patch failed: {stderr}");
    let report: Report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report JSON: {e}; stderr: {stderr}"));
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.targets.len(), 4);
    assert!(
        report
            .targets
            .iter()
            .all(|t| t.result == TargetResult::Done),
        "{report:#?}"
    );
    assert_eq!(report.batches, 2, "batch 50% of 4");
}
