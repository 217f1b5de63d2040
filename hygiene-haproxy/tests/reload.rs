//! HAProxy reloaded (`-sf`) while a server is being maintained: the reload
//! forgets the runtime DRAIN and puts the server back in rotation; the
//! engine's guard sees it within one poll interval and drains it again.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{haproxy_bin, Backend, Haproxy, Layout};
use hygiene_core::{
    ExecOutcome, Executor, Preflight, Rollout, RolloutConfig, Target, TargetId, TargetResult,
    TargetState,
};
use tokio::sync::{mpsc, oneshot};

/// A maintenance that asks the test to reload HAProxy while it runs on
/// `web/s1`, then waits `hold` before it reports success.
#[derive(Debug)]
struct ReloadDuring {
    ask: mpsc::UnboundedSender<oneshot::Sender<()>>,
    hold: Duration,
}

#[async_trait]
impl Executor for ReloadDuring {
    fn name(&self) -> String {
        "reload-during-maintenance".into()
    }
    async fn preflight(&self, targets: &[Target]) -> hygiene_core::Result<Vec<Preflight>> {
        Ok(vec![Preflight::Ready; targets.len()])
    }
    async fn execute(&self, targets: &[Target]) -> hygiene_core::Result<Vec<ExecOutcome>> {
        let started = tokio::time::Instant::now();
        if targets.iter().any(|t| t.id.as_str() == "web/s1") {
            let (done, reloaded) = oneshot::channel();
            self.ask.send(done).expect("test listens");
            reloaded.await.expect("reloaded");
            tokio::time::sleep(self.hold).await;
        }
        Ok(targets
            .iter()
            .map(|t| ExecOutcome::success(t.id.clone(), started.elapsed()))
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_maintenance_is_caught_and_the_server_drained_again() {
    let Some(bin) = haproxy_bin() else { return };
    let b: Vec<Arc<Backend>> = vec![Backend::start("s1").await, Backend::start("s2").await];
    let mut h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]])).await;
    let lb = h.balancer(&["web"]);
    let (ask, mut asked) = mpsc::unbounded_channel();
    let poll = Duration::from_millis(100);
    let config = RolloutConfig::builder()
        .selection(hygiene_core::Selection::Named(vec![TargetId::new(
            "web/s1",
        )
        .expect("id")]))
        .poll_interval(poll)
        .health_timeout(Duration::from_secs(15))
        .build()
        .expect("config");
    let handle = Rollout::new(
        lb.clone(),
        ReloadDuring {
            ask,
            hold: Duration::from_secs(2),
        },
        config,
    )
    .spawn();
    let done = asked
        .recv()
        .await
        .expect("the maintenance asks for a reload");
    let (before, _) = h.server("web", "s1").await;
    assert_eq!(
        before, "MAINT",
        "drained, then disabled (sealed) before the maintenance"
    );
    h.reload(&bin).await;
    done.send(()).expect("maintenance waits");
    // Within the maintenance (2 s), the guard takes it out again, hard as
    // it was.
    let mut again = false;
    for _ in 0..150 {
        let (status, _) = h.server("web", "s1").await;
        if status == "MAINT" {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        again,
        "s1 never drained again after the reload: {}",
        h.log()
    );
    let r = handle.join().await.expect("run");
    let t = r
        .target(&TargetId::new("web/s1").expect("id"))
        .expect("reported");
    assert_eq!(t.result, TargetResult::Done, "{r:#?}");
    assert_eq!(t.drain_lost.len(), 1, "{t:#?}");
    let at_most = t.drain_lost[0].in_service_at_most().expect("back out");
    assert!(
        at_most < Duration::from_secs(1),
        "in rotation for up to {at_most:?} after the reload"
    );
    let st = hygiene_core::LoadBalancer::status(&lb, &[TargetId::new("web/s1").expect("id")])
        .await
        .expect("status");
    assert_eq!(
        st[0].state,
        TargetState::InService,
        "back in service at the end"
    );
}
