//! Property tests of the rollout machine alone, with no driver and no
//! runtime: a simulated balancer, executor and probe answer its effects
//! after random delays, with random faults (final errors, calls applied
//! and then reported failed, calls that hang, targets removed from the
//! pool, cancellation at any point), and every invariant is checked from
//! the outside, on what the simulated world saw.
//!
//! `SIM_TRACE=1` prints every call, answer and crash of a case;
//! `SIM_DEBUG=1` prints the machine a case that did not finish left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use crate::balancer::ListedTarget;
use crate::config::{Amount, OnDrainTimeout, OnFailure, Pacing, RolloutConfig};
use crate::error::Error;
use crate::executor::{ExecHandle, ExecOutcome, Preflight, Recovered};
use crate::probe::ProbeVerdict;
use crate::report::{Outcome, TargetResult};
use crate::target::{Capabilities, Health, Target, TargetId, TargetState, TargetStatus};

use super::driver::{abandoned, cancellable};
use super::machine::{CallId, Effect, Input, Machine, Recovery, Reply};
use super::record::{finished_record, intent_record, result_record};
use crate::journal::{Header, Record, Trace, JOURNAL_FORMAT};

const NEVER: u64 = u64::MAX;
const CALL_LIMIT_MS: u64 = 30_000;

#[derive(Debug, Clone)]
struct TPlan {
    conns: u64,
    drain_ms: u64,
    exec_ms: u64,
    exec_fails: bool,
    not_ready: bool,
    probe_fail_first: u8,
    probe_never: bool,
    unhealthy_after_enable: bool,
    health_delay_ms: u64,
    out_at_start: bool,
    vanish_at_ms: Option<u64>,
    /// From this time, the first moment the target is out of rotation the
    /// balancer puts it back on its own (a reload, an agent, an operator).
    put_back_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The call fails for good (retries exhausted), nothing applied.
    Error,
    /// A change applied, then reported failed (one node of two).
    AppliedThenError,
    /// The call never answers: abandoned on cancel, or timed out.
    Hang,
}

#[derive(Debug, Clone)]
struct Plan {
    targets: Vec<TPlan>,
    batch: usize,
    min_healthy: usize,
    max_failures: usize,
    canary: bool,
    on_failure: OnFailure,
    on_drain_timeout: OnDrainTimeout,
    pacing: Pacing,
    drain_timeout_ms: u64,
    health_timeout_ms: u64,
    warmup_ms: u64,
    poll_ms: u64,
    hard_disable: bool,
    probe: bool,
    cancel_at_ms: Option<u64>,
    /// The process dies after this many effects, and a new one resumes
    /// the run from its journal.
    crash_after: Option<usize>,
    /// One fault per call, in call order (cycled).
    faults: Vec<(Fault, u64)>,
}

fn tplan() -> impl Strategy<Value = TPlan> {
    (
        (0u64..4, 0u64..3000, 0u64..2000, prop::bool::weighted(0.1)),
        (
            prop::bool::weighted(0.05),
            0u8..3,
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.08),
        ),
        (
            0u64..2000,
            prop::bool::weighted(0.05),
            prop::option::weighted(0.08, 0u64..20_000),
            prop::option::weighted(0.15, 0u64..20_000),
        ),
    )
        .prop_map(
            |(
                (conns, drain_ms, exec_ms, exec_fails),
                (not_ready, probe_fail_first, probe_never, unhealthy_after_enable),
                (health_delay_ms, out_at_start, vanish_at_ms, put_back_at_ms),
            )| TPlan {
                conns,
                drain_ms,
                exec_ms,
                exec_fails,
                not_ready,
                probe_fail_first,
                probe_never,
                unhealthy_after_enable,
                health_delay_ms,
                out_at_start,
                vanish_at_ms,
                put_back_at_ms,
            },
        )
}

fn fault() -> impl Strategy<Value = (Fault, u64)> {
    (
        prop_oneof![
            96 => Just(Fault::None),
            1 => Just(Fault::Error),
            2 => Just(Fault::AppliedThenError),
            1 => Just(Fault::Hang),
        ],
        0u64..400,
    )
}

fn plan() -> impl Strategy<Value = Plan> {
    (1usize..=10).prop_flat_map(|n| {
        (
            prop::collection::vec(tplan(), n),
            (
                1usize..=4,
                prop_oneof![2 => Just(0usize), 1 => 0usize..n],
                prop_oneof![0usize..3, 3usize..=10],
                any::<bool>(),
            ),
            (
                prop_oneof![Just(OnFailure::KeepOut), Just(OnFailure::Restore)],
                prop_oneof![Just(OnDrainTimeout::Fail), Just(OnDrainTimeout::Proceed)],
                prop_oneof![Just(Pacing::Batches), Just(Pacing::Window)],
            ),
            (1000u64..4000, 1000u64..5000, 0u64..1000, 100u64..500),
            (
                any::<bool>(),
                any::<bool>(),
                prop::option::weighted(0.3, 0u64..30_000),
                prop::option::weighted(0.5, 0usize..60),
            ),
            prop::collection::vec(fault(), 1..200),
        )
            .prop_map(
                |(
                    targets,
                    (batch, min_healthy, max_failures, canary),
                    (on_failure, on_drain_timeout, pacing),
                    (drain_timeout_ms, health_timeout_ms, warmup_ms, poll_ms),
                    (hard_disable, probe, cancel_at_ms, crash_after),
                    faults,
                )| Plan {
                    targets,
                    batch,
                    min_healthy,
                    max_failures,
                    canary,
                    on_failure,
                    on_drain_timeout,
                    pacing,
                    drain_timeout_ms,
                    health_timeout_ms,
                    warmup_ms,
                    poll_ms,
                    hard_disable,
                    probe,
                    cancel_at_ms,
                    crash_after,
                    faults,
                },
            )
    })
}

