//! Tests for the mutants of `machine/` that survived hygiene-core's tests
//! in the cargo-mutants pass of session 9 (issue "engine round 3"): each
//! one fails with its mutant applied (checked by hand). The machine runs
//! against round3's scripted world; times are milliseconds.

use crate::config::{Amount, RolloutConfig};
use crate::error::Error;
use crate::phase::Location;
use crate::report::TargetResult;
use crate::target::TargetState;

use super::machine::{Effect, Reply};
use super::regressions::{caps, id, report};
use super::round3::{machine_with, names, World};

/// change.rs `on_drain`: a drain of two targets refused because one is
/// unknown changed nothing (the trait's contract); each is drained alone,
/// and the known one is maintained as usual.
#[test]
fn a_batch_drain_refused_for_one_unknown_target_is_split() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Drain(_, ids) if ids.len() > 1 => Some(Reply::Changed(Err(
                Error::target_not_found(ids[1].as_str(), None),
            ))),
            _ => None,
        }),
        10_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let single =
        |k: usize| w.count(|e| matches!(e, Effect::Drain(_, ids) if ids.len() == 1) && names(e, k));
    assert_eq!((single(0), single(1)), (1, 1), "{:#?}", w.log);
    for k in 0..2 {
        assert_eq!(
            report(&m, k).result,
            TargetResult::Done,
            "t{k}: {:#?}",
            w.log
        );
    }
}

/// change.rs `on_read_back`: a target whose drain was refused as unknown,
/// and which the read back does not find either, left the pool: it is
/// reported vanished, and never enabled.
#[test]
fn a_target_the_read_back_does_not_find_has_vanished() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Drain(_, ids) | Effect::ReadBack(_, ids) => {
                let gone = Error::target_not_found(ids[0].as_str(), None);
                Some(match e {
                    Effect::Drain(..) => Reply::Changed(Err(gone)),
                    _ => Reply::Status(Err(gone)),
                })
            }
            _ => None,
        }),
        10_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert!(matches!(r.result, TargetResult::Vanished { .. }), "{r:?}");
    assert_eq!(r.location, Location::Gone, "{r:?}");
    assert_eq!(
        w.count(|e| matches!(e, Effect::Enable(..))),
        0,
        "{:#?}",
        w.log
    );
}

/// change.rs `on_read_back`: a read back that answers for fewer targets
/// than asked says nothing of them: each is as if unknown, and its drain
/// is undone (put back and verified), never left waiting forever.
#[test]
fn a_read_back_of_the_wrong_length_is_unknown() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    let mut read_backs = 0;
    w.drive(
        &mut m,
        Box::new(move |_, e, _| match e {
            Effect::Drain(_, ids) if ids.contains(&id(0)) => Some(Reply::Changed(Err(
                Error::unavailable("lb", "the drain's answer was lost"),
            ))),
            // The read back after the drain; the one after the put-back
            // is answered as usual.
            Effect::ReadBack(..) if read_backs == 0 => {
                read_backs += 1;
                Some(Reply::Status(Ok(Vec::new())))
            }
            _ => None,
        }),
        10_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert!(matches!(r.result, TargetResult::Failed { .. }), "{r:?}");
    assert_eq!(r.location, Location::InService, "{r:?}");
    assert!(
        w.count(|e| matches!(e, Effect::Enable(..)) && names(e, 0)) > 0,
        "{:#?}",
        w.log
    );
    assert_eq!(w.states[&id(0)].state, TargetState::InService);
}

fn unhealthy() -> crate::target::TargetStatus {
    crate::target::TargetStatus::new(
        TargetState::InService,
        crate::target::Health::Unhealthy,
        None,
    )
}

/// change.rs `on_take_out`: taking two unhealthy targets out again,
/// refused because one is unknown, changed nothing: each is taken out
/// alone, with no read back needed.
#[test]
fn a_batch_take_out_refused_for_one_unknown_target_is_split() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .max_failures(Amount::Count(2))
        .health_timeout(std::time::Duration::from_millis(500))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    let mut enabled = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| match e {
            Effect::Enable(_, ids) => {
                enabled = true;
                for i in ids {
                    w.states.insert(i.clone(), unhealthy());
                }
                Some(Reply::Changed(Ok(())))
            }
            Effect::Drain(_, ids) if enabled && ids.len() > 1 => Some(Reply::Changed(Err(
                Error::target_not_found(ids[1].as_str(), None),
            ))),
            _ => None,
        }),
        20_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(
        w.count(|e| matches!(e, Effect::ReadBack(..))),
        0,
        "{:#?}",
        w.log
    );
    for k in 0..2 {
        let r = report(&m, k);
        assert_eq!(r.location, Location::KeptOut, "t{k}: {r:?}");
    }
}

/// change.rs `on_take_out`: one target whose take-out is refused as
/// unknown is read back, not asked again and again.
#[test]
fn a_take_out_refused_for_one_target_is_read_back() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .health_timeout(std::time::Duration::from_millis(500))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut enabled = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| match e {
            Effect::Enable(..) => {
                enabled = true;
                w.set(0, unhealthy());
                Some(Reply::Changed(Ok(())))
            }
            Effect::Drain(_, ids) if enabled => Some(Reply::Changed(Err(Error::target_not_found(
                ids[0].as_str(),
                None,
            )))),
            _ => None,
        }),
        20_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert!(
        w.count(|e| matches!(e, Effect::ReadBack(..))) > 0,
        "{:#?}",
        w.log
    );
    let r = report(&m, 0);
    assert_eq!(r.location, Location::InService, "{r:?}");
    assert!(
        matches!(
            r.result,
            TargetResult::Failed {
                kept_out: false,
                ..
            }
        ),
        "{r:?}"
    );
}

fn trace(
    k: usize,
    maybe_out: bool,
    finished: Option<crate::journal::Finish>,
) -> crate::journal::Trace {
    crate::journal::Trace {
        target: crate::target::Target::new(id(k)),
        maybe_out,
        out_after_finish: false,
        exec: crate::journal::Interrupted::NotStarted,
        handle: None,
        finished,
    }
}

fn done() -> Option<crate::journal::Finish> {
    Some(crate::journal::Finish {
        stage: crate::phase::Stage::Done,
        failed_at: None,
        location: Location::InService,
        detail: None,
    })
}

fn recover(
    cfg: RolloutConfig,
    listed: &[(usize, crate::target::TargetStatus)],
    traces: Vec<crate::journal::Trace>,
) -> super::machine::Machine {
    let listed: Vec<crate::balancer::ListedTarget> = listed
        .iter()
        .map(|(k, s)| crate::balancer::ListedTarget {
            target: crate::target::Target::new(id(*k)),
            status: s.clone(),
        })
        .collect();
    super::machine::Machine::recover(
        cfg,
        caps(),
        std::time::Duration::from_millis(100),
        false,
        &listed,
        traces,
        10,
        super::machine::Recovery::Resume,
    )
}

