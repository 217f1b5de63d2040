//! The DynamoDB lease store against moto's DynamoDB, through core's
//! conformance checks (two clients: two machines on one table). moto's
//! conditional writes and transactions are faithful enough here:
//! put-if-absent, version-conditional writes, and a transaction refused as
//! a whole with the failed condition's index.

use std::time::Duration;

use hygiene_aws::moto::MotoServer;
use hygiene_aws::DynamoLeaseStore;
use hygiene_core::lease::conformance::{check_all, LeaseFixture};
use hygiene_core::lease::{LeaseError, LeaseStore, Owner};

async fn moto() -> Option<MotoServer> {
    match MotoServer::start().await {
        Ok(m) => Some(m),
        Err(e) if std::env::var("HYGIENE_REQUIRE_INTEGRATION").as_deref() == Ok("1") => {
            panic!("moto is required (HYGIENE_REQUIRE_INTEGRATION=1): {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: moto is not available: {e}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_store_passes_the_conformance_checks() {
    let Some(moto) = moto().await else { return };
    let config = moto.sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    // Short leases: the takeover check waits about two of them.
    let a = std::sync::Arc::new(DynamoLeaseStore::new(
        client.clone(),
        "hygiene-leases",
        Duration::from_secs(2),
    ));
    a.create_table().await.expect("table");
    a.check_writable().await.expect("writable");
    let b = std::sync::Arc::new(DynamoLeaseStore::new(
        client,
        "hygiene-leases",
        Duration::from_secs(2),
    ));
    check_all(&a, &b, &LeaseFixture::new("ddb")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_configuration_error_naming_it() {
    let Some(moto) = moto().await else { return };
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    let store = DynamoLeaseStore::new(client, "no-such-table", Duration::from_secs(10));
    let e = store
        .acquire("web", &Owner::here("run-1"), &[])
        .await
        .expect_err("no table");
    assert!(matches!(e, LeaseError::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-table"), "{e}");
    assert!(store.check_writable().await.is_err());
}
