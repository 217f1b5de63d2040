//! Regressions found by an adversarial review of the machine: each test
//! drives `Machine` by hand through a sequence that once broke it; times
//! are milliseconds since the start.
#![cfg(test)]

use std::time::Duration;

use crate::balancer::ListedTarget;
use crate::config::{Amount, OnFailure, Pacing, RolloutConfig};
use crate::error::Error;
use crate::executor::{ExecOutcome, Preflight};
use crate::phase::Location;
use crate::report::{AbortReason, Outcome, TargetReport, TargetResult};
use crate::target::{Capabilities, Health, Target, TargetId, TargetState, TargetStatus};

use super::machine::{CallId, Effect, Input, Machine, Reply};

pub(super) fn id(k: usize) -> TargetId {
    TargetId::new(format!("t{k}")).expect("id")
}

pub(super) fn up() -> TargetStatus {
    TargetStatus::new(TargetState::InService, Health::Healthy, Some(0))
}

pub(super) fn out() -> TargetStatus {
    TargetStatus::new(TargetState::OutOfService, Health::Unknown, Some(0))
}

pub(super) fn draining(conns: u64) -> TargetStatus {
    TargetStatus::new(TargetState::Draining, Health::Healthy, Some(conns))
}

pub(super) fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

pub(super) fn caps() -> Capabilities {
    Capabilities::none()
        .with_counts_connections(true)
        .with_graceful_drain(true)
        .with_health_checks(true)
}

pub(super) fn machine(cfg: RolloutConfig, n: usize, poll_ms: u64) -> Machine {
    let listed: Vec<ListedTarget> = (0..n)
        .map(|k| ListedTarget {
            target: Target::new(id(k)),
            status: up(),
        })
        .collect();
    Machine::new(cfg, caps(), ms(poll_ms), false, &listed, "review").expect("machine")
}

/// The one effect of the kind `f` accepts, with its call id.
fn pick<'a>(
    effects: &'a [Effect],
    what: &str,
    f: impl Fn(&Effect) -> bool,
) -> (CallId, &'a Effect) {
    let found: Vec<&Effect> = effects.iter().filter(|e| f(e)).collect();
    assert_eq!(found.len(), 1, "expected one {what} effect in {effects:?}");
    (found[0].call(), found[0])
}

pub(super) fn preflight(e: &[Effect]) -> CallId {
    pick(e, "preflight", |e| matches!(e, Effect::Preflight(..))).0
}
pub(super) fn status(e: &[Effect]) -> CallId {
    pick(e, "status", |e| {
        matches!(e, Effect::Status(..) | Effect::ReadBack(..))
    })
    .0
}
pub(super) fn drain(e: &[Effect]) -> CallId {
    pick(e, "drain", |e| matches!(e, Effect::Drain(..))).0
}
pub(super) fn execute(e: &[Effect]) -> CallId {
    pick(e, "execute", |e| matches!(e, Effect::Execute(..))).0
}
pub(super) fn enable(e: &[Effect]) -> CallId {
    pick(e, "enable", |e| matches!(e, Effect::Enable(..))).0
}

pub(super) fn reply(m: &mut Machine, t: u64, c: CallId, r: Reply) -> Vec<Effect> {
    m.handle(ms(t), Input::Reply(c, r))
}

pub(super) fn ok_status(v: Vec<TargetStatus>) -> Reply {
    Reply::Status(Ok(v))
}

pub(super) fn report(m: &Machine, k: usize) -> TargetReport {
    m.target_reports(|i| format!("enable {i}"))
        .into_iter()
        .find(|r| r.id == id(k))
        .expect("report")
}

/// Preflight, recheck and drain of the first batch of `n` targets, all
/// ready and in service: returns the drain call (answered by the caller).
pub(super) fn to_drain(m: &mut Machine, n: usize) -> CallId {
    let e = m.handle(ms(0), Input::Tick);
    let c = preflight(&e);
    let e = reply(m, 1, c, Reply::Preflight(Ok(vec![Preflight::Ready; n])));
    let c = status(&e);
    let e = reply(m, 2, c, ok_status(vec![up(); n]));
    drain(&e)
}

