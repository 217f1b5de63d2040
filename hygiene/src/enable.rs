//! `enable` (and `restore --kept-out`): puts back what earlier runs kept
//! out of rotation, verified as the engine verifies a target it enables:
//! the probe first while the target is still out (a target that fails it
//! stays out), then the enable, then status reads until one shows it
//! healthy in service on a check made after the enable (the balancer's
//! contract), within `health_timeout`. A target not healthy by then is
//! taken out again and stays on the list.

use std::time::Duration;

use hygiene_core::journal::{summarize, FileJournal};
use hygiene_core::{CancellationToken, LoadBalancer, Probe, ProbeVerdict, TargetId, TargetState};
use serde::Serialize;

use crate::cli::{Global, RolloutFlags};
use crate::config::Loaded;
use crate::kept;
use crate::{command_for, exit, output, setup, Failure};

/// What happened to one target.
#[derive(Debug, Serialize)]
struct Line {
    id: TargetId,
    /// `back` (healthy in service), `already_in_service` (put back
    /// outside hygiene), `probe_failed`, `unhealthy` (taken out again).
    result: &'static str,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Enabled {
    targets: Vec<Line>,
    /// Still out of rotation because of hygiene.
    still_out: Vec<TargetId>,
}

/// `hygiene enable <target>…` / `--all`.
pub(crate) async fn main(g: &Global, names: &[String], all: bool) -> Result<u8, Failure> {
    let loaded = Loaded::read_with(&g.config, &g.set)?;
    let cancel = CancellationToken::new();
    let mut setup = setup::build(
        &loaded,
        g.state_dir.as_ref(),
        &RolloutFlags::default(),
        &cancel,
    )
    .await?;
    // Holding the journal keeps a run from starting meanwhile.
    let lock = std::sync::Arc::new(FileJournal::open(&setup.journal)?);
    // An instance a run kept out in standby leaves it when enabled.
    #[cfg(feature = "aws")]
    let keeper = crate::asg::for_enable(&loaded, &mut setup, lock.clone()).await?;
    #[cfg(not(feature = "aws"))]
    let _no_groups = (&mut setup, &lock);
    if let Some(sum) = summarize(&FileJournal::read(&setup.journal)?) {
        if sum.outcome.is_none() {
            return Err(Failure::Lib(hygiene_core::Error::journal(
                setup.journal.display().to_string(),
                format!(
                    "holds an unfinished run ({}): finish it with `{}` or put back what it took out with `{}` first",
                    sum.header.run_id,
                    command_for(g, "resume"),
                    command_for(g, "restore")
                ),
            )));
        }
    }
    let path = kept::path_for(&setup.journal);
    let mut kept = kept::sync(&setup.journal)?;
    let chosen: Vec<kept::KeptTarget> = if all || names.is_empty() {
        if !all {
            return Err(crate::config::ConfigError::flag(
                "enable",
                format!(
                    "name the targets to put back, or give --all; kept out now: {}",
                    list_or_none(&kept.ids())
                ),
            )
            .into());
        }
        kept.targets.clone()
    } else {
        let mut chosen = Vec::new();
        for n in names {
            match kept.targets.iter().find(|t| t.target.id.as_str() == n) {
                Some(t) => chosen.push(t.clone()),
                None => {
                    return Err(crate::config::ConfigError::flag(
                        n,
                        format!(
                            "is not kept out of rotation by hygiene (it puts back only what it took out); kept out now: {}",
                            list_or_none(&kept.ids())
                        ),
                    )
                    .into())
                }
            }
        }
        chosen
    };
    let mut report = Enabled {
        targets: Vec::new(),
        still_out: Vec::new(),
    };
    if chosen.is_empty() {
        finish(g, &report, "nothing is kept out of rotation by hygiene");
        return Ok(exit::OK);
    }
    let lb = &setup.balancer;
    let targets: Vec<hygiene_core::Target> = chosen.iter().map(|k| k.target.clone()).collect();
    lb.adopt(&targets).await?;
    let ids: Vec<TargetId> = targets.iter().map(|t| t.id.clone()).collect();
    let now = lb.status(&ids).await?;
    let mut to_enable = Vec::new();
    for (t, s) in targets.iter().zip(now) {
        if s.state == TargetState::InService {
            kept.remove(&t.id);
            report.targets.push(Line {
                id: t.id.clone(),
                result: "already_in_service",
                detail: "already back in rotation (put back outside hygiene)".into(),
            });
            continue;
        }
        if let Some(p) = &setup.probe {
            match p.check(t).await {
                Ok(ProbeVerdict::Pass) => {}
                Ok(ProbeVerdict::Fail(why)) => {
                    report.targets.push(Line {
                        id: t.id.clone(),
                        result: "probe_failed",
                        detail: format!("the probe failed ({why}): left out of rotation"),
                    });
                    continue;
                }
                Err(e) => {
                    report.targets.push(Line {
                        id: t.id.clone(),
                        result: "probe_failed",
                        detail: format!("the probe could not be made ({e}): left out of rotation"),
                    });
                    continue;
                }
            }
        }
        to_enable.push(t.id.clone());
    }
    if !to_enable.is_empty() {
        lb.enable(&to_enable).await?;
        let (healthy, unhealthy) = await_healthy(&**lb, &setup, &to_enable).await?;
        for id in healthy {
            kept.remove(&id);
            report.targets.push(Line {
                id,
                result: "back",
                detail: "back in service, healthy on a check made after the enable".into(),
            });
        }
        if !unhealthy.is_empty() {
            let ids: Vec<TargetId> = unhealthy.iter().map(|(id, _)| id.clone()).collect();
            // Never leave a target that is not healthy in rotation.
            let out = if lb.capabilities().hard_disable {
                lb.disable(&ids).await
            } else {
                lb.drain(&ids).await
            };
            for (id, last) in unhealthy {
                let detail = match &out {
                    Ok(()) => format!(
                        "not healthy within {} after the enable (last seen: {last}): taken out of rotation again",
                        hygiene_core::duration_text::format(setup.rollout.health_timeout())
                    ),
                    Err(e) => format!(
                        "not healthy within {} after the enable (last seen: {last}), and taking it out again failed: {e}: CHECK IT",
                        hygiene_core::duration_text::format(setup.rollout.health_timeout())
                    ),
                };
                if let Some(k) = kept.targets.iter_mut().find(|k| k.target.id == id) {
                    k.state = format!("KEPT OUT OF ROTATION: `hygiene enable`: {detail}");
                }
                report.targets.push(Line {
                    id,
                    result: "unhealthy",
                    detail,
                });
            }
        }
    }
    kept.write(&path)?;
    report.still_out = kept.ids();
    let code = if report.still_out.is_empty() {
        exit::OK
    } else {
        exit::KEPT_OUT
    };
    let tail = if report.still_out.is_empty() {
        "nothing is kept out of rotation by hygiene now".to_owned()
    } else {
        format!(
            "still out of rotation because of hygiene: {}; `{}` shows them",
            list_or_none(&report.still_out),
            command_for(g, "status")
        )
    };
    #[cfg(feature = "aws")]
    if let Some(k) = &keeper {
        for w in crate::asg::finish(k).await {
            eprintln!("warning: {w}");
        }
    }
    finish(g, &report, &tail);
    Ok(code)
}

