//! Integration tests against a real HAProxy (one per test, see `common`):
//! conformance, drain, fresh health after enable, shared servers, a rollout
//! under load. Failure cases are in `failures.rs`.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, get, haproxy_bin, quick_retry, tally, Backend, Haproxy, Layout};
use hygiene_core::conformance::{check_all, Fixture};
use hygiene_core::{Health, LoadBalancer, TargetId, TargetState};
use hygiene_haproxy::{HaproxyBalancer, Node};
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

fn fixture() -> Fixture {
    Fixture {
        a: id("web/s1"),
        b: id("web/s2"),
        unknown: id("web/nope"),
        // HAProxy names are `[A-Za-z0-9._:-]`: a `;` would start a second
        // runtime API command.
        invalid: Some(id("web/s1;shutdown")),
        settle: Duration::from_secs(3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_one_node() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(3).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1], &b[2]])).await;
    let lb = h.balancer(&["web"]);
    check_all(&lb, &fixture()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_two_nodes_unix_and_tcp() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(3).await;
    let layout = Layout::web(&[&b[0], &b[1], &b[2]]);
    let (ha, hb) = (
        Haproxy::start(&bin, &layout).await,
        Haproxy::start(&bin, &layout).await,
    );
    let lb = HaproxyBalancer::builder()
        .node(ha.node("lb-a"))
        .node(Node::tcp(hb.tcp_admin).named("lb-b"))
        .backend("web")
        .retry(quick_retry())
        .build()
        .expect("valid");
    check_all(&lb, &fixture()).await;

    // Drain reaches both nodes; status is in service while either node
    // sends it new requests (a node restarted mid-drain must be seen).
    lb.drain(&[id("web/s2")]).await.expect("drain");
    assert_eq!(ha.server("web", "s2").await.1, 8, "forced drain on lb-a");
    assert_eq!(hb.server("web", "s2").await.1, 8, "forced drain on lb-b");
    lb.enable(&[id("web/s2")]).await.expect("enable");
    hb.raw("set server web/s2 state maint")
        .await
        .expect("raw maint on lb-b only");
    let st = lb.status(&[id("web/s2")]).await.expect("status")[0].clone();
    assert_eq!(
        (st.state, st.health),
        (TargetState::InService, hygiene_core::Health::Unknown),
        "in service on one node is in service, not healthy-in-service: {st:?}"
    );
    lb.drain(&[id("web/s2")]).await.expect("drain");
    let st = lb.status(&[id("web/s2")]).await.expect("status")[0].clone();
    assert_eq!(
        st.state,
        TargetState::OutOfService,
        "out everywhere: the most out state wins: {st:?}"
    );
    lb.enable(&[id("web/s2")]).await.expect("enable");
    assert_eq!(
        hb.server("web", "s2").await.1,
        0,
        "enable cleared maint on lb-b"
    );
}