/// A target with nothing in flight, nothing slow and nothing failing.
#[cfg(test)]
fn quiet() -> TPlan {
    TPlan {
        conns: 0,
        drain_ms: 0,
        exec_ms: 0,
        exec_fails: false,
        not_ready: false,
        probe_fail_first: 0,
        probe_never: false,
        unhealthy_after_enable: false,
        health_delay_ms: 0,
        out_at_start: false,
        vanish_at_ms: None,
        put_back_at_ms: None,
    }
}

/// A plan of `targets` one at a time, with no failure allowed and every
/// other setting at its simplest; cases override what they need.
#[cfg(test)]
fn plan_of(targets: Vec<TPlan>, faults: Vec<(Fault, u64)>) -> Plan {
    Plan {
        targets,
        batch: 1,
        min_healthy: 0,
        max_failures: 0,
        canary: false,
        on_failure: OnFailure::KeepOut,
        on_drain_timeout: OnDrainTimeout::Fail,
        pacing: Pacing::Batches,
        drain_timeout_ms: 1000,
        health_timeout_ms: 1000,
        warmup_ms: 0,
        poll_ms: 100,
        hard_disable: false,
        probe: false,
        cancel_at_ms: None,
        crash_after: None,
        faults,
    }
}

fn id(k: usize) -> TargetId {
    TargetId::new(format!("t{k}")).expect("id")
}

#[derive(Debug, Clone)]
struct WTarget {
    exists: bool,
    state: TargetState,
    drained_at: u64,
    enabled_at: Option<u64>,
    probes: u8,
    /// Calls that may have changed it (a drain or disable was sent).
    touched: bool,
    executed: Vec<(u64, bool)>,
    probe_passed_after: Option<u64>,
    fresh_healthy_seen: bool,
    enable_done_at: Option<u64>,
    /// The state the last status answered to the machine showed.
    last_seen: Option<TargetState>,
    /// Put back by the balancer on its own (once).
    put_back: bool,
}

struct World<'a> {
    p: &'a Plan,
    t: Vec<WTarget>,
    index: BTreeMap<TargetId, usize>,
    calls: usize,
}

impl World<'_> {
    fn status(&self, k: usize, now: u64) -> TargetStatus {
        let w = &self.t[k];
        let plan = &self.p.targets[k];
        let conns = match w.state {
            TargetState::InService => plan.conns,
            TargetState::Draining if now >= w.drained_at + plan.drain_ms => 0,
            TargetState::Draining => plan.conns,
            TargetState::OutOfService => 0,
        };
        let health = match w.enabled_at {
            _ if plan.out_at_start && w.enabled_at.is_none() => Health::Unknown,
            Some(at) if now < at + plan.health_delay_ms => Health::Unknown,
            Some(_) if plan.unhealthy_after_enable => Health::Unhealthy,
            _ => Health::Healthy,
        };
        TargetStatus::new(w.state, health, Some(conns))
    }

    fn find(&self, ids: &[TargetId]) -> Result<Vec<usize>, Error> {
        ids.iter()
            .map(|i| match self.index.get(i) {
                Some(&k) if self.t[k].exists => Ok(k),
                _ => Err(Error::target_not_found(i.as_str(), None)),
            })
            .collect()
    }

    fn apply(&mut self, effect: &Effect, now: u64) {
        let Ok(ks) = (match effect {
            Effect::Drain(_, ids) | Effect::Disable(_, ids) | Effect::Enable(_, ids) => {
                self.find(ids)
            }
            _ => return,
        }) else {
            return;
        };
        for k in ks {
            let w = &mut self.t[k];
            match effect {
                Effect::Drain(..) if w.state == TargetState::InService => {
                    w.state = TargetState::Draining;
                    w.drained_at = now;
                }
                Effect::Disable(..) => w.state = TargetState::OutOfService,
                Effect::Enable(..) if w.state != TargetState::InService => {
                    w.state = TargetState::InService;
                    w.enabled_at = Some(now);
                }
                _ => {}
            }
        }
    }

    /// The reply to `effect`, completed at `now` with `fault`.
    fn reply(&mut self, effect: &Effect, fault: Fault, now: u64) -> Reply {
        let err = || Error::unavailable("sim", "injected failure");
        match effect {
            Effect::List(_) => Reply::Listed(match fault {
                Fault::Error => Err(err()),
                _ => Ok(self
                    .t
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.exists)
                    .map(|(k, _)| ListedTarget {
                        target: Target::new(id(k)),
                        status: self.status(k, now),
                    })
                    .collect()),
            }),
            Effect::Status(_, ids) | Effect::ReadBack(_, ids) => Reply::Status(match fault {
                Fault::Error => Err(err()),
                _ => self.find(ids).map(|ks| {
                    ks.into_iter()
                        .map(|k| {
                            let st = self.status(k, now);
                            let w = &mut self.t[k];
                            w.last_seen = Some(st.state);
                            if st.is_serving_healthy() && w.enable_done_at.is_some_and(|e| e <= now)
                            {
                                w.fresh_healthy_seen = true;
                            }
                            st
                        })
                        .collect()
                }),
            }),
            Effect::Preflight(_, targets) => Reply::Preflight(match fault {
                Fault::Error => Err(err()),
                _ => Ok(targets
                    .iter()
                    .map(|t| {
                        let k = self.index[&t.id];
                        if self.p.targets[k].not_ready {
                            Preflight::NotReady("agent offline".into())
                        } else {
                            Preflight::Ready
                        }
                    })
                    .collect()),
            }),
            Effect::Drain(..) | Effect::Disable(..) | Effect::Enable(..) => {
                let found = match effect {
                    Effect::Drain(_, ids) | Effect::Disable(_, ids) | Effect::Enable(_, ids) => {
                        self.find(ids)
                    }
                    _ => unreachable!(),
                };
                if let Err(e) = found {
                    return Reply::Changed(Err(e));
                }
                match fault {
                    Fault::Error => Reply::Changed(Err(err())),
                    Fault::AppliedThenError => {
                        self.apply(effect, now);
                        Reply::Changed(Err(Error::rejected("sim node b", "refused")))
                    }
                    _ => {
                        self.apply(effect, now);
                        Reply::Changed(Ok(()))
                    }
                }
            }
            Effect::Execute(_, targets) => Reply::Executed(match fault {
                Fault::Error => Err(Error::Executor {
                    executor: "sim".into(),
                    message: "injected".into(),
                    source: None,
                }),
                _ => Ok(targets
                    .iter()
                    .map(|t| {
                        let k = self.index[&t.id];
                        let plan = &self.p.targets[k];
                        let d = Duration::from_millis(plan.exec_ms);
                        if plan.exec_fails {
                            ExecOutcome::failure(t.id.clone(), d, "patch failed")
                        } else {
                            ExecOutcome::success(t.id.clone(), d)
                        }
                    })
                    .collect()),
            }),
            Effect::Recover(_, t, _) => Reply::Recovered(match fault {
                Fault::Error => Err(Error::Executor {
                    executor: "sim".into(),
                    message: "injected".into(),
                    source: None,
                }),
                // The maintenance left no status behind.
                Fault::AppliedThenError => Ok(Recovered::Unknown("no status left".into())),
                _ => {
                    let plan = &self.p.targets[self.index[&t.id]];
                    let d = Duration::from_millis(plan.exec_ms);
                    Ok(Recovered::Finished(if plan.exec_fails {
                        ExecOutcome::failure(t.id.clone(), d, "patch failed")
                    } else {
                        ExecOutcome::success(t.id.clone(), d)
                    }))
                }
            }),
            Effect::Probe(_, target) => {
                let k = self.index[&target.id];
                let plan = &self.p.targets[k];
                let w = &mut self.t[k];
                w.probes += 1;
                Reply::Probed(if plan.probe_never || w.probes <= plan.probe_fail_first {
                    Ok(ProbeVerdict::Fail("connection refused".into()))
                } else {
                    w.probe_passed_after = Some(now);
                    Ok(ProbeVerdict::Pass)
                })
            }
            // The simulation configures no gate (engine/gates.rs tests them).
            Effect::Gate(..) => Reply::Gate(Ok(crate::gate::GateVerdict::Go)),
        }
    }
}

