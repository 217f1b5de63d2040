//! The `hygiene` binary end to end: configuration errors (each one exit
//! code 3, naming file:line and the key, changing nothing), and against a
//! real HAProxy: validate, plan, run --json, status after a killed run,
//! resume, a locked journal; completions and the man page.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{have_haproxy, hygiene, out};
use examples::haproxy::haproxy_bin;
use examples::scenario::{Scenario, ScenarioConfig};
use hygiene_core::conformance::integration_available;
use hygiene_core::journal::{FileJournal, Op, Record};
use hygiene_core::{LoadBalancer as _, TargetState};

const CONFIG: i32 = 3;
const UNREACHABLE: i32 = 4;
const JOURNAL: i32 = 5;

const GOOD_TAIL: &str = "[executor.local]\nprogram = \"/bin/true\"\n";

/// Writes `text` as `hygiene.toml` and runs `validate --offline` on it.
fn config_error(text: &str) -> (i32, String, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hygiene.toml");
    std::fs::write(&path, text).expect("write");
    let state = dir.path().join("state");
    let mut results = Vec::new();
    for cmd in [&["validate", "--offline"][..], &["run"][..], &["plan"][..]] {
        let mut c = hygiene(&path, &state);
        c.args(cmd);
        let (code, _, err) = out(c);
        results.push((code, err));
    }
    assert!(
        !state.exists(),
        "a bad configuration changed something: {state:?} was created"
    );
    let (code, err) = results.remove(0);
    for (c, e) in results {
        assert_eq!(c, code, "run / plan agree with validate: {e}");
    }
    // Keep the directory's name for messages only.
    (code, err, path)
}

fn assert_config_error(text: &str, line: usize, key: &str) {
    let (code, err, path) = config_error(text);
    assert_eq!(code, CONFIG, "exit code of a configuration error: {err}");
    let place = format!("{}:{line}:", path.display());
    assert!(err.contains(&place), "names {place}: {err}");
    assert!(err.contains(key), "names the key {key}: {err}");
}

#[test]
fn unknown_key() {
    assert_config_error(
        &format!("[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\"]\n{GOOD_TAIL}[rollout]\nbacth_size = 2\n"),
        7,
        "rollout.bacth_size",
    );
    assert_config_error(
        &format!("[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackend = [\"web\"]\n{GOOD_TAIL}"),
        3,
        "balancer.haproxy.backend",
    );
}

#[test]
fn wrong_type() {
    assert_config_error(
        &format!("[balancer.haproxy]\nnodes = \"/x.sock\"\nbackends = [\"web\"]\n{GOOD_TAIL}"),
        2,
        "balancer.haproxy.nodes",
    );
    assert_config_error(
        &format!("[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\"]\n{GOOD_TAIL}[rollout]\ncanary = \"yes\"\n"),
        7,
        "rollout.canary",
    );
}

#[test]
fn bad_duration_and_percent() {
    let (code, err, _) = config_error(&format!(
        "[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\"]\n{GOOD_TAIL}[rollout]\ndrain_timeout = \"soon\"\n"
    ));
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains(":7:") && err.contains("rollout.drain_timeout") && err.contains("\"90s\""),
        "{err}"
    );
    let (code, err, _) = config_error(&format!(
        "[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\"]\n{GOOD_TAIL}[rollout]\nbatch_size = \"150%\"\n"
    ));
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains(":7:") && err.contains("rollout.batch_size") && err.contains("100%"),
        "{err}"
    );
}

#[test]
fn two_balancers() {
    assert_config_error(
        &format!("[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\"]\n\n[balancer.nginx]\napi_urls = [\"http://127.0.0.1:1/api\"]\nupstreams = [\"web\"]\n{GOOD_TAIL}"),
        5,
        "balancer.nginx",
    );
}

#[test]
fn missing_executor() {
    let (code, err, path) =
        config_error("[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\"]\n");
    assert_eq!(code, CONFIG, "{err}");
    assert!(err.contains(&format!("{}:1:1", path.display())), "{err}");
    assert!(
        err.contains("executor") && err.contains("[executor.local]"),
        "{err}"
    );
}

