//! [`Elbv2Balancer`]: a pool of ELBv2 target groups as a [`LoadBalancer`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetGroup};
use aws_sdk_elasticloadbalancingv2::Client;
use hygiene_core::{
    Capabilities, Error, Health, ListedTarget, LoadBalancer, Result, Target, TargetId, TargetState,
    TargetStatus,
};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::attributes::DeregistrationDelay;
use crate::discovery::{self, Discovery, InstanceSelector};
use crate::error::{call, code_of, map_sdk, Subject};
use crate::health::{combine, observe, Observation};
use crate::pacing::TokenBucket;

mod enable;
mod resolve;

/// How long `enable` waits by default for a registration still draining
/// to end before leaving it to `status` (below the engine's default
/// `call_timeout` of 30 s, which bounds the whole call).
pub(crate) const DEFAULT_ENABLE_WAIT: Duration = Duration::from_secs(20);

/// What the pool is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pool {
    /// These target groups.
    TargetGroups(Vec<String>),
    /// Every target group of this load balancer.
    LoadBalancer(String),
    /// These instances, in every target group of the Region that holds
    /// any of them.
    Instances(InstanceSelector),
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TargetGroups(arns) => write!(f, "target groups {}", arns.join(", ")),
            Self::LoadBalancer(arn) => write!(f, "load balancer {arn}"),
            Self::Instances(sel) => write!(f, "{sel}"),
        }
    }
}

/// What to do about target groups outside the pool that hold one of the
/// pool's hosts (the same instance, or the same IP address).
///
/// The maintenance takes the whole host down: a host still registered in
/// a target group outside the pool keeps getting requests there while it
/// is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OtherTargetGroups {
    /// Do not look for them (no account-wide `DescribeTargetGroups`, no
    /// `DescribeTargetHealth` of groups outside the pool).
    Ignore,
    /// Find them when listing: `list` names them in the target's
    /// `meta["other_target_groups"]` (`name:port,…`) and logs a warning.
    /// They are not drained (the default).
    #[default]
    Report,
    /// Find them and treat them as part of the host: the host is drained
    /// from every target group that holds it, registered again exactly as
    /// it was, and healthy only once healthy in all of them.
    Drain,
}

/// A target group the balancer knows: one of the pool, or (when looking
/// for other registrations of the pool's hosts) one outside it.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) arn: String,
    pub(crate) name: String,
    ip: bool,
    /// Part of the configured pool (not found outside it).
    pub(crate) in_pool: bool,
    /// Names of the load balancers the group is attached to.
    pub(crate) load_balancers: Vec<String>,
}

/// One registration of a target: in which group, on which port, in which
/// Availability Zone (IP targets). Deregistration and registration use
/// exactly these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Registration {
    group: usize,
    port: Option<i32>,
    zone: Option<String>,
    /// The id this registration has in its group when it is not the
    /// target's own: the private IP address of an instance registered in
    /// an `ip` target group (instance pools).
    address: Option<String>,
}

impl Registration {
    /// Whether a DescribeTargetHealth row is about this registration of `id`.
    fn matches(&self, row: &Row, id: &TargetId) -> bool {
        row.id.as_str() == self.target_id(id) && row.port == self.port
    }

    /// The id ELBv2 knows this registration by.
    fn target_id<'a>(&'a self, id: &'a TargetId) -> &'a str {
        self.address.as_deref().unwrap_or(id.as_str())
    }

    fn describe(&self, id: &TargetId) -> TargetDescription {
        TargetDescription::builder()
            .id(self.target_id(id))
            .set_port(self.port)
            .set_availability_zone(self.zone.clone())
            .build()
    }
}

/// One row of a DescribeTargetHealth answer.
struct Row {
    id: TargetId,
    port: Option<i32>,
    zone: Option<String>,
    obs: Observation,
}

