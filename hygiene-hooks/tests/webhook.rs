//! Webhook notifications against a test receiver on loopback: every
//! notification of a run (start, gate held, target failed, end with the
//! way back) arrives in order, as JSON and as a Slack-compatible body; a
//! webhook that always fails is retried and never stops the run.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::Server;
use hygiene_core::testing::{InMemoryBalancer, Operation, Script, ScriptedExecutor};
use hygiene_core::{
    Amount, Gate, GateCheck, GatePolicy, GateVerdict, Outcome, RetryPolicy, Rollout, RolloutConfig,
    TargetId,
};
use hygiene_hooks::{WebhookFormat, WebhookNotifier};

/// Records each body it is sent; answers `status`.
fn receiver(
    status: u16,
) -> (
    Arc<Mutex<Vec<serde_json::Value>>>,
    Arc<AtomicUsize>,
    common::Handler,
) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(AtomicUsize::new(0));
    let (g, h) = (Arc::clone(&got), Arc::clone(&hits));
    let handler: common::Handler = Arc::new(move |method, path, body| {
        h.fetch_add(1, Ordering::SeqCst);
        assert_eq!(method, "POST");
        assert_eq!(path, "/hook/T0/B0/secret");
        let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
        g.lock().expect("lock").push(v);
        (
            status,
            if status == 200 {
                "ok".into()
            } else {
                "down".into()
            },
        )
    });
    (got, hits, handler)
}

/// Says no until it is switched to go.
#[derive(Debug, Clone, Default)]
struct Switch(Arc<AtomicBool>);

#[async_trait]
impl Gate for Switch {
    fn name(&self) -> String {
        "change-freeze".into()
    }
    async fn check(&self, _at: &GateCheck) -> hygiene_core::Result<GateVerdict> {
        Ok(if self.0.load(Ordering::SeqCst) {
            GateVerdict::Go
        } else {
            GateVerdict::Hold("freeze until 10:00".into())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notification_arrives_and_a_failing_webhook_never_stops_the_run() {
    let (json_got, _, json_handler) = receiver(200);
    let (slack_got, _, slack_handler) = receiver(200);
    let (_, broken_hits, broken_handler) = receiver(500);
    let json_server = Server::start(json_handler).await;
    let slack_server = Server::start(slack_handler).await;
    let broken_server = Server::start(broken_handler).await;
    let path = "/hook/T0/B0/secret";

    let lb = InMemoryBalancer::with_targets(["web-1", "web-2", "web-3"]).expect("pool");
    let exec = ScriptedExecutor::new();
    let bad = TargetId::new("web-2").expect("id");
    exec.script(
        &bad,
        Script {
            fail: Some("apt-get upgrade failed: exit 100".into()),
            ..Script::default()
        },
    );
    let cfg = RolloutConfig::builder()
        .poll_interval(Duration::from_millis(20))
        .max_failures(Amount::Count(1))
        .retry(RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            max_total: Duration::from_millis(100),
        })
        .build()
        .expect("config");
    let gate = Switch::default();
    let rollout = Rollout::new(lb.clone(), exec, cfg)
        .with_gate(
            gate.clone(),
            GatePolicy::new(Duration::from_millis(50), Duration::from_secs(30)).expect("policy"),
        )
        .with_notifier(
            WebhookNotifier::new(&broken_server.url(path), WebhookFormat::Json).expect("hook"),
        )
        .with_notifier(
            WebhookNotifier::new(&json_server.url(path), WebhookFormat::Json).expect("hook"),
        )
        .with_notifier(
            WebhookNotifier::new(&slack_server.url(path), WebhookFormat::Slack).expect("hook"),
        );
    let run = tokio::spawn(rollout.run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.0.store(true, Ordering::SeqCst);
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("in time")
        .expect("task")
        .expect("run");

    // The broken webhook was retried, and changed nothing.
    assert_eq!(report.outcome, Outcome::Completed);
    let drained = lb
        .calls()
        .iter()
        .filter(|c| c.op == Operation::Drain && c.ok)
        .count();
    assert_eq!(drained, 3);
    assert!(
        broken_hits.load(Ordering::SeqCst) >= 4 * 4,
        "each of 4 notifications tried 4 times: {}",
        broken_hits.load(Ordering::SeqCst)
    );

    let got = json_got.lock().expect("lock").clone();
    let kinds: Vec<&str> = got
        .iter()
        .map(|v| v["event"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        kinds,
        ["started", "gate_held", "target_failed", "finished"],
        "{got:#?}"
    );
    for v in &got {
        assert_eq!(v["run_id"], report.run_id.as_str());
        assert!(v["text"].is_string());
    }
    assert_eq!(got[0]["selected"], 3);
    assert_eq!(got[1]["gate"], "change-freeze");
    assert_eq!(got[1]["reason"], "freeze until 10:00");
    assert_eq!(got[2]["id"], "web-2");
    assert!(got[2]["reason"]
        .as_str()
        .expect("reason")
        .contains("exit 100"));
    let end = &got[3];
    assert_eq!(end["outcome"]["kind"], "completed");
    assert_eq!(end["summary"]["done"], 2);
    assert_eq!(end["summary"]["failed"], 1);
    assert_eq!(end["summary"]["kept_out"], 1);
    assert_eq!(end["kept_out"][0]["id"], "web-2");
    let hint = end["kept_out"][0]["restore_hint"]
        .as_str()
        .expect("the way back");
    assert!(hint.contains("web-2"), "{hint}");
    assert!(end["text"].as_str().expect("text").contains(hint));

    let slack = slack_got.lock().expect("lock").clone();
    assert_eq!(slack.len(), 4);
    for v in &slack {
        let o = v.as_object().expect("object");
        assert_eq!(o.len(), 1, "Slack gets text only: {v}");
        assert!(o["text"]
            .as_str()
            .expect("text")
            .starts_with("hygiene: rollout"));
    }
    assert!(slack[3]["text"]
        .as_str()
        .expect("text")
        .contains("web-2 kept out of rotation"));
}
