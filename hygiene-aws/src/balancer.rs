//! [`Elbv2Balancer`]: a pool of ELBv2 target groups as a [`LoadBalancer`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetGroup, TargetTypeEnum};
use aws_sdk_elasticloadbalancingv2::Client;
use hygiene_core::{
    Capabilities, Error, ListedTarget, LoadBalancer, Result, Target, TargetId, TargetState,
    TargetStatus,
};
use tokio::sync::OnceCell;
use tracing::{debug, info};

use crate::error::{call, Subject};
use crate::health::{combine, observe, Observation};

/// What the pool is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pool {
    /// These target groups.
    TargetGroups(Vec<String>),
    /// Every target group of this load balancer.
    LoadBalancer(String),
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TargetGroups(arns) => write!(f, "target groups {}", arns.join(", ")),
            Self::LoadBalancer(arn) => write!(f, "load balancer {arn}"),
        }
    }
}

/// A target group of the pool.
#[derive(Debug, Clone)]
struct Group {
    arn: String,
    name: String,
    ip: bool,
}

/// One registration of a target: in which group, on which port, in which
/// Availability Zone (IP targets). Deregistration and registration use
/// exactly these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Registration {
    group: usize,
    port: Option<i32>,
    zone: Option<String>,
}

impl Registration {
    fn describe(&self, id: &TargetId) -> TargetDescription {
        TargetDescription::builder()
            .id(id.as_str())
            .set_port(self.port)
            .set_availability_zone(self.zone.clone())
            .build()
    }
}

/// An ELBv2 pool (target groups, or all target groups of a load balancer)
/// as a [`LoadBalancer`].
///
/// - **Identity.** A target's id is its ELBv2 target id: the instance id
///   (`i-0abc…`) for instance target groups, the IP address for IP target
///   groups. An instance in several target groups of the pool (or on
///   several ports of one) is one target: it is drained from every
///   registration and is in service only when in service in all of them,
///   healthy only when healthy in all of them.
/// - **drain** verifies with one `DescribeTargetHealth` per group that each
///   target really is registered (ELBv2's `DeregisterTargets` succeeds
///   silently for a wrong id or port), then deregisters each registration
///   with its exact port (and Availability Zone for IP targets), and asks
///   once more per group that none of them is still in service.
///   Deregistered targets are drained once `unused` in every group, i.e.
///   after the target group's deregistration delay.
/// - **enable** registers the same registrations again (same port, same
///   zone). ELBv2 starts a re-registered target in `initial`, so a
///   `Healthy` after enable always comes from a new health check.
/// - **Memory.** After deregistration ELBv2 only shows a target when asked
///   for it by id and port, so the balancer remembers every registration it
///   has seen (in this process). A target drained by another process is
///   `NotFound` here unless it is still registered somewhere in the pool.
/// - **status** makes one `DescribeTargetHealth` per target group that holds
///   any of the ids, whatever their number.
/// - `connections` is always `None` (ELBv2 does not count in-flight
///   requests): a target is drained only once ELBv2 says `unused`.
/// - `disable` is [`Error::NotSupported`]: ELBv2 has no hard disable.
///
/// Build it with [`Elbv2Balancer::from_env`] or [`Elbv2Balancer::builder`].
#[derive(Clone)]
pub struct Elbv2Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    pool: Pool,
    poll_interval: Option<Duration>,
    groups: OnceCell<Vec<Group>>,
    known: Mutex<HashMap<TargetId, Vec<Registration>>>,
    reasons: Mutex<HashMap<TargetId, String>>,
}

impl fmt::Debug for Elbv2Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Elbv2Balancer")
            .field("pool", &self.inner.pool)
            .finish_non_exhaustive()
    }
}

/// Ids ELBv2 accepts: instance ids, IPv4 and IPv6 addresses.
fn check_id(id: &TargetId) -> Result<()> {
    if id
        .as_str()
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'))
    {
        Ok(())
    } else {
        Err(Error::invalid_name(
            id.as_str(),
            "an ELBv2 target id is an instance id (i-0abc…) or an IP address",
        ))
    }
}

