//! `nginx-patch` end to end against the spec-faithful NGINX Plus API test
//! server of `hygiene_nginx::testing`, run in-process on 127.0.0.1.
#![cfg(feature = "nginx")]

use std::time::Duration;

use hygiene_core::{Outcome, Report, TargetResult};
use hygiene_nginx::testing::{FakeNginx, Kind, State};

/// The variable the test passes the API password in.
const PASSWORD_ENV: &str = "HYGIENE_TEST_NGINX_PASSWORD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_patch_runs_end_to_end_against_the_test_server() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| {
        // `hygiene:secret`, as nginx's auth_basic expects it.
        s.auth = Some("Basic aHlnaWVuZTpzZWNyZXQ=".into());
        // Each status poll runs a passing health check round, so a server
        // put back shows a fresh healthy check.
        s.auto_check = Some(true);
        // Connections wind down over a few polls once a server is draining.
        for p in &mut s.upstream_mut(Kind::Http, "backend").peers {
            p.active = 3;
            p.active_script = [2, 1, 0].into();
        }
    });

    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_nginx-patch"))
        .args([
            "--api",
            &srv.url(),
            "--upstream",
            "backend",
            "--user",
            "hygiene",
            "--password-env",
            PASSWORD_ENV,
            "--batch",
            "1",
            "--min-healthy",
            "2",
            "--api-timeout-secs",
            "5",
            "--drain-timeout-secs",
            "20",
            "--health-timeout-secs",
            "20",
            "--command-timeout-secs",
            "20",
            "--poll-ms",
            "20",
            "--",
            "true",
        ])
        .env(PASSWORD_ENV, "secret")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("nginx-patch finishes within 120 s")
        .expect("run nginx-patch");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nginx-patch failed: {stderr}");
    let report: Report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report JSON: {e}; stderr: {stderr}"));
    assert_eq!(report.outcome, Outcome::Completed, "{report:#?}");
    assert_eq!(report.targets.len(), 3, "{report:#?}");
    assert!(
        report
            .targets
            .iter()
            .all(|t| t.result == TargetResult::Done),
        "{report:#?}"
    );
    assert_eq!(report.batches, 3, "batch 1 of 3");

    // Every server went through the API and is back in service.
    for i in 0..3 {
        let p = srv.peer(Kind::Http, "backend", i);
        assert!(!p.drain && !p.down, "peer {i} not back in service: {p:?}");
        assert_eq!(p.state(Kind::Http), "up", "peer {i}: {p:?}");
    }
    let patched: Vec<String> = srv.patches().into_iter().map(|l| l.path).collect();
    for i in 0..3 {
        let path = format!("/api/9/http/upstreams/backend/servers/{i}");
        assert!(
            patched.contains(&path),
            "no PATCH of server {i}: {patched:?}"
        );
    }
}
