//! The test harness itself: a real etcd starts, serves, stops and comes
//! back with its data.

mod common;

use etcd_client::Client;

#[tokio::test]
async fn etcd_starts_serves_and_restarts_with_its_data() {
    let Some(mut etcd) = common::etcd().await else {
        return;
    };
    let mut c = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect");
    c.put("k", "v", None).await.expect("put");
    etcd.restart().await.expect("restart");
    let mut c = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect");
    let got = c.get("k", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"v");
}
