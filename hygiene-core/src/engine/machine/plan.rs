//! Choosing and preparing the next targets: the pool listing for
//! `min_healthy`, the preflight, and the status read right before the drain.

use super::*;

impl Machine {
    pub(super) fn plan(&mut self, out: &mut Vec<Effect>) {
        if self.plan.is_some() || self.cancelled || self.stop.is_some() {
            return;
        }
        // A batch back: its soak and its gates hold what follows.
        if !self.after_clear(out) || self.queue.is_empty() {
            return;
        }
        if !self.lease_allows() {
            // Not enough lease left for a drain: wait for a renewal.
            return;
        }
        if let Some(t) = self.plan_retry_at {
            if self.now < t {
                return;
            }
            self.plan_retry_at = None;
        }
        let want = planner::want(planner::Window {
            pacing: self.cfg.pacing(),
            width: self.batch_len,
            in_progress: self.in_progress(),
            canary: !self.canary_done,
        });
        if want == 0 || !self.before_clear(out) {
            return;
        }
        // batch_by = zone: only the front zone's targets, once no other
        // zone's target is in progress.
        let Ok(zone) = self.zone_now() else { return };
        let in_zone = |m: &Self, q: usize| zone.as_ref().is_none_or(|z| m.zone(q) == z.as_deref());
        if matches!(
            self.cfg.min_healthy(),
            Amount::Count(0) | Amount::Percent(0)
        ) && self.cfg.zone_min_healthy().is_none()
        {
            let mut cands = Vec::with_capacity(want);
            while cands.len() < want {
                match self.queue.front().copied() {
                    Some(q) if self.slots[q].step != Step::Queued => {
                        // finished meanwhile (recovered as done, vanished)
                        self.queue.pop_front();
                    }
                    Some(q) if in_zone(self, q) => {
                        self.queue.pop_front();
                        cands.push(q);
                    }
                    _ => break,
                }
            }
            if !cands.is_empty() {
                self.start_preflight(cands, out);
            }
        } else {
            let cands: Vec<usize> = self
                .queue
                .iter()
                .copied()
                .take_while(|&q| self.slots[q].step != Step::Queued || in_zone(self, q))
                .take(want)
                .collect();
            let c = self.call(Call::List(cands));
            out.push(Effect::List(c));
            self.plan = Some(PlanStep::Listing);
        }
    }

