//! Rollout configuration, validated when built.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gate::OnGateTimeout;
use crate::target::{Target, TargetId};

/// A count of targets, or a percent of some total.
///
/// In configuration files (serde) a count is a number (`2`) and a percent a
/// string (`"25%"`); `"3"` is read as a count too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// An absolute number of targets.
    Count(usize),
    /// A percent (0–100) of a total.
    Percent(u8),
}

impl Amount {
    /// The amount out of `total`, percent rounded **down**.
    pub fn floor_of(self, total: usize) -> usize {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => total * usize::from(p) / 100,
        }
    }

    /// The amount out of `total`, percent rounded **up**.
    pub fn ceil_of(self, total: usize) -> usize {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => (total * usize::from(p)).div_ceil(100),
        }
    }

    fn check_percent(self, field: &'static str) -> Result<()> {
        match self {
            Self::Percent(p) if p > 100 => Err(Error::invalid_config(
                field,
                format!("{p}% is over 100%; give a percent from 0 to 100 or a count"),
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Amount {
    type Err = Error;
    /// `"3"` is a count, `"25%"` a percent.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = || {
            Error::invalid_config(
                "amount",
                format!("{s:?} is neither a count (\"3\") nor a percent (\"25%\")"),
            )
        };
        match s.strip_suffix('%') {
            Some(p) => {
                let p: u16 = p.trim().parse().map_err(|_| bad())?;
                let p = u8::try_from(p).ok().filter(|p| *p <= 100).ok_or_else(|| {
                    Error::invalid_config("amount", format!("{s:?} is over 100%"))
                })?;
                Ok(Self::Percent(p))
            }
            None => s.parse().map(Self::Count).map_err(|_| bad()),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Count(n) => s.serialize_u64(*n as u64),
            Self::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a count (2) or a percent (\"25%\")"))?
        {
            Raw::Count(n) => usize::try_from(n)
                .map(Self::Count)
                .map_err(|_| serde::de::Error::custom(format!("{n} is too large a count"))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Durations in configuration files: `"90s"`, `"5m"`, `"1h 30m"`, `"250ms"`
/// (jiff's friendly format; ISO 8601 `"PT5M"` is accepted too).
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses a duration such as `"90s"` or `"5m"`.
    ///
    /// # Errors
    /// A message naming the text and the expected form.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let bad = |why: String| {
            format!("{text:?} is not a duration ({why}); write it as \"90s\", \"5m\", \"1h 30m\" or \"250ms\"")
        };
        let d: jiff::SignedDuration = text.trim().parse().map_err(|e| bad(format!("{e}")))?;
        Duration::try_from(d).map_err(|_| bad("it is negative".into()))
    }

    /// Writes a duration in the friendly format (`"5m"`, `"1s 500ms"`).
    pub fn format(d: Duration) -> String {
        match jiff::SignedDuration::try_from(d) {
            Ok(s) => format!("{s:#}"),
            Err(_) => format!("{}s", d.as_secs()),
        }
    }

    /// Serializes as text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Deserializes from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// The same for an optional duration.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Serializes as text, or nothing.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&super::format(*d)),
                None => s.serialize_none(),
            }
        }

        /// Deserializes from text, or nothing.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|t| super::parse(&t).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// How targets are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pacing {
    /// Batches of `batch_size`: the next batch starts when the whole batch
    /// has finished (Ansible `serial`, SSM `MaxConcurrency`). One executor
    /// call per batch. The default.
    #[default]
    Batches,
    /// A rolling window: up to `batch_size` targets in progress, and the
    /// next target starts as soon as one finishes. One executor call per
    /// target, so a slow target never holds the others back.
    Window,
}

/// How targets are grouped into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchBy {
    /// Any targets together, in the pool's order (the default).
    #[default]
    Target,
    /// Availability Zone by zone: a batch (or a window) never holds targets
    /// of two zones, the zones are rolled one after another (sorted by
    /// name), and every target of a zone has finished before the next zone
    /// starts. Every target to maintain needs a zone
    /// ([`RolloutConfig::zone_of`]).
    Zone,
}

/// On resume, what to do with a target whose maintenance started and whose
/// outcome the journal does not know (the process died while it ran).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInterrupted {
    /// Keep it out of rotation and report it by name, with the way to put
    /// it back (the default: nobody knows what state it is in). Never put
    /// back by the run, whatever [`OnFailure`] says.
    #[default]
    Fail,
    /// Run the maintenance again (for maintenances safe to repeat). Only
    /// when the executor says the first one is gone: one that cannot be
    /// asked, or cannot confirm its end, is never run a second time.
    Rerun,
}

