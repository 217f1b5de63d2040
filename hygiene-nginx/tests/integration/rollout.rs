//! Full rollouts through the core engine against the test server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hygiene_core::{
    Amount, ExecOutcome, Executor, OnFailure, Outcome, Preflight, Result, Rollout, RolloutConfig,
    Target, TargetResult,
};

use crate::builder;
use hygiene_nginx::testing::{FakeNginx, Kind, State};

/// Runs the "maintenance" and checks, at that moment, on the server itself,
/// that the target is out of rotation with no connection left.
#[derive(Debug, Clone)]
struct CheckingExecutor {
    srv: Arc<Mutex<State>>,
    kind: Kind,
    upstream: &'static str,
    ran: Arc<Mutex<Vec<String>>>,
    /// This server fails every health check after its maintenance.
    breaks: Option<&'static str>,
}

#[async_trait]
impl Executor for CheckingExecutor {
    fn name(&self) -> String {
        "checking".into()
    }

    async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>> {
        Ok(targets.iter().map(|_| Preflight::Ready).collect())
    }

    async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>> {
        let mut out = Vec::new();
        for t in targets {
            let server = t.meta.get("server").cloned().unwrap_or_default();
            let mut s = self
                .srv
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let state = s.upstream_mut(self.kind, self.upstream);
            let p = state
                .peers
                .iter()
                .find(|p| p.server == server)
                .expect("target known to the server")
                .clone();
            // Issue 12, NGINX 1: `draining` alone still takes sticky
            // requests; the maintenance needs the server down.
            let ok = p.down && p.active == 0;
            if self.breaks == Some(server.as_str()) {
                s.sick.push(server.clone());
            }
            drop(s);
            self.ran
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(t.id.to_string());
            out.push(if ok {
                ExecOutcome::success(t.id.clone(), Duration::from_millis(1))
            } else {
                ExecOutcome::failure(
                    t.id.clone(),
                    Duration::ZERO,
                    format!("executed while in rotation: {p:?}"),
                )
            });
        }
        Ok(out)
    }
}

fn config() -> RolloutConfig {
    RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(2))
        .drain_timeout(Duration::from_secs(10))
        .health_timeout(Duration::from_secs(10))
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("valid config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_rollout_over_an_http_upstream() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| {
        s.auto_check = Some(true);
        for p in &mut s.upstream_mut(Kind::Http, "backend").peers {
            p.active = 4;
            p.active_script = [3, 2, 1, 0].into();
        }
    });
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    let ran = Arc::new(Mutex::new(Vec::new()));
    let exec = CheckingExecutor {
        srv: srv.state.clone(),
        kind: Kind::Http,
        upstream: "backend",
        ran: ran.clone(),
        breaks: None,
    };
    let report = Rollout::new(lb, exec, config()).run().await.expect("run");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.targets.len(), 3);
    assert!(report
        .targets
        .iter()
        .all(|t| t.result == TargetResult::Done));
    assert_eq!(ran.lock().expect("lock").len(), 3);
    for i in 0..3 {
        let p = srv.peer(Kind::Http, "backend", i);
        assert!(!p.drain && !p.down, "peer {i} not back: {p:?}");
    }
    // One at a time: drain then enable, per server, in order.
    let bodies: Vec<(String, String)> = srv
        .patches()
        .into_iter()
        .map(|l| (l.path, l.body))
        .collect();
    let mut want = Vec::new();
    for i in 0..3 {
        let path = format!("/api/9/http/upstreams/backend/servers/{i}");
        want.push((path.clone(), r#"{"drain":true}"#.to_owned()));
        want.push((path.clone(), r#"{"down":true}"#.to_owned()));
        want.push((path, r#"{"down":false,"drain":false}"#.to_owned()));
    }
    assert_eq!(bodies, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_rollout_over_a_stream_upstream() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| {
        s.auto_check = Some(true);
        for p in &mut s.upstream_mut(Kind::Stream, "tcp").peers {
            p.active = 2;
            p.active_script = [1, 0].into();
        }
    });
    let lb = builder([&srv])
        .stream_upstream("tcp")
        .build()
        .expect("valid");
    let ran = Arc::new(Mutex::new(Vec::new()));
    let exec = CheckingExecutor {
        srv: srv.state.clone(),
        kind: Kind::Stream,
        upstream: "tcp",
        ran,
        breaks: None,
    };
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(1))
        .health_timeout(Duration::from_secs(10))
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("valid");
    let report = Rollout::new(lb, exec, config).run().await.expect("run");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    for l in srv.patches() {
        assert!(
            l.body == r#"{"down":true}"# || l.body == r#"{"down":false}"#,
            "{l:?}"
        );
    }
    assert!(srv.with(|s| s
        .upstream_mut(Kind::Stream, "tcp")
        .peers
        .iter()
        .all(|p| !p.down)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_its_fresh_check_is_kept_out() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| s.auto_check = Some(true));
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    let ran = Arc::new(Mutex::new(Vec::new()));
    let exec = CheckingExecutor {
        srv: srv.state.clone(),
        kind: Kind::Http,
        upstream: "backend",
        ran,
        breaks: Some("10.0.0.2:8080"),
    };
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(1))
        .max_failures(Amount::Count(1))
        .health_timeout(Duration::from_millis(600))
        .poll_interval(Duration::from_millis(20))
        .on_failure(OnFailure::KeepOut)
        .build()
        .expect("valid");
    let rollout = Rollout::new(lb, exec, config);
    let report = rollout.run().await.expect("run");
    let failed: Vec<&str> = report.failed().map(|t| t.id.as_str()).collect();
    assert_eq!(failed, ["backend/1"], "{}", report.to_json_pretty());
    let kept: Vec<&str> = report.kept_out().map(|t| t.id.as_str()).collect();
    assert_eq!(kept, ["backend/1"]);
    let line = report
        .targets
        .iter()
        .find(|t| t.id.as_str() == "backend/1")
        .expect("in report");
    let hint = match &line.result {
        TargetResult::Failed { restore_hint, .. } => restore_hint.clone().unwrap_or_default(),
        other => panic!("{other:?}"),
    };
    assert!(hint.contains("/http/upstreams/backend/servers/1"), "{hint}");
    let p = srv.peer(Kind::Http, "backend", 1);
    assert!(
        p.down,
        "a server failing its check after maintenance is taken out again: {p:?}"
    );
    for i in [0, 2] {
        let p = srv.peer(Kind::Http, "backend", i);
        assert!(!p.down && !p.drain, "{p:?}");
    }
}
