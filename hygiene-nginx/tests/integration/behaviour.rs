//! Version negotiation, drain semantics (http and stream), fresh health
//! after enable, HA aggregation, listing, id resolution and injection.

use hygiene_core::{Error, Health, LoadBalancer, TargetState, TargetStatus};
use hygiene_nginx::NginxBalancer;

use crate::{builder, id};
use hygiene_nginx::testing::{FakeNginx, Hc, Kind, State};

async fn one(lb: &NginxBalancer, s: &str) -> TargetStatus {
    lb.status(&[id(s)]).await.expect("status")[0].clone()
}

fn version_calls(srv: &FakeNginx) -> usize {
    srv.with(|s| {
        s.log
            .iter()
            .filter(|l| l.path == "/api/" || l.path == "/api")
            .count()
    })
}

#[tokio::test]
async fn negotiates_the_highest_common_version_once() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    assert_eq!(lb.api_versions(), vec![None]);
    lb.status(&[id("backend/0")]).await.expect("status");
    lb.status(&[id("backend/1")]).await.expect("status");
    assert_eq!(lb.api_versions(), vec![Some(9)]);
    assert_eq!(version_calls(&srv), 1, "negotiated once");
    assert!(srv.with(|s| s.log.iter().any(|l| l.path == "/api/9/http/upstreams/")));

    let older = FakeNginx::start(State {
        versions: vec![1, 2, 3, 4, 5, 6],
        ..State::standard()
    })
    .await;
    let lb = builder([&older])
        .upstream("backend")
        .build()
        .expect("valid");
    lb.drain(&[id("backend/0")]).await.expect("drain");
    assert_eq!(lb.api_versions(), vec![Some(6)]);
    assert!(
        older
            .patches()
            .iter()
            .all(|l| l.path.starts_with("/api/6/")),
        "{:?}",
        older.patches()
    );

    // Issue 12, NGINX 5: `drain` arrived with API version 2, so 2 and 3
    // are spoken; version 1 (NGINX Plus R13) alone is not.
    let early = FakeNginx::start(State {
        versions: vec![1, 2, 3],
        ..State::standard()
    })
    .await;
    let lb = builder([&early])
        .upstream("backend")
        .build()
        .expect("valid");
    lb.drain(&[id("backend/0")])
        .await
        .expect("drain on version 3");
    assert_eq!(lb.api_versions(), vec![Some(3)]);
    let ancient = FakeNginx::start(State {
        versions: vec![1],
        ..State::standard()
    })
    .await;
    let lb = builder([&ancient])
        .upstream("backend")
        .build()
        .expect("valid");
    let e = lb.list().await.expect_err("no common version");
    assert!(matches!(e, Error::NotSupported { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&ancient.url()), "{msg}");
    assert!(
        msg.contains("version 2") && msg.contains("R13") && !msg.contains("version 4"),
        "{msg}"
    );

    let pinned = FakeNginx::start(State::standard()).await;
    let lb = builder([&pinned])
        .upstream("backend")
        .api_version(7)
        .build()
        .expect("valid");
    lb.status(&[id("backend/0")]).await.expect("status");
    assert_eq!(
        version_calls(&pinned),
        0,
        "a pinned version is not negotiated"
    );
    assert!(pinned.with(|s| s.log.iter().all(|l| l.path.starts_with("/api/7/"))));
}