/// The drain scenario: a request in flight keeps the count ≥ 1, new
/// requests go elsewhere, and the count is 0 within one poll interval of
/// the request ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_a_request_in_flight() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(3).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1], &b[2]])).await;
    let lb = h.balancer(&["web"]);
    let fe = h.frontend;
    let s1 = id("web/s1");

    // Round robin over three servers: three held requests, one on each.
    let held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(fe, "/hold").await }))
        .collect();
    eventually(Duration::from_secs(5), "a held request on s1", || async {
        (b[0].in_flight.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
    assert_eq!(
        st.connections,
        Some(1),
        "one request in flight on s1: {st:?}"
    );

    lb.drain(std::slice::from_ref(&s1)).await.expect("drain");
    let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
    assert_eq!(st.state, TargetState::Draining);
    assert!(
        st.connections >= Some(1),
        "in-flight request still counted: {st:?}"
    );
    assert!(!st.is_drained());

    // New requests go to the other servers only.
    let mut names = Vec::new();
    for _ in 0..30 {
        names.push(get(fe, "/").await.expect("request during drain"));
    }
    let t = tally(&names);
    assert_eq!(
        t.get("s1"),
        None,
        "a draining server got new requests: {t:?}"
    );
    assert!(t.contains_key("s2") && t.contains_key("s3"), "{t:?}");
    let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
    assert!(st.connections >= Some(1), "still in flight: {st:?}");

    // Let every held request finish; s1 drained within one poll interval.
    b.iter().for_each(|x| x.release(1));
    for r in held {
        r.await.expect("join").expect("held request succeeded");
    }
    let ended = Instant::now();
    let poll = lb.default_poll_interval();
    let drained = eventually(poll, "s1 drained", || async {
        let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
        st.is_drained().then_some(st)
    })
    .await;
    assert_eq!(drained.connections, Some(0));
    assert!(
        ended.elapsed() <= poll,
        "drain seen {:?} after the request ended",
        ended.elapsed()
    );
    lb.enable(&[s1]).await.expect("enable");
}

/// HAProxy 2.6 shows a server `UP` the moment it leaves maintenance, before
/// any check: the measured fact this backend works around.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_itself_reports_stale_up_after_ready() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]])).await;
    h.raw("set server web/s1 state maint").await.expect("maint");
    b[0].stop();
    tokio::time::sleep(Duration::from_millis(300)).await; // several check intervals: checks are paused in MAINT
    assert_eq!(
        h.raw("set server web/s1 state ready").await.expect("ready"),
        "\n"
    );
    let (status, _) = h.server("web", "s1").await;
    assert!(
        status.starts_with("UP"),
        "HAProxy 2.6 is expected to show a stale UP here, got {status}"
    );
    eventually(
        Duration::from_secs(3),
        "the stale UP corrected by a check",
        || async {
            h.server("web", "s1")
                .await
                .0
                .starts_with("DOWN")
                .then_some(())
        },
    )
    .await;
}

/// Through this backend, a server that comes back from maintenance broken
/// is never reported healthy and gets no traffic; once fixed it is healthy
/// only after fresh checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_never_shows_a_stale_healthy() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]])).await;
    let lb = h.balancer(&["web"]);
    let s1 = id("web/s1");
    lb.drain(std::slice::from_ref(&s1)).await.expect("drain");
    let addr = b[0].addr;
    b[0].stop(); // the "patch" broke s1, and the drained server never showed DOWN for long
    lb.enable(std::slice::from_ref(&s1)).await.expect("enable");
    let hits_before = b[1].hits.load(Ordering::SeqCst);
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
        assert_eq!(st.state, TargetState::InService);
        assert_ne!(
            st.health,
            Health::Healthy,
            "a broken server was reported healthy after enable"
        );
        // retries 0: a request sent to the dead s1 would fail.
        get(h.frontend, "/")
            .await
            .expect("no request may reach the broken server");
    }
    assert!(b[1].hits.load(Ordering::SeqCst) > hits_before);

    // Fixed: healthy again, from checks made after the enable.
    let _fixed = Backend::start_on("s1", addr).await;
    let st = eventually(Duration::from_secs(3), "s1 healthy", || async {
        let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
        st.is_serving_healthy().then_some(st)
    })
    .await;
    assert_eq!(st.state, TargetState::InService);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_right_after_drain_waits_for_a_fresh_check() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]])).await;
    let lb = h.balancer(&["web"]);
    let s1 = id("web/s1");
    lb.disable(std::slice::from_ref(&s1))
        .await
        .expect("disable");
    assert_eq!(h.server("web", "s1").await, ("MAINT".to_owned(), 1));
    lb.enable(std::slice::from_ref(&s1)).await.expect("enable");
    let st = lb.status(std::slice::from_ref(&s1)).await.expect("status")[0].clone();
    assert_ne!(
        st.health,
        Health::Healthy,
        "healthy at once after enable: {st:?}"
    );
    eventually(Duration::from_secs(3), "s1 healthy", || async {
        lb.status(std::slice::from_ref(&s1)).await.expect("status")[0]
            .is_serving_healthy()
            .then_some(())
    })
    .await;
    // Draining a server held in maintenance keeps it there (HAProxy's own
    // `state drain` would take it out of MAINT).
    lb.disable(std::slice::from_ref(&s1))
        .await
        .expect("disable");
    lb.drain(std::slice::from_ref(&s1)).await.expect("drain");
    assert_eq!(h.server("web", "s1").await, ("MAINT".to_owned(), 1));
    lb.enable(std::slice::from_ref(&s1)).await.expect("enable");
    eventually(Duration::from_secs(3), "s1 healthy again", || async {
        lb.status(std::slice::from_ref(&s1)).await.expect("status")[0]
            .is_serving_healthy()
            .then_some(())
    })
    .await;
    // Enabling a serving server changes nothing (and does not force it down).
    lb.enable(std::slice::from_ref(&s1))
        .await
        .expect("enable again");
    assert_eq!(h.server("web", "s1").await.0, "UP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_backends_share_servers() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]]).also("api")).await;
    let lb = h.balancer(&["web", "api"]);
    let listed = lb.list().await.expect("list");
    let ids: Vec<String> = listed.iter().map(|l| l.target.id.to_string()).collect();
    assert_eq!(
        ids,
        ["web/s1", "web/s2"],
        "each server once, under the first backend"
    );
    assert_eq!(
        listed[0].target.meta.get("backends").map(String::as_str),
        Some("web,api")
    );
    assert_eq!(listed[0].target.port, Some(b[0].addr.port()));

    lb.drain(&[id("web/s1")]).await.expect("drain");
    assert_eq!(h.server("web", "s1").await.0, "DRAIN");
    assert_eq!(
        h.server("api", "s1").await.0,
        "DRAIN",
        "drained from every backend of the pool"
    );
    assert_eq!(h.server("api", "s2").await.0, "UP");
    // `api/s1` names the same target.
    assert_eq!(
        lb.status(&[id("api/s1")]).await.expect("status")[0].state,
        TargetState::Draining
    );
    h.raw("set server api/s1 state ready")
        .await
        .expect("raw ready");
    let st = lb.status(&[id("web/s1")]).await.expect("status")[0].clone();
    assert_eq!(
        st.state,
        TargetState::InService,
        "api sends it requests again: in service, so a drain is never judged done: {st:?}"
    );
    lb.enable(&[id("web/s1")]).await.expect("enable");
    assert_eq!(h.server("web", "s1").await.1, 0);
    assert_eq!(h.server("api", "s1").await.1, 0);
}