fn config(p: &Plan) -> RolloutConfig {
    RolloutConfig::builder()
        .batch_size(Amount::Count(p.batch))
        .min_healthy(Amount::Count(p.min_healthy))
        .max_failures(Amount::Count(p.max_failures))
        .canary(p.canary)
        .on_failure(p.on_failure)
        .on_drain_timeout(p.on_drain_timeout)
        .pacing(p.pacing)
        .drain_timeout(Duration::from_millis(p.drain_timeout_ms))
        .health_timeout(Duration::from_millis(p.health_timeout_ms))
        .warmup(Duration::from_millis(p.warmup_ms))
        .capacity_timeout(Duration::from_secs(5))
        .build()
        .expect("valid config")
}

struct InFlight {
    at: u64,
    call: CallId,
    effect: Effect,
    fault: Fault,
    issued: u64,
}

fn timed_out(e: &Effect) -> Reply {
    let t = Error::Timeout {
        operation: "sim".into(),
        after: Duration::from_millis(CALL_LIMIT_MS),
    };
    match e {
        Effect::List(_) => Reply::Listed(Err(t)),
        Effect::Status(..) | Effect::ReadBack(..) => Reply::Status(Err(t)),
        Effect::Preflight(..) => Reply::Preflight(Err(t)),
        Effect::Execute(..) => Reply::Executed(Err(t)),
        Effect::Recover(..) => Reply::Recovered(Err(t)),
        Effect::Probe(..) => Reply::Probed(Err(t)),
        Effect::Gate(..) => Reply::Gate(Err(t)),
        _ => Reply::Changed(Err(t)),
    }
}

/// Whole milliseconds, rounded up: a driver never wakes before a deadline.
fn ms_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