/// Issue 12, NGINX 1: an http drain ends in `down` before it counts as
/// drained: `draining` alone still takes sticky requests.
#[tokio::test]
async fn http_drain_waits_for_active_to_decay_then_sets_down() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    srv.with(|s| s.peer_mut(Kind::Http, "backend", 0).active = 5);
    assert_eq!(
        one(&lb, "backend/0").await,
        TargetStatus::new(TargetState::InService, Health::Healthy, Some(5))
    );
    lb.drain(&[id("backend/0")]).await.expect("drain");
    let p = srv.patches();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].path.as_str(), p[0].body.as_str()),
        (
            "/api/9/http/upstreams/backend/servers/0",
            r#"{"drain":true}"#
        )
    );
    srv.with(|s| s.peer_mut(Kind::Http, "backend", 0).active_script = [3, 1, 0].into());
    let mut seen = Vec::new();
    let last = loop {
        let st = one(&lb, "backend/0").await;
        if st.is_drained() {
            break st;
        }
        assert_eq!(st.state, TargetState::Draining, "{st:?}");
        seen.push(st.connections);
        let peer = srv.peer(Kind::Http, "backend", 0);
        assert!(!peer.down, "down only once no connection is left: {peer:?}");
    };
    assert_eq!(seen, vec![Some(3), Some(1)]);
    assert_eq!(last.state, TargetState::OutOfService, "{last:?}");
    let peer = srv.peer(Kind::Http, "backend", 0);
    assert!(peer.down && peer.drain, "{peer:?}");
    let p = srv.patches();
    assert_eq!(
        (p.len(), p[1].body.as_str()),
        (2, r#"{"down":true}"#),
        "{p:?}"
    );
    // Draining again leaves the down server alone: idempotent.
    lb.drain(&[id("backend/0")]).await.expect("drain again");
    assert_eq!(srv.patches().len(), 2);
    assert!(srv.peer(Kind::Http, "backend", 0).down);
}

/// A server only `draining` with no connection that this balancer did not
/// drain (an operator's, sticky clients idle) is not drained: its count is
/// unknown, and nothing is changed by reading it.
#[tokio::test]
async fn a_draining_server_this_balancer_did_not_drain_is_never_drained() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| s.peer_mut(Kind::Http, "backend", 1).drain = true);
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    let st = one(&lb, "backend/1").await;
    assert_eq!((st.state, st.connections), (TargetState::Draining, None));
    assert!(!st.is_drained());
    assert!(
        srv.patches().is_empty(),
        "status of a foreign drain changes nothing"
    );
}

#[tokio::test]
async fn stream_drain_is_down_then_active_zero() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv])
        .stream_upstream("tcp")
        .build()
        .expect("valid");
    srv.with(|s| s.peer_mut(Kind::Stream, "tcp", 1).active = 2);
    lb.drain(&[id("tcp/1")]).await.expect("drain");
    let p = srv.patches();
    assert_eq!(
        (p[0].path.as_str(), p[0].body.as_str()),
        ("/api/9/stream/upstreams/tcp/servers/1", r#"{"down":true}"#)
    );
    let st = one(&lb, "tcp/1").await;
    assert_eq!(
        (st.state, st.connections),
        (TargetState::Draining, Some(2)),
        "down with open connections is still draining"
    );
    assert!(!st.is_drained());
    srv.with(|s| s.peer_mut(Kind::Stream, "tcp", 1).active = 0);
    let st = one(&lb, "tcp/1").await;
    assert_eq!(st.state, TargetState::OutOfService);
    assert!(st.is_drained());
    lb.enable(&[id("tcp/1")]).await.expect("enable");
    assert_eq!(srv.patches()[1].body, r#"{"down":false}"#);
    assert!(!srv.peer(Kind::Stream, "tcp", 1).down);
}

#[tokio::test]
async fn no_stale_healthy_after_enable() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    assert_eq!(one(&lb, "backend/2").await.health, Health::Healthy);
    lb.drain(&[id("backend/2")]).await.expect("drain");
    lb.enable(&[id("backend/2")]).await.expect("enable");
    assert_eq!(srv.patches()[1].body, r#"{"down":false,"drain":false}"#);
    // nginx says up and its last check passed, but that check is from before
    // the maintenance.
    let p = srv.peer(Kind::Http, "backend", 2);
    assert_eq!(
        (p.state(Kind::Http), p.hc.and_then(|h| h.last_passed)),
        ("up", Some(true))
    );
    let st = one(&lb, "backend/2").await;
    assert_eq!(
        (st.state, st.health),
        (TargetState::InService, Health::Unknown)
    );
    assert!(!st.is_serving_healthy());
    // Other servers are unaffected.
    assert_eq!(one(&lb, "backend/1").await.health, Health::Healthy);
    srv.with(|s| s.check_round(Kind::Http, "backend", true));
    assert_eq!(one(&lb, "backend/2").await.health, Health::Healthy);

    // A failing fresh check is unhealthy.
    lb.disable(&[id("backend/2")]).await.expect("disable");
    lb.enable(&[id("backend/2")]).await.expect("enable");
    srv.with(|s| s.sick.push("10.0.0.3:8080".into()));
    srv.with(|s| s.check_round(Kind::Http, "backend", true));
    assert_eq!(one(&lb, "backend/2").await.health, Health::Unhealthy);
}

/// Issue 21, NGINX 10: nginx itself routes to a server right after
/// `down: false`, on the check from before (the test above); the API has
/// nothing to hold it, so the balancer says so, for `hygiene validate`,
/// with what covers it.
#[tokio::test]
async fn the_traffic_before_a_fresh_check_is_named_with_what_covers_it() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    let why = lb.traffic_before_fresh_check();
    for word in ["down: false", "mandatory", "[probe]", "interval"] {
        assert!(why.contains(word), "{word}: {why}");
    }
    assert!(!why.contains("passive"), "{why}");
    let lb = builder([&srv])
        .upstream("backend")
        .health_checks(hygiene_nginx::HealthChecks::Passive)
        .build()
        .expect("valid");
    assert!(
        lb.traffic_before_fresh_check().contains("no active check"),
        "{}",
        lb.traffic_before_fresh_check()
    );
    assert!(
        srv.patches().is_empty(),
        "says so without changing anything"
    );
}

