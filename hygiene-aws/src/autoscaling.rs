//! Auto Scaling groups of the pool's instances: read them, refuse a run
//! that would patch instances of a group with ELB health checks unless a
//! mode is chosen, and make the group changes a mode needs — every one
//! journaled before it is made, with its undo ([`Change`]), so `resume`
//! and `restore` undo exactly what the run did.
//!
//! - [`AutoScalingMode::Suspend`]: `AZRebalance`, `HealthCheck` and
//!   `ReplaceUnhealthy` suspended on each group for the run.
//! - [`AutoScalingMode::Standby`]: `AZRebalance` suspended for the run;
//!   each instance enters standby (decrementing the desired capacity)
//!   after its drain, and exits it when it is put back. A batch that
//!   would take a group below `MinSize` is refused unless the operator
//!   allows a temporary `MinSize`, set back once the group's instances
//!   left standby.
//!
//! Processes the operator had suspended before the run are never resumed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub use aws_sdk_autoscaling::Client;
use hygiene_core::journal::{Change, Journal, Record};
use hygiene_core::{Error, Result, TargetId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::error::{call, Subject};

/// The `system` of the journal's [`Change`] records this module writes.
pub const SYSTEM: &str = "autoscaling";

/// At most this many instances per `EnterStandby` / `ExitStandby` call
/// (the API's limit).
pub const MAX_STANDBY_PER_CALL: usize = 20;

/// An Auto Scaling client on `sdk` (and `endpoint_url`, for a VPC
/// endpoint or moto).
pub fn client(sdk: &aws_config::SdkConfig, endpoint_url: Option<&str>) -> Client {
    let mut b = aws_sdk_autoscaling::config::Builder::from(sdk);
    if let Some(u) = endpoint_url {
        b = b.endpoint_url(u);
    }
    Client::from_conf(b.build())
}

/// The Availability Zone of each of `instances` from EC2 (its placement;
/// `DescribeInstances`, 100 ids a call): for instances in no Auto Scaling
/// group. Ids that are not instance ids are skipped.
///
/// # Errors
/// As the call fails.
pub async fn instance_zones(
    sdk: &aws_config::SdkConfig,
    endpoint_url: Option<&str>,
    instances: &[TargetId],
) -> Result<BTreeMap<TargetId, String>> {
    let mut b = aws_sdk_ec2::config::Builder::from(sdk);
    if let Some(u) = endpoint_url {
        b = b.endpoint_url(u);
    }
    let ec2 = aws_sdk_ec2::Client::from_conf(b.build());
    let mut out = BTreeMap::new();
    let ids: Vec<String> = instances
        .iter()
        .filter(|i| i.as_str().starts_with("i-"))
        .map(|i| i.as_str().to_owned())
        .collect();
    for chunk in ids.chunks(100) {
        let mut token: Option<String> = None;
        loop {
            let o = call(
                "ec2",
                "DescribeInstances",
                || Subject::targets(chunk.join(", ")),
                ec2.describe_instances()
                    .set_instance_ids(Some(chunk.to_vec()))
                    .set_next_token(token.clone())
                    .send(),
            )
            .await?;
            for r in o.reservations() {
                for i in r.instances() {
                    let (Some(id), Some(z)) = (
                        i.instance_id(),
                        i.placement().and_then(|p| p.availability_zone()),
                    ) else {
                        continue;
                    };
                    out.insert(TargetId::new(id)?, z.to_owned());
                }
            }
            token = o.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
    }
    Ok(out)
}

/// How hygiene treats instances that belong to an Auto Scaling group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AutoScalingMode {
    /// Refuse a run that would patch instances of a group with ELB health
    /// checks (the default): the group would replace an instance that
    /// reboots during its patch.
    #[default]
    Refuse,
    /// Suspend `AZRebalance`, `HealthCheck` and `ReplaceUnhealthy` on the
    /// group for the run (the whole group goes without health checks).
    Suspend,
    /// Each instance enters standby for its maintenance (the rest of the
    /// group keeps its health checks); `AZRebalance` is suspended for the
    /// run.
    Standby,
}

impl AutoScalingMode {
    /// The processes suspended for the run.
    pub fn processes(self) -> &'static [&'static str] {
        match self {
            Self::Refuse => &[],
            Self::Suspend => &["AZRebalance", "HealthCheck", "ReplaceUnhealthy"],
            Self::Standby => &["AZRebalance"],
        }
    }
}

