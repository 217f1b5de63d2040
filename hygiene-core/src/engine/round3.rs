//! Regressions of the third adversarial review (issue "engine round 3"):
//! a target that is out stays watched, recovery fails closed, a hard
//! disable is followed by one more read, and every put-back is verified.
//! The machine runs against a tiny scripted world; times are milliseconds.
#![cfg(test)]

use std::collections::HashMap;

use crate::balancer::ListedTarget;
use crate::config::{Amount, OnFailure, OnInterrupted, RolloutConfig};
use crate::error::Error;
use crate::executor::{ExecHandle, ExecOutcome, Preflight, Recovered};
use crate::phase::Location;
use crate::probe::ProbeVerdict;
use crate::report::TargetResult;
use crate::target::{Capabilities, Target, TargetId, TargetState, TargetStatus};

use super::machine::{Effect, Input, Machine, Recovery, Reply};
use super::regressions::{caps, draining, id, ms, out, report, up};

fn hard_caps() -> Capabilities {
    caps().with_hard_disable(true)
}

pub(super) fn machine_with(
    cfg: RolloutConfig,
    n: usize,
    poll_ms: u64,
    caps: Capabilities,
) -> Machine {
    let listed: Vec<ListedTarget> = (0..n)
        .map(|k| ListedTarget {
            target: Target::new(id(k)),
            status: up(),
        })
        .collect();
    Machine::new(cfg, caps, ms(poll_ms), false, &listed, "round3").expect("machine")
}

/// What the world answers; `None` from a hook means "as usual".
pub(super) type Hook = Box<dyn FnMut(u64, &Effect, &mut World) -> Option<Reply>>;

/// A balancer and an executor in memory, answering every effect at once
/// (1 ms later), with a hook to script the exceptions.
pub(super) struct World {
    pub(super) states: HashMap<TargetId, TargetStatus>,
    /// Every effect, with the time it was answered.
    pub(super) log: Vec<(u64, Effect)>,
    /// The state each target had when its maintenance started.
    pub(super) executed_while: Vec<(TargetId, TargetState)>,
}

impl World {
    pub(super) fn new(n: usize) -> Self {
        Self {
            states: (0..n).map(|k| (id(k), up())).collect(),
            log: Vec::new(),
            executed_while: Vec::new(),
        }
    }

    pub(super) fn set(&mut self, k: usize, s: TargetStatus) {
        self.states.insert(id(k), s);
    }

    pub(super) fn answer(&mut self, e: &Effect) -> Reply {
        let st = |w: &World, ids: &[TargetId]| -> Vec<TargetStatus> {
            ids.iter().map(|i| w.states[i].clone()).collect()
        };
        match e {
            Effect::List(_) => Reply::Listed(Ok(self
                .states
                .iter()
                .map(|(i, s)| ListedTarget {
                    target: Target::new(i.clone()),
                    status: s.clone(),
                })
                .collect())),
            Effect::Status(_, ids) | Effect::ReadBack(_, ids) => Reply::Status(Ok(st(self, ids))),
            Effect::Preflight(_, t) => Reply::Preflight(Ok(vec![Preflight::Ready; t.len()])),
            Effect::Drain(_, ids) | Effect::Disable(_, ids) => {
                for i in ids {
                    self.states.insert(i.clone(), out());
                }
                Reply::Changed(Ok(()))
            }
            Effect::Enable(_, ids) => {
                for i in ids {
                    self.states.insert(i.clone(), up());
                }
                Reply::Changed(Ok(()))
            }
            Effect::Execute(_, targets) => {
                for t in targets {
                    let s = self.states[&t.id].state;
                    self.executed_while.push((t.id.clone(), s));
                }
                Reply::Executed(Ok(targets
                    .iter()
                    .map(|t| ExecOutcome::success(t.id.clone(), ms(1)))
                    .collect()))
            }
            Effect::Recover(_, t, _) => Reply::Recovered(Ok(Recovered::Finished(
                ExecOutcome::success(t.id.clone(), ms(1)),
            ))),
            Effect::Probe(..) => Reply::Probed(Ok(ProbeVerdict::Pass)),
            Effect::Gate(..) => Reply::Gate(Ok(crate::gate::GateVerdict::Go)),
        }
    }

    /// Drives `m` to its end (or `limit_ms`), answering each effect 1 ms
    /// after it was asked, in order.
    pub(super) fn drive(&mut self, m: &mut Machine, mut hook: Hook, limit_ms: u64) {
        let mut now = 0u64;
        let mut pending: std::collections::VecDeque<Effect> = m.handle(ms(now), Input::Tick).into();
        while now < limit_ms {
            if let Some(e) = pending.pop_front() {
                now += 1;
                let r = match hook(now, &e, self) {
                    Some(r) => r,
                    None => self.answer(&e),
                };
                self.log.push((now, e.clone()));
                pending.extend(m.handle(ms(now), Input::Reply(e.call(), r)));
                continue;
            }
            if m.is_finished() {
                return;
            }
            let Some(t) = m.poll_timeout() else {
                panic!("machine stuck at {now} ms");
            };
            now = now.max(t.as_millis() as u64);
            pending.extend(m.handle(ms(now), Input::Tick));
        }
    }