fn finish(g: &Global, report: &Enabled, tail: &str) {
    if g.json {
        output::json_line("enable", report);
    } else {
        let mut o = String::new();
        for l in &report.targets {
            o.push_str(&format!("  {:<24} {}\n", l.id.to_string(), l.detail));
        }
        o.push_str(tail);
        o.push('\n');
        output::print(&o);
    }
}

fn list_or_none(ids: &[TargetId]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads status until every id is healthy in service (the balancer hides
/// a stale "up" after an enable) or `health_timeout` passes. Returns the
/// healthy ones and the others with what was last seen.
async fn await_healthy(
    lb: &dyn LoadBalancer,
    setup: &setup::Setup,
    ids: &[TargetId],
) -> Result<(Vec<TargetId>, Vec<(TargetId, String)>), Failure> {
    let caps = lb.capabilities();
    let poll = setup
        .rollout
        .poll_interval()
        .unwrap_or_else(|| lb.default_poll_interval())
        .max(Duration::from_millis(10));
    let deadline = tokio::time::Instant::now() + setup.rollout.health_timeout();
    let mut waiting: Vec<TargetId> = ids.to_vec();
    let mut healthy = Vec::new();
    loop {
        let now = lb.status(&waiting).await?;
        let mut still = Vec::new();
        let mut seen = Vec::new();
        for (id, s) in waiting.iter().zip(now) {
            if s.is_serving_healthy_with(&caps) {
                healthy.push(id.clone());
            } else {
                seen.push(format!(
                    "{} {}",
                    crate::status::state_text(s.state),
                    crate::status::health_text(s.health)
                ));
                still.push(id.clone());
            }
        }
        waiting = still;
        if waiting.is_empty() {
            return Ok((healthy, Vec::new()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((healthy, waiting.into_iter().zip(seen).collect()));
        }
        tokio::time::sleep(poll).await;
    }
}