/// Issue 12, NGINX 4: `mandatory` gives `checking` at start and after a
/// reload (not after `down: false`, as the docs say); either way the client
/// never counts a server healthy or in service on a check from before.
#[tokio::test]
async fn mandatory_checks_give_checking_after_reload_not_after_enable() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| {
        for p in &mut s.upstream_mut(Kind::Http, "backend").peers {
            p.hc = Some(Hc {
                checks: 9,
                last_passed: Some(true),
                mandatory: true,
                ..Hc::default()
            });
        }
    });
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    lb.disable(&[id("backend/0")]).await.expect("disable");
    assert_eq!(one(&lb, "backend/0").await.state, TargetState::OutOfService);
    lb.enable(&[id("backend/0")]).await.expect("enable");
    // Real nginx: `up` at once, with the check from before the disable.
    assert_eq!(srv.peer(Kind::Http, "backend", 0).state(Kind::Http), "up");
    assert_eq!(
        one(&lb, "backend/0").await,
        TargetStatus::new(TargetState::InService, Health::Unknown, Some(0)),
        "a check from before the enable vouches for nothing"
    );
    srv.with(|s| s.check_round(Kind::Http, "backend", true));
    assert_eq!(one(&lb, "backend/0").await.health, Health::Healthy);

    // A reload: `checking` until the first check; no new requests then.
    srv.with(|s| s.reload(false));
    assert_eq!(
        srv.peer(Kind::Http, "backend", 1).state(Kind::Http),
        "checking"
    );
    let st = one(&lb, "backend/1").await;
    assert_eq!(
        (st.state, st.health),
        (TargetState::Draining, Health::Unknown)
    );
    assert!(!st.is_serving_healthy());
    srv.with(|s| s.check_round(Kind::Http, "backend", true));
    assert!(one(&lb, "backend/1").await.is_serving_healthy());

    // `mandatory persistent`: healthy before the reload, `up` after it.
    srv.with(|s| {
        s.upstream_mut(Kind::Http, "backend").peers[2]
            .hc
            .as_mut()
            .expect("hc")
            .persistent = true;
        s.reload(false);
    });
    assert_eq!(srv.peer(Kind::Http, "backend", 2).state(Kind::Http), "up");
}