fn simulate(p: &Plan) -> Result<(), TestCaseError> {
    let mut world = World {
        p,
        t: p.targets
            .iter()
            .map(|tp| WTarget {
                exists: true,
                state: if tp.out_at_start {
                    TargetState::OutOfService
                } else {
                    TargetState::InService
                },
                drained_at: 0,
                enabled_at: None,
                probes: 0,
                touched: false,
                executed: Vec::new(),
                probe_passed_after: None,
                fresh_healthy_seen: false,
                enable_done_at: None,
                last_seen: None,
                put_back: false,
            })
            .collect(),
        index: (0..p.targets.len()).map(|k| (id(k), k)).collect(),
        calls: 0,
    };
    let caps = Capabilities::none()
        .with_counts_connections(true)
        .with_graceful_drain(true)
        .with_hard_disable(p.hard_disable)
        .with_health_checks(true);
    let cfg = config(p);
    let listed: Vec<ListedTarget> = (0..p.targets.len())
        .map(|k| ListedTarget {
            target: Target::new(id(k)),
            status: world.status(k, 0),
        })
        .collect();
    let mut m = match Machine::new(
        cfg.clone(),
        caps,
        Duration::from_millis(p.poll_ms),
        p.probe,
        &listed,
        "sim",
    ) {
        Ok(m) => m,
        Err(Error::InvalidConfig {
            field: "min_healthy",
            ..
        }) => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
    };
    let batch_len = cfg.batch_len(p.targets.len());
    let mut inflight: Vec<InFlight> = Vec::new();
    let mut now: u64 = 0;
    let mut cancelled_at: Option<u64> = None;
    let mut effects = m.handle(Duration::ZERO, Input::Tick);
    // The journal, as the driver writes it.
    let mut journal: Vec<Record> = vec![Record::Header(Box::new(Header {
        format: JOURNAL_FORMAT,
        hygiene: "sim".into(),
        run_id: "sim".into(),
        started_at: "sim".into(),
        balancer: "sim".into(),
        executor: "sim".into(),
        host: "sim".into(),
        pid: 0,
        config: cfg.clone(),
        plan: m.plan_targets(),
    }))];
    let mut journaled: BTreeSet<CallId> = BTreeSet::new();
    let mut issued = 0usize;
    let mut crashed = false;
    let mut offset: u64 = 0;
    let mut first_drain: Option<usize> = None;
    let mut drained_once: BTreeSet<usize> = BTreeSet::new();
    // Targets out because of the run at each step, checked against the
    // final report once it is known.
    let mut out_samples: Vec<BTreeSet<(usize, bool)>> = Vec::new();
    let mut finished = false;
    for _ in 0..20_000 {
        journal.extend(m.take_finished().into_iter().map(finished_record));
        for e in effects.drain(..) {
            issued += 1;
            if let Some((_, intent)) = intent_record(&e) {
                journal.push(intent);
                journaled.insert(e.call());
            }
            if let Effect::Execute(c, ts) = &e {
                // Most executors report a handle on each maintenance; some
                // do not (a resume then applies on_interrupted).
                if c % 3 != 0 {
                    journal.extend(ts.iter().map(|t| Record::Started {
                        call: *c,
                        id: t.id.clone(),
                        handle: ExecHandle(serde_json::json!({ "sim": t.id.as_str() })),
                        at: "sim".into(),
                    }));
                }
            }
            let (fault, delay) = p.faults[world.calls % p.faults.len()];
            if std::env::var("SIM_TRACE").is_ok() {
                eprintln!(
                    "{now} issue #{} {e:?} fault {fault:?} +{delay}",
                    world.calls
                );
            }
            world.calls += 1;
            let ks: Vec<usize> = match &e {
                Effect::Drain(_, ids) | Effect::Disable(_, ids) | Effect::Enable(_, ids) => {
                    ids.iter().map(|i| world.index[i]).collect()
                }
                Effect::Execute(_, ts) => ts.iter().map(|t| world.index[&t.id]).collect(),
                _ => Vec::new(),
            };
            match &e {
                Effect::Drain(..) | Effect::Disable(..) => {
                    let fresh: Vec<usize> = ks
                        .iter()
                        .copied()
                        .filter(|k| !drained_once.contains(k))
                        .collect();
                    if !fresh.is_empty() {
                        prop_assert!(
                            cancelled_at.is_none(),
                            "a new drain of {fresh:?} after the cancel"
                        );
                        first_drain.get_or_insert(fresh.len());
                    }
                    for &k in &ks {
                        drained_once.insert(k);
                        world.t[k].touched = true;
                    }
                }
                Effect::Execute(..) => {
                    prop_assert!(cancelled_at.is_none(), "an execute after the cancel");
                    for &k in &ks {
                        // Invariant 3: never on a target in service (unless
                        // the balancer put it back since the run last
                        // looked: a race no one can close), and never while
                        // the last status the run saw said in service.
                        prop_assert!(
                            world.t[k].state != TargetState::InService || world.t[k].put_back,
                            "invariant 3: t{k} executed while in service"
                        );
                        prop_assert!(
                            world.t[k].last_seen != Some(TargetState::InService),
                            "t{k} executed while the last status said in service"
                        );
                    }
                }
                Effect::Enable(..) => {
                    for &k in &ks {
                        // Invariant 4: enable after a successful maintenance
                        // (and a passed probe), or without any maintenance
                        // (put back), or under on_failure = restore.
                        if let Some(&(at, ok)) = world.t[k].executed.last() {
                            prop_assert!(
                                ok || p.on_failure == OnFailure::Restore,
                                "invariant 4: t{k} enabled after a failed maintenance"
                            );
                            if p.probe {
                                prop_assert!(
                                    world.t[k].probe_passed_after.is_some_and(|pp| pp >= at),
                                    "t{k} enabled without a passed probe after its maintenance"
                                );
                            }
                        }
                    }
                }
                _ => {}
            }
            let at = match fault {
                Fault::Hang => NEVER,
                _ => now + delay,
            };
            inflight.push(InFlight {
                at,
                call: e.call(),
                effect: e,
                fault,
                issued: now,
            });
        }
        // Which of them the run held kept out (or unknown) at that moment:
        // a process that resumes later may learn more and put one back, so
        // the final report alone does not say what was kept out then.
        let now_reports = m.target_reports(|i| format!("enable {i}"));
        out_samples.push(
            world
                .t
                .iter()
                .enumerate()
                .filter(|(_, w)| w.touched && w.exists && w.state != TargetState::InService)
                .map(|(k, _)| (k, now_reports[k].is_kept_out()))
                .collect(),
        );
        if m.is_finished() {
            finished = true;
            break;
        }
        if !crashed && cancelled_at.is_none() && p.crash_after.is_some_and(|c| issued >= c) {
            // The process dies: calls in flight get no answer (a change may
            // or may not have applied; a maintenance runs on by itself), and
            // a new process resumes from the journal and the live pool.
            crashed = true;
            if std::env::var("SIM_TRACE").is_ok() {
                eprintln!("{now} CRASH");
            }
            for f in inflight.drain(..) {
                if f.call.is_multiple_of(2) {
                    world.apply(&f.effect, now);
                    if let Effect::Enable(_, ids) = &f.effect {
                        for i in ids {
                            let k = world.index[i];
                            if world.t[k].state == TargetState::InService {
                                world.t[k].enable_done_at = Some(now);
                                world.t[k].fresh_healthy_seen = false;
                            }
                        }
                    }
                }
            }
            let (_, traces) = Trace::of(&journal).expect("the journal has a header");
            let listed: Vec<ListedTarget> = (0..p.targets.len())
                .filter(|&k| world.t[k].exists)
                .map(|k| ListedTarget {
                    target: Target::new(id(k)),
                    status: world.status(k, now),
                })
                .collect();
            let first = crate::journal::last_call(&journal).map_or(0, |c| c + 1);
            m = Machine::recover(
                cfg.clone(),
                caps,
                Duration::from_millis(p.poll_ms),
                p.probe,
                &listed,
                traces,
                first,
                Recovery::Resume,
            );
            offset = now;
            effects = m.handle(Duration::ZERO, Input::Tick);
            if std::env::var("SIM_TRACE").is_ok() {
                eprintln!("{now} RESUMED from {journal:#?}\nlisted {listed:#?}\n{m:#?}\neffects {effects:?}");
            }
            continue;
        }
        // The next thing to happen.
        // Woken no earlier than asked (a driver on whole milliseconds
        // rounds a deadline up, or it would wake before it, forever).
        let mut next = m.poll_timeout().map_or(NEVER, |d| ms_ceil(d) + offset);
        for f in &inflight {
            let due = if f.at == NEVER {
                // A hung call: the driver's time limit ends the ones the
                // cancellation does not abandon.
                f.issued + CALL_LIMIT_MS
            } else {
                f.at
            };
            next = next.min(due);
        }
        let cancel_due = p.cancel_at_ms.filter(|_| cancelled_at.is_none());
        if let Some(c) = cancel_due {
            next = next.min(c.max(now));
        }
        for (k, tp) in p.targets.iter().enumerate() {
            if let Some(v) = tp.vanish_at_ms {
                if world.t[k].exists {
                    next = next.min(v.max(now));
                }
            }
            if let Some(v) = tp.put_back_at_ms {
                if v > now && !world.t[k].put_back {
                    next = next.min(v);
                }
            }
        }
        prop_assert!(
            next != NEVER,
            "the machine is stuck: nothing will ever happen"
        );
        now = now.max(next);
        for (k, tp) in p.targets.iter().enumerate() {
            if tp.vanish_at_ms.is_some_and(|v| v <= now) {
                world.t[k].exists = false;
            }
            let w = &mut world.t[k];
            if tp.put_back_at_ms.is_some_and(|v| v <= now)
                && !w.put_back
                && w.exists
                && w.touched
                && w.state != TargetState::InService
            {
                // A reload: back in rotation, its health checked afresh
                // (the reload is its enable).
                w.put_back = true;
                w.state = TargetState::InService;
                w.enabled_at = Some(now);
                w.enable_done_at = Some(now);
                w.fresh_healthy_seen = false;
            }
        }
        if cancel_due.is_some_and(|c| c <= now) {
            cancelled_at = Some(now);
            effects = m.handle(Duration::from_millis(now - offset), Input::Cancel);
            // Calls in flight that the driver races with the cancellation
            // are abandoned now; a change may or may not have applied.
            let mut kept = Vec::new();
            for f in inflight.drain(..) {
                if cancellable(&f.effect) {
                    if f.call.is_multiple_of(2) {
                        world.apply(&f.effect, now);
                    }
                    let reply = abandoned(&f.effect);
                    if journaled.remove(&f.call) {
                        journal.push(result_record(f.call, &reply));
                    }
                    effects.extend(m.handle(
                        Duration::from_millis(now - offset),
                        Input::Reply(f.call, reply),
                    ));
                } else {
                    kept.push(f);
                }
            }
            inflight = kept;
            continue;
        }
        if let Some(pos) = inflight.iter().position(|f| {
            (f.at != NEVER && f.at <= now) || (f.at == NEVER && f.issued + CALL_LIMIT_MS <= now)
        }) {
            let f = inflight.remove(pos);
            if std::env::var("SIM_TRACE").is_ok() {
                eprintln!("{now} reply to {:?}", f.effect);
            }
            let reply = if f.at == NEVER {
                // Timed out: a change may or may not have applied.
                if f.call.is_multiple_of(2) {
                    world.apply(&f.effect, now);
                }
                timed_out(&f.effect)
            } else {
                world.reply(&f.effect, f.fault, now)
            };
            if journaled.remove(&f.call) {
                journal.push(result_record(f.call, &reply));
            }
            match (&f.effect, &reply) {
                (Effect::Execute(_, ts), Reply::Executed(res)) => {
                    for (j, t) in ts.iter().enumerate() {
                        let k = world.index[&t.id];
                        let ok = res.as_ref().is_ok_and(|v| v[j].success);
                        world.t[k].executed.push((now, ok));
                    }
                }
                (Effect::Recover(_, t, _), Reply::Recovered(Ok(Recovered::Finished(o)))) => {
                    let k = world.index[&t.id];
                    world.t[k].executed.push((now, o.success));
                }
                (Effect::Enable(_, ids), _) => {
                    for i in ids {
                        let k = world.index[i];
                        if world.t[k].state == TargetState::InService {
                            world.t[k].enable_done_at = Some(now);
                            world.t[k].fresh_healthy_seen = false;
                        }
                    }
                }
                _ => {}
            }
            effects = m.handle(
                Duration::from_millis(now - offset),
                Input::Reply(f.call, reply),
            );
        } else {
            effects = m.handle(Duration::from_millis(now - offset), Input::Tick);
        }
    }
    // SIM_DEBUG=1 prints the machine a livelocked case left behind.
    if !finished && std::env::var("SIM_DEBUG").is_ok() {
        eprintln!("STUCK at {now} (offset {offset}): {m:#?}");
    }
    prop_assert!(finished, "the machine did not finish within the step bound");
    let report = m.target_reports(|i| format!("enable {i}"));
    let outcome = m.outcome();
    let by_k = |k: usize| &report[k];

    // Invariant 5: every target the run touched is in service, or reported
    // kept out (or unknown) by name, or gone from the pool.
    for (k, w) in world.t.iter().enumerate() {
        let r = by_k(k);
        if !w.exists {
            continue;
        }
        if w.touched && w.state != TargetState::InService {
            prop_assert!(
                r.is_kept_out(),
                "invariant 5: t{k} is {:?} but reported {:?} at {:?}",
                w.state,
                r.result,
                r.location
            );
        }
        // Kept out means out: a target the run kept out and a reload put
        // back is taken out again (or reported otherwise).
        if r.location == crate::phase::Location::KeptOut {
            prop_assert_ne!(
                w.state,
                TargetState::InService,
                "t{} reported kept out, but serves: {:?}",
                k,
                r
            );
        }
        if r.location == crate::phase::Location::InService {
            prop_assert_eq!(
                w.state,
                TargetState::InService,
                "t{} reported in service",
                k
            );
        }
        if matches!(r.result, TargetResult::Done) {
            prop_assert!(
                w.fresh_healthy_seen,
                "t{k} done without a healthy status read after its enable: {:?} {:?}",
                r,
                w
            );
        }
    }
    // Invariant 2: at most batch_size in progress; targets finally kept
    // out are bounded by max_failures instead.
    for sample in &out_samples {
        let working = sample
            .iter()
            .filter(|&&(k, kept_out_then)| {
                // A failed target the balancer put back, and which could
                // not be taken out again, ends in service: it was kept out
                // before, like the ones reported kept out.
                let kept_then =
                    world.t[k].put_back && matches!(by_k(k).result, TargetResult::Failed { .. });
                !by_k(k).is_kept_out()
                    && !kept_out_then
                    && !kept_then
                    && !matches!(by_k(k).result, TargetResult::Vanished { .. })
            })
            .count();
        prop_assert!(
            working <= batch_len,
            "invariant 2: {working} out at once, batch size {batch_len}: {sample:?} {:?}",
            report
        );
    }
    // max_failures: "more than N" aborts.
    let failed = report
        .iter()
        .filter(|r| matches!(r.result, TargetResult::Failed { .. }))
        .count();
    if outcome == Outcome::Completed {
        prop_assert!(
            failed <= p.max_failures,
            "completed with {failed} failures, max_failures {}",
            p.max_failures
        );
    }
    if p.canary {
        prop_assert!(
            first_drain.is_none_or(|n| n == 1),
            "canary drained {first_drain:?}"
        );
    }
    prop_assert_eq!(
        outcome == Outcome::Cancelled,
        cancelled_at.is_some(),
        "outcome {:?}",
        outcome
    );
    Ok(())
}