// (7) After Cancel, a multi-id drain answered NotFound (nothing applied, by
// the trait's contract) is split into NEW per-id drains (change.rs,
// `on_drain`, the `Err(NotFound | InvalidName) if idx.len() > 1` arm does
// not look at `self.cancelled`). Those drains are launched after the
// cancellation, so the driver does not even race them with it.
#[test]
fn cancel_then_split_drain_starts_new_drains() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .build()
        .expect("valid");
    let mut m = machine(cfg, 2, 100);
    let d = to_drain(&mut m, 2);
    let e = m.handle(ms(3), Input::Cancel);
    assert!(e.is_empty(), "{e:?}");
    let e = reply(
        &mut m,
        4,
        d,
        Reply::Changed(Err(Error::target_not_found("t1", None))),
    );
    assert!(
        !e.iter().any(|e| matches!(e, Effect::Drain(..))),
        "new drains after Cancel: {e:?}"
    );
}

// (9) An enable that fails with NotFound for one entry of a host (applied
// for the others) and whose read-back shows it in service goes on to
// Verify and ends `Done`, but `fail()` counted it in `failed` and nothing
// un-counts it (change.rs `on_read_back`, `(After::Enable, InService)`
// with Purpose::Maintained keeps `failure` and `failed`): with
// max_failures = 0 the run aborts on the failure budget while its report
// lists no failed target.
#[test]
fn enable_partial_then_healthy_done_but_counted_against_budget() {
    let cfg = RolloutConfig::builder().build().expect("valid"); // batch 1, max_failures 0
    let mut m = machine(cfg, 2, 10_000);
    let d = to_drain(&mut m, 1);
    let e = reply(&mut m, 3, d, Reply::Changed(Ok(())));
    let p = status(&e);
    let e = reply(&mut m, 4, p, ok_status(vec![out()]));
    let x = execute(&e);
    let e = reply(
        &mut m,
        5,
        x,
        Reply::Executed(Ok(vec![ExecOutcome::success(id(0), ms(1))])),
    );
    let en = enable(&e);
    let e = reply(
        &mut m,
        6,
        en,
        Reply::Changed(Err(Error::target_not_found("t0", None))),
    );
    let rb = status(&e);
    let e = reply(&mut m, 7, rb, ok_status(vec![up()]));
    let v = status(&e);
    let mut e = reply(&mut m, 8, v, ok_status(vec![up()]));
    // Drive what is left to the end: t1 in its turn, the balancer doing
    // what it is told.
    let mut states: std::collections::HashMap<TargetId, TargetStatus> =
        (0..2).map(|k| (id(k), up())).collect();
    let mut t = 9;
    for _ in 0..200 {
        if m.is_finished() {
            break;
        }
        if e.is_empty() {
            let at = m.poll_timeout().expect("not stuck");
            t = t.max(at.as_millis() as u64);
            e = m.handle(ms(t), Input::Tick);
            continue;
        }
        let effect = e.remove(0);
        t += 1;
        let r = match &effect {
            Effect::Preflight(_, ts) => Reply::Preflight(Ok(vec![Preflight::Ready; ts.len()])),
            Effect::Status(_, ids) | Effect::ReadBack(_, ids) => {
                ok_status(ids.iter().map(|i| states[i].clone()).collect())
            }
            Effect::Drain(_, ids) | Effect::Disable(_, ids) => {
                ids.iter()
                    .for_each(|i| drop(states.insert(i.clone(), out())));
                Reply::Changed(Ok(()))
            }
            Effect::Enable(_, ids) => {
                ids.iter()
                    .for_each(|i| drop(states.insert(i.clone(), up())));
                Reply::Changed(Ok(()))
            }
            Effect::Execute(_, ts) => Reply::Executed(Ok(ts
                .iter()
                .map(|t| ExecOutcome::success(t.id.clone(), ms(1)))
                .collect())),
            other => panic!("unexpected {other:?}"),
        };
        e.extend(reply(&mut m, t, effect.call(), r));
    }
    assert!(m.is_finished(), "driven to its end");
    assert_eq!(report(&m, 0).result, TargetResult::Done);
    let failed = m
        .target_reports(|i| i.to_string())
        .iter()
        .filter(|r| matches!(r.result, TargetResult::Failed { .. }))
        .count();
    if let Outcome::Aborted {
        reason: AbortReason::FailureBudget { failed: n, .. },
    } = m.outcome()
    {
        panic!("aborted on the failure budget ({n} failed) but the report lists {failed} failed targets: t0 is Done");
    }
    assert_eq!(failed, 0);
    assert_eq!(
        report(&m, 1).result,
        TargetResult::Done,
        "t1 rolled in its turn"
    );
    assert_eq!(m.outcome(), Outcome::Completed);
}