    pub(super) fn count(&self, f: impl Fn(&Effect) -> bool) -> usize {
        self.log.iter().filter(|(_, e)| f(e)).count()
    }
}

pub(super) fn names(e: &Effect, k: usize) -> bool {
    match e {
        Effect::Status(_, ids)
        | Effect::ReadBack(_, ids)
        | Effect::Drain(_, ids)
        | Effect::Disable(_, ids)
        | Effect::Enable(_, ids) => ids.contains(&id(k)),
        Effect::Execute(_, ts) | Effect::Preflight(_, ts) => ts.iter().any(|t| t.id == id(k)),
        Effect::Recover(_, t, _) | Effect::Probe(_, t) => t.id == id(k),
        Effect::List(_) | Effect::Gate(..) => false,
    }
}

// (1) Batches of 2: t0 is drained and sealed, waits for t1; a reload puts
// t0 back in service and every drain or disable of t0 from then on is
// refused. t0 must never be maintained while the last status said it is
// in service.
#[test]
fn a_failed_redrain_never_lets_the_maintenance_start_in_service() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .drain_timeout(ms(2_000))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, hard_caps());
    let mut w = World::new(2);
    let mut reloaded = false;
    w.drive(
        &mut m,
        Box::new(move |now, e, w| {
            // t1 drains slowly: 300 ms of requests.
            if let Effect::Drain(_, ids) = e {
                if ids.contains(&id(1)) && !reloaded {
                    w.set(0, out());
                    w.set(1, draining(3));
                    return Some(Reply::Changed(Ok(())));
                }
            }
            if now > 300 && w.states[&id(1)].state == TargetState::Draining {
                w.set(1, out());
            }
            // The reload, once t0 was seen out: t0 is in service again.
            if now > 100 && !reloaded && w.states[&id(0)].state == TargetState::OutOfService {
                reloaded = true;
                w.set(0, up());
            }
            match e {
                Effect::Drain(_, ids) | Effect::Disable(_, ids)
                    if reloaded && ids.contains(&id(0)) =>
                {
                    Some(Reply::Changed(Err(Error::unavailable("lb", "refused"))))
                }
                _ => None,
            }
        }),
        10_000,
    );
    for (t, s) in &w.executed_while {
        assert_ne!(
            *s,
            TargetState::InService,
            "{t} maintained while in service: {:#?}",
            w.log
        );
    }
    assert!(m.is_finished());
    let r = report(&m, 0);
    assert!(
        matches!(r.result, TargetResult::Failed { .. }) && !r.drain_lost.is_empty(),
        "{r:?}"
    );
    assert_eq!(r.location, Location::InService, "{r:?}");
}

// (2) A target kept out after a failed maintenance stays watched: a
// reload that puts it back has it taken out again, and the report says so.
#[test]
fn a_kept_out_target_is_watched_and_taken_out_again() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 3, 100, hard_caps());
    let mut w = World::new(3);
    let mut failed_at = None;
    w.drive(
        &mut m,
        Box::new(move |now, e, w| {
            match e {
                Effect::Execute(_, ts) if ts[0].id == id(0) => {
                    failed_at = Some(now);
                    return Some(Reply::Executed(Ok(vec![ExecOutcome::failure(
                        id(0),
                        ms(1),
                        "boom",
                    )])));
                }
                Effect::Execute(_, ts) if ts[0].id == id(1) => {
                    // While t1 is patched, a reload puts t0 back.
                    w.set(0, up());
                }
                _ => {}
            }
            let _ = failed_at;
            None
        }),
        20_000,
    );
    assert!(m.is_finished());
    let r = report(&m, 0);
    assert!(
        matches!(r.result, TargetResult::Failed { kept_out: true, .. }),
        "{r:?}"
    );
    assert_eq!(r.drain_lost.len(), 1, "{r:?}");
    assert!(r.drain_lost[0].back_out.is_some(), "{r:?}");
    // Kept out after a failure: taken out hard again (the balancer can),
    // not only drained — a drained server still takes sticky sessions.
    let again: Vec<&Effect> = w
        .log
        .iter()
        .map(|(_, e)| e)
        .filter(|e| matches!(e, Effect::Drain(..) | Effect::Disable(..)) && names(e, 0))
        .collect();
    assert!(
        matches!(again.last(), Some(Effect::Disable(..))),
        "the last change of t0 is its hard disable: {again:?}"
    );
    assert_ne!(
        w.states[&id(0)].state,
        TargetState::InService,
        "the broken t0 was left serving: {:#?}",
        w.log
    );
}

pub(super) fn handle() -> ExecHandle {
    ExecHandle(serde_json::json!({"pid": 4242}))
}

