//! Availability Zones of an ELBv2 pool: the Network Load Balancers that
//! route within a zone only (cross-zone load balancing off, the NLB
//! default). Draining the last healthy target of a zone of such an NLB
//! leaves that zone's load balancer node with nothing to send to, while
//! clients that cached its address keep coming.
//!
//! Keys as the ELBv2 API reference gives them: the load balancer attribute
//! `load_balancing.cross_zone.enabled` (NLB default `false`), and the
//! target group attribute of the same name (`true`, `false` or
//! `use_load_balancer_configuration`, the default), which wins when set.

use std::collections::BTreeSet;

use aws_sdk_elasticloadbalancingv2::types::LoadBalancerTypeEnum;
use hygiene_core::Result;

use crate::error::{call, Subject};
use crate::Elbv2Balancer;

const CROSS_ZONE: &str = "load_balancing.cross_zone.enabled";

/// A Network Load Balancer of the pool that keeps traffic within each
/// zone for at least one of the pool's target groups.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ZonalNlb {
    /// The load balancer's name.
    pub load_balancer: String,
    /// Its ARN.
    pub load_balancer_arn: String,
    /// The pool's target groups behind it with cross-zone off.
    pub target_groups: Vec<String>,
}

impl Elbv2Balancer {
    /// The pool's NLBs with cross-zone load balancing off for one of the
    /// pool's target groups (one `DescribeTargetGroups`, one
    /// `DescribeLoadBalancers`, and one attributes call per NLB and per
    /// target group behind one).
    ///
    /// # Errors
    /// As [`LoadBalancer::list`](hygiene_core::LoadBalancer::list);
    /// [`Error::PermissionDenied`](hygiene_core::Error::PermissionDenied)
    /// without `elasticloadbalancing:Describe*`.
    pub async fn zonal_nlbs(&self) -> Result<Vec<ZonalNlb>> {
        let arns: Vec<String> = self
            .groups()
            .await?
            .iter()
            .filter(|g| self.managed(g))
            .map(|g| g.arn.clone())
            .collect();
        let mut tgs = Vec::new();
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
            tgs.extend(out.target_groups().to_vec());
        }
        let lb_arns: BTreeSet<String> = tgs
            .iter()
            .flat_map(|t| t.load_balancer_arns().iter().cloned())
            .collect();
        let mut out_nlbs = Vec::new();
        let lb_arns: Vec<String> = lb_arns.into_iter().collect();
        for chunk in lb_arns.chunks(20) {
            self.paced().await;
            let lbs = call(
                "elbv2",
                "DescribeLoadBalancers",
                || Subject::groups(chunk.join(", ")),
                self.client()
                    .describe_load_balancers()
                    .set_load_balancer_arns(Some(chunk.to_vec()))
                    .send(),
            )
            .await?;
            for lb in lbs.load_balancers() {
                if lb.r#type() != Some(&LoadBalancerTypeEnum::Network) {
                    continue;
                }
                let Some(arn) = lb.load_balancer_arn() else {
                    continue;
                };
                self.paced().await;
                let attrs = call(
                    "elbv2",
                    "DescribeLoadBalancerAttributes",
                    || Subject::groups(arn),
                    self.client()
                        .describe_load_balancer_attributes()
                        .load_balancer_arn(arn)
                        .send(),
                )
                .await?;
                let lb_cross = attrs
                    .attributes()
                    .iter()
                    .find(|a| a.key() == Some(CROSS_ZONE))
                    .and_then(|a| a.value())
                    == Some("true");
                let mut zonal = Vec::new();
                for tg in tgs
                    .iter()
                    .filter(|t| t.load_balancer_arns().iter().any(|a| a == arn))
                {
                    let Some(tg_arn) = tg.target_group_arn() else {
                        continue;
                    };
                    self.paced().await;
                    let a = call(
                        "elbv2",
                        "DescribeTargetGroupAttributes",
                        || Subject::groups(tg_arn),
                        self.client()
                            .describe_target_group_attributes()
                            .target_group_arn(tg_arn)
                            .send(),
                    )
                    .await?;
                    let own = a
                        .attributes()
                        .iter()
                        .find(|x| x.key() == Some(CROSS_ZONE))
                        .and_then(|x| x.value())
                        .map(str::to_owned);
                    let cross = match own.as_deref() {
                        Some("true") => true,
                        Some("false") => false,
                        _ => lb_cross,
                    };
                    if !cross {
                        zonal.push(tg.target_group_name().unwrap_or(tg_arn).to_owned());
                    }
                }
                if !zonal.is_empty() {
                    out_nlbs.push(ZonalNlb {
                        load_balancer: lb.load_balancer_name().unwrap_or(arn).to_owned(),
                        load_balancer_arn: arn.to_owned(),
                        target_groups: zonal,
                    });
                }
            }
        }
        Ok(out_nlbs)
    }
}
