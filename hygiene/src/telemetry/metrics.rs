//! A run's numbers in Prometheus's text format, for the systems teams
//! already watch. A run is a batch job: nothing is scraped while it runs;
//! at its end the numbers are pushed once to a Pushgateway and/or written
//! as a node-exporter textfile (atomically: a temporary file, then a
//! rename).
//!
//! Every number is derived from the engine's events and its report (the
//! engine records nothing itself); the recording goes through the
//! `metrics` facade, so a part of the command that runs beside the engine
//! (gates) records into the same run with [`record_gate_hold`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hygiene_core::{Event, EventKind, Location, Report, TargetResult};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Targets of the run by what became of them (`state`: done, failed,
/// skipped, restored, vanished, not_started).
pub(crate) const TARGETS: &str = "hygiene_run_targets";
/// Targets out of rotation because of the run when it ended.
pub(crate) const KEPT_OUT: &str = "hygiene_run_kept_out_targets";
/// Targets that failed, by the phase they failed in.
pub(crate) const FAILURES: &str = "hygiene_target_failures_total";
/// Times the balancer put a target back on its own while the run had it out.
pub(crate) const DRAIN_LOST: &str = "hygiene_drain_lost_total";
/// Times a gate said no and held the rollout (`gate`: its name).
pub(crate) const GATE_HOLDS: &str = "hygiene_gate_holds_total";
/// Balancer and executor calls tried again (`operation`).
pub(crate) const RETRIES: &str = "hygiene_retries_total";
/// Batches started.
pub(crate) const BATCHES: &str = "hygiene_batches_total";
/// From the drain call to drained.
pub(crate) const DRAIN_SECONDS: &str = "hygiene_drain_duration_seconds";
/// The maintenance.
pub(crate) const MAINTENANCE_SECONDS: &str = "hygiene_maintenance_duration_seconds";
/// From the end of the maintenance to the probe passing.
pub(crate) const PROBE_SECONDS: &str = "hygiene_probe_duration_seconds";
/// From the enable call to healthy.
pub(crate) const HEALTH_SECONDS: &str = "hygiene_health_duration_seconds";
/// Wall time of the run.
pub(crate) const RUN_SECONDS: &str = "hygiene_run_duration_seconds";
/// 1 when the run completed with no failure and nothing kept out.
pub(crate) const SUCCESS: &str = "hygiene_run_success";
/// When the run ended (Unix seconds).
pub(crate) const LAST_RUN: &str = "hygiene_last_run_timestamp_seconds";
/// When a run last succeeded (Unix seconds): only a successful run sets
/// it; a failed one leaves the previous value where it is kept.
pub(crate) const LAST_SUCCESS: &str = "hygiene_last_success_timestamp_seconds";

/// Bucket bounds of the duration histograms: a drain of a second to a
/// reboot of an hour.
const BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

const STATES: &[&str] = &[
    "done",
    "failed",
    "skipped",
    "restored",
    "vanished",
    "not_started",
];

/// Records that gate `gate` said no and held the rollout (nothing new is
/// drained until it says go). For the gates: call it once per hold.
pub(crate) fn record_gate_hold(gate: &str) {
    counter!(GATE_HOLDS, "gate" => gate.to_owned()).increment(1);
}

/// Says what each metric means (`# HELP`), and registers the ones every
/// run has, so a run where nothing of a kind happened says 0 instead of
/// leaving the previous run's value in the Pushgateway.
pub(crate) fn describe() {
    describe_gauge!(TARGETS, "Targets of the last run by what became of them.");
    describe_gauge!(
        KEPT_OUT,
        "Targets out of rotation because of the last run when it ended."
    );
    describe_counter!(
        FAILURES,
        "Targets that failed in the last run, by the phase they failed in."
    );
    describe_counter!(
        DRAIN_LOST,
        "Times the balancer put a target back in rotation on its own while the run had it out."
    );
    describe_counter!(GATE_HOLDS, "Times a gate said no and held the rollout.");
    describe_counter!(RETRIES, "Balancer and executor calls tried again.");
    describe_counter!(BATCHES, "Batches started.");
    describe_histogram!(
        DRAIN_SECONDS,
        metrics::Unit::Seconds,
        "From the drain call to drained, per target."
    );
    describe_histogram!(
        MAINTENANCE_SECONDS,
        metrics::Unit::Seconds,
        "The maintenance, per target."
    );
    describe_histogram!(
        PROBE_SECONDS,
        metrics::Unit::Seconds,
        "From the end of the maintenance to the probe passing, per target."
    );
    describe_histogram!(
        HEALTH_SECONDS,
        metrics::Unit::Seconds,
        "From the enable call to healthy, per target."
    );
    describe_gauge!(
        RUN_SECONDS,
        metrics::Unit::Seconds,
        "Wall time of the last run."
    );
    describe_gauge!(
        SUCCESS,
        "1 when the last run completed with no failure and nothing kept out."
    );
    describe_gauge!(LAST_RUN, metrics::Unit::Seconds, "When the last run ended.");
    describe_gauge!(
        LAST_SUCCESS,
        metrics::Unit::Seconds,
        "When a run last succeeded."
    );
    counter!(DRAIN_LOST).absolute(0);
    counter!(BATCHES).absolute(0);
    counter!(GATE_HOLDS).absolute(0);
    for state in STATES {
        gauge!(TARGETS, "state" => *state).set(0.0);
    }
}

