//! Status polls (drain and fresh health), the maintenance's outcome and
//! the probe.

use super::*;
use crate::report::DrainLost;

impl Machine {
    pub(super) fn maybe_poll(&mut self, out: &mut Vec<Effect>) {
        if self.poll_in_flight {
            return;
        }
        let mut observed = Vec::new();
        let mut deadline = self.poll_due;
        for i in self.watched() {
            match self.watch(i) {
                Watch::No => {}
                Watch::Guard => observed.push(i),
                Watch::Until(d) => {
                    observed.push(i);
                    deadline = deadline.min(d);
                }
            }
        }
        if observed.is_empty() {
            return;
        }
        if self.now < deadline {
            return;
        }
        // Fixed rate: polls start one `poll` apart from the first, so the
        // time a status call takes does not stretch the interval; missed
        // ticks are skipped rather than polled back to back.
        if self.poll_due <= self.now {
            self.poll_due += self.poll;
            if self.poll_due <= self.now {
                self.poll_due = self.now + self.poll;
            }
        }
        self.poll_in_flight = true;
        self.last_poll = self.now;
        let ids = self.ids(&observed);
        let c = self.call(Call::Poll(observed));
        out.push(Effect::Status(c, ids));
    }

    /// Whether target `i` is in the next poll: draining and verifying
    /// targets until their timeout; targets out of rotation because of the
    /// run and waiting (for their batch, their maintenance, their probe,
    /// their enable) to catch a balancer that put them back on its own (a
    /// reload forgets runtime state).
    /// A finished target out of rotation because its put-back failed
    /// (the run did not decide to keep it out): looked at once more before
    /// the run ends, never taken out again.
    pub(super) fn stranded(&self, i: usize) -> bool {
        let s = &self.slots[i];
        s.step == Step::Finished && !s.keep_out && s.location == Location::KeptOut && !s.unwatched
    }

    /// A finished target the run has out: kept out by its decision, or
    /// stranded by a failed put-back. Its last read decides its report.
    fn finished_out(&self, i: usize) -> bool {
        let s = &self.slots[i];
        s.step == Step::Finished && (s.keep_out || self.stranded(i))
    }

    pub(super) fn watch(&self, i: usize) -> Watch {
        let s = &self.slots[i];
        match s.step {
            // Its re-drain's answer decides: no poll meanwhile (one past the
            // drain timeout would go out back to back).
            Step::Draining if s.redraining => Watch::No,
            Step::Draining => {
                Watch::Until((s.since + self.rules.drain_timeout).min(self.ramp(s.since)))
            }
            Step::Verify => {
                Watch::Until((s.since + self.rules.health_timeout).min(self.ramp(s.since)))
            }
            Step::Drained | Step::Execute | Step::Probe { .. } | Step::AwaitEnable
                if s.location == Location::OutByRun && !s.redraining && !s.unwatched =>
            {
                Watch::Guard
            }
            // Kept out after a failure: watched until the run ends.
            Step::Finished
                if s.keep_out
                    && matches!(s.location, Location::KeptOut | Location::InService)
                    && !s.redraining
                    && !s.unwatched =>
            {
                Watch::Guard
            }
            _ => Watch::No,
        }
    }

    /// Quick looks right after a change: a short drain ends in a few
    /// milliseconds, and waiting a whole poll interval to see it would be
    /// most of its cost. Polls at `since` + 1/10, 1/4 and 1/2 of the poll
    /// interval (the one not yet made), then on the fixed-rate grid. Where
    /// a status read is cheap ([`Capabilities::cheap_status`]) the looks go
    /// on every tenth of the interval for as long as the target is judged.
    fn ramp(&self, since: Duration) -> Duration {
        if self.caps.cheap_status {
            let step = (self.poll / 10).max(Duration::from_millis(1));
            return (since + step).max(self.last_poll + step);
        }
        [self.poll / 10, self.poll / 4, self.poll / 2]
            .into_iter()
            .map(|d| since + d)
            .find(|&t| t > self.last_poll)
            .unwrap_or(Duration::MAX)
    }

