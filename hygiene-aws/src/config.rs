//! Where the AWS clients come from: the standard configuration chain, an
//! explicit [`SdkConfig`], an endpoint override (moto, VPC endpoints), and
//! an optional [`ApiCallCounter`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ssm::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ssm::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use hygiene_core::{Error, Result};

/// Loads the standard AWS configuration chain (environment, profile, SSO,
/// web identity, container and instance metadata) as `aws-config` does.
pub(crate) async fn load_env() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Counts the requests sent to AWS, per operation (`DescribeTargetHealth`,
/// `SendCommand`, …), retries included.
///
/// Attach one counter to several clients (through the builders'
/// `with_call_counter`) to see what a whole rollout costs in API calls.
#[derive(Debug, Clone, Default)]
pub struct ApiCallCounter {
    calls: Arc<Mutex<BTreeMap<String, u64>>>,
    /// When each ELBv2 `Describe*` request was sent (the latest
    /// [`MAX_TIMES`] of them), for [`ApiCallCounter::describe_times`].
    describe_times: Arc<Mutex<std::collections::VecDeque<tokio::time::Instant>>>,
}

/// How many `Describe*` send times a counter keeps.
const MAX_TIMES: usize = 100_000;

impl ApiCallCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests so far, by operation name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.calls.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Requests so far for one operation.
    pub fn count(&self, operation: &str) -> u64 {
        self.calls
            .lock()
            .ok()
            .and_then(|m| m.get(operation).copied())
            .unwrap_or(0)
    }

    /// Requests so far, all operations together.
    pub fn total(&self) -> u64 {
        self.calls.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    /// When the ELBv2 `Describe*` requests were sent (`tokio::time`),
    /// oldest first: the latest 100,000 of them. Benchmarks check them
    /// against ELB's own throttling bucket (EC2, Auto Scaling and SSM
    /// calls have buckets of their own and are not included).
    pub fn describe_times(&self) -> Vec<tokio::time::Instant> {
        self.describe_times
            .lock()
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default()
    }

    fn record(&self, service: &str, operation: &str) {
        if let Ok(mut m) = self.calls.lock() {
            *m.entry(operation.to_owned()).or_insert(0) += 1;
        }
        if operation.starts_with("Describe") && service.starts_with("Elastic Load Balancing") {
            if let Ok(mut t) = self.describe_times.lock() {
                if t.len() == MAX_TIMES {
                    t.pop_front();
                }
                t.push_back(tokio::time::Instant::now());
            }
        }
    }
}

impl Intercept for ApiCallCounter {
    fn name(&self) -> &'static str {
        "hygiene::ApiCallCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        let (service, name) = cfg
            .load::<Metadata>()
            .map_or(("unknown", "unknown"), |m| (m.service(), m.name()));
        self.record(service, name);
        Ok(())
    }
}

/// The client settings every builder of this crate shares.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientSettings {
    pub(crate) sdk: Option<SdkConfig>,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) counter: Option<ApiCallCounter>,
}

impl ClientSettings {
    fn sdk(&self, what: &'static str) -> Result<&SdkConfig> {
        self.sdk.as_ref().ok_or_else(|| {
            Error::invalid_config(
                what,
                "no AWS configuration: start from `from_env()`, or call `with_sdk_config` or `with_client`",
            )
        })
    }

