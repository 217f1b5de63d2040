//! A pool that starts from instances: select them (by id, by tags, by Auto
//! Scaling group), then find every target group of the Region that holds
//! any of them.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::Filter;
use aws_sdk_elasticloadbalancingv2::types::{TargetGroup, TargetTypeEnum};
use hygiene_core::{Error, Result, RetryPolicy, TargetId};
use tracing::{info, warn};

use crate::error::{call, Subject};

/// Which EC2 instances make the pool (the alternative to a load balancer
/// or target group ARN).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InstanceSelector {
    /// These instance ids (`i-0abc…`).
    Ids(Vec<String>),
    /// The running instances carrying every one of these tags; a tag
    /// matches any of its values (EC2's `tag:<key>` filters).
    Tags(BTreeMap<String, Vec<String>>),
    /// The `InService` instances of this Auto Scaling group, and those in
    /// standby (listed out of service unless a run put them there).
    AutoScalingGroup(String),
}

impl std::fmt::Display for InstanceSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ids(ids) => write!(f, "instances {}", ids.join(", ")),
            Self::Tags(tags) => {
                let t: Vec<String> = tags
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.join("|")))
                    .collect();
                write!(f, "instances tagged {}", t.join(", "))
            }
            Self::AutoScalingGroup(name) => write!(f, "instances of Auto Scaling group {name}"),
        }
    }
}

impl InstanceSelector {
    /// Checks the selector before anything is sent.
    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            Self::Ids(ids) if ids.is_empty() => Err(Error::invalid_config(
                "instances",
                "give at least one instance id",
            )),
            Self::Ids(ids) => {
                for id in ids {
                    let ok = id.starts_with("i-")
                        && id.len() > 2
                        && id[2..].chars().all(|c| c.is_ascii_hexdigit());
                    if !ok {
                        return Err(Error::invalid_config(
                            "instances",
                            format!("{id:?} is not an EC2 instance id (i-0abc…)"),
                        ));
                    }
                }
                Ok(())
            }
            Self::Tags(tags) if tags.is_empty() || tags.values().any(Vec::is_empty) => {
                Err(Error::invalid_config(
                    "tags",
                    "give at least one tag, each with at least one value",
                ))
            }
            Self::AutoScalingGroup(name) if name.trim().is_empty() => Err(Error::invalid_config(
                "auto_scaling_group",
                "the Auto Scaling group name is empty",
            )),
            _ => Ok(()),
        }
    }
}

/// What discovery found, and what it cost. Read it with
/// [`Elbv2Balancer::discovery`](crate::Elbv2Balancer::discovery).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    pub(crate) instances: Vec<TargetId>,
    pub(crate) unregistered: Vec<TargetId>,
    pub(crate) target_groups: Vec<String>,
    pub(crate) skipped: Vec<String>,
    pub(crate) api_calls: u64,
}

impl Discovery {
    /// The selected instances, sorted: the pool's targets.
    pub fn instances(&self) -> &[TargetId] {
        &self.instances
    }

    /// Selected instances found in no target group: still patched, with
    /// nothing to drain.
    pub fn not_in_any_target_group(&self) -> &[TargetId] {
        &self.unregistered
    }

    /// Names of the target groups that hold at least one selected instance.
    pub fn target_groups(&self) -> &[String] {
        &self.target_groups
    }

    /// Target groups not searched, each with why (`lambda` and `alb`
    /// target types have no instances; `ip` groups when the instances'
    /// addresses could not be read).
    pub fn skipped_target_groups(&self) -> &[String] {
        &self.skipped
    }

    /// AWS requests discovery made (EC2 or Auto Scaling, and ELBv2),
    /// retries of throttled calls included.
    pub fn api_calls(&self) -> u64 {
        self.api_calls
    }
}

/// The policy for throttled discovery calls: up to 8 retries within a
/// minute, jittered.
pub(crate) fn discovery_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 8,
        min_delay: std::time::Duration::from_millis(200),
        max_delay: std::time::Duration::from_secs(10),
        max_total: std::time::Duration::from_secs(60),
    }
}

fn is_throttled(e: &Error) -> bool {
    matches!(e, Error::Throttled { .. })
}

/// Runs a discovery call, again after throttling; counts every attempt.
pub(crate) async fn retried<T, F, Fut>(calls: &mut u64, what: &'static str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let counter = std::sync::atomic::AtomicU64::new(0);
    let r = hygiene_core::with_retries_when(
        &discovery_retry(),
        || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            f()
        },
        is_throttled,
        |e, d| warn!(operation = what, error = %e, retry_in_ms = d.as_millis() as u64, "throttled during discovery"),
    )
    .await;
    *calls += counter.into_inner();
    r
}

