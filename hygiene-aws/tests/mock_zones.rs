//! The NLBs of a pool that route within each zone (cross-zone load
//! balancing off), through `aws-smithy-mocks`: moto has no per-zone
//! routing to model. Attributes as the ELBv2 API reference gives them.

use aws_sdk_elasticloadbalancingv2::operation::describe_load_balancer_attributes::DescribeLoadBalancerAttributesOutput;
use aws_sdk_elasticloadbalancingv2::operation::describe_load_balancers::DescribeLoadBalancersOutput;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_group_attributes::DescribeTargetGroupAttributesOutput;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::DescribeTargetGroupsOutput;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::DescribeTargetHealthOutput;
use aws_sdk_elasticloadbalancingv2::types::{
    LoadBalancer, LoadBalancerAttribute, LoadBalancerTypeEnum, TargetGroup, TargetGroupAttribute,
    TargetTypeEnum,
};
use aws_sdk_elasticloadbalancingv2::Client;
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use hygiene_aws::Elbv2Balancer;

const ACCOUNT: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012";

fn tg(name: &str) -> String {
    format!("{ACCOUNT}:targetgroup/{name}/0123456789abcdef")
}

fn nlb(name: &str) -> String {
    format!("{ACCOUNT}:loadbalancer/net/{name}/0123456789abcdef")
}

fn alb(name: &str) -> String {
    format!("{ACCOUNT}:loadbalancer/app/{name}/0123456789abcdef")
}

/// `web` and `pinned` behind NLB `edge` (cross-zone off, its default;
/// `pinned` turns it on for itself), `site` behind ALB `front`, `zonal`
/// behind NLB `inner` with cross-zone on but off for itself.
fn client() -> Client {
    let on = |name: &str| match name {
        "web" | "pinned" => nlb("edge"),
        "zonal" => nlb("inner"),
        _ => alb("front"),
    };
    let groups = mock!(Client::describe_target_groups).then_compute_output(move |req| {
        let mut out = DescribeTargetGroupsOutput::builder();
        for name in ["web", "pinned", "site", "zonal"] {
            if req.target_group_arns().is_empty() || req.target_group_arns().contains(&tg(name)) {
                out = out.target_groups(
                    TargetGroup::builder()
                        .target_group_arn(tg(name))
                        .target_group_name(name)
                        .target_type(TargetTypeEnum::Instance)
                        .load_balancer_arns(on(name))
                        .build(),
                );
            }
        }
        out.build()
    });
    let health = mock!(Client::describe_target_health)
        .then_compute_output(|_| DescribeTargetHealthOutput::builder().build());
    let lbs = mock!(Client::describe_load_balancers).then_compute_output(|req| {
        let mut out = DescribeLoadBalancersOutput::builder();
        for arn in req.load_balancer_arns() {
            let (name, kind) = if arn.contains("/net/") {
                (
                    if arn.contains("edge") {
                        "edge"
                    } else {
                        "inner"
                    },
                    LoadBalancerTypeEnum::Network,
                )
            } else {
                ("front", LoadBalancerTypeEnum::Application)
            };
            out = out.load_balancers(
                LoadBalancer::builder()
                    .load_balancer_arn(arn)
                    .load_balancer_name(name)
                    .r#type(kind)
                    .build(),
            );
        }
        out.build()
    });
    let lb_attrs = mock!(Client::describe_load_balancer_attributes).then_compute_output(|req| {
        let cross = if req.load_balancer_arn() == Some(nlb("inner").as_str()) {
            "true"
        } else {
            "false"
        };
        DescribeLoadBalancerAttributesOutput::builder()
            .attributes(
                LoadBalancerAttribute::builder()
                    .key("load_balancing.cross_zone.enabled")
                    .value(cross)
                    .build(),
            )
            .build()
    });
    let tg_attrs = mock!(Client::describe_target_group_attributes).then_compute_output(|req| {
        let arn = req.target_group_arn().unwrap_or_default();
        let v = if arn == tg("pinned") {
            "true"
        } else if arn == tg("zonal") {
            "false"
        } else {
            "use_load_balancer_configuration"
        };
        DescribeTargetGroupAttributesOutput::builder()
            .attributes(
                TargetGroupAttribute::builder()
                    .key("load_balancing.cross_zone.enabled")
                    .value(v)
                    .build(),
            )
            .build()
    });
    mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        &[&groups, &health, &lbs, &lb_attrs, &tg_attrs]
    )
}

#[tokio::test]
async fn nlbs_routing_within_zones_are_named_with_their_target_groups() {
    let mut b = Elbv2Balancer::builder().with_client(client());
    for name in ["web", "pinned", "site", "zonal"] {
        b = b.with_target_group(tg(name));
    }
    let lb = b.build().expect("builds");
    let z = lb.zonal_nlbs().await.expect("read");
    let found: Vec<(&str, Vec<&str>)> = z
        .iter()
        .map(|n| {
            (
                n.load_balancer.as_str(),
                n.target_groups.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    // edge: off by default, `pinned` turns it on for itself; inner: on,
    // but `zonal` turns it off; the ALB never counts.
    assert_eq!(found, [("edge", vec!["web"]), ("inner", vec!["zonal"])]);
}
