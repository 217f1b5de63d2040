//! ELBv2 behaviour moto cannot produce, through `aws-smithy-mocks`: a
//! `draining` that lasts several polls, `unhealthy` after enable, throttling.

mod fake;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig;
use aws_sdk_elasticloadbalancingv2::operation::deregister_targets::DeregisterTargetsOutput;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::DescribeTargetGroupsOutput;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::DescribeTargetHealthOutput;
use aws_sdk_elasticloadbalancingv2::operation::register_targets::RegisterTargetsOutput;
use aws_sdk_elasticloadbalancingv2::types::{
    TargetDescription, TargetGroup, TargetHealth, TargetHealthDescription,
    TargetHealthReasonEnum as Reason, TargetHealthStateEnum as State, TargetTypeEnum,
};
use aws_sdk_elasticloadbalancingv2::Client;
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use fake::{balancer, client, desc, id, Call, Fake, TG};
use hygiene_aws::Elbv2Balancer;
use hygiene_core::testing::ScriptedExecutor;
use hygiene_core::{
    Amount, Error, Health, LoadBalancer, OnDrainTimeout, Rollout, RolloutConfig, Stage, TargetId,
    TargetResult, TargetState,
};
#[tokio::test(start_paused = true)]
async fn draining_lasts_several_polls() {
    let fake = Fake::new(&["i-0a", "i-0b"]);
    // Five draining answers: one for drain's own check, four for the engine.
    fake.lock().expect("fake").draining_polls = 5;
    let lb = balancer(&fake);
    let poll = Duration::from_secs(5);
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(1))
        .poll_interval(poll)
        .build()
        .expect("config");
    let exec = ScriptedExecutor::new();
    let report = Rollout::new(lb.clone(), exec.clone(), config)
        .run()
        .await
        .expect("runs");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    // The engine looks right after the drain, then quickly (at 1/10, 1/4
    // and 1/2 of the poll interval), then every poll interval: four
    // draining answers last at least until the look at half the interval.
    for t in &report.targets {
        let drain = t.timings.drain.expect("drain timed");
        assert!(
            drain >= poll / 2,
            "{}: drained after {drain:?}, but ELBv2 said draining for 4 polls",
            t.id
        );
    }
    let f = fake.lock().expect("fake");
    assert_eq!(
        f.deregistered,
        vec![
            ("i-0a".to_owned(), Some(8080)),
            ("i-0b".to_owned(), Some(8080))
        ],
        "deregistered with the registered port"
    );
    assert_eq!(
        f.registered, f.deregistered,
        "registered again exactly as before"
    );
    assert_eq!(exec.records().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn draining_is_not_drained_and_has_no_connection_count() {
    let fake = Fake::new(&["i-0a"]);
    // One draining answer goes to drain's own check after DeregisterTargets.
    fake.lock().expect("fake").draining_polls = 4;
    let lb = balancer(&fake);
    lb.drain(&[id("i-0a")]).await.expect("drain");
    for _ in 0..2 {
        let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
        assert_eq!((st.state, st.connections), (TargetState::Draining, None));
        assert!(!st.is_drained());
    }
    assert!(lb.status(&[id("i-0a")]).await.expect("status")[0].is_drained());
    // Draining again once drained changes nothing.
    lb.drain(&[id("i-0a")]).await.expect("drain again");
    assert_eq!(fake.lock().expect("fake").deregistered.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn unhealthy_after_enable_fails_at_health_timeout_with_the_reason() {
    let fake = Fake::new(&["i-0a", "i-0b", "i-0c"]);
    {
        let mut f = fake.lock().expect("fake");
        f.draining_polls = 1;
        f.after_enable = vec![
            (State::Initial, Some(Reason::RegistrationInProgress)),
            (State::Unhealthy, Some(Reason::ResponseCodeMismatch)),
        ];
    }
    let lb = balancer(&fake);
    let health_timeout = Duration::from_secs(120);
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(1))
        .max_failures(Amount::Count(0))
        .health_timeout(health_timeout)
        .poll_interval(Duration::from_secs(5))
        .build()
        .expect("config");
    let started = tokio::time::Instant::now();
    let report = Rollout::new(lb.clone(), ScriptedExecutor::new(), config)
        .run()
        .await
        .expect("runs");
    assert!(!report.is_success());
    let failed: Vec<_> = report.failed().collect();
    assert_eq!(
        failed.len(),
        1,
        "max_failures 0 stops after the first: {}",
        report.to_json_pretty()
    );
    match &failed[0].result {
        TargetResult::Failed {
            phase,
            reason,
            kept_out,
            restore_hint,
            ..
        } => {
            assert_eq!(*phase, Stage::Enabling, "{reason}");
            assert!(
                reason.contains("Target.ResponseCodeMismatch"),
                "the report carries ELBv2's reason: {reason}"
            );
            assert!(*kept_out, "KeepOut is the default");
            assert!(
                restore_hint
                    .as_deref()
                    .is_some_and(|h| h.contains("register-targets") && h.contains("Port=8080")),
                "{restore_hint:?}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(
        started.elapsed() >= health_timeout,
        "failed before health_timeout: {:?}",
        started.elapsed()
    );
    // `health_reason` is the latest status's: the run's last look before
    // it ended read the target taken out (deregistered) again.
    let why = lb
        .health_reason(&failed[0].id)
        .expect("the reason ELBv2 gave is kept");
    assert!(
        why.contains("Target.NotRegistered") && why.contains("web port 8080"),
        "{why}"
    );
}

#[tokio::test(start_paused = true)]
async fn throttling_is_typed_and_retried() {
    let fake = Fake::new(&["i-0a", "i-0b"]);
    let lb = balancer(&fake);
    lb.list().await.expect("list");
    fake.lock().expect("fake").throttle_next = 1;
    let e = lb.status(&[id("i-0a")]).await.expect_err("throttled");
    assert!(
        matches!(e, Error::Throttled { .. }) && e.is_retryable(),
        "{e:?}"
    );
    assert!(e.to_string().contains("Rate exceeded"), "{e}");

    // Through the engine: throttled polls are retried with backoff.
    {
        let mut f = fake.lock().expect("fake");
        f.throttle_next = 3;
        f.draining_polls = 1;
    }
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(1))
        .build()
        .expect("config");
    let report = Rollout::new(lb, ScriptedExecutor::new(), config)
        .run()
        .await
        .expect("runs");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    assert_eq!(
        fake.lock().expect("fake").throttle_next,
        0,
        "every throttle was hit"
    );
}

#[tokio::test(start_paused = true)]
async fn a_terminated_instance_fails_alone_in_describe_target_health() {
    let fake = Fake::new(&["i-0a", "i-0b", "i-0c"]);
    let lb = balancer(&fake);
    lb.list().await.expect("list");
    // i-0b was terminated: ELBv2 refuses a targeted DescribeTargetHealth
    // that names it, for every target of the call.
    fake.lock().expect("fake").invalid = vec!["i-0b".into()];
    let before = fake.lock().expect("fake").targeted_calls;
    let st = lb
        .status(&[id("i-0a"), id("i-0b"), id("i-0c")])
        .await
        .expect("the others are still read");
    assert!(
        st[0].is_serving_healthy() && st[2].is_serving_healthy(),
        "{st:?}"
    );
    assert_eq!(
        (st[1].state, st[1].health),
        (TargetState::OutOfService, Health::Unhealthy)
    );
    let why = st[1].reason.as_deref().unwrap_or_default();
    assert!(
        why.contains("InvalidTarget") && why.contains("terminated"),
        "{why}"
    );
    assert_eq!(
        fake.lock().expect("fake").targeted_calls - before,
        1,
        "the refused call is not counted by the fake; the others are asked again in one call"
    );
    // Asked alone, it is NotFound, naming it (the engine's vanished path).
    let e = lb.status(&[id("i-0b")]).await.expect_err("InvalidTarget");
    assert!(
        matches!(&e, Error::NotFound { kind: "target", name, .. } if name.contains("i-0b")),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains("i-0b") && text.contains("DescribeTargetHealth"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_describe_target_health_per_poll_for_the_whole_batch() {
    let ids: Vec<String> = (0..20).map(|i| format!("i-{i:04x}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let fake = Fake::new(&refs);
    let lb = balancer(&fake);
    let all: Vec<TargetId> = ids.iter().map(|s| id(s)).collect();
    lb.list().await.expect("list");
    let before = fake.lock().expect("fake").targeted_calls;
    let st = lb.status(&all).await.expect("status");
    assert_eq!(st.len(), 20);
    assert_eq!(fake.lock().expect("fake").targeted_calls - before, 1);
}

#[tokio::test(start_paused = true)]
async fn ip_targets_keep_port_and_availability_zone() {
    let ip_tg =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/ips/0123456789abcdef";
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let groups = mock!(Client::describe_target_groups).then_output(move || {
        DescribeTargetGroupsOutput::builder()
            .target_groups(
                TargetGroup::builder()
                    .target_group_arn(ip_tg)
                    .target_group_name("ips")
                    .target_type(TargetTypeEnum::Ip)
                    .build(),
            )
            .build()
    });
    // Registered in full listings; asked by id (after the drain): draining
    // once, then unused.
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let health = mock!(Client::describe_target_health).then_compute_output(move |req| {
        let state = if req.targets().is_empty() {
            State::Healthy
        } else if asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            State::Draining
        } else {
            State::Unused
        };
        DescribeTargetHealthOutput::builder()
            .target_health_descriptions(
                TargetHealthDescription::builder()
                    .target(
                        TargetDescription::builder()
                            .id("10.0.1.5")
                            .port(9443)
                            .availability_zone("all")
                            .build(),
                    )
                    .target_health(TargetHealth::builder().state(state).build())
                    .build(),
            )
            .build()
    });
    let c = Arc::clone(&calls);
    let dereg = mock!(Client::deregister_targets).then_compute_output(move |req| {
        for t in req.targets() {
            c.lock().expect("calls").push((
                "deregister",
                t.id().unwrap_or_default().to_owned(),
                t.port(),
                t.availability_zone().map(str::to_owned),
            ));
        }
        DeregisterTargetsOutput::builder().build()
    });
    let c = Arc::clone(&calls);
    let reg = mock!(Client::register_targets).then_compute_output(move |req| {
        for t in req.targets() {
            c.lock().expect("calls").push((
                "register",
                t.id().unwrap_or_default().to_owned(),
                t.port(),
                t.availability_zone().map(str::to_owned),
            ));
        }
        RegisterTargetsOutput::builder().build()
    });
    let client = mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        &[&groups, &health, &dereg, &reg]
    );
    let lb = Elbv2Balancer::builder()
        .with_client(client)
        .with_target_group(ip_tg)
        .build()
        .expect("builds");
    let listed = lb.list().await.expect("list");
    let t = &listed[0].target;
    assert_eq!(
        (
            t.id.as_str(),
            t.address.as_deref(),
            t.port,
            t.zone.as_deref()
        ),
        ("10.0.1.5", Some("10.0.1.5"), Some(9443), Some("all"))
    );
    assert_eq!(
        t.instance_id, None,
        "an IP target has no instance id of its own"
    );
    lb.drain(&[id("10.0.1.5")]).await.expect("drain");
    lb.enable(&[id("10.0.1.5")]).await.expect("enable");
    let calls = calls.lock().expect("calls");
    assert_eq!(
        *calls,
        vec![
            (
                "deregister",
                "10.0.1.5".to_owned(),
                Some(9443),
                Some("all".to_owned())
            ),
            (
                "register",
                "10.0.1.5".to_owned(),
                Some(9443),
                Some("all".to_owned())
            ),
        ]
    );
    assert!(
        lb.enable_hint(&id("10.0.1.5"))
            .contains("Id=10.0.1.5,Port=9443,AvailabilityZone=all"),
        "{}",
        lb.enable_hint(&id("10.0.1.5"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_draining_target_is_registered_again_only_once_unused() {
    // Drain timeout 20 s with Proceed, ELBv2 drains for ~12 polls of 5 s:
    // the maintenance runs and enable comes while ELBv2 still drains.
    let fake = Fake::new(&["i-0a"]);
    fake.lock().expect("fake").draining_polls = 12;
    let lb = balancer(&fake);
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(0))
        .drain_timeout(Duration::from_secs(20))
        .on_drain_timeout(OnDrainTimeout::Proceed)
        .health_timeout(Duration::from_secs(600))
        .poll_interval(Duration::from_secs(5))
        .build()
        .expect("config");
    let report = Rollout::new(lb.clone(), ScriptedExecutor::new(), config)
        .run()
        .await
        .expect("runs");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    let f = fake.lock().expect("fake");
    assert_eq!(
        f.registered_while_draining, 0,
        "RegisterTargets on a draining registration brings back a stale healthy"
    );
    assert_eq!(f.registered, vec![("i-0a".to_owned(), Some(8080))]);
    assert!(f.targets["i-0a"].current.0 == State::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_draining_registration_reads_draining_until_registered() {
    let fake = Fake::new(&["i-0a"]);
    // Draining for drain's own check, enable's look and one status
    // (enable does not wait here: the registration is left to status).
    fake.lock().expect("fake").draining_polls = 4;
    let lb = Elbv2Balancer::builder()
        .with_client(client(&fake))
        .with_target_group(TG)
        .with_enable_wait(Duration::ZERO)
        .build()
        .expect("builds");
    lb.drain(&[id("i-0a")]).await.expect("drain");
    lb.enable(&[id("i-0a")]).await.expect("enable");
    assert!(fake.lock().expect("fake").registered.is_empty());
    let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
    assert_eq!(
        (st.state, st.health),
        (TargetState::Draining, Health::Unknown)
    );
    assert!(
        st.reason
            .as_deref()
            .is_some_and(|r| r.contains("registered again once")),
        "{st:?}"
    );
    // Unused at the next poll: registered then, and unknown until checked.
    let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
    assert_eq!(
        (st.state, st.health),
        (TargetState::InService, Health::Unknown)
    );
    assert_eq!(fake.lock().expect("fake").registered.len(), 1);
    let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
    assert_eq!(st.health, Health::Unknown, "initial");
    let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
    assert!(st.is_serving_healthy(), "{st:?}");
    assert_eq!(fake.lock().expect("fake").registered_while_draining, 0);
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_draining_nlb_target_is_registered_and_deregistered() {
    let fake = Fake::new(&["i-0a"]);
    fake.lock()
        .expect("fake")
        .targets
        .get_mut("i-0a")
        .expect("i-0a")
        .current = (State::UnhealthyDraining, Some(Reason::FailedHealthChecks));
    let lb = balancer(&fake);
    let listed = lb.list().await.expect("list");
    assert_eq!(
        (listed[0].status.state, listed[0].status.health),
        (TargetState::InService, Health::Unhealthy),
        "a registered, unhealthy target"
    );
    assert!(!listed[0].status.is_drained());
    lb.drain(&[id("i-0a")]).await.expect("drain");
    assert_eq!(
        fake.lock().expect("fake").deregistered,
        vec![("i-0a".to_owned(), Some(8080))],
        "still registered: a drain must deregister it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_terminated_instance_fails_alone_in_register_targets() {
    let fake = Fake::new(&["i-0a", "i-0b"]);
    fake.lock().expect("fake").draining_polls = 1;
    let lb = balancer(&fake);
    lb.drain(&[id("i-0a"), id("i-0b")]).await.expect("drain");
    lb.status(&[id("i-0a"), id("i-0b")]).await.expect("drained");
    fake.lock().expect("fake").invalid = vec!["i-0b".into()];
    let e = lb
        .enable(&[id("i-0a"), id("i-0b")])
        .await
        .expect_err("i-0b refused");
    assert!(
        matches!(&e, Error::NotFound { kind: "target", name, .. } if name.contains("i-0b") && !name.contains("i-0a")),
        "{e:?}"
    );
    assert_eq!(
        fake.lock().expect("fake").registered,
        vec![("i-0a".to_owned(), Some(8080))],
        "the running instance is registered again"
    );
    // Enabling i-0a again (the engine retries each alone) registers nothing twice.
    lb.enable(&[id("i-0a")]).await.expect("enable i-0a");
    assert_eq!(fake.lock().expect("fake").registered.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn enable_registers_only_what_this_run_deregistered() {
    let fake = Fake::new(&["i-0a", "i-0b"]);
    fake.lock().expect("fake").draining_polls = 1;
    let lb = balancer(&fake);
    lb.list().await.expect("list");
    // Someone else deregisters i-0b after our listing.
    fake.lock()
        .expect("fake")
        .targets
        .get_mut("i-0b")
        .expect("i-0b")
        .current = (State::Unused, Some(Reason::NotRegistered));
    lb.drain(&[id("i-0a")]).await.expect("drain");
    lb.status(&[id("i-0a")]).await.expect("drained");
    lb.enable(&[id("i-0a")]).await.expect("enable i-0a");
    // Not this run's to put back: NotFound (gone from the pool) or a no-op.
    if let Err(e) = lb.enable(&[id("i-0b")]).await {
        assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    }
    assert_eq!(
        fake.lock().expect("fake").registered,
        vec![("i-0a".to_owned(), Some(8080))],
        "i-0b was not taken out by this run: it stays out"
    );
}

#[test]
fn builder_validates() {
    let fake = Fake::new(&[]);
    let b = || Elbv2Balancer::builder().with_client(client(&fake));
    assert!(matches!(
        b().build(),
        Err(Error::InvalidConfig { field: "pool", .. })
    ));
    assert!(matches!(
        b().with_target_group("web").build(),
        Err(Error::InvalidConfig {
            field: "target_group",
            ..
        })
    ));
    assert!(matches!(
        b().with_target_group(TG)
            .with_load_balancer("arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/x/1")
            .build(),
        Err(Error::InvalidConfig { field: "pool", .. })
    ));
    assert!(matches!(
        b().with_target_group(TG)
            .with_poll_interval(Duration::ZERO)
            .build(),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(
        matches!(
            Elbv2Balancer::builder().with_target_group(TG).build(),
            Err(Error::InvalidConfig { .. })
        ),
        "no AWS configuration"
    );
    assert!(matches!(
        Elbv2Balancer::builder()
            .with_sdk_config(hygiene_aws::SdkConfig::builder().build())
            .with_endpoint_url("localhost:4566")
            .with_target_group(TG)
            .build(),
        Err(Error::InvalidConfig {
            field: "endpoint_url",
            ..
        })
    ));
    let lb = b().with_target_group(TG).build().expect("builds");
    assert!(
        !lb.capabilities().hard_disable
            && lb.capabilities().graceful_drain
            && !lb.capabilities().counts_connections
    );
    let d = lb.default_poll_interval();
    assert!(
        d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
        "{d:?}"
    );
}

/// Two target groups, `web` (the pool) and `api` (outside it), holding the
/// same hosts on port 8080: per (group ARN, id), registered or not, and
/// the ids the last DeregisterTargets / RegisterTargets named, per group.
#[derive(Default)]
struct TwoGroups {
    registered: HashMap<(String, String), bool>,
    deregistered: Vec<(String, String)>,
    registered_calls: Vec<(String, String)>,
}

const API: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/api/0123456789abcdef";

fn two_groups_client(fake: &Arc<Mutex<TwoGroups>>) -> Client {
    let group = |arn: &str, name: &str| {
        TargetGroup::builder()
            .target_group_arn(arn)
            .target_group_name(name)
            .target_type(TargetTypeEnum::Instance)
            .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Tcp)
            .build()
    };
    // By ARN: the pool; with no filter: every group of the account.
    let groups = mock!(Client::describe_target_groups).then_compute_output(move |req| {
        let mut out = DescribeTargetGroupsOutput::builder().target_groups(group(TG, "web"));
        if req.target_group_arns().is_empty() {
            out = out.target_groups(group(API, "api"));
        }
        out.build()
    });
    let f = Arc::clone(fake);
    let health = mock!(Client::describe_target_health).then_compute_output(move |req| {
        let f = f.lock().expect("fake");
        let tg = req.target_group_arn().unwrap_or_default().to_owned();
        let mut out = DescribeTargetHealthOutput::builder();
        let ids: Vec<String> = if req.targets().is_empty() {
            f.registered
                .iter()
                .filter(|((g, _), on)| *g == tg && **on)
                .map(|((_, id), _)| id.clone())
                .collect()
        } else {
            req.targets()
                .iter()
                .filter_map(|t| t.id().map(str::to_owned))
                .collect()
        };
        for id in ids {
            let on = f.registered.get(&(tg.clone(), id.clone())) == Some(&true);
            let obs = if on {
                (State::Healthy, None)
            } else {
                (State::Unused, Some(Reason::NotRegistered))
            };
            out = out.target_health_descriptions(desc(&id, 8080, &obs));
        }
        out.build()
    });
    let f = Arc::clone(fake);
    let dereg = mock!(Client::deregister_targets).then_compute_output(move |req| {
        let mut f = f.lock().expect("fake");
        let tg = req.target_group_arn().unwrap_or_default().to_owned();
        for t in req.targets() {
            let id = t.id().unwrap_or_default().to_owned();
            f.registered.insert((tg.clone(), id.clone()), false);
            f.deregistered.push((tg.clone(), id));
        }
        DeregisterTargetsOutput::builder().build()
    });
    let f = Arc::clone(fake);
    let reg = mock!(Client::register_targets).then_compute_output(move |req| {
        let mut f = f.lock().expect("fake");
        let tg = req.target_group_arn().unwrap_or_default().to_owned();
        for t in req.targets() {
            let id = t.id().unwrap_or_default().to_owned();
            f.registered.insert((tg.clone(), id.clone()), true);
            f.registered_calls.push((tg.clone(), id));
        }
        RegisterTargetsOutput::builder().build()
    });
    let attrs = mock!(Client::describe_target_group_attributes).then_compute_output(|_| {
        let a = |k: &str, v: &str| {
            aws_sdk_elasticloadbalancingv2::types::TargetGroupAttribute::builder()
                .key(k)
                .value(v)
                .build()
        };
        aws_sdk_elasticloadbalancingv2::operation::describe_target_group_attributes::DescribeTargetGroupAttributesOutput::builder()
            .attributes(a("deregistration_delay.timeout_seconds", "120"))
            .attributes(a("deregistration_delay.connection_termination.enabled", "false"))
            .build()
    });
    mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        &[&groups, &health, &dereg, &reg, &attrs],
        |c| c.retry_config(RetryConfig::disabled())
    )
}

fn two_groups() -> Arc<Mutex<TwoGroups>> {
    let mut f = TwoGroups::default();
    for g in [TG, API] {
        for id in ["i-0a", "i-0b"] {
            f.registered.insert((g.to_owned(), id.to_owned()), true);
        }
    }
    Arc::new(Mutex::new(f))
}

#[tokio::test(start_paused = true)]
async fn a_host_in_a_target_group_outside_the_pool_is_named() {
    let fake = two_groups();
    let lb = Elbv2Balancer::builder()
        .with_client(two_groups_client(&fake))
        .with_target_group(TG)
        .build()
        .expect("builds");
    let listed = lb.list().await.expect("list");
    assert_eq!(listed.len(), 2);
    for l in &listed {
        assert_eq!(
            l.target.meta.get("other_target_groups").map(String::as_str),
            Some("api:8080"),
            "{:?}",
            l.target.meta
        );
        assert_eq!(l.target.meta["target_groups"], "web:8080");
    }
    // Reported, not drained from there (the default).
    lb.drain(&[id("i-0a")]).await.expect("drain");
    assert_eq!(
        fake.lock().expect("fake").deregistered,
        vec![(TG.to_owned(), "i-0a".to_owned())]
    );
    assert_eq!(
        lb.target_group_arns().await.expect("arns"),
        vec![TG.to_owned()]
    );
}

#[tokio::test(start_paused = true)]
async fn with_drain_a_host_is_one_target_in_every_target_group() {
    let fake = two_groups();
    let lb = Elbv2Balancer::builder()
        .with_client(two_groups_client(&fake))
        .with_target_group(TG)
        .with_other_target_groups(hygiene_aws::OtherTargetGroups::Drain)
        .build()
        .expect("builds");
    let listed = lb.list().await.expect("list");
    assert_eq!(listed[0].target.meta["target_groups"], "web:8080,api:8080");
    lb.drain(&[id("i-0a")]).await.expect("drain");
    let st = lb.status(&[id("i-0a")]).await.expect("status");
    assert!(st[0].is_drained(), "{st:?}");
    {
        let f = fake.lock().expect("fake");
        let mut d = f.deregistered.clone();
        d.sort();
        let mut want = vec![
            (TG.to_owned(), "i-0a".to_owned()),
            (API.to_owned(), "i-0a".to_owned()),
        ];
        want.sort();
        assert_eq!(d, want, "drained from both");
    }
    lb.enable(&[id("i-0a")]).await.expect("enable");
    let mut r = fake.lock().expect("fake").registered_calls.clone();
    r.sort();
    let mut want = vec![
        (TG.to_owned(), "i-0a".to_owned()),
        (API.to_owned(), "i-0a".to_owned()),
    ];
    want.sort();
    assert_eq!(r, want, "registered again exactly where it was");
    assert!(lb.status(&[id("i-0a")]).await.expect("status")[0].is_serving_healthy());

    // The deregistration delays of both groups, and what they mean for drain_timeout.
    assert_eq!(
        lb.deregistration_delay().await.expect("delay"),
        Duration::from_secs(120)
    );
    let w = lb
        .check_drain_timeout(Duration::from_secs(120))
        .await
        .expect("check");
    assert!(
        w.iter()
            .any(|w| w.contains("drain_timeout") && w.contains("web")),
        "{w:?}"
    );
    assert!(
        w.iter().any(|w| w.contains("connection_termination")),
        "{w:?}"
    );
    assert!(lb
        .check_drain_timeout(Duration::from_secs(150))
        .await
        .expect("check")
        .iter()
        .all(|w| !w.contains("drain_timeout")));
}

#[tokio::test(start_paused = true)]
async fn the_default_drain_timeout_covers_the_longest_delay_and_nlb_termination_is_named() {
    let fake = two_groups();
    let lb = Elbv2Balancer::builder()
        .with_client(two_groups_client(&fake))
        .with_target_group(TG)
        .build()
        .expect("builds");
    // Both groups delay 120 s: the default is above it, by the margin.
    let d = lb.default_drain_timeout().await.expect("default");
    assert_eq!(
        d,
        Duration::from_secs(120) + hygiene_aws::DRAIN_TIMEOUT_MARGIN
    );
    let w = lb.check_drain_timeout(d).await.expect("check");
    assert!(
        w.iter().all(|w| !w.contains("is not above")),
        "the default never warns about itself: {w:?}"
    );
    // The NLB group without connection termination is named, with the
    // setting (and the command) that fixes it.
    let nlb: Vec<&String> = w
        .iter()
        .filter(|w| w.contains("connection_termination"))
        .collect();
    assert_eq!(nlb.len(), 1, "{w:?}");
    assert!(
        nlb[0].contains("web")
            && nlb[0].contains("deregistration_delay.connection_termination.enabled = true")
            && nlb[0].contains(&format!(
                "modify-target-group-attributes --target-group-arn {TG}"
            )),
        "{}",
        nlb[0]
    );
}
