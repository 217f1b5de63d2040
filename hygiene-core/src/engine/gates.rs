//! Gates and `wait_between_batches` in the machine: a no holds the
//! rollout (nothing new is drained), a go lets it on, the timeout decides
//! as `on_gate_timeout` says. The machine runs against a world in memory
//! that answers every effect 1 ms after it was asked; gates answer from a
//! script. Times are milliseconds.
#![cfg(test)]

use std::collections::{HashMap, VecDeque};

use crate::balancer::ListedTarget;
use crate::config::{Amount, Pacing, RolloutConfig};
use crate::error::Error;
use crate::executor::{ExecOutcome, Preflight};
use crate::gate::{GatePolicy, GateVerdict, GateWhen, OnGateTimeout};
use crate::report::{AbortReason, EventKind, Outcome, TargetResult};
use crate::target::{Target, TargetId, TargetStatus};

use super::machine::{Effect, GateSpec, Input, Machine, Reply};
use super::regressions::{caps, id, ms, out, report, up};

/// The gate's answer at `now` to the ask at `when` of `batch`.
type Script = Box<dyn FnMut(u64, GateWhen, usize) -> Result<GateVerdict, Error>>;

struct World {
    states: HashMap<TargetId, TargetStatus>,
    /// Every effect, with the time it was asked.
    log: Vec<(u64, Effect)>,
    events: Vec<(u64, Option<usize>, EventKind)>,
    now: u64,
}

impl World {
    fn new(n: usize) -> Self {
        Self {
            states: (0..n).map(|k| (id(k), up())).collect(),
            log: Vec::new(),
            events: Vec::new(),
            now: 0,
        }
    }

    fn answer(&mut self, e: &Effect, script: &mut Script) -> Reply {
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
            Effect::Execute(_, targets) => Reply::Executed(Ok(targets
                .iter()
                .map(|t| ExecOutcome::success(t.id.clone(), ms(1)))
                .collect())),
            Effect::Gate(_, ask) => Reply::Gate(script(self.now, ask.when, ask.batch)),
            other => panic!("unexpected effect {other:?}"),
        }
    }

    /// Drives `m` to its end (or `limit` ms); `cancel_at` cancels the run.
    fn drive(&mut self, m: &mut Machine, mut script: Script, limit: u64, cancel_at: Option<u64>) {
        let mut pending: VecDeque<Effect> = m.handle(ms(0), Input::Tick).into();
        let mut cancelled = false;
        self.collect(m);
        while self.now < limit {
            if let Some(at) = cancel_at.filter(|&at| !cancelled && self.now >= at) {
                cancelled = true;
                pending.extend(m.handle(ms(at.max(self.now)), Input::Cancel));
                self.collect(m);
                continue;
            }
            if let Some(e) = pending.pop_front() {
                self.log.push((self.now, e.clone()));
                self.now += 1;
                let r = self.answer(&e, &mut script);
                pending.extend(m.handle(ms(self.now), Input::Reply(e.call(), r)));
                self.collect(m);
                continue;
            }
            if m.is_finished() {
                return;
            }
            let t = m.poll_timeout().expect("the machine is stuck");
            let t = t.as_millis() as u64;
            self.now = self.now.max(t);
            if let Some(at) = cancel_at.filter(|&at| !cancelled && at < t) {
                self.now = self.now.min(at.max(self.now));
                continue;
            }
            pending.extend(m.handle(ms(self.now), Input::Tick));
            self.collect(m);
        }
    }

    fn collect(&mut self, m: &mut Machine) {
        while let Some((b, k)) = m.poll_event() {
            self.events.push((self.now, b, k));
        }
    }

    /// When each drain was asked.
    fn drains(&self) -> Vec<u64> {
        self.log
            .iter()
            .filter(|(_, e)| matches!(e, Effect::Drain(..)))
            .map(|(t, _)| *t)
            .collect()
    }

    fn gate_asks(&self, when: GateWhen) -> Vec<(u64, usize)> {
        self.log
            .iter()
            .filter_map(|(t, e)| match e {
                Effect::Gate(_, a) if a.when == when => Some((*t, a.batch)),
                _ => None,
            })
            .collect()
    }

    fn count(&self, f: impl Fn(&EventKind) -> bool) -> usize {
        self.events.iter().filter(|(_, _, k)| f(k)).count()
    }
}