/// Issue 12, NGINX 3: nginx changes a server's health only after `fails=`
/// (`passes=`) checks in a row; in between `up` carries a failed check and
/// `unhealthy` a passed one, and the client maps both as not healthy.
#[tokio::test]
async fn health_needs_consecutive_checks() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| {
        let h = s
            .peer_mut(Kind::Http, "backend", 0)
            .hc
            .as_mut()
            .expect("hc");
        h.fails_needed = 2;
        h.passes_needed = 2;
        s.sick.push("10.0.0.1:8080".into());
        s.check_round(Kind::Http, "backend", true);
    });
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    assert_eq!(srv.peer(Kind::Http, "backend", 0).state(Kind::Http), "up");
    let st = one(&lb, "backend/0").await;
    assert_eq!(
        (st.state, st.health),
        (TargetState::InService, Health::Unhealthy),
        "up with last_passed false: {st:?}"
    );
    srv.with(|s| s.check_round(Kind::Http, "backend", true));
    assert_eq!(
        srv.peer(Kind::Http, "backend", 0).state(Kind::Http),
        "unhealthy"
    );
    srv.with(|s| {
        s.sick.clear();
        s.check_round(Kind::Http, "backend", true);
    });
    let p = srv.peer(Kind::Http, "backend", 0);
    assert_eq!(
        (p.state(Kind::Http), p.hc.and_then(|h| h.last_passed)),
        ("unhealthy", Some(true))
    );
    let st = one(&lb, "backend/0").await;
    assert_eq!(
        (st.state, st.health),
        (TargetState::Draining, Health::Unhealthy)
    );
    srv.with(|s| s.check_round(Kind::Http, "backend", true));
    assert!(one(&lb, "backend/0").await.is_serving_healthy());
}

#[tokio::test]
async fn drain_leaves_a_disabled_server_down() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    lb.disable(&[id("backend/1")]).await.expect("disable");
    srv.clear_log();
    lb.drain(&[id("backend/1")]).await.expect("drain");
    assert!(
        srv.patches().is_empty(),
        "drain must not turn a down server into a draining one"
    );
    let p = srv.peer(Kind::Http, "backend", 1);
    assert!(p.down && !p.drain);
}

#[tokio::test]
async fn list_gives_ids_addresses_and_status() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| {
        s.peer_mut(Kind::Http, "backend", 1).drain = true;
        s.peer_mut(Kind::Http, "backend", 2).backup = true;
    });
    let lb = builder([&srv])
        .upstream("backend")
        .stream_upstream("tcp")
        .build()
        .expect("valid");
    let listed = lb.list().await.expect("list");
    let ids: Vec<&str> = listed.iter().map(|l| l.target.id.as_str()).collect();
    assert_eq!(
        ids,
        ["backend/0", "backend/1", "backend/2", "tcp/0", "tcp/1"]
    );
    let t = &listed[0].target;
    assert_eq!(
        (t.address.as_deref(), t.port),
        (Some("10.0.0.1"), Some(8080))
    );
    assert_eq!(t.meta.get("upstream").map(String::as_str), Some("backend"));
    assert_eq!(t.meta.get("protocol").map(String::as_str), Some("http"));
    assert_eq!(
        listed[3].target.meta.get("protocol").map(String::as_str),
        Some("stream")
    );
    assert_eq!(listed[1].status.state, TargetState::Draining);
    assert_eq!(
        listed[2].target.meta.get("backup").map(String::as_str),
        Some("true")
    );
    assert!(
        !lb.capabilities().graceful_drain,
        "one stream upstream: no graceful drain for the pool"
    );
}

#[tokio::test]
async fn ha_status_is_aggregated() {
    let a = FakeNginx::start(State::standard()).await;
    let b = FakeNginx::start(State::standard()).await;
    let lb = builder([&a, &b])
        .upstream("backend")
        .build()
        .expect("valid");
    a.with(|s| s.peer_mut(Kind::Http, "backend", 0).active = 2);
    b.with(|s| s.peer_mut(Kind::Http, "backend", 0).active = 3);
    assert_eq!(
        one(&lb, "backend/0").await,
        TargetStatus::new(TargetState::InService, Health::Healthy, Some(5))
    );
    // Split: draining on one instance only is not in service, and never drained.
    a.with(|s| {
        let p = s.peer_mut(Kind::Http, "backend", 0);
        p.drain = true;
        p.active = 0;
    });
    let st = one(&lb, "backend/0").await;
    assert_eq!((st.state, st.connections), (TargetState::Draining, None));
    assert!(!st.is_drained());
    lb.drain(&[id("backend/0")]).await.expect("drain");
    assert_eq!(one(&lb, "backend/0").await.connections, Some(3));
    b.with(|s| s.peer_mut(Kind::Http, "backend", 0).active = 0);
    assert!(one(&lb, "backend/0").await.is_drained());
    // Health: unhealthy on one instance is unhealthy.
    b.with(|s| s.check_round(Kind::Http, "backend", false));
    assert_eq!(one(&lb, "backend/1").await.health, Health::Unhealthy);
}

