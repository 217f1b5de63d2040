//! Calls that change a target (drain, enable, take out again) and what
//! their answers mean; after a failed one, the status read back says what
//! is true.

use super::*;

impl Machine {
    pub(super) fn send_drain(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.set(i, Step::DrainCall);
        }
        let ids = self.ids(&idx);
        let c = self.call(Call::Drain(idx));
        out.push(Effect::Drain(c, ids));
    }

    /// Drained targets disabled before their maintenance. A disable that
    /// failed leaves them drained (no connection, no new one but sticky
    /// sessions): the maintenance goes ahead, with a note. Either way one
    /// more status read, made after the disable, must show nothing in
    /// flight before the maintenance starts: a sticky request can arrive
    /// between the last "drained" read and the disable.
    pub(super) fn on_seal(&mut self, idx: &[usize], r: Result<()>) {
        for &i in idx {
            if self.slots[i].step != Step::Seal {
                continue;
            }
            self.slots[i].sealed = true;
            if let Err(e) = &r {
                self.note(
                    i,
                    format!(
                        "disabling it after its drain failed ({e}); maintained on the drain alone"
                    ),
                );
            }
            if self.cancelled {
                self.slots[i].purpose = Purpose::Cancel;
                self.set(i, Step::AwaitEnable);
            } else {
                self.slots[i].since = self.now;
                self.set(i, Step::Draining);
                self.poll_due = self.poll_due.min(self.now);
            }
        }
    }

    pub(super) fn on_drain(&mut self, idx: &[usize], r: Result<()>, out: &mut Vec<Effect>) {
        match r {
            Ok(()) => {
                for &i in idx {
                    self.slots[i].location = Location::OutByRun;
                    self.slots[i].since = self.now;
                    self.slots[i].seen_out = self.now;
                    self.slots[i].sealed = false;
                    self.set(i, Step::Draining);
                }
                self.poll_due = self.now;
            }
            // Bad input changes nothing (the trait's contract): one unknown
            // id must not hold the others back. Drain each alone.
            // Nothing changed: once cancelled, none of them starts.
            Err(Error::NotFound { .. } | Error::InvalidName { .. }) if self.cancelled => {
                self.requeue(idx);
            }
            Err(Error::NotFound { .. } | Error::InvalidName { .. }) if idx.len() > 1 => {
                for &i in idx {
                    self.send_drain(vec![i], out);
                }
            }
            // One target alone: gone from the pool, or refused? Read it back;
            // it fails only if it is still there.
            Err(e @ (Error::NotFound { .. } | Error::InvalidName { .. })) => {
                self.slots[idx[0]].last_error = Some(format!("drain refused: {e}"));
                self.read_back(idx.to_vec(), After::Drain, out);
            }
            Err(Error::Cancelled { .. }) => {
                // It may have been applied: put it back (enable is idempotent).
                for &i in idx {
                    self.slots[i].location = Location::Unknown;
                    self.slots[i].purpose = Purpose::Cancel;
                    self.set(i, Step::AwaitEnable);
                }
            }
            Err(e) => {
                for &i in idx {
                    self.fail(i, Stage::Draining, format!("drain failed: {e}"));
                }
                self.read_back(idx.to_vec(), After::Drain, out);
                self.stop_balancer("drain", &e);
            }
        }
    }

    pub(super) fn read_back(&mut self, idx: Vec<usize>, after: After, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.set(i, Step::ReadBack);
        }
        let ids = self.ids(&idx);
        let c = self.call(Call::ReadBack(idx, after));
        out.push(Effect::ReadBack(c, ids));
    }

    pub(super) fn on_read_back(
        &mut self,
        idx: &[usize],
        after: After,
        r: Result<Vec<TargetStatus>>,
        out: &mut Vec<Effect>,
    ) {
        let seen: Vec<Option<TargetState>> = match r {
            Ok(st) if st.len() == idx.len() => st.into_iter().map(|s| Some(s.state)).collect(),
            Err(Error::NotFound { .. }) if idx.len() > 1 => {
                for &i in idx {
                    self.read_back(vec![i], after, out);
                }
                return;
            }
            Err(e @ Error::NotFound { .. }) => {
                // Gone for the balancer's read too: removed from the pool.
                let i = idx[0];
                let at = self.slots[i]
                    .failure
                    .as_ref()
                    .map_or(self.slots[i].emitted, |(at, _)| *at);
                self.slots[i].location = Location::Gone;
                return self.finish(i, End::Vanished(at, format!("removed from the pool: {e}")));
            }
            _ => vec![None; idx.len()],
        };
        for (&i, state) in idx.iter().zip(seen) {
            match (after, state) {
                (After::Drain, Some(TargetState::InService)) => {
                    self.slots[i].location = Location::InService;
                    let why = self.slots[i].last_error.take().unwrap_or_default();
                    self.fail(
                        i,
                        Stage::Draining,
                        format!("{why}; the balancer shows it in service: the drain did not apply"),
                    );
                    self.finish(i, End::Failed);
                }
                (After::Drain, other) => {
                    if let Some(why) = self.slots[i].last_error.take() {
                        self.fail(i, Stage::Draining, why);
                    }
                    // Out, or unknown: undo the drain (no maintenance ran).
                    self.slots[i].location = if other.is_some() {
                        Location::OutByRun
                    } else {
                        Location::Unknown
                    };
                    self.slots[i].purpose = Purpose::Undo;
                    self.set(i, Step::AwaitEnable);
                }
                (After::Enable, Some(TargetState::InService)) => {
                    self.slots[i].location = Location::InService;
                    match self.slots[i].purpose {
                        Purpose::Maintained | Purpose::Restore => {
                            let why = self.slots[i].last_error.take().unwrap_or_default();
                            self.note(i, format!("{why}; but the balancer shows it in service: its health was verified as usual"));
                            self.slots[i].since = self.now;
                            self.poll_due = self.now;
                            self.set(i, Step::Verify);
                        }
                        Purpose::Cancel => {
                            self.slots[i].last_error = None;
                            self.finish(
                                i,
                                End::Restored(
                                    "the run was cancelled before its maintenance".into(),
                                ),
                            );
                        }
                        Purpose::Undo => {
                            self.slots[i].last_error = None;
                            self.finish(i, End::Failed);
                        }
                    }
                }
                (After::Enable, Some(s)) => {
                    self.enable_failed(i);
                    self.slots[i].location = Location::KeptOut;
                    self.note(i, format!("the balancer shows it {s:?}: out of rotation"));
                    self.finish(i, End::Failed);
                }
                (After::TakeOut, Some(TargetState::InService)) => {
                    self.slots[i].location = Location::InService;
                    self.note(
                        i,
                        "it could not be taken out of rotation again: it is IN SERVICE",
                    );
                    self.finish(i, End::Failed);
                }
                (After::TakeOut, Some(s)) => {
                    self.slots[i].location = Location::KeptOut;
                    self.note(
                        i,
                        format!("taking it out again failed, but the balancer shows it {s:?}"),
                    );
                    self.finish(i, End::Failed);
                }
                (After::Enable, None) => {
                    self.enable_failed(i);
                    self.slots[i].location = Location::Unknown;
                    self.note(i, "its state could not be read back: check it");
                    self.finish(i, End::Failed);
                }
                (After::TakeOut, None) => {
                    self.slots[i].location = Location::Unknown;
                    self.note(i, "its state could not be read back: check it");
                    self.finish(i, End::Failed);
                }
            }
        }
    }

    pub(super) fn on_take_out(&mut self, idx: &[usize], r: Result<()>, out: &mut Vec<Effect>) {
        match r {
            Ok(()) => {
                for &i in idx {
                    self.slots[i].location = Location::KeptOut;
                    self.finish(i, End::Failed);
                }
            }
            Err(Error::NotFound { .. } | Error::InvalidName { .. }) if idx.len() > 1 => {
                for &i in idx {
                    self.send_take_out(vec![i], out);
                }
            }
            Err(e) => {
                for &i in idx {
                    self.note(i, format!("taking it out of rotation again failed: {e}"));
                }
                self.read_back(idx.to_vec(), After::TakeOut, out);
            }
        }
    }

    pub(super) fn send_take_out(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.set(i, Step::TakeOutCall);
        }
        let ids = self.ids(&idx);
        let hard = self.caps.hard_disable;
        let c = self.call(Call::TakeOut(idx));
        out.push(if hard {
            Effect::Disable(c, ids)
        } else {
            Effect::Drain(c, ids)
        });
    }

    pub(super) fn on_enable(&mut self, idx: &[usize], r: Result<()>, out: &mut Vec<Effect>) {
        match r {
            Ok(()) => {
                let mut put_back = Vec::new();
                for &i in idx {
                    self.slots[i].location = Location::InService;
                    match self.slots[i].purpose {
                        Purpose::Maintained | Purpose::Restore => {
                            self.slots[i].since = self.now;
                            self.set(i, Step::Verify);
                            self.poll_due = self.now;
                        }
                        Purpose::Cancel | Purpose::Undo => put_back.push(i),
                    }
                }
                if !put_back.is_empty() {
                    // Verified by a status read, like every put-back: an
                    // enable a balancer defers (ELBv2 registers a target
                    // only once its deregistration ended) is not "back".
                    for &i in &put_back {
                        self.slots[i].last_error = Some(
                            "put back, but the status read after the enable does not show it in service"
                                .into(),
                        );
                    }
                    self.read_back(put_back, After::Enable, out);
                }
            }
            Err(Error::NotFound { .. } | Error::InvalidName { .. }) if idx.len() > 1 => {
                for &i in idx {
                    self.send_enable(vec![i], out);
                }
            }
            Err(e) => {
                // Whether it failed is for the status read back to say: an
                // enable applied on one node of two is in service.
                for &i in idx {
                    self.slots[i].last_error = Some(match self.slots[i].purpose {
                        Purpose::Maintained => {
                            format!("enable failed after a successful maintenance: {e}")
                        }
                        Purpose::Cancel => format!("cancelled, and re-enabling failed: {e}"),
                        Purpose::Restore | Purpose::Undo => {
                            format!("putting it back failed: {e}")
                        }
                    });
                }
                self.read_back(idx.to_vec(), After::Enable, out);
                if !matches!(
                    e,
                    Error::Cancelled { .. } | Error::NotFound { .. } | Error::InvalidName { .. }
                ) {
                    self.stop_balancer("enable", &e);
                }
            }
        }
    }

    /// The enable of `i` failed and it is not in service: that is its
    /// failure (or a note on the failure it already had).
    fn enable_failed(&mut self, i: usize) {
        let why = self.slots[i]
            .last_error
            .take()
            .unwrap_or_else(|| "enable failed".into());
        let at = if self.slots[i].purpose == Purpose::Cancel {
            Stage::Restored
        } else {
            Stage::Enabling
        };
        self.fail(i, at, why);
    }

    pub(super) fn send_enable(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.set(i, Step::EnableCall);
        }
        let ids = self.ids(&idx);
        let c = self.call(Call::Enable(idx));
        out.push(Effect::Enable(c, ids));
    }
}