/// A machine resuming a run whose only target's maintenance had started
/// (with a handle) when the process died; the target is out.
pub(super) fn resumed(cfg: RolloutConfig, mode: Recovery) -> (Machine, World) {
    use crate::journal::{Interrupted, Trace};
    let w = {
        let mut w = World::new(1);
        w.set(0, out());
        w
    };
    let listed = vec![ListedTarget {
        target: Target::new(id(0)),
        status: out(),
    }];
    let traces = vec![Trace {
        target: Target::new(id(0)),
        maybe_out: true,
        out_after_finish: false,
        exec: Interrupted::Unknown,
        handle: Some(handle()),
        finished: None,
    }];
    let m = Machine::recover(cfg, caps(), ms(100), false, &listed, traces, 10, mode);
    (m, w)
}

// (3) An executor that cannot be asked during recovery: never "gone".
// Restore keeps the target out, resume with `rerun` does not run the
// maintenance again, and the machine says the journal must stay open.
#[test]
fn an_executor_error_during_recovery_keeps_the_target_out() {
    for (mode, on_interrupted) in [
        (Recovery::Restore, OnInterrupted::Fail),
        (Recovery::Resume, OnInterrupted::Rerun),
        (Recovery::Resume, OnInterrupted::Fail),
    ] {
        let cfg = RolloutConfig::builder()
            .on_interrupted(on_interrupted)
            .build()
            .expect("valid");
        let (mut m, mut w) = resumed(cfg, mode);
        w.drive(
            &mut m,
            Box::new(|_, e, _| match e {
                Effect::Recover(..) => Some(Reply::Recovered(Err(Error::PermissionDenied {
                    location: "ssm".into(),
                    message: "AccessDenied".into(),
                    source: None,
                }))),
                _ => None,
            }),
            10_000,
        );
        let ctx = format!("{mode:?} {on_interrupted:?}: {:#?}", w.log);
        assert!(m.is_finished(), "{ctx}");
        assert_eq!(w.count(|e| matches!(e, Effect::Enable(..))), 0, "{ctx}");
        assert_eq!(w.count(|e| matches!(e, Effect::Execute(..))), 0, "{ctx}");
        let r = report(&m, 0);
        match &r.result {
            TargetResult::Failed {
                kept_out: true,
                reason,
                ..
            } => assert!(reason.contains("hygiene resume"), "{reason}"),
            other => panic!("{other:?} {ctx}"),
        }
        assert!(m.maintenance_open(), "{ctx}");
    }
}

// (5) on_interrupted = fail with on_failure = restore: an unknown outcome
// is never put back; "may still be running" likewise, and it is not
// `Failed` like a maintenance that ended.
#[test]
fn an_unknown_outcome_is_never_restored() {
    let cfg = RolloutConfig::builder()
        .on_interrupted(OnInterrupted::Fail)
        .on_failure(OnFailure::Restore)
        .build()
        .expect("valid");
    for answer in [
        Recovered::Unknown("gone".into()),
        Recovered::Finished(ExecOutcome::may_still_run(
            id(0),
            ms(1),
            "cancel never confirmed",
        )),
    ] {
        let (mut m, mut w) = resumed(cfg.clone(), Recovery::Resume);
        let a = answer.clone();
        w.drive(
            &mut m,
            Box::new(move |_, e, _| match e {
                Effect::Recover(..) => Some(Reply::Recovered(Ok(a.clone()))),
                _ => None,
            }),
            10_000,
        );
        assert!(m.is_finished());
        assert_eq!(
            w.count(|e| matches!(e, Effect::Enable(..))),
            0,
            "{answer:?}: {:#?}",
            w.log
        );
        let r = report(&m, 0);
        assert!(
            matches!(r.result, TargetResult::Failed { kept_out: true, .. }),
            "{answer:?}: {r:?}"
        );
        assert_eq!(
            m.maintenance_open(),
            matches!(answer, Recovered::Finished(_)),
            "only a maintenance that may still run keeps the journal open"
        );
    }
    // In a fresh run too: an outcome that may still run is kept out.
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    w.drive(
        &mut m,
        Box::new(|_, e, _| match e {
            Effect::Execute(_, ts) if ts[0].id == id(0) => {
                Some(Reply::Executed(Ok(vec![ExecOutcome::may_still_run(
                    id(0),
                    ms(1),
                    "status reads kept failing",
                )])))
            }
            _ => None,
        }),
        10_000,
    );
    assert!(!w
        .log
        .iter()
        .any(|(_, e)| matches!(e, Effect::Enable(..)) && names(e, 0)));
    assert!(m.maintenance_open());
}

