#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod attributes;
pub mod autoscaling;
mod balancer;
mod config;
mod discovery;
mod document;
mod error;
mod health;
mod lease;
mod pacing;
mod ssm;
mod standby;
mod zones;

#[cfg(feature = "test-support")]
pub mod moto;

pub use attributes::{DeregistrationDelay, DRAIN_TIMEOUT_MARGIN};
pub use autoscaling::{AutoScalingMode, GroupFacts, GroupKeeper};
pub use balancer::{Elbv2Balancer, OtherTargetGroups};
pub use config::{ApiCallCounter, Elbv2BalancerBuilder, SsmExecutorBuilder};
pub use discovery::{Discovery, InstanceSelector};
pub use lease::DynamoLeaseStore;
pub use ssm::{PreflightCheck, SsmExecutor, StatusApi, MAX_INSTANCES_PER_COMMAND};
pub use standby::{StandbyBalancer, StandbyExecutor};
pub use zones::ZonalNlb;

/// Re-exported AWS configuration types, so callers need no direct
/// dependency on `aws-config` for the common cases.
pub use aws_config::SdkConfig;

impl Elbv2Balancer {
    /// A builder with no AWS configuration yet.
    pub fn builder() -> Elbv2BalancerBuilder {
        Elbv2BalancerBuilder::new()
    }

    /// A builder on the standard AWS configuration chain.
    pub async fn from_env() -> Elbv2BalancerBuilder {
        Elbv2BalancerBuilder::from_env().await
    }
}

impl SsmExecutor {
    /// A builder for `document` with no AWS configuration yet.
    pub fn builder(document: impl Into<String>) -> SsmExecutorBuilder {
        SsmExecutorBuilder::new(document)
    }

    /// A builder for `document` on the standard AWS configuration chain.
    pub async fn from_env(document: impl Into<String>) -> SsmExecutorBuilder {
        SsmExecutorBuilder::from_env(document).await
    }
}
