//! Discovery from instances through `aws-smithy-mocks`: paginated
//! DescribeInstances / DescribeAutoScalingGroups / DescribeTargetGroups,
//! throttling on the way, and the pacing of the Describe calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_autoscaling::operation::describe_auto_scaling_groups::DescribeAutoScalingGroupsOutput;
use aws_sdk_autoscaling::types::{AutoScalingGroup, Instance as AsgInstance, LifecycleState};
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::types::{Instance, InstanceState, InstanceStateName, Reservation};
use aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig;
use aws_sdk_elasticloadbalancingv2::error::ErrorMetadata;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::{
    DescribeTargetGroupsError, DescribeTargetGroupsOutput,
};
use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::{
    DescribeTargetHealthError, DescribeTargetHealthOutput,
};
use aws_sdk_elasticloadbalancingv2::types::{
    TargetDescription, TargetGroup, TargetHealth, TargetHealthDescription,
    TargetHealthStateEnum as State, TargetTypeEnum,
};
use aws_smithy_mocks::{mock, mock_client, MockResponse, RuleMode};
use hygiene_aws::Elbv2Balancer;
use hygiene_core::{LoadBalancer, TargetId};
use tokio::time::Instant;

const ACCOUNT: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012";

fn tg_arn(n: usize) -> String {
    format!("{ACCOUNT}:targetgroup/tg{n}/{n:016x}")
}

fn throttled() -> ErrorMetadata {
    ErrorMetadata::builder()
        .code("Throttling")
        .message("Rate exceeded")
        .build()
}

/// `groups` instance target groups (plus one lambda group), 3 to a page;
/// group n holds instance `i-{n % 4}` on port 8000 + n (and group 0
/// holds i-0 on port 9000 too). The first
/// DescribeTargetGroups page and the first DescribeTargetHealth are
/// throttled once. Records when each Describe call came.
struct Elb {
    groups: usize,
    throttled_pages: usize,
    throttled_health: usize,
    calls: Vec<Instant>,
}

fn elb(state: &Arc<Mutex<Elb>>) -> aws_sdk_elasticloadbalancingv2::Client {
    let s = Arc::clone(state);
    let groups = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_groups)
        .then_compute_response(move |req| {
            let mut s = s.lock().expect("state");
            s.calls.push(Instant::now());
            let start: usize = req.marker().map_or(0, |m| m.parse().expect("marker"));
            if start == 0 && s.throttled_pages > 0 {
                s.throttled_pages -= 1;
                return MockResponse::Error(DescribeTargetGroupsError::generic(throttled()));
            }
            let mut out = DescribeTargetGroupsOutput::builder();
            let end = (start + 3).min(s.groups + 1);
            for n in start..end {
                let tg = if n == s.groups {
                    TargetGroup::builder()
                        .target_group_arn(tg_arn(n))
                        .target_group_name("fn")
                        .target_type(TargetTypeEnum::Lambda)
                        .build()
                } else {
                    TargetGroup::builder()
                        .target_group_arn(tg_arn(n))
                        .target_group_name(format!("tg{n}"))
                        .target_type(TargetTypeEnum::Instance)
                        .load_balancer_arns(format!("{ACCOUNT}:loadbalancer/app/lb{}/0abc", n % 2))
                        .build()
                };
                out = out.target_groups(tg);
            }
            if end <= s.groups {
                out = out.next_marker(end.to_string());
            }
            MockResponse::Output(out.build())
        });
    let s = Arc::clone(state);
    let health = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_health)
        .then_compute_response(move |req| {
            let mut s = s.lock().expect("state");
            s.calls.push(Instant::now());
            if s.throttled_health > 0 {
                s.throttled_health -= 1;
                return MockResponse::Error(DescribeTargetHealthError::generic(throttled()));
            }
            let arn = req.target_group_arn().unwrap_or_default();
            let n = (0..s.groups)
                .find(|n| tg_arn(*n) == arn)
                .expect("a known group");
            let d = TargetHealthDescription::builder()
                .target(
                    TargetDescription::builder()
                        .id(format!("i-{}", n % 4))
                        .port(8000 + i32::try_from(n).expect("small"))
                        .build(),
                )
                .target_health(TargetHealth::builder().state(State::Healthy).build())
                .build();
            let mut out = DescribeTargetHealthOutput::builder().target_health_descriptions(d);
            if n == 0 {
                // i-0 on a second port of the same group.
                out = out.target_health_descriptions(
                    TargetHealthDescription::builder()
                        .target(TargetDescription::builder().id("i-0").port(9000).build())
                        .target_health(TargetHealth::builder().state(State::Healthy).build())
                        .build(),
                );
            }
            MockResponse::Output(out.build())
        });
    mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        &[&groups, &health],
        |c| c.retry_config(RetryConfig::disabled())
    )
}