// (9) After the hard disable, one more status read shows nothing in
// flight before the maintenance starts: a sticky request that arrived
// between the last "drained" read and the disable is waited for.
#[test]
fn the_maintenance_waits_for_a_read_after_the_hard_disable() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 2, 100, hard_caps());
    let mut w = World::new(2);
    let mut sticky_until = 0;
    w.drive(
        &mut m,
        Box::new(move |now, e, w| {
            if let Effect::Disable(_, ids) = e {
                if ids.contains(&id(0)) && sticky_until == 0 {
                    // A sticky request arrived just before the disable.
                    sticky_until = now + 250;
                    w.set(0, draining(1));
                    return Some(Reply::Changed(Ok(())));
                }
            }
            if sticky_until > 0
                && now >= sticky_until
                && w.states[&id(0)].state == TargetState::Draining
            {
                w.set(0, out());
            }
            if let Effect::Execute(_, ts) = e {
                if ts[0].id == id(0) {
                    assert!(
                        now >= sticky_until,
                        "maintenance at {now} ms with a request in flight until {sticky_until} ms"
                    );
                }
            }
            None
        }),
        10_000,
    );
    assert!(m.is_finished());
    assert_eq!(report(&m, 0).result, TargetResult::Done);
    let after_disable = w
        .log
        .iter()
        .skip_while(|(_, e)| !(matches!(e, Effect::Disable(..)) && names(e, 0)))
        .take_while(|(_, e)| !matches!(e, Effect::Execute(..)))
        .filter(|(_, e)| matches!(e, Effect::Status(..)) && names(e, 0))
        .count();
    assert!(after_disable >= 1, "{:#?}", w.log);
}

// (10) A put-back after a cancel is verified by a status read: a balancer
// that defers the registration (ELBv2 while the target drains) shows the
// target still out, and the report says so, by name, with the way back.
#[test]
fn a_cancel_put_back_is_verified_by_a_status_read() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    let mut cancelled = false;
    let mut now = 0;
    let mut pending: std::collections::VecDeque<Effect> = m.handle(ms(0), Input::Tick).into();
    while let Some(e) = pending.pop_front() {
        now += 1;
        let r = match &e {
            Effect::Drain(_, ids) => {
                for i in ids {
                    w.states.insert(i.clone(), draining(2));
                }
                Reply::Changed(Ok(()))
            }
            // The enable of a draining target is deferred: still draining.
            Effect::Enable(..) => Reply::Changed(Ok(())),
            _ => w.answer(&e),
        };
        w.log.push((now, e.clone()));
        pending.extend(m.handle(ms(now), Input::Reply(e.call(), r)));
        if !cancelled && w.log.iter().any(|(_, e)| matches!(e, Effect::Status(..))) {
            cancelled = true;
            pending.extend(m.handle(ms(now), Input::Cancel));
        }
        if pending.is_empty() && !m.is_finished() {
            let t = m.poll_timeout().expect("not stuck");
            pending.extend(m.handle(t, Input::Tick));
        }
    }
    assert!(m.is_finished());
    let r = report(&m, 0);
    assert!(
        w.log
            .iter()
            .any(|(_, e)| matches!(e, Effect::ReadBack(..)) && names(e, 0)),
        "{:#?}",
        w.log
    );
    match &r.result {
        TargetResult::Failed {
            kept_out: true,
            restore_hint: Some(_),
            ..
        } => {}
        other => panic!("reported {other:?} while the balancer shows it draining: {r:?}"),
    }
    assert_ne!(r.location, Location::InService, "{r:?}");
}

