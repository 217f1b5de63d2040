//! What is etcd's own in the store, against a real etcd: its leases
//! expire on the server, renewals are keep-alives, the store can stop or
//! freeze, TLS and users are etcd's.

mod common;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PermissionType};
use hygiene_core::journal::{Journal, Record};
use hygiene_core::lease::{
    acquire_waiting, Heartbeat, HeldLease, LeaseError, LeaseState, LeaseStore, Owner, StoreJournal,
};
use hygiene_etcd::server::{EtcdServer, ServerTls};
use hygiene_etcd::{EtcdLeaseStore, EtcdTls};
use tokio::time::Instant;

fn note(text: &str) -> Record {
    Record::Resumed {
        mode: text.to_owned(),
        at: "2026-12-06T00:00:00Z".into(),
        host: "etcd test".into(),
        pid: 0,
    }
}

/// A holder that died: etcd expires its lease; a contender that arrives
/// afterwards still waits a whole lease of its own before taking over
/// (it cannot know when the holder last renewed), inherits the hosts it
/// had out, and the dead holder's late records are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_is_taken_over_after_a_whole_lease_seen_and_fenced_off() {
    let Some(etcd) = common::etcd().await else {
        return;
    };
    let a = common::store(&etcd, 2).await;
    let b = common::store(&etcd, 2).await;
    let g1 = a
        .acquire("web", &Owner::here("run-1"), &["10.0.0.1".into()])
        .await
        .expect("acquire");
    // The holder stops renewing (its process died); etcd expires its lease.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let shown = b.holder("web").await.expect("holder").expect("still held");
    assert!(
        shown.renewed_at.contains("expired"),
        "an expired holder is shown as such: {shown}"
    );
    let first = b.acquire("web", &Owner::here("run-2"), &[]).await;
    assert!(
        matches!(
            &first,
            Err(LeaseError::Held {
                retry_in: Some(_),
                ..
            })
        ),
        "a first sighting never takes over at once: {first:?}"
    );
    let start = Instant::now();
    let g2 = acquire_waiting(
        &b,
        "web",
        &Owner::here("run-2"),
        &[],
        Duration::from_secs(10),
    )
    .await
    .expect("taken over");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "took over after {:?}, before a whole lease of its own",
        start.elapsed()
    );
    assert!(g2.fence > g1.fence);
    let shown = b.holder("web").await.expect("holder").expect("held");
    assert_eq!(
        shown.hosts,
        ["10.0.0.1"],
        "the dead run's host is inherited"
    );
    assert!(matches!(
        a.append(&g1, &note("late")).await,
        Err(LeaseError::Lost { .. })
    ));
    assert!(matches!(a.renew(&g1).await, Err(LeaseError::Lost { .. })));
}

/// A holder whose etcd lease expired while nobody took the pool over is
/// still the holder (its fence is current): a renewal brings it back on a
/// new etcd lease, and a contender is refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_renewal_revives_an_expired_lease_nobody_took_over() {
    let Some(etcd) = common::etcd().await else {
        return;
    };
    let a = common::store(&etcd, 1).await;
    let b = common::store(&etcd, 1).await;
    let g = a
        .acquire("web", &Owner::here("run-1"), &[])
        .await
        .expect("acquire");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let shown = b.holder("web").await.expect("holder").expect("held");
    assert!(shown.renewed_at.contains("expired"), "{shown}");
    a.renew(&g).await.expect("renewed on a new etcd lease");
    let shown = b.holder("web").await.expect("holder").expect("held");
    assert!(!shown.renewed_at.contains("expired"), "{shown}");
    assert_eq!(shown.fence, g.fence, "the same grant");
    a.append(&g, &note("still mine")).await.expect("append");
}

/// The background heartbeat keeps the lease through several lease
/// durations with keep-alives; a contender is refused all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_keeps_an_etcd_lease_alive() {
    let Some(etcd) = common::etcd().await else {
        return;
    };
    let a = common::store(&etcd, 1).await;
    let b = common::store(&etcd, 1).await;
    let sent = Instant::now();
    let grant = a
        .acquire("web", &Owner::here("run-1"), &[])
        .await
        .expect("acquire");
    let hb = Heartbeat::start(HeldLease {
        store: Arc::new(a.clone()),
        grant,
        since: sent,
    });
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = b.acquire("web", &Owner::here("run-2"), &[]).await;
        assert!(
            matches!(r, Err(LeaseError::Held { .. })),
            "a renewed lease is never taken over: {r:?}"
        );
        assert!(matches!(hb.state(), LeaseState::Held { .. }));
    }
}

