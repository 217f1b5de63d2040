//! The engine's log lines: what an operator reads in `--log-format json`
//! (one line per event that matters, with the target and the batch), on
//! paused time, captured from a JSON subscriber.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::pool;
use hygiene_core::testing::{Script, ScriptedExecutor};
use hygiene_core::{
    Amount, Gate, GateCheck, GatePolicy, GateVerdict, GateWhen, Health, Rollout, RolloutConfig,
    TargetState,
};

/// Where the subscriber writes: every line kept.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lines").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn parsed(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().expect("lines").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

/// A gate (or hook) whose answer the test sets.
#[derive(Debug, Clone)]
struct Switch {
    name: &'static str,
    go: Arc<AtomicBool>,
}

#[async_trait]
impl Gate for Switch {
    fn name(&self) -> String {
        self.name.into()
    }
    async fn check(&self, _at: &GateCheck) -> hygiene_core::Result<GateVerdict> {
        Ok(if self.go.load(Ordering::SeqCst) {
            GateVerdict::Go
        } else {
            GateVerdict::Hold("alert firing".into())
        })
    }
}

fn find<'a>(lines: &'a [serde_json::Value], message: &str) -> Vec<&'a serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == message)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_event_that_matters_is_a_log_line_with_its_target() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // t003 is out before the run (found out); t001's maintenance fails and
    // the run stops; a gate holds batch 1 for a minute; a hook after each
    // batch; a soak between batches.
    let (lb, ids) = pool(4);
    lb.set_status(&ids[3], TargetState::OutOfService, Health::Unknown)
        .expect("status");
    let exec = ScriptedExecutor::new();
    exec.set_duration_all(&ids, Duration::from_secs(1));
    exec.script(
        &ids[1],
        Script {
            duration: Duration::from_secs(1),
            fail: Some("patch failed".into()),
            ..Script::default()
        },
    );
    let gate_go = Arc::new(AtomicBool::new(false));
    let opener = Arc::clone(&gate_go);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        opener.store(true, Ordering::SeqCst);
    });
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .max_failures(Amount::Count(0))
        .poll_interval(Duration::from_millis(100))
        .health_timeout(Duration::from_secs(5))
        .wait_between_batches(Duration::from_secs(10))
        .build()
        .expect("config");
    let report = Rollout::new(lb.clone(), exec, cfg.clone())
        .with_gate(
            Switch {
                name: "alerts",
                go: gate_go,
            },
            GatePolicy::new(Duration::from_secs(5), Duration::from_secs(600))
                .expect("policy")
                .only(GateWhen::Before),
        )
        .with_hook(
            Switch {
                name: "notify-team",
                go: Arc::new(AtomicBool::new(true)),
            },
            GateWhen::After,
            Duration::from_secs(30),
        )
        .expect("hook")
        .run()
        .await
        .expect("run");
    assert!(!report.is_success());

    // A second run whose hook before the batch fails.
    let (lb2, _) = pool(1);
    let _ = Rollout::new(lb2, ScriptedExecutor::new(), cfg)
        .with_hook(
            Switch {
                name: "open-change",
                go: Arc::new(AtomicBool::new(false)),
            },
            GateWhen::Before,
            Duration::from_secs(30),
        )
        .expect("hook")
        .run()
        .await
        .expect("second run");

    let lines = lines.parsed();
    let t = |l: &serde_json::Value| l["fields"]["target.id"].as_str().unwrap_or("").to_owned();
    let found = find(
        &lines,
        "found out of rotation, not by this run: left as found",
    );
    assert_eq!(
        found.iter().map(|l| t(l)).collect::<Vec<_>>(),
        vec![ids[3].to_string()],
        "{lines:#?}"
    );
    let failed = find(&lines, "target failed");
    assert!(
        failed.iter().any(|l| t(l) == ids[1].as_str()
            && l["fields"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("patch failed")),
        "{failed:#?}"
    );
    assert_eq!(failed[0]["level"], "WARN");
    let phases = find(&lines, "phase");
    assert!(
        phases
            .iter()
            .any(|l| t(l) == ids[0].as_str() && l["fields"]["phase"] == "executing"),
        "{phases:#?}"
    );
    assert!(!find(&lines, "batch starts").is_empty());
    assert!(!find(&lines, "no new targets start").is_empty());
    let held = find(&lines, "gate says no: the rollout is held");
    assert!(
        held.iter().any(|l| l["fields"]["gate"] == "alerts"
            && l["fields"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("alert firing")),
        "{held:#?}"
    );
    let answered = find(&lines, "gate answered");
    assert!(
        answered
            .iter()
            .any(|l| l["fields"]["gate"] == "alerts" && l["fields"]["go"] == true),
        "{answered:#?}"
    );
    let ran = find(&lines, "hook ran");
    assert!(
        ran.iter().any(|l| l["fields"]["hook"] == "notify-team"),
        "{ran:#?}"
    );
    let hook_failed = find(&lines, "hook failed");
    assert!(
        hook_failed
            .iter()
            .any(|l| l["fields"]["hook"] == "open-change"),
        "{hook_failed:#?}"
    );
    let soak = find(&lines, "batch back: soaking before the next");
    assert!(
        soak.iter().any(|l| l["fields"]["wait_ms"] == 10_000),
        "{soak:#?}"
    );
}