impl std::fmt::Display for AutoScalingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Refuse => "refuse",
            Self::Suspend => "suspend",
            Self::Standby => "standby",
        })
    }
}

/// An Auto Scaling group as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupFacts {
    /// The group's name.
    pub name: String,
    /// `MinSize`.
    pub min_size: i32,
    /// `MaxSize`.
    pub max_size: i32,
    /// `DesiredCapacity`.
    pub desired: i32,
    /// `EC2` or `ELB` (or `VPC_LATTICE`, `EBS`: any but `EC2` replaces on
    /// a failed load balancer check).
    pub health_check_type: String,
    /// Processes suspended now.
    pub suspended: Vec<String>,
    /// Target groups attached to the group.
    pub target_groups: Vec<String>,
    /// The pool's instances in this group.
    pub instances: Vec<TargetId>,
}

impl GroupFacts {
    /// Whether the group replaces instances a load balancer finds
    /// unhealthy.
    pub fn elb_health_checks(&self) -> bool {
        self.health_check_type != "EC2"
    }

    /// The `MinSize` a batch of `k` of its instances in standby needs, when
    /// the group's own is too high: entering standby decrements the
    /// desired capacity, and is refused below `MinSize`.
    pub fn min_size_for(&self, k: usize) -> Option<i32> {
        let k = i32::try_from(k).unwrap_or(i32::MAX);
        let after = self.desired.saturating_sub(k);
        (after < self.min_size).then_some(after.max(0))
    }
}