    pub(super) fn on_listed(
        &mut self,
        cands: &[usize],
        r: Result<Vec<ListedTarget>>,
        out: &mut Vec<Effect>,
    ) {
        self.plan = None;
        let listed = match r {
            Ok(l) => l,
            Err(Error::Cancelled { .. }) => return,
            Err(e) => return self.stop_balancer("list", &e),
        };
        if self.cancelled || self.stop.is_some() {
            return;
        }
        self.pool = listed.len();
        let required = self.cfg.min_healthy_of(self.pool);
        let by_id: HashMap<&TargetId, &TargetStatus> =
            listed.iter().map(|l| (&l.target.id, &l.status)).collect();
        let healthy = listed
            .iter()
            .filter(|l| {
                l.status.counts_as_capacity_with(&self.caps) && self.counts_as_serving(&l.target.id)
            })
            .count();
        let mut removed = false;
        let mut costs = Vec::new();
        let mut fit = Vec::new();
        for &i in cands {
            if self.slots[i].step != Step::Queued {
                // Not a candidate any more: never let it hold the queue.
                removed = true;
                self.queue.retain(|&q| q != i);
                continue;
            }
            match by_id.get(&self.slots[i].target.id) {
                None => {
                    removed = true;
                    self.queue.retain(|&q| q != i);
                    self.slots[i].location = Location::Gone;
                    self.finish(
                        i,
                        End::Vanished(
                            Stage::Pending,
                            "no longer in the pool when its batch was due".into(),
                        ),
                    );
                }
                Some(st) if st.state != TargetState::InService => {
                    removed = true;
                    self.queue.retain(|&q| q != i);
                    self.found_out(i);
                    self.finish(
                        i,
                        End::Skipped(format!(
                            "{:?} when its batch was due; left as found",
                            st.state
                        )),
                    );
                }
                Some(st) => {
                    costs.push(usize::from(st.counts_as_capacity_with(&self.caps)));
                    fit.push(i);
                }
            }
        }
        let budgets = self.zone_budgets(&listed);
        let zoned: Vec<(usize, Option<String>)> = costs
            .iter()
            .zip(&fit)
            .map(|(&c, &i)| (c, self.zone(i).map(str::to_owned)))
            .collect();
        let take = planner::fit_zoned(&zoned, healthy, required, &budgets);
        if take > 0 {
            self.capacity_since = None;
            let chosen: Vec<usize> = fit[..take].to_vec();
            let set: BTreeSet<usize> = chosen.iter().copied().collect();
            self.queue.retain(|q| !set.contains(q));
            self.start_preflight(chosen, out);
            return;
        }
        if removed || fit.is_empty() {
            return; // plan again at once with the next candidates
        }
        if self.in_progress() > 0 {
            self.plan_retry_at = Some(self.now + self.poll);
            return;
        }
        let since = *self.capacity_since.get_or_insert(self.now);
        let waited = self.now.saturating_sub(since);
        // The pool could spare the first candidate: its zone's floor holds it.
        let zone_blocked = zoned.first().and_then(|(c, z)| {
            let z = z.as_ref()?;
            let b = budgets.get(z)?;
            (planner::fit(&[*c], healthy, required) == 1).then(|| (z.clone(), *b))
        });
        if let Some((zone, b)) = zone_blocked {
            if waited >= self.cfg.capacity_timeout() {
                self.stop(AbortReason::ZoneCapacity {
                    zone,
                    healthy: b.healthy,
                    required: b.required,
                    zone_min_healthy: self.cfg.zone_min_healthy().unwrap_or(Amount::Count(0)),
                    waited,
                });
            } else {
                self.events.push_back((
                    None,
                    EventKind::WaitingForCapacity {
                        healthy: b.healthy,
                        required: b.required,
                    },
                ));
                self.plan_retry_at = Some(self.now + self.poll);
            }
            return;
        }
        if waited >= self.cfg.capacity_timeout() {
            self.stop(AbortReason::Capacity {
                healthy,
                required,
                min_healthy: self.cfg.min_healthy(),
                waited,
            });
        } else {
            self.events
                .push_back((None, EventKind::WaitingForCapacity { healthy, required }));
            self.plan_retry_at = Some(self.now + self.poll);
        }
    }

    /// Whether a pool member may count as serving capacity: targets this
    /// run is working on never do, even when the listing still shows them
    /// in service (their drain may be applied at any moment).
    pub(super) fn counts_as_serving(&self, id: &TargetId) -> bool {
        self.index.get(id).is_none_or(|&i| {
            let s = &self.slots[i];
            matches!(s.step, Step::Queued | Step::Finished) && s.location == Location::InService
        })
    }

    pub(super) fn start_preflight(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        let g = self.groups;
        self.groups += 1;
        for &i in &idx {
            self.slots[i].group = Some(g);
            self.set(i, Step::Preflight);
        }
        self.events.push_back((
            Some(g),
            EventKind::BatchStarted {
                index: g,
                targets: self.ids(&idx),
            },
        ));
        let targets = idx.iter().map(|&i| self.slots[i].target.clone()).collect();
        let c = self.call(Call::Preflight(idx));
        out.push(Effect::Preflight(c, targets));
        self.plan = Some(PlanStep::Preflight);
    }

