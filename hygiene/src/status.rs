//! `status`: what the last run in the journal left, from the journal alone
//! (its process may be dead), and with `--live` what the balancer says.

use std::path::Path;

use hygiene_core::journal::{summarize, FileJournal, JournaledState};
use hygiene_core::{CancellationToken, Location, TargetId};
use serde::Serialize;

use crate::cli::{Global, RolloutFlags};
use crate::config::Loaded;
use crate::output::clean;
use crate::{command_for, exit, kept, output, setup, Failure};

/// One target of the last run, as the journal tells it.
#[derive(Debug, Clone, Serialize)]
struct TargetLine {
    id: TargetId,
    /// Out of rotation because of the run (or in a state it could not read).
    out: bool,
    /// What the journal says.
    state: String,
    /// How to put it back by hand, when out.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
    /// What the balancer says now (`--live`).
    #[serde(skip_serializing_if = "Option::is_none")]
    live: Option<String>,
}

/// A target an earlier run left out, not back yet.
#[derive(Debug, Clone, Serialize)]
struct KeptLine {
    id: TargetId,
    run_id: String,
    since: String,
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    live: Option<String>,
}

/// The status of the pool's journal.
#[derive(Debug, Serialize)]
struct Status {
    pool: String,
    /// The shared lease of the pool (`[lease.*]`): who holds it, or free.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
    journal: String,
    run_id: Option<String>,
    started_at: Option<String>,
    host: Option<String>,
    pid: Option<u32>,
    /// `none`, `finished`, `running` (another process holds the journal)
    /// or `unfinished` (its process is gone).
    state: &'static str,
    outcome: Option<serde_json::Value>,
    targets: Vec<TargetLine>,
    /// Targets earlier runs left out of rotation that are not back yet
    /// (`<pool>.kept-out.json`), the last run's included once it ended.
    kept_out: Vec<KeptLine>,
    /// Changes the last run made outside the balancer (an Auto Scaling
    /// group's) and did not undo: what each did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    open_changes: Vec<String>,
    /// What to do next.
    next: Vec<String>,
}

fn location_text(l: Location) -> String {
    serde_json::to_value(l)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{l:?}"))
}

/// (out of rotation because of the run, what the journal says).
pub(crate) fn describe(s: &JournaledState) -> (bool, String) {
    let out = s.maybe_out();
    let text = match s {
        JournaledState::NotStarted => "not started".into(),
        JournaledState::Out => {
            "OUT OF ROTATION: taken out by the run, maintenance not started".into()
        }
        JournaledState::MaintenanceRunning => {
            "OUT OF ROTATION: maintenance started, its end not recorded (it may still run)".into()
        }
        JournaledState::MaintenanceSucceeded => {
            "OUT OF ROTATION: maintenance succeeded, not yet put back".into()
        }
        JournaledState::MaintenanceFailed { reason } => {
            format!("OUT OF ROTATION: maintenance FAILED: {reason}")
        }
        JournaledState::Finished {
            stage,
            location,
            detail,
        } => {
            let mut t = match location {
                Location::KeptOut => format!("KEPT OUT OF ROTATION ({stage})"),
                Location::Unknown => format!("STATE UNKNOWN, check it ({stage})"),
                Location::OutByRun => format!("OUT OF ROTATION ({stage})"),
                other => format!("{stage}, {}", location_text(*other)),
            };
            if let Some(d) = detail {
                t.push_str(&format!(": {d}"));
            }
            t
        }
        other => format!("{other:?}"),
    };
    (out, text)
}

/// Whether a process holds the journal's lock now (without changing it).
fn held(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    matches!(
        FileJournal::open(path),
        Err(hygiene_core::Error::Journal { .. })
    )
}