// (2) A kept-out target put back whose first drain sent again is refused:
// the guard tries again at the next poll while the run goes on, and the
// report says where it ended.
#[test]
fn a_kept_out_target_is_taken_out_again_after_a_refused_redrain() {
    for refusals in [1usize, usize::MAX] {
        let cfg = RolloutConfig::builder()
            .max_failures(Amount::Count(1))
            .build()
            .expect("valid");
        let mut m = machine_with(cfg, 3, 100, hard_caps());
        let mut w = World::new(3);
        let mut refused = 0;
        let mut put_back = false;
        w.drive(
            &mut m,
            Box::new(move |_, e, w| match e {
                Effect::Execute(_, ts) if ts[0].id == id(0) => {
                    Some(Reply::Executed(Ok(vec![ExecOutcome::failure(
                        id(0),
                        ms(1),
                        "boom",
                    )])))
                }
                Effect::Execute(_, ts) if ts[0].id == id(1) && !put_back => {
                    put_back = true;
                    w.set(0, up());
                    None
                }
                Effect::Disable(_, ids) | Effect::Drain(_, ids)
                    if put_back && ids.contains(&id(0)) && refused < refusals =>
                {
                    refused += 1;
                    Some(Reply::Changed(Err(Error::unavailable("lb", "refused"))))
                }
                _ => None,
            }),
            20_000,
        );
        assert!(m.is_finished());
        let r = report(&m, 0);
        let serving = w.states[&id(0)].state == TargetState::InService;
        if refusals == 1 {
            assert!(!serving, "{:#?}", w.log);
            assert_eq!(r.location, Location::KeptOut, "{r:?}");
        } else {
            // Never taken out again: the report says it is in service.
            assert!(serving);
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
    }
}

// REVIEW A: a target kept out after a failure before the crash is not
// watched by the resumed run: a reload that puts it back mid-run leaves a
// broken server in rotation, reported "kept out".
#[test]
fn review_a_resumed_kept_out_target_is_watched() {
    use crate::phase::Stage;
    // Kept out after a failed maintenance, or after a drain that timed out
    // (the run that kept it out watched both).
    for failed_at in [Stage::Executing, Stage::Draining] {
        resumed_kept_out_target_is_watched(failed_at);
    }
}

fn resumed_kept_out_target_is_watched(failed_at: crate::phase::Stage) {
    use crate::journal::{Finish, Interrupted, Trace};
    use crate::phase::Stage;
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let listed = vec![
        ListedTarget {
            target: Target::new(id(0)),
            status: out(),
        },
        ListedTarget {
            target: Target::new(id(1)),
            status: up(),
        },
    ];
    let traces = vec![
        Trace {
            target: Target::new(id(0)),
            maybe_out: true,
            out_after_finish: false,
            exec: Interrupted::Failed("boom".into()),
            handle: None,
            finished: Some(Finish {
                stage: Stage::Failed,
                failed_at: Some(failed_at),
                location: Location::KeptOut,
                detail: Some("boom".into()),
            }),
        },
        Trace {
            target: Target::new(id(1)),
            maybe_out: false,
            out_after_finish: false,
            exec: Interrupted::NotStarted,
            handle: None,
            finished: None,
        },
    ];
    let mut m = Machine::recover(
        cfg,
        caps(),
        ms(100),
        false,
        &listed,
        traces,
        10,
        Recovery::Resume,
    );
    let mut w = World::new(2);
    w.set(0, out());
    let mut reloaded = false;
    w.drive(
        &mut m,
        Box::new(move |_, e, w| {
            if let Effect::Execute(_, ts) = e {
                if ts[0].id == id(1) && !reloaded {
                    reloaded = true;
                    w.set(0, up()); // a reload
                }
            }
            None
        }),
        20_000,
    );
    assert!(m.is_finished());
    let r = report(&m, 0);
    assert!(
        w.states[&id(0)].state != TargetState::InService,
        "t0 (kept out at {:?}) left serving; report says {:?}: {:#?}",
        failed_at,
        r.location,
        w.log
    );
}

// REVIEW B: a drain sent again (the guard) still in flight when the drain
// timeout passes: every poll answer is ignored (`redraining`), the poll
// deadline (since + drain_timeout) is in the past, so the machine polls
// back to back until the drain call returns.
#[test]
fn review_b_no_poll_storm_while_a_redrain_is_in_flight() {
    let cfg = RolloutConfig::builder()
        .drain_timeout(ms(500))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 1, 100, caps());
    let mut w = World::new(1);
    let mut now = 0u64;
    let mut pending: std::collections::VecDeque<Effect> = m.handle(ms(0), Input::Tick).into();
    let mut reloaded = false;
    let mut held: Option<Effect> = None;
    let release = 3_000u64;
    while now < 10_000 {
        if let Some(e) = pending.pop_front() {
            now += 1;
            if reloaded && held.is_none() && matches!(e, Effect::Drain(..)) {
                held = Some(e); // a slow drain call (retries, throttling)
                continue;
            }
            let r = match &e {
                Effect::Drain(_, ids) => {
                    for i in ids {
                        w.states.insert(i.clone(), draining(3));
                    }
                    Reply::Changed(Ok(()))
                }
                _ => w.answer(&e),
            };
            w.log.push((now, e.clone()));
            if !reloaded && now > 150 && matches!(e, Effect::Status(..)) {
                reloaded = true;
                w.set(0, up());
            }
            pending.extend(m.handle(ms(now), Input::Reply(e.call(), r)));
            continue;
        }
        if m.is_finished() {
            break;
        }
        let t = m.poll_timeout().map(|t| t.as_millis() as u64);
        match (&held, t) {
            (Some(_), t) if t.is_none_or(|t| t >= release) || now >= release => {
                let e = held.take().expect("held");
                now = now.max(release);
                w.set(0, out());
                w.log.push((now, e.clone()));
                pending.extend(m.handle(ms(now), Input::Reply(e.call(), Reply::Changed(Ok(())))));
            }
            (_, Some(t)) => {
                now = now.max(t);
                pending.extend(m.handle(ms(now), Input::Tick));
            }
            _ => panic!("stuck at {now}"),
        }
    }
    let polls = w
        .log
        .iter()
        .filter(|(t, e)| *t > 600 && *t < release && matches!(e, Effect::Status(..)))
        .count();
    assert!(
        polls <= 30,
        "{polls} status calls in {} ms while the drain call was in flight",
        release - 600
    );
}