/// What to do when a target is still not drained at `drain_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDrainTimeout {
    /// Go on with the maintenance anyway, cutting what is still in flight
    /// (ELBv2 deregistration-delay semantics).
    Proceed,
    /// Fail the target; it is handled by [`OnFailure`]. The default: a target
    /// with work stuck on it is not worth cutting requests for.
    #[default]
    Fail,
}

/// What happens to a target whose maintenance or health check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Leave it out of rotation and report it by name with the way to put it
    /// back (the default: a broken server must not take traffic).
    #[default]
    KeepOut,
    /// Put it back in rotation anyway.
    Restore,
}

/// Which targets of the pool the run maintains.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every target of the pool, in the balancer's order.
    #[default]
    All,
    /// These targets, in this order.
    Named(Vec<TargetId>),
}

/// Bounds on retries of retryable balancer and executor errors (jittered
/// exponential backoff through `backon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// First delay.
    #[serde(with = "duration_text")]
    pub min_delay: Duration,
    /// Largest single delay.
    #[serde(with = "duration_text")]
    pub max_delay: Duration,
    /// Largest sum of delays.
    #[serde(with = "duration_text")]
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_total: Duration::from_secs(30),
        }
    }
}

/// A validated rollout configuration; build it with [`RolloutConfig::builder`].
///
/// # Semantics
///
/// - **`batch_size`**: how many selected targets are worked on at once; a
///   percent of the *selected* targets, rounded down, at least 1. Targets
///   kept out after a failure no longer count against it.
/// - **`min_healthy`**: how many targets of the *whole pool* must be in
///   service and healthy at every instant; a percent is rounded **up** (the
///   safe side). A batch that would break it is shrunk; when not even one
///   target fits, the run waits up to `capacity_timeout`, then aborts.
/// - **`max_failures`**: the run aborts when **more than** N targets have
///   failed, N being a count or a percent of the selected targets rounded
///   down (SSM `MaxErrors` semantics).
///
///   Worked example: 10 selected targets, batch size 2.
///   * `max_failures = 0`: the first failure aborts the run once its batch
///     has finished.
///   * `max_failures = 1`: one failure is tolerated; the second aborts.
///   * `max_failures = 15%`: 15% of 10 is 1.5, rounded down to 1: same as 1.
///   * `max_failures = 10%`: 1, likewise; `max_failures = 9%`: 0.
///
///   The batch in progress always finishes (drain, execute, enable) before
///   the run aborts, so no target is abandoned half-way.
/// - **`drain_timeout`** / **`on_drain_timeout`**: how long to wait for a
///   target's in-flight work to end, and what to do after.
/// - **`health_timeout`**: how long after the enable a target has to be
///   seen healthy (after the probe, if any) before it fails.
/// - **`warmup`**: time to wait after a batch is healthy before the next
///   batch starts (ASG instance warmup); not waited after the last batch.
/// - **`poll_interval`**: how often status is polled; `None` takes the
///   balancer's [`default_poll_interval`](crate::LoadBalancer::default_poll_interval).
/// - **`canary`**: the first batch is a single target, and batches stay
///   one target wide until one target has been maintained and verified
///   healthy (a canary whose preflight failed, or that was skipped, is no
///   canary).
/// - **`pacing`**: [`Pacing::Batches`] or [`Pacing::Window`]. In both, at most
///   `batch_size` targets are *in progress* (preflight, draining, executing,
///   probing, enabling, verifying, warming up) at once. Targets kept out
///   after a failure are no longer in progress: they are bounded by
///   `max_failures`, and `min_healthy` protects capacity against both.
/// - **`call_timeout`**: the time limit of each balancer call, preflight
///   and probe attempt (default 30 s); a call past it counts as a timeout
///   (retried like other retryable errors).
/// - **`execute_timeout`**: the time limit of one maintenance call (default
///   3 h); past it the maintenance fails (it is not retried).
/// - **`on_failure`**: see [`OnFailure`].
/// - **`wait_between_batches`**: a soak time after each batch is back
///   (every target of it finished) and before the next batch starts, with
///   nothing in progress; not waited after the last batch. Unlike `warmup`,
///   the batch's targets are already reported done when it starts, and the
///   gates asked after the batch ([`crate::Gate`]) are asked once it is
///   over. With [`Pacing::Window`] a batch is a group of targets started
///   together.
/// - **`on_gate_timeout`**: what happens when a gate still says no at its
///   timeout: see [`OnGateTimeout`].
///
/// Deserializing (serde) goes through the same validation as
/// [`RolloutConfigBuilder::build`]; unknown keys are refused; durations are
/// text (`"90s"`, `"5m"`), amounts `2` or `"25%"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RolloutConfigSpec", into = "RolloutConfigSpec")]
pub struct RolloutConfig {
    pub(crate) batch_size: Amount,
    pub(crate) min_healthy: Amount,
    pub(crate) max_failures: Amount,
    pub(crate) drain_timeout: Duration,
    pub(crate) on_drain_timeout: OnDrainTimeout,
    pub(crate) health_timeout: Duration,
    pub(crate) warmup: Duration,
    pub(crate) poll_interval: Option<Duration>,
    pub(crate) capacity_timeout: Duration,
    pub(crate) canary: bool,
    pub(crate) on_failure: OnFailure,
    pub(crate) selection: Selection,
    pub(crate) retry: RetryPolicy,
    pub(crate) pacing: Pacing,
    pub(crate) call_timeout: Duration,
    pub(crate) execute_timeout: Duration,
    pub(crate) on_interrupted: OnInterrupted,
    pub(crate) batch_by: BatchBy,
    pub(crate) zone_min_healthy: Option<Amount>,
    pub(crate) zones: BTreeMap<TargetId, String>,
    pub(crate) wait_between_batches: Duration,
    pub(crate) on_gate_timeout: OnGateTimeout,
}

