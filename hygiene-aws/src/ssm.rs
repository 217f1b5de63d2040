//! [`SsmExecutor`]: the maintenance as an SSM Run Command document.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::{
    CloudWatchOutputConfig, CommandInvocationStatus, InstanceInformationStringFilter, PingStatus,
};
use aws_sdk_ssm::Client;
use hygiene_core::{
    tail, with_retries_when, CancellationToken, Error, ExecHandle, ExecOutcome, Executor,
    HandleSink, Preflight, Recovered, Result, RetryPolicy, Target, TargetId, OUTPUT_TAIL_BYTES,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument as _};

use crate::error::{call, code_of, map_sdk, Subject};

/// SSM takes at most this many instance ids in one SendCommand.
pub const MAX_INSTANCES_PER_COMMAND: usize = 50;

/// The least time between two SendCommand calls of one `execute`: after a
/// refused instance the others are sent one by one, up to 50 calls, and
/// SendCommand has a small per-account rate (its throttling is
/// `ThrottlingException`).
const DEFAULT_SEND_GAP: Duration = Duration::from_millis(200);

/// How [`SsmExecutor::preflight`](Executor::preflight) checks instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PreflightCheck {
    /// `DescribeInstanceInformation`: only instances whose SSM agent is
    /// `Online` are ready (the default).
    #[default]
    DescribeInstanceInformation,
    /// The document check only (`DescribeDocument`: parameters, platform
    /// list), no agent check: for endpoints without
    /// `DescribeInstanceInformation` (moto).
    DocumentOnly,
    /// No check: every target with an instance id is ready. For endpoints
    /// without `DescribeInstanceInformation` (moto); a real rollout should
    /// not skip it, since an instance SSM cannot reach would be drained
    /// for nothing.
    Skip,
}

/// How command status is read while waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StatusApi {
    /// One `ListCommandInvocations` (with details) per command and poll,
    /// for up to 50 instances at once (the default).
    #[default]
    ListCommandInvocations,
    /// One `GetCommandInvocation` per pending instance and poll: more calls,
    /// but full stdout/stderr, and the only one moto implements.
    GetCommandInvocation,
}

/// What an [`SsmExecutor`] sends, and how it waits.
///
/// `Debug` shows the parameter names only: their values may be secrets.
#[derive(Clone)]
pub(crate) struct SsmSettings {
    pub(crate) document: String,
    pub(crate) document_version: Option<String>,
    pub(crate) parameters: HashMap<String, Vec<String>>,
    pub(crate) comment: Option<String>,
    pub(crate) delivery_timeout: Option<Duration>,
    pub(crate) execution_timeout: Option<Duration>,
    pub(crate) s3_output: Option<(String, Option<String>)>,
    pub(crate) cloudwatch_log_group: Option<String>,
    pub(crate) poll_interval: Duration,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) cancel_grace: Duration,
    pub(crate) cancel: Option<CancellationToken>,
    pub(crate) preflight: PreflightCheck,
    pub(crate) status_api: StatusApi,
    pub(crate) send_retry: RetryPolicy,
    pub(crate) send_gap: Duration,
    pub(crate) check_document: bool,
    pub(crate) instance_ids: HashMap<TargetId, String>,
    /// The document parameter that gets each command's `traceparent`.
    pub(crate) traceparent_parameter: Option<String>,
}

impl fmt::Debug for SsmSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SsmSettings")
            .field("document", &self.document)
            .field("document_version", &self.document_version)
            .field("parameters", &self.parameter_names())
            .field("comment", &self.comment)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("execution_timeout", &self.execution_timeout)
            .field("s3_output", &self.s3_output)
            .field("cloudwatch_log_group", &self.cloudwatch_log_group)
            .field("poll_interval", &self.poll_interval)
            .field("wait_timeout", &self.wait_timeout)
            .field("cancel_grace", &self.cancel_grace)
            .field("cancel", &self.cancel)
            .field("preflight", &self.preflight)
            .field("status_api", &self.status_api)
            .field("send_retry", &self.send_retry)
            .field("send_gap", &self.send_gap)
            .field("check_document", &self.check_document)
            .field("instance_ids", &self.instance_ids)
            .field("traceparent_parameter", &self.traceparent_parameter)
            .finish()
    }
}

impl SsmSettings {
    /// The parameter names, sorted (their values are never shown).
    pub(crate) fn parameter_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.parameters.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub(crate) fn new(document: String) -> Self {
        Self {
            document,
            document_version: None,
            parameters: HashMap::new(),
            comment: None,
            delivery_timeout: None,
            execution_timeout: None,
            s3_output: None,
            cloudwatch_log_group: None,
            poll_interval: Duration::from_secs(5),
            wait_timeout: None,
            cancel_grace: Duration::from_secs(120),
            cancel: None,
            preflight: PreflightCheck::default(),
            status_api: StatusApi::default(),
            send_retry: RetryPolicy::default(),
            send_gap: DEFAULT_SEND_GAP,
            check_document: true,
            instance_ids: HashMap::new(),
            traceparent_parameter: None,
        }
    }