/// What the balancer remembers between calls (in this process).
#[derive(Debug, Default)]
struct Memory {
    /// Registrations per target as of the latest full listing of each
    /// group, plus those this process took out.
    known: HashMap<TargetId, Vec<Registration>>,
    /// Registrations this process deregistered and has not registered
    /// again: the only ones `enable` registers.
    taken_out: HashMap<TargetId, Vec<Registration>>,
    /// Registrations `enable` found still `draining`: registered once
    /// ELBv2 says `unused` (see `status`).
    deferred: HashMap<TargetId, Vec<Registration>>,
    /// The last reason ELBv2 gave per target.
    reasons: HashMap<TargetId, String>,
    /// Selected instances in no target group that a drain took "out":
    /// nothing was deregistered, they read out of service until enabled.
    bare_out: HashSet<TargetId>,
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
/// - **Hosts outside the pool.** By default `list` also looks for the
///   pool's hosts in the account's other target groups and names them
///   ([`OtherTargetGroups`]); with [`OtherTargetGroups::Drain`] those
///   registrations are part of the target too.
/// - **drain** verifies with one `DescribeTargetHealth` per group that each
///   target really is registered (ELBv2's `DeregisterTargets` succeeds
///   silently for a wrong id or port), then deregisters each registration
///   with its exact port (and Availability Zone for IP targets), and asks
///   once more per group that none of them is still in service.
///   Deregistered targets are drained once `unused` in every group, i.e.
///   after the target group's deregistration delay.
/// - **enable** registers again exactly the registrations this process
///   deregistered (same port, same zone), nothing it merely saw. A
///   registration still `draining` is not registered at once: ELBv2 would
///   put it back to `healthy` without a new health check (seen in the
///   field: ansible/ansible#44149). `enable` waits for it (up to
///   [`with_enable_wait`](crate::Elbv2BalancerBuilder::with_enable_wait))
///   and registers it once `unused`; past the wait, the first `status`
///   that sees it `unused` registers it, and it reads `Draining` /
///   `Unknown` until then. A `Healthy` after enable always comes from a
///   new health check.
/// - **Instances in `ip` target groups** (instance pools): an `ip` target
///   whose address is a selected instance's private address is that
///   instance, drained and registered again by that address.
/// - **A terminated instance** in a batch fails alone: ELBv2 refuses a
///   whole `DescribeTargetHealth` or `RegisterTargets` for it
///   (`InvalidTarget`); the others are asked again without it. In a
///   status it reads out of service and unhealthy with ELBv2's words; an
///   enable returns `NotFound` naming only it, after registering the rest.
/// - **Memory.** After deregistration ELBv2 only shows a target when asked
///   for it by id and port, so the balancer remembers the registrations it
///   saw at the latest listing and those it took out (in this process;
///   [`adopt`](LoadBalancer::adopt) restores them after a crash).
/// - **status** makes one `DescribeTargetHealth` per target group that holds
///   any of the ids, whatever their number.
/// - **Pacing.** Every `Describe*` call takes a token from a client-side
///   bucket shaped like ELB's own (burst 20, 5 a second by default: half of
///   the account's `Describe*` bucket), so a pool of many target groups
///   slows down instead of being throttled.
/// - `connections` is always `None` (ELBv2 does not count in-flight
///   requests): a target is drained only once ELBv2 says `unused`.
/// - `disable` is [`Error::NotSupported`]: ELBv2 has no hard disable.
///
/// Build it with [`Elbv2Balancer::from_env`] or [`Elbv2Balancer::builder`].
#[derive(Clone)]
pub struct Elbv2Balancer {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    client: Client,
    pool: Pool,
    poll_interval: Option<Duration>,
    enable_wait: Duration,
    others: OtherTargetGroups,
    bucket: TokenBucket,
    groups: OnceCell<Vec<Group>>,
    ec2: Option<aws_sdk_ec2::Client>,
    autoscaling: Option<aws_sdk_autoscaling::Client>,
    /// What discovery from instances found (instance pools only).
    discovery: std::sync::OnceLock<Discovery>,
    /// The selected instances by private address, to match `ip` targets
    /// (instance pools only).
    owners: std::sync::OnceLock<HashMap<String, TargetId>>,
    pub(crate) delays: OnceCell<Vec<DeregistrationDelay>>,
    memory: Mutex<Memory>,
}

impl fmt::Debug for Elbv2Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Elbv2Balancer")
            .field("pool", &self.inner.pool)
            .field("other_target_groups", &self.inner.others)
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

/// The settings [`Elbv2Balancer::new`] takes.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) pool: Pool,
    pub(crate) poll_interval: Option<Duration>,
    pub(crate) enable_wait: Duration,
    pub(crate) others: OtherTargetGroups,
    pub(crate) describe_rate: (u32, u32),
    pub(crate) ec2: Option<aws_sdk_ec2::Client>,
    pub(crate) autoscaling: Option<aws_sdk_autoscaling::Client>,
}

