//! A host is one target wherever it serves: a server of the pool's backend
//! whose address also serves another backend (`api`, with its own server
//! names and frontend) is drained from both before its maintenance, and
//! put back in both. Real HAProxy.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{eventually, get, haproxy_bin, quick_retry, Backend, Haproxy, Layout};
use hygiene_core::{
    ExecOutcome, Executor, LoadBalancer, Preflight, Rollout, RolloutConfig, Target, TargetId,
    TargetState,
};
use hygiene_haproxy::{HaproxyBalancer, HostScope};

fn id(s: &str) -> TargetId {
    TargetId::new(s).expect("id")
}

async fn start(bin: &std::path::Path) -> (Vec<Arc<Backend>>, Haproxy) {
    let b = vec![Backend::start("s1").await, Backend::start("s2").await];
    let layout = Layout::web(&[&b[0], &b[1]]).renamed("api", "api-");
    (b, Haproxy::start(bin, &layout).await)
}

fn balancer(h: &Haproxy, scope: HostScope) -> HaproxyBalancer {
    HaproxyBalancer::builder()
        .node(h.node("lb-a"))
        .backend("web")
        .scope(scope)
        .retry(quick_retry())
        .build()
        .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_drained_from_every_backend_that_holds_it() {
    let Some(bin) = haproxy_bin() else { return };
    let (_b, h) = start(&bin).await;
    let lb = balancer(&h, HostScope::AllBackends);
    let listed = lb.list().await.expect("list");
    assert_eq!(listed.len(), 2, "one target per host: {listed:?}");
    let s1 = &listed[0].target;
    assert_eq!(s1.id, id("web/s1"));
    assert_eq!(s1.meta.get("backends").map(String::as_str), Some("web,api"));
    assert_eq!(
        s1.meta.get("other_backends").map(String::as_str),
        Some("api/api-s1")
    );
    lb.drain(std::slice::from_ref(&s1.id)).await.expect("drain");
    assert_eq!(h.server("web", "s1").await.1, 8, "web/s1 drained");
    assert_eq!(h.server("api", "api-s1").await.1, 8, "api/api-s1 drained");
    assert_eq!(h.server("api", "api-s2").await.1, 0, "api/api-s2 untouched");
    let st = lb
        .status(std::slice::from_ref(&s1.id))
        .await
        .expect("status");
    assert_eq!(st[0].state, TargetState::Draining);
    assert!(lb
        .enable_hint(&s1.id)
        .contains("set server api/api-s1 state ready"));
    lb.enable(std::slice::from_ref(&s1.id))
        .await
        .expect("enable");
    eventually(Duration::from_secs(3), "s1 back everywhere", || async {
        let web = h.server("web", "s1").await;
        let api = h.server("api", "api-s1").await;
        (web == ("UP".to_owned(), 0) && api == ("UP".to_owned(), 0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_backends_only_leaves_other_backends_and_names_them() {
    let Some(bin) = haproxy_bin() else { return };
    let (_b, h) = start(&bin).await;
    let lb = balancer(&h, HostScope::PoolBackendsOnly);
    let listed = lb.list().await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[0]
            .target
            .meta
            .get("other_backends")
            .map(String::as_str),
        Some("api/api-s1"),
        "the backends it will not drain are named"
    );
    assert_eq!(
        listed[0].target.meta.get("backends").map(String::as_str),
        Some("web")
    );
    lb.drain(&[id("web/s1")]).await.expect("drain");
    assert_eq!(h.server("web", "s1").await.1, 8);
    assert_eq!(h.server("api", "api-s1").await.1, 0, "api left as asked");
    lb.enable(&[id("web/s1")]).await.expect("enable");
}

/// Stops the host's service during its maintenance, then starts it again
/// on the same address. The test keeps the services (the rollout drops
/// its executor when it ends, and a dropped service stops serving).
#[derive(Debug)]
struct StopAndStart {
    servers: Arc<Mutex<Vec<Arc<Backend>>>>,
}

#[async_trait]
impl Executor for StopAndStart {
    fn name(&self) -> String {
        "stop-and-start".into()
    }
    async fn preflight(&self, targets: &[Target]) -> hygiene_core::Result<Vec<Preflight>> {
        Ok(vec![Preflight::Ready; targets.len()])
    }
    async fn execute(&self, targets: &[Target]) -> hygiene_core::Result<Vec<ExecOutcome>> {
        let started = tokio::time::Instant::now();
        for t in targets {
            let name = t.id.as_str().trim_start_matches("web/").to_owned();
            let old = {
                let servers = self.servers.lock().expect("lock");
                servers.iter().find(|b| b.name == name).cloned()
            };
            let Some(old) = old else { continue };
            old.stop();
            tokio::time::sleep(Duration::from_millis(400)).await;
            let new = Backend::start_on(&name, old.addr).await;
            self.servers
                .lock()
                .expect("lock")
                .retain(|b| b.name != name);
            self.servers.lock().expect("lock").push(new);
        }
        Ok(targets
            .iter()
            .map(|t| ExecOutcome::success(t.id.clone(), started.elapsed()))
            .collect())
    }
}

// The field report: `api` kept sending requests to the server being
// patched (51 503s of 4,000). Now the other frontend loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_of_one_backend_loses_no_request_on_the_other() {
    let Some(bin) = haproxy_bin() else { return };
    let (b, h) = start(&bin).await;
    let api = h.frontends[0].1;
    let lb = balancer(&h, HostScope::AllBackends);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(api, "/").await {
                    Ok(body) if body == "s1" || body == "s2" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let servers = Arc::new(Mutex::new(b));
    let exec = StopAndStart {
        servers: Arc::clone(&servers),
    };
    let config = RolloutConfig::builder()
        .poll_interval(Duration::from_millis(50))
        .health_timeout(Duration::from_secs(10))
        .build()
        .expect("config");
    let report = Rollout::new(lb.clone(), exec, config)
        .run()
        .await
        .expect("rollout");
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    // The report says where each host serves.
    assert_eq!(
        report.targets[0]
            .meta
            .get("other_backends")
            .map(String::as_str),
        Some("api/api-s1")
    );
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "the load ran: {ok}");
    assert_eq!(failed, 0, "requests failed on the other backend's frontend");
    for (backend, server) in [
        ("web", "s1"),
        ("web", "s2"),
        ("api", "api-s1"),
        ("api", "api-s2"),
    ] {
        assert_eq!(h.server(backend, server).await, ("UP".to_owned(), 0));
    }
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_a_shared_host_is_drained_from_both_pools() {
    let Some(bin) = haproxy_bin() else { return };
    let (_b, h) = start(&bin).await;
    let lb = balancer(&h, HostScope::AllBackends);
    let api = HaproxyBalancer::builder()
        .node(h.node("lb-a"))
        .backend("api")
        .scope(HostScope::PoolBackendsOnly)
        .retry(quick_retry())
        .build()
        .expect("valid");
    let shared = hygiene_core::conformance::SharedHost {
        id: id("web/s1"),
        other: Arc::new(api),
        other_id: id("api/api-s1"),
        settle: Duration::from_secs(3),
    };
    hygiene_core::conformance::check_shared_host(&lb, &shared).await;
}