// REVIEW C: a recovery whose outcome names another target is "not
// trusted" and kept open by the machine, but the journal records it as an
// ended maintenance: the handle is dropped and the trace says Succeeded,
// so the next resume puts the target back while its maintenance may run.
#[test]
fn review_c_an_untrusted_recovery_keeps_the_handle_in_the_journal() {
    use super::record::{finished_record, intent_record, result_record};
    use crate::journal::{Header, Op, Record, Trace, JOURNAL_FORMAT};
    use std::{cell::RefCell, rc::Rc};
    let cfg = RolloutConfig::builder().build().expect("valid");
    let (mut m, mut w) = resumed(cfg.clone(), Recovery::Resume);
    let journal = Rc::new(RefCell::new(vec![
        Record::Header(Box::new(Header {
            format: JOURNAL_FORMAT,
            hygiene: "t".into(),
            run_id: "t".into(),
            started_at: "t".into(),
            balancer: "t".into(),
            executor: "t".into(),
            host: "t".into(),
            pid: 0,
            config: cfg.clone(),
            plan: vec![Target::new(id(0))],
        })),
        Record::Intent {
            call: 1,
            op: Op::Execute,
            ids: vec![id(0)],
            at: "t".into(),
        },
        Record::Started {
            call: 1,
            id: id(0),
            handle: handle(),
            at: "t".into(),
        },
    ]));
    let j = Rc::clone(&journal);
    w.drive(
        &mut m,
        Box::new(move |_, e, w| {
            let r = match e {
                Effect::Recover(..) => {
                    Reply::Recovered(Ok(Recovered::Finished(ExecOutcome::success(id(9), ms(1)))))
                }
                _ => w.answer(e),
            };
            if let Some((_, intent)) = intent_record(e) {
                j.borrow_mut().push(intent);
                j.borrow_mut().push(result_record(e.call(), &r));
            }
            Some(r)
        }),
        10_000,
    );
    journal
        .borrow_mut()
        .extend(m.take_finished().into_iter().map(finished_record));
    assert!(m.maintenance_open(), "the machine keeps it open");
    let (_, traces) = Trace::of(&journal.borrow()).expect("header");
    // A second resume from that journal, the target still out.
    let listed = vec![ListedTarget {
        target: Target::new(id(0)),
        status: out(),
    }];
    let mut m2 = Machine::recover(
        cfg.clone(),
        caps(),
        ms(100),
        false,
        &listed,
        traces.clone(),
        100,
        Recovery::Resume,
    );
    let mut w2 = World::new(1);
    w2.set(0, out());
    w2.drive(&mut m2, Box::new(|_, _, _| None), 10_000);
    let mut m2 = Machine::recover(
        cfg,
        caps(),
        ms(100),
        false,
        &listed,
        traces.clone(),
        100,
        Recovery::Restore,
    );
    let mut w2 = World::new(1);
    w2.set(0, out());
    w2.drive(&mut m2, Box::new(|_, _, _| None), 10_000);
    // The handle survived in the journal: the restore waits for that
    // maintenance (here it has ended) before it puts the target back.
    let first = |f: &dyn Fn(&Effect) -> bool| w2.log.iter().position(|(_, e)| f(e));
    let recovered = first(&|e| matches!(e, Effect::Recover(..)));
    let enabled = first(&|e| matches!(e, Effect::Enable(..)));
    assert!(
        recovered.is_some() && recovered < enabled,
        "put back without waiting for its maintenance: trace {:?}, log {:#?}",
        traces[0].exec,
        w2.log
    );
}

// REVIEW D: in a fresh run, an execute call past its limit (the driver's
// timeout drops the future; an SSM command or a remote ssh command runs
// on) or an outcome naming another target is a plain failure: under
// on_failure = restore the target is put back and the journal closed,
// while its maintenance may still run. on_recovered treats the same
// answers as "may still run".
#[test]
fn review_d_an_execute_that_may_still_run_is_never_put_back() {
    let cfg = RolloutConfig::builder()
        .on_failure(OnFailure::Restore)
        .max_failures(Amount::Count(5))
        .build()
        .expect("valid");
    let mut bad = Vec::new();
    for case in 0..2 {
        let mut m = machine_with(cfg.clone(), 2, 100, caps());
        let mut w = World::new(2);
        w.drive(
            &mut m,
            Box::new(move |_, e, _| match e {
                Effect::Execute(_, ts) if ts[0].id == id(0) => Some(if case == 0 {
                    Reply::Executed(Err(Error::Timeout {
                        operation: "execute".into(),
                        after: ms(600_000),
                    }))
                } else {
                    Reply::Executed(Ok(vec![ExecOutcome::success(id(9), ms(1))]))
                }),
                _ => None,
            }),
            10_000,
        );
        let enabled = w
            .log
            .iter()
            .any(|(_, e)| matches!(e, Effect::Enable(..)) && names(e, 0));
        eprintln!(
            "case {case}: t0 enabled={enabled} open={}",
            m.maintenance_open()
        );
        bad.push((case, enabled, m.maintenance_open()));
    }
    assert!(bad.iter().all(|&(_, e, o)| !e && o), "{bad:?}");
}

