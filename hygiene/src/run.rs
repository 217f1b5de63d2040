//! `run`, `resume` and `restore`: the rollout with its journal, its events
//! followed on a terminal or as JSON lines, Ctrl-C handled.

use std::io::IsTerminal;
use std::sync::Arc;

use hygiene_core::journal::{FileJournal, Journal};
use hygiene_core::lease::{HeldLease, StoreJournal};
use hygiene_core::{CancellationToken, Rollout};
use hygiene_haproxy::SocketLevel;
use tracing::Instrument as _;

use crate::cli::{Global, RolloutFlags};
use crate::config::{ConfigError, Loaded};
use crate::output::{self, Follower, InProgress};
use crate::telemetry::RunMetrics;
use crate::{command_for, exit, kept, setup, Failure};

/// Which of the three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A fresh run; `yes`: do not ask on a terminal.
    Run {
        yes: bool,
    },
    Resume,
    Restore,
}

/// Runs, resumes or restores; returns the exit code of the report.
pub(crate) async fn main(g: &Global, flags: &RolloutFlags, mode: Mode) -> Result<u8, Failure> {
    let loaded = Loaded::read_with(&g.config, &g.set)?;
    tracing::Span::current().record("pool", loaded.pool_name());
    let sinks = g.metrics_sinks()?;
    let narrows = !flags.only.is_empty() || !flags.exclude.is_empty();
    if narrows && !matches!(mode, Mode::Run { .. }) {
        let flag = if flags.only.is_empty() {
            "exclude"
        } else {
            "only"
        };
        return Err(ConfigError::flag(
            &flags.source(flag),
            format!(
                "{} keeps the targets of the run it finishes and cannot narrow them: finish it (`{}`) or put back what it took out (`{}`), then start a new run with --{flag}",
                if mode == Mode::Resume { "resume" } else { "restore" },
                command_for(g, "resume"),
                command_for(g, "restore")
            ),
        )
        .into());
    }
    let cancel = CancellationToken::new();
    let mut setup = setup::build(&loaded, g.state_dir.as_ref(), flags, &cancel).await?;
    // ELBv2: a drain timeout from the deregistration delays unless set;
    // what would defeat a drain is said before anything starts.
    for w in crate::elbv2::drain_timeout(&mut setup).await {
        eprintln!("warning: {w}");
    }
    if let Some(h) = &setup.haproxy {
        // A socket below `level admin` would refuse the first change: say
        // it before anything starts. A fresh run also stops on a node it
        // cannot reach; resume and restore leave that to the engine, which
        // waits for a node coming back (targets are out).
        if matches!(mode, Mode::Run { .. }) {
            h.check_admin().await?;
        } else {
            for (node, level) in h.socket_levels().await {
                if let Ok(l @ (SocketLevel::Operator | SocketLevel::User)) = level {
                    return Err(Failure::Lib(hygiene_core::Error::PermissionDenied {
                        location: node,
                        message: format!(
                            "the runtime API socket is at level {l}: putting targets back needs `level admin`; declare it `stats socket <path> level admin` and reload HAProxy, then run this again"
                        ),
                        source: None,
                    }));
                }
            }
        }
    }
    // The state directory tells a resumed run what to signal and delete:
    // refused when someone else owns it or can write it.
    if let Some(dir) = setup.journal.parent() {
        hygiene_core::journal::prepare_state_dir(dir)?;
    }
    if let Mode::Run { yes } = mode {
        let listed = before_run(g, &loaded, &mut setup, flags).await?;
        if !yes && !g.json && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
            let plan = crate::plan::compute(&setup, &listed, None);
            eprint!("{}", crate::plan::human(&plan));
            eprint!(
                "Run this plan on {}? Only `yes` goes ahead: ",
                setup.balancer.name()
            );
            let mut answer = String::new();
            let read = std::io::stdin().read_line(&mut answer);
            if read.is_err() || !matches!(answer.trim(), "yes" | "y") {
                eprintln!("not confirmed: nothing was changed");
                return Ok(exit::OTHER);
            }
        }
    }
    // A shared lease (`[lease.*]`): taken before anything changes; the
    // journal is then kept in the store under its fence, not in the file.
    let lease = match crate::lease::open(&loaded).await? {
        Some(o) => Some(
            crate::lease::acquire(o.store, &setup.pool, matches!(mode, Mode::Run { .. })).await?,
        ),
        None => None,
    };
    let result = with_journal(g, mode, &loaded, sinks, cancel, &mut setup, lease.clone()).await;
    if let Some(l) = &lease {
        if let Some(w) = crate::lease::release(l).await {
            eprintln!("warning: {}", output::clean(w));
        }
    }
    result
}

