//! The lease stores of core through the conformance checks: the memory
//! store (leases that expire, on paused time) and the file store (locks
//! the kernel frees when their process dies).

use std::sync::Arc;
use std::time::Duration;

use hygiene_core::lease::conformance::{check_all, LeaseFixture};
use hygiene_core::lease::{FileLeaseStore, LeaseError, LeaseStore, MemoryLeaseStore, Owner};

#[tokio::test(start_paused = true)]
async fn memory_store_passes_the_conformance_checks() {
    let a = MemoryLeaseStore::new(Duration::from_secs(30));
    let b = a.contender();
    check_all(&a, &b, &LeaseFixture::new("mem")).await;
}

#[tokio::test]
async fn file_store_passes_the_conformance_checks() {
    let dir = tempfile::tempdir().expect("dir");
    // Two clients of one directory: two processes of one machine.
    let a = Arc::new(FileLeaseStore::new(dir.path()).expect("store"));
    let b = Arc::new(FileLeaseStore::new(dir.path()).expect("store"));
    check_all(&a, &b, &LeaseFixture::new("file")).await;
}

#[tokio::test]
async fn a_file_lease_is_free_once_its_holder_is_gone_and_its_hosts_are_inherited() {
    let dir = tempfile::tempdir().expect("dir");
    let a = FileLeaseStore::new(dir.path()).expect("store");
    let b = FileLeaseStore::new(dir.path()).expect("store");
    let g1 = a
        .acquire("web", &Owner::here("run-1"), &["10.0.0.1".into()])
        .await
        .expect("acquire");
    assert!(matches!(
        b.acquire("web", &Owner::here("run-2"), &[]).await,
        Err(LeaseError::Held { .. })
    ));
    // The holder's process dies: its lock goes with it.
    drop(a);
    let g2 = b
        .acquire("web", &Owner::here("run-2"), &[])
        .await
        .expect("free once the holder is gone");
    assert!(g2.fence > g1.fence);
    let h = b.holder("web").await.expect("holder").expect("held");
    assert_eq!(
        h.hosts,
        ["10.0.0.1"],
        "the dead run's host is the new holder's"
    );
    let e = b
        .acquire("../etc", &Owner::here("run-3"), &[])
        .await
        .expect_err("a pool name that is not a file name");
    assert!(matches!(e, LeaseError::Config { .. }), "{e}");
}
