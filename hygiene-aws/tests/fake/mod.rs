//! A stateful fake ELBv2 target group on `aws-smithy-mocks`, shared by the
//! mock tests: `draining` that lasts a number of polls, a script after
//! RegisterTargets, throttling, terminated instances.

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig;
use aws_sdk_elasticloadbalancingv2::error::ErrorMetadata;
use aws_sdk_elasticloadbalancingv2::operation::deregister_targets::{
    DeregisterTargetsError, DeregisterTargetsOutput,
};
use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::DescribeTargetGroupsOutput;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::{
    DescribeTargetHealthError, DescribeTargetHealthOutput,
};
use aws_sdk_elasticloadbalancingv2::operation::register_targets::{
    RegisterTargetsError, RegisterTargetsOutput,
};
use aws_sdk_elasticloadbalancingv2::types::{
    TargetDescription, TargetGroup, TargetHealth, TargetHealthDescription,
    TargetHealthReasonEnum as Reason, TargetHealthStateEnum as State, TargetTypeEnum,
};
use aws_sdk_elasticloadbalancingv2::Client;
use aws_smithy_mocks::{mock, mock_client, MockResponse, RuleMode};
use hygiene_aws::Elbv2Balancer;
use hygiene_core::TargetId;

pub const TG: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef";

pub type Obs = (State, Option<Reason>);