    /// How long `execute` waits for terminal statuses before it cancels:
    /// the explicit wait timeout, else delivery + execution timeout + 2 min,
    /// else 2 h.
    fn wait_limit(&self) -> Duration {
        if let Some(w) = self.wait_timeout {
            return w;
        }
        match self.execution_timeout {
            Some(exec) => {
                self.delivery_timeout.unwrap_or(Duration::from_secs(600))
                    + exec
                    + Duration::from_secs(120)
            }
            None => Duration::from_secs(2 * 3600),
        }
    }
}

/// Runs the maintenance as an SSM Run Command document
/// (`AWS-RunPatchBaseline`, `AWS-RunShellScript`, your own) on the
/// instances behind the targets.
///
/// - **Instances.** A target's instance is, in order: the mapping given to
///   the builder ([`with_instance_id`](crate::SsmExecutorBuilder::with_instance_id)),
///   [`Target::instance_id`] (set by [`crate::Elbv2Balancer`] for instance
///   target groups), or the target id itself when it is an instance id
///   (`i-…`, `mi-…`). IP targets have no instance id: map each IP to its
///   instance with the builder, or preflight says NotReady and execute
///   fails that target, naming the IP.
/// - **execute** sends one `SendCommand` per 50 instances, then polls (1 s,
///   2 s, 4 s, … up to the poll interval) until every invocation has a
///   terminal status. Every terminal status maps to an outcome:
///   `Success` succeeds; `Failed`, `Cancelled`, `TimedOut` and the detailed
///   `DeliveryTimedOut`, `ExecutionTimedOut`, `Undeliverable`, `Terminated`,
///   `InvalidPlatform`, `AccessDenied` fail with a message that says what
///   it means, plus the exit code and the output tail. Transient errors
///   while polling are retried at the next poll.
/// - **SendCommand refused.** An instance SSM will not run on
///   (`InvalidInstanceId`: gone, stopped, agent deregistered since
///   preflight; `UnsupportedPlatformType`) fails that target, naming the
///   instance and the reason; the other instances of its call are sent
///   again one by one. Any other refusal (throttling, the document, its
///   parameters, permissions) is an `Err` of `execute` while no command has
///   been sent yet, so the engine may retry a throttled call; once commands
///   run, it fails the targets of that call instead.
/// - **Cancellation.** With a token ([`with_cancellation`](crate::SsmExecutorBuilder::with_cancellation)),
///   cancelling it sends `CancelCommand` for every outstanding command and
///   waits (up to 2 min) for SSM to confirm; the targets then fail as
///   `Cancelled`. Pass the rollout's own token to cut running maintenance
///   short on Ctrl-C, or leave it out to let running commands finish (the
///   engine's default cancellation semantics). The same happens when the
///   wait limit passes.
/// - **Crash safety.** Each instance's CommandId is reported to the
///   engine (and so to the journal) as soon as SendCommand answers; a
///   resumed run calls [`recover`](Executor::recover), which polls that
///   command until it ends (within the wait limit, then cancels it) and
///   reads its outcome, never sending it again. A command SSM no longer
///   knows is `Recovered::Unknown`, and `on_interrupted` decides.
/// - **preflight** uses `DescribeInstanceInformation`: an instance whose
///   agent is not `Online` (or not registered with SSM at all) is NotReady
///   with the reason, and is never drained.
#[derive(Clone)]
pub struct SsmExecutor {
    inner: Arc<SsmInner>,
}

struct SsmInner {
    client: Client,
    settings: SsmSettings,
    /// Set once GetCommandInvocation without a plugin name was refused
    /// (`InvalidPluginName`: a document of several steps): status is then
    /// read with ListCommandInvocations.
    multi_step: std::sync::atomic::AtomicBool,
    /// The document as DescribeDocument described it (once).
    document: tokio::sync::OnceCell<crate::document::DocumentInfo>,
}

impl fmt::Debug for SsmExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("SsmExecutor")
            .field("document", &s.document)
            .field("document_version", &s.document_version)
            .field("parameters", &s.parameter_names())
            .field("preflight", &s.preflight)
            .field("status_api", &s.status_api)
            .finish_non_exhaustive()
    }
}

/// One sent command and the instances still waiting on it.
#[derive(Debug)]
struct Sent {
    command_id: String,
    /// (index into the targets, instance id)
    members: Vec<(usize, String)>,
    /// Status reads that failed in a row.
    read_errors: u32,
}

/// Transient status read failures in a row after which the command's
/// targets are reported failed (the command may still be running).
const MAX_READ_ERRORS: u32 = 10;

/// What a resumed run needs to find a command again: the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CommandHandle {
    command_id: String,
    instance_id: String,
}

/// Polls without an answer after which a recovered command is taken as
/// gone (SSM keeps a command's history for 30 days).
const MAX_EMPTY_READS: u32 = 3;

