//! What an operator relies on, against a real Caddy: another writer's
//! change is never overwritten, requests in flight are counted until they
//! end, health after an enable comes from a check made after it, a dead
//! process's drain is put back exactly, and a route is never emptied.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{caddy_bin, eventually, id, proxy, raw, Backend, Caddy};
use http_body_util::{BodyExt, Full};
use hygiene_caddy::{upstreams_of, CaddyBalancer, HealthChecks, META_PLACEMENTS};
use hygiene_core::{Error, Health, LoadBalancer, TargetState};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

async fn backends(n: usize) -> Vec<Backend> {
    let mut b = Vec::new();
    for i in 0..n {
        b.push(Backend::start(&format!("b{}", i + 1)).await);
    }
    b
}

/// `api` (`/api/*`) over b1, b3; `web` over b1..b3 with b2's options.
fn routes(b: &[Backend], checks: bool) -> Value {
    json!([
        {"match": [{"path": ["/api/*"]}],
         "handle": [proxy("api", json!([{"dial": b[0].dial()}, {"dial": b[2].dial()}]), checks)]},
        {"handle": [proxy("web", json!([
            {"dial": b[0].dial()},
            {"dial": b[1].dial(), "max_requests": 100},
            {"dial": b[2].dial()}]), checks)]}
    ])
}

fn lb(admin: &str) -> CaddyBalancer {
    CaddyBalancer::builder()
        .admin(admin)
        .handler("web")
        .build()
        .expect("valid")
}

/// A pass-through to Caddy's admin API that, before forwarding each of the
/// first `changes` config writes, makes a change of its own directly on
/// Caddy (another writer between the balancer's read and its write).
struct Meddler {
    url: String,
    patches: Arc<AtomicUsize>,
    injected: Arc<AtomicUsize>,
}