#[test]
fn missing_secret_is_named() {
    let (code, err, _) = config_error(&format!(
        "[balancer.nginx]\napi_urls = [\"http://127.0.0.1:1/api\"]\nupstreams = [\"web\"]\nuser = \"ops\"\npassword_env = \"HYGIENE_TEST_UNSET_PASSWORD_VAR\"\n{GOOD_TAIL}"
    ));
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains(":5:")
            && err.contains("balancer.nginx.password_env")
            && err.contains("HYGIENE_TEST_UNSET_PASSWORD_VAR"),
        "{err}"
    );
}

/// "Two pools with one name": a file configures one balancer, so a pool
/// cannot be named twice in it; what can be is one of its members: the
/// same backend twice, two nodes on one socket, an upstream name in both
/// http and stream (target ids are `<upstream>/…`).
#[test]
fn a_backend_node_or_upstream_named_twice() {
    assert_config_error(
        &format!("[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\", \"api\", \"web\"]\n{GOOD_TAIL}"),
        3,
        "balancer.haproxy.backends",
    );
    let (_, err, _) = config_error(&format!(
        "[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\", \"web\"]\n{GOOD_TAIL}"
    ));
    assert!(err.contains("\"web\" is listed twice"), "names it: {err}");
    assert_config_error(
        &format!("[balancer.haproxy]\nnodes = [\"/x.sock\", \"/x.sock\"]\nbackends = [\"web\"]\n{GOOD_TAIL}"),
        2,
        "balancer.haproxy.nodes",
    );
    let (code, err, _) = config_error(&format!(
        "[balancer.nginx]\napi_urls = [\"http://127.0.0.1:1/api\"]\nupstreams = [\"web\"]\nstream_upstreams = [\"web\"]\n{GOOD_TAIL}"
    ));
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains("balancer.nginx") && err.contains("\"web\" is given twice"),
        "{err}"
    );
}

#[test]
fn master_sockets_must_match_the_nodes() {
    assert_config_error(
        &format!("[balancer.haproxy]\nnodes = [\"/a.sock\", \"/b.sock\"]\nbackends = [\"web\"]\nmaster_sockets = [\"/m.sock\"]\n{GOOD_TAIL}"),
        4,
        "balancer.haproxy.master_sockets",
    );
    assert_config_error(
        &format!("[balancer.haproxy]\nnodes = [\"/a.sock\"]\nbackends = [\"web\"]\nmaster_sockets = [\"no-such-host-x:\"]\n{GOOD_TAIL}"),
        4,
        "balancer.haproxy.master_sockets",
    );
}

#[test]
fn missing_secret_file_is_named() {
    let (code, err, _) = config_error(&format!(
        "[balancer.nginx]\napi_urls = [\"http://127.0.0.1:1/api\"]\nupstreams = [\"web\"]\nuser = \"ops\"\npassword_file = \"/nonexistent/hygiene-test.password\"\n{GOOD_TAIL}"
    ));
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains(":5:")
            && err.contains("balancer.nginx.password_file")
            && err.contains("/nonexistent/hygiene-test.password"),
        "{err}"
    );
    // A user with neither: the error says where a password may come from.
    let (code, err, _) = config_error(&format!(
        "[balancer.nginx]\napi_urls = [\"http://127.0.0.1:1/api\"]\nupstreams = [\"web\"]\nuser = \"ops\"\n{GOOD_TAIL}"
    ));
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains("password_env") && err.contains("password_file"),
        "{err}"
    );
}

#[test]
fn a_flag_override_is_validated_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hygiene.toml");
    std::fs::write(
        &path,
        format!("[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\"]\n{GOOD_TAIL}"),
    )
    .expect("write");
    let mut c = hygiene(&path, &dir.path().join("state"));
    c.args(["validate", "--offline"])
        .env("HYGIENE_BATCH_SIZE", "0");
    let (code, _, err) = out(c);
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains("HYGIENE_BATCH_SIZE") && err.contains("batch_size"),
        "the variable, not the flag: {err}"
    );
}

