//! A machine rebuilt from a journal and the balancer's live state: resume
//! (finish what the dead run started, then go on) or restore (put back
//! everything it took out, start nothing). Reconcile, never replay: what
//! the journal says is checked against what the balancer shows now.

use super::*;
use crate::config::OnInterrupted;
use crate::journal::{Finish, Interrupted, Trace};

/// What to rebuild the machine for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Finish the run: targets out because of it go on, the rest start.
    Resume,
    /// Put back everything the run took out, start nothing.
    Restore,
}

impl Machine {
    /// A machine for the run a journal describes, `listed` being the pool
    /// now. `first_call` is past every call id the journal used.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn recover(
        cfg: RolloutConfig,
        caps: Capabilities,
        poll: Duration,
        has_probe: bool,
        listed: &[ListedTarget],
        traces: Vec<Trace>,
        first_call: CallId,
        mode: Recovery,
    ) -> Self {
        let plan: Vec<ListedTarget> = traces
            .iter()
            .map(|t| ListedTarget {
                target: t.target.clone(),
                // Placeholder; every target is placed below.
                status: TargetStatus::new(
                    TargetState::InService,
                    crate::target::Health::Unknown,
                    None,
                ),
            })
            .collect();
        let mut m = Self::empty(cfg, caps, poll, has_probe, &plan, listed.len());
        m.order_by_zone();
        m.next_call = first_call;
        let live: HashMap<&TargetId, &TargetStatus> =
            listed.iter().map(|l| (&l.target.id, &l.status)).collect();
        let mut resumed = Vec::new();
        for (i, t) in traces.into_iter().enumerate() {
            let now = live.get(&t.target.id).map(|s| s.state);
            if m.place(i, &t, now, mode) {
                resumed.push(i);
            }
        }
        if mode == Recovery::Restore {
            // Nothing new starts; the queue is reported not started.
            m.cancelled = true;
        }
        m.canary_done |= m.slots.iter().any(|s| s.end == Some(End::Done));
        if !resumed.is_empty() {
            let g = m.groups;
            m.groups += 1;
            for &i in &resumed {
                m.slots[i].group = Some(g);
            }
            m.events.push_back((
                Some(g),
                EventKind::BatchStarted {
                    index: g,
                    targets: m.ids(&resumed),
                },
            ));
        }
        m
    }

    /// Places target `i` as the journal and the live state say; true when
    /// it is in progress (part of the resumed batch).
    fn place(&mut self, i: usize, t: &Trace, now: Option<TargetState>, mode: Recovery) -> bool {
        let in_service = now == Some(TargetState::InService);
        let Some(state) = now else {
            if t.finished.is_some() && !t.maybe_out {
                return self.place_finished(i, t);
            }
            self.queue.retain(|&q| q != i);
            self.slots[i].location = Location::Gone;
            self.finish(
                i,
                End::Vanished(
                    Stage::Pending,
                    "no longer in the pool when the run was recovered".into(),
                ),
            );
            return false;
        };
        let took_out = t.maybe_out
            || matches!(
                t.finished,
                Some(Finish {
                    location: Location::KeptOut | Location::Unknown | Location::OutByRun,
                    ..
                })
            );
        if mode == Recovery::Restore {
            if !took_out {
                return if t.finished.is_some() {
                    self.place_finished(i, t)
                } else {
                    false // never started: stays queued, reported not started
                };
            }
            self.note(i, "put back by restore");
            self.slots[i].purpose = Purpose::Restore;
            if let (Interrupted::Unknown, Some(h)) = (&t.exec, &t.handle) {
                // Never put back under a maintenance still running: wait
                // for it first (watched by the guard meanwhile).
                self.slots[i].location = Location::OutByRun;
                self.slots[i].since = self.now;
                self.note(
                    i,
                    "its maintenance had started: waiting for it to end first",
                );
                self.set(i, Step::Execute);
                self.to_recover.push((i, h.clone()));
            } else if in_service {
                self.slots[i].location = Location::InService;
                self.set(i, Step::Verify);
            } else {
                self.slots[i].location = Location::OutByRun;
                self.set(i, Step::AwaitEnable);
            }
            return true;
        }
        // A maintenance a recovery could not follow to its end (the
        // executor could not be asked) is waited for again, even though the
        // target was reported kept out.
        let still_open = t.exec == Interrupted::Unknown && t.handle.is_some() && took_out;
        if let Some(Finish { location, .. }) = &t.finished {
            let out_by_run = t.maybe_out && matches!(location, Location::OutByRun);
            if !(still_open || out_by_run) {
                self.place_finished(i, t);
                if in_service && matches!(location, Location::KeptOut) {
                    // Kept out by the run, and back in service: a reload.
                    self.note(
                        i,
                        "found in service when the run was resumed (a reload?): taken out again",
                    );
                    self.slots[i].location = Location::InService;
                    self.keep_out_again(i);
                    return true;
                }
                if !in_service
                    && t.maybe_out
                    && matches!(location, Location::InService)
                    && t.finished.as_ref().is_some_and(|f| {
                        matches!(
                            f.failed_at,
                            Some(Stage::Executing | Stage::Probing | Stage::Enabling)
                        ) || (f.failed_at.is_some() && t.out_after_finish)
                    })
                {
                    // A failed maintenance or probe, last journaled in
                    // service (taking it out again had failed), and out now:
                    // the run's guard took it out again before it stopped.
                    // So is any failed target the run sent a drain after
                    // its finish (a kept-out target whose drain had timed
                    // out, put back by a reload, taken out again by the
                    // guard). A drain that never applied, with no drain
                    // after it, fails at Draining and is not claimed here.
                    // Kept out, and watched.
                    self.note(
                        i,
                        "taken out of rotation again by the run before it stopped: kept out",
                    );
                    self.slots[i].location = Location::KeptOut;
                    self.slots[i].keep_out = true;
                    self.kept.insert(i);
                }
                return false;
            }
        }
        if !t.maybe_out && t.exec == Interrupted::NotStarted {
            if in_service {
                return false; // never touched: it starts in its turn
            }
            self.queue.retain(|&q| q != i);
            self.found_out(i);
            self.finish(
                i,
                End::Skipped(format!(
                    "{state:?} when the run was resumed, never touched by it; left as found"
                )),
            );
            return false;
        }
        self.queue.retain(|&q| q != i);
        self.slots[i].location = if in_service {
            Location::InService
        } else {
            Location::OutByRun
        };
        if in_service && t.maybe_out {
            self.note(
                i,
                "the journal says the run had it out, the balancer shows it in service (a reload?)",
            );
        }
        match &t.exec {
            Interrupted::NotStarted if in_service => {
                // Only drained, and back: start it again from the queue.
                self.slots[i].location = Location::InService;
                self.queue.push_front(i);
                self.set(i, Step::Queued);
                return false;
            }
            Interrupted::NotStarted => {
                // Only drained: continue its maintenance.
                self.slots[i].since = self.now;
                self.set(i, Step::Draining);
            }
            Interrupted::Succeeded if in_service => self.set(i, Step::Verify),
            Interrupted::Succeeded if self.has_probe => self.set(
                i,
                Step::Probe {
                    in_flight: false,
                    wake: self.now,
                },
            ),
            Interrupted::Succeeded => self.set(i, Step::AwaitEnable),
            Interrupted::Failed(why) => {
                self.slots[i].timings.execute = Some(Duration::ZERO);
                self.fail(i, Stage::Executing, why.clone());
                self.after_failure(i, in_service);
            }
            Interrupted::Unknown => match &t.handle {
                Some(h) => {
                    // Still running, or finished with a status to read:
                    // wait for it, watched (a target a reload put back is
                    // taken out again by the guard, and reported).
                    self.slots[i].location = Location::OutByRun;
                    self.slots[i].since = self.now;
                    self.note(
                        i,
                        "its maintenance had started when the run stopped: waiting for it and reading its outcome",
                    );
                    self.set(i, Step::Execute);
                    self.to_recover.push((i, h.clone()));
                }
                None => {
                    return self.outcome_unknown(
                        i,
                        "the executor kept no handle on it that a new process could follow",
                    )
                }
            },
        }
        true
    }

    /// A maintenance whose outcome cannot be learned (`why`):
    /// `on_interrupted` decides. True when the target stays in progress.
    pub(super) fn outcome_unknown(&mut self, i: usize, why: &str) -> bool {
        let in_service = self.slots[i].location == Location::InService;
        match self.cfg.on_interrupted() {
            OnInterrupted::Fail => {
                // An unknown outcome is never put back, whatever
                // `on_failure` says: nobody knows what the target runs.
                self.slots[i].timings.execute.get_or_insert(Duration::ZERO);
                self.slots[i].keep_out = true;
                self.fail(
                    i,
                    Stage::Executing,
                    format!("its maintenance was interrupted and its outcome is unknown ({why}; on_interrupted = fail): kept out of rotation; check the target, then put it back"),
                );
                if in_service {
                    self.set(i, Step::TakeOut);
                    true
                } else {
                    self.finish(i, End::Failed);
                    false
                }
            }
            OnInterrupted::Rerun => {
                self.note(
                    i,
                    format!(
                        "its interrupted maintenance runs again ({why}; on_interrupted = rerun)"
                    ),
                );
                if in_service {
                    self.queue.push_front(i);
                    self.set(i, Step::Queued);
                    false
                } else {
                    self.set(i, Step::Drained);
                    true
                }
            }
        }
    }

    /// A failed maintenance found on recovery: kept out (taken out again
    /// if a reload put it back), or put back under `on_failure = restore`.
    fn after_failure(&mut self, i: usize, in_service: bool) {
        match (self.cfg.on_failure(), in_service) {
            (OnFailure::KeepOut, true) => self.set(i, Step::TakeOut),
            (OnFailure::KeepOut, false) => self.finish(i, End::Failed),
            (OnFailure::Restore, true) => {
                self.slots[i].purpose = Purpose::Restore;
                self.set(i, Step::Verify);
            }
            (OnFailure::Restore, false) => self.after_failure_out(i),
        }
    }

    /// A target the journal says finished: as it finished.
    fn place_finished(&mut self, i: usize, t: &Trace) -> bool {
        let Some(f) = &t.finished else {
            return false;
        };
        self.queue.retain(|&q| q != i);
        self.slots[i].location = f.location;
        let why = f.detail.clone().unwrap_or_default();
        let end = match f.stage {
            Stage::Done => End::Done,
            Stage::Skipped => End::Skipped(why),
            Stage::Restored => End::Restored(why),
            Stage::Vanished => End::Vanished(f.failed_at.unwrap_or(Stage::Pending), why),
            _ => {
                // Kept out after a failure (a maintenance, a probe, a
                // health check, a drain that timed out): watched by this
                // run too, like the run that kept it out did.
                self.slots[i].keep_out = f.location == Location::KeptOut && f.failed_at.is_some();
                self.fail(i, f.failed_at.unwrap_or(Stage::Failed), why);
                End::Failed
            }
        };
        self.finish(i, end);
        false
    }
}
