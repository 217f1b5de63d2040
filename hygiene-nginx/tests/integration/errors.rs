//! Every error case of the issue, each mapped to a typed core error whose
//! message names the instance, the upstream and the server.

use std::time::Duration;

use hygiene_core::{Error, LoadBalancer};

use crate::{builder, id};
use hygiene_nginx::testing::{FakeNginx, Kind, State};

fn assert_names(e: &Error, parts: &[&str]) {
    let s = e.to_string();
    for p in parts {
        assert!(s.contains(p), "{p:?} missing from: {s}");
    }
}

#[tokio::test]
async fn upstream_not_found() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("ghost").build().expect("valid");
    let e = lb.list().await.expect_err("no such upstream");
    assert!(
        matches!(
            e,
            Error::NotFound {
                kind: "upstream",
                ..
            }
        ),
        "{e:?}"
    );
    assert_names(&e, &["ghost", &srv.url()]);
    // http and stream are separate namespaces.
    let lb = builder([&srv])
        .stream_upstream("backend")
        .build()
        .expect("valid");
    let e = lb
        .status(&[id("backend/0")])
        .await
        .expect_err("no stream upstream backend");
    assert!(
        matches!(
            e,
            Error::NotFound {
                kind: "upstream",
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn upstream_static_needs_a_zone() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("legacy").build().expect("valid");
    let e = lb.status(&[id("legacy/0")]).await.expect_err("static");
    assert!(matches!(e, Error::NotSupported { .. }), "{e:?}");
    assert_names(&e, &["legacy", "zone", &srv.url(), "UpstreamStatic"]);
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn upstream_server_not_found_between_read_and_patch() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    // The server vanishes (config reload) after the read, before the PATCH.
    srv.inject(
        Some("PATCH"),
        404,
        "application/json",
        &FakeNginx::error_body(404, "UpstreamServerNotFound"),
    );
    let e = lb.drain(&[id("backend/1")]).await.expect_err("gone");
    assert!(matches!(e, Error::NotFound { kind: "server", .. }), "{e:?}");
    assert_names(&e, &["backend/1", &srv.url()]);
}

#[tokio::test]
async fn unknown_server_is_not_found_before_any_change() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    let e = lb
        .enable(&[id("backend/0"), id("backend/42")])
        .await
        .expect_err("unknown");
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert_names(&e, &["backend/42", &srv.url(), "backend"]);
    assert!(srv.patches().is_empty());
}

#[tokio::test]
async fn method_disabled_says_api_write_on() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| s.write = false);
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    lb.status(&[id("backend/0")])
        .await
        .expect("reads still work");
    let e = lb
        .drain(&[id("backend/0")])
        .await
        .expect_err("read-only API");
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert_names(
        &e,
        &[
            "api write=on",
            "MethodDisabled",
            "backend",
            "backend/0",
            &srv.url(),
        ],
    );
    assert!(!srv.peer(Kind::Http, "backend", 0).drain);
}

#[tokio::test]
async fn basic_auth() {
    let srv = FakeNginx::start(State::standard()).await;
    // "hygiene:s3cret" in base64.
    srv.with(|s| s.auth = Some("Basic aHlnaWVuZTpzM2NyZXQ=".into()));
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    let e = lb.list().await.expect_err("no credentials");
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert_names(&e, &[&srv.url(), "basic_auth", "401"]);
    let lb = builder([&srv])
        .upstream("backend")
        .basic_auth("hygiene", "wrong")
        .build()
        .expect("valid");
    assert!(matches!(
        lb.list().await,
        Err(Error::PermissionDenied { .. })
    ));
    let lb = builder([&srv])
        .upstream("backend")
        .basic_auth("hygiene", "s3cret")
        .build()
        .expect("valid");
    lb.drain(&[id("backend/0")]).await.expect("authorized");
    assert!(srv.peer(Kind::Http, "backend", 0).drain);
    assert!(
        !format!("{lb:?}").contains("s3cret"),
        "Debug must hide the password"
    );
}

