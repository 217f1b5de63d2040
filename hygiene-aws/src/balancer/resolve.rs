//! Finding the pool's target groups: by ARN, from a load balancer, or
//! from instances (every target group of the Region holding one, `ip`
//! groups matched by the instances' private addresses); and, unless told
//! not to, the account's other groups that may hold the pool's hosts.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_sdk_elasticloadbalancingv2::types::{TargetGroup, TargetTypeEnum};
use hygiene_core::{Error, Result, TargetId};
use tracing::{debug, warn};

use super::{lb_names, Elbv2Balancer, Group, OtherTargetGroups, Pool, Registration};
use crate::discovery::{self, Discovery, InstanceSelector};
use crate::error::{call, Subject};

impl Elbv2Balancer {
    /// DescribeTargetGroups, by ARN or by load balancer; then, unless
    /// other groups are ignored, every other target group of the account.
    pub(super) async fn resolve(&self) -> Result<Vec<Group>> {
        let mut found: Vec<TargetGroup> = Vec::new();
        match &self.inner.pool {
            Pool::Instances(selector) => return self.resolve_instances(selector).await,
            Pool::TargetGroups(arns) => {
                for chunk in arns.chunks(20) {
                    self.paced().await;
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
                    self.paced().await;
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
            if groups.iter().any(|g: &Group| g.arn == arn) {
                continue;
            }
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
            groups.push(Group {
                arn,
                name,
                ip,
                in_pool: true,
                load_balancers: lb_names(&tg),
            });
        }
        if self.inner.others != OtherTargetGroups::Ignore {
            self.discover_others(&mut groups).await?;
        }
        debug!(groups = groups.len(), pool = %self.inner.pool, "resolved target groups");
        Ok(groups)
    }

    /// Discovery from instances: selects them (EC2 or Auto Scaling), lists
    /// every target group of the Region (paginated), and lists each
    /// instance target group once (`DescribeTargetHealth`, paced) to keep
    /// those holding a selected instance, on any port. What it learns is
    /// remembered, so the rollout's first calls need no new listing.
    /// Throttled calls are retried with jittered backoff.
    async fn resolve_instances(&self, selector: &InstanceSelector) -> Result<Vec<Group>> {
        let mut calls = 0u64;
        let selected = discovery::select(
            self.inner.ec2.as_ref(),
            self.inner.autoscaling.as_ref(),
            selector,
            &mut calls,
        )
        .await?;
        let instances = selected.ids;
        let mut addresses = selected.addresses;
        let wanted: HashSet<&TargetId> = instances.iter().collect();
        let mut all: Vec<TargetGroup> = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = discovery::retried(&mut calls, "DescribeTargetGroups", || async {
                self.paced().await;
                call(
                    "elbv2",
                    "DescribeTargetGroups",
                    || Subject::groups("every target group of the Region"),
                    self.client()
                        .describe_target_groups()
                        .set_marker(marker.clone())
                        .send(),
                )
                .await
            })
            .await?;
            all.extend(out.target_groups().iter().cloned());
            marker = out.next_marker().map(str::to_owned);
            if marker.is_none() {
                break;
            }
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut skipped = Vec::new();
        let mut found: HashMap<TargetId, Vec<Registration>> = HashMap::new();
        for tg in all {
            let Some(arn) = tg.target_group_arn() else {
                continue;
            };
            if groups.iter().any(|g| g.arn == arn) {
                continue;
            }
            let ip = match discovery::searchable(&tg) {
                Ok(ip) => ip,
                Err(why) => {
                    skipped.push(why);
                    continue;
                }
            };
            let name = tg.target_group_name().unwrap_or(arn).to_owned();
            if ip && addresses.is_none() {
                // An Auto Scaling group names instances only: their
                // addresses come from EC2, once, when an ip group exists.
                match self.inner.ec2.as_ref() {
                    Some(ec2) => {
                        addresses = Some(discovery::addresses(ec2, &instances, &mut calls).await?);
                    }
                    None => {
                        skipped.push(format!("{name}: ip target group, and no EC2 client to read the instances' private addresses (give the target group ARN, or an AWS configuration with EC2 access)"));
                        continue;
                    }
                }
            }
            let g = Group {
                arn: arn.to_owned(),
                name,
                ip,
                in_pool: true,
                load_balancers: lb_names(&tg),
            };
            let rows = discovery::retried(&mut calls, "DescribeTargetHealth", || {
                self.describe(&g, None)
            })
            .await?;
            let gi = groups.len();
            let mut holds = false;
            for row in rows {
                let (owner, address) = if ip {
                    match owner_of(addresses.as_ref(), row.id.as_str()) {
                        Some(o) => (o, Some(row.id.as_str().to_owned())),
                        None => continue,
                    }
                } else if wanted.contains(&row.id) {
                    (row.id.clone(), None)
                } else {
                    continue;
                };
                holds = true;
                found.entry(owner).or_default().push(Registration {
                    group: gi,
                    port: row.port,
                    zone: if ip { row.zone } else { None },
                    address,
                });
            }
            if holds {
                groups.push(g);
            }
        }
        let d = Discovery {
            unregistered: instances
                .iter()
                .filter(|i| !found.contains_key(*i))
                .cloned()
                .collect(),
            target_groups: groups.iter().map(|g| g.name.clone()).collect(),
            instances,
            skipped,
            api_calls: calls,
        };
        discovery::log(&d);
        {
            let mut m = self.memory()?;
            for (id, mut regs) in found {
                regs.sort();
                m.known.insert(id, regs);
            }
        }
        // The OnceCell of the groups runs this once; a lost race only
        // drops an identical result.
        let _ = self.inner.discovery.set(d);
        let owners: HashMap<String, TargetId> = addresses
            .iter()
            .flatten()
            .flat_map(|(id, addrs)| addrs.iter().map(move |a| (a.clone(), id.clone())))
            .collect();
        let _ = self.inner.owners.set(owners);
        Ok(groups)
    }

    /// The selected instance an `ip` target of `g` is (instance pools).
    pub(super) fn owner(&self, g: &Group, target: &TargetId) -> Option<TargetId> {
        if !g.ip {
            return None;
        }
        self.inner.owners.get()?.get(target.as_str()).cloned()
    }

    /// Appends the account's instance and IP target groups that are not in
    /// the pool. Without the permission to list them, warns and goes on.
    async fn discover_others(&self, groups: &mut Vec<Group>) -> Result<()> {
        let mut marker = None;
        loop {
            self.paced().await;
            let r = call(
                "elbv2",
                "DescribeTargetGroups",
                || Subject::groups("every target group of the account"),
                self.client()
                    .describe_target_groups()
                    .set_marker(marker)
                    .send(),
            )
            .await;
            let out = match r {
                Ok(out) => out,
                Err(e @ Error::PermissionDenied { .. }) => {
                    warn!(error = %e, "cannot list the account's other target groups: hosts registered outside the pool go unnoticed; grant elasticloadbalancing:DescribeTargetGroups, or build with OtherTargetGroups::Ignore");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            for tg in out.target_groups() {
                let Some(arn) = tg.target_group_arn() else {
                    continue;
                };
                let ip = match tg.target_type() {
                    None | Some(TargetTypeEnum::Instance) => false,
                    Some(TargetTypeEnum::Ip) => true,
                    Some(_) => continue,
                };
                if groups.iter().any(|g| g.arn == arn) {
                    continue;
                }
                groups.push(Group {
                    arn: arn.to_owned(),
                    name: tg.target_group_name().unwrap_or(arn).to_owned(),
                    ip,
                    in_pool: false,
                    load_balancers: lb_names(tg),
                });
            }
            marker = out.next_marker().map(str::to_owned);
            if marker.is_none() {
                return Ok(());
            }
        }
    }
}

/// The instance among `addresses` that has `address`.
fn owner_of(
    addresses: Option<&BTreeMap<TargetId, Vec<String>>>,
    address: &str,
) -> Option<TargetId> {
    addresses?
        .iter()
        .find(|(_, a)| a.iter().any(|x| x == address))
        .map(|(id, _)| id.clone())
}