proptest! {
    // A fixed seed, so that CI runs the same cases every time; explore
    // with other seeds and more cases, e.g.
    // `PROPTEST_RNG_SEED=$RANDOM PROPTEST_CASES=100000 cargo test …`.
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20_261_206),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_machine_keeps_every_invariant_under_faults(p in plan()) {
        simulate(&p)?;
    }
}

/// Found by this property test: a target that vanished while the run was
/// dead stayed queued after the resume, and the planner listed the pool
/// for it forever.
#[test]
fn a_target_gone_at_resume_never_holds_the_queue() {
    let t = |probe_never: bool, vanish: Option<u64>| TPlan {
        conns: 0,
        drain_ms: 0,
        exec_ms: 0,
        exec_fails: false,
        not_ready: false,
        probe_fail_first: 0,
        probe_never,
        unhealthy_after_enable: false,
        health_delay_ms: 0,
        out_at_start: false,
        vanish_at_ms: vanish,
        put_back_at_ms: None,
    };
    let faults: Vec<(Fault, u64)> = [
        0u64, 171, 99, 64, 334, 375, 311, 379, 314, 266, 249, 114, 397, 290, 4, 47, 229, 0, 164,
    ]
    .into_iter()
    .chain(std::iter::repeat_n(0, 27))
    .map(|d| (Fault::None, d))
    .collect();
    let p = Plan {
        targets: vec![
            t(false, None),
            t(true, None),
            t(false, None),
            t(false, Some(3295)),
        ],
        batch: 1,
        min_healthy: 1,
        max_failures: 1,
        canary: false,
        on_failure: OnFailure::KeepOut,
        on_drain_timeout: OnDrainTimeout::Fail,
        pacing: Pacing::Batches,
        drain_timeout_ms: 1000,
        health_timeout_ms: 2506,
        warmup_ms: 0,
        poll_ms: 178,
        hard_disable: false,
        probe: true,
        cancel_at_ms: None,
        crash_after: Some(21),
        faults,
    };
    simulate(&p).expect("simulate");
}
#[cfg(test)]
mod repro {
    //! A case the property test found: a target put back by the balancer,
    //! whose drain sent again was reported failed but applied, was held
    //! drained forever (never maintained, never released).
    use super::*;