/// A frozen store (SIGSTOP: a partition) makes calls fail as
/// `Unavailable` within the request timeout — not hang — and the lease
/// works again once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_is_unavailable_not_a_hang() {
    let Some(etcd) = common::etcd().await else {
        return;
    };
    let a = common::store(&etcd, 5).await;
    let g = a
        .acquire("web", &Owner::here("run-1"), &[])
        .await
        .expect("acquire");
    etcd.pause().expect("pause");
    let start = Instant::now();
    let r = a.renew(&g).await;
    etcd.resume().expect("resume");
    assert!(
        matches!(&r, Err(e) if e.is_retryable()),
        "a frozen store is Unavailable: {r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the renewal waited {:?}",
        start.elapsed()
    );
    let mut ok = false;
    for _ in 0..20 {
        if a.renew(&g).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "renewals work again once the store is back");
}

/// Leases, fences and the journal live in etcd: a restart of the store
/// keeps them, and the next acquisition's fence is still greater.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_and_fences_survive_a_store_restart() {
    let Some(mut etcd) = common::etcd().await else {
        return;
    };
    let a = common::store(&etcd, 5).await;
    let g1 = a
        .acquire("web", &Owner::here("run-1"), &[])
        .await
        .expect("acquire");
    let journal = StoreJournal::new(Arc::new(a.clone()), g1.clone());
    for n in 0..3 {
        journal.append(&note(&format!("r{n}"))).expect("append");
    }
    a.release(&g1).await.expect("release");
    etcd.restart().await.expect("restart");
    let b = common::store(&etcd, 5).await;
    assert_eq!(b.records("web").await.expect("records").len(), 3);
    let g2 = b
        .acquire("web", &Owner::here("run-2"), &[])
        .await
        .expect("acquire");
    assert!(g2.fence > g1.fence, "{} after {}", g2.fence, g1.fence);
    // Read from "another machine" through the engine's journal interface.
    let reader = StoreJournal::reader(Arc::new(b.contender()), "web");
    assert_eq!(reader.records().expect("records").len(), 3);
    assert!(reader.append(&note("no")).is_err(), "a reader cannot write");
}

/// Names with `/` cannot reach into another pool's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_names_with_slashes_stay_apart() {
    let Some(etcd) = common::etcd().await else {
        return;
    };
    let a = common::store(&etcd, 5).await;
    let g = a
        .acquire("web", &Owner::here("run-1"), &["h/1".into()])
        .await
        .expect("acquire");
    let g2 = a
        .acquire("web/hosts/h", &Owner::here("run-2"), &[])
        .await
        .expect("another pool");
    assert_eq!(
        a.holder("web").await.expect("holder").expect("held").hosts,
        ["h/1"]
    );
    a.release(&g2).await.expect("release");
    a.release(&g).await.expect("release");
    assert!(a.holder("web").await.expect("holder").is_none());
}

