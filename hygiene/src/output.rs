//! What the operator sees: JSON lines (`--json`), the live progress view
//! on a terminal, and the human summary of a report.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hygiene_core::{Event, EventKind, Location, Outcome, Report, Stage, TargetId, TargetResult};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// `s` for a person's terminal: names from a balancer and output from
/// targets may hold control characters (OSC 52 writes the clipboard,
/// cursor movement rewrites what was printed); each becomes a visible
/// escape. JSON needs none: serde_json escapes them.
pub(crate) fn clean(s: impl std::fmt::Display) -> String {
    hygiene_core::display::sanitize(&s.to_string()).into_owned()
}

/// [`tidy`] then [`clean`]: engine words with rounded durations, escaped.
pub(crate) fn clean_tidy(s: &str) -> String {
    clean(tidy(s))
}

/// Prints one JSON line on stdout: `value`'s fields with `"type": kind`
/// first (objects), or `{"type": kind, "value": …}`.
pub(crate) fn json_line(kind: &str, value: &impl Serialize) {
    let mut out = serde_json::Map::new();
    out.insert("type".into(), kind.into());
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(m)) => out.extend(m),
        Ok(other) => {
            out.insert("value".into(), other);
        }
        Err(e) => {
            out.insert("serialization_error".into(), e.to_string().into());
        }
    }
    let line = serde_json::Value::Object(out).to_string();
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (`| head`) is no reason to stop a rollout.
    let _ignored = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// Prints `text` on stdout; a closed stdout (`| head`) is not an error.
pub(crate) fn print(text: &str) {
    print_bytes(text.as_bytes());
}

/// Writes `bytes` on stdout, ignoring a closed pipe.
pub(crate) fn print_bytes(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ignored = stdout.write_all(bytes).and_then(|()| stdout.flush());
}

/// Targets in progress, shared with the Ctrl-C handler.
pub(crate) type InProgress = Arc<Mutex<BTreeMap<TargetId, Stage>>>;

/// Follows a run's events: JSON lines, a progress view, or nothing, and
/// keeps the set of targets in progress.
#[derive(Debug)]
pub(crate) struct Follower {
    json: bool,
    view: Option<View>,
    /// No terminal (CI, nohup, a pipe): a timestamped line per event on
    /// stderr instead of the view.
    lines: bool,
    in_progress: InProgress,
    selected: usize,
    done: usize,
    failed: usize,
    other: usize,
    /// Time into the run of the last event.
    elapsed: Duration,
}

#[derive(Debug)]
struct View {
    multi: MultiProgress,
    header: ProgressBar,
    bars: BTreeMap<TargetId, ProgressBar>,
    batch: Option<usize>,
}

fn is_final(stage: Stage) -> bool {
    matches!(
        stage,
        Stage::Done | Stage::Failed | Stage::Skipped | Stage::Restored | Stage::Vanished
    )
}