// (9) The failure budget depends on ordering: a target whose maintenance
// FAILED (on_failure = restore) and which then vanishes while its health
// is verified is un-counted (`finish` with End::Vanished does
// `self.failed -= 1`, mod.rs). max_failures = 1: two maintenances fail,
// yet the third target is started. Had the second failure come before the
// vanish (window pacing), the run would have aborted.
#[test]
fn vanish_after_failed_maintenance_uncounts_the_failure() {
    let cfg = RolloutConfig::builder()
        .max_failures(Amount::Count(1))
        .on_failure(OnFailure::Restore)
        .build()
        .expect("valid");
    let mut m = machine(cfg, 3, 10_000);
    // t0: maintenance fails, put back, vanishes while verified.
    let d = to_drain(&mut m, 1);
    let e = reply(&mut m, 3, d, Reply::Changed(Ok(())));
    let p = status(&e);
    let e = reply(&mut m, 4, p, ok_status(vec![out()]));
    let x = execute(&e);
    let e = reply(
        &mut m,
        5,
        x,
        Reply::Executed(Ok(vec![ExecOutcome::failure(id(0), ms(1), "boom")])),
    );
    let en = enable(&e);
    let e = reply(&mut m, 6, en, Reply::Changed(Ok(())));
    let v = status(&e);
    let e = reply(
        &mut m,
        7,
        v,
        Reply::Status(Err(Error::target_not_found("t0", None))),
    );
    // t1: maintenance fails too: 2 failed maintenances > max_failures 1.
    let c = preflight(&e);
    let e = reply(&mut m, 8, c, Reply::Preflight(Ok(vec![Preflight::Ready])));
    let c = status(&e);
    let e = reply(&mut m, 9, c, ok_status(vec![up()]));
    let d = drain(&e);
    let e = reply(&mut m, 10, d, Reply::Changed(Ok(())));
    let p = status(&e);
    let e = reply(&mut m, 11, p, ok_status(vec![out()]));
    let x = execute(&e);
    let e = reply(
        &mut m,
        12,
        x,
        Reply::Executed(Ok(vec![ExecOutcome::failure(id(1), ms(1), "boom")])),
    );
    let en = enable(&e);
    let e = reply(&mut m, 13, en, Reply::Changed(Ok(())));
    let v = status(&e);
    let e = reply(&mut m, 14, v, ok_status(vec![up()]));
    assert!(
        !e.iter().any(|e| matches!(e, Effect::Preflight(..))),
        "two maintenances failed with max_failures = 1, yet t2 starts: {e:?}"
    );
}

// (6) on_failure = restore: a maintained target whose status after the
// enable shows it OutOfService until the health timeout is reported
// `location: InService` (observe.rs `on_unhealthy`, Restore arm:
// `finish(Failed)` keeps the location the enable reply set), although the
// last thing the run learned is that it is out of rotation.
#[test]
fn restore_reports_in_service_a_target_last_seen_out() {
    let cfg = RolloutConfig::builder()
        .on_failure(OnFailure::Restore)
        .health_timeout(ms(1000))
        .build()
        .expect("valid");
    let mut m = machine(cfg, 1, 10_000);
    let d = to_drain(&mut m, 1);
    let e = reply(&mut m, 3, d, Reply::Changed(Ok(())));
    let p = status(&e);
    let e = reply(&mut m, 4, p, ok_status(vec![out()]));
    let x = execute(&e);
    let e = reply(
        &mut m,
        5,
        x,
        Reply::Executed(Ok(vec![ExecOutcome::success(id(0), ms(1))])),
    );
    let en = enable(&e);
    let e = reply(&mut m, 6, en, Reply::Changed(Ok(())));
    let v = status(&e);
    let e = reply(&mut m, 2000, v, ok_status(vec![out()]));
    // The run's last look at it before it ends: still out.
    let last = status(&e);
    let _ = reply(&mut m, 2001, last, ok_status(vec![out()]));
    assert!(m.is_finished());
    let r = report(&m, 0);
    assert!(matches!(r.result, TargetResult::Failed { .. }), "{r:?}");
    assert_ne!(
        r.location,
        Location::InService,
        "last status said OutOfService: {r:?}"
    );
}

