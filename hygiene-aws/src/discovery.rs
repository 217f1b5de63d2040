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
    /// The `InService` instances of this Auto Scaling group.
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
    /// target types have no instances; `ip` groups are not matched to
    /// instances).
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

/// The instance ids `selector` names, sorted and deduplicated. EC2 ids and
/// tags keep `running` instances only (a stopped one cannot be patched by
/// SSM); an Auto Scaling group keeps its `InService` instances.
pub(crate) async fn select(
    ec2: Option<&aws_sdk_ec2::Client>,
    autoscaling: Option<&aws_sdk_autoscaling::Client>,
    selector: &InstanceSelector,
    calls: &mut u64,
) -> Result<Vec<TargetId>> {
    let mut found = BTreeSet::new();
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
                        if state == "InService" {
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
    found.into_iter().map(TargetId::new).collect()
}

/// Whether a target group can hold instances by id: `Ok(())`, or why it
/// is skipped.
pub(crate) fn searchable(tg: &TargetGroup) -> std::result::Result<(), String> {
    let name = tg.target_group_name().unwrap_or_default();
    match tg.target_type() {
        None | Some(TargetTypeEnum::Instance) => Ok(()),
        Some(TargetTypeEnum::Ip) => Err(format!(
            "{name}: ip target group, not matched to instances (register instances by id, or give the target group ARN)"
        )),
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