/// The rest of [`main`], once the lease (if any) is held.
#[allow(clippy::too_many_arguments)]
async fn with_journal(
    g: &Global,
    mode: Mode,
    loaded: &Loaded,
    sinks: crate::telemetry::metrics::Sinks,
    cancel: CancellationToken,
    setup: &mut setup::Setup,
    lease: Option<HeldLease>,
) -> Result<u8, Failure> {
    let fleet = crate::asg::before(loaded, setup, mode).await?;
    let mut previous = Vec::new();
    let journal: Arc<dyn Journal> = match &lease {
        Some(l) => Arc::new(StoreJournal::new(Arc::clone(&l.store), l.grant.clone())),
        None => {
            if matches!(mode, Mode::Run { .. }) {
                // One journal per run: the last one, if it ended, is moved
                // aside (`hygiene history` reads them); what it left open
                // outside the balancer is carried on below.
                if let Some((to, records)) = crate::history::archive_finished(&setup.journal)? {
                    tracing::debug!("the last run's journal is now {}", to.display());
                    previous = records;
                }
            }
            Arc::new(FileJournal::open(&setup.journal)?)
        }
    };
    let keeper = match fleet {
        crate::asg::Before::Done(code) => return Ok(code),
        crate::asg::Before::Fleet(f) => {
            Some(crate::asg::wrap(f, setup, journal.clone(), &previous)?)
        }
        crate::asg::Before::None => None,
    };
    let mut rollout = Rollout::new(
        Arc::clone(&setup.balancer),
        Arc::clone(&setup.executor),
        setup.rollout.clone(),
    )
    .with_journal(Arc::clone(&journal))
    .with_cancellation(cancel.clone());
    if let Some(l) = lease {
        rollout = rollout.with_lease(l);
    }
    if let Some(p) = setup.probe.clone() {
        rollout = rollout.with_probe(p);
    }
    rollout = setup.outside.apply(rollout)?;
    let mode_name = match mode {
        Mode::Run { .. } => "run",
        Mode::Resume => "resume",
        Mode::Restore => "restore",
    };
    let run_vars = [
        ("HYGIENE_POOL", setup.pool.clone()),
        ("HYGIENE_MODE", mode_name.to_owned()),
    ];
    // A hook before the run that fails stops it before anything changes.
    if let Err(why) = setup.outside.run_hooks(true, &run_vars).await {
        return Err(Failure::Other(format!("{why}; nothing was changed")));
    }
    let mut events = rollout.subscribe();
    let in_progress = InProgress::default();
    let interrupt = tokio::spawn(on_interrupt(
        cancel.clone(),
        Arc::clone(&in_progress),
        command_for(g, "resume"),
        command_for(g, "restore"),
    ));
    let task = tokio::spawn(
        async move {
            match mode {
                Mode::Run { .. } => rollout.run().await,
                Mode::Resume => rollout.resume().await,
                Mode::Restore => rollout.restore().await,
            }
        }
        .instrument(tracing::Span::current()),
    );
    let metrics = RunMetrics::start(sinks, &loaded.pool_name());
    let mut follower = Follower::new(g.json, in_progress).quiet(g.quiet);
    while let Some(e) = events.recv().await {
        metrics.event(&e);
        follower.event(&e);
    }
    follower.finish();
    let joined = task.await;
    interrupt.abort();
    let report = match joined {
        Ok(Err(hygiene_core::Error::Journal { location, message }))
            if !matches!(mode, Mode::Run { .. }) =>
        {
            // "Nothing to resume" is not the whole truth when an earlier
            // run kept targets out: name them and the way back.
            let kept = kept::sync(&setup.journal)?;
            let mut message = message;
            if !kept.targets.is_empty() {
                let ids: Vec<String> = kept.ids().iter().map(ToString::to_string).collect();
                message.push_str(&format!(
                    "; but earlier runs kept {} out of rotation: once fixed, `{} {}` (or `{} --kept-out`) puts them back",
                    ids.join(", "),
                    command_for(g, "enable"),
                    ids.join(" "),
                    command_for(g, "restore")
                ));
            }
            return Err(Failure::Lib(hygiene_core::Error::Journal {
                location,
                message,
            }));
        }
        Ok(r) => r?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            return Err(Failure::Lib(hygiene_core::Error::Cancelled {
                operation: format!("the rollout task ({e})"),
            }))
        }
    };
    for w in metrics.finish(&report).await {
        eprintln!("warning: {}", output::clean(w));
    }
    if g.json {
        output::json_line("report", &report);
    } else {
        output::print(&output::summary(&report));
        let hint = (mode != Mode::Restore)
            .then(|| output::continue_hint(&report, &command_for(g, "run")))
            .flatten();
        if let Some(hint) = hint {
            eprintln!("{}", output::clean(hint));
        }
    }
    if let Some(k) = &keeper {
        for w in crate::asg::finish(k).await {
            eprintln!("warning: {w}");
        }
    }
    // Remember what this run left out, beyond the next run's journal.
    if let Err(e) = kept::sync(&setup.journal) {
        eprintln!("warning: {}", failure_text(&e));
    }
    let mut code = exit::of_report(&report);
    let kept: Vec<String> = report.kept_out().map(|t| t.id.to_string()).collect();
    let mut after_vars = run_vars.to_vec();
    after_vars.extend([
        ("HYGIENE_RUN_ID", report.run_id.clone()),
        (
            "HYGIENE_OUTCOME",
            match &report.outcome {
                hygiene_core::Outcome::Completed => "completed",
                hygiene_core::Outcome::Aborted { .. } => "aborted",
                _ => "cancelled",
            }
            .to_owned(),
        ),
        ("HYGIENE_KEPT_OUT", kept.join(" ")),
    ]);
    if let Err(why) = setup.outside.run_hooks(false, &after_vars).await {
        // The run is over and its report stands; the failure is named and
        // the exit code says something went wrong.
        eprintln!("error: {why}");
        if code == exit::OK {
            code = exit::OTHER;
        }
    }
    if mode == Mode::Restore && code == exit::CANCELLED {
        // A restore starts nothing new by design: the engine reports it
        // cancelled, but it did its job.
        code = exit::OK;
    }
    if report.journal_records_lost > 0 {
        // The journal has a gap and is left unfinished: say so, and do not
        // exit as if all went well (the next run is refused until then).
        eprintln!(
            "error: {} record(s) of this run could not be written to the journal {}; it is left unfinished. `{}` reconciles it with the balancer (a new run is refused until then); `{}` says what it holds",
            report.journal_records_lost,
            journal.location(),
            command_for(g, "restore"),
            command_for(g, "status")
        );
        if matches!(code, exit::OK | exit::CANCELLED) {
            code = exit::JOURNAL;
        }
    }
    if code == exit::KEPT_OUT {
        eprintln!(
            "{} target(s) are out of rotation because of this run: `{}` lists them with the way back",
            report.kept_out().count(),
            command_for(g, "status")
        );
    }
    Ok(code)
}

