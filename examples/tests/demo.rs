//! The demo scenario at small scale, with a real HAProxy and live load.

use std::path::PathBuf;
use std::time::Duration;

use examples::haproxy::haproxy_bin;
use examples::load::{Load, LoadConfig};
use examples::scenario::{run_rollout, Scenario, ScenarioConfig};
use hygiene_core::conformance::integration_available;
use hygiene_core::{Amount, Outcome, Rollout, RolloutConfig, Stage, TargetResult, TargetState};

fn have_haproxy() -> bool {
    integration_available(
        "haproxy",
        haproxy_bin().is_some(),
        "run ./scripts/test, which installs it (apt-get install -y haproxy)",
    )
}

fn patch_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_demo"))
}

fn load() -> LoadConfig {
    LoadConfig {
        keepalive_clients: 2,
        fresh_clients: 2,
        rate_per_client: Some(100),
        ..LoadConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_under_load_fails_no_request() {
    if !have_haproxy() {
        return;
    }
    let scn = Scenario::start(ScenarioConfig::default())
        .await
        .expect("scenario");
    let load = Load::start(scn.frontend(), load());
    let exec = scn
        .patch_command(&patch_program(), Duration::from_millis(300), &[])
        .expect("command");
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .health_timeout(Duration::from_secs(20))
        .build()
        .expect("config");
    let (report, timeline) = run_rollout(
        &scn,
        Rollout::new(scn.balancer.clone(), exec, config),
        |_| {},
    )
    .await
    .expect("rollout");
    let stats = load.stop().await;
    assert_eq!(report.outcome, Outcome::Completed, "{report:#?}");
    assert!(report.is_success());
    assert!(stats.requests > 100, "the load ran: {stats:?}");
    assert_eq!(
        stats.failed, 0,
        "failed requests: {:?}",
        stats.failed_by_kind
    );
    assert_eq!(
        stats.by_server.len(),
        3,
        "every service answered: {stats:?}"
    );
    assert!(scn.out_of_rotation().await.expect("list").is_empty());
    for t in &report.targets {
        assert!(
            t.execution.as_ref().is_some_and(|e| e.success),
            "{} was patched",
            t.id
        );
        assert!(t.timings.execute.expect("timing") >= Duration::from_millis(300));
    }
    assert_eq!(timeline.drain_detect.len(), 3);
    scn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_patch_is_kept_out_by_name_and_no_request_fails() {
    if !have_haproxy() {
        return;
    }
    let scn = Scenario::start(ScenarioConfig::default())
        .await
        .expect("scenario");
    let load = Load::start(scn.frontend(), load());
    let exec = scn
        .patch_command(
            &patch_program(),
            Duration::from_millis(200),
            &["s2".to_owned()],
        )
        .expect("command");
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .max_failures(Amount::Count(0))
        .health_timeout(Duration::from_secs(20))
        .build()
        .expect("config");
    let (report, _) = run_rollout(
        &scn,
        Rollout::new(scn.balancer.clone(), exec, config),
        |_| {},
    )
    .await
    .expect("rollout");
    let stats = load.stop().await;
    assert!(
        matches!(&report.outcome, Outcome::Aborted { reason } if reason.to_string().contains("max_failures")),
        "{:?}",
        report.outcome
    );
    let s2 = report
        .targets
        .iter()
        .find(|t| t.id.as_str() == "web/s2")
        .expect("s2 in report");
    match &s2.result {
        TargetResult::Failed {
            phase: Stage::Executing,
            kept_out: true,
            restore_hint: Some(hint),
            reason,
            ..
        } => {
            assert!(hint.contains("web/s2"), "{hint}");
            assert!(reason.contains("exited with code 1"), "{reason}");
        }
        other => panic!("s2 must be kept out: {other:?}"),
    }
    let s3 = report
        .targets
        .iter()
        .find(|t| t.id.as_str() == "web/s3")
        .expect("s3 in report");
    assert_eq!(
        s3.result,
        TargetResult::NotStarted,
        "max_failures = 0 aborts after the first failure"
    );
    assert_eq!(
        stats.failed, 0,
        "failed requests: {:?}",
        stats.failed_by_kind
    );
    let listed = hygiene_core::LoadBalancer::list(&scn.balancer)
        .await
        .expect("list");
    for l in listed {
        // Kept out as it was when its maintenance failed: drained, then
        // disabled (MAINT) before the maintenance.
        let want = if l.target.id.as_str() == "web/s2" {
            TargetState::OutOfService
        } else {
            TargetState::InService
        };
        assert_eq!(l.status.state, want, "{}", l.target.id);
    }
    scn.stop().await;
}