async fn meddler(admin: &str, changes: usize) -> Meddler {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let patches = Arc::new(AtomicUsize::new(0));
    let injected = Arc::new(AtomicUsize::new(0));
    let (admin, p, inj) = (admin.to_owned(), patches.clone(), injected.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (admin, p, inj) = (admin.clone(), p.clone(), inj.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (admin, p, inj) = (admin.clone(), p.clone(), inj.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.expect("body").to_bytes();
                        if parts.method == hyper::Method::PATCH && parts.uri.path() == "/config/" {
                            let n = p.fetch_add(1, Ordering::SeqCst);
                            if n < changes {
                                // Another writer: one more path on `api`.
                                let (s, _) = raw(
                                    &admin,
                                    "POST",
                                    "/config/apps/http/servers/web/routes/0/match/0/path",
                                    Some(json!(format!("/other{n}/*"))),
                                )
                                .await
                                .expect("meddle");
                                assert_eq!(s, 200);
                                inj.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        let mut fwd = Request::builder()
                            .method(parts.method.clone())
                            .uri(format!("{admin}{}", parts.uri));
                        for (k, v) in &parts.headers {
                            if k != hyper::header::HOST {
                                fwd = fwd.header(k, v);
                            }
                        }
                        let client: Client<_, Full<Bytes>> =
                            Client::builder(TokioExecutor::new()).build_http();
                        let resp = client
                            .request(fwd.body(Full::new(body)).expect("request"))
                            .await
                            .expect("caddy answers");
                        let status = resp.status();
                        let mut etag = resp.headers().get("etag").cloned();
                        let collected = resp.into_body().collect().await.expect("reply");
                        if let Some(t) = collected.trailers().and_then(|t| t.get("etag")) {
                            etag = Some(t.clone());
                        }
                        let mut out = Response::builder().status(status);
                        if let Some(e) = etag {
                            out = out.header("etag", e);
                        }
                        Ok::<_, Infallible>(
                            out.body(Full::new(collected.to_bytes())).expect("response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Meddler {
        url,
        patches,
        injected,
    }
}

fn api_paths(cfg: &Value) -> Vec<String> {
    cfg.pointer("/apps/http/servers/web/routes/0/match/0/path")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn dials(cfg: &Value, handler: &str) -> Vec<String> {
    upstreams_of(cfg, handler)
        .unwrap_or_default()
        .iter()
        .filter_map(|u| u["dial"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_between_our_read_and_our_write_is_never_overwritten() {
    let Some(bin) = caddy_bin() else { return };
    let b = backends(3).await;
    let caddy = Caddy::start(&bin, routes(&b, false)).await;
    let m = meddler(&caddy.admin, 1).await;
    let lb = lb(&m.url);
    let b1 = id(&b[0].dial());
    lb.drain(std::slice::from_ref(&b1)).await.expect("drain");
    assert_eq!(m.injected.load(Ordering::SeqCst), 1);
    assert_eq!(
        m.patches.load(Ordering::SeqCst),
        2,
        "the first write met the other writer's change (412), the second went through"
    );
    let cfg = caddy.config().await;
    assert_eq!(
        api_paths(&cfg),
        ["/api/*", "/other0/*"],
        "the other change is kept"
    );
    assert!(
        !dials(&cfg, "web").contains(&b[0].dial()),
        "and ours is made"
    );
    assert!(!dials(&cfg, "api").contains(&b[0].dial()));
    lb.enable(std::slice::from_ref(&b1)).await.expect("enable");
    let cfg = caddy.config().await;
    assert_eq!(dials(&cfg, "web")[0], b[0].dial());
    assert_eq!(api_paths(&cfg), ["/api/*", "/other0/*"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_keeps_changing_gets_a_retryable_error_and_keeps_its_changes() {
    let Some(bin) = caddy_bin() else { return };
    let b = backends(3).await;
    let caddy = Caddy::start(&bin, routes(&b, false)).await;
    let m = meddler(&caddy.admin, usize::MAX).await;
    let lb = lb(&m.url);
    let b1 = id(&b[0].dial());
    let e = lb
        .drain(std::slice::from_ref(&b1))
        .await
        .expect_err("never gets through");
    assert!(e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("nothing was overwritten"), "{e}");
    let cfg = caddy.config().await;
    assert_eq!(
        api_paths(&cfg),
        ["/api/*", "/other0/*", "/other1/*", "/other2/*"],
        "every change of the other writer is kept"
    );
    assert!(dials(&cfg, "web").contains(&b[0].dial()), "nothing of ours");
    let st = lb.status(std::slice::from_ref(&b1)).await.expect("status");
    assert_eq!(st[0].state, TargetState::InService);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_counted_until_they_end() {
    let Some(bin) = caddy_bin() else { return };
    let b = backends(2).await;
    // `first`: every request goes to b1 while it is in the handler.
    let mut web = proxy(
        "web",
        json!([{"dial": b[0].dial()}, {"dial": b[1].dial()}]),
        false,
    );
    web["load_balancing"] = json!({"selection_policy": {"policy": "first"}});
    let caddy = Caddy::start(&bin, json!([{"handle": [web]}])).await;
    let caddy = Arc::new(caddy);
    let mut slow = Vec::new();
    for _ in 0..3 {
        let c = caddy.clone();
        slow.push(tokio::spawn(async move { c.get("/slow?ms=1500").await }));
    }
    let lb = lb(&caddy.admin);
    let b1 = id(&b[0].dial());
    eventually(
        Duration::from_secs(2),
        "3 requests in flight on b1",
        || async {
            let st = lb.status(std::slice::from_ref(&b1)).await.expect("status");
            (st[0].connections == Some(3)).then_some(())
        },
    )
    .await;
    lb.drain(std::slice::from_ref(&b1)).await.expect("drain");
    let st = lb.status(std::slice::from_ref(&b1)).await.expect("status");
    assert_eq!(st[0].state, TargetState::Draining, "{st:?}");
    assert_eq!(
        st[0].connections,
        Some(3),
        "still counted once out of the handler"
    );
    assert!(!st[0].is_drained());
    // New requests go to b2 only.
    assert_eq!(caddy.get("/").await, (200, "Hello from b2".to_owned()));
    for s in slow {
        assert_eq!(
            s.await.expect("join"),
            (200, "Hello from b1".to_owned()),
            "not cut"
        );
    }
    let st = lb.status(std::slice::from_ref(&b1)).await.expect("status");
    assert_eq!(st[0].state, TargetState::OutOfService, "{st:?}");
    assert_eq!(st[0].connections, Some(0));
    lb.enable(std::slice::from_ref(&b1)).await.expect("enable");
    assert_eq!(caddy.get("/").await, (200, "Hello from b1".to_owned()));
    assert_eq!(
        caddy.config().await["apps"]["http"]["servers"]["web"]["routes"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "the parked route is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_after_an_enable_comes_from_a_check_made_after_it() {
    let Some(bin) = caddy_bin() else { return };
    let b = backends(3).await;
    let caddy = Caddy::start(&bin, routes(&b, true)).await;
    let lb = lb(&caddy.admin);
    let b2 = id(&b[1].dial());
    lb.drain(std::slice::from_ref(&b2)).await.expect("drain");
    // The patch broke it: every check fails from now on.
    b[1].broken.store(true, Ordering::SeqCst);
    lb.enable(std::slice::from_ref(&b2)).await.expect("enable");
    // Caddy's gauge says healthy right after the reload (before any
    // check); the balancer must not.
    let st = lb.status(std::slice::from_ref(&b2)).await.expect("status");
    assert_eq!(st[0].state, TargetState::InService);
    assert_eq!(st[0].health, Health::Unknown, "{st:?}");
    let reads = eventually(Duration::from_secs(13), "a fresh verdict", || async {
        let st = lb.status(std::slice::from_ref(&b2)).await.expect("status");
        assert_ne!(st[0].health, Health::Healthy, "a stale healthy: {st:?}");
        (st[0].health != Health::Unknown).then_some(st)
    })
    .await;
    assert_eq!(reads[0].health, Health::Unhealthy, "{reads:?}");
    // Fixed: healthy again on a later check.
    b[1].broken.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(12), "healthy once fixed", || async {
        let st = lb.status(std::slice::from_ref(&b2)).await.expect("status");
        (st[0].health == Health::Healthy).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_active_checks_health_is_unknown_and_says_why() {
    let Some(bin) = caddy_bin() else { return };
    let b = backends(3).await;
    let caddy = Caddy::start(&bin, routes(&b, false)).await;
    let st = lb(&caddy.admin)
        .status(&[id(&b[0].dial())])
        .await
        .expect("status");
    assert_eq!(st[0].health, Health::Unknown);
    let reason = st[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("\"api\"") || reason.contains("\"web\""),
        "{reason}"
    );
    let none = CaddyBalancer::builder()
        .admin(&caddy.admin)
        .handler("web")
        .health(HealthChecks::None)
        .build()
        .expect("valid");
    assert!(!none.capabilities().health_checks);
    let st = none.status(&[id(&b[0].dial())]).await.expect("status");
    assert!(st[0].is_serving_healthy_with(&none.capabilities()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_puts_back_what_a_dead_one_took_out_exactly() {
    let Some(bin) = caddy_bin() else { return };
    let b = backends(3).await;
    let caddy = Caddy::start(&bin, routes(&b, false)).await;
    let before = caddy.config().await;
    let listed = {
        let dead = lb(&caddy.admin);
        let listed = dead.list().await.expect("list");
        let ids: Vec<_> = listed.iter().skip(1).map(|l| l.target.id.clone()).collect();
        dead.drain(&ids).await.expect("drain b2 and b3");
        listed
    };
    let b2 = &listed[1].target;
    assert!(
        b2.meta[META_PLACEMENTS].contains("max_requests"),
        "{:?}",
        b2.meta
    );
    let fresh = lb(&caddy.admin);
    // Without the journal's plan it does not know where they were.
    let e = fresh
        .enable(std::slice::from_ref(&b2.id))
        .await
        .expect_err("unknown");
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    fresh
        .adopt(&listed.iter().map(|l| l.target.clone()).collect::<Vec<_>>())
        .await
        .expect("adopt");
    let st = fresh
        .status(std::slice::from_ref(&b2.id))
        .await
        .expect("status");
    assert_eq!(st[0].state, TargetState::OutOfService, "parked: counted");
    // Put back in the other order than taken out.
    fresh
        .enable(&[listed[2].target.id.clone()])
        .await
        .expect("enable b3");
    fresh
        .enable(std::slice::from_ref(&b2.id))
        .await
        .expect("enable b2");
    assert_eq!(caddy.config().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_would_empty_a_route_is_refused_and_changes_nothing() {
    let Some(bin) = caddy_bin() else { return };
    let b = backends(2).await;
    let routes = json!([
        {"match": [{"path": ["/solo/*"]}], "handle": [proxy("solo", json!([{"dial": b[0].dial()}]), false)]},
        {"handle": [proxy("web", json!([{"dial": b[0].dial()}, {"dial": b[1].dial()}]), false)]}
    ]);
    let caddy = Caddy::start(&bin, routes).await;
    let before = caddy.config().await;
    let e = lb(&caddy.admin)
        .drain(&[id(&b[0].dial())])
        .await
        .expect_err("refused");
    assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("\"solo\""), "names the handler: {e}");
    assert_eq!(caddy.config().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_handler_is_not_found_by_name() {
    let Some(bin) = caddy_bin() else { return };
    let b = backends(3).await;
    let caddy = Caddy::start(&bin, routes(&b, false)).await;
    let e = CaddyBalancer::builder()
        .admin(&caddy.admin)
        .handler("wbe")
        .build()
        .expect("valid")
        .list()
        .await
        .expect_err("no such handler");
    assert!(
        matches!(e, Error::NotFound { .. }) && e.to_string().contains("wbe"),
        "{e}"
    );
}