#[tokio::test]
async fn ha_server_missing_on_one_instance_changes_nothing() {
    let a = FakeNginx::start(State::standard()).await;
    let mut second = State::standard();
    second
        .upstream_mut(Kind::Http, "backend")
        .peers
        .retain(|p| p.server != "10.0.0.2:8080");
    let b = FakeNginx::start(second).await;
    let lb = builder([&a, &b])
        .upstream("backend")
        .build()
        .expect("valid");
    let e = lb
        .drain(&[id("backend/0"), id("backend/1")])
        .await
        .expect_err("missing on b");
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("backend/1") && msg.contains(&b.url()), "{msg}");
    assert!(
        a.patches().is_empty() && b.patches().is_empty(),
        "nothing sent"
    );
    let e = lb.list().await.expect_err("inconsistent pair");
    assert!(e.to_string().contains(&b.url()));
}

#[tokio::test]
async fn names_never_reach_other_paths() {
    let srv = FakeNginx::start(State::standard()).await;
    for bad in [
        "backend/../../nginx",
        "a/b",
        "backend?x=1",
        "backend%2f",
        "..",
    ] {
        let e = builder([&srv])
            .upstream(bad)
            .build()
            .expect_err("invalid upstream name");
        assert!(matches!(e, Error::InvalidName { .. }), "{bad}: {e:?}");
    }
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    // An address-form id is only ever compared, never put in a path.
    let e = lb
        .drain(&[id("backend/../../http/upstreams/tcp/servers/0")])
        .await
        .expect_err("unknown");
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = lb
        .drain(&[id("nope/0")])
        .await
        .expect_err("unknown upstream");
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = lb
        .status(&[id("backend")])
        .await
        .expect_err("no server part");
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    assert!(srv.patches().is_empty());
    assert!(
        srv.with(|s| s.log.iter().all(|l| l.path == "/api/"
            || l.path == "/api/9/http/upstreams/"
            || l.path == "/api/9/stream/upstreams/")),
        "{:?}",
        srv.with(|s| s.log.clone())
    );
}

#[tokio::test]
async fn address_ids_cover_every_peer_with_that_address() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    lb.drain(&[id("backend/10.0.0.2:8080")])
        .await
        .expect("drain");
    assert!(srv.peer(Kind::Http, "backend", 1).drain);
    assert!(!srv.peer(Kind::Http, "backend", 0).drain);
    assert_ne!(
        one(&lb, "backend/10.0.0.2:8080").await.state,
        TargetState::InService
    );
    let hint = lb.enable_hint(&id("backend/1"));
    assert!(
        hint.contains(&format!("{}/9/http/upstreams/backend/servers/1", srv.url()))
            && hint.contains("\"drain\":false"),
        "{hint}"
    );
}

#[tokio::test]
async fn status_is_one_call_per_instance_and_upstream() {
    let a = FakeNginx::start(State::standard()).await;
    let b = FakeNginx::start(State::standard()).await;
    let lb = builder([&a, &b])
        .upstream("backend")
        .stream_upstream("tcp")
        .build()
        .expect("valid");
    lb.list().await.expect("negotiate");
    a.clear_log();
    b.clear_log();
    let ids = [
        id("backend/0"),
        id("backend/1"),
        id("backend/2"),
        id("backend/10.0.0.1:8080"),
    ];
    let st = lb.status(&ids).await.expect("status");
    assert_eq!(st.len(), 4, "one status per id, in order");
    assert_eq!(st[0], st[3], "the same server by id and by address");
    for srv in [&a, &b] {
        let log = srv.with(|s| s.log.clone());
        assert_eq!(
            log.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(),
            ["/api/9/http/upstreams/", "/api/9/stream/upstreams/"],
            "one GET per instance and upstream kind: {log:?}"
        );
    }
    assert!(lb.status(&[]).await.expect("empty").is_empty());
}

#[tokio::test]
async fn wrong_api_url() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = hygiene_nginx::NginxBalancer::builder()
        .instance(format!("http://{}/status", srv.addr))
        .upstream("backend")
        .build()
        .expect("valid");
    let e = lb.list().await.expect_err("no API there");
    assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("api;"), "{e}");
}