fn machine(cfg: RolloutConfig, n: usize, gates: Vec<GateSpec>) -> Machine {
    let listed: Vec<ListedTarget> = (0..n)
        .map(|k| ListedTarget {
            target: Target::new(id(k)),
            status: up(),
        })
        .collect();
    Machine::new(cfg, caps(), ms(10), false, &listed, "gates")
        .expect("machine")
        .with_gates(gates)
}

fn gate(name: &str, interval: u64, timeout: u64) -> GateSpec {
    GateSpec {
        name: name.into(),
        policy: GatePolicy::new(ms(interval), ms(timeout)).expect("policy"),
        hook: false,
    }
}

fn hold() -> Result<GateVerdict, Error> {
    Ok(GateVerdict::Hold("alert firing".into()))
}

fn batches(n: usize) -> RolloutConfig {
    RolloutConfig::builder()
        .batch_size(Amount::Count(n))
        .build()
        .expect("valid")
}

#[test]
fn a_gate_that_says_no_before_the_first_batch_holds_every_drain_until_it_says_go() {
    let mut w = World::new(2);
    let mut m = machine(batches(1), 2, vec![gate("alerts", 100, 10_000)]);
    // No until 350 ms, then go.
    let script: Script = Box::new(|now, _, _| {
        if now < 350 {
            hold()
        } else {
            Ok(GateVerdict::Go)
        }
    });
    w.drive(&mut m, script, 60_000, None);
    assert_eq!(m.outcome(), Outcome::Completed);
    let first_drain = w.drains()[0];
    assert!(
        first_drain > 350,
        "drained at {first_drain} while the gate said no"
    );
    // Asked at once, then every 100 ms until the go.
    let asks: Vec<u64> = w
        .gate_asks(GateWhen::Before)
        .iter()
        .filter(|(_, b)| *b == 0)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(asks, vec![0, 101, 202, 303, 404], "{asks:?}");
    assert_eq!(
        w.count(|k| matches!(k, EventKind::GateHolding { .. })),
        1,
        "held once: {:?}",
        w.events
    );
    assert_eq!(
        w.count(|k| matches!(k, EventKind::GateChecked { go: false, .. })),
        4
    );
    // Asked again before the second batch (the first had said go).
    assert!(w.gate_asks(GateWhen::Before).iter().any(|(_, b)| *b == 1));
    assert!(w.gate_asks(GateWhen::After).iter().any(|(_, b)| *b == 1));
}

#[test]
fn a_gate_that_never_says_go_aborts_at_its_timeout_and_nothing_is_drained() {
    let mut w = World::new(3);
    let mut m = machine(batches(1), 3, vec![gate("alerts", 100, 1_000)]);
    w.drive(&mut m, Box::new(|_, _, _| hold()), 60_000, None);
    assert!(m.is_finished());
    match m.outcome() {
        Outcome::Aborted {
            reason:
                AbortReason::Gate {
                    gate,
                    when: GateWhen::Before,
                    batch: 0,
                    waited,
                    reason,
                },
        } => {
            assert_eq!(gate, "alerts");
            // The last ask is at the timeout (answered 1 ms later).
            assert_eq!(waited, ms(1_001));
            assert_eq!(reason, "alert firing");
        }
        other => panic!("{other:?}"),
    }
    assert!(w.drains().is_empty(), "{:?}", w.log);
    for k in 0..3 {
        assert_eq!(report(&m, k).result, TargetResult::NotStarted);
    }
    assert_eq!(
        w.count(|k| matches!(
            k,
            EventKind::GateTimedOut {
                action: OnGateTimeout::Abort,
                ..
            }
        )),
        1
    );
}

