//! What a journal says about each target of its run: the basis of resume
//! and restore, which reconcile it with the balancer's live state.

use std::collections::HashMap;

use super::{Header, Op, Record};
use crate::executor::ExecHandle;
use crate::phase::{Location, Stage};
use crate::target::{Target, TargetId};

/// What became of a target's maintenance, as far as the journal knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// Never started.
    NotStarted,
    /// Started, and no result was recorded: the outcome is unknown.
    Unknown,
    /// Succeeded.
    Succeeded,
    /// Failed, with why.
    Failed(String),
}

/// One target of a journal's run.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    pub(crate) target: Target,
    /// A drain or disable was sent (it may have applied) and no enable
    /// succeeded after it: the run may have it out of rotation.
    pub(crate) maybe_out: bool,
    /// A drain or disable was sent after its finish was journaled (the
    /// guard taking a kept-out target out again), and no enable succeeded
    /// after it: the finish's location may no longer hold.
    pub(crate) out_after_finish: bool,
    /// Its maintenance.
    pub(crate) exec: Interrupted,
    /// The executor's handle on a maintenance whose outcome is unknown,
    /// when it reported one: a resumed run waits for it and reads it.
    pub(crate) handle: Option<ExecHandle>,
    /// It finished.
    pub(crate) finished: Option<Finish>,
}

/// How a target finished, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finish {
    pub(crate) stage: Stage,
    pub(crate) failed_at: Option<Stage>,
    pub(crate) location: Location,
    pub(crate) detail: Option<String>,
}

