//! What follows from the state at each instant: put-backs on cancel,
//! collective steps of a batch, due probes and warmups, the next poll, the
//! failure budget and the next targets to start.

use super::*;

impl Machine {
    /// Everything that follows from the current state at `now`: put-backs
    /// on cancel, executes and enables whose turn has come, probes and
    /// warmups that are due, the next poll, the failure budget, the next
    /// targets to start.
    pub(super) fn advance(&mut self, out: &mut Vec<Effect>) {
        if self.cancelled {
            // Drained targets not yet executing go back at once; warmups end.
            let back: Vec<usize> = self
                .active
                .iter()
                .copied()
                .filter(|&i| matches!(self.slots[i].step, Step::Draining | Step::Drained))
                .collect();
            for i in back {
                self.slots[i].purpose = Purpose::Cancel;
                self.set(i, Step::AwaitEnable);
            }
        }
        let now = self.now;
        let mut execute: Vec<usize> = Vec::new();
        let mut seal: Vec<usize> = Vec::new();
        let mut enable: Vec<usize> = Vec::new();
        let mut take_out: Vec<usize> = Vec::new();
        let mut probes: Vec<usize> = Vec::new();
        let mut warm_done: Vec<usize> = Vec::new();
        let mut warm_start: Vec<usize> = Vec::new();
        for &i in &self.active {
            let s = &self.slots[i];
            match s.step {
                Step::Drained
                    if !s.redraining && !s.lost && self.caps.hard_disable && !s.sealed =>
                {
                    seal.push(i);
                }
                // Never maintained while the last status said in service.
                Step::Drained
                    if !s.redraining
                        && !s.lost
                        && self.lease_allows()
                        && self.turn(i, Turn::Execute) =>
                {
                    execute.push(i);
                }
                Step::AwaitEnable if !s.redraining && self.turn(i, Turn::Enable) => enable.push(i),
                Step::TakeOut => take_out.push(i),
                Step::Probe {
                    in_flight: false,
                    wake,
                } if wake <= now => probes.push(i),
                Step::Warm { until: Some(u) } if u <= now || self.cancelled => warm_done.push(i),
                Step::Warm { until: None } if self.turn(i, Turn::Warm) => warm_start.push(i),
                _ => {}
            }
        }
        for i in warm_start {
            let until = if self.cancelled {
                now
            } else {
                self.warm_until()
            };
            self.set(i, Step::Warm { until: Some(until) });
            if until <= now {
                self.finish_warm(i);
            }
        }
        for i in warm_done {
            self.finish_warm(i);
        }
        if !seal.is_empty() {
            for &i in &seal {
                self.set(i, Step::Seal);
            }
            let ids = self.ids(&seal);
            let c = self.call(Call::Seal(seal));
            out.push(Effect::Disable(c, ids));
        }
        match self.cfg.pacing() {
            Pacing::Batches => {
                // One executor call per batch.
                let mut by_group: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
                for i in execute {
                    by_group.entry(self.slots[i].group).or_default().push(i);
                }
                let mut groups: Vec<_> = by_group.into_values().collect();
                groups.sort();
                for g in groups {
                    self.send_execute(g, out);
                }
            }
            Pacing::Window => {
                for i in execute {
                    self.send_execute(vec![i], out);
                }
            }
        }
        if !enable.is_empty() {
            self.send_enable(enable, out);
        }
        if !take_out.is_empty() {
            self.send_take_out(take_out, out);
        }
        for (i, handle) in std::mem::take(&mut self.to_recover) {
            if self.slots[i].step == Step::Execute {
                let c = self.call(Call::Recover(i));
                out.push(Effect::Recover(c, self.slots[i].target.clone(), handle));
            }
        }
        for i in probes {
            self.set(
                i,
                Step::Probe {
                    in_flight: true,
                    wake: now,
                },
            );
            let c = self.call(Call::Probe(i));
            out.push(Effect::Probe(c, self.slots[i].target.clone()));
        }
        self.maybe_poll(out);
        let failed = self.failures();
        if failed > self.allowed {
            self.stop(AbortReason::FailureBudget {
                failed,
                allowed: self.allowed,
                max_failures: self.cfg.max_failures(),
                selected: self.slots.len(),
            });
        }
        self.plan(out);
        self.final_look(out);
    }

    /// When nothing else is left, one more read of the targets the run
    /// keeps out before it ends: "kept out" in the report is what the
    /// balancer shows at the end (one put back since the last poll is
    /// taken out again, and looked at again, up to [`FINAL_LOOKS`] times).
    fn final_look(&mut self, out: &mut Vec<Effect>) {
        if !self.is_finished() || (self.final_looks > 0 && !self.kept_changed) {
            return;
        }
        let kept: Vec<usize> = self
            .kept
            .iter()
            .copied()
            .filter(|&i| self.watch(i) == Watch::Guard || self.stranded(i))
            .collect();
        if kept.is_empty() {
            return;
        }
        if self.final_looks >= FINAL_LOOKS {
            // Put back at every look: taken out again, not seen out since.
            for &i in &kept {
                if self.slots[i]
                    .drain_lost
                    .last()
                    .is_some_and(|l| l.back_out.is_some())
                {
                    self.slots[i].unseen = Some(format!(
                        "something put it back in rotation at each of the run's last {FINAL_LOOKS} looks"
                    ));
                }
            }
            return;
        }
        self.final_looks += 1;
        self.kept_changed = false;
        self.poll_in_flight = true;
        self.last_poll = self.now;
        let ids = self.ids(&kept);
        let c = self.call(Call::Poll(kept));
        out.push(Effect::Status(c, ids));
    }

    fn finish_warm(&mut self, i: usize) {
        let warmed = self.now.saturating_sub(self.slots[i].since);
        if !warmed.is_zero() {
            self.slots[i].timings.warmup = Some(warmed);
            let s = &self.slots[i];
            self.events.push_back((
                s.group,
                EventKind::Phase {
                    id: s.target.id.clone(),
                    stage: Stage::Warm,
                    detail: None,
                },
            ));
        }
        self.finish(i, End::Done);
    }

    /// Whether target `i` may take the next collective step now. With
    /// batches, a batch executes together once none of it is still
    /// draining, is enabled together once none of it is still before the
    /// enable, and warms up once all of it is healthy or settled. A window
    /// moves each target alone. Put-backs never wait.
    fn turn(&self, i: usize, turn: Turn) -> bool {
        let s = &self.slots[i];
        if turn == Turn::Enable && matches!(s.purpose, Purpose::Cancel | Purpose::Undo) {
            return true;
        }
        if self.cfg.pacing() == Pacing::Window {
            return true;
        }
        let blocking = |step: Step| match turn {
            Turn::Execute => matches!(step, Step::DrainCall | Step::Draining | Step::Seal),
            Turn::Enable => matches!(
                step,
                Step::DrainCall
                    | Step::Draining
                    | Step::Drained
                    | Step::Seal
                    | Step::Execute
                    | Step::Probe { .. }
            ),
            Turn::Warm => !matches!(step, Step::Warm { .. } | Step::Finished | Step::Queued),
        };
        !self
            .active
            .iter()
            .any(|&j| j != i && self.slots[j].group == s.group && blocking(self.slots[j].step))
    }

    fn send_execute(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.slots[i].since = self.now;
            self.set(i, Step::Execute);
        }
        let targets = idx.iter().map(|&i| self.slots[i].target.clone()).collect();
        let c = self.call(Call::Execute(idx));
        out.push(Effect::Execute(c, targets));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Execute,
    Enable,
    Warm,
}
