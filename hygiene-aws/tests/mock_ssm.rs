//! SSM behaviour moto cannot produce, through `aws-smithy-mocks`: every
//! failing status, an agent offline at preflight, cancellation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::error::ErrorMetadata;
use aws_sdk_ssm::operation::cancel_command::CancelCommandOutput;
use aws_sdk_ssm::operation::describe_document::DescribeDocumentOutput;
use aws_sdk_ssm::operation::describe_instance_information::DescribeInstanceInformationOutput;
use aws_sdk_ssm::operation::get_command_invocation::{
    GetCommandInvocationError, GetCommandInvocationOutput,
};
use aws_sdk_ssm::operation::list_command_invocations::ListCommandInvocationsOutput;
use aws_sdk_ssm::operation::send_command::{SendCommandError, SendCommandOutput};
use aws_sdk_ssm::types::{
    Command, CommandInvocation, CommandInvocationStatus, CommandPlugin, DocumentDescription,
    DocumentParameter, InstanceInformation, PingStatus, PlatformType,
};
use aws_sdk_ssm::Client;
use aws_smithy_mocks::{mock, mock_client, MockResponse, RuleMode};
use hygiene_aws::{SsmExecutor, SsmExecutorBuilder, StatusApi};
use hygiene_core::testing::{InMemoryBalancer, Operation};
use hygiene_core::{
    Amount, CancellationToken, Error, Executor, Preflight, Rollout, RolloutConfig, Stage, Target,
    TargetId, TargetResult,
};

/// (status, status details, exit code, stdout, stderr)
type Step = (&'static str, &'static str, i32, &'static str, &'static str);

const PENDING: Step = ("Pending", "Pending", -1, "", "");
const RUNNING: Step = ("InProgress", "InProgress", -1, "", "");

#[derive(Default)]
struct Fake {
    /// Per instance: statuses to go through (the last one repeats).
    scripts: HashMap<String, VecDeque<Step>>,
    default_script: Vec<Step>,
    commands: Vec<(String, Vec<String>)>,
    cancelled: Vec<(String, Vec<String>)>,
    ping: HashMap<String, PingStatus>,
    sent_parameters: Vec<HashMap<String, Vec<String>>>,
    /// Instances SSM refuses in SendCommand with `InvalidInstanceId` (their
    /// agent went away after preflight).
    gone: Vec<String>,
    /// Per SendCommand, in order: an error code to refuse it with (None:
    /// accept). Calls past the end are accepted.
    send_errors: VecDeque<Option<&'static str>>,
    /// The instances of every SendCommand, accepted or not.
    send_attempts: Vec<Vec<String>>,
    /// Instances whose document has two steps: GetCommandInvocation
    /// without a plugin name is `InvalidPluginName` for them.
    multi_step: Vec<String>,
    /// Per instance, stdout longer than the 2,500 characters a plugin's
    /// `Output` holds (GetCommandInvocation with the plugin name gives it).
    long_output: HashMap<String, String>,
    /// Per instance, its platform (`Linux` when not given).
    platform: HashMap<String, PlatformType>,
    /// DescribeDocument calls.
    describe_document_calls: usize,
}

impl Fake {
    fn new(default_script: Vec<Step>) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Fake {
            default_script,
            ..Default::default()
        }))
    }

    /// The current step without moving on.
    fn peek(&mut self, instance: &str) -> Step {
        let default = self.default_script.clone();
        self.scripts
            .entry(instance.to_owned())
            .or_insert_with(|| default.into_iter().collect())
            .front()
            .copied()
            .unwrap_or(PENDING)
    }

    fn step(&mut self, instance: &str) -> Step {
        let default = self.default_script.clone();
        let s = self
            .scripts
            .entry(instance.to_owned())
            .or_insert_with(|| default.into_iter().collect());
        if s.len() > 1 {
            s.pop_front().unwrap_or(PENDING)
        } else {
            s.front().copied().unwrap_or(PENDING)
        }
    }
}