    pub(super) fn on_poll(
        &mut self,
        call: CallId,
        idx: &[usize],
        r: Result<Vec<TargetStatus>>,
        out: &mut Vec<Effect>,
    ) {
        // Split polls: the regular poll resumes once every answer is in.
        self.poll_in_flight = self.calls.values().any(|c| matches!(c, Call::Poll(_)));
        let st = match r {
            Ok(st) if st.len() == idx.len() => st,
            Ok(st) => {
                let e = Error::protocol(
                    "balancer",
                    format!(
                        "status returned {} entries for {} targets",
                        st.len(),
                        idx.len()
                    ),
                );
                return self.poll_failed(idx, &e);
            }
            Err(Error::NotFound { .. }) if idx.len() > 1 => {
                // Which one vanished? Ask for each alone; the next regular
                // poll waits for these answers.
                self.poll_in_flight = true;
                for &i in idx {
                    let ids = self.ids(&[i]);
                    let c = self.call(Call::Poll(vec![i]));
                    out.push(Effect::Status(c, ids));
                }
                return;
            }
            Err(e @ Error::NotFound { .. }) => {
                let i = idx[0];
                if call < self.slots[i].epoch {
                    return;
                }
                if matches!(self.slots[i].step, Step::Draining | Step::Verify) {
                    let at = self.visible(i);
                    self.slots[i].location = Location::Gone;
                    self.finish(i, End::Vanished(at, format!("removed from the pool: {e}")));
                } else {
                    // Mid-maintenance: its enable will tell; stop watching.
                    self.slots[i].unwatched = true;
                }
                return;
            }
            Err(Error::Cancelled { .. }) => {
                // Abandoned by the cancellation: a target kept out is
                // looked at again before the run ends.
                if idx.iter().any(|&i| self.finished_out(i)) {
                    self.kept_changed = true;
                }
                return;
            }
            Err(e) => return self.poll_failed(idx, &e),
        };
        for (&i, s) in idx.iter().zip(st) {
            if call < self.slots[i].epoch || self.slots[i].redraining {
                // Sent before the target's current step began (a guard poll
                // in flight across its enable): it says nothing about it.
                // Nor does one read while a drain sent again is in flight:
                // its answer decides.
                continue;
            }
            self.slots[i].unseen = None;
            if s.state != TargetState::InService {
                // Out again (a drain sent again that applied after all).
                self.slots[i].lost = false;
            }
            let waited = self.now.saturating_sub(self.slots[i].since);
            match self.slots[i].step {
                Step::Draining => match judge_drain(&s, waited, &self.rules) {
                    DrainVerdict::Wait
                        if s.state == TargetState::InService
                            && (self.slots[i].seen_out > self.slots[i].since
                                || self.slots[i].lost
                                || self.slots[i].sealed)
                            && !self.slots[i].redraining =>
                    {
                        // Seen out (or disabled by the run, or put back once
                        // already), now back in service: the balancer (a
                        // node restarted or reloaded, an agent) lost the drain.
                        self.drain_lost(i, out);
                    }
                    DrainVerdict::Wait => {
                        if s.state != TargetState::InService {
                            self.slots[i].seen_out = self.now;
                        }
                    }
                    DrainVerdict::Drained { .. } if s.state == TargetState::InService => {
                        // Never maintained while the last status said in
                        // service (a backend that counts nothing in flight).
                        self.drain_lost(i, out);
                    }
                    DrainVerdict::Drained { forced } => {
                        let slot = &mut self.slots[i];
                        slot.seen_out = self.now;
                        // The read after the hard disable adds to the drain.
                        slot.timings.drain = Some(match (slot.sealed, slot.timings.drain) {
                            (true, Some(before)) => before + waited,
                            _ => waited,
                        });
                        slot.drain_cut_short |= forced;
                        self.set(i, Step::Drained);
                    }
                    DrainVerdict::Failed { reason, in_service } => {
                        self.fail(i, Stage::Draining, reason);
                        if in_service {
                            self.slots[i].location = Location::InService;
                            self.finish(i, End::Failed);
                        } else {
                            self.after_failure_out(i);
                        }
                    }
                },
                Step::Verify => match judge_health(&s, &self.caps, waited, &self.rules) {
                    HealthVerdict::Wait => {}
                    HealthVerdict::Healthy => self.on_healthy(i, waited),
                    HealthVerdict::Failed(why) => self.on_unhealthy(i, why, s.state),
                },
                // Out because putting it back failed (not kept out by a
                // decision of the run): the run's last look says where it is,
                // and never takes it out again.
                Step::Finished if self.stranded(i) && s.state == TargetState::InService => {
                    self.slots[i].location = Location::InService;
                    self.note(
                        i,
                        "seen back in rotation before the run ended: something else put it back",
                    );
                }
                Step::Finished if self.stranded(i) => {}
                _ if self.watch(i) == Watch::Guard => {
                    if s.state == TargetState::InService {
                        self.drain_lost(i, out);
                    } else {
                        self.slots[i].seen_out = self.now;
                        if self.slots[i].step == Step::Finished {
                            // Kept out, and seen out again.
                            self.slots[i].location = Location::KeptOut;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The balancer put back a target the run has out (a reload, another
    /// tool): take it out again at once, and record it.
    fn drain_lost(&mut self, i: usize, out: &mut Vec<Effect>) {
        self.kept_changed = true;
        let s = &mut self.slots[i];
        s.redraining = true;
        s.lost = true;
        s.drain_lost.push(DrainLost {
            last_seen_out: s.seen_out,
            seen_in_service: self.now,
            back_out: None,
        });
        let id = s.target.id.clone();
        self.events.push_back((
            s.group,
            EventKind::DrainLost {
                id: id.clone(),
                stage: s.emitted,
            },
        ));
        // Sealed before its maintenance, or kept out after a failure: out
        // hard again, not just drained.
        let hard = s.sealed || s.step == Step::Finished;
        let c = self.call(Call::Redrain(i));
        if hard && self.caps.hard_disable {
            out.push(Effect::Disable(c, vec![id]));
        } else {
            out.push(Effect::Drain(c, vec![id]));
        }
    }

    pub(super) fn on_redrain(&mut self, i: usize, r: Result<()>, out: &mut Vec<Effect>) {
        let now = self.now;
        // Look again soon: what the re-drain did is for a status to say.
        self.poll_due = self.poll_due.min(now);
        let s = &mut self.slots[i];
        s.redraining = false;
        match r {
            Ok(()) => {
                s.lost = false;
                s.seen_out = now;
                if s.step == Step::Finished && s.keep_out {
                    s.location = Location::KeptOut;
                }
                if let Some(l) = s.drain_lost.last_mut() {
                    l.back_out = Some(now);
                }
                if s.step == Step::Drained {
                    // Not yet maintained: wait for its work to end again.
                    s.since = now;
                    s.sealed = false;
                    self.set(i, Step::Draining);
                }
            }
            Err(e) => {
                s.notes.push(format!(
                    "the balancer put it back in rotation during the run, and draining it again failed: {e}"
                ));
                match s.step {
                    // Read what is true (the drain may have applied); one
                    // kept out after a failure stays watched, and the guard
                    // tries again at its next poll while the run goes on.
                    Step::Finished => {
                        self.read_back(vec![i], After::TakeOut, out);
                    }
                    Step::Drained | Step::Seal => {
                        // Last seen in service: back to draining, never
                        // maintained until a status shows it out again
                        // (the next poll that sees it in service drains it
                        // again; the drain timeout ends the wait).
                        s.since = now;
                        s.sealed = false;
                        self.set(i, Step::Draining);
                    }
                    // The next poll sees it and drains it again.
                    _ => {}
                }
            }
        }
    }

    pub(super) fn poll_failed(&mut self, idx: &[usize], e: &Error) {
        let mut judged = false;
        for &i in idx {
            if self.finished_out(i) {
                self.slots[i].unseen = Some(e.to_string());
                // Not seen: the run's last looks look again.
                self.kept_changed = true;
            }
            judged |= matches!(self.slots[i].step, Step::Draining | Step::Verify);
            match self.slots[i].step {
                Step::Draining => {
                    self.fail(
                        i,
                        Stage::Draining,
                        format!("status while draining failed: {e}; not maintained"),
                    );
                    self.slots[i].purpose = Purpose::Undo;
                    self.set(i, Step::AwaitEnable);
                }
                Step::Verify => {
                    let why = format!("status after the enable failed: {e}");
                    match self.slots[i].purpose {
                        Purpose::Restore => {
                            self.slots[i].put_back = Some(PutBack {
                                healthy: false,
                                detail: why,
                            });
                            self.finish(i, End::Failed);
                        }
                        _ => {
                            self.fail(i, Stage::Enabling, why);
                            match self.cfg.on_failure() {
                                OnFailure::KeepOut => self.keep_out_again(i),
                                OnFailure::Restore => {
                                    self.note(
                                        i,
                                        "left in service unverified (on_failure = restore)",
                                    );
                                    self.finish(i, End::Failed);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if judged {
            self.stop_balancer("status", e);
        }
    }

    /// A failed target that is out of rotation: kept out, or put back under
    /// `on_failure = restore` (after the probe, when there is one).
    pub(super) fn after_failure_out(&mut self, i: usize) {
        match self.cfg.on_failure() {
            OnFailure::KeepOut => {
                self.slots[i].keep_out = true;
                self.finish(i, End::Failed);
            }
            OnFailure::Restore => {
                self.slots[i].purpose = Purpose::Restore;
                // A maintenance was attempted (whatever its outcome): the probe
                // says whether the target is fit to serve again.
                if self.has_probe && self.slots[i].timings.execute.is_some() {
                    self.slots[i].since = self.now;
                    self.set(
                        i,
                        Step::Probe {
                            in_flight: false,
                            wake: self.now,
                        },
                    );
                } else {
                    self.set(i, Step::AwaitEnable);
                }
            }
        }
    }

    pub(super) fn on_healthy(&mut self, i: usize, waited: Duration) {
        match self.slots[i].purpose {
            Purpose::Restore if self.slots[i].failure.is_none() => {
                // Put back by a restore, and healthy.
                self.slots[i].timings.health = Some(waited);
                self.finish(
                    i,
                    End::Restored(format!("put back by restore, healthy {waited:?} after")),
                );
            }
            Purpose::Restore => {
                self.slots[i].put_back = Some(PutBack {
                    healthy: true,
                    detail: format!("healthy {waited:?} after it was put back"),
                });
                self.finish(i, End::Failed);
            }
            _ => {
                self.slots[i].timings.health = Some(waited);
                self.canary_done = true;
                self.slots[i].since = self.now;
                let until = match self.cfg.pacing() {
                    Pacing::Batches => None,
                    Pacing::Window => Some(self.warm_until()),
                };
                self.set(i, Step::Warm { until });
            }
        }
    }

    pub(super) fn warm_until(&self) -> Duration {
        if self.queue.is_empty() || self.cancelled || self.stop.is_some() {
            self.now
        } else {
            self.now + self.cfg.warmup()
        }
    }

    pub(super) fn on_unhealthy(&mut self, i: usize, why: String, seen: TargetState) {
        // Left as the last status shows it: in service, or out (the
        // balancer took it out: an operator must look).
        let location = if seen == TargetState::InService {
            Location::InService
        } else {
            Location::KeptOut
        };
        match self.slots[i].purpose {
            Purpose::Restore if self.slots[i].failure.is_none() => {
                self.fail(
                    i,
                    Stage::Enabling,
                    format!("put back by restore, but {why}"),
                );
                self.slots[i].location = location;
                self.finish(i, End::Failed);
            }
            Purpose::Restore => {
                self.slots[i].put_back = Some(PutBack {
                    healthy: false,
                    detail: why,
                });
                self.slots[i].location = location;
                self.finish(i, End::Failed);
            }
            _ => {
                self.fail(i, Stage::Enabling, why);
                match self.cfg.on_failure() {
                    OnFailure::KeepOut => self.keep_out_again(i),
                    OnFailure::Restore => {
                        self.slots[i].location = location;
                        self.finish(i, End::Failed);
                    }
                }
            }
        }
    }

    /// A target back in rotation that failed its health check: take it out
    /// again (the effect is sent by `advance`, batched).
    pub(super) fn keep_out_again(&mut self, i: usize) {
        self.slots[i].keep_out = true;
        self.set(i, Step::TakeOut);
    }

    pub(super) fn on_execute(&mut self, idx: &[usize], r: Result<Vec<ExecOutcome>>) {
        // An answer that cannot be trusted, or a call that ran past its
        // limit, says nothing of whether the maintenance ended: it may
        // still run (a remote command carries on when the call is dropped).
        let open = |m: &Self, i: usize, why: String| {
            Ok(ExecOutcome::may_still_run(
                m.slots[i].target.id.clone(),
                m.now.saturating_sub(m.slots[i].since),
                why,
            ))
        };
        let outcomes: Vec<std::result::Result<ExecOutcome, String>> = match r {
            Ok(v) if v.len() == idx.len() => v
                .into_iter()
                .zip(idx)
                .map(|(o, &i)| {
                    if o.id == self.slots[i].target.id {
                        Ok(o)
                    } else {
                        open(
                            self,
                            i,
                            format!(
                                "executor returned the outcome of {} in the place of {}: not trusted",
                                o.id, self.slots[i].target.id
                            ),
                        )
                    }
                })
                .collect(),
            Ok(v) => idx
                .iter()
                .map(|&i| {
                    open(
                        self,
                        i,
                        format!(
                            "executor returned {} outcomes for {} targets: not trusted",
                            v.len(),
                            idx.len()
                        ),
                    )
                })
                .collect(),
            Err(e @ Error::Timeout { .. }) => idx
                .iter()
                .map(|&i| open(self, i, format!("executor did not answer in time: {e}")))
                .collect(),
            Err(e) => vec![Err(format!("executor failed: {e}")); idx.len()],
        };
        for (&i, o) in idx.iter().zip(outcomes) {
            self.executed(i, o);
        }
    }

    /// Target `i`'s maintenance ended with `o` (an outcome, or why none).
    fn executed(&mut self, i: usize, o: std::result::Result<ExecOutcome, String>) {
        let ran = self.now.saturating_sub(self.slots[i].since);
        self.slots[i].since = self.now;
        let verdict = match o {
            Ok(o) if o.may_still_run => {
                self.slots[i].timings.execute = Some(o.duration);
                let why = o
                    .message
                    .clone()
                    .unwrap_or_else(|| "the executor could not confirm its end".into());
                self.slots[i].execution = Some(o);
                return self.still_open(i, &why);
            }
            Ok(o) => {
                self.slots[i].timings.execute = Some(o.duration);
                let v = if o.success {
                    Ok(())
                } else {
                    Err(o.message.clone().unwrap_or_else(|| match o.exit_code {
                        Some(c) => format!("maintenance exited with code {c}"),
                        None => "maintenance failed".to_owned(),
                    }))
                };
                self.slots[i].execution = Some(o);
                v
            }
            Err(e) => {
                self.slots[i].timings.execute = Some(ran);
                Err(e)
            }
        };
        match verdict {
            Ok(()) if self.has_probe => self.set(
                i,
                Step::Probe {
                    in_flight: false,
                    wake: self.now,
                },
            ),
            Ok(()) => self.set(i, Step::AwaitEnable),
            Err(why) => {
                self.fail(i, Stage::Executing, why);
                self.after_failure_out(i);
            }
        }
    }

    /// The answer about a maintenance a dead run started. Only an executor
    /// that says the maintenance is gone (`Recovered::Unknown`) lets the
    /// run go on without its outcome; one that could not be asked, or could
    /// not confirm the end, leaves the target out with its handle.
    pub(super) fn on_recovered(&mut self, i: usize, r: Result<Recovered>) {
        if self.slots[i].step != Step::Execute {
            return; // finished meanwhile (vanished)
        }
        let r = match r {
            Ok(Recovered::Finished(o)) if o.id != self.slots[i].target.id => {
                return self.still_open(
                    i,
                    &format!(
                        "executor recovered the outcome of {} in the place of {}: not trusted",
                        o.id, self.slots[i].target.id
                    ),
                );
            }
            Ok(Recovered::Finished(o)) if o.may_still_run => {
                let why = o
                    .message
                    .clone()
                    .unwrap_or_else(|| "the executor could not confirm its end".into());
                self.slots[i].execution = Some(o);
                return self.still_open(i, &why);
            }
            Err(e) => {
                return self.still_open(
                    i,
                    &format!("the executor could not say how its maintenance ended ({e})"),
                );
            }
            Ok(r) => r,
        };
        if self.slots[i].purpose == Purpose::Restore {
            // Restore puts back a maintenance that ended, or that the
            // executor says is gone, whatever its outcome.
            let said = match &r {
                Recovered::Finished(o) if o.success => {
                    "its maintenance ended and succeeded".to_owned()
                }
                Recovered::Finished(o) => format!(
                    "its maintenance ended and failed ({}); put back all the same",
                    o.message.as_deref().unwrap_or("no message")
                ),
                Recovered::Unknown(why) => {
                    format!("its maintenance's outcome is unknown ({why}); put back all the same")
                }
            };
            if let Recovered::Finished(o) = r {
                self.slots[i].timings.execute = Some(o.duration);
                self.slots[i].execution = Some(o);
            }
            self.note(i, said);
            return self.set(i, Step::AwaitEnable);
        }
        match r {
            Recovered::Finished(o) => {
                self.note(
                    i,
                    "its interrupted maintenance was found and its outcome read",
                );
                self.executed(i, Ok(o));
            }
            Recovered::Unknown(why) => {
                self.outcome_unknown(i, &why);
            }
        }
    }

    /// The maintenance of `i` may still be running (`why`): kept out of
    /// rotation whatever `on_failure` says, its handle kept, and the run's
    /// journal left open so that a resume or restore waits for it again.
    pub(super) fn still_open(&mut self, i: usize, why: &str) {
        let s = &mut self.slots[i];
        s.open = true;
        s.keep_out = true;
        s.timings.execute.get_or_insert(Duration::ZERO);
        let in_service = s.location == Location::InService;
        self.fail(
            i,
            Stage::Executing,
            format!("{why}; its maintenance may still be running: kept out of rotation with its handle, and the run's journal left unfinished — run `hygiene resume` or `hygiene restore` once the executor can be asked again; both wait for it"),
        );
        if in_service {
            self.set(i, Step::TakeOut);
        } else {
            self.finish(i, End::Failed);
        }
    }

    pub(super) fn on_probe(&mut self, i: usize, r: Result<ProbeVerdict>) {
        let why = match r {
            Ok(ProbeVerdict::Pass) => {
                let waited = self.now.saturating_sub(self.slots[i].since);
                self.slots[i].timings.probe = Some(waited);
                return self.set(i, Step::AwaitEnable);
            }
            Ok(ProbeVerdict::Fail(why)) => why,
            Err(e @ Error::InvalidConfig { .. }) => {
                return self.probe_failed(i, format!("probe cannot run: {e}"));
            }
            Err(e) => format!("probe error: {e}"),
        };
        let waited = self.now.saturating_sub(self.slots[i].since);
        if waited < self.rules.health_timeout {
            self.slots[i].last_probe = Some(why);
            let wake = (self.now + self.poll).min(self.slots[i].since + self.rules.health_timeout);
            self.set(
                i,
                Step::Probe {
                    in_flight: false,
                    wake,
                },
            );
        } else {
            self.probe_failed(
                i,
                format!(
                    "probe did not pass within {:?} of the maintenance: {why}",
                    self.rules.health_timeout
                ),
            );
        }
    }

    pub(super) fn probe_failed(&mut self, i: usize, why: String) {
        let why = format!("{why}; never put back in rotation");
        self.slots[i].keep_out = true;
        if self.slots[i].purpose == Purpose::Restore {
            self.note(i, why);
        } else {
            self.fail(i, Stage::Probing, why);
        }
        self.finish(i, End::Failed);
    }
}

/// How a target takes part in polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    No,
    /// Judged by the poll, until this deadline.
    Until(Duration),
    /// Watched for a balancer that puts it back on its own.
    Guard,
}