#[test]
fn proceed_at_the_timeout_lets_the_rollout_go_on() {
    let cfg = RolloutConfig::builder()
        .on_gate_timeout(OnGateTimeout::Proceed)
        .build()
        .expect("valid");
    let mut w = World::new(2);
    let mut m = machine(cfg, 2, vec![gate("alerts", 100, 300)]);
    w.drive(&mut m, Box::new(|_, _, _| hold()), 60_000, None);
    assert_eq!(m.outcome(), Outcome::Completed);
    assert_eq!(report(&m, 0).result, TargetResult::Done);
    assert_eq!(report(&m, 1).result, TargetResult::Done);
    assert!(w.drains()[0] >= 300);
}

#[test]
fn a_gate_that_cannot_be_asked_counts_as_no() {
    let mut w = World::new(1);
    let mut m = machine(batches(1), 1, vec![gate("prometheus", 100, 200)]);
    let script: Script = Box::new(|_, _, _| Err(Error::unavailable("prometheus", "refused")));
    w.drive(&mut m, script, 60_000, None);
    assert!(w.drains().is_empty());
    assert!(matches!(
        m.outcome(),
        Outcome::Aborted {
            reason: AbortReason::Gate { reason, .. }
        } if reason.contains("could not be asked") && reason.contains("refused")
    ));
}

#[test]
fn wait_between_batches_soaks_after_each_batch_but_the_last() {
    let cfg = RolloutConfig::builder()
        .wait_between_batches(ms(5_000))
        .build()
        .expect("valid");
    let mut w = World::new(3);
    let mut m = machine(cfg, 3, Vec::new());
    w.drive(
        &mut m,
        Box::new(|_, _, _| Ok(GateVerdict::Go)),
        600_000,
        None,
    );
    assert_eq!(m.outcome(), Outcome::Completed);
    let d = w.drains();
    assert_eq!(d.len(), 3);
    assert!(d[1] - d[0] >= 5_000, "{d:?}");
    assert!(d[2] - d[1] >= 5_000, "{d:?}");
    assert_eq!(w.count(|k| matches!(k, EventKind::Soaking { .. })), 2);
    // Not after the last batch: the run ends right after it is back.
    let last_done = w.events.last().map(|(t, _, _)| *t).expect("events");
    assert!(last_done < d[2] + 1_000, "{last_done} vs {d:?}");
}