/// What one event adds to the numbers.
pub(crate) fn event(e: &Event) {
    match &e.kind {
        EventKind::Retry { operation, .. } => {
            counter!(RETRIES, "operation" => operation.clone()).increment(1);
        }
        EventKind::DrainLost { .. } => counter!(DRAIN_LOST).increment(1),
        EventKind::BatchStarted { .. } => counter!(BATCHES).increment(1),
        // Once per gate and batch that held the rollout (not per no: a
        // gate asked every 10 s through a 10-minute alert is one hold).
        EventKind::GateHolding { gate, .. } => record_gate_hold(gate),
        _ => {}
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// What the report adds: targets by state, failures, kept out, the
/// phases' durations, the run's time and success. `now`: the end of the
/// run, Unix seconds.
pub(crate) fn report(r: &Report, now: f64) {
    let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
    for t in &r.targets {
        let state = match &t.result {
            TargetResult::Done => "done",
            TargetResult::Failed { phase, .. } => {
                counter!(FAILURES, "phase" => phase.to_string()).increment(1);
                "failed"
            }
            TargetResult::Skipped { .. } => "skipped",
            TargetResult::Restored { .. } => "restored",
            TargetResult::Vanished { .. } => "vanished",
            _ => "not_started",
        };
        *by_state.entry(state).or_default() += 1;
        let timings = &t.timings;
        for (name, d) in [
            (DRAIN_SECONDS, timings.drain),
            (MAINTENANCE_SECONDS, timings.execute),
            (PROBE_SECONDS, timings.probe),
            (HEALTH_SECONDS, timings.health),
        ] {
            if let Some(d) = d {
                histogram!(name).record(seconds(d));
            }
        }
    }
    for state in STATES {
        #[allow(clippy::cast_precision_loss)] // Counts of targets.
        gauge!(TARGETS, "state" => *state).set(by_state.get(state).copied().unwrap_or(0) as f64);
    }
    #[allow(clippy::cast_precision_loss)]
    gauge!(KEPT_OUT).set(
        r.targets
            .iter()
            .filter(|t| matches!(t.location, Location::KeptOut | Location::Unknown))
            .count() as f64,
    );
    gauge!(RUN_SECONDS).set(seconds(r.duration));
    let success = r.is_success();
    gauge!(SUCCESS).set(if success { 1.0 } else { 0.0 });
    gauge!(LAST_RUN).set(now);
    if success {
        gauge!(LAST_SUCCESS).set(now);
    }
}

/// Where the numbers go at the end of a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sinks {
    /// A Pushgateway's base URL (`http://pushgateway:9091`).
    pub(crate) pushgateway: Option<reqwest::Url>,
    /// A node-exporter textfile (`…/textfile/hygiene-web.prom`).
    pub(crate) textfile: Option<PathBuf>,
}

impl Sinks {
    /// Whether anything is configured.
    pub(crate) fn any(&self) -> bool {
        self.pushgateway.is_some() || self.textfile.is_some()
    }
}

/// The recorder of one run: the pool's name is a label of every metric
/// (and the Pushgateway's grouping key, with `job="hygiene"`).
pub(crate) fn builder(pool: &str) -> PrometheusBuilder {
    PrometheusBuilder::new()
        .add_global_label("pool", pool)
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new().add_global_label("pool", pool))
}

/// The URL of the pool's group on a Pushgateway: `job/hygiene/pool/<pool>`
/// (a pool name is `[A-Za-z0-9._+-]`, nothing to escape).
pub(crate) fn group_url(base: &reqwest::Url, pool: &str) -> reqwest::Url {
    let mut url = base.clone();
    let path = format!(
        "{}/metrics/job/hygiene/pool/{pool}",
        base.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url
}

/// Pushes `text` to the pool's group with POST: the metrics of this run
/// replace those of the same names, and a failed run leaves the last
/// success time of an earlier one in place.
pub(crate) async fn push(base: &reqwest::Url, pool: &str, text: String) -> Result<(), String> {
    let url = group_url(base, pool);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("no HTTP client for the Pushgateway: {e}"))?;
    let resp = client
        .post(url.clone())
        .header("content-type", "text/plain; version=0.0.4")
        .body(text)
        .send()
        .await
        .map_err(|e| format!("pushing the run's metrics to {url} failed: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!(
            "the Pushgateway at {url} refused the run's metrics ({status}): {}",
            body.trim()
        ));
    }
    Ok(())
}