/// First Ctrl-C: cancel (nothing new starts, everything goes back). Second:
/// say what still runs and how to resume. Third: leave at once; the
/// journal keeps the run for `resume` / `restore`.
async fn on_interrupt(
    cancel: CancellationToken,
    in_progress: InProgress,
    resume: String,
    restore: String,
) {
    let mut count = 0u32;
    while tokio::signal::ctrl_c().await.is_ok() {
        count += 1;
        match count {
            1 => {
                eprintln!(
                    "interrupted: nothing new starts; drained targets go back in service at once; maintenances already running finish and are verified. Ctrl-C again to see what is still running."
                );
                cancel.cancel();
            }
            2 => {
                let ip = in_progress
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let list: Vec<String> = ip
                    .iter()
                    .map(|(id, st)| format!("{} ({st})", output::clean(id)))
                    .collect();
                eprintln!(
                    "still running: {}. Waiting for them to end. Ctrl-C once more leaves now: the journal keeps the run; then `{resume}` finishes it or `{restore}` puts back what it took out.",
                    if list.is_empty() { "nothing".into() } else { list.join(", ") }
                );
            }
            _ => {
                let ip = in_progress
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let list: Vec<String> = ip.iter().map(|(id, st)| format!("{id} ({st})")).collect();
                if list.is_empty() {
                    eprintln!("leaving now; the run is unfinished. Finish it with `{resume}`, or put back what it took out with `{restore}`.");
                    std::process::exit(i32::from(exit::JOURNAL));
                }
                eprintln!(
                    "leaving now with targets OUT OF ROTATION or on their way: {}. The journal keeps the run: `{resume}` finishes it, `{restore}` puts back what it took out.",
                    list.join(", ")
                );
                std::process::exit(i32::from(exit::KEPT_OUT));
            }
        }
    }
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Config(e) => e.to_string(),
        Failure::Lib(e) => e.to_string(),
        Failure::Other(m) => m.clone(),
    }
}

