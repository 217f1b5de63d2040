//! `hygiene`'s numbers where teams look, end to end against a real HAProxy:
//! a run's metrics pushed to a real Pushgateway and read back, the same
//! numbers in a node-exporter textfile, JSON log lines that name run,
//! pool, target and phase, and the `TRACEPARENT` each maintenance gets.

mod common;

use std::path::{Path, PathBuf};

use common::{have_haproxy, hygiene, out};
use examples::pushgateway::{pushgateway_bin, sample, Pushgateway};
use examples::scenario::{Scenario, ScenarioConfig};
use hygiene_core::conformance::integration_available;

fn have_pushgateway() -> bool {
    integration_available(
        "prometheus-pushgateway",
        pushgateway_bin().is_some(),
        "run ./scripts/test, which installs it (apt-get install -y prometheus-pushgateway)",
    )
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

/// A pool `web` of three servers; `executor`: the `[executor.local]` lines.
fn config(dir: &Path, scn: &Scenario, executor: &str) -> PathBuf {
    let path = dir.join("hygiene.toml");
    let text = format!(
        r#"pool = "web"

[balancer.haproxy]
nodes = [{sock:?}]
backends = ["web"]

[executor.local]
{executor}
timeout = "30s"

[rollout]
batch_size = 1
poll_interval = "50ms"
drain_timeout = "20s"
health_timeout = "20s"
"#,
        sock = scn.haproxy.socket().display().to_string(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn patch(scn: &Scenario, extra: &str) -> String {
    format!(
        r#"program = {exe:?}
args = ["patch", "--control", "{control}", "--patch-ms", "100"{extra}]"#,
        exe = common::demo_bin().display().to_string(),
        control = scn.control.addr(),
    )
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_metrics_reach_a_real_pushgateway_and_the_textfile() {
    if !have_haproxy() || !have_pushgateway() {
        return;
    }
    let bin = pushgateway_bin().expect("pushgateway");
    let pg = Pushgateway::start(&bin).expect("pushgateway starts");
    let scn = start_scenario().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let textfile = dir.path().join("hygiene-web.prom");
    let pool = [("job", "hygiene"), ("pool", "web")];

    // A run that succeeds: every target done, the last success set.
    let cfg = config(dir.path(), &scn, &patch(&scn, ""));
    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--pushgateway", &pg.url()])
        .arg("--metrics-textfile")
        .arg(&textfile);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    let m = pg.metrics().expect("metrics");
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        pool.iter().chain(extra).copied().collect()
    };
    assert_eq!(
        value(&m, "hygiene_run_targets", &with(&[("state", "done")])),
        3.0
    );
    assert_eq!(
        value(&m, "hygiene_run_targets", &with(&[("state", "failed")])),
        0.0
    );
    assert_eq!(value(&m, "hygiene_run_success", &pool), 1.0);
    assert_eq!(value(&m, "hygiene_run_kept_out_targets", &pool), 0.0);
    assert_eq!(value(&m, "hygiene_batches_total", &pool), 3.0);
    assert_eq!(value(&m, "hygiene_drain_lost_total", &pool), 0.0);
    assert_eq!(value(&m, "hygiene_gate_holds_total", &pool), 0.0);
    for h in [
        "hygiene_drain_duration_seconds_count",
        "hygiene_maintenance_duration_seconds_count",
        "hygiene_health_duration_seconds_count",
    ] {
        assert_eq!(value(&m, h, &pool), 3.0, "{h}");
    }
    // The patch takes 100 ms: every maintenance is in the 0.5 s bucket,
    // none in the 0.1 s one.
    assert_eq!(
        value(
            &m,
            "hygiene_maintenance_duration_seconds_bucket",
            &with(&[("le", "0.1")])
        ),
        0.0
    );
    assert!(
        value(&m, "hygiene_maintenance_duration_seconds_sum", &pool) >= 0.3,
        "{m}"
    );
    let success = value(&m, "hygiene_last_success_timestamp_seconds", &pool);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();
    assert!(
        (now - 120.0..=now + 1.0).contains(&success),
        "{success} is now"
    );
    let file = std::fs::read_to_string(&textfile).expect("textfile");
    assert_eq!(
        value(
            &file,
            "hygiene_run_targets",
            &[("pool", "web"), ("state", "done")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &file,
            "hygiene_last_success_timestamp_seconds",
            &[("pool", "web")]
        ),
        success
    );

    // A run where s2's maintenance fails: kept out, the run aborted; the
    // last success stays the first run's, in both places.
    let cfg = config(dir.path(), &scn, &patch(&scn, r#", "--fail-on", "s2""#));
    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--pushgateway", &pg.url()])
        .arg("--metrics-textfile")
        .arg(&textfile);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 11, "{stdout}{err}");
    let m = pg.metrics().expect("metrics");
    assert_eq!(value(&m, "hygiene_run_success", &pool), 0.0);
    assert_eq!(
        value(&m, "hygiene_run_targets", &with(&[("state", "done")])),
        1.0
    );
    assert_eq!(
        value(&m, "hygiene_run_targets", &with(&[("state", "failed")])),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "hygiene_run_targets",
            &with(&[("state", "not_started")])
        ),
        1.0
    );
    assert_eq!(value(&m, "hygiene_run_kept_out_targets", &pool), 1.0);
    assert_eq!(
        value(
            &m,
            "hygiene_target_failures_total",
            &with(&[("phase", "executing")])
        ),
        1.0
    );
    assert_eq!(
        value(&m, "hygiene_last_success_timestamp_seconds", &pool),
        success,
        "a failed run keeps the last success"
    );
    let file = std::fs::read_to_string(&textfile).expect("textfile");
    assert_eq!(value(&file, "hygiene_run_success", &[("pool", "web")]), 0.0);
    assert_eq!(
        value(&file, "hygiene_run_kept_out_targets", &[("pool", "web")]),
        1.0
    );
    assert_eq!(
        value(
            &file,
            "hygiene_last_success_timestamp_seconds",
            &[("pool", "web")]
        ),
        success
    );
    scn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_pushgateway_is_a_warning_not_a_failed_run() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = config(dir.path(), &scn, &patch(&scn, ""));
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--pushgateway", &format!("http://127.0.0.1:{port}")]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        err.contains("warning: pushing the run's metrics to http://127.0.0.1:"),
        "{err}"
    );

    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--pushgateway", "pushgateway:9091"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 3, "a bad URL is a configuration error: {stdout}{err}");
    assert!(err.contains("--pushgateway"), "{err}");
    scn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_name_run_pool_target_and_phase() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = config(dir.path(), &scn, &patch(&scn, ""));
    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--json", "--log-format", "json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("report")).expect("report");
    let run_id = report["run_id"].as_str().expect("run id");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 10, "{err}");
    for l in &lines {
        for k in [
            "timestamp",
            "level",
            "message",
            "run",
            "pool",
            "batch",
            "target",
            "phase",
        ] {
            assert!(l.get(k).is_some(), "{k} in {l}");
        }
        assert_eq!(l["pool"], "web", "{l}");
    }
    let phases: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["message"] == "phase").collect();
    assert!(
        phases.len() >= 3 * 5,
        "a line per phase change of each target: {err}"
    );
    for l in &phases {
        assert_eq!(l["run"], run_id, "{l}");
        assert!(
            l["target"].as_str().is_some_and(|t| t.starts_with("web/s")),
            "{l}"
        );
        assert!(l["phase"].is_string(), "{l}");
    }
    assert!(
        phases
            .iter()
            .any(|l| l["target"] == "web/s2" && l["phase"] == "executing" && l["batch"] == 1),
        "{err}"
    );
    scn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_maintenance_gets_a_traceparent_of_the_callers_trace() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let seen = dir.path().join("seen");
    std::fs::create_dir(&seen).expect("dir");
    // The maintenance writes what it was given, one file per target.
    let executor = format!(
        r#"program = "/bin/sh"
args = ["-c", "printf '%s' \"$TRACEPARENT\" > \"$0/$(echo $HYGIENE_TARGET_ID | tr / _)\"", {seen:?}]"#,
        seen = seen.display().to_string()
    );
    let cfg = config(dir.path(), &scn, &executor);
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut c = hygiene(&cfg, &state);
    c.arg("run").env("TRACEPARENT", parent);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    for s in ["web_s1", "web_s2", "web_s3"] {
        let tp = std::fs::read_to_string(seen.join(s)).expect("the maintenance ran");
        assert!(
            hygiene_core::trace::is_traceparent(&tp),
            "{s}: {tp:?} is a traceparent"
        );
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{s}: {tp} is in the caller's trace"
        );
    }
    scn.stop().await;
}
