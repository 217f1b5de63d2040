//! Issue 12: a host is one target wherever it serves (every upstream, http
//! and stream), peers are keyed by `server`, reloads that renumber ids
//! never lead to a PATCH of the wrong server, and replies are capped.

use hygiene_core::{Error, Health, LoadBalancer, TargetState};
use hygiene_nginx::testing::{FakeNginx, Kind, Peer, State, Upstream};
use hygiene_nginx::Scope;

use crate::{builder, id};

/// http `backend` and `api` and stream `tcp` share host 10.0.0.1.
fn shared() -> State {
    let mut s = State::standard();
    s.upstreams.insert(
        (Kind::Http, "api".into()),
        Upstream {
            zone: true,
            peers: vec![Peer::new(0, "10.0.0.1:9090"), Peer::new(1, "10.0.0.3:9090")],
        },
    );
    s.upstream_mut(Kind::Stream, "tcp").peers[0].server = "10.0.0.1:5432".into();
    s
}

fn paths(srv: &FakeNginx) -> Vec<(String, String)> {
    srv.patches()
        .into_iter()
        .map(|l| (l.path, l.body))
        .collect()
}

/// Issue 12, hosts across pools (NGINX bullet).
#[tokio::test]
async fn a_host_in_several_upstreams_is_one_target() {
    let srv = FakeNginx::start(shared()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");

    // Listed once, with every entry named.
    let listed = lb.list().await.expect("list");
    let ids: Vec<&str> = listed.iter().map(|l| l.target.id.as_str()).collect();
    assert_eq!(ids, ["backend/0", "backend/1", "backend/2"]);
    let entries = listed[0]
        .target
        .meta
        .get("entries")
        .cloned()
        .unwrap_or_default();
    for want in [
        "http|backend|10.0.0.1:8080",
        "http|api|10.0.0.1:9090",
        "stream|tcp|10.0.0.1:5432",
    ] {
        assert!(entries.contains(want), "{want} missing from {entries}");
    }

    // Drained in every upstream that has it.
    srv.with(|s| s.peer_mut(Kind::Http, "api", 0).active = 2);
    lb.drain(&[id("backend/0")]).await.expect("drain");
    let mut got = paths(&srv);
    got.sort();
    assert_eq!(
        got,
        [
            (
                "/api/9/http/upstreams/api/servers/0".to_owned(),
                r#"{"drain":true}"#.to_owned()
            ),
            (
                "/api/9/http/upstreams/backend/servers/0".to_owned(),
                r#"{"drain":true}"#.to_owned()
            ),
            (
                "/api/9/stream/upstreams/tcp/servers/0".to_owned(),
                r#"{"down":true}"#.to_owned()
            ),
        ]
    );
    // Not drained while one upstream still has work on it.
    let st = lb.status(&[id("backend/0")]).await.expect("status")[0].clone();
    assert!(!st.is_drained(), "{st:?}");
    assert!(
        srv.peer(Kind::Http, "backend", 0).down,
        "backend has no connection left: down"
    );
    assert!(!srv.peer(Kind::Http, "api", 0).down, "api still has 2");
    srv.with(|s| s.peer_mut(Kind::Http, "api", 0).active = 0);
    let st = lb.status(&[id("backend/0")]).await.expect("status")[0].clone();
    assert_eq!(st.state, TargetState::OutOfService, "{st:?}");
    for (k, u) in [
        (Kind::Http, "backend"),
        (Kind::Http, "api"),
        (Kind::Stream, "tcp"),
    ] {
        assert!(srv.peer(k, u, 0).down, "{u} not down");
    }
    // The other hosts were never touched.
    assert!(!srv.peer(Kind::Http, "api", 1).drain && !srv.peer(Kind::Stream, "tcp", 1).down);

    // Re-enabled everywhere, healthy only when healthy everywhere.
    lb.enable(&[id("backend/0")]).await.expect("enable");
    for (k, u) in [
        (Kind::Http, "backend"),
        (Kind::Http, "api"),
        (Kind::Stream, "tcp"),
    ] {
        let p = srv.peer(k, u, 0);
        assert!(!p.down && !p.drain, "{u} not back: {p:?}");
    }
    srv.with(|s| s.check_round(Kind::Http, "backend", true));
    let st = lb.status(&[id("backend/0")]).await.expect("status")[0].clone();
    assert_eq!(
        st.health,
        Health::Unknown,
        "api and tcp have no fresh check yet"
    );
    srv.with(|s| {
        s.check_round(Kind::Http, "api", true);
        s.check_round(Kind::Stream, "tcp", true);
    });
    assert!(lb.status(&[id("backend/0")]).await.expect("status")[0].is_serving_healthy());
    srv.with(|s| s.sick.push("10.0.0.1:5432".into()));
    srv.with(|s| s.check_round(Kind::Stream, "tcp", false));
    let st = lb.status(&[id("backend/0")]).await.expect("status")[0].clone();
    assert!(!st.is_serving_healthy(), "unhealthy in tcp: {st:?}");
}

#[tokio::test]
async fn listed_only_scope_drains_only_the_configured_upstreams() {
    let srv = FakeNginx::start(shared()).await;
    let lb = builder([&srv])
        .upstream("backend")
        .scope(Scope::ListedOnly)
        .build()
        .expect("valid");
    let listed = lb.list().await.expect("list");
    let other = listed[0]
        .target
        .meta
        .get("other_upstreams")
        .cloned()
        .unwrap_or_default();
    assert!(
        other.contains("http api") && other.contains("stream tcp"),
        "{other}"
    );
    lb.drain(&[id("backend/0")]).await.expect("drain");
    assert_eq!(
        paths(&srv),
        [(
            "/api/9/http/upstreams/backend/servers/0".to_owned(),
            r#"{"drain":true}"#.to_owned()
        )]
    );
}

/// Issue 12, NGINX 2: a hostname resolving to several addresses gives
/// several peers of one `name`; the second instance must be matched by
/// `server`, not `name`.
#[tokio::test]
async fn peers_are_keyed_by_server_not_name() {
    let named = || {
        let mut s = State::standard();
        for p in &mut s.upstream_mut(Kind::Http, "backend").peers {
            p.name = Some("app.example:8080".into());
        }
        s
    };
    let a = FakeNginx::start(named()).await;
    let mut second = named();
    for (i, p) in second
        .upstream_mut(Kind::Http, "backend")
        .peers
        .iter_mut()
        .enumerate()
    {
        p.id = 20 + i as u64;
    }
    let b = FakeNginx::start(second).await;
    let lb = builder([&a, &b])
        .upstream("backend")
        .build()
        .expect("valid");
    lb.drain(&[id("backend/0")]).await.expect("drain");
    assert_eq!(paths(&a).len(), 1, "{:?}", paths(&a));
    assert_eq!(
        paths(&b),
        [(
            "/api/9/http/upstreams/backend/servers/20".to_owned(),
            r#"{"drain":true}"#.to_owned()
        )],
        "only 10.0.0.1 on the second instance, not every peer named app.example"
    );
    let listed = lb.list().await.expect("list");
    assert_eq!(listed.len(), 3, "three hosts behind one name");
    assert_eq!(
        listed[0].target.meta.get("name").map(String::as_str),
        Some("app.example:8080")
    );
}

/// Issue 12, NGINX 7: a reload renumbers ids; an id now naming another
/// address fails clearly and nothing is sent.
#[tokio::test]
async fn a_renumbered_id_fails_and_patches_nothing() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    lb.drain(&[id("backend/0")]).await.expect("drain");
    srv.with(|s| s.reload(true));
    srv.clear_log();
    let e = lb.status(&[id("backend/0")]).await.expect_err("renumbered");
    assert!(
        matches!(e, Error::Rejected { .. }) && !e.is_retryable(),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("10.0.0.1:8080") && msg.contains("10.0.0.3:8080") && msg.contains("reload"),
        "{msg}"
    );
    let e = lb.enable(&[id("backend/0")]).await.expect_err("renumbered");
    assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
    assert!(srv.patches().is_empty(), "never PATCH the wrong server");
    // By address it is found again.
    lb.enable(&[id("backend/10.0.0.1:8080")])
        .await
        .expect("by address");
}