/// A SendCommand that failed.
#[derive(Debug)]
struct SendFailure {
    error: Error,
    /// Set when SSM refused the instances rather than the command
    /// (`InvalidInstanceId`, …): why, for the targets' outcomes. The same
    /// command may still run on other instances.
    instance_reason: Option<String>,
}

/// Why SSM refused the instances of a SendCommand, when it refused them
/// rather than the command.
fn instance_refusal<E: ProvideErrorMetadata>(
    err: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> Option<String> {
    let hint = match code_of(err)? {
        "InvalidInstanceId" | "InvalidInstanceIdException" => {
            "the instance is gone, stopped, not in this account and region, or its SSM agent is no longer registered"
        }
        "UnsupportedPlatformType" | "UnsupportedPlatformTypeException" => {
            "the document does not support the instance's platform"
        }
        // Not DuplicateInstanceId: sending to each target alone would run
        // the command twice on that instance.
        _ => return None,
    };
    let code = code_of(err).unwrap_or_default();
    let said = err
        .as_service_error()
        .and_then(ProvideErrorMetadata::message)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Some(format!("{code}{said} ({hint})"))
}

/// SSM says the command or its invocation does not exist.
fn is_gone(e: &Error) -> bool {
    matches!(
        e,
        Error::NotFound {
            kind: "SSM command",
            ..
        }
    )
}

/// What a terminal status means for the operator.
fn explain(status: &str, details: Option<&str>) -> Option<(bool, String)> {
    let detail_text = match details {
        Some("DeliveryTimedOut") => Some("DeliveryTimedOut: the command never reached the instance before the delivery timeout; is the SSM agent running and online?"),
        Some("ExecutionTimedOut") => Some("ExecutionTimedOut: the command ran longer than its execution timeout and was stopped"),
        Some("Undeliverable") => Some("Undeliverable: SSM could not deliver the command; the instance may not exist, be stopped, or have no SSM agent"),
        Some("Terminated") => Some("Terminated: the command was terminated before it finished (parent command or instance stopped)"),
        Some("InvalidPlatform") => Some("InvalidPlatform: the document does not support this instance's platform"),
        Some("AccessDenied") => Some("AccessDenied: the instance's IAM role or the command's output destination (S3, CloudWatch) refused access"),
        _ => None,
    };
    if let Some(t) = detail_text {
        return Some((false, t.to_owned()));
    }
    match status {
        "Success" => Some((true, "Success".to_owned())),
        "Failed" => Some((
            false,
            "Failed: the command ran and returned an error".to_owned(),
        )),
        "Cancelled" => Some((
            false,
            "Cancelled: the command was cancelled before it finished".to_owned(),
        )),
        "TimedOut" => Some((
            false,
            "TimedOut: the command did not finish in time".to_owned(),
        )),
        _ => None,
    }
}

/// `text` as SSM returned it, with a last line saying where the rest is
/// when SSM cut it at `limit` characters.
fn with_cut_note(text: &str, limit: usize, url: Option<&str>) -> String {
    if text.chars().count() < limit {
        return text.to_owned();
    }
    let where_ = url.filter(|u| !u.is_empty()).map_or_else(
        || "configure S3 or CloudWatch output to keep it".to_owned(),
        |u| format!("full output: {u}"),
    );
    format!("{text}\n[ssm returns only the first {limit} characters; {where_}]")
}

/// One instance's latest status as read from SSM.
#[derive(Debug)]
struct Reading {
    status: String,
    details: Option<String>,
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl SsmExecutor {
    pub(crate) fn new(client: Client, settings: SsmSettings) -> Self {
        Self {
            inner: Arc::new(SsmInner {
                client,
                settings,
                multi_step: std::sync::atomic::AtomicBool::new(false),
                document: tokio::sync::OnceCell::new(),
            }),
        }
    }

    fn settings(&self) -> &SsmSettings {
        &self.inner.settings
    }

    fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The instance id behind a target, or why there is none.
    fn instance_of(&self, t: &Target) -> std::result::Result<String, String> {
        if let Some(i) = self.settings().instance_ids.get(&t.id) {
            return Ok(i.clone());
        }
        if let Some(i) = &t.instance_id {
            return Ok(i.clone());
        }
        let id = t.id.as_str();
        if id.starts_with("i-") || id.starts_with("mi-") {
            return Ok(id.to_owned());
        }
        Err(format!(
            "target {id} has no EC2 instance id (an IP target?): map it to its instance with SsmExecutorBuilder::with_instance_id(\"{id}\", \"i-…\")"
        ))
    }

    /// One SendCommand to `instances`: the command id, or why not.
    async fn send(
        &self,
        instances: &[String],
        traceparent: Option<&str>,
    ) -> std::result::Result<String, SendFailure> {
        let s = self.settings();
        let mut req = self
            .client()
            .send_command()
            .document_name(&s.document)
            .set_document_version(s.document_version.clone())
            .set_instance_ids(Some(instances.to_vec()))
            .set_comment(s.comment.clone())
            .set_timeout_seconds(
                s.delivery_timeout
                    .map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX)),
            );
        let mut params = s.parameters.clone();
        if let Some(exec) = s.execution_timeout {
            params
                .entry("executionTimeout".to_owned())
                .or_insert_with(|| vec![exec.as_secs().to_string()]);
        }
        if let (Some(name), Some(tp)) = (&s.traceparent_parameter, traceparent) {
            params.insert(name.clone(), vec![tp.to_owned()]);
        }
        if !params.is_empty() {
            req = req.set_parameters(Some(params));
        }
        if let Some((bucket, prefix)) = &s.s3_output {
            req = req
                .output_s3_bucket_name(bucket)
                .set_output_s3_key_prefix(prefix.clone());
        }
        if let Some(group) = &s.cloudwatch_log_group {
            req = req.cloud_watch_output_config(
                CloudWatchOutputConfig::builder()
                    .cloud_watch_log_group_name(group)
                    .cloud_watch_output_enabled(true)
                    .build(),
            );
        }
        let started = Instant::now();
        // SendCommand is not idempotent: the SDK must not send it again after
        // a timeout or a cut reply (the command may already run). Errors go
        // back to the engine, which retries only throttling (not accepted).
        let out = req
            .customize()
            .config_override(
                aws_sdk_ssm::config::Builder::new()
                    .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| {
                let instance_reason = instance_refusal(&e);
                let error = map_sdk(
                    "ssm",
                    "SendCommand",
                    Subject::targets(instances.join(", ")).with_document(&s.document),
                    started.elapsed(),
                    e,
                );
                SendFailure {
                    error,
                    instance_reason,
                }
            })?;
        out.command()
            .and_then(|c| c.command_id())
            .map(str::to_owned)
            .ok_or_else(|| SendFailure {
                error: Error::protocol("ssm SendCommand", "reply without a command id"),
                instance_reason: None,
            })
    }

    /// [`send`](Self::send), again with jittered backoff (through `backon`,
    /// bounded by the send retry policy) while SSM throttles it: a throttled
    /// call was refused, so nothing ran and sending it again is safe.
    /// Any other failure is not retried (the command may have run).
    async fn send_retrying(
        &self,
        instances: &[String],
        traceparent: Option<&str>,
    ) -> std::result::Result<String, SendFailure> {
        let r = with_retries_when(
            &self.settings().send_retry,
            || async {
                match self.send(instances, traceparent).await {
                    Err(f) if matches!(f.error, Error::Throttled { .. }) => Err(f.error),
                    other => Ok(other),
                }
            },
            |e| matches!(e, Error::Throttled { .. }),
            |e, delay| {
                warn!(error = %e, delay_ms = delay.as_millis() as u64, instances = instances.len(), "SendCommand throttled; retrying");
            },
        )
        .await;
        match r {
            Ok(sent) => sent,
            Err(error) => Err(SendFailure {
                error,
                instance_reason: None,
            }),
        }
    }

    async fn cancel_command(&self, sent: &Sent) {
        let pending: Vec<String> = sent.members.iter().map(|(_, i)| i.clone()).collect();
        let started = Instant::now();
        match self
            .client()
            .cancel_command()
            .command_id(&sent.command_id)
            .set_instance_ids(Some(pending))
            .send()
            .await
        {
            Ok(_) => info!(command_id = %sent.command_id, "cancel requested"),
            Err(e) => {
                warn!(command_id = %sent.command_id, error = %map_sdk("ssm", "CancelCommand", Subject::default(), started.elapsed(), e), "cancel failed")
            }
        }
    }

    /// The statuses of `sent`'s pending instances (those SSM reports).
    ///
    /// `GetCommandInvocation` without a plugin name only works for a
    /// document of one step; for more (`AWS-RunPatchBaseline` has a Linux
    /// and a Windows step) SSM answers `InvalidPluginName` (boto3#1811,
    /// amazon-eks-ami#541), and the status is read with
    /// `ListCommandInvocations` from then on.
    async fn read(&self, sent: &Sent) -> Result<HashMap<String, Reading>> {
        use std::sync::atomic::Ordering;
        let by_list = self.settings().status_api == StatusApi::ListCommandInvocations
            || self.inner.multi_step.load(Ordering::Relaxed);
        if !by_list {
            match self.read_each(sent).await {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {
                    info!(command_id = %sent.command_id, document = %self.settings().document, "a document of several steps: reading status with ListCommandInvocations");
                    self.inner.multi_step.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.read_list(sent).await
    }

    /// One `ListCommandInvocations` (with details) for the whole command;
    /// the output of a finished invocation is then read in full per step.
    async fn read_list(&self, sent: &Sent) -> Result<HashMap<String, Reading>> {
        let mut out = HashMap::new();
        let mut token = None;
        loop {
            let page = call(
                "ssm",
                "ListCommandInvocations",
                Subject::default,
                self.client()
                    .list_command_invocations()
                    .command_id(&sent.command_id)
                    .details(true)
                    .set_next_token(token)
                    .send(),
            )
            .await?;
            for inv in page.command_invocations() {
                let Some(instance) = inv.instance_id() else {
                    continue;
                };
                if !sent.members.iter().any(|(_, i)| i == instance) {
                    continue;
                }
                let plugins = inv.command_plugins();
                let exit_code = plugins
                    .iter()
                    .map(|p| p.response_code())
                    .find(|c| *c != 0)
                    .or(plugins.last().map(|p| p.response_code()));
                let status = inv
                    .status()
                    .map_or("Pending", CommandInvocationStatus::as_str)
                    .to_owned();
                let details = inv.status_details().map(str::to_owned);
                let (stdout, stderr) = if explain(&status, details.as_deref()).is_some() {
                    self.full_output(&sent.command_id, instance, plugins).await
                } else {
                    (String::new(), String::new())
                };
                out.insert(
                    instance.to_owned(),
                    Reading {
                        status,
                        details,
                        exit_code,
                        stdout,
                        stderr,
                    },
                );
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// The output of each step of a finished invocation, joined: the
    /// plugin's `Output` in ListCommandInvocations holds only its first
    /// 2,500 characters, GetCommandInvocation with the step's name gives
    /// `StandardOutputContent` (first 24,000) and `StandardErrorContent`
    /// (first 8,000). Longer output is cut there by SSM: the tail then
    /// says so and names the full output's URL (S3) when there is one.
    async fn full_output(
        &self,
        command_id: &str,
        instance: &str,
        plugins: &[aws_sdk_ssm::types::CommandPlugin],
    ) -> (String, String) {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        for p in plugins {
            let Some(name) = p.name() else { continue };
            let started = Instant::now();
            match self
                .client()
                .get_command_invocation()
                .command_id(command_id)
                .instance_id(instance)
                .plugin_name(name)
                .send()
                .await
            {
                Ok(inv) => {
                    let out = inv.standard_output_content().unwrap_or_default();
                    let err = inv.standard_error_content().unwrap_or_default();
                    stdout.push(with_cut_note(
                        out,
                        24_000,
                        inv.standard_output_url().or(p.standard_output_url()),
                    ));
                    stderr.push(with_cut_note(
                        err,
                        8_000,
                        inv.standard_error_url().or(p.standard_error_url()),
                    ));
                }
                Err(e) => {
                    let e = map_sdk(
                        "ssm",
                        "GetCommandInvocation",
                        Subject::targets(instance),
                        started.elapsed(),
                        e,
                    );
                    debug!(command_id, instance, plugin = name, error = %e, "full output unavailable; keeping the first 2,500 characters");
                    stdout.push(p.output().unwrap_or_default().to_owned());
                }
            }
        }
        let join = |v: Vec<String>| {
            v.into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        };
        (join(stdout), join(stderr))
    }

    /// One `GetCommandInvocation` per pending instance; `None` when SSM
    /// wants a plugin name (a document of several steps).
    async fn read_each(&self, sent: &Sent) -> Result<Option<HashMap<String, Reading>>> {
        let mut out = HashMap::new();
        for (_, instance) in &sent.members {
            let started = Instant::now();
            let r = self
                .client()
                .get_command_invocation()
                .command_id(&sent.command_id)
                .instance_id(instance)
                .send()
                .await;
            match r {
                Ok(inv) => {
                    out.insert(
                        instance.clone(),
                        Reading {
                            status: inv
                                .status()
                                .map_or("Pending", CommandInvocationStatus::as_str)
                                .to_owned(),
                            details: inv.status_details().map(str::to_owned),
                            exit_code: Some(inv.response_code()).filter(|c| *c >= 0),
                            stdout: with_cut_note(
                                inv.standard_output_content().unwrap_or_default(),
                                24_000,
                                inv.standard_output_url(),
                            ),
                            stderr: with_cut_note(
                                inv.standard_error_content().unwrap_or_default(),
                                8_000,
                                inv.standard_error_url(),
                            ),
                        },
                    );
                }
                // Right after SendCommand the invocation may not exist yet.
                Err(e) if code_of(&e) == Some("InvocationDoesNotExist") => {}
                Err(e)
                    if matches!(
                        code_of(&e),
                        Some("InvalidPluginName" | "InvalidPluginNameException")
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => {
                    return Err(map_sdk(
                        "ssm",
                        "GetCommandInvocation",
                        Subject::targets(instance.clone()),
                        started.elapsed(),
                        e,
                    ))
                }
            }
        }
        Ok(Some(out))
    }

    fn outcome(
        id: &TargetId,
        instance: &str,
        command_id: &str,
        r: &Reading,
        elapsed: Duration,
    ) -> Option<ExecOutcome> {
        let (success, text) = explain(&r.status, r.details.as_deref())?;
        Some(ExecOutcome {
            id: id.clone(),
            success,
            exit_code: r.exit_code,
            stdout_tail: tail(&r.stdout, OUTPUT_TAIL_BYTES),
            stderr_tail: tail(&r.stderr, OUTPUT_TAIL_BYTES),
            duration: elapsed,
            message: (!success).then(|| format!("ssm command {command_id} on {instance}: {text}")),
            may_still_run: false,
        })
    }
}

#[async_trait]
impl Executor for SsmExecutor {
    fn name(&self) -> String {
        format!("ssm {}", self.settings().document)
    }

    async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>> {
        let instances: Vec<std::result::Result<String, String>> =
            targets.iter().map(|t| self.instance_of(t)).collect();
        let s = self.settings();
        let doc = if s.check_document && s.preflight != PreflightCheck::Skip {
            let doc = self
                .inner
                .document
                .get_or_try_init(|| crate::document::describe(self.client(), s))
                .await?;
            crate::document::check_parameters(s, doc)?;
            Some(doc)
        } else {
            None
        };
        if matches!(
            s.preflight,
            PreflightCheck::Skip | PreflightCheck::DocumentOnly
        ) {
            return Ok(instances
                .into_iter()
                .map(|i| i.map_or_else(Preflight::NotReady, |_| Preflight::Ready))
                .collect());
        }
        let ids: Vec<String> = instances
            .iter()
            .filter_map(|i| i.as_ref().ok().cloned())
            .collect();
        let mut info: HashMap<String, (Option<PingStatus>, String, Option<String>)> =
            HashMap::new();
        for chunk in ids.chunks(MAX_INSTANCES_PER_COMMAND) {
            let filter = InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .set_values(Some(chunk.to_vec()))
                .build()
                .map_err(|e| Error::protocol("ssm DescribeInstanceInformation", e.to_string()))?;
            let mut token = None;
            loop {
                let page = call(
                    "ssm",
                    "DescribeInstanceInformation",
                    || Subject::targets(chunk.join(", ")),
                    self.client()
                        .describe_instance_information()
                        .filters(filter.clone())
                        .set_next_token(token)
                        .send(),
                )
                .await?;
                for i in page.instance_information_list() {
                    if let Some(id) = i.instance_id() {
                        let last = i
                            .last_ping_date_time()
                            .map(|t| format!(", last ping {t}"))
                            .unwrap_or_default();
                        info.insert(
                            id.to_owned(),
                            (
                                i.ping_status().cloned(),
                                last,
                                i.platform_type().map(|p| p.as_str().to_owned()),
                            ),
                        );
                    }
                }
                token = page.next_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(instances
            .into_iter()
            .map(|i| match i {
                Err(why) => Preflight::NotReady(why),
                Ok(id) => match info.get(&id) {
                    Some((Some(PingStatus::Online), _, platform)) => {
                        match doc.and_then(|d| {
                            crate::document::platform_mismatch(
                                &s.document,
                                d,
                                &id,
                                platform.as_deref(),
                            )
                        }) {
                            Some(why) => Preflight::NotReady(why),
                            None => Preflight::Ready,
                        }
                    }
                    Some((ping, last, _)) => Preflight::NotReady(format!(
                        "the SSM agent on {id} is {}{last}: SSM cannot run commands there; check the agent and the instance's network",
                        ping.as_ref().map_or("in an unknown state", PingStatus::as_str)
                    )),
                    None => Preflight::NotReady(format!(
                        "{id} is not managed by SSM (no agent registered): install and start the SSM agent and give the instance a role with AmazonSSMManagedInstanceCore"
                    )),
                },
            })
            .collect())
    }

    async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>> {
        self.execute_tracked(targets, &HandleSink::none()).await
    }

    /// Finds a command a dead run sent (its CommandId and instance in the
    /// journal): polls it until it ends, within the executor's wait limit
    /// (then cancels it), and reads its outcome. A command SSM no longer
    /// knows is [`Recovered::Unknown`].
    async fn recover(&self, target: &Target, handle: &ExecHandle) -> Result<Recovered> {
        let h: CommandHandle = match serde_json::from_value(handle.0.clone()) {
            Ok(h) => h,
            Err(e) => {
                return Ok(Recovered::Unknown(format!(
                    "the journal's handle on the maintenance of {} is not an ssm command's ({e})",
                    target.id
                )))
            }
        };
        let s = self.settings();
        let started = Instant::now();
        let deadline = started + s.wait_limit();
        let mut sent = Sent {
            command_id: h.command_id.clone(),
            members: vec![(0, h.instance_id.clone())],
            read_errors: 0,
        };
        let mut empty = 0u32;
        let mut delay = Duration::ZERO;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).clamp(Duration::from_secs(1).min(s.poll_interval), s.poll_interval);
            if Instant::now() >= deadline {
                self.cancel_command(&sent).await;
                // The cancel is asked for, never confirmed here.
                return Ok(Recovered::Finished(ExecOutcome::may_still_run(
                    target.id.clone(),
                    started.elapsed(),
                    format!(
                        "ssm command {} on {}: not finished within {:?} of the resumed run; cancel requested",
                        h.command_id,
                        h.instance_id,
                        s.wait_limit()
                    ),
                )));
            }
            match self.read(&sent).await {
                Ok(readings) => {
                    sent.read_errors = 0;
                    let Some(r) = readings.get(&h.instance_id) else {
                        empty += 1;
                        if empty >= MAX_EMPTY_READS {
                            return Ok(Recovered::Unknown(format!(
                                "ssm knows no invocation of command {} on {} any more",
                                h.command_id, h.instance_id
                            )));
                        }
                        continue;
                    };
                    if let Some(o) = Self::outcome(
                        &target.id,
                        &h.instance_id,
                        &h.command_id,
                        r,
                        started.elapsed(),
                    ) {
                        return Ok(Recovered::Finished(o));
                    }
                }
                Err(e) if is_gone(&e) => {
                    return Ok(Recovered::Unknown(format!(
                        "ssm no longer knows command {} on {}: {e}",
                        h.command_id, h.instance_id
                    )))
                }
                Err(e) if e.is_retryable() && sent.read_errors + 1 < MAX_READ_ERRORS => {
                    sent.read_errors += 1;
                    warn!(command_id = %h.command_id, error = %e, "reading a recovered command's status failed; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn execute_tracked(
        &self,
        targets: &[Target],
        sink: &HandleSink,
    ) -> Result<Vec<ExecOutcome>> {
        let started = Instant::now();
        let s = self.settings();
        let mut outcomes: Vec<Option<ExecOutcome>> = vec![None; targets.len()];
        let mut todo: Vec<(usize, String)> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            match self.instance_of(t) {
                Ok(inst) => todo.push((i, inst)),
                Err(why) => {
                    outcomes[i] = Some(ExecOutcome::failure(t.id.clone(), Duration::ZERO, why))
                }
            }
        }
        if s.cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            for (i, _) in &todo {
                outcomes[*i] = Some(ExecOutcome::failure(
                    targets[*i].id.clone(),
                    Duration::ZERO,
                    "cancelled before the command was sent",
                ));
            }
            todo.clear();
        }
        let mut sent: Vec<Sent> = Vec::new();
        let mut work: VecDeque<Vec<(usize, String)>> = todo
            .chunks(MAX_INSTANCES_PER_COMMAND)
            .map(<[_]>::to_vec)
            .collect();
        let mut last_send: Option<Instant> = None;
        let mut spans: Vec<tracing::Span> = Vec::new();
        while let Some(chunk) = work.pop_front() {
            let instances: Vec<String> = chunk.iter().map(|(_, i)| i.clone()).collect();
            if let Some(at) = last_send {
                tokio::time::sleep_until(at + s.send_gap).await;
            }
            last_send = Some(Instant::now());
            // One span per command: a child of its first target's
            // `executing` span; it ends with the call.
            let span = hygiene_core::trace::maintenance_span(&targets[chunk[0].0].id);
            let traceparent = hygiene_core::trace::traceparent(&span);
            spans.push(span.clone());
            match self
                .send_retrying(&instances, traceparent.as_deref())
                .instrument(span)
                .await
            {
                Ok(command_id) => {
                    info!(command_id = %command_id, document = %s.document, instances = chunk.len(), "command sent");
                    for (i, inst) in &chunk {
                        let handle = CommandHandle {
                            command_id: command_id.clone(),
                            instance_id: inst.clone(),
                        };
                        if let Ok(v) = serde_json::to_value(handle) {
                            sink.started(&targets[*i].id, ExecHandle(v));
                        }
                    }
                    sent.push(Sent {
                        command_id,
                        members: chunk,
                        read_errors: 0,
                    });
                }
                // SSM refuses the whole call for one instance it cannot
                // run on: send to each alone, so only those fail.
                Err(SendFailure {
                    instance_reason: Some(_),
                    ..
                }) if chunk.len() > 1 => {
                    warn!(instances = %instances.join(", "), "SendCommand refused an instance; sending to each instance alone");
                    for member in chunk.into_iter().rev() {
                        work.push_front(vec![member]);
                    }
                }
                Err(SendFailure {
                    instance_reason: Some(why),
                    ..
                }) => {
                    for (i, inst) in chunk {
                        warn!(target.id = %targets[i].id, instance = %inst, reason = %why, "SendCommand refused the instance");
                        outcomes[i] = Some(ExecOutcome::failure(
                            targets[i].id.clone(),
                            started.elapsed(),
                            format!("ssm SendCommand refused instance {inst}: {why}; the command did not run there"),
                        ));
                    }
                }
                // Nothing sent yet, and not about one instance (throttled,
                // document, parameters, permissions): the executor failed
                // as a whole, and the whole call can safely be retried.
                Err(f) if sent.is_empty() => return Err(f.error),
                // Commands already run elsewhere: they must be waited for.
                Err(f) => {
                    for (i, inst) in chunk {
                        outcomes[i] = Some(ExecOutcome::failure(
                            targets[i].id.clone(),
                            started.elapsed(),
                            format!(
                                "ssm SendCommand for {inst} failed: {}; the command did not run there",
                                f.error
                            ),
                        ));
                    }
                }
            }
        }
        let deadline = started + s.wait_limit();
        let mut cancelled_at: Option<(Instant, String)> = None;
        let mut delay = Duration::from_secs(1).min(s.poll_interval);
        let never = CancellationToken::new();
        let token = s.cancel.clone().unwrap_or(never);
        let mut last: HashMap<String, String> = HashMap::new();
        while sent.iter().any(|c| !c.members.is_empty()) {
            let woke_by_cancel = tokio::select! {
                () = tokio::time::sleep(delay) => false,
                () = token.cancelled(), if cancelled_at.is_none() => true,
            };
            delay = (delay * 2).min(s.poll_interval);
            if cancelled_at.is_none() && (woke_by_cancel || Instant::now() >= deadline) {
                let why = if woke_by_cancel {
                    "the run was cancelled".to_owned()
                } else {
                    format!("not finished within {:?}", s.wait_limit())
                };
                warn!(reason = %why, "cancelling outstanding ssm commands");
                for c in sent.iter().filter(|c| !c.members.is_empty()) {
                    self.cancel_command(c).await;
                }
                cancelled_at = Some((Instant::now(), why));
                continue;
            }
            for c in sent.iter_mut().filter(|c| !c.members.is_empty()) {
                let readings = match self.read(c).await {
                    Ok(r) => r,
                    Err(e) if e.is_retryable() && c.read_errors + 1 < MAX_READ_ERRORS => {
                        c.read_errors += 1;
                        warn!(command_id = %c.command_id, error = %e, "reading command status failed; retrying at the next poll");
                        continue;
                    }
                    Err(e) => {
                        let hint = if s.status_api == StatusApi::ListCommandInvocations {
                            " (an endpoint without ListCommandInvocations, such as moto, needs StatusApi::GetCommandInvocation)"
                        } else {
                            ""
                        };
                        for (i, inst) in c.members.drain(..) {
                            outcomes[i] = Some(ExecOutcome::may_still_run(
                                targets[i].id.clone(),
                                started.elapsed(),
                                format!(
                                    "cannot read the status of ssm command {} on {inst}: {e}{hint}; it may still be running",
                                    c.command_id
                                ),
                            ));
                        }
                        continue;
                    }
                };
                c.read_errors = 0;
                let command_id = c.command_id.clone();
                c.members.retain(|(i, inst)| {
                    let Some(r) = readings.get(inst) else { return true };
                    last.insert(inst.clone(), r.status.clone());
                    match Self::outcome(&targets[*i].id, inst, &command_id, r, started.elapsed()) {
                        Some(o) => {
                            debug!(target.id = %targets[*i].id, status = %r.status, "command finished");
                            outcomes[*i] = Some(o);
                            false
                        }
                        None => true,
                    }
                });
            }
            if let Some((at, why)) = &cancelled_at {
                if at.elapsed() >= s.cancel_grace {
                    for c in &mut sent {
                        for (i, inst) in c.members.drain(..) {
                            let seen = last.get(&inst).map_or("no status", String::as_str);
                            outcomes[i] = Some(ExecOutcome::may_still_run(
                                targets[i].id.clone(),
                                started.elapsed(),
                                format!("ssm command {} on {inst}: {why}; cancel requested but not confirmed (last status: {seen})", c.command_id),
                            ));
                        }
                    }
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .zip(targets)
            .map(|(o, t)| {
                o.unwrap_or_else(|| {
                    ExecOutcome::failure(t.id.clone(), started.elapsed(), "no outcome recorded")
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_terminal_status_is_explained() {
        assert_eq!(explain("Success", Some("Success")).map(|e| e.0), Some(true));
        for s in ["Failed", "Cancelled", "TimedOut"] {
            let (ok, text) = explain(s, Some(s)).expect("terminal");
            assert!(!ok && text.starts_with(s), "{s}: {text}");
        }
        for d in [
            "DeliveryTimedOut",
            "ExecutionTimedOut",
            "Undeliverable",
            "Terminated",
            "InvalidPlatform",
            "AccessDenied",
        ] {
            let (ok, text) = explain("Failed", Some(d)).expect("terminal");
            assert!(!ok && text.starts_with(d), "{d}: {text}");
        }
        for s in ["Pending", "InProgress", "Delayed", "Cancelling"] {
            assert!(explain(s, Some(s)).is_none(), "{s} is not terminal");
        }
    }

    #[test]
    fn wait_limit_follows_timeouts() {
        let mut s = SsmSettings::new("AWS-RunShellScript".into());
        assert_eq!(s.wait_limit(), Duration::from_secs(7200));
        s.execution_timeout = Some(Duration::from_secs(60));
        assert_eq!(s.wait_limit(), Duration::from_secs(600 + 60 + 120));
        s.wait_timeout = Some(Duration::from_secs(5));
        assert_eq!(s.wait_limit(), Duration::from_secs(5));
    }
}
