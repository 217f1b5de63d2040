//! The [`LoadBalancer`] trait every backend implements.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::target::{Capabilities, Target, TargetId, TargetStatus};

/// A target as listed by a balancer, with its current status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTarget {
    /// The target.
    pub target: Target,
    /// Its status at listing time.
    pub status: TargetStatus,
}

/// A load balancer that can take targets out of rotation and put them back.
///
/// # Contract
///
/// - **Batching.** `status`, `drain`, `disable` and `enable` take a slice of
///   ids and make one backend call per batch wherever the backend allows it
///   (one per node / target group, never one per target when avoidable).
/// - **Order.** `status` returns exactly one status per id, in the order of
///   `ids`. A caller may treat any other length as a protocol error.
/// - **Idempotency.** Draining a draining target, enabling an enabled one,
///   disabling a disabled one succeed and change nothing.
/// - **All or nothing on bad input.** An unknown id gives
///   [`Error::NotFound`](crate::Error::NotFound) and no target of the call is
///   changed; an invalid name gives
///   [`Error::InvalidName`](crate::Error::InvalidName) before anything is sent.
/// - **Honest counts.** `connections` is `None` unless the backend counts
///   in-flight work ([`Capabilities::counts_connections`]); never `Some(0)`
///   for "unknown".
/// - **Fresh health after enable.** After `enable` returns, a `Healthy`
///   status must come from a check made after the enable: a backend whose
///   balancer shows a stale "up" must hide it (report `Unknown`) until a new
///   check has run.
/// - **Errors.** Transient failures (connection refused, throttling,
///   timeouts) are [`Error::Unavailable`](crate::Error::Unavailable),
///   [`Error::Throttled`](crate::Error::Throttled) or
///   [`Error::Timeout`](crate::Error::Timeout) so the engine retries them;
///   everything else is final.
/// - `disable` on a backend without a hard disable returns
///   [`Error::NotSupported`](crate::Error::NotSupported); it never fakes it.
#[async_trait]
pub trait LoadBalancer: Send + Sync + Debug + 'static {
    /// A short human name of this balancer (for messages and reports).
    fn name(&self) -> String;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// How often the engine polls status when the configuration does not
    /// say: fast for HAProxy and nginx, slow for cloud APIs that throttle.
    fn default_poll_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// How an operator puts a kept-out target back by hand on this backend
    /// (a command line, an API call); shown in reports.
    fn enable_hint(&self, id: &TargetId) -> String {
        format!("re-enable {id} on {} once it is fixed", self.name())
    }

    /// Learns targets as an earlier process listed them (a journal's plan,
    /// on resume or restore), so that one this process has never seen
    /// registered — taken out by the dead run — can be put back exactly
    /// (ELBv2: same target group, port and zone). Backends that need no
    /// memory of their targets do nothing (the default). Never changes the
    /// balancer.
    ///
    /// # Errors
    /// A backend's own; the default never fails.
    async fn adopt(&self, targets: &[Target]) -> Result<()> {
        let _ = targets;
        Ok(())
    }

    /// Every target of the pool with its status.
    async fn list(&self) -> Result<Vec<ListedTarget>>;

    /// The status of each id, in order.
    async fn status(&self, ids: &[TargetId]) -> Result<Vec<TargetStatus>>;

    /// Stops new work to the targets; in-flight work runs on.
    async fn drain(&self, ids: &[TargetId]) -> Result<()>;

    /// Takes the targets out hard (maintenance mode), where the backend can.
    async fn disable(&self, ids: &[TargetId]) -> Result<()>;

    /// Puts the targets back in rotation.
    async fn enable(&self, ids: &[TargetId]) -> Result<()>;
}

macro_rules! forward_load_balancer {
    ($($wrapper:ty),*) => {$(
        #[async_trait]
        impl<T: LoadBalancer + ?Sized> LoadBalancer for $wrapper {
            fn name(&self) -> String { (**self).name() }
            fn capabilities(&self) -> Capabilities { (**self).capabilities() }
            fn default_poll_interval(&self) -> Duration { (**self).default_poll_interval() }
            fn enable_hint(&self, id: &TargetId) -> String { (**self).enable_hint(id) }
            async fn adopt(&self, targets: &[Target]) -> Result<()> { (**self).adopt(targets).await }
            async fn list(&self) -> Result<Vec<ListedTarget>> { (**self).list().await }
            async fn status(&self, ids: &[TargetId]) -> Result<Vec<TargetStatus>> { (**self).status(ids).await }
            async fn drain(&self, ids: &[TargetId]) -> Result<()> { (**self).drain(ids).await }
            async fn disable(&self, ids: &[TargetId]) -> Result<()> { (**self).disable(ids).await }
            async fn enable(&self, ids: &[TargetId]) -> Result<()> { (**self).enable(ids).await }
        }
    )*};
}

forward_load_balancer!(Arc<T>, Box<T>);