/// The Auto Scaling groups of `instances` and each instance's zone
/// (`DescribeAutoScalingInstances`, 50 ids a call, then one
/// `DescribeAutoScalingGroups` per 50 groups). Instances in no group are
/// not named.
///
/// # Errors
/// As the calls fail ([`Error::PermissionDenied`] names the operation).
pub async fn describe(
    client: &Client,
    instances: &[TargetId],
) -> Result<(Vec<GroupFacts>, BTreeMap<TargetId, String>)> {
    let mut of: BTreeMap<String, Vec<TargetId>> = BTreeMap::new();
    let mut zones = BTreeMap::new();
    let ids: Vec<&TargetId> = instances
        .iter()
        .filter(|i| i.as_str().starts_with("i-"))
        .collect();
    for chunk in ids.chunks(50) {
        let asked: Vec<String> = chunk.iter().map(|i| i.as_str().to_owned()).collect();
        let mut token: Option<String> = None;
        loop {
            let out = call(
                "autoscaling",
                "DescribeAutoScalingInstances",
                || Subject::targets(asked.join(", ")),
                client
                    .describe_auto_scaling_instances()
                    .set_instance_ids(Some(asked.clone()))
                    .set_next_token(token.clone())
                    .send(),
            )
            .await?;
            for d in out.auto_scaling_instances() {
                let (Some(id), Some(g)) = (d.instance_id(), d.auto_scaling_group_name()) else {
                    continue;
                };
                let id = TargetId::new(id)?;
                if let Some(z) = d.availability_zone() {
                    zones.insert(id.clone(), z.to_owned());
                }
                of.entry(g.to_owned()).or_default().push(id);
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
    }
    let mut groups = Vec::new();
    let names: Vec<String> = of.keys().cloned().collect();
    for chunk in names.chunks(50) {
        for g in read_groups(client, chunk).await? {
            let instances = of.get(&g.name).cloned().unwrap_or_default();
            groups.push(GroupFacts { instances, ..g });
        }
    }
    Ok((groups, zones))
}

async fn read_groups(client: &Client, names: &[String]) -> Result<Vec<GroupFacts>> {
    let mut out_groups = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = call(
            "autoscaling",
            "DescribeAutoScalingGroups",
            || Subject::groups(names.join(", ")),
            client
                .describe_auto_scaling_groups()
                .set_auto_scaling_group_names(Some(names.to_vec()))
                .set_next_token(token.clone())
                .send(),
        )
        .await?;
        for g in out.auto_scaling_groups() {
            out_groups.push(GroupFacts {
                name: g.auto_scaling_group_name().unwrap_or_default().to_owned(),
                min_size: g.min_size().unwrap_or(0),
                max_size: g.max_size().unwrap_or(0),
                desired: g.desired_capacity().unwrap_or(0),
                health_check_type: g.health_check_type().unwrap_or("EC2").to_owned(),
                suspended: g
                    .suspended_processes()
                    .iter()
                    .filter_map(|p| p.process_name().map(str::to_owned))
                    .collect(),
                target_groups: g.target_group_arns().to_vec(),
                instances: Vec::new(),
            });
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    Ok(out_groups)
}

async fn read_group(client: &Client, name: &str) -> Result<GroupFacts> {
    read_groups(client, &[name.to_owned()])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NotFound {
            kind: "Auto Scaling group",
            name: name.to_owned(),
            location: Some("autoscaling DescribeAutoScalingGroups".into()),
        })
}

/// Why a run in `mode` must not start over these groups, naming each
/// group and the setting: `refuse` with a group that has ELB health
/// checks.
pub fn refusal(mode: AutoScalingMode, groups: &[GroupFacts]) -> Option<String> {
    if mode != AutoScalingMode::Refuse {
        return None;
    }
    let risky: Vec<String> = groups
        .iter()
        .filter(|g| g.elb_health_checks())
        .map(|g| {
            format!(
                "{} ({} health checks; {} of its instances in the pool)",
                g.name,
                g.health_check_type,
                g.instances.len()
            )
        })
        .collect();
    (!risky.is_empty()).then(|| {
        format!(
            "instances of Auto Scaling group(s) {} would be replaced if they fail a load balancer health check during their maintenance: set balancer.elbv2.auto_scaling = \"standby\" (each instance in standby while patched) or \"suspend\" (HealthCheck and ReplaceUnhealthy suspended on the whole group for the run)",
            risky.join(", ")
        )
    })
}

/// The undo of one change, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Undo {
    /// Resume these processes (only those the run suspended).
    ResumeProcesses {
        group: String,
        processes: Vec<String>,
    },
    /// Set `MinSize` back.
    SetMinSize { group: String, min_size: i32 },
    /// Take the instance out of standby.
    ExitStandby { group: String, instance: String },
}

fn key(group: &str, what: &str) -> String {
    format!("{SYSTEM}:{group}:{what}")
}

/// Makes the group changes of a mode, journaled.
///
/// Shared by the [`StandbyBalancer`](crate::StandbyBalancer) (exit standby
/// on enable) and the [`StandbyExecutor`](crate::StandbyExecutor) (suspend
/// at the first preflight, enter standby before the maintenance).
#[derive(Debug)]
pub struct GroupKeeper {
    client: Client,
    journal: Arc<dyn Journal>,
    mode: AutoScalingMode,
    allow_min_size_change: bool,
    /// Group of each instance of the pool.
    group_of: BTreeMap<TargetId, String>,
    state: Mutex<KeeperState>,
    standby_wait: Duration,
}

#[derive(Debug, Default)]
struct KeeperState {
    suspended: bool,
    /// The changes found open are journaled again in this run (a new run
    /// carries over what a finished one left: an instance kept out in
    /// standby).
    carried: bool,
    /// Changes made (or found open in the journal) and not undone yet.
    open: Vec<Change>,
}

impl GroupKeeper {
    /// A keeper over `groups` in `mode`, writing to `journal`; `open` are
    /// the changes a dead run left open (from
    /// [`open_changes`](hygiene_core::journal::open_changes)).
    pub fn new(
        client: Client,
        journal: Arc<dyn Journal>,
        mode: AutoScalingMode,
        allow_min_size_change: bool,
        groups: &[GroupFacts],
        open: Vec<Change>,
    ) -> Self {
        let group_of = groups
            .iter()
            .flat_map(|g| g.instances.iter().map(|i| (i.clone(), g.name.clone())))
            .collect();
        let open: Vec<Change> = open.into_iter().filter(|c| c.system == SYSTEM).collect();
        Self {
            client,
            journal,
            mode,
            allow_min_size_change,
            group_of,
            state: Mutex::new(KeeperState {
                suspended: open.iter().any(|c| c.key.ends_with(":suspend")),
                carried: false,
                open,
            }),
            standby_wait: Duration::from_secs(600),
        }
    }

    /// How long entering standby may take before it fails (default 10 min:
    /// the group waits for the deregistration delay, already spent by the
    /// drain).
    pub fn with_standby_wait(mut self, wait: Duration) -> Self {
        self.standby_wait = wait;
        self
    }

    /// The mode.
    pub fn mode(&self) -> AutoScalingMode {
        self.mode
    }

    /// The group of an instance of the pool.
    pub fn group_of(&self, id: &TargetId) -> Option<&str> {
        self.group_of.get(id).map(String::as_str)
    }

    fn record(&self, change: &Change) -> Result<()> {
        self.journal
            .append(&Record::Change(Box::new(change.clone())))
    }

    fn groups(&self) -> BTreeSet<&str> {
        self.group_of.values().map(String::as_str).collect()
    }

    /// Suspends the mode's processes on every group, once per run: only
    /// those not suspended already (the operator's stay as they are),
    /// journaled before the call.
    ///
    /// # Errors
    /// As the calls fail; nothing else is suspended after a failure.
    pub async fn suspend(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        if !st.carried {
            // Journaled again after this run's header, so this run's
            // resume, restore and end still know them (the same key: one
            // change).
            for c in &st.open {
                self.record(c)?;
            }
            st.carried = true;
        }
        if st.suspended || self.mode == AutoScalingMode::Refuse {
            return Ok(());
        }
        for g in self.groups() {
            let facts = read_group(&self.client, g).await?;
            let todo: Vec<String> = self
                .mode
                .processes()
                .iter()
                .filter(|p| !facts.suspended.iter().any(|s| s == *p))
                .map(|p| (*p).to_owned())
                .collect();
            if todo.is_empty() {
                continue;
            }
            let change = Change::new(
                key(g, "suspend"),
                SYSTEM,
                format!("suspended {} on Auto Scaling group {g}", todo.join(", ")),
                json!(Undo::ResumeProcesses {
                    group: g.to_owned(),
                    processes: todo.clone(),
                }),
            );
            self.record(&change)?;
            st.open.push(change);
            call(
                "autoscaling",
                "SuspendProcesses",
                || Subject::groups(g),
                self.client
                    .suspend_processes()
                    .auto_scaling_group_name(g)
                    .set_scaling_processes(Some(todo.clone()))
                    .send(),
            )
            .await?;
            info!(auto_scaling_group = g, processes = %todo.join(","), "processes suspended for the run");
        }
        st.suspended = true;
        Ok(())
    }

    /// Whether `ids` may enter standby together, read live: `Err` naming
    /// the group, its sizes and the setting when a group would go below
    /// `MinSize` and no temporary change is allowed.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] as said; errors of the read.
    pub async fn check_min_size(&self, ids: &[TargetId]) -> Result<()> {
        if self.mode != AutoScalingMode::Standby || self.allow_min_size_change {
            return Ok(());
        }
        for (g, members) in self.by_group(ids) {
            let facts = read_group(&self.client, &g).await?;
            if let Some(need) = facts.min_size_for(members.len()) {
                return Err(min_size_error(&facts, members.len(), need));
            }
        }
        Ok(())
    }

    fn by_group(&self, ids: &[TargetId]) -> BTreeMap<String, Vec<TargetId>> {
        let mut out: BTreeMap<String, Vec<TargetId>> = BTreeMap::new();
        for id in ids {
            if let Some(g) = self.group_of.get(id) {
                out.entry(g.clone()).or_default().push(id.clone());
            }
        }
        out
    }

    /// Puts `ids` (those in a group) in standby with the desired capacity
    /// decremented, after a temporary `MinSize` when that is allowed and
    /// needed; waits until the group says `Standby`. Journaled before each
    /// call.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] below `MinSize` without the permission
    /// (nothing changed); errors of the calls; [`Error::Timeout`] when the
    /// instances are not in standby within the wait.
    pub async fn enter_standby(&self, ids: &[TargetId]) -> Result<()> {
        if self.mode != AutoScalingMode::Standby {
            return Ok(());
        }
        let mut st = self.state.lock().await;
        for (g, members) in self.by_group(ids) {
            let facts = read_group(&self.client, &g).await?;
            if let Some(need) = facts.min_size_for(members.len()) {
                if !self.allow_min_size_change {
                    return Err(min_size_error(&facts, members.len(), need));
                }
                let k = key(&g, "min_size");
                if !st.open.iter().any(|c| c.key == k) {
                    let change = Change::new(
                        k,
                        SYSTEM,
                        format!(
                            "lowered MinSize of Auto Scaling group {g} from {} to {need} while instances are in standby",
                            facts.min_size
                        ),
                        json!(Undo::SetMinSize {
                            group: g.clone(),
                            min_size: facts.min_size,
                        }),
                    );
                    self.record(&change)?;
                    st.open.push(change);
                }
                call(
                    "autoscaling",
                    "UpdateAutoScalingGroup",
                    || Subject::groups(g.clone()),
                    self.client
                        .update_auto_scaling_group()
                        .auto_scaling_group_name(&g)
                        .min_size(need)
                        .send(),
                )
                .await?;
                info!(auto_scaling_group = %g, min_size = need, was = facts.min_size, "MinSize lowered for standby");
            }
            for chunk in members.chunks(MAX_STANDBY_PER_CALL) {
                for id in chunk {
                    let change = Change::new(
                        key(&g, &format!("standby:{id}")),
                        SYSTEM,
                        format!("put {id} in standby in Auto Scaling group {g}"),
                        json!(Undo::ExitStandby {
                            group: g.clone(),
                            instance: id.to_string(),
                        }),
                    )
                    .for_target(id.clone());
                    self.record(&change)?;
                    st.open.push(change);
                }
                let asked: Vec<String> = chunk.iter().map(|i| i.to_string()).collect();
                call(
                    "autoscaling",
                    "EnterStandby",
                    || Subject::groups(g.clone()).with_targets(asked.join(", ")),
                    self.client
                        .enter_standby()
                        .auto_scaling_group_name(&g)
                        .set_instance_ids(Some(asked.clone()))
                        .should_decrement_desired_capacity(true)
                        .send(),
                )
                .await?;
            }
            self.wait_for(&members, "Standby").await?;
            info!(auto_scaling_group = %g, instances = members.len(), "in standby");
        }
        Ok(())
    }

    async fn wait_for(&self, ids: &[TargetId], state: &str) -> Result<()> {
        let started = tokio::time::Instant::now();
        let asked: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        loop {
            let out = call(
                "autoscaling",
                "DescribeAutoScalingInstances",
                || Subject::targets(asked.join(", ")),
                self.client
                    .describe_auto_scaling_instances()
                    .set_instance_ids(Some(asked.clone()))
                    .send(),
            )
            .await?;
            let waiting: Vec<String> = out
                .auto_scaling_instances()
                .iter()
                .filter(|d| d.lifecycle_state() != Some(state))
                .map(|d| {
                    format!(
                        "{} ({})",
                        d.instance_id().unwrap_or("?"),
                        d.lifecycle_state().unwrap_or("?")
                    )
                })
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= self.standby_wait {
                return Err(Error::Timeout {
                    operation: format!(
                        "autoscaling: waiting for {state} (still {})",
                        waiting.join(", ")
                    ),
                    after: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Takes `ids` out of standby (those this run put there), then sets a
    /// lowered `MinSize` back once none of the group's instances is in
    /// standby any more. Each undo journaled after its call.
    ///
    /// # Errors
    /// As the calls fail.
    pub async fn exit_standby(&self, ids: &[TargetId]) -> Result<()> {
        let mut st = self.state.lock().await;
        let mine: Vec<Change> = st
            .open
            .iter()
            .filter(|c| c.target.as_ref().is_some_and(|t| ids.contains(t)))
            .cloned()
            .collect();
        let touched = undo_all(&self.client, &*self.journal, &mine).await?;
        st.open.retain(|c| !mine.iter().any(|m| m.key == c.key));
        for g in touched {
            let k = key(&g, "min_size");
            let standby_left = st
                .open
                .iter()
                .any(|c| c.target.is_some() && c.key.starts_with(&key(&g, "standby:")));
            if !standby_left {
                let min: Vec<Change> = st.open.iter().filter(|c| c.key == k).cloned().collect();
                undo_all(&self.client, &*self.journal, &min).await?;
                st.open.retain(|c| c.key != k);
            }
        }
        Ok(())
    }

    /// Undoes the run-level changes (suspended processes, a lowered
    /// `MinSize` with no instance left in standby), newest first. Standby
    /// of instances kept out stays: they are named by
    /// [`in_standby`](Self::in_standby).
    ///
    /// # Errors
    /// As the calls fail (what was undone is journaled).
    pub async fn finish(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        let standby_groups: BTreeSet<String> = st
            .open
            .iter()
            .filter(|c| c.target.is_some())
            .filter_map(|c| c.key.split(':').nth(1).map(str::to_owned))
            .collect();
        let todo: Vec<Change> = st
            .open
            .iter()
            .filter(|c| c.target.is_none())
            .filter(|c| {
                !(c.key.ends_with(":min_size")
                    && c.key
                        .split(':')
                        .nth(1)
                        .is_some_and(|g| standby_groups.contains(g)))
            })
            .cloned()
            .collect();
        undo_all(&self.client, &*self.journal, &todo).await?;
        st.open.retain(|c| !todo.iter().any(|t| t.key == c.key));
        Ok(())
    }

    /// Instances this run left in standby, with their group.
    pub async fn in_standby(&self) -> Vec<(TargetId, String)> {
        self.state
            .lock()
            .await
            .open
            .iter()
            .filter_map(|c| {
                let g = c.key.split(':').nth(1)?;
                Some((c.target.clone()?, g.to_owned()))
            })
            .collect()
    }
}

fn min_size_error(facts: &GroupFacts, k: usize, need: i32) -> Error {
    Error::invalid_config(
        "auto_scaling",
        format!(
            "{k} instance(s) of Auto Scaling group {} in standby at once would take its desired capacity from {} to {}, below MinSize {}: lower batch_size, or allow a temporary MinSize of {need} with balancer.elbv2.allow_min_size_change = true (set back when they leave standby)",
            facts.name,
            facts.desired,
            facts.desired - i32::try_from(k).unwrap_or(i32::MAX),
            facts.min_size
        ),
    )
}

/// Undoes `changes` (this module's) newest first, journaling each undo
/// after its call; returns the groups touched. An undo that finds nothing
/// to undo (the instance is not in standby, the process not suspended)
/// counts as done.
///
/// # Errors
/// The first call that fails; the undos before it are journaled.
pub async fn undo_all(
    client: &Client,
    journal: &dyn Journal,
    changes: &[Change],
) -> Result<Vec<String>> {
    let mut touched = Vec::new();
    for c in changes.iter().rev().filter(|c| c.system == SYSTEM) {
        let undo: Undo = serde_json::from_value(c.undo.clone()).map_err(|e| {
            Error::journal(
                journal.location(),
                format!("the undo of change {} cannot be read: {e}", c.key),
            )
        })?;
        match &undo {
            Undo::ResumeProcesses { group, processes } => {
                call(
                    "autoscaling",
                    "ResumeProcesses",
                    || Subject::groups(group.clone()),
                    client
                        .resume_processes()
                        .auto_scaling_group_name(group)
                        .set_scaling_processes(Some(processes.clone()))
                        .send(),
                )
                .await?;
                info!(auto_scaling_group = %group, processes = %processes.join(","), "processes resumed");
                touched.push(group.clone());
            }
            Undo::SetMinSize { group, min_size } => {
                call(
                    "autoscaling",
                    "UpdateAutoScalingGroup",
                    || Subject::groups(group.clone()),
                    client
                        .update_auto_scaling_group()
                        .auto_scaling_group_name(group)
                        .min_size(*min_size)
                        .send(),
                )
                .await?;
                info!(auto_scaling_group = %group, min_size, "MinSize set back");
                touched.push(group.clone());
            }
            Undo::ExitStandby { group, instance } => {
                let state = lifecycle(client, instance).await?;
                match state.as_deref() {
                    Some("Standby") => {
                        call(
                            "autoscaling",
                            "ExitStandby",
                            || Subject::groups(group.clone()).with_targets(instance.clone()),
                            client
                                .exit_standby()
                                .auto_scaling_group_name(group)
                                .instance_ids(instance)
                                .send(),
                        )
                        .await?;
                        info!(auto_scaling_group = %group, instance = %instance, "out of standby");
                    }
                    Some("EnteringStandby") => {
                        return Err(Error::unavailable(
                            "autoscaling ExitStandby",
                            format!(
                                "{instance} is still entering standby in Auto Scaling group {group}: try again in a moment"
                            ),
                        ));
                    }
                    other => warn!(
                        instance = %instance,
                        lifecycle_state = other.unwrap_or("not in a group"),
                        "not in standby: nothing to undo"
                    ),
                }
                touched.push(group.clone());
            }
        }
        journal.append(&Record::undone(c.key.clone()))?;
    }
    touched.dedup();
    Ok(touched)
}

async fn lifecycle(client: &Client, instance: &str) -> Result<Option<String>> {
    let out = call(
        "autoscaling",
        "DescribeAutoScalingInstances",
        || Subject::targets(instance),
        client
            .describe_auto_scaling_instances()
            .instance_ids(instance)
            .send(),
    )
    .await?;
    Ok(out
        .auto_scaling_instances()
        .first()
        .and_then(|d| d.lifecycle_state().map(str::to_owned)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(min: i32, desired: i32) -> GroupFacts {
        GroupFacts {
            name: "web".into(),
            min_size: min,
            max_size: 10,
            desired,
            health_check_type: "ELB".into(),
            suspended: vec![],
            target_groups: vec![],
            instances: vec![],
        }
    }

    #[test]
    fn min_size_arithmetic() {
        // desired 4, min 2: two may enter standby, three need MinSize 1.
        assert_eq!(g(2, 4).min_size_for(2), None);
        assert_eq!(g(2, 4).min_size_for(3), Some(1));
        assert_eq!(g(4, 4).min_size_for(1), Some(3));
        assert_eq!(g(1, 1).min_size_for(2), Some(0), "never below zero");
    }

    #[test]
    fn refuse_names_groups_with_elb_checks_only() {
        let mut ec2 = g(1, 2);
        ec2.name = "batch".into();
        ec2.health_check_type = "EC2".into();
        assert_eq!(refusal(AutoScalingMode::Refuse, &[ec2.clone()]), None);
        let why = refusal(AutoScalingMode::Refuse, &[ec2, g(1, 2)]).expect("refused");
        assert!(why.contains("web") && !why.contains("batch"), "{why}");
        assert!(why.contains("balancer.elbv2.auto_scaling"), "{why}");
        assert_eq!(refusal(AutoScalingMode::Standby, &[g(1, 2)]), None);
    }
}