/// Writes `text` to `path` as node-exporter's textfile collector reads
/// it: into a temporary file beside it (not `*.prom`, so never read half
/// written), then renamed over it. The last success time of an earlier
/// run is kept when this run has none.
pub(crate) fn write_textfile(path: &Path, text: &str) -> Result<(), String> {
    let mut text = text.to_owned();
    if !text.lines().any(|l| l.starts_with(LAST_SUCCESS)) {
        if let Ok(old) = std::fs::read_to_string(path) {
            let kept: Vec<&str> = old
                .lines()
                .filter(|l| {
                    l.starts_with(LAST_SUCCESS)
                        || l.starts_with(&format!("# HELP {LAST_SUCCESS} "))
                        || l.starts_with(&format!("# TYPE {LAST_SUCCESS} "))
                })
                .collect();
            if kept.iter().any(|l| l.starts_with(LAST_SUCCESS)) {
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                for l in kept {
                    text.push_str(l);
                    text.push('\n');
                }
            }
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file: give the textfile's path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ignored = std::fs::remove_file(&tmp);
        return Err(format!(
            "the run's metrics could not be written to {}: {e}; check that its directory exists and is writable",
            path.display()
        ));
    }
    Ok(())
}

/// Renders what was recorded and sends it where `sinks` say; returns a
/// warning per sink that failed (a run's outcome never depends on them).
pub(crate) async fn export(handle: &PrometheusHandle, sinks: &Sinks, pool: &str) -> Vec<String> {
    let text = handle.render();
    let mut warnings = Vec::new();
    if let Some(path) = &sinks.textfile {
        if let Err(e) = write_textfile(path, &text) {
            warnings.push(e);
        }
    }
    if let Some(url) = &sinks.pushgateway {
        if let Err(e) = push(url, pool, text).await {
            warnings.push(e);
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(f: impl FnOnce()) -> String {
        let recorder = builder("web").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    #[test]
    fn an_empty_run_still_says_zero() {
        let text = render(describe);
        for l in [
            "hygiene_drain_lost_total{pool=\"web\"} 0",
            "hygiene_run_targets{pool=\"web\",state=\"failed\"} 0",
            "hygiene_gate_holds_total{pool=\"web\"} 0",
        ] {
            assert!(text.contains(l), "{l} in {text}");
        }
    }

    #[test]
    fn gate_holds_are_counted_per_gate() {
        let text = render(|| {
            describe();
            record_gate_hold("alerts");
            record_gate_hold("alerts");
        });
        assert!(
            text.contains("hygiene_gate_holds_total{pool=\"web\",gate=\"alerts\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn a_gate_that_holds_is_counted_once_per_hold_from_the_events() {
        // `Event` is non-exhaustive: built the way the command reads one.
        let ev = |kind: EventKind| -> Event {
            let mut v = serde_json::to_value(&kind).expect("kind");
            v["at"] = "2026-12-06T00:00:00Z".into();
            v["elapsed_ms"] = 0.into();
            v["batch"] = 1.into();
            serde_json::from_value(v).expect("event")
        };
        let text = render(|| {
            describe();
            for go in [false, false, true] {
                event(&ev(EventKind::GateChecked {
                    gate: "alerts".into(),
                    when: hygiene_core::GateWhen::Before,
                    go,
                    detail: None,
                    waited: Duration::ZERO,
                }));
            }
            event(&ev(EventKind::GateHolding {
                gate: "alerts".into(),
                when: hygiene_core::GateWhen::Before,
                reason: "an alert fires".into(),
                timeout: Duration::from_secs(600),
            }));
        });
        assert!(
            text.contains("hygiene_gate_holds_total{pool=\"web\",gate=\"alerts\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_group_url_names_job_and_pool() {
        let base: reqwest::Url = "http://127.0.0.1:9091/".parse().expect("url");
        assert_eq!(
            group_url(&base, "web").as_str(),
            "http://127.0.0.1:9091/metrics/job/hygiene/pool/web"
        );
        let base: reqwest::Url = "http://h/prefix".parse().expect("url");
        assert_eq!(
            group_url(&base, "a.b").as_str(),
            "http://h/prefix/metrics/job/hygiene/pool/a.b"
        );
    }

    #[test]
    fn the_textfile_is_replaced_whole_and_keeps_the_last_success() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("hygiene.prom");
        write_textfile(
            &path,
            "# TYPE hygiene_last_success_timestamp_seconds gauge\nhygiene_last_success_timestamp_seconds{pool=\"web\"} 100\nhygiene_run_success{pool=\"web\"} 1\n",
        )
        .expect("write");
        write_textfile(&path, "hygiene_run_success{pool=\"web\"} 0\n").expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("hygiene_run_success{pool=\"web\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("hygiene_run_success{pool=\"web\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hygiene_last_success_timestamp_seconds{pool=\"web\"} 100"),
            "{text}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        let missing = dir.path().join("nope").join("hygiene.prom");
        let e = write_textfile(&missing, "x 1\n").expect_err("no directory");
        assert!(e.contains("nope") && e.contains("writable"), "{e}");
    }
}