#[test]
fn the_gates_after_a_batch_are_asked_after_the_soak() {
    let cfg = RolloutConfig::builder()
        .wait_between_batches(ms(1_000))
        .build()
        .expect("valid");
    let mut w = World::new(2);
    let g = GateSpec {
        name: "after".into(),
        policy: GatePolicy::new(ms(100), ms(10_000))
            .expect("policy")
            .only(GateWhen::After),
        hook: false,
    };
    let mut m = machine(cfg, 2, vec![g]);
    w.drive(
        &mut m,
        Box::new(|_, _, _| Ok(GateVerdict::Go)),
        600_000,
        None,
    );
    let soak_at = w
        .events
        .iter()
        .find(|(_, _, k)| matches!(k, EventKind::Soaking { .. }))
        .map(|(t, _, _)| *t)
        .expect("soaked");
    let asks = w.gate_asks(GateWhen::After);
    assert_eq!(
        asks.len(),
        2,
        "after each batch, the last one too: {asks:?}"
    );
    assert!(asks[0].0 >= soak_at + 1_000, "{asks:?} soak at {soak_at}");
    assert!(w.gate_asks(GateWhen::Before).is_empty());
    assert!(w.drains()[1] > asks[0].0);
    // The after-stage of a batch starts once it is back: the soak after
    // t0's put-back, the last gate after t1's; no soak after the last one.
    let enabled = |k: usize| {
        w.log
            .iter()
            .find(|(_, e)| matches!(e, Effect::Enable(_, ids) if ids.contains(&id(k))))
            .map(|(t, _)| *t)
            .expect("put back")
    };
    assert!(soak_at > enabled(0), "soak at {soak_at}: {:#?}", w.log);
    assert!(asks[1].0 > enabled(1), "{asks:?}: {:#?}", w.log);
    assert_eq!(w.count(|k| matches!(k, EventKind::Soaking { .. })), 1);
    assert!(asks[1].0 < enabled(1) + 1_000, "{asks:?}");
    // Each after-gate is told the targets of its batch.
    let told: Vec<(usize, Vec<TargetId>)> = w
        .log
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Gate(_, a) if a.when == GateWhen::After => Some((a.batch, a.targets.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![(0, vec![id(0)]), (1, vec![id(1)])]);
}

#[test]
fn a_gate_after_the_last_batch_decides_how_the_run_ends() {
    let mut w = World::new(1);
    let g = GateSpec {
        name: "slo".into(),
        policy: GatePolicy::new(ms(100), ms(500))
            .expect("policy")
            .only(GateWhen::After),
        hook: false,
    };
    let mut m = machine(batches(1), 1, vec![g]);
    w.drive(&mut m, Box::new(|_, _, _| hold()), 600_000, None);
    // The target is done and back; the run says the service suffered.
    assert_eq!(report(&m, 0).result, TargetResult::Done);
    assert!(matches!(
        m.outcome(),
        Outcome::Aborted {
            reason: AbortReason::Gate {
                when: GateWhen::After,
                batch: 0,
                ..
            }
        }
    ));
}

#[test]
fn a_held_window_drains_nothing_new() {
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .pacing(Pacing::Window)
        .build()
        .expect("valid");
    let mut w = World::new(4);
    let g = GateSpec {
        name: "alerts".into(),
        policy: GatePolicy::new(ms(50), ms(100_000))
            .expect("policy")
            .only(GateWhen::Before),
        hook: false,
    };
    let mut m = machine(cfg, 4, vec![g]);
    // Go for the first group; no from the second on until 2 s.
    let script: Script = Box::new(|now, _, batch| {
        if batch == 0 || now >= 2_000 {
            Ok(GateVerdict::Go)
        } else {
            hold()
        }
    });
    w.drive(&mut m, script, 600_000, None);
    assert_eq!(m.outcome(), Outcome::Completed);
    let d: Vec<(u64, usize)> = w
        .log
        .iter()
        .filter_map(|(t, e)| match e {
            Effect::Drain(_, ids) => Some((*t, ids.len())),
            _ => None,
        })
        .collect();
    assert_eq!(d[0].1, 2, "{d:?}");
    assert!(d[0].0 < 2_000);
    assert!(d[1..].iter().all(|(t, _)| *t >= 2_000), "{d:?}");
    assert_eq!(d.iter().map(|(_, n)| n).sum::<usize>(), 4);
    for k in 0..4 {
        assert_eq!(report(&m, k).result, TargetResult::Done, "t{k}");
    }
}

#[test]
fn cancelling_a_held_run_ends_it_with_nothing_drained() {
    let mut w = World::new(2);
    let mut m = machine(batches(1), 2, vec![gate("alerts", 100, 100_000)]);
    w.drive(&mut m, Box::new(|_, _, _| hold()), 600_000, Some(450));
    assert!(m.is_finished());
    assert_eq!(m.outcome(), Outcome::Cancelled);
    assert!(w.drains().is_empty());
    assert!(w.now < 1_000, "ended at {}", w.now);
}

/// mod.rs `on_gate`: a gate's answer that comes after the run was
/// cancelled changes nothing (no check reported, no decision).
#[test]
fn a_gate_answer_after_a_cancel_is_ignored() {
    let mut w = World::new(2);
    let mut m = machine(batches(1), 2, vec![gate("alerts", 100, 100_000)]);
    // Asks at 0, 101, 202: cancelled while the third is in flight.
    w.drive(&mut m, Box::new(|_, _, _| hold()), 600_000, Some(202));
    assert_eq!(m.outcome(), Outcome::Cancelled);
    let asks = w.gate_asks(GateWhen::Before);
    assert_eq!(asks.last().map(|(t, _)| *t), Some(202), "{asks:?}");
    let checked: Vec<u64> = w
        .events
        .iter()
        .filter(|(_, _, k)| matches!(k, EventKind::GateChecked { .. }))
        .map(|(t, _, _)| *t)
        .collect();
    assert_eq!(checked, vec![1, 102], "{:?}", w.events);
}

fn hook(name: &str, when: GateWhen) -> GateSpec {
    GateSpec {
        name: name.into(),
        policy: GatePolicy::new(ms(60_000), ms(60_000))
            .expect("policy")
            .only(when),
        hook: true,
    }
}

/// The effects asked, in order, as short names.
fn order(w: &World) -> Vec<String> {
    w.log
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Gate(_, a) => Some(format!("{}:{}:{}", a.gate, a.when, a.batch)),
            Effect::Drain(..) => Some("drain".into()),
            _ => None,
        })
        .collect()
}