fn client(fake: &Arc<Mutex<Fake>>) -> Client {
    let f = Arc::clone(fake);
    let send = mock!(Client::send_command).then_compute_response(move |req| {
        let mut f = f.lock().expect("fake");
        f.send_attempts.push(req.instance_ids().to_vec());
        let refuse = |code: &str, message: String| {
            MockResponse::Error(SendCommandError::generic(
                ErrorMetadata::builder().code(code).message(message).build(),
            ))
        };
        if let Some(Some(code)) = f.send_errors.pop_front() {
            return refuse(code, format!("{code} from the fake"));
        }
        let gone: Vec<&String> = req
            .instance_ids()
            .iter()
            .filter(|i| f.gone.contains(i))
            .collect();
        if !gone.is_empty() {
            return refuse(
                "InvalidInstanceId",
                format!("Instances {gone:?} not in a valid state for account 123456789012"),
            );
        }
        let id = format!("cmd-{}", f.commands.len());
        f.commands.push((id.clone(), req.instance_ids().to_vec()));
        f.sent_parameters
            .push(req.parameters().cloned().unwrap_or_default());
        MockResponse::Output(
            SendCommandOutput::builder()
                .command(Command::builder().command_id(id).build())
                .build(),
        )
    });
    let f = Arc::clone(fake);
    let list = mock!(Client::list_command_invocations).then_compute_output(move |req| {
        let mut f = f.lock().expect("fake");
        let cmd = req.command_id().unwrap_or_default().to_owned();
        let instances = f
            .commands
            .iter()
            .find(|(c, _)| *c == cmd)
            .map(|(_, i)| i.clone())
            .unwrap_or_default();
        let mut out = ListCommandInvocationsOutput::builder();
        for i in instances {
            let (status, details, code, stdout, _) = f.step(&i);
            let head: String = f
                .long_output
                .get(&i)
                .map_or(stdout.to_owned(), |l| l.chars().take(2500).collect());
            let mut inv = CommandInvocation::builder()
                .command_id(&cmd)
                .instance_id(&i)
                .status(CommandInvocationStatus::from(status))
                .status_details(details);
            let names: &[&str] = if f.multi_step.contains(&i) {
                &["PatchLinux", "PatchWindows"]
            } else {
                &["aws:runShellScript"]
            };
            for name in names {
                inv = inv.command_plugins(
                    CommandPlugin::builder()
                        .name(*name)
                        .response_code(code)
                        .output(head.clone())
                        .build(),
                );
            }
            out = out.command_invocations(inv.build());
        }
        out.build()
    });
    let f = Arc::clone(fake);
    let get = mock!(Client::get_command_invocation).then_compute_response(move |req| {
        let mut f = f.lock().expect("fake");
        let i = req.instance_id().unwrap_or_default().to_owned();
        let plugin = req.plugin_name().map(str::to_owned);
        if plugin.is_none() && f.multi_step.contains(&i) {
            return MockResponse::Error(GetCommandInvocationError::generic(
                ErrorMetadata::builder().code("InvalidPluginName").build(),
            ));
        }
        // Naming a plugin reads its output; it does not move the script on.
        let (status, details, code, stdout, stderr) = if plugin.is_some() {
            f.peek(&i)
        } else {
            f.step(&i)
        };
        let stdout = match (&plugin, f.long_output.get(&i)) {
            (Some(_), Some(long)) => long.clone(),
            (Some(p), None) if f.multi_step.contains(&i) => format!("{p}: {stdout}"),
            _ => stdout.to_owned(),
        };
        MockResponse::Output(
            GetCommandInvocationOutput::builder()
                .command_id(req.command_id().unwrap_or_default())
                .instance_id(i)
                .status(CommandInvocationStatus::from(status))
                .status_details(details)
                .response_code(code)
                .standard_output_content(stdout)
                .standard_error_content(stderr)
                .build(),
        )
    });
    let f = Arc::clone(fake);
    let cancel = mock!(Client::cancel_command).then_compute_output(move |req| {
        let mut f = f.lock().expect("fake");
        let instances = req.instance_ids().to_vec();
        f.cancelled.push((
            req.command_id().unwrap_or_default().to_owned(),
            instances.clone(),
        ));
        for i in instances {
            f.scripts.insert(
                i,
                [
                    ("Cancelling", "Cancelling", -1, "", ""),
                    ("Cancelled", "Cancelled", -1, "partial output", ""),
                ]
                .into_iter()
                .collect(),
            );
        }
        CancelCommandOutput::builder().build()
    });
    let f = Arc::clone(fake);
    let describe = mock!(Client::describe_instance_information).then_compute_output(move |req| {
        let f = f.lock().expect("fake");
        let asked: Vec<String> = req
            .filters()
            .iter()
            .flat_map(|flt| flt.values().to_vec())
            .collect();
        let mut out = DescribeInstanceInformationOutput::builder();
        for i in asked {
            if let Some(p) = f.ping.get(&i) {
                out = out.instance_information_list(
                    InstanceInformation::builder()
                        .instance_id(&i)
                        .ping_status(p.clone())
                        .platform_type(f.platform.get(&i).cloned().unwrap_or(PlatformType::Linux))
                        .build(),
                );
            }
        }
        out.build()
    });
    let f = Arc::clone(fake);
    // AWS-RunShellScript as SSM describes it: `commands` (required),
    // `workingDirectory` and `executionTimeout` (with defaults), Linux and
    // macOS only.
    let document = mock!(Client::describe_document).then_compute_output(move |req| {
        f.lock().expect("fake").describe_document_calls += 1;
        let p = |name: &str, default: Option<&str>| {
            DocumentParameter::builder()
                .name(name)
                .set_default_value(default.map(str::to_owned))
                .build()
        };
        DescribeDocumentOutput::builder()
            .document(
                DocumentDescription::builder()
                    .name(req.name().unwrap_or_default())
                    .parameters(p("commands", None))
                    .parameters(p("workingDirectory", Some("")))
                    .parameters(p("executionTimeout", Some("3600")))
                    .platform_types(PlatformType::Linux)
                    .platform_types(PlatformType::Macos)
                    .build(),
            )
            .build()
    });
    mock_client!(
        aws_sdk_ssm,
        RuleMode::MatchAny,
        &[&send, &list, &get, &cancel, &describe, &document],
        |c| c.retry_config(RetryConfig::disabled())
    )
}

