//! `[lease.etcd]` end to end: `hygiene validate` reaches a real etcd,
//! checks it is writable and shows who holds the pool; a bad section is a
//! configuration error naming it; a store that is down is a problem; two
//! machines on one pool: the second is refused while the first runs, and
//! restores from the store's journal after the first was killed.

#![cfg(feature = "etcd")]

mod common;

use std::path::Path;

use common::{have_haproxy, hygiene, out};
use examples::scenario::{Scenario, ScenarioConfig};
use hygiene_core::conformance::integration_available;
use hygiene_core::lease::{LeaseStore, Owner};
use hygiene_core::LoadBalancer as _;
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

/// Two machines (two state directories) on one HAProxy pool under load
/// through one etcd: while the first runs, the second's `run` is refused
/// naming the holder and its `status` shows the run from the store; the
/// first is killed with -9 in the middle of a maintenance; the second's
/// `resume` takes the lease over only once etcd let it expire, reads the
/// journal from the store and finishes the run (`on_interrupted = "rerun"`:
/// it cannot ask another machine's process); 0 failed requests counted by
/// the load generator; `status` then says finished and the lease free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_machine_is_refused_then_resumes_what_a_killed_run_left() {
    if !have_haproxy()
        || !integration_available(
            "etcd",
            find_etcd().is_some(),
            "run ./scripts/test, which installs Debian's etcd-server",
        )
    {
        return;
    }
    let etcd = EtcdServer::start().await.expect("etcd");
    let scn = Scenario::start(ScenarioConfig {
        servers: 2,
        ..ScenarioConfig::default()
    })
    .await
    .expect("scenario");
    let dir = tempfile::tempdir().expect("tempdir");
    let lease = format!(
        "[lease.etcd]\nendpoints = [{:?}]\nlease_duration = \"9s\"\nrequest_timeout = \"1s\"\n\n[rollout]\ncall_timeout = \"2s\"\npoll_interval = \"50ms\"\nbatch_size = 1\non_interrupted = \"rerun\"\nhealth_timeout = \"20s\"\n",
        etcd.endpoint()
    );
    let cfg = config(dir.path(), &scn, &lease);
    // The maintenance stops the server's service for 2 s.
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "program = \"/bin/true\"",
        &format!(
            "program = {:?}\nargs = [\"patch\", \"--control\", \"{}\", \"--patch-ms\", \"2000\"]\ntimeout = \"30s\"",
            common::demo_bin().display().to_string(),
            scn.control.addr()
        ),
    );
    std::fs::write(&cfg, text).expect("write");
    let machine_a = dir.path().join("a");
    let machine_b = dir.path().join("b");
    let reader = hygiene_etcd::EtcdLeaseStore::builder([etcd.endpoint()])
        .connect()
        .await
        .expect("connect");
    let load = examples::load::Load::start(scn.frontend(), examples::load::LoadConfig::default());

    let mut c = hygiene(&cfg, &machine_a);
    c.args(["run", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut a = c.spawn().expect("spawn run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let records = reader.records("web").await.unwrap_or_default();
        if records.iter().any(|r| {
            matches!(r, hygiene_core::journal::Record::Intent { op, .. } if *op == hygiene_core::journal::Op::Execute)
        }) {
            break;
        }
        assert!(a.try_wait().expect("wait").is_none(), "the run ended early");
        assert!(
            std::time::Instant::now() < deadline,
            "no maintenance journaled in etcd"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !machine_a.join("web.jsonl").exists()
            || std::fs::read_to_string(machine_a.join("web.jsonl"))
                .expect("read")
                .is_empty(),
        "with a shared lease the journal is in the store, not in a file"
    );

    // Machine B while A runs: refused, naming the holder; status from etcd.
    let mut c = hygiene(&cfg, &machine_b);
    c.args(["run", "--yes"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 5, "{stdout}{err}");
    assert!(
        err.contains("held by") && err.contains("nothing was changed"),
        "{err}"
    );
    let mut c = hygiene(&cfg, &machine_b);
    c.arg("status");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 5, "{stdout}{err}");
    assert!(
        stdout.contains("RUNNING") && stdout.contains("lease: held by run"),
        "{stdout}"
    );
    assert!(stdout.contains("web/s1"), "{stdout}");

    a.kill().expect("SIGKILL");
    a.wait().expect("reap");
    let killed = std::time::Instant::now();

    // Machine B resumes: it waits for etcd to let A's lease expire.
    let mut c = hygiene(&cfg, &machine_b);
    c.args(["resume", "--json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        err.contains("waiting"),
        "says it waits for the lease: {err}"
    );
    assert!(
        killed.elapsed() >= std::time::Duration::from_secs(6),
        "took the lease over only once it expired: {:?}",
        killed.elapsed()
    );
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "failed requests: {stats:?}");
    assert!(stats.requests > 100, "the load ran: {stats:?}");
    let report = stdout.lines().last().expect("a report line");
    let report: serde_json::Value = serde_json::from_str(report).expect("report");
    assert_eq!(report["outcome"]["kind"], "completed", "{report}");
    let listed = scn.balancer.list().await.expect("list");
    for l in &listed {
        assert_eq!(
            l.status.state,
            hygiene_core::TargetState::InService,
            "{}",
            l.target.id
        );
    }
    let mut c = hygiene(&cfg, &machine_b);
    c.args(["status", "--json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    let st: serde_json::Value = serde_json::from_str(stdout.trim()).expect("status json");
    assert_eq!(st["state"], "finished", "{st}");
    assert_eq!(st["lease"], "free", "released at the end: {st}");
    // And machine A's view is the same store's.
    let mut c = hygiene(&cfg, &machine_a);
    c.args(["status", "--json"]);
    let (_, stdout_a, _) = out(c);
    let st_a: serde_json::Value = serde_json::from_str(stdout_a.trim()).expect("status json");
    assert_eq!(st_a["run_id"], st["run_id"], "{st_a}");
}

/// Renewals cut for real: etcd is frozen (SIGSTOP) while the run's first
/// maintenance runs. The run turns restore-only before its lease can run
/// out: it drains nothing more, puts the server back once its maintenance
/// ended, and exits 12 (lease lost) with every server in service. Once
/// etcd is back, another machine sees the unfinished run and restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_cut_turn_the_run_restore_only_and_it_exits_lease_lost() {
    if !have_haproxy()
        || !integration_available(
            "etcd",
            find_etcd().is_some(),
            "run ./scripts/test, which installs Debian's etcd-server",
        )
    {
        return;
    }
    let etcd = EtcdServer::start().await.expect("etcd");
    let scn = Scenario::start(ScenarioConfig {
        servers: 3,
        ..ScenarioConfig::default()
    })
    .await
    .expect("scenario");
    let dir = tempfile::tempdir().expect("tempdir");
    let lease = format!(
        "[lease.etcd]\nendpoints = [{:?}]\nlease_duration = \"9s\"\nrequest_timeout = \"1s\"\n\n[rollout]\ncall_timeout = \"2s\"\npoll_interval = \"50ms\"\nbatch_size = 1\nhealth_timeout = \"20s\"\n",
        etcd.endpoint()
    );
    let cfg = config(dir.path(), &scn, &lease);
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "program = \"/bin/true\"",
        &format!(
            "program = {:?}\nargs = [\"patch\", \"--control\", \"{}\", \"--patch-ms\", \"3000\"]\ntimeout = \"30s\"",
            common::demo_bin().display().to_string(),
            scn.control.addr()
        ),
    );
    std::fs::write(&cfg, text).expect("write");
    let reader = hygiene_etcd::EtcdLeaseStore::builder([etcd.endpoint()])
        .connect()
        .await
        .expect("connect");
    let load = examples::load::Load::start(scn.frontend(), examples::load::LoadConfig::default());

    let mut c = hygiene(&cfg, &dir.path().join("a"));
    c.args(["run", "--yes", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let a = c.spawn().expect("spawn run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let records = reader.records("web").await.unwrap_or_default();
        if records.iter().any(|r| {
            matches!(r, hygiene_core::journal::Record::Intent { op, .. } if *op == hygiene_core::journal::Op::Execute)
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no maintenance journaled in etcd"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    etcd.pause().expect("SIGSTOP etcd");
    let output = tokio::task::spawn_blocking(move || a.wait_with_output())
        .await
        .expect("join")
        .expect("run ends");
    etcd.resume().expect("SIGCONT etcd");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(12), "{stdout}{err}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a report line")).expect("report");
    assert_eq!(
        report["outcome"]["reason"]["kind"], "lease_lost",
        "{report}"
    );
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "failed requests: {stats:?}");
    for l in scn.balancer.list().await.expect("list") {
        assert_eq!(
            l.status.state,
            hygiene_core::TargetState::InService,
            "{}: {stdout}",
            l.target.id
        );
    }
    let drains = report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| t["result"]["kind"] != "not_started")
        .count();
    assert_eq!(drains, 1, "nothing drained after the cut: {report}");

    // Another machine, once etcd is back: the run is unfinished in the
    // store; restore takes the lease and ends it.
    // The cut run's last record (its end) may still reach etcd when it
    // wakes up: a write the client gave up on, applied late under a fence
    // that still held. Then there is nothing left to restore, and restore
    // says so. Only when no record before it was lost: a run that lost one
    // does not write its end (session 9 saw an end arrive over a lost
    // record of a maintenance's end, and status said it "may still run").
    let machine_b = dir.path().join("b");
    let mut c = hygiene(&cfg, &machine_b);
    c.args(["restore"]);
    let (code, stdout, err) = out(c);
    let ended_late = code == 5 && err.contains("nothing to restore");
    assert!(code == 0 || ended_late, "{code}: {stdout}{err}");
    let mut c = hygiene(&cfg, &machine_b);
    c.args(["status", "--json"]);
    let (code, stdout, err) = out(c);
    let st: serde_json::Value = serde_json::from_str(stdout.trim()).expect("status json");
    assert_eq!(st["state"], "finished", "{st}");
    assert_eq!(code, 0, "the journal has no gap: {stdout}{err}");
}

/// Two pools that share their hosts (two configurations over the same
/// HAProxy servers, as two teams' pools over one fleet), run at once from
/// two machines through one etcd: each batch leases its host, so a host is
/// never out for both; the second pool's drain of a host the first has out
/// fails touching nothing, naming the holder; every server ends in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_sharing_hosts_never_have_one_out_together() {
    if !have_haproxy()
        || !integration_available(
            "etcd",
            find_etcd().is_some(),
            "run ./scripts/test, which installs Debian's etcd-server",
        )
    {
        return;
    }
    let etcd = EtcdServer::start().await.expect("etcd");
    let scn = Scenario::start(ScenarioConfig {
        servers: 3,
        ..ScenarioConfig::default()
    })
    .await
    .expect("scenario");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfgs = Vec::new();
    for pool in ["web", "web-canary"] {
        let sub = dir.path().join(pool);
        std::fs::create_dir_all(&sub).expect("dir");
        let lease = format!(
            "[lease.etcd]\nendpoints = [{:?}]\nlease_duration = \"15s\"\nrequest_timeout = \"1s\"\n\n[rollout]\ncall_timeout = \"3s\"\npoll_interval = \"50ms\"\nbatch_size = 1\nhealth_timeout = \"20s\"\nmax_failures = 3\n",
            etcd.endpoint()
        );
        let cfg = config(&sub, &scn, &lease);
        let text = std::fs::read_to_string(&cfg)
            .expect("read")
            .replace("pool = \"web\"", &format!("pool = {pool:?}"))
            .replace(
                "program = \"/bin/true\"",
                &format!(
                    "program = {:?}\nargs = [\"patch\", \"--control\", \"{}\", \"--patch-ms\", \"1500\"]\ntimeout = \"30s\"",
                    common::demo_bin().display().to_string(),
                    scn.control.addr()
                ),
            );
        std::fs::write(&cfg, text).expect("write");
        cfgs.push((cfg, sub.join("state")));
    }
    let spawn = |(cfg, state): &(std::path::PathBuf, std::path::PathBuf)| {
        let mut c = hygiene(cfg, state);
        c.args(["run", "--yes", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().expect("spawn run")
    };
    let a = spawn(&cfgs[0]);
    let b = spawn(&cfgs[1]);
    let mut most_out = 0;
    let watch_until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (a, b) = {
        let ja = tokio::task::spawn_blocking(move || a.wait_with_output());
        let jb = tokio::task::spawn_blocking(move || b.wait_with_output());
        while !(ja.is_finished() && jb.is_finished()) {
            assert!(
                std::time::Instant::now() < watch_until,
                "the runs did not end"
            );
            let out = scn.out_of_rotation().await.expect("haproxy");
            most_out = most_out.max(out.len());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        (
            ja.await.expect("join").expect("run a"),
            jb.await.expect("join").expect("run b"),
        )
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert_eq!(
        most_out,
        1,
        "a host out for both pools at once: {}{}",
        text(&a),
        text(&b)
    );
    // At least one drain met the other pool's host lease, and said so.
    assert!(
        text(&a).contains("held by") || text(&b).contains("held by"),
        "{}{}",
        text(&a),
        text(&b)
    );
    for l in scn.balancer.list().await.expect("list") {
        assert_eq!(
            l.status.state,
            hygiene_core::TargetState::InService,
            "{}: {}{}",
            l.target.id,
            text(&a),
            text(&b)
        );
    }
}