fn running(id: &str) -> Instance {
    Instance::builder()
        .instance_id(id)
        .state(
            InstanceState::builder()
                .name(InstanceStateName::Running)
                .build(),
        )
        .build()
}

/// Two pages: i-0 and i-1, then i-2 and a stopped i-9; the first page is
/// throttled once.
fn ec2(throttles: Arc<Mutex<usize>>) -> aws_sdk_ec2::Client {
    let pages = mock!(aws_sdk_ec2::Client::describe_instances).then_compute_response(move |req| {
        if req.next_token().is_none() {
            let mut t = throttles.lock().expect("throttles");
            if *t > 0 {
                *t -= 1;
                return MockResponse::Error(
                    aws_sdk_ec2::operation::describe_instances::DescribeInstancesError::generic(
                        aws_sdk_ec2::error::ErrorMetadata::builder()
                            .code("RequestLimitExceeded")
                            .message("Request limit exceeded.")
                            .build(),
                    ),
                );
            }
        }
        let out = match req.next_token() {
            None => DescribeInstancesOutput::builder()
                .reservations(
                    Reservation::builder()
                        .instances(running("i-0"))
                        .instances(running("i-1"))
                        .build(),
                )
                .next_token("page2"),
            Some(_) => DescribeInstancesOutput::builder().reservations(
                Reservation::builder()
                    .instances(running("i-2"))
                    .instances(
                        Instance::builder()
                            .instance_id("i-9")
                            .state(
                                InstanceState::builder()
                                    .name(InstanceStateName::Stopped)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            ),
        };
        MockResponse::Output(out.build())
    });
    mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &[&pages], |c| c
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled()))
}

fn id(s: &str) -> TargetId {
    TargetId::new(s).expect("id")
}

#[tokio::test(start_paused = true)]
async fn discovery_pages_through_everything_and_survives_throttling() {
    let state = Arc::new(Mutex::new(Elb {
        groups: 8,
        throttled_pages: 1,
        throttled_health: 1,
        calls: Vec::new(),
    }));
    let ec2_throttles = Arc::new(Mutex::new(1));
    let lb = Elbv2Balancer::builder()
        .with_client(elb(&state))
        .with_ec2_client(ec2(Arc::clone(&ec2_throttles)))
        .with_instance_tag("Patch Group", ["web"])
        .build()
        .expect("builds");
    let d = lb.discovery().await.expect("discovery").expect("instances");
    // i-9 is stopped: left out. i-3 is in groups but not selected.
    assert_eq!(d.instances(), &[id("i-0"), id("i-1"), id("i-2")]);
    // Groups 0..8 hold i-(n % 4): i-0 in tg0, tg4; i-1 in tg1, tg5; i-2 in
    // tg2, tg6; tg3 and tg7 hold only i-3. Found across three pages.
    assert_eq!(
        d.target_groups(),
        ["tg0", "tg1", "tg2", "tg4", "tg5", "tg6"]
    );
    assert!(d.not_in_any_target_group().is_empty());
    assert_eq!(d.skipped_target_groups().len(), 1, "the lambda group");
    // EC2: 1 throttled + 2 pages; ELB: 1 throttled + 3 pages, 1 throttled
    // + 8 DescribeTargetHealth.
    assert_eq!(d.api_calls(), 3 + 4 + 9);
    assert_eq!(*ec2_throttles.lock().expect("t"), 0);

    let listed = lb.list().await.expect("list");
    let i0 = listed
        .iter()
        .find(|l| l.target.id == id("i-0"))
        .expect("i-0 listed");
    assert_eq!(
        i0.target.meta.get("target_groups").map(String::as_str),
        Some("tg0:8000,tg0:9000,tg4:8004")
    );
    assert_eq!(
        i0.target.meta.get("load_balancers").map(String::as_str),
        Some("lb0")
    );
    let i1 = listed
        .iter()
        .find(|l| l.target.id == id("i-1"))
        .expect("i-1 listed");
    assert_eq!(
        i1.target.meta.get("load_balancers").map(String::as_str),
        Some("lb1")
    );
    assert!(listed.iter().all(|l| l.target.id != id("i-3")));
}

