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

/// What one target group does when a target is deregistered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeregistrationDelay {
    /// The target group's name.
    pub target_group: String,
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
            .get_or_try_init(|| self.read_delays())
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
                    d.delay + Duration::from_secs(30)
                ));
            }
            if d.connection_termination == Some(false) {
                warnings.push(format!(
                    "target group {} keeps connections open after the deregistration delay (deregistration_delay.connection_termination.enabled = false): long-lived connections may still be open when the maintenance starts; enable it to close them at the end of the delay",
                    d.target_group
                ));
            }
        }
        for w in &warnings {
            warn!(warning = %w, "drain timeout check");
        }
        Ok(warnings)
    }
}