impl Trace {
    /// The traces of the last run in `records` (after its header), in plan
    /// order, with that header.
    pub(crate) fn of(records: &[Record]) -> Option<(Header, Vec<Trace>)> {
        let start = records
            .iter()
            .rposition(|r| matches!(r, Record::Header(_)))?;
        let Record::Header(header) = &records[start] else {
            return None;
        };
        let mut traces: Vec<Trace> = header
            .plan
            .iter()
            .map(|t| Trace {
                target: t.clone(),
                maybe_out: false,
                out_after_finish: false,
                exec: Interrupted::NotStarted,
                handle: None,
                finished: None,
            })
            .collect();
        let index: HashMap<TargetId, usize> = header
            .plan
            .iter()
            .enumerate()
            .map(|(k, t)| (t.id.clone(), k))
            .collect();
        let mut intents: HashMap<u64, (Op, Vec<usize>)> = HashMap::new();
        for r in &records[start + 1..] {
            match r {
                Record::Intent { call, op, ids, .. } => {
                    let ks: Vec<usize> = ids.iter().filter_map(|i| index.get(i).copied()).collect();
                    for &k in &ks {
                        match op {
                            Op::Drain | Op::Disable => {
                                traces[k].maybe_out = true;
                                traces[k].out_after_finish |= traces[k].finished.is_some();
                            }
                            Op::Execute => {
                                traces[k].exec = Interrupted::Unknown;
                                traces[k].handle = None;
                            }
                            Op::Enable | Op::Recover => {}
                        }
                    }
                    intents.insert(*call, (*op, ks));
                }
                Record::Result {
                    call,
                    ok,
                    error,
                    outcomes,
                    open,
                    ..
                } => {
                    let Some((op, ks)) = intents.get(call) else {
                        continue;
                    };
                    match op {
                        Op::Enable if *ok => {
                            for &k in ks {
                                traces[k].maybe_out = false;
                                traces[k].out_after_finish = false;
                            }
                        }
                        // The executor could not be asked, or did not answer
                        // in time: the maintenance may still run; its handle
                        // stays the way to it.
                        Op::Execute | Op::Recover if *open => {}
                        Op::Recover if outcomes.is_none() => {
                            // Could not be learned: nothing left to wait for;
                            // `on_interrupted` decides.
                            for &k in ks {
                                traces[k].handle = None;
                            }
                        }
                        Op::Execute | Op::Recover => {
                            // An answer of the wrong length, or for another
                            // target, is not trusted: as if it may still run.
                            let trusted = outcomes.as_ref().is_none_or(|o| o.len() == ks.len());
                            for (j, &k) in ks.iter().enumerate() {
                                let outcome = outcomes.as_ref().and_then(|o| o.get(j));
                                if !trusted
                                    || outcome.is_some_and(|o| {
                                        o.may_still_run || o.id != traces[k].target.id
                                    })
                                {
                                    // Not an end: it may still run; a later
                                    // resume or restore waits for it again.
                                    traces[k].exec = Interrupted::Unknown;
                                    continue;
                                }
                                traces[k].handle = None;
                                traces[k].exec = match (outcome, error) {
                                    (Some(o), _) if o.success => Interrupted::Succeeded,
                                    (Some(o), _) => Interrupted::Failed(
                                        o.message
                                            .clone()
                                            .unwrap_or_else(|| "maintenance failed".into()),
                                    ),
                                    (None, Some(e)) if outcomes.is_none() => {
                                        Interrupted::Failed(e.clone())
                                    }
                                    (None, _) => Interrupted::Failed("no outcome".into()),
                                };
                            }
                        }
                        _ => {}
                    }
                }
                Record::Started {
                    call, id, handle, ..
                } => {
                    let Some(&k) = index.get(id) else { continue };
                    let ours = intents
                        .get(call)
                        .is_some_and(|(op, ks)| *op == Op::Execute && ks.contains(&k));
                    if ours && traces[k].exec == Interrupted::Unknown {
                        traces[k].handle = Some(handle.clone());
                    }
                }
                Record::Finished {
                    id,
                    stage,
                    failed_at,
                    location,
                    detail,
                } => {
                    if let Some(&k) = index.get(id) {
                        traces[k].out_after_finish = false;
                        traces[k].finished = Some(Finish {
                            stage: *stage,
                            failed_at: *failed_at,
                            location: *location,
                            detail: detail.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
        Some(((**header).clone(), traces))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::executor::{ExecHandle, ExecOutcome};

    fn id(s: &str) -> TargetId {
        TargetId::new(s).expect("id")
    }

    fn intent(call: u64, op: Op, ids: &[&str]) -> Record {
        Record::Intent {
            call,
            op,
            ids: ids.iter().map(|s| id(s)).collect(),
            at: String::new(),
        }
    }

    fn result(call: u64, ok: bool, outcomes: Option<Vec<ExecOutcome>>, open: bool) -> Record {
        Record::Result {
            call,
            ok,
            error: (!ok).then(|| "the executor's error".to_owned()),
            outcomes,
            open,
            at: String::new(),
        }
    }

    fn started(call: u64, s: &str) -> Record {
        Record::Started {
            call,
            id: id(s),
            handle: ExecHandle(serde_json::json!({ "for": s })),
            at: String::new(),
        }
    }

    fn ok(s: &str) -> ExecOutcome {
        ExecOutcome::success(id(s), Duration::from_secs(1))
    }

    #[test]
    fn what_a_journal_says_of_each_maintenance_and_put_back() {
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let header = crate::journal::test_header(&names);
        let records = vec![
            header,
            intent(1, Op::Drain, &names),
            result(1, true, None, false),
            // a succeeded, b failed: trusted answers.
            intent(2, Op::Execute, &["a", "b"]),
            started(2, "a"),
            started(2, "b"),
            result(
                2,
                true,
                Some(vec![
                    ok("a"),
                    ExecOutcome::failure(id("b"), Duration::from_secs(1), "disk full"),
                ]),
                false,
            ),
            // c: an answer for another target; d: of the wrong length.
            intent(3, Op::Execute, &["c"]),
            started(3, "c"),
            result(3, true, Some(vec![ok("a")]), false),
            intent(4, Op::Execute, &["d"]),
            started(4, "d"),
            result(4, true, Some(vec![ok("d"), ok("d")]), false),
            // e: the executor could not be asked (open).
            intent(5, Op::Execute, &["e"]),
            started(5, "e"),
            result(5, false, None, true),
            // f: died mid-maintenance; its recovery learned nothing.
            intent(6, Op::Execute, &["f"]),
            started(6, "f"),
            intent(7, Op::Recover, &["f"]),
            result(7, false, None, false),
            // g: a handle journaled under another call is not g's.
            intent(10, Op::Execute, &["g"]),
            started(1, "g"),
            // h: the maintenance call failed as a whole: its error.
            intent(11, Op::Execute, &["h"]),
            result(11, false, None, false),
            // a put back; b's put-back failed.
            intent(8, Op::Enable, &["a"]),
            result(8, true, None, false),
            intent(9, Op::Enable, &["b"]),
            result(9, false, None, false),
        ];
        let (_, traces) = Trace::of(&records).expect("a run");
        let t = |s: &str| {
            traces
                .iter()
                .find(|t| t.target.id == id(s))
                .expect("traced")
                .clone()
        };
        assert_eq!(t("a").exec, Interrupted::Succeeded);
        assert!(t("a").handle.is_none());
        assert!(!t("a").maybe_out, "put back");
        assert_eq!(t("b").exec, Interrupted::Failed("disk full".into()));
        assert!(t("b").maybe_out, "its put-back failed");
        for s in ["c", "d", "e"] {
            assert_eq!(t(s).exec, Interrupted::Unknown, "{s}");
            assert!(t(s).handle.is_some(), "{s}: the way to it is kept");
            assert!(t(s).maybe_out, "{s}");
        }
        assert_eq!(t("f").exec, Interrupted::Unknown, "on_interrupted decides");
        assert!(t("f").handle.is_none(), "nothing left to wait for");
        assert_eq!(t("g").exec, Interrupted::Unknown);
        assert!(t("g").handle.is_none(), "{:?}", t("g").handle);
        assert_eq!(
            t("h").exec,
            Interrupted::Failed("the executor's error".into())
        );
    }

    /// A drain sent after a target's finish was journaled (the guard
    /// taking a kept-out target out again) says the finish's location may
    /// no longer hold, until an enable succeeds or a new finish is written.
    #[test]
    fn a_drain_after_the_finish_is_remembered_until_undone() {
        let names = ["a", "b", "c", "d"];
        let finished = |s: &str| Record::Finished {
            id: id(s),
            stage: Stage::Failed,
            failed_at: Some(Stage::Draining),
            location: Location::InService,
            detail: None,
        };
        let records = vec![
            crate::journal::test_header(&names),
            // a: drained before its finish only.
            intent(1, Op::Drain, &["a"]),
            result(1, false, None, false),
            finished("a"),
            // b: drained again after its finish (no answer: the run died).
            intent(2, Op::Drain, &["b"]),
            finished("b"),
            intent(3, Op::Disable, &["b"]),
            // c: drained after its finish, then put back.
            finished("c"),
            intent(4, Op::Drain, &["c"]),
            result(4, true, None, false),
            intent(5, Op::Enable, &["c"]),
            result(5, true, None, false),
            // d: drained after its finish, then finished again.
            finished("d"),
            intent(6, Op::Drain, &["d"]),
            finished("d"),
        ];
        let (_, traces) = Trace::of(&records).expect("a run");
        let t = |s: &str| {
            traces
                .iter()
                .find(|t| t.target.id == id(s))
                .expect("traced")
                .clone()
        };
        assert!(t("a").maybe_out && !t("a").out_after_finish, "a");
        assert!(t("b").maybe_out && t("b").out_after_finish, "b");
        assert!(!t("c").maybe_out && !t("c").out_after_finish, "c");
        assert!(t("d").maybe_out && !t("d").out_after_finish, "d");
    }
}
