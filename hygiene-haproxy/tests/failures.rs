//! Failure cases against a real HAProxy and fake sockets: typed errors,
//! and nothing changed.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{haproxy_bin, quick_retry, Backend, FakeReply, FakeSocket, Haproxy, Layout};
use hygiene_core::{Error, LoadBalancer, TargetId, TargetState};
use hygiene_haproxy::{HaproxyBalancer, Node, SocketLevel};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_socket_is_permission_denied_and_changes_nothing() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]])).await;
    let lb = HaproxyBalancer::builder()
        .node(Node::unix(&h.user_sock).named("lb-user"))
        .backend("web")
        .build()
        .expect("valid");
    // Reading works at level user.
    assert_eq!(
        lb.status(&[id("web/s1")]).await.expect("status")[0].state,
        TargetState::InService
    );
    let e = lb
        .drain(&[id("web/s1")])
        .await
        .expect_err("drain on a user-level socket");
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("lb-user") && msg.contains("level admin"),
        "{msg}"
    );
    assert_eq!(h.server("web", "s1").await, ("UP".to_owned(), 0));
    // Said before any drain: each node's level, by name.
    let both = HaproxyBalancer::builder()
        .node(h.node("lb-a"))
        .node(Node::unix(&h.user_sock).named("lb-user"))
        .backend("web")
        .build()
        .expect("valid");
    let levels: Vec<(String, SocketLevel)> = both
        .socket_levels()
        .await
        .into_iter()
        .map(|(n, l)| (n, l.expect("level")))
        .collect();
    assert_eq!(
        levels,
        vec![
            ("lb-a".to_owned(), SocketLevel::Admin),
            ("lb-user".to_owned(), SocketLevel::User)
        ]
    );
    // The version, read at `level user` too (2.6.12 here: counted).
    for (node, v) in both.versions().await {
        let v = v.expect("show info").expect("a version line");
        assert!(v.starts_with("2.") || v.starts_with("3."), "{node}: {v}");
        assert_eq!(HaproxyBalancer::counts_old_workers(&v), Some(true), "{v}");
    }
    let e = both.check_admin().await.expect_err("lb-user is not admin");
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert!(
        e.to_string().contains("lb-user") && e.to_string().contains("level user"),
        "{e}"
    );
    h.balancer(&["web"])
        .check_admin()
        .await
        .expect("lb-a is admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_socket_is_unavailable_after_bounded_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lb = HaproxyBalancer::builder()
        .node(Node::unix(dir.path().join("nope.sock")).named("lb-gone"))
        .backend("web")
        .retry(quick_retry())
        .build()
        .expect("valid");
    let started = Instant::now();
    let e = lb.drain(&[id("web/s1")]).await.expect_err("no socket");
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(
        e.to_string().contains("lb-gone") && e.to_string().contains("does not exist"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "retries are bounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_haproxy_is_back() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let layout = Layout::web(&[&b[0], &b[1]]);
    let mut first = Haproxy::start(&bin, &layout).await;
    let sock = first.admin_sock.clone();
    let lb = HaproxyBalancer::builder()
        .node(Node::unix(&sock).named("lb-a"))
        .backend("web")
        .retry(hygiene_core::RetryPolicy {
            max_retries: 50,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
            max_total: Duration::from_secs(10),
        })
        .build()
        .expect("valid");
    first.kill();
    // A new process binds the same socket path a little later (a restart).
    let cfg = std::fs::read_to_string(first.dir.path().join("haproxy.cfg")).expect("cfg");
    let restarted = tokio::spawn({
        let bin = bin.clone();
        let dir = first.dir.path().to_path_buf();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::fs::write(dir.join("again.cfg"), cfg).expect("cfg");
            std::process::Command::new(bin)
                .arg("-db")
                .arg("-f")
                .arg(dir.join("again.cfg"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn")
        }
    });
    let r = lb.status(&[id("web/s1")]).await;
    let mut child = restarted.await.expect("join");
    child.kill().expect("kill restarted haproxy by pid");
    child.wait().expect("wait");
    let st = r.expect("status succeeds once HAProxy is back")[0].clone();
    assert_eq!(st.state, TargetState::InService);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_backend_and_server_are_not_found_and_change_nothing() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let layout = Layout::web(&[&b[0], &b[1]]);
    let (ha, hb) = (
        Haproxy::start(&bin, &layout).await,
        Haproxy::start(&bin, &layout).await,
    );

    let lb = HaproxyBalancer::builder()
        .node(ha.node("lb-a"))
        .backend("nope")
        .build()
        .expect("valid");
    let e = lb
        .status(&[id("nope/s1")])
        .await
        .expect_err("no such backend");
    assert!(
        matches!(
            e,
            Error::NotFound {
                kind: "backend",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("nope") && e.to_string().contains("lb-a"),
        "{e}"
    );

    let lb = HaproxyBalancer::builder()
        .node(ha.node("lb-a"))
        .node(hb.node("lb-b"))
        .backend("web")
        .build()
        .expect("valid");
    let e = lb
        .drain(&[id("web/s1"), id("web/s9")])
        .await
        .expect_err("no such server");
    assert!(matches!(e, Error::NotFound { kind: "server", .. }), "{e:?}");
    assert!(
        e.to_string().contains("web/s9") && e.to_string().contains("lb-a"),
        "{e}"
    );
    assert_eq!(
        ha.server("web", "s1").await,
        ("UP".to_owned(), 0),
        "nothing changed on lb-a"
    );
    assert_eq!(
        hb.server("web", "s1").await,
        ("UP".to_owned(), 0),
        "nothing changed on lb-b"
    );

    // A backend outside the pool is refused before anything is sent.
    let lb = HaproxyBalancer::builder()
        .node(ha.node("lb-a"))
        .node(hb.node("lb-b"))
        .backend("web")
        .build()
        .expect("valid");
    let e = lb
        .drain(&[id("other/s1")])
        .await
        .expect_err("backend not in the pool");
    assert!(e.is_not_found(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_never_reaches_the_socket() {
    let fake = FakeSocket::start(FakeReply::Bytes(b"\n".to_vec()));
    let lb = HaproxyBalancer::builder()
        .node(Node::unix(&fake.path))
        .backend("web")
        .build()
        .expect("valid");
    for bad in [
        "web/s1;shutdown",
        "web/s1;shutdown;sessions",
        "web/s1\u{0}x",
        "web;x/s1",
        "web/s1/s2",
        "web/s1#",
    ] {
        let Ok(bad_id) = TargetId::new(bad) else {
            continue;
        }; // core already refuses control characters
        for r in [
            lb.drain(std::slice::from_ref(&bad_id)).await,
            lb.enable(std::slice::from_ref(&bad_id)).await,
        ] {
            let e = r.expect_err("injection refused");
            assert!(
                matches!(e, Error::InvalidName { .. } | Error::NotFound { .. }),
                "{bad}: {e:?}"
            );
        }
        let e = lb
            .status(&[id("web/s2"), bad_id])
            .await
            .expect_err("refused");
        assert!(
            matches!(e, Error::InvalidName { .. } | Error::NotFound { .. }),
            "{bad}: {e:?}"
        );
    }
    assert!(
        TargetId::new("web/s1;shutdown sessions server web/s2").is_err(),
        "spaces are refused by core"
    );
    assert_eq!(
        fake.connections.load(Ordering::SeqCst),
        0,
        "received: {:?}",
        fake.received.lock().expect("lock")
    );
    let e = HaproxyBalancer::builder()
        .node(Node::unix(&fake.path))
        .backend("web;shutdown")
        .build()
        .expect_err("bad");
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    assert_eq!(fake.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_against_real_haproxy_changes_nothing() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]])).await;
    let lb = h.balancer(&["web"]);
    let e = lb
        .drain(&[id("web/s1;set"), id("web/s2")])
        .await
        .expect_err("refused");
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    assert_eq!(h.server("web", "s1").await, ("UP".to_owned(), 0));
    assert_eq!(h.server("web", "s2").await, ("UP".to_owned(), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_killed_on_one_node_changes_nothing_on_the_other() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let layout = Layout::web(&[&b[0], &b[1]]);
    let (ha, mut hb) = (
        Haproxy::start(&bin, &layout).await,
        Haproxy::start(&bin, &layout).await,
    );
    let lb = HaproxyBalancer::builder()
        .node(ha.node("lb-a"))
        .node(hb.node("lb-b"))
        .backend("web")
        .retry(quick_retry())
        .build()
        .expect("valid");
    hb.kill();
    let e = lb.drain(&[id("web/s1")]).await.expect_err("lb-b is gone");
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(e.to_string().contains("lb-b"), "{e}");
    assert_eq!(
        ha.server("web", "s1").await,
        ("UP".to_owned(), 0),
        "nothing changed on lb-a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_replies_are_typed_errors() {
    let header = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("closed without a reply", Vec::new()),
        (
            "truncated",
            format!("{header}3 web 1 s1 127.0.0.1 2").into_bytes(),
        ),
        ("garbled", b"\x00\x01garbage\n\n\n\n".to_vec()),
        ("not utf-8", vec![0xff, 0xfe, b'\n', b'\n']),
        (
            "unknown command",
            b"Unknown command, but maybe one of the following ones is a better match:\n  help\n\n"
                .to_vec(),
        ),
        ("permission denied", b"Permission denied\n\n".to_vec()),
    ];
    for (what, reply) in cases {
        let fake = FakeSocket::start(FakeReply::Bytes(reply));
        let lb = HaproxyBalancer::builder()
            .node(Node::unix(&fake.path).named("lb-fake"))
            .backend("web")
            .retry(quick_retry())
            .build()
            .expect("valid");
        let e = lb.status(&[id("web/s1")]).await.expect_err(what);
        let ok = match what {
            "closed without a reply" => matches!(e, Error::Unavailable { .. }),
            "unknown command" => matches!(e, Error::Rejected { .. }),
            "permission denied" => matches!(e, Error::PermissionDenied { .. }),
            _ => matches!(e, Error::Protocol { .. }),
        };
        assert!(ok, "{what}: {e:?}");
        assert!(
            e.to_string().contains("lb-fake"),
            "{what}: the error names the node: {e}"
        );
        let sent = fake.received.lock().expect("lock").clone();
        assert!(
            sent.iter()
                .all(|s| s == "show backend; show servers state; show stat -1 4 -1\n"),
            "{sent:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_times_out() {
    let fake = FakeSocket::start(FakeReply::Hang);
    let lb = HaproxyBalancer::builder()
        .node(Node::unix(&fake.path).named("lb-hung"))
        .backend("web")
        .read_timeout(Duration::from_millis(200))
        .retry(hygiene_core::RetryPolicy {
            max_retries: 1,
            ..quick_retry()
        })
        .build()
        .expect("valid");
    let started = Instant::now();
    let e = lb.status(&[id("web/s1")]).await.expect_err("hung");
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("lb-hung"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        fake.connections.load(Ordering::SeqCst),
        2,
        "one try and one retry"
    );
}

/// A `set` line whose reply never came may have been applied: it is not
/// sent again (a repeated `health down` would restart the rise); the
/// timeout goes back to the caller, whose next call starts from a fresh
/// snapshot. `show` lines are still retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_that_timed_out_is_not_sent_again() {
    let Some(bin) = haproxy_bin() else { return };
    let b = backends(2).await;
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]])).await;
    let snapshot = h
        .raw("show backend; show servers state; show stat -1 4 -1")
        .await
        .expect("show");
    let fake = FakeSocket::start(FakeReply::ShowThenHang(snapshot.into_bytes()));
    let lb = HaproxyBalancer::builder()
        .node(Node::unix(&fake.path).named("lb-slow"))
        .backend("web")
        .read_timeout(Duration::from_millis(200))
        .retry(quick_retry())
        .build()
        .expect("valid");
    let e = lb.drain(&[id("web/s1")]).await.expect_err("no reply");
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    let received = fake.received.lock().expect("lock").clone();
    let sets: Vec<&String> = received.iter().filter(|l| l.starts_with("set ")).collect();
    assert_eq!(
        sets,
        ["set server web/s1 state drain\n"],
        "sent once: {received:?}"
    );
}