/// The serde form of [`RolloutConfig`]: every key optional (the defaults
/// of [`RolloutConfig::builder`]), unknown keys refused, validated by the
/// builder on the way in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RolloutConfigSpec {
    batch_size: Amount,
    min_healthy: Amount,
    max_failures: Amount,
    #[serde(with = "duration_text")]
    drain_timeout: Duration,
    on_drain_timeout: OnDrainTimeout,
    #[serde(with = "duration_text")]
    health_timeout: Duration,
    #[serde(with = "duration_text")]
    warmup: Duration,
    #[serde(
        with = "duration_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    poll_interval: Option<Duration>,
    #[serde(with = "duration_text")]
    capacity_timeout: Duration,
    canary: bool,
    on_failure: OnFailure,
    selection: Selection,
    retry: RetryPolicy,
    pacing: Pacing,
    #[serde(with = "duration_text")]
    call_timeout: Duration,
    #[serde(with = "duration_text")]
    execute_timeout: Duration,
    on_interrupted: OnInterrupted,
    #[serde(skip_serializing_if = "is_default")]
    batch_by: BatchBy,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone_min_healthy: Option<Amount>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    zones: BTreeMap<TargetId, String>,
    #[serde(with = "duration_text")]
    wait_between_batches: Duration,
    on_gate_timeout: OnGateTimeout,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Default for RolloutConfigSpec {
    fn default() -> Self {
        RolloutConfig::unchecked_default().into()
    }
}

impl From<RolloutConfig> for RolloutConfigSpec {
    fn from(c: RolloutConfig) -> Self {
        Self {
            batch_size: c.batch_size,
            min_healthy: c.min_healthy,
            max_failures: c.max_failures,
            drain_timeout: c.drain_timeout,
            on_drain_timeout: c.on_drain_timeout,
            health_timeout: c.health_timeout,
            warmup: c.warmup,
            poll_interval: c.poll_interval,
            capacity_timeout: c.capacity_timeout,
            canary: c.canary,
            on_failure: c.on_failure,
            selection: c.selection,
            retry: c.retry,
            pacing: c.pacing,
            call_timeout: c.call_timeout,
            execute_timeout: c.execute_timeout,
            on_interrupted: c.on_interrupted,
            batch_by: c.batch_by,
            zone_min_healthy: c.zone_min_healthy,
            zones: c.zones,
            wait_between_batches: c.wait_between_batches,
            on_gate_timeout: c.on_gate_timeout,
        }
    }
}

