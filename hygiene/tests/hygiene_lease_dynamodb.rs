//! `[lease.dynamodb]` end to end, against a real moto server and a real
//! HAProxy: `validate` checks the table and shows the holder; a run while
//! another machine holds the pool is refused naming it (nothing changed);
//! a run under the lease keeps its journal in the table (not in the state
//! directory), `status` reads it from there, and the lease is released.
#![cfg(feature = "aws")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{aws_env, have_haproxy, hygiene, out};
use examples::scenario::{Scenario, ScenarioConfig};
use hygiene_aws::moto::{find_moto_server, MotoServer, REGION};
use hygiene_aws::DynamoLeaseStore;
use hygiene_core::conformance::integration_available;
use hygiene_core::journal::Record;
use hygiene_core::lease::{LeaseStore, Owner};
use hygiene_core::{LoadBalancer as _, TargetState};

fn config(dir: &Path, scn: &Scenario, moto: &str, table: &str) -> std::path::PathBuf {
    let path = dir.join("hygiene.toml");
    let text = format!(
        "pool = \"web\"\n\n[balancer.haproxy]\nnodes = [{sock:?}]\nbackends = [\"web\"]\n\n[executor.local]\nprogram = \"/bin/true\"\n\n[rollout]\nbatch_size = 1\npoll_interval = \"50ms\"\ncall_timeout = \"5s\"\n\n[lease.dynamodb]\ntable = {table:?}\nregion = {REGION:?}\nendpoint_url = {moto:?}\nlease_duration = \"20s\"\n",
        sock = scn.haproxy.socket().display().to_string(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_under_a_dynamodb_lease_on_moto() {
    if !have_haproxy()
        || !integration_available(
            "moto",
            find_moto_server().is_some(),
            "run ./scripts/test, which installs moto[server] into .venv, or set HYGIENE_MOTO_SERVER",
        )
    {
        return;
    }
    let m = MotoServer::start().await.expect("moto starts");
    let sdk = m.sdk_config().await;
    let store = DynamoLeaseStore::from_sdk_config(
        &sdk,
        Some(m.endpoint_url()),
        "hygiene-leases",
        Duration::from_secs(20),
    )
    .expect("store");
    store.create_table().await.expect("table");
    let scn = Scenario::start(ScenarioConfig {
        servers: 2,
        ..ScenarioConfig::default()
    })
    .await
    .expect("scenario");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cmd = |cfg: &Path, args: &[&str]| {
        let mut c = hygiene(cfg, &state);
        c.args(args);
        aws_env(&mut c, dir.path());
        out(c)
    };

    // A table that is not there: validate names it as a problem.
    let missing = config(dir.path(), &scn, &m.endpoint_url(), "no-such-table");
    let (code, stdout, err) = cmd(&missing, &["validate"]);
    assert_ne!(code, 0, "{stdout}{err}");
    assert!(
        format!("{stdout}{err}").contains("no-such-table"),
        "{stdout}{err}"
    );

    let cfg = config(dir.path(), &scn, &m.endpoint_url(), "hygiene-leases");
    let (code, stdout, err) = cmd(&cfg, &["validate"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("reachable and writable") && stdout.contains("pool web free"),
        "{stdout}"
    );

    // Another machine holds the pool: validate shows it, a run is refused
    // naming it and changes nothing.
    let other = store
        .acquire("web", &Owner::here("run-elsewhere"), &[])
        .await
        .expect("acquire");
    let (code, stdout, _) = cmd(&cfg, &["validate"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("run-elsewhere"), "{stdout}");
    let (code, stdout, err) = cmd(&cfg, &["run", "--yes"]);
    assert_eq!(code, 5, "{stdout}{err}");
    assert!(
        err.contains("run-elsewhere") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(
        store.records("web").await.expect("records").is_empty(),
        "nothing journaled"
    );
    for l in scn.balancer.list().await.expect("list") {
        assert_eq!(l.status.state, TargetState::InService, "{}", l.target.id);
    }
    store.release(&other).await.expect("release");

    // A run under the lease: its journal is in the table.
    let (code, stdout, err) = cmd(&cfg, &["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}{err}");
    let records = store.records("web").await.expect("records");
    assert!(
        matches!(records.first(), Some(Record::Header(_))),
        "{records:?}"
    );
    assert!(
        matches!(records.last(), Some(Record::End { .. })),
        "{records:?}"
    );
    assert!(
        !state.join("web.jsonl").exists()
            || std::fs::read_to_string(state.join("web.jsonl"))
                .expect("read")
                .is_empty(),
        "no local journal written"
    );
    assert!(
        store.holder("web").await.expect("holder").is_none(),
        "released at the end"
    );
    let (code, stdout, err) = cmd(&cfg, &["status", "--json"]);
    assert_eq!(code, 0, "{stdout}{err}");
    let st: serde_json::Value = serde_json::from_str(stdout.trim()).expect("status json");
    assert_eq!(st["state"], "finished", "{st}");
    assert_eq!(st["lease"], "free", "{st}");
    assert!(
        st["journal"]
            .as_str()
            .is_some_and(|j| j.contains("hygiene-leases")),
        "{st}"
    );
    assert_eq!(st["targets"].as_array().map(Vec::len), Some(2), "{st}");
}