    #[test]
    fn a_target_put_back_then_seen_out_again_is_not_held_forever() {
        let p = Plan {
            targets: vec![
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 1053,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 1,
                    drain_ms: 397,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: Some(5086),
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
            ],
            batch: 3,
            min_healthy: 0,
            max_failures: 0,
            canary: false,
            on_failure: OnFailure::KeepOut,
            on_drain_timeout: OnDrainTimeout::Fail,
            pacing: Pacing::Batches,
            drain_timeout_ms: 1036,
            health_timeout_ms: 1000,
            warmup_ms: 185,
            poll_ms: 334,
            hard_disable: true,
            probe: true,
            cancel_at_ms: None,
            crash_after: Some(15),
            faults: vec![
                (Fault::None, 59),
                (Fault::None, 8),
                (Fault::None, 254),
                (Fault::None, 372),
                (Fault::None, 343),
                (Fault::None, 110),
                (Fault::None, 325),
                (Fault::None, 0),
                (Fault::None, 341),
                (Fault::AppliedThenError, 0),
                (Fault::None, 0),
                (Fault::None, 0),
                (Fault::None, 136),
                (Fault::None, 208),
                (Fault::None, 0),
                (Fault::None, 334),
            ],
        };
        simulate(&p).expect("ok");
    }

