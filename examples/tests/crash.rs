//! The rollout process killed with SIGKILL at every kind of journal record
//! boundary, against a real HAProxy under load, then resumed: every target
//! ends in service with fresh health, or kept out and named, and no request
//! fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use examples::haproxy::haproxy_bin;
use examples::load::{Load, LoadConfig};
use examples::scenario::{Scenario, ScenarioConfig};
use hygiene_core::conformance::integration_available;
use hygiene_core::journal::{FileJournal, Op, Record};
use hygiene_core::{Report, TargetState};

fn have_haproxy() -> bool {
    integration_available(
        "haproxy",
        haproxy_bin().is_some(),
        "run ./scripts/test, which installs it (apt-get install -y haproxy)",
    )
}

/// Where to kill the rollout process.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Right after the first drain's intent is on disk.
    DrainIntent,
    /// Right after the first drain's result (while it drains).
    DrainResult,
    /// During the first maintenance.
    Maintenance,
    /// Right after the first enable's intent.
    EnableIntent,
    /// Between the first target and the second.
    BetweenTargets,
}

impl KillAt {
    fn reached(self, records: &[Record]) -> bool {
        let intent = |op: Op| {
            records
                .iter()
                .any(|r| matches!(r, Record::Intent { op: o, .. } if *o == op))
        };
        match self {
            Self::DrainIntent => intent(Op::Drain),
            Self::DrainResult => {
                let first_drain = records.iter().find_map(|r| match r {
                    Record::Intent {
                        call,
                        op: Op::Drain,
                        ..
                    } => Some(*call),
                    _ => None,
                });
                records
                    .iter()
                    .any(|r| matches!(r, Record::Result { call, .. } if Some(*call) == first_drain))
            }
            Self::Maintenance => intent(Op::Execute),
            Self::EnableIntent => intent(Op::Enable),
            Self::BetweenTargets => records.iter().any(|r| matches!(r, Record::Finished { .. })),
        }
    }
}

fn rollout(mode: &str, scn: &Scenario, journal: &Path, patch_ms: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rollout"));
    c.arg(mode)
        .arg("--socket")
        .arg(scn.haproxy.socket())
        .arg("--journal")
        .arg(journal)
        .arg("--on-interrupted")
        .arg("fail")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_demo"))
        .arg("patch")
        .arg("--control")
        .arg(scn.control.addr().to_string())
        .arg("--patch-ms")
        .arg(patch_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

async fn kill_at(kill: KillAt) {
    let scn = Scenario::start(ScenarioConfig {
        servers: 2,
        ..ScenarioConfig::default()
    })
    .await
    .expect("scenario");
    let load = Load::start(
        scn.frontend(),
        LoadConfig {
            keepalive_clients: 1,
            fresh_clients: 1,
            rate_per_client: Some(50),
            ..LoadConfig::default()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("web.jsonl");
    let patch_ms = 1500;
    let mut child = rollout("run", &scn, &journal, patch_ms)
        .spawn()
        .expect("spawn rollout");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = FileJournal::read(&journal).unwrap_or_default();
        if kill.reached(&records) {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{kill:?}: the rollout ended before the kill point"
        );
        assert!(Instant::now() < deadline, "{kill:?} never reached");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if matches!(kill, KillAt::Maintenance) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    child.wait().expect("reap");
    // A new run refuses to start over the unfinished journal.
    let refused = rollout("run", &scn, &journal, patch_ms)
        .output()
        .expect("run again");
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{kill:?}: a new run started"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("resume"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // A maintenance killed mid-way survives its parent (own process group):
    // resume, started at once, waits for it and reads its outcome.
    let resumed = rollout("resume", &scn, &journal, patch_ms)
        .output()
        .expect("resume");
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    let report: Report = serde_json::from_slice(&resumed.stdout)
        .unwrap_or_else(|e| panic!("{kill:?}: no report ({e}): {stderr}"));
    let stats = load.stop().await;
    let out = scn.out_of_rotation().await.expect("haproxy state");
    for t in &report.targets {
        if t.is_kept_out() {
            assert!(
                out.contains(&t.id),
                "{kill:?}: {} reported out but serving",
                t.id
            );
        } else {
            assert!(
                !out.contains(&t.id),
                "{kill:?}: {} lost out of rotation: {report:#?}",
                t.id
            );
        }
    }
    // Every kill point finishes clean: even a maintenance cut off from its
    // parent is found again from the journal's handle (on_interrupted =
    // fail would keep it out only if its outcome could not be learned).
    let kept: Vec<_> = report.kept_out().map(|t| t.id.clone()).collect();
    assert!(kept.is_empty(), "{kill:?}: {report:#?}");
    if matches!(kill, KillAt::Maintenance) {
        assert!(
            report
                .targets
                .iter()
                .any(|t| t.notes.iter().any(|n| n.contains("outcome read"))),
            "{kill:?}: the interrupted maintenance was not recovered: {report:#?}"
        );
    }
    for t in report.targets.iter().filter(|t| !t.is_kept_out()) {
        let st = scn
            .balancer
            .list()
            .await
            .expect("list")
            .into_iter()
            .find(|l| l.target.id == t.id)
            .expect("listed");
        assert_eq!(st.status.state, TargetState::InService, "{kill:?}");
    }
    assert!(stats.requests > 50, "{kill:?}: the load ran: {stats:?}");
    assert_eq!(
        stats.failed, 0,
        "{kill:?}: failed requests {:?}",
        stats.failed_by_kind
    );
    eprintln!(
        "{kill:?}: resumed {:?}, kept out {kept:?}, {} requests, {} failed, journal {} records",
        report.outcome,
        stats.requests,
        stats.failed,
        FileJournal::read(&journal).map(|r| r.len()).unwrap_or(0)
    );
    scn.stop().await;
}

use hygiene_core::LoadBalancer as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_kind_of_boundary_and_resumed() {
    if !have_haproxy() {
        return;
    }
    for kill in [
        KillAt::DrainIntent,
        KillAt::DrainResult,
        KillAt::Maintenance,
        KillAt::EnableIntent,
        KillAt::BetweenTargets,
    ] {
        kill_at(kill).await;
    }
}