#[test]
fn a_socket_that_is_not_there_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hygiene.toml");
    let sock = dir.path().join("nothing.sock");
    std::fs::write(
        &path,
        format!(
            "[balancer.haproxy]\nnodes = [{:?}]\nbackends = [\"web\"]\n{GOOD_TAIL}",
            sock.display().to_string()
        ),
    )
    .expect("write");
    let mut c = hygiene(&path, &dir.path().join("state"));
    c.args(["validate"]);
    let (code, _, err) = out(c);
    assert_eq!(code, UNREACHABLE, "{err}");
    assert!(err.contains("nothing.sock"), "names the socket: {err}");
    for cmd in ["run", "plan"] {
        let mut c = hygiene(&path, &dir.path().join("state"));
        c.arg(cmd);
        let (code, _, err) = out(c);
        assert_eq!(code, UNREACHABLE, "{cmd}: {err}");
        assert!(
            err.contains("nothing.sock"),
            "{cmd} names the socket: {err}"
        );
    }
    // The run took the journal's lock, then found nothing to reach: no run
    // is recorded, so nothing blocks the next one.
    let journal = dir.path().join("state").join("web.jsonl");
    assert!(
        FileJournal::read(&journal).unwrap_or_default().is_empty(),
        "an unreachable balancer records no run"
    );
    let mut c = hygiene(&path, &dir.path().join("state"));
    c.arg("status");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("no run recorded"), "{stdout}");
}

#[test]
fn completions_and_man() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = hygiene(&dir.path().join("none.toml"), dir.path());
    c.args(["completions", "bash"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("_hygiene") && stdout.contains("resume"),
        "{stdout}"
    );
    let mut c = hygiene(&dir.path().join("none.toml"), dir.path());
    c.arg("man");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains(".TH") && stdout.contains("Exit codes"),
        "{stdout}"
    );
    let mut c = hygiene(&dir.path().join("none.toml"), dir.path());
    c.arg("--help");
    let (_, stdout, _) = out(c);
    assert!(
        stdout.contains("Exit codes") && stdout.contains("130"),
        "{stdout}"
    );
}

// ------------------------------------------------------------- HAProxy

fn haproxy_config(dir: &Path, scn: &Scenario, patch_ms: u64) -> PathBuf {
    haproxy_config_with(dir, scn, patch_ms, "")
}