/// (operation, id, port, availability zone)
pub type Call = (&'static str, String, Option<i32>, Option<String>);

pub struct Tgt {
    pub port: i32,
    pub current: Obs,
    pub upcoming: VecDeque<Obs>,
}

/// A stateful fake target group: each targeted DescribeTargetHealth moves
/// every asked-for target one step along its script.
#[derive(Default)]
pub struct Fake {
    pub targets: HashMap<String, Tgt>,
    /// Polls a deregistered target stays `draining`.
    pub draining_polls: usize,
    /// Script after RegisterTargets (last entry repeats).
    pub after_enable: Vec<Obs>,
    pub throttle_next: usize,
    /// Ids a targeted DescribeTargetHealth answers `InvalidTarget` for
    /// (a terminated instance).
    pub invalid: Vec<String>,
    pub targeted_calls: usize,
    /// RegisterTargets calls that found the target still draining (ELBv2
    /// then says `healthy` at once, with no new check: ansible#44149).
    pub registered_while_draining: usize,
    pub deregistered: Vec<(String, Option<i32>)>,
    pub registered: Vec<(String, Option<i32>)>,
    /// DeregisterTargets applies, then answers this error code (a reply
    /// lost on the way back, or a refusal after the fact).
    pub dereg_error: Option<&'static str>,
}

impl Fake {
    pub fn new(ids: &[&str]) -> Arc<Mutex<Self>> {
        let mut f = Fake {
            after_enable: vec![
                (State::Initial, Some(Reason::RegistrationInProgress)),
                (State::Healthy, None),
            ],
            ..Default::default()
        };
        for id in ids {
            f.targets.insert(
                (*id).to_owned(),
                Tgt {
                    port: 8080,
                    current: (State::Healthy, None),
                    upcoming: VecDeque::new(),
                },
            );
        }
        Arc::new(Mutex::new(f))
    }
}

pub fn desc(id: &str, port: i32, (state, reason): &Obs) -> TargetHealthDescription {
    TargetHealthDescription::builder()
        .target(TargetDescription::builder().id(id).port(port).build())
        .target_health(
            TargetHealth::builder()
                .state(state.clone())
                .set_reason(reason.clone())
                .set_description(
                    reason
                        .as_ref()
                        .map(|r| format!("ELBv2 says {}", r.as_str())),
                )
                .build(),
        )
        .build()
}

pub fn client(fake: &Arc<Mutex<Fake>>) -> Client {
    let groups = mock!(Client::describe_target_groups).then_output(|| {
        DescribeTargetGroupsOutput::builder()
            .target_groups(
                TargetGroup::builder()
                    .target_group_arn(TG)
                    .target_group_name("web")
                    .port(80)
                    .target_type(TargetTypeEnum::Instance)
                    .build(),
            )
            .build()
    });
    let f = Arc::clone(fake);
    let health = mock!(Client::describe_target_health).then_compute_response(move |req| {
        let mut f = f.lock().expect("fake");
        if f.throttle_next > 0 {
            f.throttle_next -= 1;
            return MockResponse::Error(DescribeTargetHealthError::generic(
                ErrorMetadata::builder()
                    .code("Throttling")
                    .message("Rate exceeded")
                    .build(),
            ));
        }
        if let Some(bad) = req
            .targets()
            .iter()
            .filter_map(|t| t.id())
            .find(|id| f.invalid.iter().any(|i| i == id))
        {
            return MockResponse::Error(DescribeTargetHealthError::generic(
                ErrorMetadata::builder()
                    .code("InvalidTarget")
                    .message(format!(
                        "The following targets are not in a running state and cannot be registered: '{bad}'"
                    ))
                    .build(),
            ));
        }
        let mut out = DescribeTargetHealthOutput::builder();
        match req.targets() {
            [] => {
                for (id, t) in &f.targets {
                    if t.current.0 != State::Unused {
                        out = out.target_health_descriptions(desc(id, t.port, &t.current));
                    }
                }
            }
            asked => {
                f.targeted_calls += 1;
                for a in asked {
                    let id = a.id().unwrap_or_default();
                    match f.targets.get_mut(id) {
                        Some(t) if a.port() == Some(t.port) => {
                            if let Some(next) = t.upcoming.pop_front() {
                                t.current = next;
                            }
                            out = out.target_health_descriptions(desc(id, t.port, &t.current));
                        }
                        _ => {
                            let unused = (State::Unused, Some(Reason::NotRegistered));
                            out = out.target_health_descriptions(desc(
                                id,
                                a.port().unwrap_or(80),
                                &unused,
                            ));
                        }
                    }
                }
            }
        }
        MockResponse::Output(out.build())
    });
    let f = Arc::clone(fake);
    let dereg = mock!(Client::deregister_targets).then_compute_response(move |req| {
        let mut f = f.lock().expect("fake");
        let polls = f.draining_polls;
        for t in req.targets() {
            let id = t.id().unwrap_or_default().to_owned();
            f.deregistered.push((id.clone(), t.port()));
            if let Some(tg) = f.targets.get_mut(&id) {
                tg.current = (State::Draining, Some(Reason::DeregistrationInProgress));
                tg.upcoming = std::iter::repeat_n(
                    (State::Draining, Some(Reason::DeregistrationInProgress)),
                    polls.saturating_sub(1),
                )
                .chain([(State::Unused, Some(Reason::NotRegistered))])
                .collect();
            }
        }
        match f.dereg_error {
            Some(code) => MockResponse::Error(DeregisterTargetsError::generic(
                ErrorMetadata::builder()
                    .code(code)
                    .message("refused after the fact")
                    .build(),
            )),
            None => MockResponse::Output(DeregisterTargetsOutput::builder().build()),
        }
    });
    let f = Arc::clone(fake);
    let reg = mock!(Client::register_targets).then_compute_response(move |req| {
        let mut f = f.lock().expect("fake");
        if let Some(bad) = req
            .targets()
            .iter()
            .filter_map(|t| t.id())
            .find(|id| f.invalid.iter().any(|i| i == id))
        {
            return MockResponse::Error(RegisterTargetsError::generic(
                ErrorMetadata::builder()
                    .code("InvalidTarget")
                    .message(format!(
                        "The following targets are not in a running state and cannot be registered: '{bad}'"
                    ))
                    .build(),
            ));
        }
        let script = f.after_enable.clone();
        for t in req.targets() {
            let id = t.id().unwrap_or_default().to_owned();
            f.registered.push((id.clone(), t.port()));
            let mut stale = false;
            if let Some(tg) = f.targets.get_mut(&id) {
                if tg.current.0 == State::Draining {
                    // As ELBv2 does: back to healthy at once, no new check.
                    stale = true;
                    tg.current = (State::Healthy, None);
                    tg.upcoming.clear();
                } else {
                    tg.current = (State::Initial, Some(Reason::RegistrationInProgress));
                    tg.upcoming = script.iter().cloned().collect();
                }
            }
            if stale {
                f.registered_while_draining += 1;
            }
        }
        MockResponse::Output(RegisterTargetsOutput::builder().build())
    });
    mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        &[&groups, &health, &dereg, &reg],
        |c| c.retry_config(RetryConfig::disabled())
    )
}

pub fn balancer(fake: &Arc<Mutex<Fake>>) -> Elbv2Balancer {
    Elbv2Balancer::builder()
        .with_client(client(fake))
        .with_target_group(TG)
        .build()
        .expect("builds")
}

pub fn id(s: &str) -> TargetId {
    TargetId::new(s).expect("id")
}