fn builder(fake: &Arc<Mutex<Fake>>) -> SsmExecutorBuilder {
    SsmExecutor::builder("AWS-RunShellScript")
        .with_client(client(fake))
        .with_parameter("commands", ["yum -y update"])
}

fn target(id: &str) -> Target {
    Target::new(TargetId::new(id).expect("id")).with_instance_id(id)
}

const TERMINAL: &[Step] = &[
    ("Success", "Success", 0, "patched 3 packages", ""),
    (
        "Failed",
        "Failed",
        2,
        "yum: error",
        "No space left on device",
    ),
    ("Cancelled", "Cancelled", -1, "", ""),
    ("TimedOut", "TimedOut", -1, "", ""),
    ("TimedOut", "DeliveryTimedOut", -1, "", ""),
    ("Failed", "ExecutionTimedOut", 124, "half done", ""),
    ("Failed", "Undeliverable", -1, "", ""),
    ("Failed", "Terminated", -1, "", ""),
    ("Failed", "InvalidPlatform", -1, "", ""),
    ("Failed", "AccessDenied", -1, "", ""),
];

async fn every_terminal_status(api: StatusApi) {
    let fake = Fake::new(vec![PENDING]);
    let targets: Vec<Target> = (0..TERMINAL.len())
        .map(|i| target(&format!("i-{i:04x}")))
        .collect();
    {
        let mut f = fake.lock().expect("fake");
        for (t, step) in targets.iter().zip(TERMINAL) {
            f.scripts.insert(
                t.id.to_string(),
                [PENDING, RUNNING, RUNNING, *step].into_iter().collect(),
            );
        }
    }
    let exec = builder(&fake).with_status_api(api).build().expect("builds");
    let out = exec.execute(&targets).await.expect("execute");
    assert_eq!(out.len(), TERMINAL.len());
    for ((o, t), (status, details, code, stdout, stderr)) in out.iter().zip(&targets).zip(TERMINAL)
    {
        assert_eq!(o.id, t.id, "outcomes are in order");
        assert_eq!(o.success, *status == "Success", "{details}: {o:?}");
        if *status != "Success" {
            let msg = o.message.as_deref().unwrap_or_default();
            assert!(
                msg.contains(details) && msg.contains("cmd-0") && msg.contains(t.id.as_str()),
                "{details}: {msg}"
            );
        }
        if *code >= 0 {
            assert_eq!(o.exit_code, Some(*code), "{details}");
        }
        assert_eq!(o.stdout_tail, *stdout, "{details}");
        if api == StatusApi::GetCommandInvocation {
            assert_eq!(o.stderr_tail, *stderr, "{details}");
        }
    }
    assert_eq!(
        fake.lock().expect("fake").commands.len(),
        1,
        "one SendCommand for ≤ 50 instances"
    );
}

#[tokio::test(start_paused = true)]
async fn every_terminal_status_via_list_command_invocations() {
    every_terminal_status(StatusApi::ListCommandInvocations).await;
}

#[tokio::test(start_paused = true)]
async fn every_terminal_status_via_get_command_invocation() {
    every_terminal_status(StatusApi::GetCommandInvocation).await;
}