/// A reload between the read and the PATCH: the reply shows the change hit
/// another server, and the call says which.
#[tokio::test]
async fn a_reload_racing_a_patch_is_reported() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    lb.list().await.expect("list");
    srv.with(|s| s.reload_before_patch = true);
    let e = lb
        .drain(&[id("backend/2")])
        .await
        .expect_err("wrong server");
    assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("10.0.0.1:8080") && msg.contains("10.0.0.3:8080"),
        "{msg}"
    );
}

/// Issue 12, NGINX 8: a reply larger than the cap is refused, not read whole.
#[tokio::test]
async fn replies_are_capped() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv])
        .upstream("backend")
        .max_reply_size(4096)
        .build()
        .expect("valid");
    lb.list().await.expect("small replies pass");
    let big = format!("[{}]", vec!["9"; 10_000].join(","));
    srv.inject(Some("GET"), 200, "application/json", &big);
    let e = lb.status(&[id("backend/0")]).await.expect_err("too big");
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    assert!(e.to_string().contains("max_reply_size"), "{e}");
}

/// After a crash, a new process adopts the dead run's targets: it catches a
/// renumbering since the listing, and keeps ending the drains in `down`.
#[tokio::test]
async fn adopted_targets_keep_their_address_and_drain_to_down() {
    let srv = FakeNginx::start(State::standard()).await;
    let first = builder([&srv]).upstream("backend").build().expect("valid");
    let listed = first.list().await.expect("list");
    first.drain(&[id("backend/1")]).await.expect("drain");
    drop(first);

    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    let targets: Vec<_> = listed.into_iter().map(|l| l.target).collect();
    lb.adopt(&targets).await.expect("adopt");
    let st = lb.status(&[id("backend/1")]).await.expect("status")[0].clone();
    assert_eq!(st.state, TargetState::OutOfService, "{st:?}");
    assert!(srv.peer(Kind::Http, "backend", 1).down);

    srv.with(|s| s.reload(true));
    let e = lb
        .status(&[id("backend/0")])
        .await
        .expect_err("renumbered since the listing");
    assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
}

/// The conformance check: a host in two upstreams is drained from both
/// before `drain` reports it drained, and back in both after `enable`.
#[tokio::test]
async fn conformance_a_shared_host_is_drained_from_both_upstreams() {
    let srv = FakeNginx::start(shared()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    let api = builder([&srv])
        .upstream("api")
        .scope(Scope::ListedOnly)
        .build()
        .expect("valid");
    let shared = hygiene_core::conformance::SharedHost {
        id: id("backend/0"),
        other: std::sync::Arc::new(api),
        other_id: id("api/0"),
        settle: std::time::Duration::from_secs(3),
    };
    hygiene_core::conformance::check_shared_host(&lb, &shared).await;
}