    #[test]
    // A failed target journaled in service, then taken out again by the
    // guard, and the process dies: the resume must say it is kept out.
    fn a_failed_target_taken_out_again_before_a_crash_is_kept_out() {
        let p = Plan {
            targets: vec![
                TPlan {
                    conns: 1,
                    drain_ms: 864,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 1,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 1065,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
                TPlan {
                    conns: 0,
                    drain_ms: 0,
                    exec_ms: 0,
                    exec_fails: false,
                    not_ready: false,
                    probe_fail_first: 0,
                    probe_never: false,
                    unhealthy_after_enable: false,
                    health_delay_ms: 0,
                    out_at_start: false,
                    vanish_at_ms: None,
                    put_back_at_ms: None,
                },
            ],
            batch: 1,
            min_healthy: 0,
            max_failures: 3,
            canary: false,
            on_failure: OnFailure::KeepOut,
            on_drain_timeout: OnDrainTimeout::Fail,
            pacing: Pacing::Batches,
            drain_timeout_ms: 1000,
            health_timeout_ms: 1000,
            warmup_ms: 0,
            poll_ms: 249,
            hard_disable: true,
            probe: true,
            cancel_at_ms: None,
            crash_after: Some(29),
            faults: vec![
                (Fault::None, 0),
                (Fault::None, 0),
                (Fault::None, 0),
                (Fault::None, 142),
                (Fault::None, 165),
                (Fault::None, 339),
                (Fault::None, 218),
                (Fault::None, 132),
                (Fault::None, 5),
                (Fault::None, 21),
                (Fault::None, 223),
                (Fault::None, 0),
                (Fault::None, 100),
                (Fault::None, 160),
                (Fault::None, 0),
                (Fault::None, 189),
                (Fault::None, 0),
                (Fault::None, 0),
                (Fault::None, 0),
                (Fault::None, 4),
                (Fault::Error, 34),
                (Fault::None, 0),
                (Fault::None, 0),
                (Fault::None, 0),
                (Fault::None, 0),
                (Fault::None, 0),
                (Fault::None, 0),
            ],
        };
        simulate(&p).expect("ok");
    }
}

#[cfg(test)]
mod repro_kept_out_then_recovered {
    //! A case the property test found in CI: a maintenance whose call hit
    //! the driver's time limit left its target kept out, the next batch
    //! started, the process died, and the resumed run read the first
    //! maintenance's outcome (finished, success) and put its target back.
    //! The target was kept out, not in progress, while the next batch ran:
    //! invariant 2 is judged on what the run reported at each moment.
    use super::*;

    #[test]
    fn a_target_kept_out_before_a_crash_may_be_put_back_after_it() {
        let mut faults: Vec<(Fault, u64)> = [0u64, 0, 0, 278, 200, 34, 338, 0, 0, 149]
            .into_iter()
            .map(|d| (Fault::None, d))
            .collect();
        // The maintenance of t0 never answers: the driver's limit ends it.
        faults.push((Fault::Hang, 0));
        faults.push((Fault::None, 0));
        let mut t0 = quiet();
        t0.conns = 1;
        t0.drain_ms = 1339;
        let p = Plan {
            max_failures: 3,
            drain_timeout_ms: 1339,
            poll_ms: 170,
            crash_after: Some(27),
            ..plan_of(vec![t0, quiet(), quiet(), quiet()], faults)
        };
        simulate(&p).expect("every invariant holds");
    }
}

#[cfg(test)]
mod repro_redrain_after_finish {
    //! A case the property test found: t1's drain timed out and it was
    //! kept out; a reload put it back; the guard's drain was refused, so its
    //! finish was journaled "failed, in service"; the guard drained it
    //! again, and the process died with that drain applied. The resumed run
    //! trusted the finish and reported t1 in service while it drained.
    use super::*;

