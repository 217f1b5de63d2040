//! `hygiene run` end to end against the spec-faithful NGINX Plus API test
//! server of `hygiene_nginx::testing` (in-process, on 127.0.0.1), driven by
//! `examples/config/nginx.toml` with the test server's URL filled in: basic
//! auth with the password from the variable the file names, an http
//! upstream whose connections wind down while it drains, a stream upstream,
//! the local executor, and the same file over the ssh executor against a
//! loopback sshd.
#![cfg(feature = "nginx")]

mod common;

use std::path::Path;

use common::{example_config, hygiene, json_lines, out, replace, section, write};
use hygiene_core::conformance::integration_available;
use hygiene_nginx::testing::{FakeNginx, Kind, State};

/// The user and password the example's `[balancer.nginx]` authenticates
/// with (`hygiene:secret`, as nginx's auth_basic expects it).
const AUTH: &str = "Basic aHlnaWVuZTpzZWNyZXQ=";

/// The loopback hosts the servers are on (sshd listens on each).
const HOSTS: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// The test server with `backend` (http, 3 peers on hosts 1 to 3, whose
/// connections end over three polls once draining) and `tcp` (stream, 2
/// peers on hosts 3 and 4). A target is a host: four of them, the third
/// in both upstreams.
async fn server() -> FakeNginx {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| {
        s.auth = Some(AUTH.into());
        // Each status poll runs a passing health check round, so a server
        // put back shows a fresh healthy check.
        s.auto_check = Some(true);
        for (kind, name) in [(Kind::Http, "backend"), (Kind::Stream, "tcp")] {
            for p in &mut s.upstream_mut(kind, name).peers {
                let (host, port) = match kind {
                    Kind::Http => (HOSTS[usize::try_from(p.id).expect("small")], 8080),
                    Kind::Stream => (HOSTS[usize::try_from(p.id).expect("small") + 2], 5432),
                };
                p.server = format!("{host}:{port}");
                if kind == Kind::Http {
                    p.active = 3;
                    p.active_script = [2, 1, 0].into();
                }
            }
        }
    });
    srv
}

/// `nginx.toml` pointed at the test server, its `backend` and `tcp`.
fn config(srv: &FakeNginx) -> toml::Table {
    let mut t = example_config("nginx.toml");
    replace(&mut t, "balancer.nginx", "api_urls", vec![srv.url()]);
    replace(&mut t, "balancer.nginx", "upstreams", vec!["backend"]);
    replace(&mut t, "balancer.nginx", "stream_upstreams", vec!["tcp"]);
    replace(&mut t, "balancer.nginx", "timeout", "5s");
    t
}

/// One per host, named after the first upstream with a server there.
const IDS: [&str; 4] = ["backend/0", "backend/1", "backend/2", "tcp/1"];