pub(crate) async fn main(g: &Global, live: bool) -> Result<u8, Failure> {
    let loaded = Loaded::read_with(&g.config, &g.set)?;
    let pool = loaded.pool_name();
    let journal = setup::state_dir(&loaded, g.state_dir.as_ref()).join(format!("{pool}.jsonl"));
    // With a shared lease, the journal and the holder are the store's:
    // the same answer on every machine.
    let store = crate::lease::open(&loaded).await?.map(|o| o.store);
    let (records, journal_name, holder) = match &store {
        Some(s) => {
            let records = s.records(&pool).await.map_err(|e| Failure::Lib(e.into()))?;
            let holder = s.holder(&pool).await.map_err(|e| Failure::Lib(e.into()))?;
            (
                records,
                format!("{} (journal of pool {pool})", s.name()),
                Some(holder),
            )
        }
        None => (
            FileJournal::read(&journal)?,
            journal.display().to_string(),
            None,
        ),
    };
    let kept = kept::sync(&journal)?;
    let mut status = Status {
        pool: pool.clone(),
        lease: holder.as_ref().map(|h| match h {
            Some(h) => format!("held by {h}"),
            None => "free".to_owned(),
        }),
        journal: journal_name,
        run_id: None,
        started_at: None,
        host: None,
        pid: None,
        state: "none",
        outcome: None,
        targets: Vec::new(),
        kept_out: Vec::new(),
        open_changes: hygiene_core::journal::open_changes(&records)
            .into_iter()
            .map(|c| match &c.target {
                Some(t) => format!("{} (for {t}, {})", c.what, c.at),
                None => format!("{} ({})", c.what, c.at),
            })
            .collect(),
        next: Vec::new(),
    };
    let sum = summarize(&records);
    // Hints need the balancer object, not a connection; a configuration
    // that cannot build one still gets its status.
    let built = if sum.is_some() || !kept.targets.is_empty() {
        let cancel = CancellationToken::new();
        Some(
            setup::build(
                &loaded,
                g.state_dir.as_ref(),
                &RolloutFlags::default(),
                &cancel,
            )
            .await,
        )
    } else {
        None
    };
    let lb = built
        .as_ref()
        .and_then(|b| b.as_ref().ok())
        .map(|s| std::sync::Arc::clone(&s.balancer));
    let hint = |id: &TargetId| lb.as_ref().map(|lb| lb.enable_hint(id));
    for k in &kept.targets {
        status.kept_out.push(KeptLine {
            id: k.target.id.clone(),
            run_id: k.run_id.clone(),
            since: k.since.clone(),
            state: k.state.clone(),
            hint: hint(&k.target.id),
            live: None,
        });
    }
    let mut code = exit::OK;
    if let Some(sum) = &sum {
        let h = &sum.header;
        status.run_id = Some(h.run_id.clone());
        status.started_at = Some(h.started_at.clone());
        status.host = Some(h.host.clone());
        status.pid = Some(h.pid);
        status.outcome = sum
            .outcome
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok());
        let held_now = match &holder {
            Some(h) => h.is_some(),
            None => held(&journal),
        };
        status.state = match (&sum.outcome, held_now) {
            (Some(_), _) => "finished",
            (None, true) => "running",
            (None, false) => "unfinished",
        };
        for t in &sum.targets {
            let (out, state) = describe(&t.state);
            status.targets.push(TargetLine {
                hint: out.then(|| hint(&t.id)).flatten(),
                id: t.id.clone(),
                out,
                state,
                live: None,
            });
        }
    }
    if live && (!status.targets.is_empty() || !status.kept_out.is_empty()) {
        let Some(lb) = &lb else {
            return Err(match built {
                Some(Err(e)) => Failure::Config(e),
                _ => Failure::Lib(hygiene_core::Error::invalid_config(
                    "balancer",
                    "cannot be built",
                )),
            });
        };
        let kept_targets: Vec<hygiene_core::Target> =
            kept.targets.iter().map(|k| k.target.clone()).collect();
        lb.adopt(&kept_targets).await?;
        let ids: Vec<TargetId> = status
            .targets
            .iter()
            .map(|t| t.id.clone())
            .chain(status.kept_out.iter().map(|k| k.id.clone()))
            .collect();
        let now = lb.status(&ids).await?;
        let texts: Vec<String> = now
            .into_iter()
            .map(|s| {
                format!(
                    "{} {}{}",
                    state_text(s.state),
                    health_text(s.health),
                    s.connections
                        .map(|c| format!(", {c} in flight"))
                        .unwrap_or_default()
                )
            })
            .collect();
        let n = status.targets.len();
        for (t, l) in status.targets.iter_mut().zip(&texts) {
            t.live = Some(l.clone());
        }
        for (k, l) in status.kept_out.iter_mut().zip(texts.iter().skip(n)) {
            k.live = Some(l.clone());
        }
    }
    let out = status.targets.iter().filter(|t| t.out).count();
    match status.state {
        "unfinished" => {
            status
                .next
                .push(format!("finish the run: {}", command_for(g, "resume")));
            status.next.push(format!(
                "or put back everything it took out: {}",
                command_for(g, "restore")
            ));
            code = exit::JOURNAL;
        }
        "running" if status.lease.is_some() => {
            status.next.push(format!(
                "the pool's lease is {}: the run is still going; wait for it, or stop it with Ctrl-C where it runs. If it died, `{}` or `{}` take the lease over once it has gone unrenewed for a whole lease",
                status.lease.as_deref().unwrap_or("?"),
                command_for(g, "resume"),
                command_for(g, "restore")
            ));
            code = exit::JOURNAL;
        }
        "running" => {
            status.next.push(format!(
                "a process (pid {} on {}) holds the journal: the run is still going; wait for it, or stop it with Ctrl-C",
                status.pid.unwrap_or(0),
                status.host.as_deref().unwrap_or("?")
            ));
            code = exit::JOURNAL;
        }
        _ if out == 0 && status.kept_out.is_empty() && !status.open_changes.is_empty() => {
            status.next.push(format!(
                "the last run left changes outside the balancer not undone (listed above): `{}` undoes them",
                command_for(g, "restore")
            ));
            code = exit::KEPT_OUT;
        }
        _ if out > 0 || !status.kept_out.is_empty() => {
            let ids: Vec<String> = status.kept_out.iter().map(|k| k.id.to_string()).collect();
            status.next.push(format!(
                "fix each target named above, then put it back, verified healthy: {} {}",
                command_for(g, "enable"),
                if ids.is_empty() {
                    "--all".to_owned()
                } else {
                    ids.join(" ")
                }
            ));
            code = exit::KEPT_OUT;
        }
        _ => {}
    }
    if g.json {
        output::json_line("status", &status);
    } else {
        output::print(&human(&status));
    }
    Ok(code)
}