    fn check_endpoint(&self) -> Result<()> {
        match &self.endpoint_url {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                Err(Error::invalid_config(
                    "endpoint_url",
                    format!("{url:?} is not an http:// or https:// URL"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// An ELBv2 client from these settings.
    pub(crate) fn elbv2(&self) -> Result<aws_sdk_elasticloadbalancingv2::Client> {
        self.check_endpoint()?;
        let mut b =
            aws_sdk_elasticloadbalancingv2::config::Builder::from(self.sdk("elbv2 client")?);
        if let Some(url) = &self.endpoint_url {
            b = b.endpoint_url(url);
        }
        if let Some(c) = &self.counter {
            b = b.interceptor(c.clone());
        }
        Ok(aws_sdk_elasticloadbalancingv2::Client::from_conf(b.build()))
    }

    /// An EC2 client from these settings.
    pub(crate) fn ec2(&self) -> Result<aws_sdk_ec2::Client> {
        self.check_endpoint()?;
        let mut b = aws_sdk_ec2::config::Builder::from(self.sdk("ec2 client")?);
        if let Some(url) = &self.endpoint_url {
            b = b.endpoint_url(url);
        }
        if let Some(c) = &self.counter {
            b = b.interceptor(c.clone());
        }
        Ok(aws_sdk_ec2::Client::from_conf(b.build()))
    }

    /// A DynamoDB client from these settings (the lease store's).
    pub(crate) fn dynamodb(&self) -> Result<aws_sdk_dynamodb::Client> {
        self.check_endpoint()?;
        let mut b = aws_sdk_dynamodb::config::Builder::from(self.sdk("dynamodb client")?);
        if let Some(url) = &self.endpoint_url {
            b = b.endpoint_url(url);
        }
        if let Some(c) = &self.counter {
            b = b.interceptor(c.clone());
        }
        Ok(aws_sdk_dynamodb::Client::from_conf(b.build()))
    }

    /// An Auto Scaling client from these settings.
    pub(crate) fn autoscaling(&self) -> Result<aws_sdk_autoscaling::Client> {
        self.check_endpoint()?;
        let mut b = aws_sdk_autoscaling::config::Builder::from(self.sdk("autoscaling client")?);
        if let Some(url) = &self.endpoint_url {
            b = b.endpoint_url(url);
        }
        if let Some(c) = &self.counter {
            b = b.interceptor(c.clone());
        }
        Ok(aws_sdk_autoscaling::Client::from_conf(b.build()))
    }

    /// An SSM client from these settings.
    pub(crate) fn ssm(&self) -> Result<aws_sdk_ssm::Client> {
        self.check_endpoint()?;
        let mut b = aws_sdk_ssm::config::Builder::from(self.sdk("ssm client")?);
        if let Some(url) = &self.endpoint_url {
            b = b.endpoint_url(url);
        }
        if let Some(c) = &self.counter {
            b = b.interceptor(c.clone());
        }
        Ok(aws_sdk_ssm::Client::from_conf(b.build()))
    }
}

fn check_arn(arn: &str, kind: &str, field: &'static str) -> Result<()> {
    let ok = arn.starts_with("arn:")
        && arn.contains(&format!(":{kind}/"))
        && !arn.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_config(field, format!("{arn:?} is not an ELBv2 {kind} ARN (arn:aws:elasticloadbalancing:<region>:<account>:{kind}/…)")))
    }
}

/// Builds an [`Elbv2Balancer`](crate::Elbv2Balancer).
///
/// ```no_run
/// # async fn f() -> hygiene_core::Result<()> {
/// let lb = hygiene_aws::Elbv2Balancer::from_env()
///     .await
///     .with_target_group("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef")
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Elbv2BalancerBuilder {
    settings: ClientSettings,
    client: Option<aws_sdk_elasticloadbalancingv2::Client>,
    target_groups: Vec<String>,
    load_balancer: Option<String>,
    instances: Option<crate::InstanceSelector>,
    /// Two kinds of instance selection were given (ids and tags, …).
    selector_conflict: bool,
    ec2: Option<aws_sdk_ec2::Client>,
    autoscaling: Option<aws_sdk_autoscaling::Client>,
    poll_interval: Option<std::time::Duration>,
    enable_wait: std::time::Duration,
    other_target_groups: crate::OtherTargetGroups,
    describe_rate: (u32, u32),
}

impl Default for Elbv2BalancerBuilder {
    fn default() -> Self {
        Self {
            settings: ClientSettings::default(),
            client: None,
            target_groups: Vec::new(),
            load_balancer: None,
            instances: None,
            selector_conflict: false,
            ec2: None,
            autoscaling: None,
            poll_interval: None,
            enable_wait: crate::balancer::DEFAULT_ENABLE_WAIT,
            other_target_groups: crate::OtherTargetGroups::default(),
            describe_rate: (
                crate::pacing::DEFAULT_BURST,
                crate::pacing::DEFAULT_PER_SECOND,
            ),
        }
    }
}

impl Elbv2BalancerBuilder {
    /// A builder with no AWS configuration yet (give one with
    /// [`with_sdk_config`](Self::with_sdk_config) or
    /// [`with_client`](Self::with_client)).
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder on the standard AWS configuration chain (environment,
    /// profiles, SSO, instance and container credentials).
    pub async fn from_env() -> Self {
        Self::new().with_sdk_config(load_env().await)
    }

    /// Uses this AWS configuration.
    pub fn with_sdk_config(mut self, config: SdkConfig) -> Self {
        self.settings.sdk = Some(config);
        self
    }

    /// Sends every request to this endpoint (moto, a VPC endpoint).
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.settings.endpoint_url = Some(url.into());
        self
    }

    /// Counts every request in `counter`.
    pub fn with_call_counter(mut self, counter: ApiCallCounter) -> Self {
        self.settings.counter = Some(counter);
        self
    }

    /// Uses this ready-made client (tests with `aws-smithy-mocks`); the
    /// configuration, endpoint and counter settings are then ignored.
    pub fn with_client(mut self, client: aws_sdk_elasticloadbalancingv2::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Adds a target group (by ARN) to the pool.
    pub fn with_target_group(mut self, arn: impl Into<String>) -> Self {
        self.target_groups.push(arn.into());
        self
    }

    /// Makes the pool every target group of this load balancer (by ARN).
    pub fn with_load_balancer(mut self, arn: impl Into<String>) -> Self {
        self.load_balancer = Some(arn.into());
        self
    }

    /// Makes the pool these instances (by id), in every target group of
    /// the Region that holds them: no load balancer ARN needed. See
    /// [`InstanceSelector`](crate::InstanceSelector).
    pub fn with_instances<I, S>(self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.with_instance_selector(crate::InstanceSelector::Ids(
            ids.into_iter().map(Into::into).collect(),
        ))
    }

    /// Makes the pool the running instances carrying this tag (with any of
    /// `values`); called again, an instance must carry every tag given.
    pub fn with_instance_tag<I, S>(mut self, key: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut tags = match self.instances.take() {
            Some(crate::InstanceSelector::Tags(t)) => t,
            Some(_) => {
                self.selector_conflict = true;
                std::collections::BTreeMap::new()
            }
            None => std::collections::BTreeMap::new(),
        };
        tags.insert(key.into(), values.into_iter().map(Into::into).collect());
        self.instances = Some(crate::InstanceSelector::Tags(tags));
        self
    }

    /// Makes the pool the `InService` instances of this Auto Scaling group.
    pub fn with_auto_scaling_group(self, name: impl Into<String>) -> Self {
        self.with_instance_selector(crate::InstanceSelector::AutoScalingGroup(name.into()))
    }

    /// Makes the pool the instances `selector` names. Instances are
    /// selected one way: ids, tags or an Auto Scaling group (`build`
    /// refuses two).
    pub fn with_instance_selector(mut self, selector: crate::InstanceSelector) -> Self {
        if self.instances.is_some() {
            self.selector_conflict = true;
        }
        self.instances = Some(selector);
        self
    }

    /// Uses this ready-made EC2 client to select instances (tests).
    pub fn with_ec2_client(mut self, client: aws_sdk_ec2::Client) -> Self {
        self.ec2 = Some(client);
        self
    }

    /// Uses this ready-made Auto Scaling client to select instances (tests).
    pub fn with_autoscaling_client(mut self, client: aws_sdk_autoscaling::Client) -> Self {
        self.autoscaling = Some(client);
        self
    }

    /// Polls status this often by default instead of every 5 s ± 20 %.
    pub fn with_poll_interval(mut self, interval: std::time::Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }

    /// How long `enable` waits for a registration still `draining` to
    /// end before it registers it (default 20 s; zero: never waits).
    /// ELBv2 puts a registration re-added while draining back to
    /// `healthy` without a new health check, so `enable` never registers
    /// one then: it polls until ELBv2 says `unused` and registers it, for
    /// up to this long; past it, the registration is made by the first
    /// `status` that sees it `unused`. Keep it below the rollout's
    /// `call_timeout` (30 s by default), which bounds every balancer call.
    pub fn with_enable_wait(mut self, wait: std::time::Duration) -> Self {
        self.enable_wait = wait;
        self
    }

    /// What to do about target groups outside the pool that hold one of
    /// its hosts (default [`OtherTargetGroups::Report`](crate::OtherTargetGroups::Report)).
    pub fn with_other_target_groups(mut self, others: crate::OtherTargetGroups) -> Self {
        self.other_target_groups = others;
        self
    }

    /// Paces `Describe*` calls with a token bucket of `burst` tokens
    /// refilled at `per_second` (default 20 and 5: half of ELB's own
    /// `Describe*` bucket of 40 refilled at 10/s per account and Region,
    /// leaving the rest to the console and other tools).
    pub fn with_describe_rate(mut self, burst: u32, per_second: u32) -> Self {
        self.describe_rate = (burst, per_second);
        self
    }

    /// Validates every setting and builds the balancer. Nothing is sent to
    /// AWS until the first call.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for no pool or two kinds of pool (target
    /// groups, a load balancer, instances by ids, tags or Auto Scaling
    /// group), an empty instance selection or a malformed instance id, a
    /// malformed ARN, a zero poll interval or describe rate, a bad
    /// endpoint URL, or no AWS configuration.
    pub fn build(self) -> Result<crate::Elbv2Balancer> {
        let kinds = usize::from(!self.target_groups.is_empty())
            + usize::from(self.load_balancer.is_some())
            + usize::from(self.instances.is_some());
        if kinds > 1 || self.selector_conflict {
            return Err(Error::invalid_config(
                "pool",
                "give one of: target groups, a load balancer, or instances (ids, tags, Auto Scaling group)",
            ));
        }
        let (mut ec2, mut autoscaling) = (self.ec2, self.autoscaling);
        let pool = match (self.target_groups.is_empty(), self.load_balancer) {
            (true, None) if self.instances.is_some() => {
                let selector = self.instances.unwrap_or(crate::InstanceSelector::Ids(Vec::new()));
                selector.validate()?;
                if matches!(selector, crate::InstanceSelector::AutoScalingGroup(_)) {
                    if autoscaling.is_none() {
                        autoscaling = Some(self.settings.autoscaling()?);
                    }
                    // The instances' addresses, for `ip` target groups
                    // (without an AWS configuration, those are skipped).
                    if ec2.is_none() {
                        ec2 = self.settings.ec2().ok();
                    }
                } else if ec2.is_none() {
                    ec2 = Some(self.settings.ec2()?);
                }
                crate::balancer::Pool::Instances(selector)
            }
            (false, None) => {
                for arn in &self.target_groups {
                    check_arn(arn, "targetgroup", "target_group")?;
                }
                let mut arns = self.target_groups;
                arns.dedup();
                crate::balancer::Pool::TargetGroups(arns)
            }
            (true, Some(lb)) => {
                check_arn(&lb, "loadbalancer", "load_balancer")?;
                crate::balancer::Pool::LoadBalancer(lb)
            }
            (true, None) => return Err(Error::invalid_config(
                "pool",
                "give target groups (with_target_group), a load balancer (with_load_balancer), or instances (with_instances, with_instance_tag, with_auto_scaling_group)",
            )),
            (false, Some(_)) => {
                return Err(Error::invalid_config(
                    "pool",
                    "give target groups or a load balancer, not both",
                ))
            }
        };
        if self.poll_interval == Some(std::time::Duration::ZERO) {
            return Err(Error::invalid_config(
                "poll_interval",
                "must be greater than zero",
            ));
        }
        if self.describe_rate.0 == 0 || self.describe_rate.1 == 0 {
            return Err(Error::invalid_config(
                "describe_rate",
                "burst and calls per second must both be at least 1",
            ));
        }
        let client = match self.client {
            Some(c) => c,
            None => self.settings.elbv2()?,
        };
        Ok(crate::Elbv2Balancer::new(
            client,
            crate::balancer::Settings {
                pool,
                poll_interval: self.poll_interval,
                enable_wait: self.enable_wait,
                others: self.other_target_groups,
                describe_rate: self.describe_rate,
                ec2,
                autoscaling,
            },
        ))
    }
}

/// Builds an [`SsmExecutor`](crate::SsmExecutor).
///
/// ```no_run
/// # async fn f() -> hygiene_core::Result<()> {
/// let exec = hygiene_aws::SsmExecutor::from_env("AWS-RunPatchBaseline")
///     .await
///     .with_parameter("Operation", ["Install"])
///     .with_parameter("RebootOption", ["RebootIfNeeded"])
///     .with_comment("hygiene rolling patch")
///     .build()?;
/// # Ok(()) }
/// ```
///
/// `Debug` shows document parameter names, never their values (they may
/// hold secrets).
#[derive(Clone)]
pub struct SsmExecutorBuilder {
    settings: ClientSettings,
    client: Option<aws_sdk_ssm::Client>,
    ssm: crate::ssm::SsmSettings,
}

impl std::fmt::Debug for SsmExecutorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SsmSettings' own Debug leaves the parameter values out.
        f.debug_struct("SsmExecutorBuilder")
            .field("settings", &self.settings)
            .field("client", &self.client.as_ref().map(|_| "<given>"))
            .field("ssm", &self.ssm)
            .finish()
    }
}

impl SsmExecutorBuilder {
    /// A builder for `document` with no AWS configuration yet.
    pub fn new(document: impl Into<String>) -> Self {
        Self {
            settings: ClientSettings::default(),
            client: None,
            ssm: crate::ssm::SsmSettings::new(document.into()),
        }
    }

    /// A builder for `document` on the standard AWS configuration chain.
    pub async fn from_env(document: impl Into<String>) -> Self {
        Self::new(document).with_sdk_config(load_env().await)
    }

    /// Uses this AWS configuration.
    pub fn with_sdk_config(mut self, config: SdkConfig) -> Self {
        self.settings.sdk = Some(config);
        self
    }

    /// Sends every request to this endpoint (moto, a VPC endpoint).
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.settings.endpoint_url = Some(url.into());
        self
    }

    /// Counts every request in `counter`.
    pub fn with_call_counter(mut self, counter: ApiCallCounter) -> Self {
        self.settings.counter = Some(counter);
        self
    }

    /// Uses this ready-made client (tests with `aws-smithy-mocks`).
    pub fn with_client(mut self, client: aws_sdk_ssm::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Runs this version of the document (`$LATEST`, `$DEFAULT`, `3`).
    pub fn with_document_version(mut self, version: impl Into<String>) -> Self {
        self.ssm.document_version = Some(version.into());
        self
    }

    /// Sets a document parameter.
    pub fn with_parameter<I, S>(mut self, name: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.ssm
            .parameters
            .insert(name.into(), values.into_iter().map(Into::into).collect());
        self
    }

    /// Fills the document's parameter `name` with each command's W3C
    /// `traceparent` (of its `maintenance` span, see
    /// [`hygiene_core::trace`]), so the script's own spans join the
    /// rollout's trace. The document declares it (`"traceparent":
    /// {"type": "String", "default": ""}`) and exports it
    /// (`export TRACEPARENT={{ traceparent }}`); preflight checks it is
    /// declared. Only sent when there is a trace context.
    pub fn with_traceparent_parameter(mut self, name: impl Into<String>) -> Self {
        self.ssm.traceparent_parameter = Some(name.into());
        self
    }

    /// A comment shown in the SSM console (at most 100 characters).
    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.ssm.comment = Some(comment.into());
        self
    }

    /// SendCommand's `TimeoutSeconds`: how long SSM tries to deliver the
    /// command before it gives up (`DeliveryTimedOut`); 30 s to 30 days.
    pub fn with_delivery_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.ssm.delivery_timeout = Some(timeout);
        self
    }

