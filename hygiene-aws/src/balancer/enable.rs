//! `enable`: registering again exactly what this process deregistered, and
//! never a registration still `draining` (ELBv2 would put it back to
//! `healthy` on a health check made before the maintenance). Such a
//! registration is waited for, bounded by the enable wait, and registered
//! as soon as ELBv2 says `unused`; past the wait, the first `status` that
//! sees it `unused` registers it, and until then every status says
//! `Draining` with the reason (never "in service" while deregistered).

use std::collections::BTreeMap;

use hygiene_core::{Error, LoadBalancer, Result, TargetId, TargetState};
use tokio::time::Instant;
use tracing::{debug, info};

use super::{member_names, Elbv2Balancer, Registration};

impl Elbv2Balancer {
    /// The whole of [`LoadBalancer::enable`].
    pub(super) async fn enable_targets(&self, ids: &[TargetId]) -> Result<()> {
        // NotFound for a target the pool does not know.
        let regs = self.registrations(ids).await?;
        {
            let mut m = self.memory()?;
            for (id, rs) in ids.iter().zip(&regs) {
                if rs.is_empty() {
                    m.bare_out.remove(id);
                }
            }
        }
        let groups = self.groups().await?;
        let wanted: Vec<Vec<Registration>> = {
            let m = self.memory()?;
            ids.iter()
                .map(|id| {
                    m.taken_out
                        .get(id)
                        .into_iter()
                        .flatten()
                        .filter(|r| groups.get(r.group).is_some_and(|g| self.managed(g)))
                        .cloned()
                        .collect()
                })
                .collect()
        };
        let mut refused = Vec::new();
        for (gi, members) in Self::by_group(ids, &wanted) {
            let Some(g) = groups.get(gi) else { continue };
            // Look first: a registration still draining would come back
            // healthy at once, on a health check made before the
            // maintenance (ansible/ansible#44149). Register it later.
            let descs = members.iter().map(|(id, r)| r.describe(id)).collect();
            let rows = match self.describe(g, Some(descs)).await {
                Ok(rows) => rows,
                Err(e @ Error::NotFound { .. }) => {
                    refused.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (later, now): (Vec<_>, Vec<_>) = members.into_iter().partition(|(id, r)| {
                rows.iter()
                    .any(|row| r.matches(row, id) && row.obs.state == TargetState::Draining)
            });
            if !later.is_empty() {
                info!(target_group = %g.name, targets = %member_names(&later), "still draining: registering again once unused");
                let mut m = self.memory()?;
                for (id, r) in later {
                    let v = m.deferred.entry(id).or_default();
                    if !v.contains(&r) {
                        v.push(r);
                    }
                }
            }
            refused.extend(self.register(g, &now).await?);
        }
        refused.extend(self.await_deferred(ids).await?);
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Error::NotFound {
                kind: "target",
                name: refused.join("; "),
                location: Some(format!(
                    "elbv2 RegisterTargets ({}): the other targets were registered",
                    self.name()
                )),
            })
        }
    }

    /// The deferred registrations of `ids`, by target group.
    fn deferred_of(
        &self,
        ids: &[TargetId],
    ) -> Result<BTreeMap<usize, Vec<(TargetId, Registration)>>> {
        let m = self.memory()?;
        let mut out: BTreeMap<usize, Vec<(TargetId, Registration)>> = BTreeMap::new();
        for id in ids {
            for r in m.deferred.get(id).into_iter().flatten() {
                out.entry(r.group)
                    .or_default()
                    .push((id.clone(), r.clone()));
            }
        }
        Ok(out)
    }

    /// Polls the deferred registrations of `ids` (one `DescribeTargetHealth`
    /// per group and poll) for up to the enable wait, registering each as
    /// soon as ELBv2 says it is no longer draining. Returns what
    /// RegisterTargets refused. What is still draining at the end stays
    /// deferred: `status` registers it once unused.
    async fn await_deferred(&self, ids: &[TargetId]) -> Result<Vec<String>> {
        let until = Instant::now() + self.inner.enable_wait;
        let mut refused = Vec::new();
        // Asked once: a registration RegisterTargets refused is not sent again.
        let mut sent: Vec<(TargetId, Registration)> = Vec::new();
        loop {
            let mut pending = self.deferred_of(ids)?;
            for members in pending.values_mut() {
                members.retain(|m| !sent.contains(m));
            }
            pending.retain(|_, m| !m.is_empty());
            if pending.is_empty() {
                return Ok(refused);
            }
            let now = Instant::now();
            if now >= until {
                let names: Vec<String> = pending.values().map(|m| member_names(m)).collect();
                info!(targets = %names.join(", "), waited_ms = self.inner.enable_wait.as_millis() as u64, "still draining after the enable wait: the next status registers them once unused");
                return Ok(refused);
            }
            tokio::time::sleep(self.default_poll_interval().min(until - now)).await;
            let groups = self.groups().await?;
            for (gi, members) in pending {
                let Some(g) = groups.get(gi) else { continue };
                let descs = members.iter().map(|(id, r)| r.describe(id)).collect();
                let rows = self.describe(g, Some(descs)).await?;
                let mut ready = Vec::new();
                for (id, r) in members {
                    let row = rows.iter().find(|row| r.matches(row, &id));
                    match row.map(|row| (row.obs.state, row.obs.registered)) {
                        Some((TargetState::Draining, _)) => {
                            debug!(target_group = %g.name, target.id = %id, "still draining");
                        }
                        Some((_, true)) => {
                            // Registered by someone else meanwhile.
                            self.registered(&[(id, r)])?;
                        }
                        _ => ready.push((id, r)),
                    }
                }
                if !ready.is_empty() {
                    info!(target_group = %g.name, targets = %member_names(&ready), "deregistration ended: registering again");
                    refused.extend(self.register(g, &ready).await?);
                    sent.extend(ready);
                }
            }
        }
    }
}