#[tokio::test(start_paused = true)]
async fn discovery_of_many_groups_is_paced_by_the_token_bucket() {
    let state = Arc::new(Mutex::new(Elb {
        groups: 60,
        throttled_pages: 0,
        throttled_health: 0,
        calls: Vec::new(),
    }));
    let lb = Elbv2Balancer::builder()
        .with_client(elb(&state))
        .with_ec2_client(ec2(Arc::new(Mutex::new(0))))
        .with_instances(["i-0", "i-1", "i-2"])
        .build()
        .expect("builds");
    lb.discovery().await.expect("discovery");
    let calls = state.lock().expect("state").calls.clone();
    // 21 pages + 60 DescribeTargetHealth.
    assert_eq!(calls.len(), 81);
    // Default bucket: 20 at once, then 5 a second. In any window of one
    // second at most 20 + 5 calls; ELB's own bucket allows 40 + 10.
    for (i, t) in calls.iter().enumerate() {
        let within = calls[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(within <= 25, "{within} calls within a second from call {i}");
    }
    let span = calls[80].duration_since(calls[0]);
    assert!(span >= Duration::from_secs(12), "81 calls in {span:?}");
}

#[tokio::test]
async fn auto_scaling_groups_page_through_their_instances() {
    let pages = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .then_compute_output(|req| {
            let inst = |id: &str, st: LifecycleState| {
                AsgInstance::builder()
                    .instance_id(id)
                    .lifecycle_state(st)
                    .availability_zone("us-east-1a")
                    .health_status("Healthy")
                    .protected_from_scale_in(false)
                    .build()
            };
            let group = |instances: Vec<AsgInstance>| {
                AutoScalingGroup::builder()
                    .auto_scaling_group_name("web")
                    .set_instances(Some(instances))
                    .min_size(0)
                    .max_size(9)
                    .desired_capacity(3)
                    .default_cooldown(300)
                    .availability_zones("us-east-1a")
                    .health_check_type("ELB")
                    .created_time(aws_smithy_types::DateTime::from_secs(0))
                    .build()
            };
            match req.next_token() {
                None => DescribeAutoScalingGroupsOutput::builder()
                    .auto_scaling_groups(group(vec![inst("i-0", LifecycleState::InService)]))
                    .next_token("more")
                    .build(),
                Some(_) => DescribeAutoScalingGroupsOutput::builder()
                    .auto_scaling_groups(group(vec![
                        inst("i-1", LifecycleState::InService),
                        inst("i-2", LifecycleState::Terminating),
                    ]))
                    .build(),
            }
        });
    let asg = mock_client!(aws_sdk_autoscaling, RuleMode::MatchAny, &[&pages]);
    let state = Arc::new(Mutex::new(Elb {
        groups: 2,
        throttled_pages: 0,
        throttled_health: 0,
        calls: Vec::new(),
    }));
    let lb = Elbv2Balancer::builder()
        .with_client(elb(&state))
        .with_autoscaling_client(asg)
        .with_auto_scaling_group("web")
        .build()
        .expect("builds");
    let d = lb.discovery().await.expect("discovery").expect("instances");
    assert_eq!(d.instances(), &[id("i-0"), id("i-1")], "InService only");
    assert_eq!(d.target_groups(), ["tg0", "tg1"]);
    let st = lb.status(&[id("i-0"), id("i-1")]).await.expect("status");
    assert_eq!(st.len(), 2);
}

#[test]
fn one_kind_of_pool_and_instance_selection() {
    let state = Arc::new(Mutex::new(Elb {
        groups: 1,
        throttled_pages: 0,
        throttled_health: 0,
        calls: Vec::new(),
    }));
    let base = || {
        Elbv2Balancer::builder()
            .with_client(elb(&state))
            .with_ec2_client(ec2(Arc::new(Mutex::new(0))))
    };
    let refused = |b: hygiene_aws::Elbv2BalancerBuilder, why: &str| {
        let e = b.build().expect_err(why);
        assert!(
            matches!(e, hygiene_core::Error::InvalidConfig { .. }),
            "{why}: {e}"
        );
    };
    refused(
        base()
            .with_instances(["i-0a"])
            .with_instance_tag("Role", ["web"]),
        "ids and tags",
    );
    refused(
        base()
            .with_auto_scaling_group("web")
            .with_instances(["i-0a"]),
        "group and ids",
    );
    refused(
        base()
            .with_instances(["i-0a"])
            .with_load_balancer(format!("{ACCOUNT}:loadbalancer/app/shop/0abc")),
        "instances and a load balancer",
    );
    refused(base().with_instances(["web-1"]), "not an instance id");
    refused(
        base().with_instance_tag("Role", Vec::<String>::new()),
        "a tag without values",
    );
    assert!(base()
        .with_instance_tag("Role", ["web"])
        .with_instance_tag("Env", ["prod", "staging"])
        .build()
        .is_ok());
}
