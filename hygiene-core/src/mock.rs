//! [mockall](https://docs.rs/mockall) mocks of the three traits (feature
//! `mock`): [`MockLoadBalancer`], [`MockExecutor`], [`MockProbe`]. For tests
//! that need an exact sequence of calls and errors — a throttled call,
//! then a success; a status that changes between two reads — beside the
//! tests against real parts, not instead of them.
//!
//! ```
//! use hygiene_core::mock::MockLoadBalancer;
//! use hygiene_core::{LoadBalancer, TargetId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut lb = MockLoadBalancer::new();
//! lb.expect_drain().times(1).returning(|_| Ok(()));
//! lb.drain(&[TargetId::new("web-1").unwrap()]).await.unwrap();
//! # }
//! ```
#![allow(missing_docs, missing_debug_implementations)]

use std::time::Duration;

use async_trait::async_trait;

use crate::balancer::ListedTarget;
use crate::error::Result;
use crate::executor::{ExecHandle, ExecOutcome, HandleSink, Preflight, Recovered};
use crate::probe::ProbeVerdict;
use crate::target::{Capabilities, Target, TargetId, TargetStatus};

mockall::mock! {
    /// A [`LoadBalancer`](crate::LoadBalancer) whose every call is scripted.
    pub LoadBalancer {}

    #[async_trait]
    impl crate::LoadBalancer for LoadBalancer {
        fn name(&self) -> String;
        fn capabilities(&self) -> Capabilities;
        fn default_poll_interval(&self) -> Duration;
        fn enable_hint(&self, id: &TargetId) -> String;
        async fn adopt(&self, targets: &[Target]) -> Result<()>;
        async fn list(&self) -> Result<Vec<ListedTarget>>;
        async fn status(&self, ids: &[TargetId]) -> Result<Vec<TargetStatus>>;
        async fn drain(&self, ids: &[TargetId]) -> Result<()>;
        async fn disable(&self, ids: &[TargetId]) -> Result<()>;
        async fn enable(&self, ids: &[TargetId]) -> Result<()>;
    }
}

mockall::mock! {
    /// An [`Executor`](crate::Executor) whose every call is scripted.
    pub Executor {}

    #[async_trait]
    impl crate::Executor for Executor {
        fn name(&self) -> String;
        async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>>;
        async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>>;
        async fn execute_tracked(&self, targets: &[Target], sink: &HandleSink) -> Result<Vec<ExecOutcome>>;
        async fn recover(&self, target: &Target, handle: &ExecHandle) -> Result<Recovered>;
    }
}

mockall::mock! {
    /// A [`Probe`](crate::Probe) whose every call is scripted.
    pub Probe {}

    #[async_trait]
    impl crate::Probe for Probe {
        async fn check(&self, target: &Target) -> Result<ProbeVerdict>;
    }
}

macro_rules! debug_as_name {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($t))
            }
        }
    )*};
}

debug_as_name!(MockLoadBalancer, MockExecutor, MockProbe);