impl Elbv2Balancer {
    pub(crate) fn new(client: Client, pool: Pool, poll_interval: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                pool,
                poll_interval,
                groups: OnceCell::new(),
                known: Mutex::new(HashMap::new()),
                reasons: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The last reason ELBv2 gave for a target not being healthy (reason
    /// code and description, per target group), from the latest status.
    /// `None` once the target is healthy everywhere.
    pub fn health_reason(&self, id: &TargetId) -> Option<String> {
        self.inner
            .reasons
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned())
    }

    /// The target group ARNs of the pool (resolved from the load balancer
    /// when the pool was given as one).
    ///
    /// # Errors
    /// As [`LoadBalancer::list`].
    pub async fn target_group_arns(&self) -> Result<Vec<String>> {
        Ok(self.groups().await?.iter().map(|g| g.arn.clone()).collect())
    }

    fn client(&self) -> &Client {
        &self.inner.client
    }

    async fn groups(&self) -> Result<&Vec<Group>> {
        self.inner.groups.get_or_try_init(|| self.resolve()).await
    }

    /// DescribeTargetGroups, by ARN or by load balancer.
    async fn resolve(&self) -> Result<Vec<Group>> {
        let mut found: Vec<TargetGroup> = Vec::new();
        match &self.inner.pool {
            Pool::TargetGroups(arns) => {
                for chunk in arns.chunks(20) {
                    let out = call(
                        "elbv2",
                        "DescribeTargetGroups",
                        || Subject::groups(chunk.join(", ")),
                        self.client()
                            .describe_target_groups()
                            .set_target_group_arns(Some(chunk.to_vec()))
                            .send(),
                    )
                    .await?;
                    found.extend(out.target_groups().iter().cloned());
                }
            }
            Pool::LoadBalancer(arn) => {
                let mut marker = None;
                loop {
                    let out = call(
                        "elbv2",
                        "DescribeTargetGroups",
                        || Subject::groups(arn.clone()),
                        self.client()
                            .describe_target_groups()
                            .load_balancer_arn(arn)
                            .set_marker(marker)
                            .send(),
                    )
                    .await?;
                    found.extend(out.target_groups().iter().cloned());
                    marker = out.next_marker().map(str::to_owned);
                    if marker.is_none() {
                        break;
                    }
                }
                if found.is_empty() {
                    return Err(Error::invalid_config(
                        "pool",
                        format!("load balancer {arn} has no target groups"),
                    ));
                }
            }
        }
        let mut groups = Vec::new();
        for tg in found {
            let arn = tg.target_group_arn().unwrap_or_default().to_owned();
            let name = tg.target_group_name().unwrap_or(&arn).to_owned();
            let ip = match tg.target_type() {
                None | Some(TargetTypeEnum::Instance) => false,
                Some(TargetTypeEnum::Ip) => true,
                Some(other) => {
                    return Err(Error::NotSupported {
                        operation: "rolling maintenance",
                        backend: format!("elbv2 target group {name}"),
                        hint: format!("target type {} has no hosts to patch; only instance and ip target groups are supported", other.as_str()),
                    })
                }
            };
            groups.push(Group { arn, name, ip });
        }
        debug!(groups = groups.len(), pool = %self.inner.pool, "resolved target groups");
        Ok(groups)
    }

    /// One DescribeTargetHealth of `group`: all registered targets when
    /// `targets` is `None`, else exactly those.
    async fn describe(
        &self,
        group: &Group,
        targets: Option<Vec<TargetDescription>>,
    ) -> Result<Vec<(TargetId, Option<i32>, Option<String>, Observation)>> {
        // The targets asked about, to name them in a NotFound (InvalidTarget:
        // a terminated instance, say).
        let asked = targets
            .iter()
            .flatten()
            .filter_map(TargetDescription::id)
            .collect::<Vec<_>>()
            .join(", ");
        let out = call(
            "elbv2",
            "DescribeTargetHealth",
            || Subject::groups(group.arn.clone()).with_targets(asked),
            self.client()
                .describe_target_health()
                .target_group_arn(&group.arn)
                .set_targets(targets)
                .send(),
        )
        .await?;
        let mut rows = Vec::new();
        for d in out.target_health_descriptions() {
            let Some(t) = d.target() else { continue };
            let Some(id) = t.id() else { continue };
            let id = TargetId::new(id)?;
            rows.push((
                id,
                t.port(),
                t.availability_zone().map(str::to_owned),
                observe(d.target_health()),
            ));
        }
        Ok(rows)
    }

    /// Lists every group in full (one call each), learns the registrations,
    /// and returns what each group says per registration.
    async fn refresh(&self) -> Result<HashMap<TargetId, Vec<(Registration, Observation)>>> {
        let groups = self.groups().await?;
        let mut seen: HashMap<TargetId, Vec<(Registration, Observation)>> = HashMap::new();
        for (gi, g) in groups.iter().enumerate() {
            for (id, port, zone, obs) in self.describe(g, None).await? {
                let zone = if g.ip { zone } else { None };
                seen.entry(id).or_default().push((
                    Registration {
                        group: gi,
                        port,
                        zone,
                    },
                    obs,
                ));
            }
        }
        let mut known = self.known()?;
        for (id, regs) in &seen {
            let entry = known.entry(id.clone()).or_default();
            for (r, _) in regs {
                if !entry.contains(r) {
                    entry.push(r.clone());
                }
            }
            entry.sort();
        }
        Ok(seen)
    }

    fn known(&self) -> Result<std::sync::MutexGuard<'_, HashMap<TargetId, Vec<Registration>>>> {
        self.inner
            .known
            .lock()
            .map_err(|_| Error::protocol(self.name(), "registration memory poisoned"))
    }

