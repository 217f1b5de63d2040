//! A real Prometheus (Debian's `prometheus`) on loopback: it scrapes a
//! metric the test controls and fires an alert over it; the Prometheus
//! gate holds a rollout while the alert fires and lets it go once it
//! clears.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{prometheus_bin, Prometheus, Server};
use hygiene_core::testing::{InMemoryBalancer, Operation, ScriptedExecutor};
use hygiene_core::{
    AbortReason, EventKind, Gate, GateCheck, GatePolicy, GateVerdict, GateWhen, Outcome,
    RetryPolicy, Rollout, RolloutConfig,
};
use hygiene_hooks::{HttpGate, PrometheusGate};

const RULES: &str = "groups:
  - name: test
    rules:
      - alert: WebErrors
        expr: hygiene_test_errors > 0
        labels:
          service: web
";

const FIRING: &str = r#"ALERTS{alertstate="firing",service="web"}"#;

fn drains(lb: &InMemoryBalancer) -> usize {
    lb.calls()
        .iter()
        .filter(|c| c.op == Operation::Drain && c.ok)
        .count()
}

fn config() -> RolloutConfig {
    RolloutConfig::builder()
        .poll_interval(Duration::from_millis(50))
        .call_timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_total: Duration::from_millis(200),
        })
        .build()
        .expect("config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_holds_the_rollout_and_its_clearing_lets_it_go() {
    let Some(bin) = prometheus_bin() else {
        return;
    };
    let errors = Arc::new(AtomicU64::new(1));
    let value = Arc::clone(&errors);
    let metrics = Server::start(Arc::new(move |_, path, _| {
        if path.starts_with("/metrics") {
            (
                200,
                format!(
                    "# TYPE hygiene_test_errors gauge\nhygiene_test_errors {}\n",
                    value.load(Ordering::SeqCst)
                ),
            )
        } else {
            (404, String::new())
        }
    }))
    .await;
    let prom = Prometheus::start(&bin, metrics.addr, RULES).await;
    prom.wait_series(FIRING, 1).await;

    let gate = PrometheusGate::new("alerts", &prom.url, FIRING).expect("gate");
    match gate
        .check(&GateCheck::new(GateWhen::Before, 0, "direct"))
        .await
        .expect("asked")
    {
        GateVerdict::Hold(why) => assert!(why.contains("WebErrors"), "{why}"),
        GateVerdict::Go => panic!("go while the alert fires"),
    }

    let lb = InMemoryBalancer::with_targets(["web-1", "web-2"]).expect("pool");
    let rollout = Rollout::new(lb.clone(), ScriptedExecutor::new(), config()).with_gate(
        gate,
        GatePolicy::new(Duration::from_millis(200), Duration::from_secs(60)).expect("policy"),
    );
    let mut events = rollout.subscribe();
    let run = tokio::spawn(rollout.run());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(drains(&lb), 0, "drained while the alert fired");
    assert!(!run.is_finished());

    errors.store(0, Ordering::SeqCst);
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the rollout went on once the alert cleared")
        .expect("task")
        .expect("run");
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(drains(&lb), 2);

    let mut held = None;
    let mut noes = 0;
    let mut go = 0;
    while let Ok(e) = events.try_recv() {
        match e.kind {
            EventKind::GateHolding { reason, .. } => held = Some(reason),
            EventKind::GateChecked { go: false, .. } => noes += 1,
            EventKind::GateChecked { go: true, .. } => go += 1,
            _ => {}
        }
    }
    let held = held.expect("a hold event");
    assert!(
        held.contains("WebErrors") && held.contains("service=\"web\""),
        "{held}"
    );
    assert!(noes >= 5, "asked again on its interval: {noes} noes");
    assert!(go >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_that_cannot_be_asked_holds_the_rollout_until_the_timeout_aborts_it() {
    // Nothing listens there: the state of a Prometheus that is down.
    let url = format!("http://127.0.0.1:{}", common::free_port());
    let gate = PrometheusGate::new("alerts", &url, FIRING).expect("gate");
    let lb = InMemoryBalancer::with_targets(["web-1"]).expect("pool");
    let report = Rollout::new(lb.clone(), ScriptedExecutor::new(), config())
        .with_gate(
            gate,
            GatePolicy::new(Duration::from_millis(100), Duration::from_millis(500))
                .expect("policy"),
        )
        .run()
        .await
        .expect("run");
    match &report.outcome {
        Outcome::Aborted {
            reason: AbortReason::Gate { gate, reason, .. },
        } => {
            assert_eq!(gate, "alerts");
            assert!(reason.contains("could not be asked"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(drains(&lb), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_gate_goes_on_2xx_only() {
    let status = Arc::new(AtomicU64::new(503));
    let s = Arc::clone(&status);
    let server = Server::start(Arc::new(move |_, _, _| {
        let code = s.load(Ordering::SeqCst) as u16;
        (code, format!("status {code}"))
    }))
    .await;
    let gate = HttpGate::new("smoke", &server.url("/ready?token=s3cret")).expect("gate");
    let at = GateCheck::new(GateWhen::After, 1, "run");
    match gate.check(&at).await.expect("asked") {
        GateVerdict::Hold(why) => {
            assert!(why.contains("503") && why.contains("/ready"), "{why}");
            assert!(!why.contains("s3cret"), "the query is never shown: {why}");
        }
        GateVerdict::Go => panic!("go on 503"),
    }
    status.store(204, Ordering::SeqCst);
    assert_eq!(gate.check(&at).await.expect("asked"), GateVerdict::Go);
}