    pub(super) fn on_preflight(
        &mut self,
        idx: &[usize],
        r: Result<Vec<Preflight>>,
        out: &mut Vec<Effect>,
    ) {
        self.plan = None;
        let verdicts = match r {
            Err(Error::Cancelled { .. }) => return self.requeue(idx),
            _ if self.cancelled => return self.requeue(idx),
            Ok(v) if v.len() == idx.len() => v,
            Ok(v) => vec![
                Preflight::NotReady(format!(
                    "executor returned {} preflight results for {} targets",
                    v.len(),
                    idx.len()
                ));
                idx.len()
            ],
            Err(e) => vec![Preflight::NotReady(format!("preflight failed: {e}")); idx.len()],
        };
        let mut ready = Vec::new();
        for (&i, v) in idx.iter().zip(verdicts) {
            match v {
                Preflight::Ready => ready.push(i),
                Preflight::NotReady(why) => {
                    self.fail(
                        i,
                        Stage::Preflight,
                        format!("{why}; not drained, left in service"),
                    );
                    self.finish(i, End::Failed);
                }
            }
        }
        if ready.is_empty() {
            return;
        }
        for &i in &ready {
            self.set(i, Step::Recheck);
        }
        let ids = self.ids(&ready);
        let c = self.call(Call::Recheck(ready));
        out.push(Effect::Status(c, ids));
        self.plan = Some(PlanStep::Recheck {
            pending: 1,
            ready: Vec::new(),
        });
    }

    pub(super) fn on_recheck(
        &mut self,
        idx: &[usize],
        r: Result<Vec<TargetStatus>>,
        out: &mut Vec<Effect>,
    ) {
        match &mut self.plan {
            Some(PlanStep::Recheck { pending, .. }) => *pending -= 1,
            _ => {
                debug_assert!(false, "recheck reply without a recheck step");
                return;
            }
        }
        let mut ok = Vec::new();
        match r {
            Err(Error::NotFound { .. }) if idx.len() > 1 => {
                // Which one is gone? Ask for each alone.
                if let Some(PlanStep::Recheck { pending, .. }) = &mut self.plan {
                    *pending += idx.len();
                }
                for &i in idx {
                    let ids = self.ids(&[i]);
                    let c = self.call(Call::Recheck(vec![i]));
                    out.push(Effect::Status(c, ids));
                }
                return;
            }
            Err(e @ Error::NotFound { .. }) => {
                let i = idx[0];
                self.slots[i].location = Location::Gone;
                self.finish(
                    i,
                    End::Vanished(
                        Stage::Preflight,
                        format!("removed from the pool before its drain: {e}"),
                    ),
                );
            }
            Err(Error::Cancelled { .. }) => self.requeue(idx),
            Err(e) => {
                self.requeue(idx);
                self.stop_balancer("status", &e);
            }
            Ok(st) if st.len() != idx.len() => {
                self.requeue(idx);
                self.stop_balancer(
                    "status",
                    &Error::protocol(
                        "balancer",
                        format!(
                            "status returned {} entries for {} targets",
                            st.len(),
                            idx.len()
                        ),
                    ),
                );
            }
            Ok(st) => {
                for (&i, s) in idx.iter().zip(st) {
                    if s.state == TargetState::InService {
                        ok.push(i);
                    } else {
                        self.found_out(i);
                        self.finish(
                            i,
                            End::Skipped(format!(
                                "{:?} right before its drain (someone else took it out); left as found",
                                s.state
                            )),
                        );
                    }
                }
            }
        }
        let Some(PlanStep::Recheck { pending, ready }) = &mut self.plan else {
            return;
        };
        ready.extend(ok);
        if *pending > 0 {
            return;
        }
        let ready = std::mem::take(ready);
        self.plan = None;
        if ready.is_empty() {
            return;
        }
        if self.cancelled || self.stop.is_some() || !self.lease_allows() {
            // Nothing new starts once the run stops (or while the lease
            // has too little time left for it): never drained.
            return self.requeue(&ready);
        }
        self.send_drain(ready, out);
    }
}
