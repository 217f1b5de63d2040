//! `[[gate]]`, `[[hook]]` and `[[notify]]` in the `hygiene` command: shown
//! by `validate` (a webhook's secret path never), refused with the key
//! named when wrong, and a run on a real HAProxy held by a command gate,
//! with hooks before and after the run and each batch.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{have_haproxy, hygiene, out};
use examples::scenario::{Scenario, ScenarioConfig};
use hygiene_core::journal::{FileJournal, Op, Record};
use hygiene_core::{LoadBalancer as _, TargetState};

const HEAD: &str = "[balancer.haproxy]\nnodes = [\"/nonexistent/haproxy.sock\"]\nbackends = [\"web\"]\n\n[executor.local]\nprogram = \"/bin/true\"\n";

fn validate(text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hygiene.toml");
    std::fs::write(&path, text).expect("write");
    let mut c = hygiene(&path, &dir.path().join("state"));
    c.args(["validate", "--offline"]);
    for (k, v) in env {
        c.env(k, v);
    }
    out(c)
}

#[test]
fn gates_hooks_and_webhooks_are_shown_by_validate_and_plan_never_shows_the_secret() {
    let text = format!(
        r#"{HEAD}
[rollout]
wait_between_batches = "5m"
on_gate_timeout = "proceed"

[[gate]]
name = "alerts"
prometheus = "http://127.0.0.1:9090"
query = 'ALERTS{{alertstate="firing"}}'
interval = "15s"
timeout = "20m"

[[gate]]
name = "smoke"
url = "https://smoke.internal/ready"
when = ["after"]

[[gate]]
name = "freeze"
command = ["/usr/local/bin/change-freeze", "web"]
when = ["before"]

[[hook]]
name = "silence"
when = "before_run"
command = ["/usr/local/bin/silence", "30m"]

[[notify]]
url_env = "TEST_SLACK_URL"
format = "slack"
"#
    );
    let (code, stdout, err) = validate(
        &text,
        &[(
            "TEST_SLACK_URL",
            "https://hooks.example/services/T0/B0/s3cret",
        )],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    for s in [
        "gate alerts: prometheus ALERTS{alertstate=\"firing\"} (go when empty or 1); before and after each batch; asked every 15s while it says no, for at most 20m, then on_gate_timeout = proceed",
        "gate smoke: GET (go on 2xx); after each batch",
        "gate freeze: command /usr/local/bin/change-freeze (go on exit 0); before each batch",
        "hook silence: command /usr/local/bin/silence before the run",
        "notify webhook https://hooks.example (slack)",
    ] {
        assert!(stdout.contains(s), "validate shows {s:?}: {stdout}");
    }
    assert!(
        !stdout.contains("s3cret") && !err.contains("s3cret"),
        "{stdout}{err}"
    );
}

#[test]
fn a_wrong_gate_hook_or_webhook_is_named_and_changes_nothing() {
    for (section, key, says) in [
        (
            "[[gate]]\nname = \"x\"\nurl = \"http://a\"\ncommand = [\"true\"]\n",
            "gate[0]",
            "exactly one of prometheus",
        ),
        (
            "[[gate]]\nname = \"x\"\nquery = \"up\"\n",
            "gate[0].query",
            "needs prometheus",
        ),
        (
            "[[gate]]\nname = \"x\"\nprometheus = \"http://a:9090\"\n",
            "gate[0].query",
            "needs its query",
        ),
        (
            "[[gate]]\nname = \"x\"\nurl = \"http://a\"\ninterval = \"1m\"\ntimeout = \"30s\"\n",
            "gate[0]",
            "shorter than the interval",
        ),
        (
            "[[gate]]\nname = \"a b\"\nurl = \"http://a\"\n",
            "gate[0]",
            "is not a name",
        ),
        (
            "[[gate]]\nname = \"x\"\nurl = \"http://a\"\n[[gate]]\nname = \"x\"\nurl = \"http://b\"\n",
            "gate[1].name",
            "a second gate named",
        ),
        ("[[notify]]\nformat = \"slack\"\n", "notify[0]", "url_env"),
        (
            "[[notify]]\nurl_env = \"HYGIENE_TEST_UNSET_URL\"\n",
            "notify[0].url_env",
            "is not set",
        ),
        (
            "[[hook]]\nname = \"h\"\nwhen = \"sometimes\"\ncommand = [\"true\"]\n",
            "hook",
            "before_run",
        ),
        (
            "[[hook]]\nname = \"h\"\nwhen = \"after_run\"\ncommand = []\n",
            "hook[0]",
            "empty",
        ),
    ] {
        let (code, stdout, err) = validate(&format!("{HEAD}\n{section}"), &[]);
        assert_eq!(code, 3, "{section}: {stdout}{err}");
        assert!(err.contains(key) && err.contains(says), "{section}: names {key} and says {says:?}: {err}");
    }
}

async fn start_scenario() -> Scenario {
    let mut tries = 0;
    loop {
        match Scenario::start(ScenarioConfig::default()).await {
            Ok(s) => return s,
            Err(e) if tries < 3 && e.to_string().contains("in use") => tries += 1,
            Err(e) => panic!("scenario: {e}"),
        }
    }
}

fn drains(journal: &Path) -> usize {
    FileJournal::read(journal)
        .unwrap_or_default()
        .iter()
        .filter(|r| matches!(r, Record::Intent { op: Op::Drain, .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_gate_holds_a_run_on_haproxy_and_hooks_see_the_run_s_variables() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let flag = dir.path().join("go");
    let log = dir.path().join("hooks.log");
    let cfg = dir.path().join("hygiene.toml");
    let text = format!(
        r#"pool = "web"

[balancer.haproxy]
nodes = [{sock:?}]
backends = ["web"]

[executor.local]
program = {exe:?}
args = ["patch", "--control", "{control}", "--patch-ms", "50"]
timeout = "30s"

[rollout]
batch_size = 2
poll_interval = "50ms"
drain_timeout = "20s"
health_timeout = "20s"

[[gate]]
name = "go-file"
command = ["/bin/sh", "-c", "test -e \"$FLAG\" || {{ echo \"no $FLAG yet\" >&2; exit 1; }}"]
env = {{ FLAG = {flag:?} }}
when = ["before"]
interval = "100ms"
timeout = "60s"

[[hook]]
name = "pre-run"
when = "before_run"
command = ["/bin/sh", "-c", "echo \"before_run $HYGIENE_HOOK $HYGIENE_MODE $HYGIENE_POOL\" >> \"$LOG\""]
env = {{ LOG = {log:?} }}

[[hook]]
name = "post-batch"
when = "after_batch"
command = ["/bin/sh", "-c", "echo \"after_batch $HYGIENE_HOOK_WHEN $HYGIENE_BATCH $HYGIENE_TARGETS\" >> \"$LOG\""]
env = {{ LOG = {log:?} }}

[[hook]]
name = "post-run"
when = "after_run"
command = ["/bin/sh", "-c", "echo \"after_run $HYGIENE_OUTCOME $HYGIENE_RUN_ID kept=[$HYGIENE_KEPT_OUT]\" >> \"$LOG\""]
env = {{ LOG = {log:?} }}
"#,
        sock = scn.haproxy.socket().display().to_string(),
        exe = common::demo_bin().display(),
        control = scn.control.addr(),
        flag = flag.display().to_string(),
        log = log.display().to_string(),
    );
    std::fs::write(&cfg, text).expect("config");
    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--yes", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("hygiene run");
    let journal = state.join("web.jsonl");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(drains(&journal), 0, "drained while the gate said no");
    all_in_service(&scn).await;
    let held = FileJournal::read(&journal).expect("journal");
    assert!(
        held.iter().any(|r| matches!(r, Record::Gate { gate, go: false, detail: Some(d), .. } if gate == "go-file" && d.contains("no "))),
        "the gate's no is journaled: {held:?}"
    );
    std::fs::write(&flag, "").expect("flag");
    let started = Instant::now();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("output");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(stdout.contains("\"event\":\"gate_holding\""), "{stdout}");
    assert!(stdout.contains("\"event\":\"hook_ran\""), "{stdout}");
    assert_eq!(drains(&journal), 2, "two batches once the gate said go");
    all_in_service(&scn).await;
    let log = std::fs::read_to_string(&log).expect("hooks ran");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "before_run pre-run run web", "{log}");
    assert_eq!(lines[1], "after_batch after 0 web/s1 web/s2", "{log}");
    assert_eq!(lines[2], "after_batch after 1 web/s3", "{log}");
    assert!(
        lines[3].starts_with("after_run completed ") && lines[3].ends_with("kept=[]"),
        "{log}"
    );
    scn.stop().await;
}

async fn all_in_service(scn: &Scenario) {
    for l in scn.balancer.list().await.expect("list") {
        assert_eq!(l.status.state, TargetState::InService, "{}", l.target.id);
    }
}
