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
