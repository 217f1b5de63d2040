//! Target group attributes that bear on a rollout: the deregistration
//! delay (how long a deregistered target stays `draining`) and, on NLB,
//! whether connections are closed when it ends.
//!
//! Keys as the ELBv2 API reference (`TargetGroupAttribute`) gives them:
//! `deregistration_delay.timeout_seconds` (0–3600, default 300) and, for
//! Network Load Balancers, `deregistration_delay.connection_termination.enabled`
//! (default `false`).

use std::time::Duration;

use hygiene_core::Result;
use tracing::warn;

use crate::error::{call, Subject};
use crate::Elbv2Balancer;

/// ELBv2's default deregistration delay.
const DEFAULT_DELAY: Duration = Duration::from_secs(300);

/// What a drain timeout derived from the deregistration delay adds to it:
/// an ALB shows `draining` for the whole delay, even once the target has
/// no request left (ELB user guide, "Deregistration delay"), and the
/// engine sees `unused` one poll (5 s ± 20 %) after it.
pub const DRAIN_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

/// What one target group does when a target is deregistered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeregistrationDelay {
    /// The target group's name.
    pub target_group: String,
    /// The target group's ARN.
    pub target_group_arn: String,
    /// `deregistration_delay.timeout_seconds`: how long ELBv2 keeps a
    /// deregistered target `draining` before it is `unused`.
    pub delay: Duration,
    /// `deregistration_delay.connection_termination.enabled` (NLB only;
    /// `None` where the group has no such attribute): whether the NLB
    /// closes connections still open when the delay ends. Without it, a
    /// long-lived connection can outlive the delay and be cut by the
    /// maintenance itself.
    pub connection_termination: Option<bool>,
}

impl Elbv2Balancer {
    /// The deregistration delay of every target group a drain touches
    /// (one `DescribeTargetGroupAttributes` each, read once and kept).
    ///
    /// # Errors
    /// As [`LoadBalancer::list`](hygiene_core::LoadBalancer::list);
    /// [`Error::PermissionDenied`](hygiene_core::Error::PermissionDenied)
    /// without `elasticloadbalancing:DescribeTargetGroupAttributes`.
    pub async fn deregistration_delays(&self) -> Result<Vec<DeregistrationDelay>> {
        self.inner()
            .delays
            .get_or_try_init(|| Box::pin(self.read_delays()))
            .await
            .cloned()
    }

    async fn read_delays(&self) -> Result<Vec<DeregistrationDelay>> {
        let mut out = Vec::new();
        for g in self.groups().await?.iter().filter(|g| self.managed(g)) {
            self.paced().await;
            let attrs = call(
                "elbv2",
                "DescribeTargetGroupAttributes",
                || Subject::groups(g.arn.clone()),
                self.client()
                    .describe_target_group_attributes()
                    .target_group_arn(&g.arn)
                    .send(),
            )
            .await?;
            let value = |key: &str| {
                attrs
                    .attributes()
                    .iter()
                    .find(|a| a.key() == Some(key))
                    .and_then(|a| a.value())
                    .map(str::to_owned)
            };
            let delay = value("deregistration_delay.timeout_seconds")
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(DEFAULT_DELAY, Duration::from_secs);
            let connection_termination =
                value("deregistration_delay.connection_termination.enabled").map(|v| v == "true");
            out.push(DeregistrationDelay {
                target_group: g.name.clone(),
                target_group_arn: g.arn.clone(),
                delay,
                connection_termination,
            });
        }
        Ok(out)
    }

    /// The longest deregistration delay of the target groups a drain
    /// touches: a rollout's `drain_timeout` should be above it (e.g. this
    /// plus 30 s), or targets are still `draining` when it runs out.
    ///
    /// # Errors
    /// As [`deregistration_delays`](Self::deregistration_delays).
    pub async fn deregistration_delay(&self) -> Result<Duration> {
        Ok(self
            .deregistration_delays()
            .await?
            .iter()
            .map(|d| d.delay)
            .max()
            .unwrap_or(DEFAULT_DELAY))
    }

    /// The drain timeout a rollout over this pool should use when the
    /// operator sets none: the longest deregistration delay of the groups
    /// a drain touches (for a pool of instances: the instances' groups),
    /// plus [`DRAIN_TIMEOUT_MARGIN`]. A shorter one ends while ELBv2 still
    /// shows the first target `draining` (an ALB does for the whole delay),
    /// and that target fails or is maintained with requests in flight.
    ///
    /// # Errors
    /// As [`deregistration_delays`](Self::deregistration_delays).
    pub async fn default_drain_timeout(&self) -> Result<Duration> {
        Ok(self.deregistration_delay().await? + DRAIN_TIMEOUT_MARGIN)
    }

    /// What is wrong with `drain_timeout` for this pool, one sentence per
    /// target group, each also logged as a warning: a drain timeout not
    /// above a group's deregistration delay ends while ELBv2 still drains
    /// (the rollout then fails the target, or maintains it with requests
    /// in flight under `OnDrainTimeout::Proceed`), and an NLB group that
    /// does not close connections at the end of the delay can leave
    /// long-lived connections open into the maintenance.
    ///
    /// # Errors
    /// As [`deregistration_delays`](Self::deregistration_delays).
    pub async fn check_drain_timeout(&self, drain_timeout: Duration) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        for d in self.deregistration_delays().await? {
            if drain_timeout <= d.delay {
                warnings.push(format!(
                    "drain_timeout {drain_timeout:?} is not above the deregistration delay of target group {} ({:?}): targets are still draining when it runs out; set drain_timeout to at least {:?}, or lower deregistration_delay.timeout_seconds",
                    d.target_group,
                    d.delay,
                    d.delay + DRAIN_TIMEOUT_MARGIN
                ));
            }
            if d.connection_termination == Some(false) {
                warnings.push(format!(
                    "target group {} (NLB) keeps sending on open connections after the deregistration delay (deregistration_delay.connection_termination.enabled = false): a target reads drained (unused) while long-lived connections still carry requests, which the maintenance then cuts; set deregistration_delay.connection_termination.enabled = true: aws elbv2 modify-target-group-attributes --target-group-arn {} --attributes Key=deregistration_delay.connection_termination.enabled,Value=true",
                    d.target_group, d.target_group_arn
                ));
            }
        }
        for w in &warnings {
            warn!(warning = %w, "drain timeout check");
        }
        Ok(warnings)
    }
}