/// Before a fresh run changes anything: the pool can be listed (a
/// misspelled backend is a configuration error, not the journal's), the
/// maintenance can start on at least one target, and what earlier runs
/// kept out is said (and forgotten when it is back in service).
async fn before_run(
    g: &Global,
    loaded: &Loaded,
    setup: &mut setup::Setup,
    flags: &RolloutFlags,
) -> Result<Vec<hygiene_core::ListedTarget>, Failure> {
    let listed = setup.balancer.list().await?;
    setup::select(setup, &listed, flags, true)?;
    let pf = crate::preflight::check(loaded, setup, &listed).await;
    if let Some(why) = pf.refusal() {
        return Err(Failure::Lib(hygiene_core::Error::Executor {
            executor: setup.executor.name(),
            message: format!(
                "{why}; nothing was changed. Fix it, then `{}` shows the run would go",
                command_for(g, "plan")
            ),
            source: None,
        }));
    }
    warn_kept_out(g, &setup.journal, &listed, true)?;
    Ok(listed)
}

/// What earlier runs kept out of rotation, said on stderr for a run
/// (`write`), which also forgets a target the balancer lists in service
/// again (put back by hand).
pub(crate) fn warn_kept_out(
    g: &Global,
    journal: &std::path::Path,
    listed: &[hygiene_core::ListedTarget],
    write: bool,
) -> Result<Vec<String>, Failure> {
    let mut kept = kept::sync(journal)?;
    let back: Vec<hygiene_core::TargetId> = kept
        .targets
        .iter()
        .filter(|k| {
            listed.iter().any(|l| {
                l.target.id == k.target.id && l.status.state == hygiene_core::TargetState::InService
            })
        })
        .map(|k| k.target.id.clone())
        .collect();
    if !back.is_empty() && write {
        for id in &back {
            kept.remove(id);
        }
        kept.write(&kept::path_for(journal))?;
    }
    let mut warnings = Vec::new();
    for k in kept.targets.iter().filter(|k| !back.contains(&k.target.id)) {
        warnings.push(format!(
            "{} is still out of rotation: kept out by run {} (started {}): {}; once fixed, `{} {}` puts it back",
            k.target.id,
            k.run_id,
            k.since,
            k.state,
            command_for(g, "enable"),
            k.target.id
        ));
    }
    // `plan` and `validate` print them in their own output.
    if write && !g.json {
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(warnings)
}