    /// The remembered registrations of each id, refreshing once if any is
    /// unknown; `NotFound` (naming the id) for one still unknown.
    async fn registrations(&self, ids: &[TargetId]) -> Result<Vec<Vec<Registration>>> {
        for id in ids {
            check_id(id)?;
        }
        let missing = {
            let known = self.known()?;
            ids.iter().any(|id| !known.contains_key(id))
        };
        if missing {
            self.refresh().await?;
        }
        let known = self.known()?;
        ids.iter()
            .map(|id| {
                known
                    .get(id)
                    .cloned()
                    .ok_or_else(|| Error::target_not_found(id.as_str(), Some(self.name())))
            })
            .collect()
    }

    /// Registrations of `ids` grouped by target group index.
    fn by_group(
        ids: &[TargetId],
        regs: &[Vec<Registration>],
    ) -> BTreeMap<usize, Vec<(TargetId, Registration)>> {
        let mut m: BTreeMap<usize, Vec<(TargetId, Registration)>> = BTreeMap::new();
        for (id, rs) in ids.iter().zip(regs) {
            for r in rs {
                m.entry(r.group).or_default().push((id.clone(), r.clone()));
            }
        }
        m
    }

    fn listed_target(&self, id: &TargetId, regs: &[Registration], groups: &[Group]) -> Target {
        let mut t = Target::new(id.clone());
        let first = regs.first();
        if let Some(port) = first
            .and_then(|r| r.port)
            .and_then(|p| u16::try_from(p).ok())
        {
            t = t.with_port(port);
        }
        let ip = first.is_some_and(|r| groups.get(r.group).is_some_and(|g| g.ip));
        if ip {
            t = t.with_address(id.as_str());
            if let Some(z) = first.and_then(|r| r.zone.clone()) {
                t = t.with_zone(z);
            }
        } else {
            t = t.with_instance_id(id.as_str());
        }
        let where_ = regs
            .iter()
            .filter_map(|r| {
                groups.get(r.group).map(|g| {
                    format!(
                        "{}:{}",
                        g.name,
                        r.port.map(|p| p.to_string()).unwrap_or_default()
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(",");
        t.with_meta("target_groups", where_)
    }

    fn remember_reasons(
        &self,
        id: &TargetId,
        regs: &[Registration],
        obs: &[Observation],
        groups: &[Group],
    ) -> Option<String> {
        let why: Vec<String> = regs
            .iter()
            .zip(obs)
            .filter(|(_, o)| o.health != hygiene_core::Health::Healthy)
            .filter_map(|(r, o)| {
                let g = groups.get(r.group)?;
                o.reason.as_ref().map(|reason| {
                    format!("{} port {}: {reason}", g.name, r.port.unwrap_or_default())
                })
            })
            .collect();
        let text = (!why.is_empty()).then(|| why.join("; "));
        if let Ok(mut m) = self.inner.reasons.lock() {
            match &text {
                None => {
                    m.remove(id);
                }
                Some(text) => {
                    debug!(target.id = %id, reason = %text, "elbv2 health reason");
                    m.insert(id.clone(), text.clone());
                }
            }
        }
        text
    }
}

/// A jittered interval around `base` (±20 %), so that several rollouts
/// against one account do not poll in lock step.
fn jittered(base: Duration) -> Duration {
    let r = RandomState::new().hash_one(std::time::SystemTime::now());
    let spread = base.as_millis() as u64 / 5;
    if spread == 0 {
        return base;
    }
    let offset = r % (2 * spread + 1);
    base.saturating_sub(Duration::from_millis(spread)) + Duration::from_millis(offset)
}

/// ELBv2's words for a target's health travel with its status.
fn with_reason(status: TargetStatus, why: Option<String>) -> TargetStatus {
    match why {
        Some(why) => status.with_reason(why),
        None => status,
    }
}

#[async_trait]
impl LoadBalancer for Elbv2Balancer {
    fn name(&self) -> String {
        format!("elbv2 {}", self.inner.pool)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_graceful_drain(true)
            .with_health_checks(true)
    }

    /// 5 s ± 20 % unless the builder set one: DescribeTargetHealth is
    /// throttled per account, and ELBv2 health checks run every 5–300 s.
    fn default_poll_interval(&self) -> Duration {
        self.inner
            .poll_interval
            .unwrap_or_else(|| jittered(Duration::from_secs(5)))
    }

    fn enable_hint(&self, id: &TargetId) -> String {
        let regs = self
            .known()
            .ok()
            .and_then(|k| k.get(id).cloned())
            .unwrap_or_default();
        let groups = self.inner.groups.get().cloned().unwrap_or_default();
        let cmds: Vec<String> = regs
            .iter()
            .filter_map(|r| {
                let g = groups.get(r.group)?;
                let mut t = format!("Id={id}");
                if let Some(p) = r.port {
                    t.push_str(&format!(",Port={p}"));
                }
                if let Some(z) = &r.zone {
                    t.push_str(&format!(",AvailabilityZone={z}"));
                }
                Some(format!(
                    "aws elbv2 register-targets --target-group-arn {} --targets {t}",
                    g.arn
                ))
            })
            .collect();
        if cmds.is_empty() {
            format!("aws elbv2 register-targets --target-group-arn <target group of {id}> --targets Id={id},Port=<its port>")
        } else {
            cmds.join(" && ")
        }
    }

    async fn list(&self) -> Result<Vec<ListedTarget>> {
        let seen = self.refresh().await?;
        let groups = self.groups().await?;
        let known = self.known()?.clone();
        let mut out = Vec::new();
        let mut ids: Vec<&TargetId> = known.keys().collect();
        ids.sort();
        for id in ids {
            let regs = &known[id];
            let current = seen.get(id);
            // Absent from a full listing means not registered (draining
            // targets are still listed).
            let obs: Vec<Observation> = regs
                .iter()
                .map(|r| {
                    current
                        .and_then(|c| c.iter().find(|(cr, _)| cr == r).map(|(_, o)| o.clone()))
                        .unwrap_or_else(Observation::not_registered)
                })
                .collect();
            let why = self.remember_reasons(id, regs, &obs, groups);
            out.push(ListedTarget {
                target: self.listed_target(id, regs, groups),
                status: with_reason(combine(&obs), why),
            });
        }
        Ok(out)
    }

    async fn status(&self, ids: &[TargetId]) -> Result<Vec<TargetStatus>> {
        let regs = self.registrations(ids).await?;
        let groups = self.groups().await?;
        let mut obs: HashMap<(TargetId, Registration), Observation> = HashMap::new();
        for (gi, members) in Self::by_group(ids, &regs) {
            let Some(g) = groups.get(gi) else { continue };
            let descs = members.iter().map(|(id, r)| r.describe(id)).collect();
            for (id, port, _zone, o) in self.describe(g, Some(descs)).await? {
                if let Some((mid, r)) = members.iter().find(|(mid, r)| *mid == id && r.port == port)
                {
                    obs.insert((mid.clone(), r.clone()), o);
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for (id, rs) in ids.iter().zip(&regs) {
            let o: Vec<Observation> = rs
                .iter()
                .map(|r| {
                    obs.get(&(id.clone(), r.clone()))
                        .cloned()
                        .unwrap_or_else(Observation::not_registered)
                })
                .collect();
            let why = self.remember_reasons(id, rs, &o, groups);
            out.push(with_reason(combine(&o), why));
        }
        Ok(out)
    }

    async fn drain(&self, ids: &[TargetId]) -> Result<()> {
        for id in ids {
            check_id(id)?;
        }
        // Verify registration first: DeregisterTargets does not complain
        // about a wrong id or port.
        let current = self.refresh().await?;
        let regs = self.registrations(ids).await?;
        let groups = self.groups().await?;
        for (gi, members) in Self::by_group(ids, &regs) {
            let Some(g) = groups.get(gi) else { continue };
            let still: Vec<TargetDescription> = members
                .iter()
                .filter(|(id, r)| {
                    current
                        .get(id)
                        .is_some_and(|c| c.iter().any(|(cr, o)| cr == r && o.registered))
                })
                .map(|(id, r)| r.describe(id))
                .collect();
            if still.is_empty() {
                continue;
            }
            info!(target_group = %g.name, targets = still.len(), "deregistering targets");
            call(
                "elbv2",
                "DeregisterTargets",
                || Subject::groups(g.arn.clone()).with_targets(member_names(&members)),
                self.client()
                    .deregister_targets()
                    .target_group_arn(&g.arn)
                    .set_targets(Some(still.clone()))
                    .send(),
            )
            .await?;
            // Verify after: a registration still in service means the call
            // silently did nothing for it.
            let after = self.describe(g, Some(still)).await?;
            let ignored: Vec<String> = after
                .iter()
                .filter(|(_, _, _, o)| o.registered && o.state == TargetState::InService)
                .map(|(id, port, _, _)| format!("{id}:{}", port.unwrap_or_default()))
                .collect();
            if !ignored.is_empty() {
                return Err(Error::rejected(
                    format!("elbv2 DeregisterTargets on {}", g.name),
                    format!(
                        "still registered and in service after deregistration: {}",
                        ignored.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn disable(&self, _ids: &[TargetId]) -> Result<()> {
        Err(Error::NotSupported {
            operation: "disable",
            backend: self.name(),
            hint: "ELBv2 has no hard disable: drain (DeregisterTargets) instead, with a short deregistration delay on the target group if connections must end sooner".into(),
        })
    }

    /// Remembers each target's registrations as an earlier process listed
    /// them (`meta["target_groups"]` = `name:port,…`, and the zone), unless
    /// this process already knows the target: after a crash, a target the
    /// dead run deregistered is registered again exactly as it was.
    async fn adopt(&self, targets: &[Target]) -> Result<()> {
        let groups = self.groups().await?;
        let mut known = self.known()?;
        for t in targets {
            check_id(&t.id)?;
            if known.contains_key(&t.id) {
                continue;
            }
            let Some(list) = t.meta.get("target_groups") else {
                continue;
            };
            let mut regs = Vec::new();
            for entry in list.split(',').filter(|e| !e.is_empty()) {
                let (name, port) = entry.rsplit_once(':').unwrap_or((entry, ""));
                let Some(group) = groups.iter().position(|g| g.name == name) else {
                    return Err(Error::invalid_config(
                        "journal",
                        format!("target {} was registered in target group {name:?}, which this balancer does not manage: resume with the same load balancer or target groups", t.id),
                    ));
                };
                regs.push(Registration {
                    group,
                    port: port.parse().ok(),
                    zone: t.zone.clone(),
                });
            }
            if !regs.is_empty() {
                debug!(target.id = %t.id, registrations = regs.len(), "adopted from the journal");
                known.insert(t.id.clone(), regs);
            }
        }
        Ok(())
    }

    async fn enable(&self, ids: &[TargetId]) -> Result<()> {
        let regs = self.registrations(ids).await?;
        let groups = self.groups().await?;
        for (gi, members) in Self::by_group(ids, &regs) {
            let Some(g) = groups.get(gi) else { continue };
            let descs: Vec<TargetDescription> =
                members.iter().map(|(id, r)| r.describe(id)).collect();
            info!(target_group = %g.name, targets = descs.len(), "registering targets");
            call(
                "elbv2",
                "RegisterTargets",
                || Subject::groups(g.arn.clone()).with_targets(member_names(&members)),
                self.client()
                    .register_targets()
                    .target_group_arn(&g.arn)
                    .set_targets(Some(descs))
                    .send(),
            )
            .await?;
        }
        Ok(())
    }
}

/// The ids of a group's members, for error messages.
fn member_names(members: &[(TargetId, Registration)]) -> String {
    members
        .iter()
        .map(|(id, _)| id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(5));
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
                "{d:?}"
            );
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id(&TargetId::new("i-0abc").expect("id")).is_ok());
        assert!(check_id(&TargetId::new("10.0.0.1").expect("id")).is_ok());
        assert!(check_id(&TargetId::new("fe80::1").expect("id")).is_ok());
        assert!(check_id(&TargetId::new("web/s1").expect("id")).is_err());
    }
}