impl TryFrom<RolloutConfigSpec> for RolloutConfig {
    type Error = Error;
    fn try_from(s: RolloutConfigSpec) -> Result<Self> {
        RolloutConfigBuilder {
            config: Self {
                batch_size: s.batch_size,
                min_healthy: s.min_healthy,
                max_failures: s.max_failures,
                drain_timeout: s.drain_timeout,
                on_drain_timeout: s.on_drain_timeout,
                health_timeout: s.health_timeout,
                warmup: s.warmup,
                poll_interval: s.poll_interval,
                capacity_timeout: s.capacity_timeout,
                canary: s.canary,
                on_failure: s.on_failure,
                selection: s.selection,
                retry: s.retry,
                pacing: s.pacing,
                call_timeout: s.call_timeout,
                execute_timeout: s.execute_timeout,
                on_interrupted: s.on_interrupted,
                batch_by: s.batch_by,
                zone_min_healthy: s.zone_min_healthy,
                zones: s.zones,
                wait_between_batches: s.wait_between_batches,
                on_gate_timeout: s.on_gate_timeout,
            },
        }
        .build()
    }
}

impl RolloutConfig {
    /// A builder with the defaults: batch 1, `min_healthy` 0, `max_failures`
    /// 0, drain timeout 300 s (fail), health timeout 300 s, no warmup,
    /// balancer's poll interval, capacity timeout 300 s, no canary, keep
    /// failed targets out, all targets.
    pub fn builder() -> RolloutConfigBuilder {
        RolloutConfigBuilder {
            config: Self::unchecked_default(),
        }
    }

    fn unchecked_default() -> Self {
        Self {
            batch_size: Amount::Count(1),
            min_healthy: Amount::Count(0),
            max_failures: Amount::Count(0),
            drain_timeout: Duration::from_secs(300),
            on_drain_timeout: OnDrainTimeout::Fail,
            health_timeout: Duration::from_secs(300),
            warmup: Duration::ZERO,
            poll_interval: None,
            capacity_timeout: Duration::from_secs(300),
            canary: false,
            on_failure: OnFailure::KeepOut,
            selection: Selection::All,
            retry: RetryPolicy::default(),
            pacing: Pacing::Batches,
            call_timeout: Duration::from_secs(30),
            execute_timeout: Duration::from_secs(3 * 3600),
            on_interrupted: OnInterrupted::Fail,
            batch_by: BatchBy::Target,
            zone_min_healthy: None,
            zones: BTreeMap::new(),
            wait_between_batches: Duration::ZERO,
            on_gate_timeout: OnGateTimeout::Abort,
        }
    }