    /// The document's `executionTimeout` parameter (for documents that
    /// declare it, such as `AWS-RunShellScript`): the command is stopped
    /// with `ExecutionTimedOut` after this long.
    pub fn with_execution_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.ssm.execution_timeout = Some(timeout);
        self
    }

    /// Writes the full command output to this S3 bucket (and key prefix).
    pub fn with_output_s3(mut self, bucket: impl Into<String>, key_prefix: Option<String>) -> Self {
        self.ssm.s3_output = Some((bucket.into(), key_prefix));
        self
    }

    /// Sends the command output to this CloudWatch Logs group.
    pub fn with_cloudwatch_output(mut self, log_group: impl Into<String>) -> Self {
        self.ssm.cloudwatch_log_group = Some(log_group.into());
        self
    }

    /// The longest pause between two status reads (default 5 s; the first
    /// reads come after 1 s, 2 s, 4 s).
    pub fn with_poll_interval(mut self, interval: std::time::Duration) -> Self {
        self.ssm.poll_interval = interval;
        self
    }

    /// How long `execute` waits for every command to finish before it
    /// cancels them (default: delivery + execution timeout + 2 min, or 2 h).
    pub fn with_wait_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.ssm.wait_timeout = Some(timeout);
        self
    }

    /// How long to wait for SSM to confirm a cancellation before the
    /// targets are reported failed anyway (default 2 min).
    pub fn with_cancel_grace(mut self, grace: std::time::Duration) -> Self {
        self.ssm.cancel_grace = grace;
        self
    }

    /// Cancels outstanding commands (CancelCommand) when `token` is cancelled.
    pub fn with_cancellation(mut self, token: hygiene_core::CancellationToken) -> Self {
        self.ssm.cancel = Some(token);
        self
    }

    /// How preflight checks the instances.
    pub fn with_preflight(mut self, check: crate::PreflightCheck) -> Self {
        self.ssm.preflight = check;
        self
    }

    /// Which API reads command status.
    pub fn with_status_api(mut self, api: crate::StatusApi) -> Self {
        self.ssm.status_api = api;
        self
    }

    /// How a throttled SendCommand is sent again (default: 5 retries,
    /// jittered backoff from 100 ms to 5 s, at most 30 s in all). Only
    /// throttling is retried: SSM refused the call, so nothing ran.
    pub fn with_send_retry(mut self, policy: hygiene_core::RetryPolicy) -> Self {
        self.ssm.send_retry = policy;
        self
    }

    /// The least time between two SendCommand calls of one `execute`
    /// (default 200 ms): paces the one-by-one sends after SSM refused an
    /// instance of a call.
    pub fn with_send_gap(mut self, gap: std::time::Duration) -> Self {
        self.ssm.send_gap = gap;
        self
    }

    /// Whether preflight reads the document (`DescribeDocument`) and checks
    /// that every parameter given exists and that its platform fits the
    /// instances (default: yes).
    pub fn with_document_check(mut self, check: bool) -> Self {
        self.ssm.check_document = check;
        self
    }

    /// Runs the command for `target` (an IP target, say) on this instance.
    pub fn with_instance_id(
        mut self,
        target: hygiene_core::TargetId,
        instance_id: impl Into<String>,
    ) -> Self {
        self.ssm.instance_ids.insert(target, instance_id.into());
        self
    }

    /// Validates every setting and builds the executor.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty document name or parameter
    /// name, a comment over 100 characters, a delivery timeout outside
    /// 30 s – 30 days, a zero poll interval, a bad endpoint URL, or no AWS
    /// configuration.
    pub fn build(self) -> Result<crate::SsmExecutor> {
        let s = &self.ssm;
        if s.document.trim().is_empty() {
            return Err(Error::invalid_config(
                "document",
                "an SSM document name is required (AWS-RunPatchBaseline, AWS-RunShellScript, …)",
            ));
        }
        if s.parameters.keys().any(|k| k.trim().is_empty()) {
            return Err(Error::invalid_config(
                "parameters",
                "a parameter name must not be empty",
            ));
        }
        if s.comment.as_ref().is_some_and(|c| c.chars().count() > 100) {
            return Err(Error::invalid_config(
                "comment",
                "SSM accepts at most 100 characters",
            ));
        }
        if let Some(t) = s.delivery_timeout {
            if !(30..=2_592_000).contains(&t.as_secs()) {
                return Err(Error::invalid_config(
                    "delivery_timeout",
                    "SSM accepts 30 seconds to 30 days",
                ));
            }
        }
        if s.poll_interval.is_zero() {
            return Err(Error::invalid_config(
                "poll_interval",
                "must be greater than zero",
            ));
        }
        let client = match self.client {
            Some(c) => c,
            None => self.settings.ssm()?,
        };
        Ok(crate::SsmExecutor::new(client, self.ssm))
    }
}