#[test]
fn hooks_run_once_after_the_gates_before_a_batch_and_first_after_it() {
    let cfg = RolloutConfig::builder()
        .wait_between_batches(ms(1_000))
        .build()
        .expect("valid");
    let mut w = World::new(2);
    let mut m = machine(
        cfg,
        2,
        vec![
            gate("alerts", 100, 10_000),
            hook("pre", GateWhen::Before),
            hook("post", GateWhen::After),
        ],
    );
    w.drive(
        &mut m,
        Box::new(|_, _, _| Ok(GateVerdict::Go)),
        600_000,
        None,
    );
    assert_eq!(m.outcome(), Outcome::Completed);
    assert_eq!(
        order(&w),
        [
            "0:before:0",
            "1:before:0",
            "drain",
            "2:after:0",
            "0:after:0",
            "0:before:1",
            "1:before:1",
            "drain",
            "2:after:1",
            "0:after:1"
        ],
        "gates, then hooks, then the drain; after: hooks, soak, gates"
    );
    // The soak is between the hook after batch 0 and the gates after it.
    let at = |what: &str| {
        w.log
            .iter()
            .find(|(_, e)| matches!(e, Effect::Gate(_, a) if format!("{}:{}:{}", a.gate, a.when, a.batch) == what))
            .map(|(t, _)| *t)
            .expect(what)
    };
    assert!(at("0:after:0") >= at("2:after:0") + 1_000);
    assert_eq!(
        w.count(|k| matches!(k, EventKind::HookRan { ok: true, .. })),
        4
    );
}

#[test]
fn a_failing_hook_before_a_batch_stops_the_run_by_name_with_nothing_drained() {
    let mut w = World::new(2);
    let mut m = machine(batches(1), 2, vec![hook("pre", GateWhen::Before)]);
    let script: Script =
        Box::new(|_, _, _| Ok(GateVerdict::Hold("pre exited 2: no ticket".into())));
    w.drive(&mut m, script, 600_000, None);
    assert!(w.drains().is_empty());
    match m.outcome() {
        Outcome::Aborted {
            reason:
                AbortReason::Hook {
                    hook,
                    when,
                    batch,
                    message,
                },
        } => {
            assert_eq!((hook.as_str(), when, batch), ("pre", GateWhen::Before, 0));
            assert!(message.contains("no ticket"));
        }
        other => panic!("{other:?}"),
    }
    // Asked once: a hook is no gate.
    assert_eq!(w.gate_asks(GateWhen::Before).len(), 1);
}

#[test]
fn a_failing_hook_after_a_batch_starts_nothing_more() {
    let mut w = World::new(3);
    let mut m = machine(batches(1), 3, vec![hook("post", GateWhen::After)]);
    let script: Script = Box::new(|_, _, _| Err(Error::unavailable("post", "cannot run it")));
    w.drive(&mut m, script, 600_000, None);
    assert_eq!(w.drains().len(), 1);
    assert_eq!(report(&m, 0).result, TargetResult::Done);
    assert_eq!(report(&m, 1).result, TargetResult::NotStarted);
    assert!(matches!(
        m.outcome(),
        Outcome::Aborted { reason: AbortReason::Hook { message, .. } } if message.contains("could not run")
    ));
}