// (6)/fresh health: the new guard poll (observe.rs `watch`, Watch::Guard)
// includes a target while it is executing; the enable is sent and
// answered while that poll is in flight, and the poll's answer is then
// judged as the target's health after the enable (`on_poll`, Step::Verify
// arm). The observation was requested BEFORE the enable: a stale check
// makes the target Done.
#[test]
fn guard_poll_sent_before_enable_counts_as_fresh_health() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine(cfg, 1, 100);
    let d = to_drain(&mut m, 1);
    let e = reply(&mut m, 3, d, Reply::Changed(Ok(())));
    let p = status(&e);
    let e = reply(&mut m, 4, p, ok_status(vec![out()]));
    let x = execute(&e);
    // The guard poll, sent while t0 executes.
    let e = m.handle(ms(200), Input::Tick);
    let guard = status(&e);
    let e = reply(
        &mut m,
        201,
        x,
        Reply::Executed(Ok(vec![ExecOutcome::success(id(0), ms(1))])),
    );
    let en = enable(&e);
    let _ = reply(&mut m, 202, en, Reply::Changed(Ok(())));
    // The answer to the poll sent at 200 (before the enable at 201).
    let _ = reply(&mut m, 203, guard, ok_status(vec![up()]));
    assert_ne!(
        report(&m, 0).result,
        TargetResult::Done,
        "Done on a status requested before its enable"
    );
}

// (2) Batches: t0 is drained and waits for t1; the balancer puts t0 back
// (drain_lost), the guard drains it again, and the next poll shows t0
// Draining with 5 connections. As soon as t1 is drained the batch
// executes, t0 included: the guard arm of `on_poll` only records
// `seen_out` and t0 stays Step::Drained (observe.rs `drain_lost` /
// `on_redrain` never send it back to Step::Draining).
#[test]
fn redrained_target_is_executed_with_connections_left() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .build()
        .expect("valid");
    let mut m = machine(cfg, 2, 100);
    let d = to_drain(&mut m, 2);
    let e = reply(&mut m, 3, d, Reply::Changed(Ok(())));
    let p = status(&e);
    let e = reply(&mut m, 4, p, ok_status(vec![out(), draining(3)]));
    assert!(!e.iter().any(|e| matches!(e, Effect::Execute(..))));
    let e = m.handle(ms(103), Input::Tick);
    let p = status(&e);
    // t0 is back in service (a reload); t1 still draining.
    let e = reply(&mut m, 104, p, ok_status(vec![up(), draining(3)]));
    let rd = drain(&e);
    // The re-drain applied: a status is read at once.
    let e = reply(&mut m, 105, rd, Reply::Changed(Ok(())));
    let p = status(&e);
    // t0 draining with 5 connections (it served again); t1 drained.
    let e = reply(&mut m, 204, p, ok_status(vec![draining(5), out()]));
    for e in &e {
        if let Effect::Execute(_, ts) = e {
            assert!(
                !ts.iter().any(|t| t.id == id(0)),
                "t0 executed while last seen Draining with 5 connections: {e:?}"
            );
        }
    }
}

