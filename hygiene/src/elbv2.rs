//! ELBv2's part in `validate`, `plan` and `run`: a drain timeout that can
//! succeed. An ALB shows a deregistered target `draining` for the whole
//! deregistration delay, so a drain timeout not above it fails (or cuts)
//! the first target; without one from the operator, the drain timeout is
//! the longest delay of the pool's target groups plus a margin. An NLB
//! group that keeps connections open past the delay is named with the
//! setting that fixes it.

use crate::setup::Setup;

/// The concrete ELBv2 balancer a [`Setup`] holds when it is one.
#[cfg(feature = "aws")]
pub(crate) type Elbv2 = hygiene_aws::Elbv2Balancer;

/// Without AWS support there is no ELBv2 balancer.
#[cfg(not(feature = "aws"))]
#[derive(Debug, Clone)]
pub(crate) enum Elbv2 {}

/// Sets the default drain timeout from the deregistration delays when the
/// operator set none, and returns what `check_drain_timeout` finds wrong
/// (each sentence names the target group and the setting that fixes it).
/// Reads the target group attributes once (`DescribeTargetGroupAttributes`);
/// without them, says so and keeps the configured drain timeout.
#[cfg(feature = "aws")]
pub(crate) async fn drain_timeout(setup: &mut Setup) -> Vec<String> {
    let Some(lb) = setup.elbv2.clone() else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    if !setup.drain_timeout_set {
        // Boxed: the SDK's futures are deep (the layout query overflows).
        match Box::pin(lb.default_drain_timeout()).await {
            Ok(d) => match with_drain_timeout(&setup.rollout, d) {
                Ok(r) => {
                    tracing::info!(
                        drain_timeout_s = d.as_secs(),
                        "drain_timeout from the target groups' deregistration delay"
                    );
                    setup.rollout = r;
                }
                Err(e) => problems.push(format!(
                    "the drain timeout derived from the deregistration delay ({}) is refused: {e}; set rollout.drain_timeout",
                    hygiene_core::duration_text::format(d)
                )),
            },
            Err(e) => problems.push(format!(
                "the target groups' deregistration delays cannot be read ({e}): drain_timeout stays {}; grant elasticloadbalancing:DescribeTargetGroupAttributes, or set rollout.drain_timeout above the longest delay",
                hygiene_core::duration_text::format(setup.rollout.drain_timeout())
            )),
        }
    }
    match Box::pin(lb.check_drain_timeout(setup.rollout.drain_timeout())).await {
        Ok(w) => problems.extend(w),
        Err(e) if setup.drain_timeout_set => problems.push(format!(
            "the target groups' deregistration delays cannot be read ({e}): drain_timeout {} is unchecked",
            hygiene_core::duration_text::format(setup.rollout.drain_timeout())
        )),
        // Already said above.
        Err(_) => {}
    }
    problems
}

/// Without AWS support there is nothing to read.
#[cfg(not(feature = "aws"))]
pub(crate) async fn drain_timeout(_setup: &mut Setup) -> Vec<String> {
    Vec::new()
}

/// `config` with another drain timeout, through the same validation as
/// the file.
#[cfg(feature = "aws")]
fn with_drain_timeout(
    config: &hygiene_core::RolloutConfig,
    d: std::time::Duration,
) -> Result<hygiene_core::RolloutConfig, String> {
    let mut v = serde_json::to_value(config).map_err(|e| e.to_string())?;
    let map = v
        .as_object_mut()
        .ok_or_else(|| "the rollout configuration is not a table".to_owned())?;
    map.insert(
        "drain_timeout".to_owned(),
        serde_json::Value::String(hygiene_core::duration_text::format(d)),
    );
    serde_json::from_value(v).map_err(|e| e.to_string())
}