/// The ids among `asked` that an `InvalidTarget` message names (ELBv2
/// quotes them: "… cannot be registered: 'i-0b'").
fn named_in(message: &str, asked: &[TargetDescription]) -> Vec<String> {
    asked
        .iter()
        .filter_map(TargetDescription::id)
        .filter(|id| message.contains(&format!("'{id}'")) || message.contains(&format!("\"{id}\"")))
        .map(str::to_owned)
        .collect()
}

fn is_invalid_target(code: Option<&str>) -> bool {
    matches!(code, Some("InvalidTarget" | "InvalidTargetException"))
}

impl Elbv2Balancer {
    pub(crate) fn new(client: Client, settings: Settings) -> Self {
        let (burst, per_second) = settings.describe_rate;
        Self {
            inner: Arc::new(Inner {
                client,
                pool: settings.pool,
                poll_interval: settings.poll_interval,
                enable_wait: settings.enable_wait,
                others: settings.others,
                bucket: TokenBucket::new(burst, per_second),
                groups: OnceCell::new(),
                ec2: settings.ec2,
                autoscaling: settings.autoscaling,
                discovery: std::sync::OnceLock::new(),
                owners: std::sync::OnceLock::new(),
                delays: OnceCell::new(),
                memory: Mutex::new(Memory::default()),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The last reason ELBv2 gave for a target not being healthy (reason
    /// code and description, per target group), from the latest status.
    /// `None` once the target is healthy everywhere.
    pub fn health_reason(&self, id: &TargetId) -> Option<String> {
        self.inner
            .memory
            .lock()
            .ok()
            .and_then(|m| m.reasons.get(id).cloned())
    }

    /// The target group ARNs of the pool (resolved from the load balancer
    /// when the pool was given as one).
    ///
    /// # Errors
    /// As [`LoadBalancer::list`].
    pub async fn target_group_arns(&self) -> Result<Vec<String>> {
        Ok(self
            .groups()
            .await?
            .iter()
            .filter(|g| g.in_pool)
            .map(|g| g.arn.clone())
            .collect())
    }

    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Waits for a `Describe*` token.
    pub(crate) async fn paced(&self) {
        self.inner.bucket.take().await;
    }

    pub(crate) async fn groups(&self) -> Result<&Vec<Group>> {
        // Boxed: resolving is a deep future, and every call awaits it
        // (callers' futures stay small enough to lay out).
        self.inner
            .groups
            .get_or_try_init(|| Box::pin(self.resolve()))
            .await
    }

    /// Whether the registrations in `g` are part of a target.
    pub(crate) fn managed(&self, g: &Group) -> bool {
        g.in_pool || self.inner.others == OtherTargetGroups::Drain
    }

    fn memory(&self) -> Result<MutexGuard<'_, Memory>> {
        self.inner
            .memory
            .lock()
            .map_err(|_| Error::protocol(self.name(), "registration memory poisoned"))
    }

    /// What discovery from instances found and cost (running it first if
    /// needed); `None` for a pool given by target group or load balancer
    /// ARN.
    ///
    /// # Errors
    /// As [`LoadBalancer::list`].
    pub async fn discovery(&self) -> Result<Option<Discovery>> {
        self.groups().await?;
        Ok(self.inner.discovery.get().cloned())
    }

    /// The selected instances of an instance pool (after discovery).
    fn selected(&self) -> Option<&[TargetId]> {
        self.inner.discovery.get().map(|d| d.instances.as_slice())
    }

    /// The status of a selected instance in no target group: in service
    /// and healthy as far as a balancer can tell (none sends it traffic),
    /// out of service between a drain and an enable.
    fn bare_status(&self, id: &TargetId) -> TargetStatus {
        let out = self
            .inner
            .memory
            .lock()
            .is_ok_and(|m| m.bare_out.contains(id));
        let state = if out {
            TargetState::OutOfService
        } else {
            TargetState::InService
        };
        TargetStatus::new(state, Health::Healthy, None).with_reason(
            "in no target group: nothing to drain, and no balancer health check (use a probe to check it after the maintenance)",
        )
    }

    /// One DescribeTargetHealth of `group`, paced: `Ok(Err(message))` when
    /// ELBv2 refuses it for an invalid target.
    async fn describe_once(
        &self,
        group: &Group,
        targets: Option<Vec<TargetDescription>>,
    ) -> Result<std::result::Result<Vec<Row>, String>> {
        self.paced().await;
        let started = tokio::time::Instant::now();
        let asked = targets
            .iter()
            .flatten()
            .filter_map(TargetDescription::id)
            .collect::<Vec<_>>()
            .join(", ");
        let out = match self
            .client()
            .describe_target_health()
            .target_group_arn(&group.arn)
            .set_targets(targets.clone())
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if targets.is_some() && is_invalid_target(code_of(&e)) => {
                let message = e
                    .as_service_error()
                    .and_then(aws_sdk_ssm::error::ProvideErrorMetadata::message)
                    .unwrap_or("not a valid target")
                    .to_owned();
                return Ok(Err(message));
            }
            Err(e) => {
                return Err(map_sdk(
                    "elbv2",
                    "DescribeTargetHealth",
                    Subject::groups(group.arn.clone()).with_targets(asked),
                    started.elapsed(),
                    e,
                ))
            }
        };
        let mut rows = Vec::new();
        for d in out.target_health_descriptions() {
            let Some(t) = d.target() else { continue };
            let Some(id) = t.id() else { continue };
            rows.push(Row {
                id: TargetId::new(id)?,
                port: t.port(),
                zone: t.availability_zone().map(str::to_owned),
                obs: observe(d.target_health()),
            });
        }
        Ok(Ok(rows))
    }

    /// DescribeTargetHealth of `group`: all registered targets when
    /// `targets` is `None`, else exactly those. A target ELBv2 refuses
    /// (`InvalidTarget`: terminated) fails alone when others were asked
    /// with it: it gets an [`Observation::invalid`] row and the others are
    /// asked again without it. Asked alone, it is `NotFound`.
    async fn describe(
        &self,
        group: &Group,
        targets: Option<Vec<TargetDescription>>,
    ) -> Result<Vec<Row>> {
        let mut todo = vec![targets];
        let mut rows = Vec::new();
        while let Some(batch) = todo.pop() {
            let message = match self.describe_once(group, batch.clone()).await? {
                Ok(r) => {
                    rows.extend(r);
                    continue;
                }
                Err(message) => message,
            };
            let batch = batch.unwrap_or_default();
            if batch.len() <= 1 {
                let id = batch.first().and_then(TargetDescription::id).unwrap_or("?");
                return Err(Error::NotFound {
                    kind: "target",
                    name: format!("{id} ({message})"),
                    location: Some(format!("elbv2 DescribeTargetHealth on {}", group.name)),
                });
            }
            let bad = named_in(&message, &batch);
            if bad.is_empty() {
                // Not told which one: ask each alone.
                warn!(target_group = %group.name, %message, "DescribeTargetHealth refused the batch; asking for each target alone");
                for t in batch {
                    match self.describe_once(group, Some(vec![t.clone()])).await? {
                        Ok(r) => rows.extend(r),
                        Err(m) => rows.push(self.invalid_row(group, &t, &m)?),
                    }
                }
                continue;
            }
            let (gone, rest): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|t| t.id().is_some_and(|id| bad.iter().any(|b| b == id)));
            for t in &gone {
                warn!(target_group = %group.name, target.id = t.id().unwrap_or_default(), %message, "target refused by ELBv2");
                rows.push(self.invalid_row(group, t, &message)?);
            }
            if !rest.is_empty() {
                todo.push(Some(rest));
            }
        }
        Ok(rows)
    }

    fn invalid_row(&self, group: &Group, t: &TargetDescription, message: &str) -> Result<Row> {
        Ok(Row {
            id: TargetId::new(t.id().unwrap_or_default())?,
            port: t.port(),
            zone: if group.ip {
                t.availability_zone().map(str::to_owned)
            } else {
                None
            },
            obs: Observation::invalid(message),
        })
    }

    /// Lists groups in full (one call each) and learns the registrations;
    /// returns what each listed group says per registration. `everywhere`
    /// lists every group found outside the pool too (for `list`);
    /// otherwise only those that are part of targets and hold a known
    /// registration.
    async fn refresh(
        &self,
        everywhere: bool,
    ) -> Result<HashMap<TargetId, Vec<(Registration, Observation)>>> {
        let groups = self.groups().await?;
        let holding: Vec<usize> = {
            let m = self.memory()?;
            m.known.values().flatten().map(|r| r.group).collect()
        };
        let mut seen: HashMap<TargetId, Vec<(Registration, Observation)>> = HashMap::new();
        let mut listed = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            let wanted = g.in_pool || everywhere || (self.managed(g) && holding.contains(&gi));
            if !wanted {
                continue;
            }
            listed.push(gi);
            for row in self.describe(g, None).await? {
                let zone = if g.ip { row.zone } else { None };
                // In an instance pool, an ip target is the instance that
                // has its address.
                let (key, address) = match self.owner(g, &row.id) {
                    Some(o) => (o, Some(row.id.as_str().to_owned())),
                    None => (row.id, None),
                };
                seen.entry(key).or_default().push((
                    Registration {
                        group: gi,
                        port: row.port,
                        zone,
                        address,
                    },
                    row.obs,
                ));
            }
        }
        let mut m = self.memory()?;
        let Memory {
            known, taken_out, ..
        } = &mut *m;
        // A full listing is the truth for its group: forget registrations
        // it no longer shows, unless this process took them out.
        for (id, regs) in known.iter_mut() {
            let out = taken_out.get(id);
            regs.retain(|r| {
                !listed.contains(&r.group)
                    || out.is_some_and(|o| o.contains(r))
                    || seen
                        .get(id)
                        .is_some_and(|s| s.iter().any(|(sr, _)| sr == r))
            });
        }
        for (id, regs) in &seen {
            let entry = known.entry(id.clone()).or_default();
            for (r, _) in regs {
                if !entry.contains(r) {
                    entry.push(r.clone());
                }
            }
            entry.sort();
        }
        known.retain(|_, regs| !regs.is_empty());
        Ok(seen)
    }

    /// The known registrations of each id that are part of the target,
    /// refreshing once if any is unknown; `NotFound` (naming the id) for
    /// one still unknown.
    async fn registrations(&self, ids: &[TargetId]) -> Result<Vec<Vec<Registration>>> {
        for id in ids {
            check_id(id)?;
        }
        let groups = self.groups().await?;
        let part = |r: &Registration| groups.get(r.group).is_some_and(|g| self.managed(g));
        let pooled = |regs: &Vec<Registration>| {
            regs.iter()
                .any(|r| groups.get(r.group).is_some_and(|g| g.in_pool))
        };
        if let Some(selected) = self.selected() {
            // An instance pool: the selection is the pool; an instance in
            // no target group has no registration.
            let m = self.memory()?;
            return ids
                .iter()
                .map(|id| {
                    if !selected.contains(id) {
                        return Err(Error::target_not_found(id.as_str(), Some(self.name())));
                    }
                    Ok(m.known
                        .get(id)
                        .map(|r| r.iter().filter(|r| part(r)).cloned().collect())
                        .unwrap_or_default())
                })
                .collect();
        }
        let missing = {
            let m = self.memory()?;
            ids.iter().any(|id| !m.known.get(id).is_some_and(&pooled))
        };
        if missing {
            self.refresh(false).await?;
        }
        let m = self.memory()?;
        ids.iter()
            .map(|id| {
                m.known
                    .get(id)
                    .filter(|r| pooled(r))
                    .map(|r| r.iter().filter(|r| part(r)).cloned().collect())
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
        // An IP target of its own (not an instance matched by address).
        let ip =
            first.is_some_and(|r| r.address.is_none() && groups.get(r.group).is_some_and(|g| g.ip));
        if ip {
            t = t.with_address(id.as_str());
            if let Some(z) = first.and_then(|r| r.zone.clone()) {
                t = t.with_zone(z);
            }
        } else {
            t = t.with_instance_id(id.as_str());
        }
        let names = |keep: &dyn Fn(&Group) -> bool| {
            regs.iter()
                .filter_map(|r| {
                    let g = groups.get(r.group).filter(|g| keep(g))?;
                    let mut entry = format!(
                        "{}:{}",
                        g.name,
                        r.port.map(|p| p.to_string()).unwrap_or_default()
                    );
                    // An instance registered by address: `name:port@ip`
                    // (`/zone` when ELBv2 gave one), so that a resume
                    // registers exactly that again.
                    if let Some(a) = &r.address {
                        entry.push('@');
                        entry.push_str(a);
                        if let Some(z) = &r.zone {
                            entry.push('/');
                            entry.push_str(z);
                        }
                    }
                    Some(entry)
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        t = t.with_meta("target_groups", names(&|g| self.managed(g)));
        let mut lbs: Vec<&str> = regs
            .iter()
            .filter_map(|r| groups.get(r.group).filter(|g| self.managed(g)))
            .flat_map(|g| g.load_balancers.iter().map(String::as_str))
            .collect();
        lbs.sort_unstable();
        lbs.dedup();
        t = t.with_meta("load_balancers", lbs.join(","));
        let others = names(&|g| !g.in_pool);
        if !others.is_empty() {
            t = t.with_meta("other_target_groups", others);
        }
        t
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
            .filter(|(_, o)| o.health != Health::Healthy)
            .filter_map(|(r, o)| {
                let g = groups.get(r.group)?;
                o.reason.as_ref().map(|reason| {
                    format!("{} port {}: {reason}", g.name, r.port.unwrap_or_default())
                })
            })
            .collect();
        let text = (!why.is_empty()).then(|| why.join("; "));
        if let Ok(mut m) = self.inner.memory.lock() {
            match &text {
                None => {
                    m.reasons.remove(id);
                }
                Some(text) => {
                    debug!(target.id = %id, reason = %text, "elbv2 health reason");
                    m.reasons.insert(id.clone(), text.clone());
                }
            }
        }
        text
    }

    /// RegisterTargets of `members` in `g`. A target ELBv2 refuses
    /// (`InvalidTarget`) does not keep the others out: they are registered
    /// without it, and its id (with ELBv2's words) is returned.
    async fn register(
        &self,
        g: &Group,
        members: &[(TargetId, Registration)],
    ) -> Result<Vec<String>> {
        let mut refused = Vec::new();
        let mut todo = vec![members.to_vec()];
        while let Some(batch) = todo.pop() {
            if batch.is_empty() {
                continue;
            }
            let descs: Vec<TargetDescription> =
                batch.iter().map(|(id, r)| r.describe(id)).collect();
            info!(target_group = %g.name, targets = descs.len(), "registering targets");
            let started = tokio::time::Instant::now();
            match self
                .client()
                .register_targets()
                .target_group_arn(&g.arn)
                .set_targets(Some(descs.clone()))
                .send()
                .await
            {
                Ok(_) => self.registered(&batch)?,
                Err(e) if is_invalid_target(code_of(&e)) => {
                    let message = e
                        .as_service_error()
                        .and_then(aws_sdk_ssm::error::ProvideErrorMetadata::message)
                        .unwrap_or("not a valid target")
                        .to_owned();
                    if batch.len() == 1 {
                        let id = &batch[0].0;
                        warn!(target_group = %g.name, target.id = %id, %message, "RegisterTargets refused the target");
                        refused.push(format!("{id} in {} ({message})", g.name));
                        continue;
                    }
                    let bad = named_in(&message, &descs);
                    if bad.is_empty() {
                        for m in batch {
                            todo.push(vec![m]);
                        }
                    } else {
                        let (gone, rest): (Vec<_>, Vec<_>) = batch
                            .into_iter()
                            .partition(|(id, _)| bad.iter().any(|b| b == id.as_str()));
                        for (id, _) in gone {
                            warn!(target_group = %g.name, target.id = %id, %message, "RegisterTargets refused the target");
                            refused.push(format!("{id} in {} ({message})", g.name));
                        }
                        todo.push(rest);
                    }
                }
                Err(e) => {
                    return Err(map_sdk(
                        "elbv2",
                        "RegisterTargets",
                        Subject::groups(g.arn.clone()).with_targets(member_names(&batch)),
                        started.elapsed(),
                        e,
                    ))
                }
            }
        }
        Ok(refused)
    }

    /// Forgets registrations that are registered again.
    fn registered(&self, members: &[(TargetId, Registration)]) -> Result<()> {
        let mut m = self.memory()?;
        let Memory {
            taken_out,
            deferred,
            ..
        } = &mut *m;
        for (id, r) in members {
            for map in [&mut *taken_out, &mut *deferred] {
                if let Some(v) = map.get_mut(id) {
                    v.retain(|x| x != r);
                    if v.is_empty() {
                        map.remove(id);
                    }
                }
            }
        }
        Ok(())
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

/// The reason a deferred registration gives while it waits.
const DEFERRED: &str = "deregistration still in progress (draining): registered again once ELBv2 says unused, since a registration re-added while draining comes back healthy without a new health check";

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
            .inner
            .memory
            .lock()
            .ok()
            .and_then(|m| m.taken_out.get(id).or_else(|| m.known.get(id)).cloned())
            .unwrap_or_default();
        let groups = self.inner.groups.get().cloned().unwrap_or_default();
        let cmds: Vec<String> = regs
            .iter()
            .filter_map(|r| {
                let g = groups.get(r.group).filter(|g| self.managed(g))?;
                let mut t = format!("Id={}", r.target_id(id));
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
        let bare = self.selected().is_some_and(|s| s.contains(id)) && regs.is_empty();
        if bare {
            format!(
                "nothing to register: {id} is in no target group (no balancer sends it traffic)"
            )
        } else if cmds.is_empty() {
            format!("aws elbv2 register-targets --target-group-arn <target group of {id}> --targets Id={id},Port=<its port>")
        } else {
            cmds.join(" && ")
        }
    }

    async fn list(&self) -> Result<Vec<ListedTarget>> {
        let seen = self.refresh(true).await?;
        let groups = self.groups().await?;
        let known = self.memory()?.known.clone();
        let mut out = Vec::new();
        let mut ids: Vec<&TargetId> = match self.selected() {
            Some(selected) => selected.iter().collect(),
            None => known
                .iter()
                .filter(|(_, regs)| {
                    regs.iter()
                        .any(|r| groups.get(r.group).is_some_and(|g| g.in_pool))
                })
                .map(|(id, _)| id)
                .collect(),
        };
        ids.sort();
        for id in ids {
            let all = known.get(id).map(Vec::as_slice).unwrap_or_default();
            if all.is_empty() {
                warn!(target.id = %id, "instance in no target group: patched with nothing to drain");
                out.push(ListedTarget {
                    target: self.listed_target(id, all, groups),
                    status: self.bare_status(id),
                });
                continue;
            }
            let target = self.listed_target(id, all, groups);
            if let Some(others) = target.meta.get("other_target_groups") {
                warn!(target.id = %id, other_target_groups = %others, drained_there = self.inner.others == OtherTargetGroups::Drain, "host also registered in target groups outside the pool");
            }
            let regs: Vec<Registration> = all
                .iter()
                .filter(|r| groups.get(r.group).is_some_and(|g| self.managed(g)))
                .cloned()
                .collect();
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
            let why = self.remember_reasons(id, &regs, &obs, groups);
            out.push(ListedTarget {
                target,
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
            for row in self.describe(g, Some(descs)).await? {
                if let Some((mid, r)) = members.iter().find(|(mid, r)| r.matches(&row, mid)) {
                    obs.insert((mid.clone(), r.clone()), row.obs);
                }
            }
        }
        // Registrations enable found still draining: register those now
        // unused; the others keep waiting.
        let deferred: Vec<(TargetId, Registration)> = {
            let m = self.memory()?;
            ids.iter()
                .flat_map(|id| {
                    m.deferred
                        .get(id)
                        .into_iter()
                        .flatten()
                        .map(move |r| (id.clone(), r.clone()))
                })
                .collect()
        };
        let mut ready: BTreeMap<usize, Vec<(TargetId, Registration)>> = BTreeMap::new();
        for (id, r) in deferred {
            let key = (id, r);
            match obs.get_mut(&key) {
                Some(o) if o.state == TargetState::Draining => {
                    o.reason = Some(DEFERRED.to_owned());
                }
                Some(o) if o.registered => {
                    // Registered by someone else meanwhile: nothing to do.
                    self.registered(std::slice::from_ref(&key))?;
                }
                _ => ready.entry(key.1.group).or_default().push(key),
            }
        }
        for (gi, members) in ready {
            let Some(g) = groups.get(gi) else { continue };
            let refused = self.register(g, &members).await?;
            for (id, r) in members {
                let o = if refused.iter().any(|x| x.starts_with(&format!("{id} "))) {
                    Observation::invalid("RegisterTargets refused it")
                } else {
                    Observation {
                        registered: true,
                        state: TargetState::InService,
                        health: Health::Unknown,
                        reason: Some(
                            "registered again now that its deregistration ended".to_owned(),
                        ),
                    }
                };
                obs.insert((id, r), o);
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for (id, rs) in ids.iter().zip(&regs) {
            if rs.is_empty() {
                out.push(self.bare_status(id));
                continue;
            }
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
        let current = self.refresh(false).await?;
        let regs = self.registrations(ids).await?;
        let groups = self.groups().await?;
        {
            // Out again: nothing waits to be registered.
            let mut m = self.memory()?;
            for (id, rs) in ids.iter().zip(&regs) {
                m.deferred.remove(id);
                if rs.is_empty() {
                    info!(target.id = %id, "in no target group: nothing to deregister");
                    m.bare_out.insert(id.clone());
                }
            }
        }
        for (gi, members) in Self::by_group(ids, &regs) {
            let Some(g) = groups.get(gi) else { continue };
            let still: Vec<(TargetId, Registration)> = members
                .iter()
                .filter(|(id, r)| {
                    current
                        .get(id)
                        .is_some_and(|c| c.iter().any(|(cr, o)| cr == r && o.registered))
                })
                .cloned()
                .collect();
            if still.is_empty() {
                continue;
            }
            // Remembered before the call: a deregistration whose reply is
            // lost may still have happened.
            {
                let mut m = self.memory()?;
                for (id, r) in &still {
                    let v = m.taken_out.entry(id.clone()).or_default();
                    if !v.contains(r) {
                        v.push(r.clone());
                        v.sort();
                    }
                }
            }
            let descs: Vec<TargetDescription> =
                still.iter().map(|(id, r)| r.describe(id)).collect();
            info!(target_group = %g.name, targets = descs.len(), "deregistering targets");
            call(
                "elbv2",
                "DeregisterTargets",
                || Subject::groups(g.arn.clone()).with_targets(member_names(&still)),
                self.client()
                    .deregister_targets()
                    .target_group_arn(&g.arn)
                    .set_targets(Some(descs.clone()))
                    .send(),
            )
            .await?;
            // Verify after: a registration still in service means the call
            // silently did nothing for it.
            let after = self.describe(g, Some(descs)).await?;
            let ignored: Vec<String> = after
                .iter()
                .filter(|row| row.obs.registered && row.obs.state == TargetState::InService)
                .map(|row| format!("{}:{}", row.id, row.port.unwrap_or_default()))
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
    /// them (`meta["target_groups"]` = `name:port,…`, and the zone), as
    /// registrations to put back unless this process took the target out
    /// itself: after a crash, a target the dead run deregistered is
    /// registered again exactly as it was.
    async fn adopt(&self, targets: &[Target]) -> Result<()> {
        let groups = self.groups().await?;
        let mut m = self.memory()?;
        for t in targets {
            check_id(&t.id)?;
            if m.taken_out.contains_key(&t.id) {
                continue;
            }
            let Some(list) = t.meta.get("target_groups") else {
                continue;
            };
            let mut regs = Vec::new();
            for entry in list.split(',').filter(|e| !e.is_empty()) {
                // `name:port`, or `name:port@address[/zone]` for an
                // instance registered by its address.
                let (entry, at) = match entry.split_once('@') {
                    Some((e, a)) => (e, Some(a.split_once('/').unwrap_or((a, "")))),
                    None => (entry, None),
                };
                let (name, port) = entry.rsplit_once(':').unwrap_or((entry, ""));
                let Some(group) = groups.iter().position(|g| g.name == name) else {
                    return Err(Error::invalid_config(
                        "journal",
                        format!("target {} was registered in target group {name:?}, which this balancer does not manage: resume with the same load balancer or target groups (and the same OtherTargetGroups setting)", t.id),
                    ));
                };
                let (zone, address) = match at {
                    Some((a, z)) => ((!z.is_empty()).then(|| z.to_owned()), Some(a.to_owned())),
                    None if groups[group].ip => (t.zone.clone(), None),
                    None => (None, None),
                };
                regs.push(Registration {
                    group,
                    port: port.parse().ok(),
                    zone,
                    address,
                });
            }
            if !regs.is_empty() {
                debug!(target.id = %t.id, registrations = regs.len(), "adopted from the journal");
                let known = m.known.entry(t.id.clone()).or_default();
                for r in &regs {
                    if !known.contains(r) {
                        known.push(r.clone());
                    }
                }
                known.sort();
                m.taken_out.insert(t.id.clone(), regs);
            }
        }
        Ok(())
    }

    async fn enable(&self, ids: &[TargetId]) -> Result<()> {
        self.enable_targets(ids).await
    }
}

/// Names of the load balancers a target group is attached to.
fn lb_names(tg: &TargetGroup) -> Vec<String> {
    tg.load_balancer_arns()
        .iter()
        .map(|a| discovery::load_balancer_name(a))
        .collect()
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

    #[test]
    fn invalid_target_messages_name_the_ids() {
        let asked = vec![
            TargetDescription::builder().id("i-0a").port(80).build(),
            TargetDescription::builder().id("i-0b").port(80).build(),
        ];
        assert_eq!(
            named_in(
                "The following targets are not in a running state and cannot be registered: 'i-0b'",
                &asked
            ),
            vec!["i-0b".to_owned()]
        );
        assert!(named_in("Invalid target", &asked).is_empty());
    }
}
