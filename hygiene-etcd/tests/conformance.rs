//! The shared lease-store conformance checks, against a real etcd: two
//! clients, as two machines would have them.

mod common;

use hygiene_core::lease::conformance::{check_all, LeaseFixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_lease_store_conformance_checks() {
    let Some(etcd) = common::etcd().await else {
        return;
    };
    let a = common::store(&etcd, 2).await;
    let b = common::store(&etcd, 2).await;
    check_all(&a, &b, &LeaseFixture::new("etcd")).await;
}