    /// Batch size.
    pub fn batch_size(&self) -> Amount {
        self.batch_size
    }
    /// Minimum healthy targets of the pool.
    pub fn min_healthy(&self) -> Amount {
        self.min_healthy
    }
    /// Failures tolerated.
    pub fn max_failures(&self) -> Amount {
        self.max_failures
    }
    /// Drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }
    /// What to do at the drain timeout.
    pub fn on_drain_timeout(&self) -> OnDrainTimeout {
        self.on_drain_timeout
    }
    /// Health timeout.
    pub fn health_timeout(&self) -> Duration {
        self.health_timeout
    }
    /// Warmup after each batch.
    pub fn warmup(&self) -> Duration {
        self.warmup
    }
    /// Poll interval, when set.
    pub fn poll_interval(&self) -> Option<Duration> {
        self.poll_interval
    }
    /// Capacity timeout.
    pub fn capacity_timeout(&self) -> Duration {
        self.capacity_timeout
    }
    /// Canary first batch.
    pub fn canary(&self) -> bool {
        self.canary
    }
    /// Failure policy.
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }
    /// Target selection.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }
    /// Retry policy.
    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }
    /// Pacing.
    pub fn pacing(&self) -> Pacing {
        self.pacing
    }
    /// Time limit of each balancer call, preflight and probe attempt.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }
    /// Time limit of one maintenance call.
    pub fn execute_timeout(&self) -> Duration {
        self.execute_timeout
    }
    /// On resume, what happens to a maintenance of unknown outcome.
    pub fn on_interrupted(&self) -> OnInterrupted {
        self.on_interrupted
    }
    /// Soak time between batches.
    pub fn wait_between_batches(&self) -> Duration {
        self.wait_between_batches
    }
    /// What happens when a gate still says no at its timeout.
    pub fn on_gate_timeout(&self) -> OnGateTimeout {
        self.on_gate_timeout
    }

    /// Batch size for `selected` targets: percent rounded down, at least 1.
    pub fn batch_len(&self, selected: usize) -> usize {
        self.batch_size.floor_of(selected).max(1)
    }

    /// Failures tolerated out of `selected` targets (abort when more fail).
    pub fn failures_allowed(&self, selected: usize) -> usize {
        self.max_failures.floor_of(selected)
    }

    /// Targets of a pool of `pool` that must stay healthy (percent rounded up).
    pub fn min_healthy_of(&self, pool: usize) -> usize {
        self.min_healthy.ceil_of(pool)
    }

    /// How targets are grouped into batches.
    pub fn batch_by(&self) -> BatchBy {
        self.batch_by
    }

    /// The floor per Availability Zone, if any: in every zone, this count
    /// or percent (rounded up) of the zone's pool stays healthy in service,
    /// on top of `min_healthy` for the whole pool.
    pub fn zone_min_healthy(&self) -> Option<Amount> {
        self.zone_min_healthy
    }

    /// Targets of a zone of `zone_pool` targets that must stay healthy
    /// (percent rounded up; 0 without a zone floor).
    pub fn zone_min_healthy_of(&self, zone_pool: usize) -> usize {
        self.zone_min_healthy.map_or(0, |a| a.ceil_of(zone_pool))
    }

    /// Zones given in the configuration, by target (HAProxy and NGINX
    /// servers know none of their own).
    pub fn zones(&self) -> &BTreeMap<TargetId, String> {
        &self.zones
    }

    /// A target's Availability Zone: the configured one, else the one the
    /// balancer knows (`meta["availability_zone"]`, else the zone it is
    /// registered with, unless that is ELBv2's `all`).
    pub fn zone_of<'a>(&'a self, target: &'a Target) -> Option<&'a str> {
        self.zones
            .get(&target.id)
            .map(String::as_str)
            .or_else(|| target.meta.get(ZONE_META).map(String::as_str))
            .or_else(|| target.zone.as_deref().filter(|z| *z != "all"))
            .filter(|z| !z.is_empty())
    }
}

/// The [`Target::meta`] key a balancer sets to a target's Availability Zone
/// when it knows it (an ELBv2 instance's placement).
pub const ZONE_META: &str = "availability_zone";

/// Builder of [`RolloutConfig`]; [`build`](Self::build) validates every field.
#[derive(Debug, Clone)]
pub struct RolloutConfigBuilder {
    config: RolloutConfig,
}

