//! `run`, `resume` and `restore`: the rollout with its journal, its events
//! followed on a terminal or as JSON lines, Ctrl-C handled.

use std::sync::Arc;

use hygiene_core::journal::FileJournal;
use hygiene_core::{CancellationToken, Rollout};
use hygiene_haproxy::SocketLevel;

use crate::cli::{Global, RolloutFlags};
use crate::config::Loaded;
use crate::output::{self, Follower, InProgress};
use crate::{command_for, exit, setup, Failure};

/// Which of the three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Run,
    Resume,
    Restore,
}

/// Runs, resumes or restores; returns the exit code of the report.
pub(crate) async fn main(g: &Global, flags: &RolloutFlags, mode: Mode) -> Result<u8, Failure> {
    let loaded = Loaded::read_with(&g.config, &g.set)?;
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
        if mode == Mode::Run {
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
    let journal = FileJournal::open(&setup.journal)?;
    let mut rollout = Rollout::new(
        Arc::clone(&setup.balancer),
        Arc::clone(&setup.executor),
        setup.rollout.clone(),
    )
    .with_journal(journal)
    .with_cancellation(cancel.clone());
    if let Some(p) = setup.probe.clone() {
        rollout = rollout.with_probe(p);
    }
    let mut events = rollout.subscribe();
    let in_progress = InProgress::default();
    let interrupt = tokio::spawn(on_interrupt(
        cancel.clone(),
        Arc::clone(&in_progress),
        command_for(g, "resume"),
        command_for(g, "restore"),
    ));
    let task = tokio::spawn(async move {
        match mode {
            Mode::Run => rollout.run().await,
            Mode::Resume => rollout.resume().await,
            Mode::Restore => rollout.restore().await,
        }
    });
    let mut follower = Follower::new(g.json, in_progress);
    while let Some(e) = events.recv().await {
        follower.event(&e);
    }
    follower.finish();
    let joined = task.await;
    interrupt.abort();
    let report = match joined {
        Ok(r) => r?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            return Err(Failure::Lib(hygiene_core::Error::Cancelled {
                operation: format!("the rollout task ({e})"),
            }))
        }
    };
    if g.json {
        output::json_line("report", &report);
    } else {
        print!("{}", output::summary(&report));
    }
    let code = exit::of_report(&report);
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
                let list: Vec<String> = ip.iter().map(|(id, st)| format!("{id} ({st})")).collect();
                eprintln!(
                    "still running: {}. Waiting for them to end. Ctrl-C once more leaves now: the journal keeps the run; then `{resume}` finishes it or `{restore}` puts back what it took out.",
                    if list.is_empty() { "nothing".into() } else { list.join(", ") }
                );
            }
            _ => {
                eprintln!("leaving now. Finish with `{resume}`, or `{restore}`.");
                std::process::exit(i32::from(exit::CANCELLED));
            }
        }
    }
}