/// validate, plan, run --json, status, and what the server saw.
fn validate_plan_run(srv: &FakeNginx, cfg: &Path, state: &Path) {
    let password = section(&mut config(srv), "balancer.nginx")["password_env"]
        .as_str()
        .expect("password_env")
        .to_owned();

    // Without the password the file names: a configuration error, and
    // nothing sent to the server.
    let mut c = hygiene(cfg, state);
    c.arg("run");
    let (code, _, err) = out(c);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&password), "names the variable: {err}");
    assert!(srv.patches().is_empty());

    let mut c = hygiene(cfg, state);
    c.arg("validate").env(&password, "secret");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    for id in IDS {
        assert!(stdout.contains(id), "validate lists {id}: {stdout}");
    }
    // No probe: nginx routes to a server before a fresh check, and
    // validate says so with what covers it.
    assert!(
        stdout.contains("problem: NGINX Plus sends requests to a server as soon as it is enabled")
            && stdout.contains("Add a [probe]"),
        "{stdout}"
    );

    // The file's batch_size 25% and min_healthy 75% of 4: one at a time.
    let mut c = hygiene(cfg, state);
    c.args(["plan", "--json"]).env(&password, "secret");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect("plan json");
    assert_eq!(plan["required_healthy"], 3, "{plan}");
    assert_eq!(plan["batches"].as_array().map(Vec::len), Some(4), "{plan}");
    assert!(srv.patches().is_empty(), "plan changes nothing");

    let mut c = hygiene(cfg, state);
    c.args(["run", "--json", "--poll-interval", "20ms"])
        .env(&password, "secret");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    let lines = json_lines(&stdout);
    let (report, events) = lines.split_last().expect("lines");
    assert_eq!(report["type"], "report", "{stdout}");
    assert_eq!(report["outcome"]["kind"], "completed", "{report}");
    assert_eq!(report["batches"], 4, "{report}");
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 4, "{report}");
    for t in targets {
        assert_eq!(t["result"]["kind"], "done", "{report}");
    }
    assert!(
        events
            .iter()
            .any(|l| l["event"] == "phase" && l["stage"] == "draining"),
        "{stdout}"
    );

    // Every server went through the API and is back in service.
    for (kind, name, n, base) in [
        (Kind::Http, "backend", 3, "/api/9/http/upstreams/backend"),
        (Kind::Stream, "tcp", 2, "/api/9/stream/upstreams/tcp"),
    ] {
        let patched: Vec<String> = srv.patches().into_iter().map(|l| l.path).collect();
        for i in 0..n {
            let p = srv.peer(kind, name, i);
            assert!(!p.drain && !p.down, "{name}/{i} not back: {p:?}");
            assert_eq!(p.state(kind), "up", "{name}/{i}: {p:?}");
            let path = format!("{base}/servers/{i}");
            assert!(patched.contains(&path), "no PATCH of {path}: {patched:?}");
        }
    }

    let mut c = hygiene(cfg, state);
    c.arg("status");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("nothing is out of rotation"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_nginx_plus_with_the_local_executor() {
    let srv = server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("maintained");
    let mut t = config(&srv);
    // The example's ssh executor, swapped for a local command that notes
    // each target it is run for.
    t.remove("executor");
    let mut local = toml::Table::new();
    local.insert("program".into(), "/bin/sh".into());
    local.insert(
        "args".into(),
        vec![
            "-c".to_owned(),
            r#"echo "$HYGIENE_TARGET_ID $HYGIENE_TARGET_ADDRESS" >> "$0""#.to_owned(),
            log.display().to_string(),
        ]
        .into(),
    );
    let mut executor = toml::Table::new();
    executor.insert("local".into(), local.into());
    t.insert("executor".into(), executor.into());
    let cfg = write(dir.path(), &t);
    let state = dir.path().join("state");

    let (srv, cfg2, state2) = (srv, cfg.clone(), state.clone());
    let srv = tokio::task::spawn_blocking(move || {
        validate_plan_run(&srv, &cfg2, &state2);
        srv
    })
    .await
    .expect("test body");
    drop(srv);

    let maintained = std::fs::read_to_string(&log).expect("the command ran");
    let mut seen: Vec<&str> = maintained.lines().collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            "backend/0 127.0.0.1",
            "backend/1 127.0.0.2",
            "backend/2 127.0.0.3",
            "tcp/1 127.0.0.4"
        ],
        "once per target: {maintained}"
    );
    assert!(
        state.join("shop.jsonl").exists(),
        "the file's pool names the journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_nginx_plus_over_ssh() {
    let bin = examples::sshd::sshd_bin();
    if !integration_available(
        "sshd",
        bin.is_some(),
        "apt-get install -y openssh-server, or set HYGIENE_SSHD_BIN",
    ) {
        return;
    }
    let sshd = examples::sshd::Sshd::start_on(&bin.expect("sshd"), &HOSTS).expect("sshd");
    let srv = server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("maintained");
    let mut t = config(&srv);
    // The example's own [executor.ssh], pointed at the loopback sshd (as
    // the test's user, who owns its keys).
    let ssh = section(&mut t, "executor.ssh");
    assert!(ssh.remove("user").is_some(), "the example sets a user");
    replace(
        &mut t,
        "executor.ssh",
        "command",
        format!("echo ran >> {}", log.display()),
    );
    replace(&mut t, "executor.ssh", "port", i64::from(sshd.port()));
    replace(
        &mut t,
        "executor.ssh",
        "identity_file",
        sshd.client_key().display().to_string(),
    );
    replace(
        &mut t,
        "executor.ssh",
        "known_hosts_file",
        sshd.known_hosts().display().to_string(),
    );
    replace(&mut t, "executor.ssh", "timeout", "30s");
    let cfg = write(dir.path(), &t);
    let state = dir.path().join("state");

    let srv = tokio::task::spawn_blocking(move || {
        validate_plan_run(&srv, &cfg, &state);
        srv
    })
    .await
    .expect("test body");
    drop(srv);
    let maintained = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        maintained.lines().count(),
        4,
        "once per target over ssh: {maintained}{}",
        sshd.log()
    );
}