impl Follower {
    /// A follower; the progress view only when not `json` and stderr is a
    /// terminal.
    pub(crate) fn new(json: bool, in_progress: InProgress) -> Self {
        let view = (!json && std::io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let header = multi.add(ProgressBar::new_spinner());
            header.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            header.enable_steady_tick(Duration::from_millis(120));
            header.set_message("starting");
            View {
                multi,
                header,
                bars: BTreeMap::new(),
                batch: None,
            }
        });
        Self {
            json,
            lines: !json && view.is_none(),
            view,
            in_progress,
            selected: 0,
            done: 0,
            failed: 0,
            other: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// `-q`: no progress view and no progress lines (JSON lines, when
    /// asked for, still come).
    pub(crate) fn quiet(mut self, quiet: bool) -> Self {
        if quiet {
            if let Some(v) = self.view.take() {
                v.header.finish_and_clear();
                let _ignored = v.multi.clear();
            }
            self.lines = false;
        }
        self
    }

    /// The time left, from the pace so far: the targets finished in the
    /// time elapsed, applied to the targets left (none before the first
    /// target has finished).
    pub(crate) fn time_left(&self) -> Option<Duration> {
        let finished = self.done + self.failed + self.other;
        let left = self.selected.saturating_sub(finished);
        estimate(self.elapsed, finished, left)
    }

    /// Takes one event.
    pub(crate) fn event(&mut self, e: &Event) {
        self.elapsed = e.elapsed;
        if self.json {
            json_line("event", e);
        }
        if self.lines {
            if let Some(mut text) = event_text(e) {
                if matches!(e.kind, EventKind::BatchStarted { .. }) {
                    if let Some(left) = self.time_left() {
                        text.push_str(&format!(" (about {} left)", rough(left)));
                    }
                }
                // `2026-12-06T03:30:01Z`: the second is enough for a log.
                let at = e.at.split('.').next().unwrap_or(&e.at);
                let z = if at.ends_with('Z') { "" } else { "Z" };
                eprintln!(
                    "{at}{z} [{}] {}",
                    hygiene_core::duration_text::format(Duration::from_secs(e.elapsed.as_secs())),
                    clean_tidy(&text)
                );
            }
        }
        match &e.kind {
            EventKind::Started { selected, .. } => self.selected = *selected,
            EventKind::Phase { id, stage, detail } => {
                let mut ip = self
                    .in_progress
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if is_final(*stage) {
                    ip.remove(id);
                    match stage {
                        Stage::Done => self.done += 1,
                        Stage::Failed => self.failed += 1,
                        _ => self.other += 1,
                    }
                    if let Some(v) = &mut self.view {
                        if let Some(b) = v.bars.remove(id) {
                            b.finish_and_clear();
                            v.multi.remove(&b);
                        }
                        if *stage == Stage::Failed {
                            let _ignored = v.multi.println(format!(
                                "FAILED {}: {}",
                                clean(id),
                                clean_tidy(detail.as_deref().unwrap_or(""))
                            ));
                        }
                    }
                } else if *stage != Stage::Pending {
                    ip.insert(id.clone(), *stage);
                    if let Some(v) = &mut self.view {
                        let bar = v.bars.entry(id.clone()).or_insert_with(|| {
                            let b = v.multi.add(ProgressBar::new_spinner());
                            b.set_style(
                                ProgressStyle::with_template(
                                    "  {spinner} {prefix:<24} {msg} ({elapsed})",
                                )
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                            );
                            b.set_prefix(clean(id));
                            b.enable_steady_tick(Duration::from_millis(120));
                            b
                        });
                        bar.set_message(stage.to_string());
                    }
                }
            }
            EventKind::Stopping { reason } => {
                self.note(&format!("stopping: {}", clean_tidy(&reason.to_string())));
            }
            EventKind::DrainLost { id, stage } => {
                self.note(&format!(
                    "{} was put back in rotation by the balancer itself while {stage} (a reload?): taken out again",
                    clean(id)
                ));
            }
            EventKind::FoundOut { id } => {
                self.note(&format!(
                    "{} is out of rotation and this run did not take it out: left as found",
                    clean(id)
                ));
            }
            EventKind::WaitingForCapacity { healthy, required } => {
                self.note(&format!(
                    "waiting for capacity: {healthy} healthy, min_healthy requires {required}"
                ));
            }
            _ => {}
        }
        if let Some(batch) = e.batch {
            if let Some(v) = &mut self.view {
                v.batch = Some(batch);
            }
        }
        self.header();
    }

    fn note(&self, text: &str) {
        if let Some(v) = &self.view {
            let _ignored = v.multi.println(text);
        }
    }

    fn header(&self) {
        if let Some(v) = &self.view {
            let finished = self.done + self.failed + self.other;
            v.header.set_message(format!(
                "batch {} · done {} · failed {} · left {}{}",
                v.batch.map_or_else(|| "-".into(), |b| (b + 1).to_string()),
                self.done,
                self.failed,
                self.selected.saturating_sub(finished),
                self.time_left()
                    .map(|d| format!(" · about {} to go", rough(d)))
                    .unwrap_or_default()
            ));
        }
    }

    /// Clears the view.
    pub(crate) fn finish(&mut self) {
        if let Some(v) = self.view.take() {
            for b in v.bars.values() {
                b.finish_and_clear();
            }
            v.header.finish_and_clear();
            let _ignored = v.multi.clear();
        }
    }
}

/// `left` targets at the pace of `finished` in `elapsed`; `None` before
/// the first has finished or when nothing is left.
fn estimate(elapsed: Duration, finished: usize, left: usize) -> Option<Duration> {
    if finished == 0 || left == 0 {
        return None;
    }
    let per_target = elapsed.as_secs_f64() / finished as f64;
    Duration::try_from_secs_f64(per_target * left as f64).ok()
}

/// A duration to the precision an estimate deserves: `40s`, `3m`, `1h20m`.
fn rough(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{}s", s.max(1)),
        60..=3599 => format!("{}m", (s + 30) / 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// One event in words, for the log lines (none for the chatty ones).
fn event_text(e: &Event) -> Option<String> {
    Some(match &e.kind {
        EventKind::Started { selected, pool, .. } => {
            format!("run starts: {selected} target(s) selected of {pool}")
        }
        EventKind::BatchStarted { index, targets } => format!(
            "batch {}: {}",
            index + 1,
            targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        EventKind::Phase { id, stage, detail } => match detail {
            Some(d) => format!("{id} {stage}: {d}"),
            None => format!("{id} {stage}"),
        },
        EventKind::Retry {
            operation, error, ..
        } => format!("retrying {operation}: {error}"),
        EventKind::DrainLost { id, stage } => format!(
            "{id} was put back in rotation by the balancer itself while {stage} (a reload?): taken out again"
        ),
        EventKind::FoundOut { id } => {
            format!("{id} is out of rotation and this run did not take it out: left as found")
        }
        EventKind::WaitingForCapacity { healthy, required } => {
            format!("waiting for capacity: {healthy} healthy, min_healthy requires {required}")
        }
        EventKind::Stopping { reason } => format!("stopping: {reason}"),
        EventKind::Finished { .. } => "run ends".into(),
        _ => return None,
    })
}

/// Rounds the durations the library prints with `{:?}` in its reasons
/// (`401.830121ms` → `402ms`, `1.532101s` → `1.5s`) so a person can read them.
pub(crate) fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        // A number that is part of a word (`s1`, `web-2`) is left alone.
        let prev = rest[..start].chars().next_back();
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(len);
        let unit = ["ms", "µs", "ns", "s"].into_iter().find(|u| {
            after.starts_with(u)
                && !after[u.len()..]
                    .chars()
                    .next()
                    .is_some_and(char::is_alphanumeric)
        });
        match (unit, num.contains('.'), num.parse::<f64>(), prev) {
            (Some(u), true, Ok(v), p) if !p.is_some_and(|c| c.is_alphanumeric() || c == '-') => {
                let rounded = match u {
                    "s" => format!("{v:.1}s"),
                    "ms" if v >= 10.0 => format!("{v:.0}ms"),
                    "ms" => format!("{v:.1}ms"),
                    _ => format!("{v:.0}{u}"),
                };
                out.push_str(&rounded);
                rest = &after[u.len()..];
            }
            _ => {
                out.push_str(num);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// After a cancel or an abort: the command that rolls the targets the run
/// did not start (`run` plus `--only` with their names), or `None` when
/// every target was started.
pub(crate) fn continue_hint(r: &Report, run: &str) -> Option<String> {
    if !matches!(r.outcome, Outcome::Cancelled | Outcome::Aborted { .. }) {
        return None;
    }
    let left: Vec<String> = r
        .targets
        .iter()
        .filter(|t| matches!(t.result, TargetResult::NotStarted))
        .map(|t| t.id.to_string())
        .collect();
    if left.is_empty() {
        return None;
    }
    let only = if left.iter().any(|id| id.contains(',')) {
        left.iter()
            .map(|id| format!(" --only {}", crate::shell_word(id)))
            .collect::<String>()
    } else {
        format!(" --only {}", crate::shell_word(&left.join(",")))
    };
    Some(format!(
        "{} target(s) were not started; to roll them: {run}{only}",
        left.len()
    ))
}

/// The report for a human, on stdout.
pub(crate) fn summary(r: &Report) -> String {
    let mut s = String::new();
    let failed = r.failed().count();
    let outcome = match &r.outcome {
        Outcome::Completed if failed > 0 => format!("FAILED: {failed} target(s) failed, ended"),
        Outcome::Completed => "completed".to_owned(),
        Outcome::Aborted { reason } => {
            format!("ABORTED: {}, ended", clean_tidy(&reason.to_string()))
        }
        Outcome::Cancelled => "cancelled".to_owned(),
        other => clean_tidy(&format!("{other:?}")),
    };
    s.push_str(&format!(
        "run {} on {}: {outcome} in {:.1}s, {} batch(es)\n",
        clean(&r.run_id),
        clean(&r.balancer),
        r.duration.as_secs_f64(),
        r.batches
    ));
    for t in &r.targets {
        let what = match &t.result {
            TargetResult::Done => {
                let ms = |d: Option<Duration>| {
                    d.map_or_else(|| "-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
                };
                format!(
                    "done (drain {}, maintenance {}, health {})",
                    ms(t.timings.drain),
                    ms(t.timings.execute),
                    ms(t.timings.health)
                )
            }
            TargetResult::Failed {
                phase,
                reason,
                kept_out,
                ..
            } => format!(
                "FAILED in {phase}: {}{}",
                clean_tidy(reason),
                if *kept_out {
                    " — KEPT OUT OF ROTATION"
                } else {
                    ""
                }
            ),
            TargetResult::Skipped { reason } => format!("skipped: {}", clean_tidy(reason)),
            TargetResult::Restored { reason } => match &t.execution {
                Some(x) if x.success => format!(
                    "maintenance succeeded{}, put back: {}",
                    x.exit_code
                        .map(|c| format!(" (exit {c})"))
                        .unwrap_or_default(),
                    clean_tidy(reason)
                ),
                Some(_) => format!("maintenance FAILED, put back: {}", clean_tidy(reason)),
                None => format!("put back without maintenance: {}", clean_tidy(reason)),
            },
            TargetResult::Vanished { reason, .. } => format!("vanished: {}", clean_tidy(reason)),
            TargetResult::NotStarted => "not started".into(),
            other => clean(format!("{other:?}")),
        };
        s.push_str(&format!("  {:<24} {what}\n", clean(&t.id)));
        // A failed maintenance: its last lines, and where the rest is.
        if let (TargetResult::Failed { .. }, Some(x)) = (&t.result, &t.execution) {
            let lines = crate::history::last_lines(x, 5);
            if !lines.is_empty() {
                for l in &lines {
                    s.push_str(&format!("  {:<24} | {l}\n", ""));
                }
                s.push_str(&format!(
                    "  {:<24} (`hygiene logs {}` prints all it kept)\n",
                    "",
                    clean(&t.id)
                ));
            }
        }
    }
    for id in &r.found_out {
        s.push_str(&format!(
            "  {:<24} out of rotation before the run: left as found\n",
            clean(id)
        ));
    }
    let kept: Vec<_> = r.kept_out().collect();
    if !kept.is_empty() {
        s.push_str("\nOut of rotation because of this run:\n");
        for t in kept {
            let hint = match &t.result {
                TargetResult::Failed {
                    restore_hint: Some(h),
                    ..
                } => clean(h),
                _ => String::new(),
            };
            let state = if t.location == Location::Unknown {
                " (state unknown: check it)"
            } else {
                ""
            };
            s.push_str(&format!(
                "  {}{state}\n    put it back by hand: {hint}\n",
                clean(&t.id)
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_follows_the_pace_so_far() {
        assert_eq!(estimate(Duration::from_secs(60), 0, 4), None);
        assert_eq!(estimate(Duration::from_secs(60), 4, 0), None);
        assert_eq!(
            estimate(Duration::from_secs(60), 2, 4),
            Some(Duration::from_secs(120))
        );
        assert_eq!(rough(Duration::from_millis(200)), "1s");
        assert_eq!(rough(Duration::from_secs(40)), "40s");
        assert_eq!(rough(Duration::from_secs(150)), "3m");
        assert_eq!(rough(Duration::from_secs(4800)), "1h20m");
    }

    #[test]
    fn quiet_shows_neither_view_nor_lines() {
        let f = Follower::new(false, InProgress::default()).quiet(true);
        assert!(f.view.is_none());
        assert!(!f.lines);
        let f = Follower::new(false, InProgress::default()).quiet(false);
        // Tests run without a terminal: lines, not the view.
        assert!(f.lines);
    }
}