pub(crate) fn state_text(s: hygiene_core::TargetState) -> &'static str {
    match s {
        hygiene_core::TargetState::InService => "in service",
        hygiene_core::TargetState::Draining => "draining",
        hygiene_core::TargetState::OutOfService => "out of service",
    }
}

pub(crate) fn health_text(h: hygiene_core::Health) -> &'static str {
    match h {
        hygiene_core::Health::Healthy => "healthy",
        hygiene_core::Health::Unhealthy => "UNHEALTHY",
        hygiene_core::Health::Unknown => "health unknown",
    }
}

fn human(s: &Status) -> String {
    // The journal's strings came from balancers and targets (and a
    // journal may be forged): escaped for the terminal.
    let mut o = format!("pool {} — journal {}\n", clean(&s.pool), clean(&s.journal));
    if let Some(l) = &s.lease {
        o.push_str(&format!("lease: {}\n", clean(l)));
    }
    let Some(run) = &s.run_id else {
        if s.kept_out.is_empty() {
            o.push_str("no run recorded: nothing is out of rotation because of hygiene\n");
        } else {
            o.push_str("no run in the journal\n");
            kept_section(s, &mut o);
        }
        for n in &s.next {
            o.push_str(&format!("{}\n", clean(n)));
        }
        return o;
    };
    let state = match s.state {
        "finished" => format!(
            "finished ({})",
            s.outcome
                .as_ref()
                .and_then(|v| v.get("kind"))
                .and_then(|k| k.as_str())
                .map_or_else(|| "?".into(), clean)
        ),
        "running" if s.lease.is_some() => "RUNNING (its run holds the pool's lease)".into(),
        "running" => "RUNNING (another process holds the journal)".into(),
        _ => "UNFINISHED: its process is gone (it died, or could not write all its records)".into(),
    };
    o.push_str(&format!(
        "last run {}, started {} on {} (pid {}): {state}\n",
        clean(run),
        clean(s.started_at.as_deref().unwrap_or("?")),
        clean(s.host.as_deref().unwrap_or("?")),
        s.pid.unwrap_or(0)
    ));
    for t in &s.targets {
        o.push_str(&format!("  {:<24} {}\n", clean(&t.id), clean(&t.state)));
        if let Some(l) = &t.live {
            o.push_str(&format!("  {:<24} balancer now: {}\n", "", clean(l)));
        }
    }
    let out: Vec<&TargetLine> = s.targets.iter().filter(|t| t.out).collect();
    if out.is_empty() {
        o.push_str("nothing is out of rotation because of this run\n");
    } else {
        o.push_str(&format!(
            "out of rotation because of this run: {}\n",
            out.iter()
                .map(|t| clean(&t.id))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for t in &out {
            if let Some(h) = &t.hint {
                o.push_str(&format!(
                    "  put {} back by hand: {}\n",
                    clean(&t.id),
                    clean(h)
                ));
            }
        }
    }
    changes_section(s, &mut o);
    kept_section(s, &mut o);
    for n in &s.next {
        o.push_str(&format!("{}\n", clean(n)));
    }
    o
}

/// The last run's changes outside the balancer that are still open.
fn changes_section(s: &Status, o: &mut String) {
    if s.open_changes.is_empty() {
        return;
    }
    o.push_str("changes outside the balancer NOT UNDONE yet:\n");
    for c in &s.open_changes {
        o.push_str(&format!("  {}\n", clean(c)));
    }
}

/// What earlier runs kept out (the last run's own targets are above).
fn kept_section(s: &Status, o: &mut String) {
    let earlier: Vec<&KeptLine> = s
        .kept_out
        .iter()
        .filter(|k| s.run_id.as_ref() != Some(&k.run_id))
        .collect();
    if earlier.is_empty() {
        return;
    }
    o.push_str(&format!(
        "STILL OUT OF ROTATION because of earlier runs: {}\n",
        earlier
            .iter()
            .map(|k| k.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for k in earlier {
        o.push_str(&format!(
            "  {:<24} {} (run {}, started {})\n",
            k.id.to_string(),
            k.state,
            k.run_id,
            k.since
        ));
        if let Some(l) = &k.live {
            o.push_str(&format!("  {:<24} balancer now: {l}\n", ""));
        }
        if let Some(h) = &k.hint {
            o.push_str(&format!("  put {} back by hand: {h}\n", k.id));
        }
    }
}