/// Re-measures the choice documented in the README: a fresh connection per
/// exchange against one persistent `prompt` session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_per_connection_vs_prompt_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(3).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1], &b[2]]).also("api")).await;
    const N: u32 = 300;
    let cmd = "show servers state; show stat -1 4 -1";

    let started = Instant::now();
    let mut fresh_reply = String::new();
    for _ in 0..N {
        fresh_reply = h.raw(cmd).await.expect("fresh connection");
    }
    let fresh = started.elapsed() / N;

    let mut s = tokio::net::UnixStream::connect(&h.admin_sock)
        .await
        .expect("connect");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    // In a session every command of a line ends with its own prompt.
    async fn until_prompt(
        s: &mut tokio::net::UnixStream,
        buf: &mut Vec<u8>,
        chunk: &mut [u8],
        prompts: usize,
    ) {
        buf.clear();
        while !(buf.ends_with(b"> ") && buf.windows(3).filter(|w| w == b"\n> ").count() >= prompts)
        {
            let n = s.read(chunk).await.expect("read");
            assert!(n > 0, "session closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    s.write_all(b"prompt\n").await.expect("write");
    until_prompt(&mut s, &mut buf, &mut chunk, 1).await;
    let started = Instant::now();
    for _ in 0..N {
        s.write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write");
        until_prompt(&mut s, &mut buf, &mut chunk, 2).await;
    }
    let session = started.elapsed() / N;
    let session_reply = String::from_utf8_lossy(&buf).replace("\n> ", "\n");
    eprintln!("one command per connection: {fresh:?} per exchange; persistent prompt session: {session:?}");
    // Same replies either way (counters aside): same number of lines.
    assert_eq!(session_reply.lines().count(), fresh_reply.lines().count());
    assert!(
        fresh < Duration::from_millis(20),
        "a fresh connection costs {fresh:?}"
    );
}

/// "Patches" a server by stopping its HTTP service, waiting, and starting
/// it again on the same port.
#[derive(Debug)]
struct RestartService {
    services: std::sync::Mutex<std::collections::HashMap<String, Arc<Backend>>>,
    downtime: Duration,
}

#[async_trait::async_trait]
impl hygiene_core::Executor for RestartService {
    fn name(&self) -> String {
        "restart-service".into()
    }

    async fn preflight(
        &self,
        targets: &[hygiene_core::Target],
    ) -> hygiene_core::Result<Vec<hygiene_core::Preflight>> {
        Ok(targets
            .iter()
            .map(|_| hygiene_core::Preflight::Ready)
            .collect())
    }

    async fn execute(
        &self,
        targets: &[hygiene_core::Target],
    ) -> hygiene_core::Result<Vec<hygiene_core::ExecOutcome>> {
        let mut out = Vec::new();
        for t in targets {
            let started = Instant::now();
            let name =
                t.id.as_str()
                    .split_once('/')
                    .map(|(_, s)| s.to_owned())
                    .expect("backend/server");
            let old = self
                .services
                .lock()
                .expect("lock")
                .remove(&name)
                .expect("known service");
            let addr = old.addr;
            old.stop();
            drop(old);
            tokio::time::sleep(self.downtime).await;
            let new = Backend::start_on(&name, addr).await;
            self.services.lock().expect("lock").insert(name, new);
            out.push(hygiene_core::ExecOutcome::success(
                t.id.clone(),
                started.elapsed(),
            ));
        }
        Ok(out)
    }
}

/// The product's story at small scale: a rollout through the real engine,
/// under constant load, with `retries 0`: not one failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_under_load_loses_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(3).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1], &b[2]])).await;
    let lb = h.balancer(&["web"]);
    let exec = Arc::new(RestartService {
        services: std::sync::Mutex::new(b.iter().map(|x| (x.name.clone(), x.clone())).collect()),
        downtime: Duration::from_millis(300),
    });
    drop(b);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, errors, fe) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                errors.clone(),
                h.frontend,
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match get(fe, "/").await {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            errors.lock().expect("lock").push(e.to_string());
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();

    let config = hygiene_core::RolloutConfig::builder()
        .drain_timeout(Duration::from_secs(10))
        .health_timeout(Duration::from_secs(10))
        .build()
        .expect("config");
    let report = hygiene_core::Rollout::new(lb.clone(), exec.clone(), config)
        .run()
        .await
        .expect("rollout runs");
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.expect("load task");
    }
    assert!(report.is_success(), "{report:?}");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests: {:?}",
        errors.lock().expect("lock")
    );
    assert!(
        ok.load(Ordering::SeqCst) > 100,
        "load ran: {}",
        ok.load(Ordering::SeqCst)
    );
    for l in lb.list().await.expect("list") {
        assert!(
            l.status.is_serving_healthy(),
            "{} left {:?}",
            l.target.id,
            l.status
        );
    }
    for s in exec.services.lock().expect("lock").values() {
        assert!(
            s.hits.load(Ordering::SeqCst) > 0 || s.name == "s3",
            "restarted {} got traffic again",
            s.name
        );
    }
}