// (6) The guard saw t0 back in service and sent a re-drain; t0's
// maintenance then fails (keep out) and it is finished as KeptOut; the
// re-drain then fails. The report says `kept_out` / KeptOut, but the last
// thing the run learned is that t0 is IN SERVICE and taking it out again
// failed (observe.rs `on_redrain` Err arm only adds a note; `finish` had
// turned OutByRun into KeptOut).
#[test]
fn failed_redrain_after_finish_reports_kept_out_while_in_service() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine(cfg, 1, 100);
    let d = to_drain(&mut m, 1);
    let e = reply(&mut m, 3, d, Reply::Changed(Ok(())));
    let p = status(&e);
    let e = reply(&mut m, 4, p, ok_status(vec![out()]));
    let x = execute(&e);
    let e = m.handle(ms(103), Input::Tick);
    let guard = status(&e);
    let e = reply(&mut m, 104, guard, ok_status(vec![up()]));
    let rd = drain(&e);
    let _ = reply(
        &mut m,
        105,
        x,
        Reply::Executed(Ok(vec![ExecOutcome::failure(id(0), ms(1), "boom")])),
    );
    let e = reply(
        &mut m,
        106,
        rd,
        Reply::Changed(Err(Error::unavailable("lb", "down"))),
    );
    // The failed re-drain of a finished target is read back; before the
    // run ends it is looked at again (and drained again, refused) until
    // its last looks are spent.
    let mut pending = e;
    let mut t = 107;
    while let Some(e) = pending.pop() {
        t += 1;
        let r = match e {
            Effect::Status(..) | Effect::ReadBack(..) => ok_status(vec![up()]),
            Effect::Drain(..) | Effect::Disable(..) => {
                Reply::Changed(Err(Error::unavailable("lb", "down")))
            }
            other => panic!("unexpected {other:?}"),
        };
        pending.extend(reply(&mut m, t, e.call(), r));
        assert!(t < 130, "the last looks never end");
    }
    assert!(m.is_finished());
    let r = report(&m, 0);
    assert_ne!(
        r.location,
        Location::KeptOut,
        "last seen in service and the re-drain failed: {r:?}"
    );
}

// Restore vs KeepOut: with on_failure = restore, a maintained target whose
// status read after the enable fails (retries exhausted) is taken OUT of
// rotation again (observe.rs `poll_failed`, Step::Verify arm: the `_`
// case calls `keep_out_again` whatever `on_failure` says), the opposite of
// restore.
#[test]
fn restore_status_error_after_enable_takes_target_out() {
    let cfg = RolloutConfig::builder()
        .on_failure(OnFailure::Restore)
        .pacing(Pacing::Window)
        .build()
        .expect("valid");
    let mut m = machine(cfg, 1, 10_000);
    let d = to_drain(&mut m, 1);
    let e = reply(&mut m, 3, d, Reply::Changed(Ok(())));
    let p = status(&e);
    let e = reply(&mut m, 4, p, ok_status(vec![out()]));
    let x = execute(&e);
    let e = reply(
        &mut m,
        5,
        x,
        Reply::Executed(Ok(vec![ExecOutcome::success(id(0), ms(1))])),
    );
    let en = enable(&e);
    let e = reply(&mut m, 6, en, Reply::Changed(Ok(())));
    let v = status(&e);
    let e = reply(
        &mut m,
        7,
        v,
        Reply::Status(Err(Error::unavailable("lb", "down"))),
    );
    assert!(
        !e.iter()
            .any(|e| matches!(e, Effect::Drain(..) | Effect::Disable(..))),
        "on_failure = restore, yet the target is taken out: {e:?}"
    );
}

// Never silent: a report taken while a target is mid-way (a driver that
// stopped early) names it as failed where it is, never "not started".
#[test]
fn a_target_mid_way_is_never_reported_not_started() {
    let cfg = RolloutConfig::builder().build().expect("valid");
    let mut m = machine(cfg, 2, 100);
    let d = to_drain(&mut m, 1);
    let _ = reply(&mut m, 3, d, Reply::Changed(Ok(())));
    let r = report(&m, 0);
    match r.result {
        TargetResult::Failed {
            kept_out: true,
            restore_hint: Some(_),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(r.location, Location::KeptOut);
    assert_eq!(report(&m, 1).result, TargetResult::NotStarted);
}