    #[test]
    fn a_target_drained_again_after_its_finish_is_not_reported_in_service() {
        let busy = |drain_ms: u64, put_back_at_ms: Option<u64>| TPlan {
            conns: 1,
            drain_ms,
            put_back_at_ms,
            ..quiet()
        };
        let mut faults: Vec<(Fault, u64)> = [
            15, 385, 61, 238, 0, 0, 0, 326, 340, 0, 0, 273, 0, 72, 356, 0, 0, 99, 146, 141, 59,
            295, 289, 0, 30, 0, 113, 16, 52, 0, 377, 392, 0,
        ]
        .into_iter()
        .map(|d| (Fault::None, d))
        .collect();
        // The guard's first drain of t1 after the reload is refused.
        faults.push((Fault::Error, 0));
        faults.extend([(Fault::None, 0); 4]);
        let mut targets = vec![
            busy(2241, Some(5285)),
            busy(2042, Some(6036)),
            busy(614, None),
        ];
        targets.extend(std::iter::repeat_with(quiet).take(4));
        let p = Plan {
            max_failures: 2,
            drain_timeout_ms: 1428,
            warmup_ms: 341,
            poll_ms: 476,
            crash_after: Some(39),
            ..plan_of(targets, faults)
        };
        simulate(&p).expect("every invariant holds");
    }
}

#[cfg(test)]
mod repro_unseen_kept_out {
    //! A case the property test found once it checked that "kept out"
    //! means out: t0's maintenance failed and it was kept out, the run
    //! stopped (no failure allowed), and the guard's last status read of t0
    //! hung until its limit while a reload put t0 back. The report said
    //! "kept out" of a server in rotation; it now says unknown, and why.
    use super::*;

    #[test]
    fn a_kept_out_target_whose_last_read_failed_is_not_reported_kept_out() {
        let t0 = TPlan {
            conns: 1,
            drain_ms: 1777,
            exec_fails: true,
            put_back_at_ms: Some(2985),
            ..quiet()
        };
        let t1 = TPlan {
            out_at_start: true,
            ..quiet()
        };
        let mut faults: Vec<(Fault, u64)> = [0u64, 0, 0, 243]
            .into_iter()
            .map(|d| (Fault::None, d))
            .collect();
        faults.push((Fault::AppliedThenError, 0));
        faults.extend([0u64, 0, 347, 204, 254, 0].map(|d| (Fault::None, d)));
        // The guard's read of t0 after its failure never answers.
        faults.push((Fault::Hang, 0));
        let p = Plan {
            drain_timeout_ms: 1777,
            poll_ms: 243,
            ..plan_of(vec![t0, t1], faults)
        };
        simulate(&p).expect("every invariant holds");
    }
}

#[cfg(test)]
mod repro_put_back_as_the_run_ends {
    //! A case the property test found once it checked that "kept out"
    //! means out: t0's maintenance failed after a cancel, it was kept out,
    //! and a reload put it back while the guard's last read was in flight.
    //! That read was sent before the maintenance ended, so its answer did
    //! not count, and the run ended reporting t0 kept out while it served.
    //! The run now looks at the targets it keeps out once more before it
    //! ends.
    use super::*;

    #[test]
    fn a_kept_out_target_put_back_as_the_run_ends_is_taken_out_again() {
        let t0 = TPlan {
            conns: 1,
            drain_ms: 1846,
            exec_fails: true,
            put_back_at_ms: Some(2514),
            ..quiet()
        };
        let faults: Vec<(Fault, u64)> = [0u64, 0, 14, 0, 340, 0, 0, 0, 0, 85, 338, 0, 232]
            .into_iter()
            .map(|d| (Fault::None, d))
            .collect();
        let p = Plan {
            drain_timeout_ms: 1846,
            poll_ms: 378,
            cancel_at_ms: Some(2205),
            ..plan_of(vec![t0], faults)
        };
        simulate(&p).expect("every invariant holds");
    }
}

#[cfg(test)]
mod repro_put_back_failed {
    //! A case the property test found once it checked that "kept out"
    //! means out: t0 was maintained, its enable failed and the read back
    //! showed it out, so it was reported out; a reload then put it back
    //! while the run waited for a hung status read. Out because its
    //! put-back failed (not kept out by a decision of the run), it is not
    //! taken out again, but the run's last look reports where it is.
    use super::*;

    #[test]
    fn a_target_whose_put_back_failed_is_reported_where_the_last_look_saw_it() {
        let mut faults: Vec<(Fault, u64)> = [0u64, 0, 0, 0, 0, 0, 101]
            .into_iter()
            .map(|d| (Fault::None, d))
            .collect();
        faults.extend([(Fault::Hang, 0), (Fault::Error, 0), (Fault::None, 0)]);
        let t0 = TPlan {
            put_back_at_ms: Some(1875),
            ..quiet()
        };
        let p = Plan {
            hard_disable: true,
            ..plan_of(vec![t0], faults)
        };
        simulate(&p).expect("every invariant holds");
    }
}
