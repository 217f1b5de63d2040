//! `[lease.etcd]` end to end: `hygiene validate` reaches a real etcd,
//! checks it is writable and shows who holds the pool; a bad section is a
//! configuration error naming it; a store that is down is a problem.

#![cfg(feature = "etcd")]

mod common;

use std::path::Path;

use common::{have_haproxy, hygiene, out};
use examples::scenario::{Scenario, ScenarioConfig};
use hygiene_core::conformance::integration_available;
use hygiene_core::lease::{LeaseStore, Owner};
use hygiene_etcd::server::{find_etcd, EtcdServer};

fn config(dir: &Path, scn: &Scenario, lease: &str) -> std::path::PathBuf {
    let path = dir.join("hygiene.toml");
    let text = format!(
        "pool = \"web\"\n\n[balancer.haproxy]\nnodes = [{sock:?}]\nbackends = [\"web\"]\n\n[executor.local]\nprogram = \"/bin/true\"\n\n{lease}",
        sock = scn.haproxy.socket().display().to_string(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_the_etcd_lease_store_and_shows_the_holder() {
    if !have_haproxy()
        || !integration_available(
            "etcd",
            find_etcd().is_some(),
            "run ./scripts/test, which installs Debian's etcd-server",
        )
    {
        return;
    }
    let mut etcd = EtcdServer::start().await.expect("etcd");
    let scn = Scenario::start(ScenarioConfig::default())
        .await
        .expect("scenario");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let lease = format!(
        "[lease.etcd]\nendpoints = [{:?}]\nlease_duration = \"10s\"\nrequest_timeout = \"1s\"\n",
        etcd.endpoint()
    );
    let cfg = config(dir.path(), &scn, &lease);

    let mut c = hygiene(&cfg, &state);
    c.arg("validate");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("reachable and writable") && stdout.contains("pool web free"),
        "{stdout}"
    );

    // Another machine holds the pool: validate names it.
    let store = hygiene_etcd::EtcdLeaseStore::builder([etcd.endpoint()])
        .with_lease_duration(std::time::Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    let g = store
        .acquire("web", &Owner::here("run-elsewhere"), &[])
        .await
        .expect("acquire");
    let mut c = hygiene(&cfg, &state);
    c.args(["validate", "--json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("run-elsewhere"), "{stdout}");
    store.release(&g).await.expect("release");

    // The store is down: a problem naming it, and a run would be refused.
    etcd.stop().await.expect("stop");
    let mut c = hygiene(&cfg, &state);
    c.arg("validate");
    let (code, stdout, err) = out(c);
    assert_ne!(code, 0, "{stdout}{err}");
    assert!(
        format!("{stdout}{err}").contains("lease store etcd"),
        "{stdout}{err}"
    );

    // A bad section is a configuration error naming it, even offline.
    let cfg = config(
        dir.path(),
        &scn,
        "[lease.etcd]\nendpoints = [\"https://etcd1:2379\"]\n",
    );
    let mut c = hygiene(&cfg, &state);
    c.args(["validate", "--offline"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 3, "{stdout}{err}");
    assert!(
        err.contains("lease.etcd") && err.contains("ca_file"),
        "{err}"
    );
}