/// What selection found: the instances, and the private addresses of
/// those DescribeInstances was asked about (to match `ip` targets).
#[derive(Debug, Default)]
pub(crate) struct Selected {
    pub(crate) ids: Vec<TargetId>,
    /// Private IPv4 (and IPv6) addresses per instance; `None` when not
    /// read yet (an Auto Scaling group's instances).
    pub(crate) addresses: Option<BTreeMap<TargetId, Vec<String>>>,
}

/// Every private address of an instance: its primary private IPv4, every
/// private IPv4 and IPv6 address of its network interfaces.
fn instance_addresses(i: &aws_sdk_ec2::types::Instance) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |a: Option<&str>| {
        if let Some(a) = a.filter(|a| !a.is_empty()) {
            if !out.iter().any(|x| x == a) {
                out.push(a.to_owned());
            }
        }
    };
    push(i.private_ip_address());
    for n in i.network_interfaces() {
        for p in n.private_ip_addresses() {
            push(p.private_ip_address());
        }
        for a in n.ipv6_addresses() {
            push(a.ipv6_address());
        }
    }
    out
}

/// The private addresses of `ids` (DescribeInstances by id, 100 a call,
/// paginated).
pub(crate) async fn addresses(
    ec2: &aws_sdk_ec2::Client,
    ids: &[TargetId],
    calls: &mut u64,
) -> Result<BTreeMap<TargetId, Vec<String>>> {
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(100) {
        let asked: Vec<String> = chunk.iter().map(|i| i.as_str().to_owned()).collect();
        let mut token: Option<String> = None;
        loop {
            let o = retried(calls, "DescribeInstances", || {
                call(
                    "ec2",
                    "DescribeInstances",
                    || Subject::targets(asked.join(", ")),
                    ec2.describe_instances()
                        .set_instance_ids(Some(asked.clone()))
                        .set_next_token(token.clone())
                        .send(),
                )
            })
            .await?;
            for r in o.reservations() {
                for i in r.instances() {
                    let Some(id) = i.instance_id() else { continue };
                    out.insert(TargetId::new(id)?, instance_addresses(i));
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

/// The instance ids `selector` names, sorted and deduplicated. EC2 ids and
/// tags keep `running` instances only (a stopped one cannot be patched by
/// SSM); an Auto Scaling group keeps its `InService` instances.
pub(crate) async fn select(
    ec2: Option<&aws_sdk_ec2::Client>,
    autoscaling: Option<&aws_sdk_autoscaling::Client>,
    selector: &InstanceSelector,
    calls: &mut u64,
) -> Result<Selected> {
    let mut found = BTreeSet::new();
    let mut addrs: Option<BTreeMap<String, Vec<String>>> = None;
    match selector {
        InstanceSelector::AutoScalingGroup(name) => {
            let asg = autoscaling.ok_or_else(|| {
                Error::invalid_config("auto_scaling_group", "no Auto Scaling client")
            })?;
            let mut token: Option<String> = None;
            let mut groups = 0;
            loop {
                let out = retried(calls, "DescribeAutoScalingGroups", || {
                    call(
                        "autoscaling",
                        "DescribeAutoScalingGroups",
                        || Subject::groups(name.clone()),
                        asg.describe_auto_scaling_groups()
                            .auto_scaling_group_names(name)
                            .set_next_token(token.clone())
                            .send(),
                    )
                })
                .await?;
                for g in out.auto_scaling_groups() {
                    groups += 1;
                    for i in g.instances() {
                        let Some(id) = i.instance_id() else { continue };
                        let state = i.lifecycle_state().map(|s| s.as_str()).unwrap_or("?");
                        // Standby too: an instance a run put in standby
                        // stays in the pool, so a resume or restore finds
                        // it and puts it back (one the operator put there
                        // is listed out of service and left as found).
                        if matches!(state, "InService" | "Standby" | "EnteringStandby") {
                            found.insert(id.to_owned());
                        } else {
                            warn!(instance = id, lifecycle_state = state, auto_scaling_group = %name, "instance not InService: left out");
                        }
                    }
                }
                token = out.next_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
            if groups == 0 {
                return Err(Error::NotFound {
                    kind: "Auto Scaling group",
                    name: name.clone(),
                    location: Some("autoscaling DescribeAutoScalingGroups".into()),
                });
            }
        }
        InstanceSelector::Ids(_) | InstanceSelector::Tags(_) => {
            let ec2 = ec2.ok_or_else(|| Error::invalid_config("instances", "no EC2 client"))?;
            let (ids, filters) = match selector {
                InstanceSelector::Ids(ids) => (Some(ids.clone()), Vec::new()),
                InstanceSelector::Tags(tags) => (
                    None,
                    tags.iter()
                        .map(|(k, v)| {
                            Filter::builder()
                                .name(format!("tag:{k}"))
                                .set_values(Some(v.clone()))
                                .build()
                        })
                        .collect(),
                ),
                InstanceSelector::AutoScalingGroup(_) => (None, Vec::new()),
            };
            let mut token: Option<String> = None;
            loop {
                let out = retried(calls, "DescribeInstances", || {
                    call(
                        "ec2",
                        "DescribeInstances",
                        || Subject::targets(selector.to_string()),
                        ec2.describe_instances()
                            .set_instance_ids(ids.clone())
                            .set_filters(Some(filters.clone()).filter(|f| !f.is_empty()))
                            .set_next_token(token.clone())
                            .send(),
                    )
                })
                .await?;
                for r in out.reservations() {
                    for i in r.instances() {
                        let Some(id) = i.instance_id() else { continue };
                        let state = i
                            .state()
                            .and_then(|s| s.name())
                            .map(|n| n.as_str())
                            .unwrap_or("?");
                        if state == "running" {
                            found.insert(id.to_owned());
                            addrs
                                .get_or_insert_with(BTreeMap::new)
                                .insert(id.to_owned(), instance_addresses(i));
                        } else {
                            warn!(instance = id, state, "instance not running: left out");
                        }
                    }
                }
                token = out.next_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
        }
    }
    if found.is_empty() {
        return Err(Error::invalid_config(
            "pool",
            format!("{selector} matched no running instance"),
        ));
    }
    let ids = found
        .into_iter()
        .map(TargetId::new)
        .collect::<Result<Vec<_>>>()?;
    let addresses = match addrs {
        None => None,
        Some(a) => Some(
            a.into_iter()
                .map(|(k, v)| Ok((TargetId::new(k)?, v)))
                .collect::<Result<BTreeMap<_, _>>>()?,
        ),
    };
    Ok(Selected { ids, addresses })
}

/// Whether a target group can hold instances: `Ok(false)` for an instance
/// target group, `Ok(true)` for an `ip` one (its targets are matched to
/// the instances by their private addresses), or why it is skipped.
pub(crate) fn searchable(tg: &TargetGroup) -> std::result::Result<bool, String> {
    let name = tg.target_group_name().unwrap_or_default();
    match tg.target_type() {
        None | Some(TargetTypeEnum::Instance) => Ok(false),
        Some(TargetTypeEnum::Ip) => Ok(true),
        Some(other) => Err(format!(
            "{name}: target type {}, which holds no instances",
            other.as_str()
        )),
    }
}

/// The name in a load balancer ARN (`…:loadbalancer/app/<name>/<id>`).
pub(crate) fn load_balancer_name(arn: &str) -> String {
    let tail = arn.rsplit_once(":loadbalancer/").map_or(arn, |(_, t)| t);
    let parts: Vec<&str> = tail.split('/').collect();
    match parts.as_slice() {
        [_, name, _] => (*name).to_owned(),
        _ => tail.to_owned(),
    }
}

/// Logs what discovery found.
pub(crate) fn log(d: &Discovery) {
    info!(
        instances = d.instances.len(),
        target_groups = d.target_groups.len(),
        skipped = d.skipped.len(),
        api_calls = d.api_calls,
        "discovered target groups from instances"
    );
    for s in &d.skipped {
        info!(note = %s, "target group skipped");
    }
    if !d.unregistered.is_empty() {
        let ids: Vec<&str> = d.unregistered.iter().map(TargetId::as_str).collect();
        warn!(instances = %ids.join(", "), "instances in no target group: patched with nothing to drain");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancer_names_come_from_arns() {
        assert_eq!(
            load_balancer_name(
                "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/shop/50dc6c495c0c9188"
            ),
            "shop"
        );
        assert_eq!(
            load_balancer_name(
                "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/net/edge/50dc6c495c0c9188"
            ),
            "edge"
        );
    }

    #[test]
    fn selectors_are_validated() {
        assert!(InstanceSelector::Ids(vec![]).validate().is_err());
        assert!(InstanceSelector::Ids(vec!["web-1".into()])
            .validate()
            .is_err());
        assert!(InstanceSelector::Ids(vec!["i-0abc12".into()])
            .validate()
            .is_ok());
        assert!(InstanceSelector::Tags(BTreeMap::new()).validate().is_err());
        assert!(
            InstanceSelector::Tags([("Patch Group".to_owned(), vec![])].into())
                .validate()
                .is_err()
        );
        assert!(InstanceSelector::Tags(
            [("Patch Group".to_owned(), vec!["web".to_owned()])].into()
        )
        .validate()
        .is_ok());
        assert!(InstanceSelector::AutoScalingGroup(" ".into())
            .validate()
            .is_err());
    }
}