impl RolloutConfigBuilder {
    /// Targets worked on at once (count, or percent of the selected targets).
    pub fn batch_size(mut self, amount: Amount) -> Self {
        self.config.batch_size = amount;
        self
    }
    /// Targets of the whole pool that must stay healthy and in service.
    /// A target the balancer reports standing by
    /// ([`TargetStatus::standby`](crate::TargetStatus::standby): an HAProxy
    /// backup or weight-0 server) is never counted: it carries no load
    /// while the others serve.
    pub fn min_healthy(mut self, amount: Amount) -> Self {
        self.config.min_healthy = amount;
        self
    }
    /// Failures tolerated; the run aborts when more fail.
    pub fn max_failures(mut self, amount: Amount) -> Self {
        self.config.max_failures = amount;
        self
    }
    /// How long to wait for in-flight work to end.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }
    /// What to do at the drain timeout.
    pub fn on_drain_timeout(mut self, action: OnDrainTimeout) -> Self {
        self.config.on_drain_timeout = action;
        self
    }
    /// How long a target has to be seen healthy after the enable.
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.config.health_timeout = timeout;
        self
    }
    /// Wait after each batch is healthy.
    pub fn warmup(mut self, warmup: Duration) -> Self {
        self.config.warmup = warmup;
        self
    }
    /// Status poll interval (default: the balancer's).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = Some(interval);
        self
    }
    /// How long to wait for capacity before aborting.
    pub fn capacity_timeout(mut self, timeout: Duration) -> Self {
        self.config.capacity_timeout = timeout;
        self
    }
    /// First batch is a single target.
    pub fn canary(mut self, canary: bool) -> Self {
        self.config.canary = canary;
        self
    }
    /// Failure policy.
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.config.on_failure = policy;
        self
    }
    /// Which targets to maintain.
    pub fn selection(mut self, selection: Selection) -> Self {
        self.config.selection = selection;
        self
    }
    /// Retry policy for retryable errors.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }
    /// Batches (default) or a rolling window.
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.config.pacing = pacing;
        self
    }
    /// Time limit of each balancer call, preflight and probe attempt.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.config.call_timeout = timeout;
        self
    }
    /// Time limit of one maintenance call.
    pub fn execute_timeout(mut self, timeout: Duration) -> Self {
        self.config.execute_timeout = timeout;
        self
    }
    /// On resume, what happens to a maintenance of unknown outcome.
    pub fn on_interrupted(mut self, policy: OnInterrupted) -> Self {
        self.config.on_interrupted = policy;
        self
    }
    /// Batches by target (default) or by Availability Zone.
    pub fn batch_by(mut self, by: BatchBy) -> Self {
        self.config.batch_by = by;
        self
    }
    /// Targets of each zone that must stay healthy and in service.
    pub fn zone_min_healthy(mut self, amount: Amount) -> Self {
        self.config.zone_min_healthy = Some(amount);
        self
    }
    /// Zones by target, for balancers that know none.
    pub fn zones(mut self, zones: BTreeMap<TargetId, String>) -> Self {
        self.config.zones = zones;
        self
    }
    /// A soak time after each batch is back, before the next one starts.
    pub fn wait_between_batches(mut self, wait: Duration) -> Self {
        self.config.wait_between_batches = wait;
        self
    }
    /// What happens when a gate still says no at its timeout.
    pub fn on_gate_timeout(mut self, action: OnGateTimeout) -> Self {
        self.config.on_gate_timeout = action;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field: batch size 0, a percent over
    /// 100, `min_healthy` of 100% (no batch can ever satisfy it), an empty or
    /// duplicated named selection, a zero poll interval, health timeout,
    /// call timeout or execute timeout.
    pub fn build(self) -> Result<RolloutConfig> {
        let c = self.config;
        c.batch_size.check_percent("batch_size")?;
        c.min_healthy.check_percent("min_healthy")?;
        c.max_failures.check_percent("max_failures")?;
        if matches!(c.batch_size, Amount::Count(0) | Amount::Percent(0)) {
            return Err(Error::invalid_config(
                "batch_size",
                "must be at least 1 target or 1%",
            ));
        }
        if let Some(z) = c.zone_min_healthy {
            z.check_percent("zone_min_healthy")?;
            if z == Amount::Percent(100) {
                return Err(Error::invalid_config(
                    "zone_min_healthy",
                    "100% of a zone can never stay healthy while one of its targets is out; lower it",
                ));
            }
        }
        if let Some((id, _)) = c.zones.iter().find(|(_, z)| z.trim().is_empty()) {
            return Err(Error::invalid_config(
                "zones",
                format!("target {id} has an empty zone; give its Availability Zone's name"),
            ));
        }
        if c.min_healthy == Amount::Percent(100) {
            return Err(Error::invalid_config(
                "min_healthy",
                "100% of the pool can never stay healthy while a target is out: no batch can satisfy it; lower it",
            ));
        }
        if let Selection::Named(ids) = &c.selection {
            if ids.is_empty() {
                return Err(Error::invalid_config(
                    "selection",
                    "the named selection is empty; name at least one target or select all",
                ));
            }
            let mut seen = BTreeSet::new();
            if let Some(dup) = ids.iter().find(|id| !seen.insert(*id)) {
                return Err(Error::invalid_config(
                    "selection",
                    format!("target {dup} is named twice; name each target once"),
                ));
            }
        }
        if c.poll_interval == Some(Duration::ZERO) {
            return Err(Error::invalid_config(
                "poll_interval",
                "must be greater than zero",
            ));
        }
        if c.health_timeout.is_zero() {
            return Err(Error::invalid_config(
                "health_timeout",
                "must be greater than zero: a target needs time to be seen healthy",
            ));
        }
        if c.call_timeout.is_zero() {
            return Err(Error::invalid_config(
                "call_timeout",
                "must be greater than zero: every balancer call needs time to answer",
            ));
        }
        if c.execute_timeout.is_zero() {
            return Err(Error::invalid_config(
                "execute_timeout",
                "must be greater than zero: the maintenance needs time to run",
            ));
        }
        if c.retry.min_delay > c.retry.max_delay {
            return Err(Error::invalid_config(
                "retry",
                "min_delay is larger than max_delay",
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<RolloutConfig>) -> &'static str {
        match r {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn batch_size_zero_is_rejected() {
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .batch_size(Amount::Count(0))
                    .build()
            ),
            "batch_size"
        );
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .batch_size(Amount::Percent(0))
                    .build()
            ),
            "batch_size"
        );
    }

    #[test]
    fn percent_over_100_is_rejected() {
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .batch_size(Amount::Percent(101))
                    .build()
            ),
            "batch_size"
        );
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .min_healthy(Amount::Percent(150))
                    .build()
            ),
            "min_healthy"
        );
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .max_failures(Amount::Percent(200))
                    .build()
            ),
            "max_failures"
        );
    }

    #[test]
    fn unsatisfiable_min_healthy_is_rejected() {
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .min_healthy(Amount::Percent(100))
                    .build()
            ),
            "min_healthy"
        );
    }

    #[test]
    fn empty_and_duplicate_selection_is_rejected() {
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .selection(Selection::Named(vec![]))
                    .build()
            ),
            "selection"
        );
        let a = TargetId::new("a").expect("id");
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .selection(Selection::Named(vec![a.clone(), a]))
                    .build()
            ),
            "selection"
        );
    }

    #[test]
    fn zero_intervals_are_rejected() {
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .poll_interval(Duration::ZERO)
                    .build()
            ),
            "poll_interval"
        );
        assert_eq!(
            field(
                RolloutConfig::builder()
                    .health_timeout(Duration::ZERO)
                    .build()
            ),
            "health_timeout"
        );
    }

    #[test]
    fn rounding() {
        let c = RolloutConfig::builder()
            .batch_size(Amount::Percent(10))
            .max_failures(Amount::Percent(15))
            .min_healthy(Amount::Percent(75))
            .build()
            .expect("valid");
        assert_eq!(
            c.batch_len(5),
            1,
            "10% of 5 rounds down to 0, then up to the minimum 1"
        );
        assert_eq!(c.batch_len(25), 2);
        assert_eq!(c.failures_allowed(10), 1, "15% of 10 = 1.5 rounds down");
        assert_eq!(c.failures_allowed(6), 0);
        assert_eq!(c.min_healthy_of(10), 8, "75% of 10 = 7.5 rounds up");
    }

    #[test]
    fn deserializing_validates() {
        for (json, want) in [
            (r#"{"batch_size": "0%"}"#, "batch_size"),
            (r#"{"min_healthy": "250%"}"#, "over 100%"),
            (r#"{"health_timeout": "0s"}"#, "health_timeout"),
            (r#"{"batch_size": 0}"#, "batch_size"),
            (r#"{"bacth_size": 2}"#, "unknown field"),
            (r#"{"drain_timeout": "soon"}"#, "not a duration"),
        ] {
            let e = serde_json::from_str::<RolloutConfig>(json).expect_err(json);
            assert!(e.to_string().contains(want), "{json}: {e}");
        }
        let c: RolloutConfig = serde_json::from_str(
            r#"{"batch_size": "25%", "max_failures": 2, "drain_timeout": "90s", "pacing": "window"}"#,
        )
        .expect("valid");
        assert_eq!(c.batch_size(), Amount::Percent(25));
        assert_eq!(c.max_failures(), Amount::Count(2));
        assert_eq!(c.drain_timeout(), Duration::from_secs(90));
        assert_eq!(c.pacing(), Pacing::Window);
        assert_eq!(
            c.health_timeout(),
            Duration::from_secs(300),
            "defaults fill the rest"
        );
        let back: RolloutConfig =
            serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("round trip");
        assert_eq!(back, c);
    }

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(duration_text::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(
            duration_text::parse("1h 30m"),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(
            duration_text::parse("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert!(duration_text::parse("-5s").is_err());
        assert_eq!(
            duration_text::parse(&duration_text::format(Duration::from_millis(1500))),
            Ok(Duration::from_millis(1500))
        );
    }

    #[test]
    fn amount_parses() {
        assert_eq!("3".parse::<Amount>().ok(), Some(Amount::Count(3)));
        assert_eq!("25%".parse::<Amount>().ok(), Some(Amount::Percent(25)));
        assert!("101%".parse::<Amount>().is_err());
        assert!("-1".parse::<Amount>().is_err());
        assert!("x%".parse::<Amount>().is_err());
    }
}
