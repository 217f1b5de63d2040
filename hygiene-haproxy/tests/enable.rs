//! Enable against a real HAProxy 2.6 (one per test, see `common`): servers
//! without `check`, coming back from `MAINT` with `fall 1` and a dead
//! backend, tracking servers, and what `capabilities()` says about checks.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, get, haproxy_bin, tally, Backend, Haproxy, Layout};
use hygiene_core::{Health, LoadBalancer, TargetId, TargetState};
use tokio::time::Instant;

fn id(s: &str) -> TargetId {
    TargetId::new(s).expect("valid target id")
}

async fn backends(n: usize) -> Vec<Arc<Backend>> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(Backend::start(&format!("s{i}")).await);
    }
    v
}

/// Servers without `check`: drain → enable puts them back in service (the
/// old `health down; state ready` left them `DOWN` for good), a server some
/// earlier `health down` left stuck is raised by enable, the balancer says
/// it has no health checks, and a rollout through the engine completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_check_comes_back_and_rollout_completes() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]]).opts("")).await;
    let lb = h.balancer(&["web"]);
    let s1 = id("web/s1");
    lb.list().await.expect("list");
    assert!(
        !lb.capabilities().health_checks,
        "no server of the pool has a check"
    );

    lb.drain(std::slice::from_ref(&s1)).await.expect("drain");
    assert_eq!(h.server("web", "s1").await, ("DRAIN".to_owned(), 8));
    lb.enable(std::slice::from_ref(&s1)).await.expect("enable");
    assert_eq!(
        h.server("web", "s1").await,
        ("no check".to_owned(), 0),
        "back in service, not forced DOWN"
    );
    let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
    assert_eq!(st.state, TargetState::InService);
    assert_eq!(st.health, Health::Unknown);
    assert!(st.is_serving_healthy_with(&lb.capabilities()));
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(get(h.frontend, "/").await.expect("request"));
    }
    assert!(tally(&names).contains_key("s1"), "s1 serves again");

    // From MAINT too; and a server left DOWN by an earlier `health down`
    // (nothing would ever raise it) is raised.
    lb.disable(std::slice::from_ref(&s1))
        .await
        .expect("disable");
    lb.enable(std::slice::from_ref(&s1)).await.expect("enable");
    assert_eq!(h.server("web", "s1").await, ("no check".to_owned(), 0));
    h.raw("set server web/s2 health down")
        .await
        .expect("raw health down");
    assert_eq!(h.server("web", "s2").await.0, "DOWN");
    lb.enable(&[id("web/s2")]).await.expect("enable");
    assert_eq!(h.server("web", "s2").await, ("no check".to_owned(), 0));

    // The engine: drain, "patch", enable, and in service counts as healthy.
    let config = hygiene_core::RolloutConfig::builder()
        .drain_timeout(Duration::from_secs(5))
        .health_timeout(Duration::from_secs(5))
        .build()
        .expect("config");
    let report = hygiene_core::Rollout::new(
        lb.clone(),
        hygiene_core::testing::ScriptedExecutor::new(),
        config,
    )
    .run()
    .await
    .expect("rollout runs");
    assert!(report.is_success(), "{report:?}");
    for s in ["s1", "s2"] {
        assert_eq!(
            h.server("web", s).await,
            ("no check".to_owned(), 0),
            "{s} left out of service by the rollout"
        );
    }
}

/// A server that leaves `MAINT` (or `DRAIN`) through `enable` while its
/// process is dead is never reported healthy and gets no request, with
/// `fall 1` (where HAProxy itself shows a plain stale `UP`) and with `fall
/// 2 rise 2`; once the process is back it is healthy from fresh checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_with_dead_backend_is_never_healthy() {
    let Some(bin) = haproxy_bin() else { return };
    for opts in [
        "check inter 100ms fall 1",
        "check inter 100ms fall 2 rise 2",
    ] {
        for from_maint in [true, false] {
            dead_backend_case(&bin, opts, from_maint).await;
        }
    }
}

async fn dead_backend_case(bin: &std::path::Path, opts: &str, from_maint: bool) {
    let what = format!(
        "[{opts}, from {}]",
        if from_maint { "MAINT" } else { "DRAIN" }
    );
    let b = backends(2).await;
    let h = Haproxy::start(bin, &Layout::web(&[&b[0], &b[1]]).opts(opts)).await;
    let lb = h.balancer(&["web"]);
    let s1 = id("web/s1");
    if from_maint {
        lb.disable(std::slice::from_ref(&s1))
            .await
            .expect("disable");
    } else {
        lb.drain(std::slice::from_ref(&s1)).await.expect("drain");
    }
    let addr = b[0].addr;
    b[0].stop();
    // In MAINT checks are paused: the last result stays the old L4OK.
    tokio::time::sleep(Duration::from_millis(300)).await;
    lb.enable(std::slice::from_ref(&s1)).await.expect("enable");
    let (status, admin) = h.server("web", "s1").await;
    assert!(
        status.starts_with("DOWN") && admin == 0,
        "{what} forced down and ready at once: {status} {admin}"
    );
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
        assert_eq!(st.state, TargetState::InService, "{what}");
        assert_ne!(
            st.health,
            Health::Healthy,
            "{what} a dead server was reported healthy after enable"
        );
        let (status, _) = h.server("web", "s1").await;
        assert!(!status.starts_with("UP"), "{what} HAProxy shows {status}");
        // retries 0: a request sent to the dead s1 would fail.
        get(h.frontend, "/")
            .await
            .unwrap_or_else(|e| panic!("{what} a request reached the dead server: {e}"));
    }
    let _fixed = Backend::start_on("s1", addr).await;
    eventually(Duration::from_secs(3), "s1 healthy once fixed", || async {
        lb.status(std::slice::from_ref(&s1)).await.expect("status")[0]
            .is_serving_healthy()
            .then_some(())
    })
    .await;
}

