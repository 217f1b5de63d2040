//! The `hygiene` binary, round 2 (issue 22): nothing forgotten between
//! runs, a run that cannot do its job refuses before it changes anything,
//! exit codes that say what happened, output a person can use.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{have_haproxy, hygiene, out};
use examples::scenario::{Scenario, ScenarioConfig};
use hygiene_core::journal::{FileJournal, Op, Record};
use hygiene_core::{LoadBalancer as _, TargetState};

const CONFIG: i32 = 3;
const UNREACHABLE: i32 = 4;
const JOURNAL: i32 = 5;
const BLOCKED: i32 = 6;
const KEPT_OUT: i32 = 11;

fn run_args(config: &Path, state: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = hygiene(config, state);
    c.args(args);
    out(c)
}

const OFFLINE: &str = "[balancer.haproxy]\nnodes = [\"/x.sock\"]\nbackends = [\"web\"]\n[executor.local]\nprogram = \"/bin/true\"\n";

fn offline_config(extra: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hygiene.toml");
    std::fs::write(&path, format!("{OFFLINE}{extra}")).expect("write");
    let state = dir.path().join("state");
    (dir, path, state)
}

// ------------------------------------------------------------- HAProxy

/// `extra_args` go after the patch's own (`, "--fail-on", "s2"`).
fn haproxy_config(
    dir: &Path,
    scn: &Scenario,
    program: &str,
    patch_ms: u64,
    extra_args: &str,
) -> PathBuf {
    let path = dir.join("hygiene.toml");
    let text = format!(
        r#"pool = "web"

[balancer.haproxy]
nodes = [{sock:?}]
backends = ["web"]

[executor.local]
program = {program:?}
args = ["patch", "--control", "{control}", "--patch-ms", "{patch_ms}"{extra_args}]
timeout = "30s"

[rollout]
batch_size = 1
poll_interval = "50ms"
drain_timeout = "20s"
health_timeout = "20s"
"#,
        sock = scn.haproxy.socket().display().to_string(),
        control = scn.control.addr(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn demo() -> String {
    common::demo_bin().display().to_string()
}

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

fn drains_journaled(journal: &Path) -> usize {
    FileJournal::read(journal)
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            matches!(
                r,
                Record::Intent {
                    op: Op::Drain | Op::Disable,
                    ..
                }
            )
        })
        .count()
}

/// Defect 1 (and 10): a maintenance program that is missing or not
/// executable: validate and plan say the run would refuse (exit 6); run
/// refuses before any drain (exit 4), nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_that_cannot_start_is_refused_before_any_drain() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let not_exec = dir.path().join("patch.sh");
    std::fs::write(&not_exec, "#!/bin/sh\nexit 0\n").expect("write");
    for program in [
        "/nonexistent/patch-and-restart",
        not_exec.to_str().expect("utf-8"),
    ] {
        let cfg = haproxy_config(dir.path(), &scn, program, 100, "");
        let (code, stdout, err) = run_args(&cfg, &state, &["validate"]);
        assert_eq!(code, BLOCKED, "validate: {stdout}{err}");
        assert!(stdout.contains(program), "{stdout}");
        let (code, stdout, err) = run_args(&cfg, &state, &["plan"]);
        assert_eq!(code, BLOCKED, "plan: {stdout}{err}");
        assert!(
            stdout.contains("BLOCKER") && stdout.contains(program),
            "{stdout}"
        );
        let (code, stdout, err) = run_args(&cfg, &state, &["run"]);
        assert_eq!(code, UNREACHABLE, "run: {stdout}{err}");
        assert!(
            err.contains(program) && err.contains("nothing was changed"),
            "{err}"
        );
        assert_eq!(drains_journaled(&state.join("web.jsonl")), 0);
        all_in_service(&scn).await;
    }
    // Defect 10: an --only naming nothing, a min_healthy no batch fits.
    let cfg = haproxy_config(dir.path(), &scn, &demo(), 100, "");
    let (code, stdout, err) = run_args(&cfg, &state, &["plan", "--only", "web/s9"]);
    assert_eq!(code, BLOCKED, "{stdout}{err}");
    assert!(stdout.contains("web/s9"), "{stdout}");
    let (code, stdout, err) = run_args(&cfg, &state, &["validate", "--min-healthy", "3"]);
    assert_eq!(code, BLOCKED, "{stdout}{err}");
    let (code, stdout, err) = run_args(&cfg, &state, &["plan", "--json", "--min-healthy", "3"]);
    assert_eq!(code, BLOCKED, "{stdout}{err}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect("plan json");
    assert_eq!(plan["blockers"].as_array().map(Vec::len), Some(1), "{plan}");
    // Defect 11: counts are numbers in plan --json, as in validate.
    assert_eq!(plan["batch_size"], 1, "{plan}");
    assert_eq!(plan["min_healthy"], 3, "{plan}");
    let (code, stdout, err) = run_args(&cfg, &state, &["plan"]);
    assert_eq!(code, 0, "a plan with no blocker: {stdout}{err}");

    // Defect 6: a misspelled backend on run is a configuration error
    // (exit 3), as validate and plan say, even over this pool's journal.
    let (code, stdout, err) = run_args(&cfg, &state, &["run", "--only", "web/s1"]);
    assert_eq!(code, 0, "{stdout}{err}");
    for cmd in ["validate", "plan", "run"] {
        let (code, stdout, err) = run_args(
            &cfg,
            &state,
            &[cmd, "--set", "balancer.haproxy.backends=[\"wbe\"]"],
        );
        assert_eq!(code, CONFIG, "{cmd}: {stdout}{err}");
        assert!(
            err.contains("wbe") && !err.contains("journal"),
            "{cmd}: {err}"
        );
    }
    scn.stop().await;
}

/// Defect 2: what a run kept out stays visible, and comes back only
/// verified, whatever runs in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_out_server_is_not_forgotten_by_the_next_run() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = haproxy_config(dir.path(), &scn, &demo(), 100, r#", "--fail-on", "s2""#);
    let (code, stdout, err) = run_args(&cfg, &state, &["run"]);
    assert_eq!(code, KEPT_OUT, "{stdout}{err}");
    // The failed maintenance's last lines, and where the rest is.
    assert!(
        stdout.contains("| patch:") && stdout.contains("hygiene logs web/s2"),
        "{stdout}"
    );

    // Another run: warned about s2 before it starts.
    let (code, stdout, err) = run_args(&cfg, &state, &["run", "--only", "web/s3"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        err.contains("web/s2 is still out of rotation") && err.contains("hygiene enable"),
        "run warns: {err}"
    );

    // One journal per run: the first was moved aside; history lists both,
    // newest first; logs prints what s2's maintenance said.
    let archived: Vec<_> = std::fs::read_dir(&state)
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("web.jsonl.") && n.ends_with(".done"))
        .collect();
    assert_eq!(archived.len(), 1, "{archived:?}");
    let (code, stdout, err) = run_args(&cfg, &state, &["history", "--json"]);
    assert_eq!(code, 0, "{stdout}{err}");
    let runs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(runs.len(), 2, "{stdout}");
    assert_eq!(runs[0]["targets"], 1, "the newest first: {stdout}");
    assert_eq!(runs[1]["out"], 1, "the first left s2 out: {stdout}");
    assert!(
        archived[0].contains(runs[1]["run_id"].as_str().expect("id")),
        "{archived:?} {stdout}"
    );
    let (code, stdout, _) = run_args(&cfg, &state, &["history"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let (code, stdout, err) = run_args(&cfg, &state, &["logs", "web/s2"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("FAILED") && stdout.contains("-- stderr") && stdout.contains("patch:"),
        "{stdout}"
    );
    let (code, stdout, err) = run_args(&cfg, &state, &["logs", "web/s3", "--all", "--json"]);
    assert_eq!(code, 0, "{stdout}{err}");
    // The first run stopped at s2's failure: s3 was maintained by the
    // second only.
    let s3: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(s3.len(), 1, "{stdout}");
    assert_eq!(s3[0]["run_id"], runs[0]["run_id"], "{stdout}");
    assert_eq!(s3[0]["success"], true, "{stdout}");
    let (code, _, err) = run_args(&cfg, &state, &["logs", "web/nope"]);
    assert_eq!(code, CONFIG, "{err}");
    assert!(err.contains("web/nope") && err.contains("web/s1"), "{err}");
    let (code, stdout, err) = run_args(&cfg, &state, &["plan"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("web/s2 is still out of rotation"),
        "plan warns: {stdout}"
    );

    // status names it, from the files alone and live, and exits 11.
    let (code, stdout, err) = run_args(&cfg, &state, &["status"]);
    assert_eq!(code, KEPT_OUT, "{stdout}{err}");
    assert!(
        stdout.contains("STILL OUT OF ROTATION because of earlier runs: web/s2")
            && stdout.contains("set server web/s2 state ready")
            && stdout.contains("hygiene enable"),
        "{stdout}"
    );
    let (code, stdout, _) = run_args(&cfg, &state, &["status", "--live"]);
    assert_eq!(code, KEPT_OUT, "{stdout}");
    assert!(
        stdout.contains("balancer now: out of service")
            || stdout.contains("balancer now: draining"),
        "{stdout}"
    );
    let (_, stdout, _) = run_args(&cfg, &state, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(stdout.trim()).expect("status json");
    assert_eq!(st["kept_out"][0]["id"], "web/s2", "{st}");

    // resume / restore have no unfinished run, but do not say "nothing".
    for cmd in ["resume", "restore"] {
        let (code, _, err) = run_args(&cfg, &state, &[cmd]);
        assert_eq!(code, JOURNAL, "{err}");
        assert!(
            err.contains("web/s2") && err.contains("hygiene enable"),
            "{cmd}: {err}"
        );
    }

    // enable refuses what hygiene did not keep out, naming what it did.
    let (code, _, err) = run_args(&cfg, &state, &["enable", "web/s3"]);
    assert_eq!(code, CONFIG, "{err}");
    assert!(err.contains("web/s3") && err.contains("web/s2"), "{err}");

    // Still broken: put back, not healthy, taken out again, still listed.
    let (code, stdout, err) = run_args(
        &cfg,
        &state,
        &["enable", "web/s2", "--set", "rollout.health_timeout=\"1s\""],
    );
    assert_eq!(code, KEPT_OUT, "{stdout}{err}");
    assert!(stdout.contains("taken out of rotation again"), "{stdout}");
    assert_eq!(scn.out_of_rotation().await.expect("haproxy").len(), 1);
    let (code, stdout, _) = run_args(&cfg, &state, &["status"]);
    assert_eq!(code, KEPT_OUT, "{stdout}");

    // Fixed: put back and verified healthy; nothing is out any more.
    scn.services[1].resume().expect("service back");
    let (code, stdout, err) = run_args(&cfg, &state, &["restore", "--kept-out"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("web/s2") && stdout.contains("healthy"),
        "{stdout}"
    );
    all_in_service(&scn).await;
    let (code, stdout, err) = run_args(&cfg, &state, &["status"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(!stdout.contains("STILL OUT"), "{stdout}");
    let (code, stdout, err) = run_args(&cfg, &state, &["enable", "--all"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("nothing is kept out"), "{stdout}");
    scn.stop().await;
}

fn sigint(child: &std::process::Child) {
    let sent = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .expect("kill -INT");
    assert!(sent.success());
}

/// Defect 3: a third Ctrl-C leaves with a server still out: exit 11, the
/// names and the way back, not 130 ("every target back").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_ctrl_c_names_what_is_out() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = haproxy_config(dir.path(), &scn, &demo(), 4000, "");
    let mut c = hygiene(&cfg, &state);
    c.arg("run").stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn run");
    wait_for(&state.join("web.jsonl"), Op::Execute, &mut child);
    for _ in 0..3 {
        sigint(&child);
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(KEPT_OUT), "{stderr}");
    assert!(
        stderr.contains("OUT OF ROTATION")
            && stderr.contains("web/s1")
            && stderr.contains("hygiene resume"),
        "{stderr}"
    );
    // Defect 4: resume and restore refuse --only rather than ignore it.
    let (code, _, err) = run_args(&cfg, &state, &["resume", "--only", "web/s1"]);
    assert_eq!(code, CONFIG, "{err}");
    assert!(err.contains("--only"), "{err}");
    let mut c = hygiene(&cfg, &state);
    c.arg("restore").env("HYGIENE_ONLY", "web/s1");
    let (code, _, err) = out(c);
    assert_eq!(code, CONFIG, "{err}");
    assert!(err.contains("HYGIENE_ONLY"), "names the variable: {err}");
    let (code, _, _) = run_args(&cfg, &state, &["status"]);
    assert_eq!(code, JOURNAL, "the run is unfinished, nothing was resumed");

    // Defect 5: a restore that did its job exits 0; the target whose
    // maintenance ran and succeeded is not "put back without maintenance".
    let (code, stdout, err) = run_args(&cfg, &state, &["restore"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(!stdout.contains("without maintenance"), "{stdout}");
    assert!(stdout.contains("maintenance succeeded"), "{stdout}");
    // Defect 11: no Debug durations.
    assert!(
        !stdout
            .split_whitespace()
            .any(|w| w.contains('.') && w.ends_with("ms")),
        "{stdout}"
    );
    all_in_service(&scn).await;
    scn.stop().await;
}

/// Defect 12: a run with a failed target does not say "completed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_a_failed_target_is_not_completed() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = haproxy_config(dir.path(), &scn, &demo(), 100, r#", "--fail-on", "s2""#);
    let (code, stdout, err) = run_args(
        &cfg,
        &state,
        &[
            "run",
            "--on-failure",
            "restore",
            "--max-failures",
            "1",
            "--health-timeout",
            "1s",
        ],
    );
    assert_eq!(code, 10, "{stdout}{err}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        !first.contains("completed") && first.contains("FAILED"),
        "{stdout}"
    );
    scn.services[1].resume().expect("service back");
    scn.stop().await;
}

// ------------------------------------------------------------- offline

/// Defect 7: a closed stdout is not an error (no panic, exit 0).
#[test]
fn a_closed_stdout_is_not_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["completions", "fish"][..], &["man"][..]] {
        let mut c = hygiene(&dir.path().join("none.toml"), dir.path());
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn");
        drop(child.stdout.take());
        let o = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Defect 8: values of flags and variables are checked like the file's
/// (exit 3) and the error names where they came from; variables take
/// 1/0; canary can be turned off; --only has a variable.
#[test]
fn flags_and_variables_are_checked_and_named() {
    let (_dir, path, state) = offline_config("[rollout]\ncanary = true\n");
    let (code, _, err) = run_args(
        &path,
        &state,
        &["validate", "--offline", "--batch-size", "250%"],
    );
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains("--batch-size") && err.contains("100%"),
        "{err}"
    );
    for (var, value) in [
        ("HYGIENE_BATCH_SIZE", "250%"),
        ("HYGIENE_BATCH_SIZE", "0"),
        ("HYGIENE_DRAIN_TIMEOUT", "soon"),
    ] {
        let mut c = hygiene(&path, &state);
        c.args(["validate", "--offline"]).env(var, value);
        let (code, _, err) = out(c);
        assert_eq!(code, CONFIG, "{var}={value}: {err}");
        assert!(err.contains(var), "names {var}: {err}");
        assert!(
            !err.contains("--batch-size") && !err.contains("--drain-timeout"),
            "{err}"
        );
    }
    let json = |c: Command| -> serde_json::Value {
        let (code, stdout, err) = out(c);
        assert_eq!(code, 0, "{stdout}{err}");
        serde_json::from_str(stdout.trim()).expect("json")
    };
    let mut c = hygiene(&path, &state);
    c.args(["validate", "--offline"])
        .env("HYGIENE_JSON", "1")
        .env("HYGIENE_ONLY", "web/s1,web/s2");
    let v = json(c);
    assert_eq!(v["rollout"]["canary"], true, "{v}");
    assert_eq!(v["rollout"]["selection"]["named"][1], "web/s2", "{v}");
    let mut c = hygiene(&path, &state);
    c.args(["validate", "--offline", "--json", "--no-canary"]);
    let v = json(c);
    assert_eq!(v["rollout"]["canary"], false, "{v}");
    let (_dir2, path2, state2) = offline_config("");
    let mut c = hygiene(&path2, &state2);
    c.args(["validate", "--offline", "--json"])
        .env("HYGIENE_CANARY", "1");
    let v = json(c);
    assert_eq!(v["rollout"]["canary"], true, "{v}");
    assert!(!state.exists() && !state2.exists(), "nothing written");
}

/// Defect 9: a `--set` error names the `--set` and its key, not a line of
/// a document the user never wrote, nor an internal key path.
#[test]
fn set_errors_name_the_set() {
    let (_dir, path, state) = offline_config("");
    let (code, _, err) = run_args(
        &path,
        &state,
        &[
            "validate",
            "--offline",
            "--set",
            "rollout.batch_size=\"250%\"",
        ],
    );
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains("--set") && err.contains("rollout.batch_size"),
        "{err}"
    );
    assert!(
        !err.contains(".amount") && !err.contains("with --set:"),
        "{err}"
    );
    assert!(
        !err.contains(" | "),
        "no snippet of a rewritten document: {err}"
    );
}

// ------------------------------------------------- what operators expect

/// Without a terminal, a timestamped line per event; `--exclude` and an
/// error that lists the valid names; on a terminal, `run` shows the plan
/// and asks (`--yes` does not), without one it does not ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_exclude_and_confirmation() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = haproxy_config(dir.path(), &scn, &demo(), 50, "");

    // Unknown names: exit 3, the pool's names listed, nothing changed.
    for args in [
        &["run", "--only", "web/s9"][..],
        &["run", "--exclude", "web/s9"][..],
        &["plan", "--exclude", "s9"][..],
    ] {
        let (code, stdout, err) = run_args(&cfg, &state, args);
        assert_eq!(code, CONFIG, "{args:?}: {stdout}{err}");
        assert!(
            err.contains("not in the pool") && err.contains("web/s1, web/s2, web/s3"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(drains_journaled(&state.join("web.jsonl")), 0);

    // --exclude leaves a target alone; the log has a line per event.
    let (code, stdout, err) = run_args(&cfg, &state, &["run", "--exclude", "web/s2", "--json"]);
    assert_eq!(code, 0, "{stdout}{err}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("report")).expect("json");
    let ids: Vec<&str> = report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["web/s1", "web/s3"], "{report}");
    let (code, _, err) = run_args(&cfg, &state, &["run", "--only", "web/s1"]);
    assert_eq!(code, 0, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("web/s1 draining"))
        .unwrap_or_else(|| panic!("a line for the drain: {err}"));
    // `2026-12-06T03:30:01Z [0s] web/s1 draining`
    assert!(
        line.len() > 22
            && line.as_bytes()[4] == b'-'
            && line.as_bytes()[10] == b'T'
            && line[..20].ends_with('Z'),
        "timestamped: {line}"
    );

    // On a terminal (script(1) gives it one): the plan, then a question;
    // anything but yes changes nothing.
    if let Ok(script) = which("script") {
        let cmd = format!(
            "{} -c {} --state-dir {} run",
            env!("CARGO_BIN_EXE_hygiene"),
            cfg.display(),
            state.display()
        );
        let before = drains_journaled(&state.join("web.jsonl"));
        let o = Command::new(&script)
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                std::thread::sleep(Duration::from_millis(1500));
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(b"no\n")?;
                }
                c.wait_with_output()
            })
            .expect("script");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("1. web/s1") && text.contains("Only `yes` goes ahead"),
            "{text}"
        );
        assert!(
            text.contains("not confirmed: nothing was changed"),
            "{text}"
        );
        assert_eq!(o.status.code(), Some(1), "{text}");
        assert_eq!(drains_journaled(&state.join("web.jsonl")), before);
        let cmd_yes = format!("{cmd} --yes --only web/s3");
        let o = Command::new(&script)
            .args(["-qec", &cmd_yes, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("script");
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "--yes does not ask: {text}");
        assert!(!text.contains("goes ahead"), "{text}");
    }
    all_in_service(&scn).await;
    scn.stop().await;
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// Selection by short name and glob, `-q`, the time left in the log
/// lines, and after an abort the command that rolls what was not started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_names_globs_quiet_and_the_way_to_continue() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(ScenarioConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = haproxy_config(dir.path(), &scn, &demo(), 50, r#", "--fail-on", "s2""#);

    // A short name, quietly: the summary, and no progress line.
    let (code, stdout, err) = run_args(&cfg, &state, &["run", "-q", "--only", "s1"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("web/s1") && stdout.contains("done"),
        "{stdout}"
    );
    assert!(!stdout.contains("web/s3"), "{stdout}");
    assert!(!err.contains("batch 1"), "-q prints no progress: {err}");

    // A glob, less an excluded short name: web/s3 only (and a log line
    // per event without -q).
    let (code, stdout, err) = run_args(
        &cfg,
        &state,
        &["run", "--only", "web/s[13]", "--exclude", "s1"],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(err.contains("batch 1: web/s3"), "{err}");
    assert!(
        stdout.contains("web/s3") && !stdout.contains("web/s1"),
        "{stdout}"
    );

    // A name matching nothing lists the pool.
    let (code, _, err) = run_args(&cfg, &state, &["run", "--only", "db*"]);
    assert_eq!(code, CONFIG, "{err}");
    assert!(
        err.contains("db*") && err.contains("web/s1, web/s2, web/s3"),
        "{err}"
    );

    // An abort after web/s2 fails: web/s3 was not started, and the
    // command that rolls it is printed; batch 2's line has the time left.
    let (code, stdout, err) = run_args(&cfg, &state, &["run", "--max-failures", "0"]);
    assert_eq!(code, KEPT_OUT, "{stdout}{err}");
    assert!(err.contains("batch 2: web/s2 (about "), "{err}");
    assert!(
        err.contains("1 target(s) were not started; to roll them: hygiene run -c")
            && err.contains("--only web/s3"),
        "{err}"
    );
    scn.stop().await;
}