/// etcd's users: a wrong password is a configuration error naming the
/// credentials; a user without write permission on the prefix is told
/// which grant it needs; the right user works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_users_and_permissions() {
    let Some(etcd) = common::etcd().await else {
        return;
    };
    let mut admin = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect");
    admin.user_add("root", "rootpw", None).await.expect("root");
    admin.user_grant_role("root", "root").await.expect("grant");
    admin.role_add("hygiene").await.expect("role");
    admin
        .role_grant_permission(
            "hygiene",
            etcd_client::Permission::new(PermissionType::Readwrite, "hygiene/").with_prefix(),
        )
        .await
        .expect("permission");
    admin.user_add("ops", "opspw", None).await.expect("ops");
    admin
        .user_grant_role("ops", "hygiene")
        .await
        .expect("grant");
    admin
        .user_add("viewer", "viewpw", None)
        .await
        .expect("viewer");
    admin.auth_enable().await.expect("auth on");

    let with = |user: &str, pw: &str, prefix: &str| {
        EtcdLeaseStore::builder([etcd.endpoint()])
            .with_user(user, pw)
            .with_prefix(prefix)
            .with_lease_duration(Duration::from_secs(5))
            .with_request_timeout(Duration::from_secs(1))
            .connect()
    };
    let e = with("ops", "wrong", "hygiene/")
        .await
        .expect_err("wrong password");
    assert!(
        matches!(&e, hygiene_core::Error::InvalidConfig { message, .. } if message.contains("credentials")),
        "{e}"
    );
    let viewer = with("viewer", "viewpw", "hygiene/").await.expect("connect");
    let e = viewer.check_writable().await.expect_err("no permission");
    assert!(
        matches!(&e, LeaseError::Config { message, .. } if message.contains("grant the user readwrite")),
        "{e}"
    );
    let ops = with("ops", "opspw", "hygiene/").await.expect("connect");
    ops.check_writable()
        .await
        .expect("ops may write under hygiene/");
    let g = ops
        .acquire("web", &Owner::here("run-1"), &["10.0.0.1".into()])
        .await
        .expect("acquire");
    ops.renew(&g).await.expect("renew");
    ops.append(&g, &note("r")).await.expect("append");
    ops.release(&g).await.expect("release");
    let outside = with("ops", "opspw", "other/").await.expect("connect");
    assert!(matches!(
        outside.acquire("web", &Owner::here("run-2"), &[]).await,
        Err(LeaseError::Config { .. })
    ));
}

/// Writes a CA, a server certificate for 127.0.0.1 and a client
/// certificate with openssl; `None` (after a skip message) without it.
fn certificates(dir: &std::path::Path) -> Option<()> {
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
    };
    if !hygiene_core::conformance::integration_available(
        "openssl",
        openssl(&["version"]).is_ok(),
        "apt-get install openssl",
    ) {
        return None;
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for args in [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hygiene test CA",
        ][..],
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other-ca.key",
            "-out",
            "other-ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=another CA",
        ][..],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ][..],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ][..],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=ops",
        ][..],
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ][..],
    ] {
        let out = openssl(args).expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(())
}

/// A real etcd serving TLS with client certificates: the store works with
/// the CA and a client certificate, and fails (unavailable, not a hang)
/// without the client certificate or with another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() {
    if hygiene_etcd::server::find_etcd().is_none() {
        drop(common::etcd().await);
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    if certificates(dir.path()).is_none() {
        return;
    }
    let p = |f: &str| dir.path().join(f);
    let etcd = EtcdServer::start_with(Some(ServerTls {
        cert: p("server.pem"),
        key: p("server.key"),
        client_ca: Some(p("ca.pem")),
    }))
    .await
    .expect("etcd with TLS starts");
    let store = |tls: EtcdTls| {
        EtcdLeaseStore::builder([etcd.endpoint()])
            .with_tls(tls)
            .with_lease_duration(Duration::from_secs(5))
            .with_request_timeout(Duration::from_secs(1))
            .connect()
    };
    let good = store(EtcdTls {
        ca_file: Some(p("ca.pem")),
        cert_file: Some(p("client.pem")),
        key_file: Some(p("client.key")),
        server_name: None,
    })
    .await
    .expect("connect");
    good.check_writable()
        .await
        .expect("TLS with a client certificate");
    let g = good
        .acquire("web", &Owner::here("run-1"), &[])
        .await
        .expect("acquire over TLS");
    good.release(&g).await.expect("release");

    for (what, tls) in [
        (
            "without a client certificate",
            EtcdTls {
                ca_file: Some(p("ca.pem")),
                ..EtcdTls::default()
            },
        ),
        (
            "trusting another CA",
            EtcdTls {
                ca_file: Some(p("other-ca.pem")),
                cert_file: Some(p("client.pem")),
                key_file: Some(p("client.key")),
                server_name: None,
            },
        ),
    ] {
        let s = store(tls).await.expect("connect is lazy");
        let r = s.check_writable().await;
        assert!(
            matches!(&r, Err(e) if e.is_retryable()),
            "{what}: refused: {r:?}"
        );
    }
}