#[tokio::test]
async fn forbidden() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    srv.inject(
        None,
        403,
        "text/html",
        "<html><body>403 Forbidden</body></html>",
    );
    let e = lb.list().await.expect_err("forbidden");
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert_names(&e, &[&srv.url(), "403"]);
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    lb.list().await.expect("negotiate first");
    srv.inject(
        Some("GET"),
        502,
        "text/html",
        "<html>502 Bad Gateway</html>",
    );
    let e = lb.status(&[id("backend/0")]).await.expect_err("502");
    assert!(
        matches!(e, Error::Unavailable { .. }) && e.is_retryable(),
        "{e:?}"
    );
    assert_names(&e, &[&srv.url(), "backend", "502"]);
    srv.inject(
        Some("PATCH"),
        500,
        "application/json",
        &FakeNginx::error_body(500, "UpstreamOutOfMemory"),
    );
    let e = lb.drain(&[id("backend/2")]).await.expect_err("500");
    assert!(e.is_retryable(), "{e:?}");
    assert_names(&e, &["UpstreamOutOfMemory", "backend/2"]);
    srv.inject(None, 429, "text/plain", "slow down");
    assert!(matches!(lb.list().await, Err(Error::Throttled { .. })));
}

#[tokio::test]
async fn timeouts() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| s.delay = Duration::from_millis(800));
    let lb = builder([&srv])
        .upstream("backend")
        .timeout(Duration::from_millis(150))
        .build()
        .expect("valid");
    let e = lb.list().await.expect_err("too slow");
    assert!(
        matches!(e, Error::Timeout { after, .. } if after == Duration::from_millis(150)),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_names(&e, &[&srv.url()]);
}

#[tokio::test]
async fn connection_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let url = format!("http://{addr}/api");
    let lb = hygiene_nginx::NginxBalancer::builder()
        .instance(&url)
        .upstream("backend")
        .build()
        .expect("valid");
    let e = lb.list().await.expect_err("nobody listens");
    assert!(
        matches!(e, Error::Unavailable { .. }) && e.is_retryable(),
        "{e:?}"
    );
    assert_names(&e, &[&url]);
}

#[tokio::test]
async fn non_json_and_malformed_replies() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    srv.inject(None, 200, "text/html", "<html>welcome to nginx</html>");
    let e = lb.list().await.expect_err("html version list");
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    assert_names(&e, &[&srv.url(), "welcome to nginx"]);
    srv.inject(None, 200, "application/json", r#"["nine"]"#);
    assert!(matches!(lb.list().await, Err(Error::Protocol { .. })));
    lb.list().await.expect("negotiated now");
    srv.inject(
        Some("GET"),
        200,
        "application/json",
        r#"{"backend":{"peers":[{"server":"10.0.0.1:8080","state":"up"}]}}"#,
    );
    let e = lb
        .status(&[id("backend/0")])
        .await
        .expect_err("peer without id");
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    assert_names(&e, &["backend"]);
    srv.inject(
        Some("GET"),
        200,
        "application/json",
        r#"{"backend":{"peers":[{"id":0,"server":"10.0.0.1:8080","state":"sleeping","active":0}]}}"#,
    );
    let e = lb
        .status(&[id("backend/0")])
        .await
        .expect_err("unknown state");
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    assert_names(&e, &["sleeping", "backend"]);
}

#[tokio::test]
async fn format_errors_are_rejected_with_the_code() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    srv.inject(
        Some("PATCH"),
        400,
        "application/json",
        &FakeNginx::error_body(400, "UpstreamConfFormatError"),
    );
    let e = lb.disable(&[id("backend/0")]).await.expect_err("400");
    assert!(
        matches!(e, Error::Rejected { .. }) && !e.is_retryable(),
        "{e:?}"
    );
    assert_names(
        &e,
        &["UpstreamConfFormatError", "backend/0", &srv.url(), "00ff"],
    );
}

#[tokio::test]
async fn unknown_version_after_negotiation() {
    let srv = FakeNginx::start(State {
        versions: vec![4, 5, 6, 7, 8],
        ..State::standard()
    })
    .await;
    let lb = builder([&srv])
        .upstream("backend")
        .api_version(9)
        .build()
        .expect("valid");
    let e = lb
        .status(&[id("backend/0")])
        .await
        .expect_err("version 9 unknown");
    assert!(matches!(e, Error::NotSupported { .. }), "{e:?}");
    assert_names(&e, &[&srv.url(), "UnknownVersion"]);
}