// REVIEW E: two kept-out targets put back at different times, whose
// drains sent again are refused (and slow, as retried calls are): the
// read-back of one makes the run "active", which makes the other watched,
// whose poll starts the next redrain + read-back, and so on: the run
// never ends.
#[test]
fn review_e_two_kept_out_targets_with_refused_redrains_do_not_livelock() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(2))
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 3, 100, hard_caps());
    let mut w = World::new(3);
    let mut now = 0u64;
    // (answer at, effect)
    let mut inflight: Vec<(u64, Effect)> = m
        .handle(ms(0), Input::Tick)
        .into_iter()
        .map(|e| (1, e))
        .collect();
    let mut t2_executing = false;
    let mut t1_back = false;
    let limit = 60_000u64;
    while now < limit {
        if let Some(k) = (0..inflight.len()).min_by_key(|&k| inflight[k].0) {
            let at = inflight[k].0;
            let due = m.poll_timeout().map(|t| t.as_millis() as u64);
            if due.is_none_or(|d| at <= d) {
                let (at, e) = inflight.remove(k);
                now = now.max(at);
                let kept = |e: &Effect| names(e, 0) || names(e, 1);
                let r = match &e {
                    Effect::Execute(_, ts) if ts[0].id == id(0) || ts[0].id == id(1) => {
                        Reply::Executed(Ok(vec![ExecOutcome::failure(
                            ts[0].id.clone(),
                            ms(1),
                            "boom",
                        )]))
                    }
                    Effect::Execute(_, ts) if ts[0].id == id(2) && !t2_executing => {
                        t2_executing = true;
                        w.set(0, up()); // a reload (or an operator) puts t0 back
                        w.answer(&e)
                    }
                    Effect::Drain(_, _) | Effect::Disable(_, _) if t2_executing && kept(&e) => {
                        if !t1_back {
                            t1_back = true;
                            w.set(1, up()); // t1 put back a little later
                        }
                        Reply::Changed(Err(Error::unavailable("lb", "refused")))
                    }
                    _ => w.answer(&e),
                };
                w.log.push((now, e.clone()));
                // Drains and disables sent again take 300 ms (retries).
                let slow = matches!(e, Effect::Drain(..) | Effect::Disable(..))
                    && t2_executing
                    && kept(&e);
                let _ = slow;
                for n in m.handle(ms(now), Input::Reply(e.call(), r)) {
                    let lat = if t2_executing
                        && matches!(n, Effect::Drain(..) | Effect::Disable(..))
                        && (names(&n, 0) || names(&n, 1))
                    {
                        300
                    } else {
                        1
                    };
                    inflight.push((now + lat, n));
                }
                continue;
            }
        }
        if m.is_finished() {
            break;
        }
        let Some(t) = m.poll_timeout() else {
            if inflight.is_empty() {
                panic!("stuck at {now}");
            }
            continue;
        };
        now = now.max(t.as_millis() as u64);
        for n in m.handle(ms(now), Input::Tick) {
            inflight.push((now + 1, n));
        }
    }
    let redrains = w
        .log
        .iter()
        .filter(|(_, e)| {
            matches!(e, Effect::Drain(..) | Effect::Disable(..)) && (names(e, 0) || names(e, 1))
        })
        .count();
    assert!(
        m.is_finished(),
        "not finished after {limit} ms: {redrains} drains/disables of t0/t1; last: {:#?}",
        &w.log[w.log.len().saturating_sub(12)..]
    );
}

// REVIEW F: a target whose drain never applied (failed, last journaled in
// service; the guard never watches it) is found out at resume because
// someone else took it out: the resume claims the run took it out again
// and reports it kept out with the way back (a restore would enable it),
// instead of leaving it as found (invariant 8).
#[test]
fn review_f_a_target_out_by_someone_else_is_not_claimed_at_resume() {
    use crate::journal::{Finish, Interrupted, Trace};
    use crate::phase::Stage;
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .build()
        .expect("valid");
    let listed = vec![ListedTarget {
        target: Target::new(id(0)),
        status: out(),
    }];
    let traces = vec![Trace {
        target: Target::new(id(0)),
        maybe_out: true, // its drain intent, never undone by an enable
        out_after_finish: false,
        exec: Interrupted::NotStarted,
        handle: None,
        finished: Some(Finish {
            stage: Stage::Failed,
            failed_at: Some(Stage::Draining),
            location: Location::InService,
            detail: Some(
                "still in service after the drain call: the drain did not take effect".into(),
            ),
        }),
    }];
    let m = Machine::recover(
        cfg,
        caps(),
        ms(100),
        false,
        &listed,
        traces,
        10,
        Recovery::Resume,
    );
    let r = report(&m, 0);
    eprintln!("{r:?}");
    assert_ne!(r.location, Location::KeptOut, "{r:?}");
}