/// With the process alive, a server leaving `MAINT` with `fall 1` is not
/// healthy at once (HAProxy would show a plain stale `UP`), then healthy
/// after `rise` fresh checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_from_maint_with_fall_1_waits_for_fresh_checks() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(
        &bin,
        &Layout::web(&[&b[0], &b[1]]).opts("check inter 200ms fall 1"),
    )
    .await;
    let lb = h.balancer(&["web"]);
    let s1 = id("web/s1");
    lb.disable(std::slice::from_ref(&s1))
        .await
        .expect("disable");
    lb.enable(std::slice::from_ref(&s1)).await.expect("enable");
    let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
    assert_eq!(st.state, TargetState::InService);
    assert_eq!(st.health, Health::Unhealthy, "forced down until checked");
    eventually(Duration::from_secs(3), "s1 healthy", || async {
        lb.status(std::slice::from_ref(&s1)).await.expect("status")[0]
            .is_serving_healthy()
            .then_some(())
    })
    .await;
    assert_eq!(h.server("web", "s1").await, ("UP".to_owned(), 0));
}

/// A server that `track`s another: HAProxy refuses `health` on it, so
/// enable only makes it ready; its health is the tracked server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_server_enables_without_error() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(3).await;
    // Its own host (a server at s1's address would be s1: one host).
    let layout = Layout::web(&[&b[0], &b[1]]).line(&format!("server t {} track web/s1", b[2].addr));
    let h = Haproxy::start(&bin, &layout).await;
    let lb = h.balancer(&["web"]);
    let (s1, t) = (id("web/s1"), id("web/t"));
    let listed = lb.list().await.expect("list");
    assert_eq!(listed.len(), 3);
    assert!(
        lb.capabilities().health_checks,
        "a tracking server is checked through the tracked one"
    );
    let st = lb.status(std::slice::from_ref(&t)).await.expect("status")[0].clone();
    assert!(st.is_serving_healthy(), "tracking server healthy: {st:?}");

    // Both out (t also inherits MAINT from s1), both back in one call.
    lb.disable(&[s1.clone(), t.clone()]).await.expect("disable");
    assert_eq!(
        h.server("web", "t").await,
        ("MAINT (via web/s1)".to_owned(), 3)
    );
    lb.enable(&[s1.clone(), t.clone()]).await.expect("enable");
    assert_eq!(h.server("web", "t").await.1, 0);
    let st = lb.status(&[s1.clone(), t.clone()]).await.expect("status");
    assert!(
        st.iter().all(|s| s.health != Health::Healthy),
        "tracked server forced down, and the tracking one with it: {st:?}"
    );
    eventually(Duration::from_secs(3), "both healthy", || async {
        let st = lb.status(&[s1.clone(), t.clone()]).await.expect("status");
        st.iter().all(|s| s.is_serving_healthy()).then_some(())
    })
    .await;

    // Only the tracking server drained, then enabled.
    lb.drain(std::slice::from_ref(&t)).await.expect("drain");
    assert_eq!(h.server("web", "t").await.1, 8);
    lb.enable(std::slice::from_ref(&t)).await.expect("enable");
    assert_eq!(h.server("web", "t").await, ("UP".to_owned(), 0));
}

/// One server without a check in a checked pool is enough for
/// `health_checks` to be false (its health is `Unknown` forever); a check
/// stopped with `disable health` counts as none, and enable does not force
/// such a server down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_follow_the_servers_checks() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]])).await;
    let lb = h.balancer(&["web"]);
    let s2 = id("web/s2");
    assert!(lb.capabilities().health_checks, "before any call");
    lb.status(std::slice::from_ref(&s2)).await.expect("status");
    assert!(lb.capabilities().health_checks, "every server checked");

    h.raw("disable health web/s2").await.expect("raw");
    lb.status(std::slice::from_ref(&s2)).await.expect("status");
    assert!(!lb.capabilities().health_checks, "web/s2 check stopped");
    let hits = b[1].hits.load(Ordering::SeqCst);
    lb.drain(std::slice::from_ref(&s2)).await.expect("drain");
    lb.enable(std::slice::from_ref(&s2)).await.expect("enable");
    assert_eq!(h.server("web", "s2").await, ("no check".to_owned(), 0));
    for _ in 0..6 {
        get(h.frontend, "/").await.expect("request");
    }
    assert!(b[1].hits.load(Ordering::SeqCst) > hits, "s2 serves again");

    h.raw("enable health web/s2").await.expect("raw");
    lb.list().await.expect("list");
    assert!(lb.capabilities().health_checks, "checks back on");
}