/// resume.rs `recover`: a run that had finished a target had done its
/// canary; the resumed run starts whole batches at once.
#[test]
fn a_resumed_run_whose_canary_was_done_starts_whole_batches() {
    use super::regressions::up;
    let cfg = RolloutConfig::builder()
        .canary(true)
        .batch_size(Amount::Count(2))
        .build()
        .expect("valid");
    let mut m = recover(
        cfg,
        &(0..3).map(|k| (k, up())).collect::<Vec<_>>(),
        vec![
            trace(0, false, done()),
            trace(1, false, None),
            trace(2, false, None),
        ],
    );
    let mut w = World::new(3);
    w.drive(&mut m, Box::new(|_, _, _| None), 20_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    let first = w
        .log
        .iter()
        .find_map(|(_, e)| match e {
            Effect::Drain(_, ids) => Some(ids.len()),
            _ => None,
        })
        .expect("a drain");
    assert_eq!(first, 2, "{:#?}", w.log);
}

/// resume.rs `recover`: targets resumed mid-way are a batch of their own,
/// announced, and the next batch has the next number.
#[test]
fn resumed_targets_are_a_batch_and_the_next_batch_follows_it() {
    use super::regressions::{out, up};
    use crate::report::EventKind;
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = recover(
        cfg,
        &[(0, out()), (1, up())],
        vec![trace(0, true, None), trace(1, false, None)],
    );
    let mut started = Vec::new();
    while let Some((_, e)) = m.poll_event() {
        if let EventKind::BatchStarted { index, targets } = e {
            started.push((index, targets));
        }
    }
    assert_eq!(started, vec![(0, vec![id(0)])]);
    let mut w = World::new(2);
    w.set(0, out());
    w.drive(&mut m, Box::new(|_, _, _| None), 20_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(report(&m, 0).batch, Some(0));
    assert_eq!(report(&m, 1).batch, Some(1));
}

/// resume.rs `place`: a target gone from the pool when the run is resumed
/// is reported as the journal finished it, or vanished if it had not
/// finished (never started, or taken out).
#[test]
fn targets_gone_at_resume_are_finished_or_vanished() {
    use super::regressions::up;
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(3))
        .build()
        .expect("valid");
    // Only t3 and t4 are still in the pool; t4 was skipped.
    let skipped = Some(crate::journal::Finish {
        stage: crate::phase::Stage::Skipped,
        failed_at: None,
        location: Location::InService,
        detail: Some("left as found".into()),
    });
    let finish = |stage, failed_at| {
        Some(crate::journal::Finish {
            stage,
            failed_at,
            location: Location::InService,
            detail: Some("as journaled".into()),
        })
    };
    use crate::phase::Stage;
    let m = recover(
        cfg,
        &[(3, up()), (4, up()), (5, up())],
        vec![
            trace(0, false, done()),
            trace(1, false, None),
            trace(2, true, None),
            trace(3, false, None),
            trace(4, false, skipped),
            trace(5, false, finish(Stage::Restored, None)),
            trace(6, false, finish(Stage::Vanished, Some(Stage::Draining))),
        ],
    );
    let mut m = m;
    let mut w = World::new(6);
    w.drive(&mut m, Box::new(|_, _, _| None), 20_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(
        report(&m, 3).result,
        TargetResult::Done,
        "the one left goes on"
    );
    assert_eq!(report(&m, 0).result, TargetResult::Done);
    assert!(
        matches!(report(&m, 4).result, TargetResult::Skipped { .. }),
        "{:?}",
        report(&m, 4)
    );
    assert!(
        matches!(report(&m, 5).result, TargetResult::Restored { .. }),
        "{:?}",
        report(&m, 5)
    );
    assert!(
        matches!(&report(&m, 6).result, TargetResult::Vanished { reason, .. } if reason == "as journaled"),
        "{:?}",
        report(&m, 6)
    );
    for k in [1, 2] {
        let r = report(&m, k);
        assert!(
            matches!(&r.result, TargetResult::Vanished { reason, .. } if reason.contains("when the run was recovered")),
            "t{k}: {r:?}"
        );
    }
}

fn kept_out(failed_at: crate::phase::Stage) -> Option<crate::journal::Finish> {
    Some(crate::journal::Finish {
        stage: crate::phase::Stage::Failed,
        failed_at: Some(failed_at),
        location: Location::KeptOut,
        detail: Some("boom".into()),
    })
}

/// resume.rs `place`: a target kept out whose maintenance a recovery
/// could not follow to its end is waited for again; one kept out after a
/// drain that timed out (no maintenance) stays kept out, never maintained.
#[test]
fn a_resumed_kept_out_target_is_waited_for_only_if_its_maintenance_is_open() {
    use super::regressions::out;
    use crate::executor::ExecHandle;
    use crate::journal::Interrupted;
    use crate::phase::Stage;
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(2))
        .build()
        .expect("valid");
    let mut open = trace(0, true, kept_out(Stage::Executing));
    open.exec = Interrupted::Unknown;
    open.handle = Some(ExecHandle(serde_json::json!({ "pid": 1 })));
    let timed_out = trace(1, true, kept_out(Stage::Draining));
    let mut m = recover(cfg, &[(0, out()), (1, out())], vec![open, timed_out]);
    let mut w = World::new(2);
    w.set(0, out());
    w.set(1, out());
    w.drive(&mut m, Box::new(|_, _, _| None), 20_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(
        w.count(|e| matches!(e, Effect::Recover(..)) && names(e, 0)),
        1,
        "{:#?}",
        w.log
    );
    assert_eq!(
        w.count(|e| matches!(e, Effect::Execute(..) | Effect::Recover(..)) && names(e, 1)),
        0,
        "{:#?}",
        w.log
    );
    assert_eq!(report(&m, 1).location, Location::KeptOut);
}

/// resume.rs `place`: a target the run never touched, found out of
/// rotation at resume (someone else took it out), is left as found and
/// never maintained; the others go on.
#[test]
fn a_target_found_out_at_resume_that_the_run_never_touched_is_left_as_found() {
    use super::regressions::{out, up};
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = recover(
        cfg,
        &[(0, out()), (1, up())],
        vec![trace(0, false, None), trace(1, false, None)],
    );
    let mut w = World::new(2);
    w.set(0, out());
    w.drive(&mut m, Box::new(|_, _, _| None), 20_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(
        w.count(|e| !matches!(e, Effect::Status(..) | Effect::List(..)) && names(e, 0)),
        0,
        "{:#?}",
        w.log
    );
    assert!(
        matches!(report(&m, 0).result, TargetResult::Skipped { .. }),
        "{:?}",
        report(&m, 0)
    );
    assert_eq!(w.states[&id(0)].state, TargetState::OutOfService);
    assert_eq!(report(&m, 1).result, TargetResult::Done);
}

fn exec_trace(k: usize, exec: crate::journal::Interrupted) -> crate::journal::Trace {
    crate::journal::Trace {
        exec,
        ..trace(k, true, None)
    }
}

/// resume.rs `place`: what a resumed run does with a target it had out,
/// by what its journal says of the maintenance and what the balancer shows.
#[test]
fn a_resumed_target_continues_from_what_its_journal_and_the_balancer_say() {
    use super::regressions::{out, up};
    use crate::journal::Interrupted;
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(4))
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = recover(
        cfg,
        &[(0, up()), (1, out()), (2, up()), (3, out())],
        vec![
            // Only drained, and back in service (a reload): starts again.
            exec_trace(0, Interrupted::NotStarted),
            // Maintained, not yet put back.
            exec_trace(1, Interrupted::Succeeded),
            // Maintained and already put back.
            exec_trace(2, Interrupted::Succeeded),
            // Its maintenance failed: kept out.
            exec_trace(3, Interrupted::Failed("boom".into())),
        ],
    );
    let mut w = World::new(4);
    w.set(1, out());
    w.set(3, out());
    w.drive(&mut m, Box::new(|_, _, _| None), 20_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    for k in 0..3 {
        assert_eq!(
            report(&m, k).result,
            TargetResult::Done,
            "t{k}: {:#?}",
            w.log
        );
    }
    let enables = |k: usize| w.count(|e| matches!(e, Effect::Enable(..)) && names(e, k));
    assert_eq!(
        (enables(0), enables(1), enables(2)),
        (1, 1, 0),
        "{:#?}",
        w.log
    );
    assert_eq!(
        w.count(|e| matches!(e, Effect::Probe(..))),
        0,
        "no probe configured"
    );
    let r3 = report(&m, 3);
    assert_eq!(r3.location, Location::KeptOut, "{r3:?}");
    assert!(matches!(r3.result, TargetResult::Failed { .. }), "{r3:?}");
    assert_eq!(w.states[&id(3)].state, TargetState::OutOfService);
    let reload = "the journal says the run had it out, the balancer shows it in service";
    let noted = |k: usize| report(&m, k).notes.iter().any(|n| n.contains(reload));
    assert_eq!(
        (noted(0), noted(1), noted(2), noted(3)),
        (true, false, true, false)
    );
}

/// resume.rs `after_failure`: under on_failure = restore a target whose
/// maintenance failed before the crash is put back.
#[test]
fn a_resumed_failed_maintenance_is_put_back_under_restore() {
    use super::regressions::out;
    use crate::journal::Interrupted;
    let cfg = RolloutConfig::builder()
        .on_failure(crate::config::OnFailure::Restore)
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = recover(
        cfg,
        &[(0, out())],
        vec![exec_trace(0, Interrupted::Failed("boom".into()))],
    );
    let mut w = World::new(1);
    w.set(0, out());
    w.drive(&mut m, Box::new(|_, _, _| None), 20_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(
        w.count(|e| matches!(e, Effect::Enable(..))),
        1,
        "{:#?}",
        w.log
    );
    let r = report(&m, 0);
    assert_eq!(r.location, Location::InService, "{r:?}");
    assert!(matches!(r.result, TargetResult::Failed { .. }), "{r:?}");
}

/// resume.rs `place_finished`: a failed target the journal left in
/// service (its drain never applied) is not watched by the resumed run:
/// nothing takes it out.
#[test]
fn a_failed_target_journaled_in_service_is_not_watched_after_resume() {
    use super::regressions::up;
    use crate::phase::Stage;
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let refused = Some(crate::journal::Finish {
        stage: Stage::Failed,
        failed_at: Some(Stage::Draining),
        location: Location::InService,
        detail: Some("the drain did not apply".into()),
    });
    let mut m = recover(
        cfg,
        &[(0, up()), (1, up())],
        vec![trace(0, false, refused), trace(1, false, None)],
    );
    let mut w = World::new(2);
    w.drive(&mut m, Box::new(|_, _, _| None), 20_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(
        w.count(|e| matches!(e, Effect::Drain(..) | Effect::Disable(..)) && names(e, 0)),
        0,
        "{:#?}",
        w.log
    );
    assert_eq!(report(&m, 1).result, TargetResult::Done);
}

/// advance.rs `advance`: with batches, a target whose probe passed waits
/// for the rest of its batch (here a probe that passes only on its second
/// try) and the batch is put back together.
#[test]
fn a_batch_is_put_back_together_after_its_slowest_probe() {
    use super::regressions::up;
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .build()
        .expect("valid");
    let listed: Vec<crate::balancer::ListedTarget> = (0..2)
        .map(|k| crate::balancer::ListedTarget {
            target: crate::target::Target::new(id(k)),
            status: up(),
        })
        .collect();
    let mut m = super::machine::Machine::new(
        cfg,
        caps(),
        std::time::Duration::from_millis(100),
        true,
        &listed,
        "survivors",
    )
    .expect("machine");
    let mut w = World::new(2);
    let mut t1_probes = 0;
    w.drive(
        &mut m,
        Box::new(move |_, e, _| match e {
            Effect::Probe(_, t) if t.id == id(1) => {
                t1_probes += 1;
                Some(Reply::Probed(Ok(if t1_probes == 1 {
                    crate::probe::ProbeVerdict::Fail("not yet".into())
                } else {
                    crate::probe::ProbeVerdict::Pass
                })))
            }
            _ => None,
        }),
        20_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let enables: Vec<usize> = w
        .log
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Enable(_, ids) => Some(ids.len()),
            _ => None,
        })
        .collect();
    assert_eq!(enables, [2], "{:#?}", w.log);
    for k in 0..2 {
        assert_eq!(report(&m, k).result, TargetResult::Done, "t{k}");
    }
}

/// advance.rs `advance`: with batches, a target healthy first warms up
/// with the rest of its batch, once all of it is healthy: its warmup (from
/// its own health) lasts until its slowest partner's health plus the
/// warmup.
#[test]
fn a_batch_warms_up_together_once_all_of_it_is_healthy() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .warmup(std::time::Duration::from_millis(500))
        .health_timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("valid");
    // A second batch follows, so the first warms up.
    let mut m = machine_with(cfg, 4, 100, caps());
    let mut w = World::new(4);
    let mut enabled_at: Option<u64> = None;
    w.drive(
        &mut m,
        Box::new(move |now, e, w| {
            match e {
                Effect::Enable(..) => {
                    enabled_at.get_or_insert(now);
                }
                // t1 becomes healthy 2 s after its enable.
                Effect::Status(_, ids) if ids.contains(&id(1)) => {
                    if let Some(at) = enabled_at {
                        let health = if now < at + 2_000 {
                            crate::target::Health::Unknown
                        } else {
                            crate::target::Health::Healthy
                        };
                        w.states.insert(
                            id(1),
                            crate::target::TargetStatus::new(TargetState::InService, health, None),
                        );
                    }
                }
                _ => {}
            }
            None
        }),
        20_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let warm = |k: usize| report(&m, k).timings.warmup.expect("warmed");
    assert!(
        warm(0) >= std::time::Duration::from_millis(2_000),
        "t0 warmed {:?}, t1 {:?}",
        warm(0),
        warm(1)
    );
    assert!(
        warm(1) < std::time::Duration::from_millis(1_000),
        "{:?}",
        warm(1)
    );
}

/// advance.rs `turn`: a drain undone (it failed, and applied) puts its
/// target back at once, without waiting for the rest of its batch.
#[test]
fn an_undone_drain_puts_its_target_back_without_waiting_for_its_batch() {
    use super::regressions::draining;
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    w.drive(
        &mut m,
        Box::new(|now, e, w| match e {
            // The batch's drain is refused for an unknown id: each alone.
            Effect::Drain(_, ids) if ids.len() > 1 => Some(Reply::Changed(Err(
                Error::target_not_found(ids[1].as_str(), None),
            ))),
            // t0's own drain applies, then reports an error.
            Effect::Drain(_, ids) if ids[0] == id(0) => {
                w.set(0, super::regressions::out());
                Some(Reply::Changed(Err(Error::unavailable("lb", "lost"))))
            }
            // t1 drains for a second.
            Effect::Drain(_, ids) if ids[0] == id(1) => {
                w.set(1, draining(1));
                Some(Reply::Changed(Ok(())))
            }
            Effect::Status(..)
                if now > 1_000 && w.states[&id(1)].state == TargetState::Draining =>
            {
                w.set(1, super::regressions::out());
                None
            }
            _ => None,
        }),
        20_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let at = |f: &dyn Fn(&Effect) -> bool| w.log.iter().find(|(_, e)| f(e)).map(|(t, _)| *t);
    let t0_back = at(&|e| matches!(e, Effect::Enable(..)) && names(e, 0)).expect("t0 put back");
    let t1_drained =
        at(&|e| matches!(e, Effect::Execute(..)) && names(e, 1)).expect("t1 maintained");
    assert!(
        t0_back < t1_drained,
        "t0 back at {t0_back}, t1 maintained at {t1_drained}: {:#?}",
        w.log
    );
    assert_eq!(w.states[&id(0)].state, TargetState::InService);
}

/// zones.rs `zone_budgets`: a zone's healthy targets are those that serve
/// *and* that this run counts as serving. t0 failed and is kept out; a
/// reload puts it back just before the next batch is planned, so the
/// listing shows it in service. It does not count for its zone: with
/// `zone_min_healthy = 1`, zone a (t0, t1) cannot spare t1, which is never
/// taken out (zone b, t2 and t3, is maintained as usual).
#[test]
fn a_kept_out_target_the_listing_shows_back_does_not_count_for_its_zone() {
    let zones = (0..4)
        .map(|k| (id(k), if k < 2 { "a" } else { "b" }.to_owned()))
        .collect();
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .min_healthy(Amount::Count(0))
        .zone_min_healthy(Amount::Count(1))
        .zones(zones)
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 4, 100, caps());
    let mut w = World::new(4);
    let mut failed = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| {
            match e {
                Effect::Execute(_, ts) if ts[0].id == id(0) => {
                    failed = true;
                    return Some(Reply::Executed(Ok(vec![
                        crate::executor::ExecOutcome::failure(
                            id(0),
                            super::regressions::ms(1),
                            "boom",
                        ),
                    ])));
                }
                // The next batch's listing: a reload has put t0 back.
                Effect::List(_) if failed => w.set(0, super::regressions::up()),
                _ => {}
            }
            None
        }),
        600_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(
        w.count(|e| matches!(e, Effect::Drain(..) | Effect::Disable(..)) && names(e, 1)),
        0,
        "t1 was taken out while t0, kept out, left zone a without a healthy target: {:#?}",
        w.log
    );
    let r = report(&m, 0);
    assert!(
        matches!(r.result, TargetResult::Failed { kept_out: true, .. }),
        "{r:?}"
    );
}

/// mod.rs `lease_allows`: with a lease that has less time left than a
/// step needs, nothing is planned (no listing, no drain) until it is
/// renewed.
#[test]
fn nothing_starts_while_the_lease_has_less_left_than_a_step_needs() {
    use super::machine::{Input, LeaseNews};
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    // Held until 5 s; a step needs 10 s of it.
    m.set_lease(
        super::regressions::ms(5_000),
        super::regressions::ms(10_000),
    );
    let starts = |e: &[Effect]| {
        e.iter().any(|e| {
            matches!(
                e,
                Effect::List(_) | Effect::Preflight(..) | Effect::Drain(..)
            )
        })
    };
    let first = m.handle(super::regressions::ms(0), Input::Tick);
    assert!(!starts(&first), "{first:?}");
    // Renewed until 60 s: the run goes on.
    let renewed = m.handle(
        super::regressions::ms(1),
        Input::Lease(LeaseNews::Until(super::regressions::ms(60_000))),
    );
    assert!(starts(&renewed), "{renewed:?}");
}

// Session 11: observe.rs.

/// The times (ms after the drain's answer) of the status reads of a lone
/// target held draining, with one request in flight, for `hold_ms` after
/// its drain, with a poll interval of 100 ms.
fn drain_looks(caps: crate::target::Capabilities, hold_ms: u64) -> Vec<u64> {
    use super::regressions::{draining, ms};
    let cfg = RolloutConfig::builder()
        .drain_timeout(ms(60_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps);
    let mut w = World::new(1);
    w.drive(
        &mut m,
        Box::new(move |now, e, w| match e {
            Effect::Status(..) if drain_time(w).is_some_and(|d| now < d + hold_ms) => {
                Some(Reply::Status(Ok(vec![draining(1)])))
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(report(&m, 0).result, TargetResult::Done);
    let d = drain_time(&w).expect("drained");
    w.log
        .iter()
        .filter(|(t, e)| *t > d && *t <= d + hold_ms + 1 && matches!(e, Effect::Status(..)))
        .map(|(t, _)| t - d)
        .collect()
}

/// observe.rs `ramp` (a balancer whose status costs, as ELBv2's): a
/// draining target is read at once after its drain, then at 1/10, 1/4 and
/// 1/2 of the poll interval, then on the fixed-rate grid, one interval
/// apart; each read is answered 1 ms after it is sent.
#[test]
fn a_drain_is_looked_at_quickly_then_on_the_poll_grid() {
    let mut want = vec![1, 11, 26, 51];
    want.extend((1..=10).map(|k| k * 100 + 1));
    assert_eq!(drain_looks(caps(), 1_000), want);
}

/// observe.rs `ramp` with [`Capabilities::cheap_status`] (HAProxy, NGINX):
/// a draining target is read every tenth of the poll interval for as long
/// as its drain lasts, never back to back.
#[test]
fn a_cheap_status_is_read_every_tenth_of_the_interval_while_a_target_drains() {
    let want: Vec<u64> = (0..=100).map(|k| k * 10 + 1).collect();
    assert_eq!(drain_looks(caps().with_cheap_status(true), 1_000), want);
}

/// When the (first) drain was answered.
fn drain_time(w: &World) -> Option<u64> {
    w.log
        .iter()
        .find(|(_, e)| matches!(e, Effect::Drain(..)))
        .map(|&(t, _)| t)
}

/// Drives `m` like [`World::drive`], but each effect is answered `delay`
/// ms after it was sent (effects in flight together, answered in the order
/// they are due); `hook` scripts exceptions. Returns each effect with the
/// time it was sent; `w.log` has the time each was answered.
fn drive_timed(
    m: &mut super::machine::Machine,
    w: &mut World,
    delay: impl FnMut(u64, &Effect, &World) -> u64,
    hook: impl FnMut(u64, &Effect, &mut World) -> Option<Reply>,
) -> Vec<(u64, Effect)> {
    drive_cancelled(m, w, delay, hook, &std::cell::Cell::new(false))
}

/// [`drive_timed`], and the run is cancelled right before the answer during
/// which `cancel` was set reaches it.
fn drive_cancelled(
    m: &mut super::machine::Machine,
    w: &mut World,
    mut delay: impl FnMut(u64, &Effect, &World) -> u64,
    mut hook: impl FnMut(u64, &Effect, &mut World) -> Option<Reply>,
    cancel: &std::cell::Cell<bool>,
) -> Vec<(u64, Effect)> {
    use super::machine::Input;
    use super::regressions::ms;
    let mut sent = Vec::new();
    let mut pending: Vec<(u64, Effect)> = Vec::new();
    let mut now = 0u64;
    let mut effects = m.handle(ms(0), Input::Tick);
    let mut steps = 0;
    while now < 60_000 {
        steps += 1;
        assert!(steps < 100_000, "the machine spins at {now} ms");
        for e in effects.drain(..) {
            let d = delay(now, &e, w);
            sent.push((now, e.clone()));
            pending.push((now + d, e));
        }
        let due = pending.iter().map(|(t, _)| *t).min();
        let tick = m.poll_timeout().map(|t| t.as_millis() as u64);
        if let Some(d) = due.filter(|&d| tick.is_none_or(|t| d <= t)) {
            let k = pending.iter().position(|(t, _)| *t == d).expect("due");
            let (t, e) = pending.remove(k);
            now = t;
            let r = hook(now, &e, w).unwrap_or_else(|| w.answer(&e));
            w.log.push((now, e.clone()));
            effects = if cancel.take() {
                m.handle(ms(now), Input::Cancel)
            } else {
                Vec::new()
            };
            effects.extend(m.handle(ms(now), Input::Reply(e.call(), r)));
        } else if let Some(t) = tick {
            now = now.max(t);
            effects = m.handle(ms(now), Input::Tick);
        } else {
            break;
        }
    }
    sent
}

/// Drives `m` (each answer 1 ms after its call) and cancels the run right
/// before the answer to the first effect `at` picks reaches it.
fn cancel_at(m: &mut super::machine::Machine, w: &mut World, at: impl Fn(&Effect) -> bool) {
    let cancel = std::cell::Cell::new(false);
    let mut once = true;
    drive_cancelled(
        m,
        w,
        |_, _, _| 1,
        |_, e, _| {
            if at(e) && std::mem::take(&mut once) {
                cancel.set(true);
            }
            None
        },
        &cancel,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
}

/// After [`cancel_at`]: the run ended cancelled, with no effect `none`
/// picks and nothing drained or disabled.
fn cancelled_without(m: &super::machine::Machine, w: &World, none: impl Fn(&Effect) -> bool) {
    assert_eq!(m.outcome(), crate::report::Outcome::Cancelled);
    assert_eq!(w.count(none), 0, "{:#?}", w.log);
    assert_eq!(changes(w), 0, "{:#?}", w.log);
}

/// observe.rs `maybe_poll`: polls keep to a fixed-rate grid from the first
/// one. A read that takes longer than two intervals skips the ticks it
/// missed (the next regular poll is one interval after the late one, never
/// back to back). Here the first read after the drain takes 250 ms, every
/// other answer 1 ms, and the target drains for 1 s (poll interval 100 ms,
/// a status that costs).
#[test]
fn a_slow_status_read_skips_the_ticks_it_missed_and_keeps_the_grid() {
    use super::regressions::{draining, ms};
    let cfg = RolloutConfig::builder()
        .drain_timeout(ms(60_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut slow = true;
    let sent = drive_timed(
        &mut m,
        &mut w,
        |_, e, w| match e {
            // The first read after the drain is slow.
            Effect::Status(..)
                if w.count(|e| matches!(e, Effect::Drain(..))) > 0 && std::mem::take(&mut slow) =>
            {
                250
            }
            _ => 1,
        },
        |now, e, w| match e {
            Effect::Status(..) if drain_time(w).is_some_and(|d| now < d + 1_000) => {
                Some(Reply::Status(Ok(vec![draining(1)])))
            }
            _ => None,
        },
    );
    let d = drain_time(&w).expect("drained");
    let reads_after_drain: Vec<u64> = sent
        .iter()
        .filter(|(t, e)| *t >= d && matches!(e, Effect::Status(..)))
        .map(|(t, _)| t - d)
        .collect();
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(report(&m, 0).result, TargetResult::Done);
    // At once after the drain (slow); its answer at 250 ms is past the
    // first quick look (10 ms): one look then; then the grid, whose ticks
    // at 100 and 200 ms were missed: 350, 450, … until the drain ends.
    let mut want = vec![0, 250];
    want.extend((0..8).map(|k| 350 + k * 100));
    // The read that sees it drained, then the reads of its health.
    let during: Vec<u64> = reads_after_drain
        .iter()
        .copied()
        .take_while(|&t| t <= 1_050)
        .collect();
    assert_eq!(during, want, "all reads: {reads_after_drain:?}");
}

/// observe.rs `on_poll`: a poll answered with fewer statuses than asked
/// says nothing of the draining target: the read failed (the run stops on
/// the balancer's fault, the target is put back, never maintained).
#[test]
fn a_poll_answered_with_the_wrong_length_is_a_failed_read() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut short = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| match e {
            Effect::Status(..) if !short && w.count(|e| matches!(e, Effect::Drain(..))) > 0 => {
                short = true;
                Some(Reply::Status(Ok(Vec::new())))
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    match &r.result {
        TargetResult::Failed { reason, .. } => {
            assert!(reason.contains("0 entries for 1 targets"), "{reason}")
        }
        other => panic!("{other:?}: {:#?}", w.log),
    }
    assert_eq!(w.count(|e| matches!(e, Effect::Execute(..))), 0);
    assert_eq!(w.states[&id(0)].state, TargetState::InService);
}

/// observe.rs `on_poll`: a target out because its put-back failed (not
/// kept out by the run's decision) that the run's last look sees back in
/// service is reported in service, with a note saying something else put
/// it back.
#[test]
fn a_stranded_target_seen_back_is_reported_in_service() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut refused = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| match e {
            Effect::Enable(..) if !refused => {
                refused = true;
                Some(Reply::Changed(Err(Error::unavailable(
                    "lb",
                    "enable refused",
                ))))
            }
            // After the read back showed it out: an operator puts it back.
            Effect::Status(..) if refused && w.count(|e| matches!(e, Effect::ReadBack(..))) > 0 => {
                w.set(0, super::regressions::up());
                None
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert_eq!(r.location, Location::InService, "{r:?}: {:#?}", w.log);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("something else put it back")),
        "{r:?}"
    );
    // Never taken out again: its put-back failed, the run did not keep it out.
    assert_eq!(
        w.count(|e| matches!(e, Effect::Drain(..) | Effect::Disable(..))),
        1
    );
}

/// observe.rs `on_poll`: a draining target put back in service by the
/// balancer while requests still run on it (a reload) is drained again at
/// the poll that sees it, not once its requests have ended.
#[test]
fn a_drain_lost_while_requests_run_is_drained_again_at_once() {
    use super::regressions::{draining, ms};
    let cfg = RolloutConfig::builder()
        .drain_timeout(ms(60_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut polls = 0;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| {
            let drains = w.count(|e| matches!(e, Effect::Drain(..)));
            match e {
                Effect::Status(..) if drains == 1 => {
                    polls += 1;
                    Some(Reply::Status(Ok(vec![if polls < 3 {
                        draining(2)
                    } else {
                        // Back in service, and busy.
                        crate::target::TargetStatus::new(
                            TargetState::InService,
                            crate::target::Health::Healthy,
                            Some(5),
                        )
                    }])))
                }
                _ => None,
            }
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert_eq!(r.result, TargetResult::Done, "{:#?}", w.log);
    assert_eq!(r.drain_lost.len(), 1, "{r:?}");
    // Drained again right after the read that saw it back.
    let third = w
        .log
        .iter()
        .filter(|(_, e)| matches!(e, Effect::Status(..)))
        .nth(3)
        .map(|&(t, _)| t)
        .expect("three polls after the drain");
    let again = w
        .log
        .iter()
        .filter(|(_, e)| matches!(e, Effect::Drain(..)))
        .nth(1)
        .map(|&(t, _)| t)
        .expect("drained again");
    assert_eq!(again, third + 1, "{:#?}", w.log);
}

/// observe.rs `finished_out`: a target kept out after its failed
/// maintenance whose every later status read fails is looked at again
/// before the run ends (each of the run's last looks), and then reported
/// in a state the run could not read, with why: never "kept out" on a read
/// that did not happen.
#[test]
fn a_kept_out_target_whose_reads_fail_is_reported_unknown_after_the_last_looks() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut failed = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, _| match e {
            Effect::Execute(..) => {
                failed = true;
                Some(boom())
            }
            Effect::Status(..) if failed => Some(refused()),
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert_eq!(r.location, Location::Unknown, "{r:?}");
    assert!(
        r.notes.iter().any(
            |n| n.contains("the last status read of it failed") && n.contains("status refused")
        ),
        "{r:?}"
    );
    // The run ends right after its only target: its last looks, each
    // failing, are the only reads after the maintenance.
    let reads = w.count(|e| matches!(e, Effect::Status(..)));
    let before = 2; // the read before the drain and the one that saw it drained
    assert_eq!(
        reads - before,
        usize::from(super::machine::FINAL_LOOKS),
        "{:#?}",
        w.log
    );
}

/// observe.rs `watch`: a target the balancer no longer knows in the middle
/// of its maintenance is not polled again (its enable will tell); the
/// maintenance (2 s here) goes on without a read every interval.
#[test]
fn a_target_gone_mid_maintenance_is_not_polled_again() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let executing = std::cell::Cell::new(false);
    let sent = drive_timed(
        &mut m,
        &mut w,
        |_, e, _| match e {
            Effect::Execute(..) => {
                executing.set(true);
                2_000
            }
            _ => 1,
        },
        |_, e, _| match e {
            Effect::Execute(..) => {
                executing.set(false);
                None
            }
            Effect::Status(..) if executing.get() => Some(Reply::Status(Err(
                Error::target_not_found(id(0).as_str(), None),
            ))),
            _ => None,
        },
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let exec = sent
        .iter()
        .find(|(_, e)| matches!(e, Effect::Execute(..)))
        .map(|&(t, _)| t)
        .expect("maintained");
    let during = sent
        .iter()
        .filter(|(t, e)| *t > exec && *t < exec + 2_000 && matches!(e, Effect::Status(..)))
        .count();
    assert_eq!(during, 1, "{sent:#?}");
}

/// observe.rs `on_poll`: a target still in service at the first read after
/// its drain (a balancer that applies the drain a moment later) has not
/// lost its drain: it is waited for, not drained again nor reported so.
#[test]
fn a_drain_not_yet_applied_at_the_first_read_is_waited_for() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut reads = 0;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| match e {
            Effect::Status(..) if w.count(|e| matches!(e, Effect::Drain(..))) == 1 && reads < 2 => {
                reads += 1;
                Some(Reply::Status(Ok(vec![crate::target::TargetStatus::new(
                    TargetState::InService,
                    crate::target::Health::Healthy,
                    Some(3),
                )])))
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert_eq!(r.result, TargetResult::Done, "{:#?}", w.log);
    assert!(r.drain_lost.is_empty(), "{r:?}");
    assert_eq!(
        w.count(|e| matches!(e, Effect::Drain(..))),
        1,
        "{:#?}",
        w.log
    );
}

/// observe.rs `on_poll`: a target disabled hard after its drain (sealed)
/// that the read after the disable shows back in service with requests
/// (a reload between the two) lost its drain: it is disabled again at
/// once, and maintained only once seen out.
#[test]
fn a_sealed_target_seen_back_in_service_is_disabled_again() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps().with_hard_disable(true));
    let mut w = World::new(1);
    let mut back = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| match e {
            Effect::Status(..) if !back && w.count(|e| matches!(e, Effect::Disable(..))) == 1 => {
                back = true;
                w.set(
                    0,
                    crate::target::TargetStatus::new(
                        TargetState::InService,
                        crate::target::Health::Healthy,
                        Some(2),
                    ),
                );
                None
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert_eq!(r.result, TargetResult::Done, "{:#?}", w.log);
    assert_eq!(r.drain_lost.len(), 1, "{r:?}");
    assert_eq!(
        w.count(|e| matches!(e, Effect::Disable(..))),
        2,
        "{:#?}",
        w.log
    );
    assert!(
        w.executed_while
            .iter()
            .all(|(_, s)| *s != TargetState::InService),
        "{:?}",
        w.executed_while
    );
}

/// observe.rs `on_poll`: with a hard disable after the drain, the drain's
/// time in the report is the whole wait: until drained, plus the read
/// after the disable.
#[test]
fn a_sealed_drains_time_counts_the_wait_before_the_seal() {
    use super::regressions::{draining, ms};
    let cfg = RolloutConfig::builder()
        .drain_timeout(ms(60_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps().with_hard_disable(true));
    let mut w = World::new(1);
    w.drive(
        &mut m,
        Box::new(|now, e, w| match e {
            Effect::Status(..) if drain_time(w).is_some_and(|d| now < d + 500) => {
                Some(Reply::Status(Ok(vec![draining(1)])))
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(w.count(|e| matches!(e, Effect::Disable(..))), 1);
    let drain = report(&m, 0).timings.drain.expect("timed");
    assert!(drain >= ms(500) && drain < ms(700), "{drain:?}");
}

/// observe.rs `on_poll`: a drain ended by its timeout under
/// `on_drain_timeout = proceed` is reported cut short.
#[test]
fn a_drain_ended_by_its_timeout_is_reported_cut_short() {
    use super::regressions::{draining, ms};
    let cfg = RolloutConfig::builder()
        .drain_timeout(ms(300))
        .on_drain_timeout(crate::config::OnDrainTimeout::Proceed)
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    w.drive(
        &mut m,
        Box::new(|_, e, w| match e {
            Effect::Status(..)
                if w.count(|e| matches!(e, Effect::Drain(..))) > 0
                    && w.count(|e| matches!(e, Effect::Execute(..))) == 0 =>
            {
                Some(Reply::Status(Ok(vec![draining(1)])))
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert_eq!(r.result, TargetResult::Done, "{r:?}");
    assert!(r.drain_cut_short, "{r:?}");
}

/// A status read the balancer refuses.
fn refused() -> Reply {
    Reply::Status(Err(Error::unavailable("lb", "status refused")))
}

/// t0's maintenance failed ("boom").
fn boom() -> Reply {
    Reply::Executed(Ok(vec![crate::executor::ExecOutcome::failure(
        id(0),
        super::regressions::ms(1),
        "boom",
    )]))
}

fn in_service(health: crate::target::Health, conns: u64) -> crate::target::TargetStatus {
    crate::target::TargetStatus::new(TargetState::InService, health, Some(conns))
}

fn changes(w: &World) -> usize {
    w.count(|e| matches!(e, Effect::Drain(..) | Effect::Disable(..)))
}

/// observe.rs `drain_lost`: a target kept out after its drain timed out
/// (never sealed) that a reload puts back is taken out hard (disabled),
/// as every target the run keeps out.
#[test]
fn a_kept_out_target_put_back_is_disabled_again_not_drained() {
    use super::regressions::{draining, ms};
    let cfg = RolloutConfig::builder()
        .drain_timeout(ms(300))
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps().with_hard_disable(true));
    let mut w = World::new(1);
    let mut late_reads = 0;
    w.drive(
        &mut m,
        Box::new(move |now, e, w| match e {
            Effect::Status(..) if changes(w) == 1 => {
                let d = drain_time(w).expect("drained");
                if now >= d + 300 {
                    late_reads += 1;
                }
                if late_reads <= 1 {
                    Some(Reply::Status(Ok(vec![draining(1)])))
                } else {
                    // Failed and kept out: a reload puts it back.
                    w.set(0, super::regressions::up());
                    None
                }
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert!(
        matches!(r.result, TargetResult::Failed { kept_out: true, .. }),
        "{r:?}"
    );
    assert_eq!(r.drain_lost.len(), 1, "{r:?}");
    assert_eq!(
        w.count(|e| matches!(e, Effect::Drain(..))),
        1,
        "{:#?}",
        w.log
    );
    assert_eq!(
        w.count(|e| matches!(e, Effect::Disable(..))),
        1,
        "{:#?}",
        w.log
    );
}

/// observe.rs `on_redrain`: a target kept out after failing its health
/// check, whose take-out failed and was read back in service, is taken out
/// by the guard; once it is out, a report whose last reads failed says
/// "unknown", never "in service".
#[test]
fn a_kept_out_target_taken_out_by_the_guard_is_not_reported_in_service() {
    use super::regressions::ms;
    use crate::target::Health;
    let cfg = RolloutConfig::builder()
        .health_timeout(ms(300))
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    w.drive(
        &mut m,
        Box::new(move |_, e, w| {
            let enabled = w.count(|e| matches!(e, Effect::Enable(..))) > 0;
            match e {
                Effect::Status(..) if enabled && changes(w) == 1 => {
                    Some(Reply::Status(Ok(vec![in_service(Health::Unhealthy, 0)])))
                }
                // The take-out after the failed health check fails.
                Effect::Drain(..) if enabled && changes(w) == 1 => Some(Reply::Changed(Err(
                    Error::unavailable("lb", "take-out refused"),
                ))),
                // Taken out again by the guard: every later read fails.
                Effect::Status(..) if enabled && changes(w) >= 3 => Some(refused()),
                _ => None,
            }
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert_eq!(changes(&w), 3, "{:#?}", w.log);
    assert_eq!(r.drain_lost.len(), 1, "{r:?}");
    assert_eq!(w.states[&id(0)].state, TargetState::OutOfService);
    assert_eq!(r.location, Location::Unknown, "{r:?}");
}

/// observe.rs `on_redrain`: a target whose drain was lost and taken again
/// before its maintenance is still watched during its maintenance (2 s):
/// a reload then is caught, and it is taken out again.
#[test]
fn a_target_drained_again_is_still_watched_during_its_maintenance() {
    use super::regressions::draining;
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let executing = std::cell::Cell::new(false);
    let mut reads = 0;
    drive_timed(
        &mut m,
        &mut w,
        |_, e, _| match e {
            Effect::Execute(..) => {
                executing.set(true);
                2_000
            }
            _ => 1,
        },
        |_, e, w| match e {
            Effect::Execute(..) => {
                executing.set(false);
                None
            }
            // Draining, then back in service with requests (lost once).
            Effect::Status(..) if changes(w) == 1 => {
                reads += 1;
                Some(Reply::Status(Ok(vec![if reads < 2 {
                    draining(1)
                } else {
                    in_service(crate::target::Health::Healthy, 2)
                }])))
            }
            // During the maintenance, a reload puts it back.
            Effect::Status(..) if executing.get() && changes(w) == 2 => {
                w.set(0, super::regressions::up());
                None
            }
            _ => None,
        },
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert_eq!(r.drain_lost.len(), 2, "{r:?}: {:#?}", w.log);
    assert_eq!(changes(&w), 3, "{:#?}", w.log);
}

/// observe.rs `poll_failed`: a failed status read of a draining target
/// stops the run (the balancer cannot be read): the next target is never
/// drained.
#[test]
fn a_failed_read_while_draining_stops_the_run() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(2))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    w.drive(
        &mut m,
        Box::new(|_, e, w| match e {
            // t0's reads while it drains fail.
            Effect::Status(_, ids)
                if changes(w) == 1
                    && ids.contains(&id(0))
                    && w.count(|e| matches!(e, Effect::Enable(..))) == 0 =>
            {
                Some(refused())
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    // t0 drained, then put back; t1 never drained.
    assert_eq!(changes(&w), 1, "{:#?}", w.log);
    assert!(
        matches!(m.outcome(), crate::report::Outcome::Aborted { .. }),
        "{:#?}",
        w.log
    );
}

/// observe.rs `poll_failed`: a failed read right after the enable leaves
/// the target's health unknown: it fails at its enable and is kept out
/// (`on_failure = keep_out`).
#[test]
fn a_failed_read_after_the_enable_fails_the_target() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut failed = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| match e {
            Effect::Status(..) if !failed && w.count(|e| matches!(e, Effect::Enable(..))) > 0 => {
                failed = true;
                Some(refused())
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    match &r.result {
        TargetResult::Failed {
            reason, kept_out, ..
        } => {
            assert!(
                reason.contains("status after the enable failed"),
                "{reason}"
            );
            assert!(kept_out, "{r:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.states[&id(0)].state, TargetState::OutOfService);
}

/// observe.rs `poll_failed`: under `on_failure = restore`, a failed target
/// put back whose read after the enable fails is reported as put back,
/// with its health not verified.
#[test]
fn a_restored_target_whose_read_fails_is_reported_put_back_unverified() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .on_failure(crate::config::OnFailure::Restore)
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut failed = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| match e {
            Effect::Execute(..) => Some(boom()),
            Effect::Status(..) if !failed && w.count(|e| matches!(e, Effect::Enable(..))) > 0 => {
                failed = true;
                Some(refused())
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    match &r.result {
        TargetResult::Failed {
            reason, put_back, ..
        } => {
            assert!(reason.contains("boom"), "{reason}");
            let p = put_back.as_ref().expect("put back");
            assert!(!p.healthy, "{p:?}");
            assert!(p.detail.contains("status after the enable failed"), "{p:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// observe.rs `warm_until`: the last target warms up for nothing: the run
/// ends once it is healthy, not a warmup (60 s) later.
#[test]
fn the_last_target_is_not_warmed_up() {
    use super::regressions::ms;
    let cfg = RolloutConfig::builder()
        .warmup(ms(60_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    w.drive(&mut m, Box::new(|_, _, _| None), 120_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(report(&m, 0).result, TargetResult::Done);
    let last = w.log.last().map(|&(t, _)| t).expect("ran");
    assert!(last < 1_000, "ended at {last} ms: {:#?}", w.log);
    assert_eq!(report(&m, 0).timings.warmup, None);
}

/// observe.rs `warm_until`: once the run stops (its failure budget spent),
/// a healthy target of the batch is not warmed up: nothing follows it.
#[test]
fn a_run_that_stops_warms_nothing_up() {
    use super::regressions::ms;
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .warmup(ms(60_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 3, 100, caps());
    let mut w = World::new(3);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Execute(_, ts) => Some(Reply::Executed(Ok(ts
                .iter()
                .map(|t| {
                    if t.id == id(0) {
                        crate::executor::ExecOutcome::failure(t.id.clone(), ms(1), "boom")
                    } else {
                        crate::executor::ExecOutcome::success(t.id.clone(), ms(1))
                    }
                })
                .collect()))),
            _ => None,
        }),
        120_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert!(matches!(
        m.outcome(),
        crate::report::Outcome::Aborted { .. }
    ));
    let t1 = report(&m, 1);
    assert_eq!(t1.result, TargetResult::Done, "{t1:?}");
    assert_eq!(t1.timings.warmup, None, "{t1:?}");
    let last = w.log.last().map(|&(t, _)| t).expect("ran");
    assert!(last < 1_000, "ended at {last} ms");
}

/// observe.rs `warm_until`: once the run is cancelled, a target that turns
/// healthy is not warmed up (window pacing: it warms up alone).
#[test]
fn a_cancelled_run_warms_nothing_up() {
    use super::regressions::ms;
    let cfg = RolloutConfig::builder()
        .pacing(crate::config::Pacing::Window)
        .warmup(ms(60_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    cancel_at(&mut m, &mut w, |e| matches!(e, Effect::Enable(..)));
    let t0 = report(&m, 0);
    assert_eq!(t0.result, TargetResult::Done, "{t0:?}");
    assert_eq!(t0.timings.warmup, None, "{t0:?}");
    assert_eq!(changes(&w), 1, "{:#?}", w.log);
    let last = w.log.last().map(|&(t, _)| t).expect("ran");
    assert!(last < 1_000, "ended at {last} ms");
}

/// observe.rs `on_execute`: an executor that answers for fewer targets
/// than it was given is not trusted: each maintenance may still run, the
/// target is kept out with its handle, and the report says why.
#[test]
fn an_executor_answer_of_the_wrong_length_is_not_trusted() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Execute(..) => Some(Reply::Executed(Ok(Vec::new()))),
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    match &r.result {
        TargetResult::Failed {
            reason, kept_out, ..
        } => {
            assert!(reason.contains("0 outcomes for 1 targets"), "{reason}");
            assert!(reason.contains("may still be running"), "{reason}");
            assert!(kept_out, "{r:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.count(|e| matches!(e, Effect::Enable(..))), 0);
}

/// observe.rs `still_open`: a maintenance whose end the executor could not
/// confirm (its call timed out) leaves a target the run already has out
/// where it is: kept out, no second take-out.
#[test]
fn a_maintenance_that_may_still_run_keeps_its_target_out_without_a_second_take_out() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Execute(..) => Some(Reply::Executed(Err(Error::Timeout {
                operation: "the maintenance".into(),
                after: super::regressions::ms(600_000),
            }))),
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert!(
        matches!(r.result, TargetResult::Failed { kept_out: true, .. }),
        "{r:?}"
    );
    assert_eq!(changes(&w), 1, "{:#?}", w.log);
    assert!(m.maintenance_open());
}

/// observe.rs `on_probe`: a probe that keeps failing is asked once a poll
/// interval until `health_timeout` after the maintenance, the last time at
/// that limit, and then fails the target (answers take no time here).
#[test]
fn a_failing_probe_is_asked_until_the_health_timeout_and_no_more() {
    use super::regressions::{ms, up};
    let cfg = RolloutConfig::builder()
        .health_timeout(ms(300))
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let listed = [crate::balancer::ListedTarget {
        target: crate::target::Target::new(id(0)),
        status: up(),
    }];
    let mut m = super::machine::Machine::new(cfg, caps(), ms(100), true, &listed, "survivors")
        .expect("machine");
    let mut w = World::new(1);
    let sent = drive_timed(
        &mut m,
        &mut w,
        |_, e, _| u64::from(!matches!(e, Effect::Probe(..))),
        |_, e, _| match e {
            Effect::Probe(..) => Some(Reply::Probed(Ok(crate::probe::ProbeVerdict::Fail(
                "not yet".into(),
            )))),
            _ => None,
        },
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let exec = w
        .log
        .iter()
        .find(|(_, e)| matches!(e, Effect::Execute(..)))
        .map(|&(t, _)| t)
        .expect("maintained");
    let probes: Vec<u64> = sent
        .iter()
        .filter(|(_, e)| matches!(e, Effect::Probe(..)))
        .map(|(t, _)| t - exec)
        .collect();
    assert_eq!(probes, vec![0, 100, 200, 300]);
    let r = report(&m, 0);
    assert!(
        matches!(&r.result, TargetResult::Failed { reason, kept_out: true, .. } if reason.contains("probe did not pass within")),
        "{r:?}"
    );
}

// Session 11: plan.rs.

/// plan.rs `plan`: while the pool cannot spare a target, the listing is
/// asked again once a poll interval (100 ms), not back to back, until
/// `capacity_timeout` (1 s) stops the run.
#[test]
fn a_wait_for_capacity_lists_the_pool_once_an_interval() {
    use super::regressions::ms;
    let cfg = RolloutConfig::builder()
        .min_healthy(Amount::Count(2))
        .capacity_timeout(ms(1_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 3, 100, caps());
    let mut w = World::new(3);
    // One of three unhealthy: two healthy, two required.
    w.set(2, in_service(crate::target::Health::Unhealthy, 0));
    w.drive(&mut m, Box::new(|_, _, _| None), 60_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    assert!(
        matches!(
            m.outcome(),
            crate::report::Outcome::Aborted {
                reason: crate::report::AbortReason::Capacity { .. }
            }
        ),
        "{:?}",
        m.outcome()
    );
    let lists: Vec<u64> = w
        .log
        .iter()
        .filter(|(_, e)| matches!(e, Effect::List(..)))
        .map(|&(t, _)| t)
        .collect();
    assert!((10..=12).contains(&lists.len()), "{lists:?}");
    assert!(lists.windows(2).all(|p| p[1] - p[0] >= 100), "{lists:?}");
    assert_eq!(changes(&w), 0);
}

/// plan.rs `on_listed`: a listing answered after the run was cancelled
/// starts nothing.
#[test]
fn a_listing_answered_after_a_cancel_starts_nothing() {
    let cfg = RolloutConfig::builder()
        .min_healthy(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    cancel_at(&mut m, &mut w, |e| matches!(e, Effect::List(..)));
    cancelled_without(&m, &w, |e| matches!(e, Effect::Preflight(..)));
}

/// plan.rs `on_listed`: a target in service but unhealthy is no capacity:
/// with one of three unhealthy and `min_healthy = 1`, a batch of two takes
/// only one healthy target out.
#[test]
fn an_unhealthy_target_is_not_counted_as_capacity() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .min_healthy(Amount::Count(1))
        .max_failures(Amount::Count(3))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 3, 100, caps());
    let mut w = World::new(3);
    w.set(2, in_service(crate::target::Health::Unhealthy, 0));
    w.drive(&mut m, Box::new(|_, _, _| None), 60_000);
    let first = w
        .log
        .iter()
        .find_map(|(_, e)| match e {
            Effect::Drain(_, ids) => Some(ids.clone()),
            _ => None,
        })
        .expect("a drain");
    assert_eq!(first, vec![id(0)], "{:#?}", w.log);
    // And the rest of the queue follows.
    assert!(m.is_finished(), "{:#?}", w.log);
    for k in 0..3 {
        assert_eq!(report(&m, k).result, TargetResult::Done, "t{k}");
    }
}

/// plan.rs `on_listed`: while a target is in progress, a next one that
/// does not fit waits for it (it will give its capacity back), however
/// long its maintenance (2 s) takes: `capacity_timeout` (500 ms) counts
/// only while nothing is in progress.
#[test]
fn a_target_in_progress_is_waited_for_without_the_capacity_timeout() {
    use super::regressions::ms;
    let cfg = RolloutConfig::builder()
        .pacing(crate::config::Pacing::Window)
        .batch_size(Amount::Count(2))
        .min_healthy(Amount::Count(2))
        .capacity_timeout(ms(500))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 3, 100, caps());
    let mut w = World::new(3);
    drive_timed(
        &mut m,
        &mut w,
        |_, e, _| match e {
            Effect::Execute(..) => 2_000,
            _ => 1,
        },
        |_, _, _| None,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(m.outcome(), crate::report::Outcome::Completed);
    for k in 0..3 {
        assert_eq!(report(&m, k).result, TargetResult::Done, "t{k}");
    }
}

/// A listing of the world's pool with `k`'s status replaced by `st`, or
/// without `k` when `st` is `None`.
fn listing_with(w: &World, k: usize, st: Option<crate::target::TargetStatus>) -> Reply {
    let mut l: Vec<crate::balancer::ListedTarget> = w
        .states
        .iter()
        .filter(|(i, _)| **i != id(k))
        .map(|(i, s)| crate::balancer::ListedTarget {
            target: crate::target::Target::new(i.clone()),
            status: s.clone(),
        })
        .collect();
    if let Some(st) = st {
        l.push(crate::balancer::ListedTarget {
            target: crate::target::Target::new(id(k)),
            status: st,
        });
    }
    l.sort_by(|a, b| a.target.id.cmp(&b.target.id));
    Reply::Listed(Ok(l))
}

/// Three targets one at a time with `min_healthy = 1`; the first listing
/// shows t0 as `st` (or not at all). Returns the machine and the world.
fn first_listing_shows_t0(
    st: Option<crate::target::TargetStatus>,
) -> (super::machine::Machine, World) {
    let cfg = RolloutConfig::builder()
        .min_healthy(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 3, 100, caps());
    let mut w = World::new(3);
    let mut first = true;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| match e {
            Effect::List(..) if std::mem::take(&mut first) => Some(listing_with(w, 0, st.clone())),
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    (m, w)
}

/// plan.rs `on_listed`: a candidate the listing no longer shows vanished;
/// the rest of the queue goes on.
#[test]
fn a_candidate_gone_from_the_listing_vanished_and_the_rest_go_on() {
    let (m, w) = first_listing_shows_t0(None);
    let r = report(&m, 0);
    assert!(matches!(r.result, TargetResult::Vanished { .. }), "{r:?}");
    for k in 1..3 {
        assert_eq!(
            report(&m, k).result,
            TargetResult::Done,
            "t{k}: {:#?}",
            w.log
        );
    }
}

/// plan.rs `on_listed`: a candidate the listing shows out of service is
/// left as found, said so at its batch's turn (never prepared, never
/// drained); the rest of the queue goes on.
#[test]
fn a_candidate_listed_out_is_left_as_found_and_the_rest_go_on() {
    let (m, w) = first_listing_shows_t0(Some(super::regressions::out()));
    let r = report(&m, 0);
    match &r.result {
        TargetResult::Skipped { reason } => {
            assert!(reason.contains("when its batch was due"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        w.count(|e| matches!(e, Effect::Preflight(..)) && names(e, 0)),
        0,
        "{:#?}",
        w.log
    );
    for k in 1..3 {
        assert_eq!(
            report(&m, k).result,
            TargetResult::Done,
            "t{k}: {:#?}",
            w.log
        );
    }
}

/// plan.rs `on_preflight`: an executor that answers the preflight for fewer
/// targets than asked is not trusted: each target fails its preflight, in
/// service, never drained.
#[test]
fn a_preflight_answer_of_the_wrong_length_fails_the_preflight() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Preflight(..) => Some(Reply::Preflight(Ok(Vec::new()))),
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    match &r.result {
        TargetResult::Failed { reason, .. } => {
            assert!(
                reason.contains("0 preflight results for 1 targets"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.location, Location::InService);
    assert_eq!(changes(&w), 0);
}

/// plan.rs `on_recheck`: a status read before the drain that answers for
/// fewer targets than asked stops the run on the balancer's fault; nothing
/// is drained.
#[test]
fn a_recheck_answer_of_the_wrong_length_stops_the_run() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Status(..) => Some(Reply::Status(Ok(Vec::new()))),
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert!(
        matches!(m.outcome(), crate::report::Outcome::Aborted { .. }),
        "{:?}",
        m.outcome()
    );
    assert_eq!(changes(&w), 0, "{:#?}", w.log);
}

/// plan.rs `on_preflight`: a preflight abandoned by the cancellation
/// (answered `Cancelled` before the run has seen its cancel) is no verdict
/// on the target: it stays queued, never failed.
#[test]
fn an_abandoned_preflight_is_no_verdict() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut first = true;
    w.drive(
        &mut m,
        Box::new(move |_, e, _| match e {
            Effect::Preflight(..) if std::mem::take(&mut first) => {
                Some(Reply::Preflight(Err(Error::Cancelled {
                    operation: "preflight".into(),
                })))
            }
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(report(&m, 0).result, TargetResult::Done, "{:#?}", w.log);
    assert_eq!(w.count(|e| matches!(e, Effect::Preflight(..))), 2);
}

/// plan.rs `on_preflight`: a preflight answered after the run was
/// cancelled leads nowhere: no status read, no drain.
#[test]
fn a_preflight_answered_after_a_cancel_leads_nowhere() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    cancel_at(&mut m, &mut w, |e| matches!(e, Effect::Preflight(..)));
    cancelled_without(&m, &w, |e| matches!(e, Effect::Status(..)));
}

/// plan.rs `on_recheck`: a status read before the drain answered after the
/// run was cancelled drains nothing.
#[test]
fn a_recheck_answered_after_a_cancel_drains_nothing() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    cancel_at(&mut m, &mut w, |e| matches!(e, Effect::Status(..)));
    cancelled_without(&m, &w, |e| matches!(e, Effect::Drain(..)));
}

/// plan.rs `on_recheck`: rechecks split per target (one was unknown);
/// once one of them fails and stops the run, the other's answer, in
/// service, drains nothing.
#[test]
fn a_split_recheck_that_stops_the_run_drains_nothing() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Status(_, ids) if ids.len() == 2 => Some(Reply::Status(Err(
                Error::target_not_found(ids[0].as_str(), None),
            ))),
            Effect::Status(_, ids) if ids[0] == id(0) => Some(refused()),
            _ => None,
        }),
        60_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert!(
        matches!(m.outcome(), crate::report::Outcome::Aborted { .. }),
        "{:?}",
        m.outcome()
    );
    assert_eq!(
        w.count(|e| matches!(e, Effect::Status(_, ids) if ids == &vec![id(1)])),
        1,
        "{:#?}",
        w.log
    );
    assert_eq!(changes(&w), 0, "{:#?}", w.log);
}

/// observe.rs `on_recovered`, `on_healthy`: a restore whose executor says
/// the interrupted maintenance ended and succeeded puts the target back,
/// says so, and reports it restored once healthy.
#[test]
fn a_restore_of_a_finished_maintenance_reports_the_target_restored() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let (mut m, mut w) = super::round3::resumed(cfg, super::machine::Recovery::Restore);
    w.drive(&mut m, Box::new(|_, _, _| None), 20_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    assert!(matches!(r.result, TargetResult::Restored { .. }), "{r:?}");
    assert_eq!(r.location, Location::InService, "{r:?}");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("its maintenance ended and succeeded")),
        "{r:?}"
    );
}

/// observe.rs `on_unhealthy`: a target a restore put back that never turns
/// healthy fails at its enable, and says it was put back by the restore.
#[test]
fn a_restored_target_that_stays_unhealthy_fails() {
    use super::regressions::ms;
    let cfg = RolloutConfig::builder()
        .health_timeout(ms(300))
        .build()
        .expect("valid");
    let (mut m, mut w) = super::round3::resumed(cfg, super::machine::Recovery::Restore);
    w.drive(
        &mut m,
        Box::new(|_, e, w| match e {
            Effect::Status(..) if w.count(|e| matches!(e, Effect::Enable(..))) > 0 => Some(
                Reply::Status(Ok(vec![in_service(crate::target::Health::Unhealthy, 0)])),
            ),
            _ => None,
        }),
        20_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    match &r.result {
        TargetResult::Failed { reason, .. } => {
            assert!(reason.contains("put back by restore, but"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// observe.rs `on_recovered`: a restore whose executor recovers an outcome
/// that says the maintenance may still run (a cancel it never confirmed)
/// keeps the target out with its handle: never put back.
#[test]
fn a_restore_never_puts_back_a_maintenance_that_may_still_run() {
    use super::regressions::ms;
    let cfg = RolloutConfig::builder().build().expect("valid");
    let (mut m, mut w) = super::round3::resumed(cfg, super::machine::Recovery::Restore);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Recover(..) => Some(Reply::Recovered(Ok(
                crate::executor::Recovered::Finished(crate::executor::ExecOutcome::may_still_run(
                    id(0),
                    ms(5),
                    "the cancel was never confirmed",
                )),
            ))),
            _ => None,
        }),
        20_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    assert_eq!(
        w.count(|e| matches!(e, Effect::Enable(..))),
        0,
        "{:#?}",
        w.log
    );
    assert!(m.maintenance_open());
    let r = report(&m, 0);
    assert!(
        matches!(r.result, TargetResult::Failed { kept_out: true, .. }),
        "{r:?}"
    );
}

fn two_zones() -> std::collections::BTreeMap<crate::target::TargetId, String> {
    (0..4)
        .map(|k| (id(k), if k < 2 { "a" } else { "b" }.to_owned()))
        .collect()
}

/// plan.rs `plan`: with `batch_by = zone` and a listing to consult
/// (`min_healthy` set), a batch holds only the front zone's targets.
#[test]
fn a_zone_batch_from_a_listing_holds_one_zone() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(4))
        .min_healthy(Amount::Count(1))
        .batch_by(crate::config::BatchBy::Zone)
        .zones(two_zones())
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 4, 100, caps());
    let mut w = World::new(4);
    w.drive(&mut m, Box::new(|_, _, _| None), 60_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    let drains: Vec<Vec<crate::target::TargetId>> = w
        .log
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Drain(_, ids) => Some(ids.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(drains, vec![vec![id(0), id(1)], vec![id(2), id(3)]]);
}

/// plan.rs `on_listed`: a candidate the pool could spare but its zone's
/// floor holds waits (listing once an interval) and, after
/// `capacity_timeout`, stops the run on that zone's capacity, naming it.
#[test]
fn a_candidate_held_by_its_zones_floor_stops_the_run_on_zone_capacity() {
    use super::regressions::ms;
    let cfg = RolloutConfig::builder()
        .zone_min_healthy(Amount::Count(1))
        .zones(two_zones())
        .capacity_timeout(ms(1_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 4, 100, caps());
    let mut w = World::new(4);
    // Zone a's other target is unhealthy: t0 is its last healthy one.
    w.set(1, in_service(crate::target::Health::Unhealthy, 0));
    w.drive(&mut m, Box::new(|_, _, _| None), 60_000);
    assert!(m.is_finished(), "{:#?}", w.log);
    match m.outcome() {
        crate::report::Outcome::Aborted {
            reason: crate::report::AbortReason::ZoneCapacity { zone, .. },
        } => assert_eq!(zone, "a"),
        other => panic!("{other:?}"),
    }
    assert!(
        w.count(|e| matches!(e, Effect::List(..))) >= 10,
        "{:#?}",
        w.log
    );
    assert_eq!(changes(&w), 0);
}