// (2)/(10) Only targets the run keeps out after a failure are watched once
// finished: a cancelled target whose put-back the balancer deferred (shown
// still draining, reported out) and which then comes back by itself is
// never drained again, while another target's maintenance goes on.
#[test]
fn a_deferred_put_back_is_not_drained_again() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .pacing(crate::config::Pacing::Window)
        .build()
        .expect("valid");
    let mut m = machine_with(cfg, 2, 100, caps());
    let mut w = World::new(2);
    let mut now = 0u64;
    let mut cancelled = false;
    let mut deferred_at: Option<u64> = None;
    let mut enabled_t0_at: Option<u64> = None;
    let mut pending: std::collections::VecDeque<(u64, Effect)> = m
        .handle(ms(0), Input::Tick)
        .into_iter()
        .map(|e| (0, e))
        .collect();
    let mut later: Vec<(u64, super::machine::CallId, Reply)> = Vec::new();
    for _ in 0..10_000 {
        if let Some(k) = later.iter().position(|(at, _, _)| *at <= now) {
            let (_, c, r) = later.remove(k);
            pending.extend(
                m.handle(ms(now), Input::Reply(c, r))
                    .into_iter()
                    .map(|x| (now, x)),
            );
            continue;
        }
        if let Some(t) = deferred_at {
            if now >= t + 300 {
                // The deferred registration happens by itself.
                w.set(0, up());
                deferred_at = None;
            }
        }
        let due = pending.iter().position(|(at, _)| *at <= now);
        if let Some(p) = due {
            let (_, e) = pending.remove(p).expect("due");
            let r = match &e {
                // t1's maintenance takes 2 s; t0 drains slowly.
                Effect::Execute(_, ts) if ts[0].id == id(1) => {
                    let r = w.answer(&e);
                    later.push((now + 2000, e.call(), r));
                    w.log.push((now, e.clone()));
                    now += 1;
                    continue;
                }
                Effect::Drain(_, ids) if ids.contains(&id(0)) && !cancelled => {
                    for i in ids {
                        w.states.insert(i.clone(), out());
                    }
                    w.set(0, draining(3));
                    Reply::Changed(Ok(()))
                }
                Effect::Enable(_, ids) if ids.contains(&id(0)) && cancelled => {
                    enabled_t0_at = Some(now);
                    deferred_at = Some(now);
                    Reply::Changed(Ok(())) // still draining: deferred
                }
                _ => w.answer(&e),
            };
            w.log.push((now, e.clone()));
            pending.extend(
                m.handle(ms(now), Input::Reply(e.call(), r))
                    .into_iter()
                    .map(|x| (now, x)),
            );
            if !cancelled && w.states[&id(0)].state == TargetState::Draining && now > 50 {
                cancelled = true;
                pending.extend(
                    m.handle(ms(now), Input::Cancel)
                        .into_iter()
                        .map(|x| (now, x)),
                );
            }
            now += 1;
            continue;
        }
        if m.is_finished() && pending.is_empty() && later.is_empty() {
            break;
        }
        let next = pending
            .iter()
            .map(|(at, _)| *at)
            .chain(later.iter().map(|(at, _, _)| *at))
            .chain(deferred_at.map(|t| t + 300))
            .chain(m.poll_timeout().map(|t| t.as_millis() as u64))
            .min()
            .expect("not stuck");
        now = now.max(next).max(now + 1);
        pending.extend(m.handle(ms(now), Input::Tick).into_iter().map(|x| (now, x)));
    }
    assert!(m.is_finished(), "{:#?}", w.log);
    let enabled = enabled_t0_at.expect("t0 was put back");
    let drained_again = w.log.iter().any(|(at, e)| {
        *at > enabled && matches!(e, Effect::Drain(..) | Effect::Disable(..)) && names(e, 0)
    });
    assert!(
        !drained_again,
        "a put-back target was drained again: {:#?}",
        w.log
    );
    assert_eq!(
        w.states[&id(0)].state,
        TargetState::InService,
        "{enabled} {:#?}",
        w.log
    );
}

// The run's last looks: a kept-out target that something puts back at
// every look is taken out again each time, up to the limit, and then
// reported in a state the run could not read, never "kept out".
#[test]
fn a_target_put_back_at_every_last_look_is_not_reported_kept_out() {
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
            Effect::Execute(..) => {
                failed = true;
                Some(Reply::Executed(Ok(vec![ExecOutcome::failure(
                    id(0),
                    ms(1),
                    "boom",
                )])))
            }
            // An agent that puts it back before every read.
            Effect::Status(..) if failed => {
                w.set(0, up());
                None
            }
            _ => None,
        }),
        20_000,
    );
    assert!(m.is_finished(), "{:#?}", w.log);
    let r = report(&m, 0);
    let redrains = w.count(|e| matches!(e, Effect::Drain(..)) && names(e, 0));
    assert_eq!(
        redrains,
        1 + 3,
        "the drain, then one per last look: {:#?}",
        w.log
    );
    assert_eq!(r.location, Location::Unknown, "{r:?}");
    assert!(
        r.notes.iter().any(|n| n.contains("last 3 looks")),
        "{:?}",
        r.notes
    );
}