#[tokio::test(start_paused = true)]
async fn each_command_gets_the_traceparent_parameter_when_asked() {
    // hygiene's own TRACEPARENT stands in for an exporter's span context.
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert!(hygiene_core::trace::set_injector(|_| Some(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()
    )));
    let fake = Fake::new(vec![("Success", "Success", 0, "ok", "")]);
    let targets: Vec<Target> = (0..60).map(|i| target(&format!("i-{i:04x}"))).collect();
    let exec = builder(&fake)
        .with_traceparent_parameter("traceparent")
        .build()
        .expect("builds");
    let out = exec.execute(&targets).await.expect("execute");
    assert!(out.iter().all(|o| o.success));
    let exec = builder(&fake).build().expect("builds");
    exec.execute(&targets[..1]).await.expect("execute");
    let f = fake.lock().expect("fake");
    assert_eq!(f.sent_parameters.len(), 3);
    for p in &f.sent_parameters[..2] {
        assert_eq!(p.get("traceparent"), Some(&vec![tp.to_owned()]), "{p:?}");
    }
    assert!(
        !f.sent_parameters[2].contains_key("traceparent"),
        "only when asked: {:?}",
        f.sent_parameters[2]
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_fifty_instances_per_send_command() {
    let fake = Fake::new(vec![RUNNING, ("Success", "Success", 0, "ok", "")]);
    let targets: Vec<Target> = (0..120).map(|i| target(&format!("i-{i:04x}"))).collect();
    let exec = builder(&fake)
        .with_execution_timeout(Duration::from_secs(600))
        .build()
        .expect("builds");
    let out = exec.execute(&targets).await.expect("execute");
    assert!(out.iter().all(|o| o.success));
    let f = fake.lock().expect("fake");
    let sizes: Vec<usize> = f.commands.iter().map(|(_, i)| i.len()).collect();
    assert_eq!(sizes, vec![50, 50, 20]);
    assert_eq!(
        f.sent_parameters[0].get("executionTimeout"),
        Some(&vec!["600".to_owned()])
    );
    assert_eq!(
        f.sent_parameters[0].get("commands"),
        Some(&vec!["yum -y update".to_owned()])
    );
}

#[tokio::test(start_paused = true)]
async fn preflight_says_why_an_instance_is_not_ready() {
    let fake = Fake::new(vec![]);
    {
        let mut f = fake.lock().expect("fake");
        f.ping.insert("i-online".into(), PingStatus::Online);
        f.ping.insert("i-lost".into(), PingStatus::ConnectionLost);
    }
    let exec = builder(&fake).build().expect("builds");
    let ip = Target::new(TargetId::new("10.0.0.5").expect("id")).with_address("10.0.0.5");
    let pf = exec
        .preflight(&[
            target("i-online"),
            target("i-lost"),
            target("i-unmanaged"),
            ip.clone(),
        ])
        .await
        .expect("preflight");
    assert_eq!(pf[0], Preflight::Ready);
    assert!(
        matches!(&pf[1], Preflight::NotReady(why) if why.contains("ConnectionLost") && why.contains("i-lost")),
        "{:?}",
        pf[1]
    );
    assert!(
        matches!(&pf[2], Preflight::NotReady(why) if why.contains("not managed by SSM")),
        "{:?}",
        pf[2]
    );
    assert!(
        matches!(&pf[3], Preflight::NotReady(why) if why.contains("10.0.0.5") && why.contains("with_instance_id")),
        "{:?}",
        pf[3]
    );

    // With the IP mapped to its instance, it is checked (and run) there.
    let exec = builder(&fake)
        .with_instance_id(ip.id.clone(), "i-online")
        .build()
        .expect("builds");
    assert_eq!(
        exec.preflight(std::slice::from_ref(&ip))
            .await
            .expect("preflight"),
        vec![Preflight::Ready]
    );
}

#[tokio::test(start_paused = true)]
async fn an_offline_agent_is_never_drained() {
    let fake = Fake::new(vec![RUNNING, ("Success", "Success", 0, "ok", "")]);
    {
        let mut f = fake.lock().expect("fake");
        f.ping.insert("i-0a".into(), PingStatus::Online);
        f.ping.insert("i-0b".into(), PingStatus::ConnectionLost);
        f.ping.insert("i-0c".into(), PingStatus::Online);
    }
    let lb = InMemoryBalancer::with_targets(["i-0a", "i-0b", "i-0c"]).expect("lb");
    let exec = builder(&fake).build().expect("builds");
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(1))
        .max_failures(Amount::Count(1))
        .build()
        .expect("config");
    let report = Rollout::new(lb.clone(), exec, config)
        .run()
        .await
        .expect("runs");
    let b = report
        .targets
        .iter()
        .find(|t| t.id.as_str() == "i-0b")
        .expect("reported");
    assert!(
        matches!(&b.result, TargetResult::Failed { phase: Stage::Preflight, reason, kept_out: false, .. } if reason.contains("ConnectionLost")),
        "{:?}",
        b.result
    );
    let drained: Vec<String> = lb
        .calls()
        .into_iter()
        .filter(|c| c.op == Operation::Drain)
        .flat_map(|c| c.ids.into_iter().map(|i| i.to_string()))
        .collect();
    assert!(!drained.contains(&"i-0b".to_owned()), "{drained:?}");
    assert_eq!(
        fake.lock()
            .expect("fake")
            .commands
            .iter()
            .map(|(_, i)| i.len())
            .sum::<usize>(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn cancellation_cancels_the_outstanding_command() {
    let fake = Fake::new(vec![RUNNING]);
    let token = CancellationToken::new();
    let exec = builder(&fake)
        .with_cancellation(token.clone())
        .build()
        .expect("builds");
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        t.cancel();
    });
    let out = exec
        .execute(&[target("i-0a"), target("i-0b")])
        .await
        .expect("execute");
    let f = fake.lock().expect("fake");
    assert_eq!(
        f.cancelled.len(),
        1,
        "one CancelCommand for the outstanding command"
    );
    assert_eq!(f.cancelled[0].0, "cmd-0");
    assert_eq!(f.cancelled[0].1.len(), 2);
    for o in out {
        assert!(!o.success);
        assert!(
            o.message
                .as_deref()
                .is_some_and(|m| m.contains("Cancelled")),
            "{o:?}"
        );
        assert_eq!(o.stdout_tail, "partial output");
    }
}

#[tokio::test(start_paused = true)]
async fn a_command_past_its_wait_limit_is_cancelled() {
    let fake = Fake::new(vec![RUNNING]);
    let exec = builder(&fake)
        .with_wait_timeout(Duration::from_secs(60))
        .with_cancel_grace(Duration::from_secs(10))
        .build()
        .expect("builds");
    {
        // SSM never confirms this cancel.
        let mut f = fake.lock().expect("fake");
        f.scripts
            .insert("i-stuck".into(), [RUNNING].into_iter().collect());
    }
    let started = tokio::time::Instant::now();
    let out = exec.execute(&[target("i-stuck")]).await.expect("execute");
    assert!(started.elapsed() >= Duration::from_secs(60));
    assert_eq!(fake.lock().expect("fake").cancelled.len(), 1);
    // The fake switches the script to Cancelled on CancelCommand.
    assert!(!out[0].success);
}

#[test]
fn builder_validates() {
    let fake = Fake::new(vec![]);
    assert!(SsmExecutor::builder("")
        .with_client(client(&fake))
        .build()
        .is_err());
    assert!(builder(&fake)
        .with_comment("x".repeat(101))
        .build()
        .is_err());
    assert!(builder(&fake)
        .with_delivery_timeout(Duration::from_secs(5))
        .build()
        .is_err());
    assert!(builder(&fake)
        .with_poll_interval(Duration::ZERO)
        .build()
        .is_err());
    assert!(
        SsmExecutor::builder("AWS-RunShellScript").build().is_err(),
        "no AWS configuration"
    );
    assert!(builder(&fake).build().is_ok());
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_without_list_command_invocations_fails_clearly() {
    let fake = Fake::new(vec![RUNNING]);
    let f = Arc::clone(&fake);
    let send = mock!(Client::send_command).then_compute_output(move |req| {
        let mut f = f.lock().expect("fake");
        f.commands
            .push(("cmd-0".into(), req.instance_ids().to_vec()));
        SendCommandOutput::builder()
            .command(Command::builder().command_id("cmd-0").build())
            .build()
    });
    // moto answers unknown actions with a 500, a retryable server error.
    let list = mock!(Client::list_command_invocations).then_error(|| {
        aws_sdk_ssm::operation::list_command_invocations::ListCommandInvocationsError::generic(
            aws_sdk_ssm::error::ErrorMetadata::builder()
                .code("InternalFailure")
                .message("not implemented")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&send, &list], |c| c
        .retry_config(RetryConfig::disabled()));
    let exec = SsmExecutor::builder("AWS-RunShellScript")
        .with_client(client)
        .build()
        .expect("builds");
    let out = exec.execute(&[target("i-0a")]).await.expect("execute");
    assert!(!out[0].success);
    assert!(out[0].may_still_run, "an unread command may still run");
    let msg = out[0].message.as_deref().unwrap_or_default();
    assert!(
        msg.contains("StatusApi::GetCommandInvocation") && msg.contains("may still be running"),
        "{msg}"
    );
}

const OK: Step = ("Success", "Success", 0, "ok", "");

fn refused_message(o: &hygiene_core::ExecOutcome) -> &str {
    o.message.as_deref().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn an_instance_gone_since_preflight_fails_alone_on_the_first_send_command() {
    // Alone in its call: an outcome, not an Err of execute.
    let fake = Fake::new(vec![RUNNING, OK]);
    fake.lock().expect("fake").gone = vec!["i-gone".into()];
    let exec = builder(&fake).build().expect("builds");
    let out = exec.execute(&[target("i-gone")]).await.expect("execute");
    assert_eq!(out.len(), 1);
    assert!(!out[0].success);
    assert_eq!(out[0].id.as_str(), "i-gone");
    let msg = refused_message(&out[0]);
    assert!(
        msg.contains("i-gone") && msg.contains("InvalidInstanceId") && msg.contains("agent"),
        "{msg}"
    );

    // With others in its call: SSM refuses the whole call, so the others
    // are sent again one by one and run; only the gone instance fails.
    let fake = Fake::new(vec![RUNNING, OK]);
    fake.lock().expect("fake").gone = vec!["i-gone".into()];
    let exec = builder(&fake).build().expect("builds");
    let targets = [target("i-0a"), target("i-gone"), target("i-0b")];
    let out = exec.execute(&targets).await.expect("execute");
    assert!(out[0].success && out[2].success, "{out:?}");
    assert!(!out[1].success);
    let msg = refused_message(&out[1]);
    assert!(
        msg.contains("i-gone") && msg.contains("InvalidInstanceId"),
        "{msg}"
    );
    let f = fake.lock().expect("fake");
    assert_eq!(
        f.send_attempts,
        vec![
            vec!["i-0a".to_owned(), "i-gone".into(), "i-0b".into()],
            vec!["i-0a".to_owned()],
            vec!["i-gone".to_owned()],
            vec!["i-0b".to_owned()],
        ]
    );
    assert_eq!(f.commands.len(), 2, "the command ran on i-0a and i-0b");
}

#[tokio::test(start_paused = true)]
async fn an_instance_gone_fails_the_same_way_in_a_later_send_command() {
    let fake = Fake::new(vec![RUNNING, OK]);
    fake.lock().expect("fake").gone = vec!["i-gone".into()];
    let mut targets: Vec<Target> = (0..50).map(|i| target(&format!("i-{i:04x}"))).collect();
    targets.push(target("i-gone"));
    let exec = builder(&fake).build().expect("builds");
    let out = exec.execute(&targets).await.expect("execute");
    assert!(out[..50].iter().all(|o| o.success));
    assert!(!out[50].success);
    let msg = refused_message(&out[50]);
    assert!(
        msg.contains("i-gone") && msg.contains("InvalidInstanceId"),
        "{msg}"
    );
}

#[tokio::test(start_paused = true)]
async fn send_command_refusals_before_anything_was_sent_are_errors() {
    // Throttled before SSM accepted anything, past the executor's own
    // retries: retryable, and nothing ran.
    let fake = Fake::new(vec![RUNNING, OK]);
    fake.lock().expect("fake").send_errors = [Some("ThrottlingException"); 6].into();
    let exec = builder(&fake).build().expect("builds");
    let e = exec
        .execute(&[target("i-0a"), target("i-0b")])
        .await
        .expect_err("throttled");
    assert!(
        matches!(e, Error::Throttled { .. }) && e.is_retryable(),
        "{e:?}"
    );

    // A document SSM does not know: the executor fails as a whole, naming it.
    let fake = Fake::new(vec![RUNNING, OK]);
    fake.lock().expect("fake").send_errors = [Some("InvalidDocument")].into();
    let exec = builder(&fake).build().expect("builds");
    let e = exec
        .execute(&[target("i-0a")])
        .await
        .expect_err("no such document");
    assert!(
        matches!(&e, Error::NotFound { kind: "SSM document", name, .. } if name == "AWS-RunShellScript"),
        "{e:?}"
    );
    assert!(!e.is_retryable());

    // Once a command runs, a later refusal (past the retries) fails that
    // call's targets.
    let fake = Fake::new(vec![RUNNING, OK]);
    fake.lock().expect("fake").send_errors = std::iter::once(None)
        .chain([Some("ThrottlingException"); 6])
        .collect();
    let targets: Vec<Target> = (0..60).map(|i| target(&format!("i-{i:04x}"))).collect();
    let exec = builder(&fake).build().expect("builds");
    let out = exec.execute(&targets).await.expect("execute");
    assert!(out[..50].iter().all(|o| o.success));
    for o in &out[50..] {
        let msg = refused_message(o);
        assert!(
            !o.success && msg.contains(o.id.as_str()) && msg.contains("ThrottlingException"),
            "{msg}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttled_send_command_after_the_first_chunk_is_retried() {
    let fake = Fake::new(vec![RUNNING, OK]);
    fake.lock().expect("fake").send_errors = [
        None,
        Some("ThrottlingException"),
        Some("ThrottlingException"),
    ]
    .into();
    let targets: Vec<Target> = (0..60).map(|i| target(&format!("i-{i:04x}"))).collect();
    let exec = builder(&fake).build().expect("builds");
    let out = exec.execute(&targets).await.expect("execute");
    assert!(
        out.iter().all(|o| o.success),
        "{:?}",
        out.iter().find(|o| !o.success)
    );
    let f = fake.lock().expect("fake");
    assert_eq!(f.send_attempts.len(), 4, "one retry per throttle");
    assert_eq!(f.commands.len(), 2, "each instance got the command once");
}

#[tokio::test(start_paused = true)]
async fn the_one_by_one_sends_after_a_refusal_are_paced() {
    let fake = Fake::new(vec![RUNNING, OK]);
    fake.lock().expect("fake").gone = vec!["i-gone".into()];
    let mut targets: Vec<Target> = (0..9).map(|i| target(&format!("i-{i:04x}"))).collect();
    targets.push(target("i-gone"));
    let exec = builder(&fake)
        .with_send_gap(Duration::from_millis(500))
        .build()
        .expect("builds");
    let started = tokio::time::Instant::now();
    let out = exec.execute(&targets).await.expect("execute");
    assert_eq!(out.iter().filter(|o| o.success).count(), 9);
    assert_eq!(fake.lock().expect("fake").send_attempts.len(), 11);
    // Ten single sends after the refused call, 500 ms apart at least.
    assert!(
        started.elapsed() >= Duration::from_millis(5000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_document_of_several_steps_is_read_without_guessing_a_plugin() {
    // AWS-RunPatchBaseline has a Linux and a Windows step: GetCommandInvocation
    // without a plugin name is InvalidPluginName for it.
    let fake = Fake::new(vec![RUNNING, OK]);
    fake.lock().expect("fake").multi_step = vec!["i-0a".into(), "i-0b".into()];
    let exec = builder(&fake)
        .with_status_api(StatusApi::GetCommandInvocation)
        .build()
        .expect("builds");
    let out = exec
        .execute(&[target("i-0a"), target("i-0b")])
        .await
        .expect("execute");
    for o in &out {
        assert!(o.success, "{o:?}");
        assert!(
            o.stdout_tail.contains("PatchLinux: ok") && o.stdout_tail.contains("PatchWindows: ok"),
            "every step's output: {:?}",
            o.stdout_tail
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_output_tail_is_the_real_end_not_the_first_2500_characters() {
    let fake = Fake::new(vec![RUNNING, OK]);
    let long: String = (0..400)
        .map(|i| format!("line {i:04} of the patch log\n"))
        .collect::<String>()
        + "Complete! THE END";
    assert!(long.len() > 10_000);
    fake.lock()
        .expect("fake")
        .long_output
        .insert("i-0a".into(), long);
    let exec = builder(&fake).build().expect("builds");
    let out = exec.execute(&[target("i-0a")]).await.expect("execute");
    assert!(out[0].success);
    assert!(
        out[0].stdout_tail.ends_with("Complete! THE END"),
        "{:?}",
        &out[0].stdout_tail
    );
}

#[tokio::test(start_paused = true)]
async fn the_document_is_checked_before_any_drain() {
    let fake = Fake::new(vec![RUNNING, OK]);
    {
        let mut f = fake.lock().expect("fake");
        f.ping.insert("i-0a".into(), PingStatus::Online);
        f.ping.insert("i-win".into(), PingStatus::Online);
        f.platform.insert("i-win".into(), PlatformType::Windows);
    }
    // A misspelt parameter: preflight fails, naming it and what the document takes.
    let exec = builder(&fake)
        .with_parameter("workingDirectroy", ["/srv"])
        .build()
        .expect("builds");
    let e = exec
        .preflight(&[target("i-0a")])
        .await
        .expect_err("no such parameter");
    let text = e.to_string();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "parameters",
                ..
            }
        ) && text.contains("workingDirectroy")
            && text.contains("workingDirectory"),
        "{text}"
    );
    // A required parameter left out.
    let exec = SsmExecutor::builder("AWS-RunShellScript")
        .with_client(client(&fake))
        .build()
        .expect("builds");
    let e = exec
        .preflight(&[target("i-0a")])
        .await
        .expect_err("commands");
    assert!(e.to_string().contains("commands"), "{e}");
    // Through the engine: nothing is drained.
    let lb = InMemoryBalancer::with_targets(["i-0a", "i-0b"]).expect("lb");
    let exec = builder(&fake)
        .with_parameter("workingDirectroy", ["/srv"])
        .build()
        .expect("builds");
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(0))
        .build()
        .expect("config");
    let _ = Rollout::new(lb.clone(), exec, config).run().await;
    assert!(
        !lb.calls().iter().any(|c| c.op == Operation::Drain),
        "nothing drained"
    );
    // A document for Linux on a Windows instance: that one is not ready.
    let exec = builder(&fake).build().expect("builds");
    let before = fake.lock().expect("fake").describe_document_calls;
    let pf = exec
        .preflight(&[target("i-0a"), target("i-win")])
        .await
        .expect("preflight");
    assert_eq!(pf[0], Preflight::Ready);
    assert!(
        matches!(&pf[1], Preflight::NotReady(why) if why.contains("Windows") && why.contains("i-win")),
        "{:?}",
        pf[1]
    );
    exec.preflight(&[target("i-0a")]).await.expect("again");
    assert_eq!(
        fake.lock().expect("fake").describe_document_calls - before,
        1,
        "the document is read once"
    );
}

#[test]
fn debug_shows_parameter_names_but_not_values() {
    let fake = Fake::new(vec![]);
    let b = builder(&fake).with_parameter("dbPassword", ["hunter2-secret"]);
    let text = format!("{b:?}");
    assert!(
        text.contains("dbPassword") && text.contains("commands"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2-secret") && !text.contains("yum -y update"),
        "{text}"
    );
    let exec = b.build().expect("builds");
    let text = format!("{exec:?}");
    assert!(text.contains("dbPassword"), "{text}");
    assert!(!text.contains("hunter2-secret"), "{text}");
}

/// One HTTP exchange on `listener`: reads the request, answers the first
/// part of a reply whose Content-Length promises more, and hangs up.
async fn serve_cut_off_reply(listener: tokio::net::TcpListener) {
    let Ok((sock, _)) = listener.accept().await else {
        return;
    };
    cut_off_reply(sock).await;
}

/// Reads one request and answers with a reply cut off mid-body.
async fn cut_off_reply(mut sock: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = sock.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 500\r\n\r\n{\"InstanceInformationList\": [{\"InstanceId\": \"i-0a\", ";
    let _ = sock.write_all(reply.as_bytes()).await;
    let _ = sock.flush().await;
    let _ = sock.shutdown().await;
}

#[tokio::test]
async fn a_reply_cut_off_mid_body_is_unavailable_not_protocol() {
    use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(serve_cut_off_reply(listener));
    let conf = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .endpoint_url(format!("http://{addr}"))
        .retry_config(RetryConfig::disabled())
        .build();
    let exec = SsmExecutor::builder("AWS-RunShellScript")
        .with_client(Client::from_conf(conf))
        .build()
        .expect("builds");
    let e = exec
        .preflight(&[target("i-0a")])
        .await
        .expect_err("reply cut off");
    assert!(
        matches!(e, Error::Unavailable { .. }) && e.is_retryable(),
        "{e:?}"
    );
    assert!(e.to_string().contains("cut off"), "{e}");
    server.await.expect("server");
}

#[tokio::test]
async fn send_command_is_never_resent_by_the_sdk_after_a_cut_reply() {
    use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let server = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(cut_off_reply(sock));
        }
    });
    // The SDK's standard retry policy (3 attempts) would re-send a request
    // whose reply was cut off; SendCommand must go out once.
    let conf = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .endpoint_url(format!("http://{addr}"))
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .build();
    let exec = SsmExecutor::builder("AWS-RunShellScript")
        .with_client(Client::from_conf(conf))
        .build()
        .expect("builds");
    let r = exec.execute(&[target("i-0a")]).await;
    let failed = match &r {
        Err(_) => true,
        Ok(outcomes) => outcomes.iter().all(|o| !o.success),
    };
    assert!(failed, "a cut reply is not a success: {r:?}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "SendCommand was sent more than once"
    );
    server.abort();
}

// Crash safety: the command id is journaled as soon as SendCommand
// answers, and a new process finds the command and waits for its end.
#[tokio::test(start_paused = true)]
async fn a_new_process_finds_a_running_command_and_reads_its_outcome() {
    for api in [
        StatusApi::ListCommandInvocations,
        StatusApi::GetCommandInvocation,
    ] {
        let fake = Fake::new(vec![RUNNING]);
        let targets = [target("i-0001"), target("i-0002")];
        let kept = hygiene_core::testing::KeptHandles::new();
        let sink = kept.sink();
        let exec = builder(&fake).with_status_api(api).build().expect("builds");
        // The process dies while both commands run.
        let run = exec.execute_tracked(&targets, &sink);
        assert!(tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .is_err());
        let kept = kept.handles();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kept[0].0, targets[0].id);
        assert_eq!(
            kept[0].1 .0,
            serde_json::json!({"command_id": "cmd-0", "instance_id": "i-0001"})
        );
        {
            let mut f = fake.lock().expect("fake");
            f.scripts.insert(
                "i-0001".into(),
                [RUNNING, RUNNING, ("Success", "Success", 0, "patched", "")]
                    .into_iter()
                    .collect(),
            );
            f.scripts.insert(
                "i-0002".into(),
                [RUNNING, ("Failed", "Failed", 2, "yum: error", "disk full")]
                    .into_iter()
                    .collect(),
            );
        }
        let fresh = builder(&fake).with_status_api(api).build().expect("builds");
        let got = fresh
            .recover(&targets[0], &kept[0].1)
            .await
            .expect("recover");
        let hygiene_core::Recovered::Finished(o) = got else {
            panic!("{api:?}: {got:?}");
        };
        assert!(o.success, "{o:?}");
        assert_eq!(o.stdout_tail, "patched");
        let got = fresh
            .recover(&targets[1], &kept[1].1)
            .await
            .expect("recover");
        let hygiene_core::Recovered::Finished(o) = got else {
            panic!("{api:?}: {got:?}");
        };
        assert!(!o.success);
        assert_eq!(o.exit_code, Some(2));
        assert!(
            o.message.as_deref().unwrap_or("").contains("cmd-0"),
            "{o:?}"
        );
        assert_eq!(
            fake.lock().expect("fake").commands.len(),
            1,
            "{api:?}: recovery never sends the command again"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_command_ssm_no_longer_knows_is_unknown_not_guessed() {
    let fake = Fake::new(vec![RUNNING]);
    let exec = builder(&fake).build().expect("builds");
    let gone = hygiene_core::ExecHandle(
        serde_json::json!({"command_id": "cmd-404", "instance_id": "i-0001"}),
    );
    let got = exec
        .recover(&target("i-0001"), &gone)
        .await
        .expect("recover");
    assert!(
        matches!(&got, hygiene_core::Recovered::Unknown(why) if why.contains("cmd-404")),
        "{got:?}"
    );
    let foreign = hygiene_core::ExecHandle(serde_json::json!({"pid": 42}));
    let got = exec
        .recover(&target("i-0001"), &foreign)
        .await
        .expect("recover");
    assert!(
        matches!(&got, hygiene_core::Recovered::Unknown(why) if why.contains("not an ssm command")),
        "{got:?}"
    );
    assert!(fake.lock().expect("fake").commands.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_recovered_command_past_the_wait_limit_is_cancelled_and_failed() {
    let fake = Fake::new(vec![RUNNING]);
    let exec = builder(&fake)
        .with_wait_timeout(Duration::from_secs(30))
        .build()
        .expect("builds");
    let handle = hygiene_core::ExecHandle(
        serde_json::json!({"command_id": "cmd-7", "instance_id": "i-0001"}),
    );
    fake.lock()
        .expect("fake")
        .commands
        .push(("cmd-7".into(), vec!["i-0001".into()]));
    let got = exec
        .recover(&target("i-0001"), &handle)
        .await
        .expect("recover");
    let hygiene_core::Recovered::Finished(o) = got else {
        panic!("{got:?}");
    };
    assert!(!o.success);
    assert!(
        o.may_still_run,
        "a cancel asked for and never confirmed: {o:?}"
    );
    assert!(
        o.message
            .as_deref()
            .unwrap_or("")
            .contains("cancel requested"),
        "{o:?}"
    );
    assert_eq!(fake.lock().expect("fake").cancelled.len(), 1);
}