/// `extra_args` go after the patch's own (`, "--fail-on", "s2"`).
fn haproxy_config_with(dir: &Path, scn: &Scenario, patch_ms: u64, extra_args: &str) -> PathBuf {
    let path = dir.join("hygiene.toml");
    let text = format!(
        r#"# what the operator writes
pool = "web"

[balancer.haproxy]
nodes = [{sock:?}]
backends = ["web"]

[executor.local]
program = {exe:?}
args = ["patch", "--control", "{control}", "--patch-ms", "{patch_ms}"{extra_args}]
timeout = "30s"

[rollout]
batch_size = 1
poll_interval = "50ms"
drain_timeout = "20s"
health_timeout = "20s"
"#,
        sock = scn.haproxy.socket().display().to_string(),
        exe = common::demo_bin().display(),
        control = scn.control.addr(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// `Scenario::start`, tried again when a port it probed was taken before
/// it bound it again (HelloService picks a free port, then binds it: with
/// tests in parallel another socket may get it first).
async fn start_scenario(cfg: ScenarioConfig) -> Scenario {
    let mut tries = 0;
    loop {
        match Scenario::start(cfg).await {
            Ok(s) => return s,
            Err(e) if tries < 3 && e.to_string().contains("in use") => {
                eprintln!("scenario start: {e}; trying again");
                tries += 1;
            }
            Err(e) => panic!("scenario: {e}"),
        }
    }
}

async fn all_in_service(scn: &Scenario) {
    let listed = scn.balancer.list().await.expect("list");
    for l in &listed {
        assert_eq!(l.status.state, TargetState::InService, "{}", l.target.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_plan_run_status_on_haproxy() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = haproxy_config(dir.path(), &scn, 200);

    let mut c = hygiene(&cfg, &state);
    c.arg("validate");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    for s in ["web/s1", "web/s2", "web/s3", "counts connections yes"] {
        assert!(stdout.contains(s), "validate lists {s}: {stdout}");
    }

    let mut c = hygiene(&cfg, &state);
    c.args(["plan", "--batch-size", "2", "--maintenance-time", "1s"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("1. web/s1, web/s2") && stdout.contains("2. web/s3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("max_failures = 0") && stdout.contains("at most"),
        "{stdout}"
    );

    let mut c = hygiene(&cfg, &state);
    c.args(["plan", "--json", "--min-healthy", "2", "--batch-size", "2"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect("plan json");
    assert_eq!(plan["type"], "plan");
    assert_eq!(plan["required_healthy"], 2);
    assert_eq!(
        plan["batches"].as_array().map(Vec::len),
        Some(3),
        "min_healthy 2 of 3 shrinks batches of 2 to 1: {plan}"
    );

    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{stdout}");
    let (last, events) = lines.split_last().expect("lines");
    assert!(events.iter().all(|l| l["type"] == "event"), "{stdout}");
    assert!(
        events
            .iter()
            .any(|l| l["event"] == "phase" && l["stage"] == "draining"),
        "{stdout}"
    );
    assert_eq!(last["type"], "report", "{stdout}");
    assert_eq!(last["outcome"]["kind"], "completed", "{last}");
    assert_eq!(last["targets"].as_array().map(Vec::len), Some(3));
    all_in_service(&scn).await;
    assert!(
        state.join("web.jsonl").exists(),
        "the journal is in the state dir"
    );

    let mut c = hygiene(&cfg, &state);
    c.arg("status");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("finished") && stdout.contains("nothing is out of rotation"),
        "{stdout}"
    );
    scn.stop().await;
}

fn wait_for(journal: &Path, op: Op, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = FileJournal::read(journal).unwrap_or_default();
        if records
            .iter()
            .any(|r| matches!(r, Record::Intent { op: o, .. } if *o == op))
        {
            return;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended early"
        );
        assert!(Instant::now() < deadline, "{op:?} never journaled");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_run_locked_status_resume_on_haproxy() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig {
        servers: 2,
        ..ScenarioConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = haproxy_config(dir.path(), &scn, 1500);
    let journal = state.join("web.jsonl");

    let mut c = hygiene(&cfg, &state);
    c.arg("run").stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn run");
    wait_for(&journal, Op::Execute, &mut child);

    // While it runs: a second run is refused (locked), status says running.
    let mut c = hygiene(&cfg, &state);
    c.arg("run");
    let (code, _, err) = out(c);
    assert_eq!(code, JOURNAL, "{err}");
    assert!(err.contains("in use by run"), "names the holder: {err}");
    let mut c = hygiene(&cfg, &state);
    c.arg("status");
    let (code, stdout, _) = out(c);
    assert_eq!(code, JOURNAL, "{stdout}");
    assert!(stdout.contains("RUNNING"), "{stdout}");

    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    // Dead: status names the server it took out, and the way back.
    let mut c = hygiene(&cfg, &state);
    c.arg("status");
    let (code, stdout, err) = out(c);
    assert_eq!(code, JOURNAL, "{stdout}{err}");
    assert!(stdout.contains("UNFINISHED"), "{stdout}");
    assert!(
        stdout.contains("out of rotation because of this run: web/s1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("hygiene resume -c") && stdout.contains("set server web/s1 state ready"),
        "{stdout}"
    );
    let mut c = hygiene(&cfg, &state);
    c.args(["status", "--live"]);
    let (_, stdout, _) = out(c);
    assert!(
        stdout.contains("balancer now: draining")
            || stdout.contains("balancer now: out of service"),
        "--live reads the balancer: {stdout}"
    );
    let mut c = hygiene(&cfg, &state);
    c.args(["status", "--json"]);
    let (_, stdout, _) = out(c);
    let st: serde_json::Value = serde_json::from_str(stdout.trim()).expect("status json");
    assert_eq!(st["state"], "unfinished");
    assert_eq!(st["targets"][0]["out"], true, "{st}");
    assert_eq!(st["targets"][1]["out"], false, "{st}");

    // A new run is refused over the unfinished journal.
    let mut c = hygiene(&cfg, &state);
    c.arg("run");
    let (code, _, err) = out(c);
    assert_eq!(code, JOURNAL, "{err}");
    assert!(err.contains("resume"), "{err}");

    // Resume finishes it: every server back in service.
    let mut c = hygiene(&cfg, &state);
    c.args(["resume", "--json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a line")).expect("report");
    assert_eq!(last["type"], "report");
    all_in_service(&scn).await;
    let mut c = hygiene(&cfg, &state);
    c.arg("status");
    let (code, stdout, _) = out(c);
    assert_eq!(code, 0, "{stdout}");
    scn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_target_is_kept_out_or_fails_the_run_on_haproxy() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = haproxy_config_with(dir.path(), &scn, 100, r#", "--fail-on", "s2""#);

    // Default on_failure = keep_out: s2 stays out, named, exit 11.
    let mut c = hygiene(&cfg, &state);
    c.arg("run");
    let (code, stdout, err) = out(c);
    eprintln!("{stdout}{err}");
    assert_eq!(code, 11, "{stdout}{err}");
    assert!(
        stdout.contains("web/s2") && stdout.contains("KEPT OUT OF ROTATION"),
        "{stdout}"
    );
    assert!(
        stdout.contains("set server web/s2 state ready"),
        "the way back: {stdout}"
    );
    assert!(stdout.contains("ABORTED"), "max_failures = 0: {stdout}");
    let mut c = hygiene(&cfg, &state);
    c.arg("status");
    let (code, stdout, _) = out(c);
    eprintln!("{stdout}");
    assert_eq!(code, 11, "{stdout}");
    assert!(
        stdout.contains("out of rotation because of this run: web/s2"),
        "{stdout}"
    );
    let out_now = scn.out_of_rotation().await.expect("haproxy");
    assert_eq!(out_now.len(), 1, "{out_now:?}");

    // Put it back by hand as an operator would, then a run that puts failed
    // targets back: the run failed, nothing kept out: exit 10.
    scn.services[1].resume().expect("service back");
    scn.balancer.enable(&out_now).await.expect("enable by hand");
    scn.wait_all_healthy(Duration::from_secs(15))
        .await
        .expect("healthy");
    let mut c = hygiene(&cfg, &state);
    c.args([
        "run",
        "--on-failure",
        "restore",
        "--only",
        "web/s2",
        "--health-timeout",
        "1s",
    ]);
    let (code, stdout, err) = out(c);
    eprintln!("{stdout}{err}");
    assert_eq!(code, 10, "{stdout}{err}");
    assert!(scn.out_of_rotation().await.expect("haproxy").is_empty());
    scn.stop().await;
}

#[test]
fn the_example_configs_are_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    for name in ["haproxy.toml", "nginx.toml", "elbv2.toml"] {
        let mut c = hygiene(&configs.join(name), &dir.path().join("state"));
        c.args(["validate", "--offline"])
            .env("HYGIENE_NGINX_PASSWORD", "not-a-real-one");
        let (code, stdout, err) = out(c);
        assert_eq!(code, 0, "{name}: {stdout}{err}");
        assert!(stdout.contains("valid"), "{name}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_puts_everything_back_on_haproxy() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = haproxy_config(dir.path(), &scn, 1000);
    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn run");
    wait_for(&state.join("web.jsonl"), Op::Execute, &mut child);
    let sent = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let o = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stdout}{stderr}");
    assert!(
        stderr.contains("interrupted: nothing new starts"),
        "{stderr}"
    );
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a line")).expect("report");
    assert_eq!(last["outcome"]["kind"], "cancelled", "{last}");
    assert_eq!(
        last["targets"][0]["result"]["kind"], "done",
        "the running maintenance finished: {last}"
    );
    all_in_service(&scn).await;
    scn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_over_ssh_on_haproxy() {
    if !have_haproxy() {
        return;
    }
    let bin = examples::sshd::sshd_bin();
    if !integration_available(
        "sshd",
        bin.is_some(),
        "apt-get install -y openssh-server, or set HYGIENE_SSHD_BIN",
    ) {
        return;
    }
    let sshd = examples::sshd::Sshd::start(&bin.expect("sshd")).expect("sshd");
    let scn = start_scenario(ScenarioConfig {
        servers: 2,
        ..ScenarioConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = dir.path().join("hygiene.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"pool = "web"

[balancer.haproxy]
nodes = [{sock:?}]
backends = ["web"]

[executor.ssh]
# Each target's address is 127.0.0.1: the remote command reaches the
# demo's control channel from there.
command = "{exe} patch --control {control} --patch-ms 200"
port = {port}
identity_file = {key:?}
known_hosts_file = {known:?}
timeout = "30s"
connect_timeout = "5s"
options = {{ ControlPersist = "3" }}

[rollout]
poll_interval = "50ms"
health_timeout = "20s"
"#,
            sock = scn.haproxy.socket().display().to_string(),
            exe = common::demo_bin().display(),
            control = scn.control.addr(),
            port = sshd.port(),
            key = sshd.client_key().display().to_string(),
            known = sshd.known_hosts().display().to_string(),
        ),
    )
    .expect("config");
    let mut c = hygiene(&cfg, &state);
    c.arg("validate");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}{}", sshd.log());
    assert!(
        stdout.contains("executor ready"),
        "ssh preflight reached the host: {stdout}"
    );
    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}{}", sshd.log());
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a line")).expect("report");
    assert_eq!(last["outcome"]["kind"], "completed", "{last}");
    assert!(
        last["targets"]
            .as_array()
            .is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["result"]["kind"] == "done")),
        "{last}"
    );
    all_in_service(&scn).await;
    scn.stop().await;
}

#[test]
fn elbv2_pools_from_instances_are_configured_without_an_arn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config/elbv2.toml"),
    )
    .expect("example config");
    let arn_line = example
        .lines()
        .find(|l| l.starts_with("load_balancer = "))
        .expect("the example names a load balancer");
    let cases = [
        (r#"tags = { "Patch Group" = "web" }"#, 0),
        (
            r#"tags = { "Patch Group" = ["web", "api"], Env = "prod" }"#,
            0,
        ),
        (r#"instances = ["i-0abc1234def567890"]"#, 0),
        (r#"auto_scaling_group = "web-asg""#, 0),
        // Two ways of naming the pool, or a malformed id: refused.
        (
            &format!("{arn_line}\ninstances = [\"i-0abc1234def567890\"]"),
            2,
        ),
        (
            r#"instances = ["i-0abc"]
auto_scaling_group = "web-asg""#,
            2,
        ),
        (r#"instances = ["web-1"]"#, 2),
    ];
    for (k, (pool, want)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("elbv2-{k}.toml"));
        std::fs::write(&cfg, example.replace(arn_line, pool)).expect("write config");
        let mut c = hygiene(&cfg, &dir.path().join("state"));
        c.args(["validate", "--offline"]);
        let (code, stdout, err) = out(c);
        if *want == 0 {
            assert_eq!(code, 0, "{pool}: {stdout}{err}");
        } else {
            assert_ne!(code, 0, "{pool}: {stdout}{err}");
            assert!(
                format!("{stdout}{err}").contains("balancer.elbv2"),
                "{pool}: the error names the section: {stdout}{err}"
            );
        }
    }
}

// Any setting of the file can be overridden with `--set key.path=value`
// (or HYGIENE_SET): checked like the file itself, secrets excepted.
#[test]
fn settings_are_overridden_with_set_and_checked_like_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hygiene.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &path,
        format!("[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\"]\n[rollout]\nbatch_size = \"150%\"\n{GOOD_TAIL}"),
    )
    .expect("write");
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = hygiene(&path, &state);
        c.args(["validate", "--offline"]).args(args);
        if let Some(v) = env {
            c.env("HYGIENE_SET", v);
        }
        out(c)
    };
    let (code, _, err) = run(&[], None);
    assert_eq!(code, CONFIG, "the file alone is refused: {err}");
    let (code, _, err) = run(&["--set", "rollout.batch_size=2"], None);
    assert_eq!(code, 0, "fixed by --set: {err}");
    let (code, _, err) = run(
        &[],
        Some("rollout.batch_size=\"50%\";balancer.haproxy.backends=[\"api\"]"),
    );
    assert_eq!(code, 0, "fixed by HYGIENE_SET: {err}");
    // A key the schema does not know is refused, and named.
    let (code, _, err) = run(
        &[
            "--set",
            "rollout.batch_size=2",
            "--set",
            "balancer.haproxy.password=hunter2",
        ],
        None,
    );
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains("--set: balancer.haproxy.password") && !err.contains("hunter2"),
        "{err}"
    );
    let (code, _, err) = run(&["--set", "rollout"], None);
    assert_eq!(code, CONFIG, "{err}");
    assert!(err.contains("--set") && err.contains("KEY=VALUE"), "{err}");
    assert!(!state.exists(), "nothing written");
}

/// An HAProxy whose servers `s1`, `s2` of backend `web` are also servers
/// `api-s1`, `api-s2` of backend `api` (same addresses), with an admin
/// and a user-level socket. No health checks: the servers only need to be
/// listed. Killed when dropped.
struct SharedHosts {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl SharedHosts {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = dir.path().join("admin.sock");
        let user = dir.path().join("user.sock");
        let cfg = format!(
            "global\n  stats socket {} level admin\n  stats socket {} level user\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
             backend web\n  server s1 127.0.0.1:1\n  server s2 127.0.0.1:2\n\
             backend api\n  server api-s1 127.0.0.1:1 agent-check agent-port 1 agent-inter 1h\n  server api-s2 127.0.0.1:2\n",
            admin.display(),
            user.display()
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let bin = haproxy_bin().expect("haproxy");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(admin.exists() && user.exists()) {
            assert!(
                Instant::now() < deadline,
                "haproxy did not open its sockets"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir }
    }

    fn sock(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The `show servers state` line of `backend/server`: its admin state.
    fn admin_state(&self, backend: &str, server: &str) -> String {
        use std::io::{Read, Write};
        let mut s =
            std::os::unix::net::UnixStream::connect(self.sock("admin.sock")).expect("connect");
        s.write_all(format!("show servers state {backend}\n").as_bytes())
            .expect("send");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read");
        let line = reply
            .lines()
            .find(|l| l.split(' ').nth(3) == Some(server))
            .unwrap_or_else(|| panic!("{backend}/{server} in {reply}"));
        line.split(' ').nth(6).expect("srv_admin_state").to_owned()
    }
}

impl Drop for SharedHosts {
    fn drop(&mut self) {
        let _kill = self.child.kill();
        let _wait = self.child.wait();
    }
}

#[test]
fn validate_names_backends_outside_the_pool_and_a_socket_below_admin() {
    if !have_haproxy() {
        return;
    }
    let h = SharedHosts::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let write = |nodes: &[&str], hosts: &str| {
        let path = dir.path().join("hygiene.toml");
        let nodes: Vec<String> = nodes.iter().map(|n| format!("{:?}", h.sock(n))).collect();
        std::fs::write(
            &path,
            format!(
                "pool = \"web\"\n[balancer.haproxy]\nnodes = [{}]\nbackends = [\"web\"]\n{hosts}\n{GOOD_TAIL}",
                nodes.join(", ")
            ),
        )
        .expect("write");
        path
    };

    // Default: drained from api too, and said so.
    let cfg = write(&["admin.sock"], "");
    let mut c = hygiene(&cfg, &state);
    c.arg("validate");
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("web/s1 also serves api/api-s1, outside the pool: it is drained there too"),
        "{stdout}"
    );
    assert!(stdout.contains("web/s2 also serves api/api-s2"), "{stdout}");
    // An agent check can end a drain: named, with what hygiene does.
    assert!(
        stdout.contains("agents api/api-s1")
            && stdout.contains("web/s1: api/api-s1 run(s) an agent check")
            && stdout.contains("disable agent"),
        "{stdout}"
    );
    assert!(!stdout.contains("web/s2: api/api-s2 run(s)"), "{stdout}");

    // Pool backends only: api keeps sending it requests; the way to change it.
    let cfg = write(&["admin.sock"], "hosts = \"pool_backends\"");
    let mut c = hygiene(&cfg, &state);
    c.args(["validate", "--json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    let problems: Vec<&str> = v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("web/s1")
            && p.contains("api/api-s1")
            && p.contains("keep sending it requests")
            && p.contains("hosts = \"all_backends\"")),
        "{problems:?}"
    );

    // A second node at level user: validate says which, by name, exit 4.
    let cfg = write(&["admin.sock", "user.sock"], "");
    let mut c = hygiene(&cfg, &state);
    c.arg("validate");
    let (code, stdout, err) = out(c);
    assert_eq!(code, UNREACHABLE, "{stdout}{err}");
    assert!(
        stdout.contains("user.sock") && stdout.contains("level user"),
        "{stdout}"
    );
    // A run refuses before anything changes, and records no run.
    let mut c = hygiene(&cfg, &state);
    c.arg("run");
    let (code, stdout, err) = out(c);
    assert_eq!(code, UNREACHABLE, "{stdout}{err}");
    assert!(
        err.contains("user.sock") && err.contains("level admin"),
        "{err}"
    );
    for (b, s) in [("web", "s1"), ("api", "api-s1")] {
        assert_eq!(h.admin_state(b, s), "0", "{b}/{s} untouched");
    }
    assert!(FileJournal::read(&state.join("web.jsonl"))
        .unwrap_or_default()
        .is_empty());
}
