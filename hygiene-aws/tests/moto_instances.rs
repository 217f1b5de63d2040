//! Pools that start from instances, against a real moto server: instances
//! spread over three target groups on two load balancers and one group
//! attached to none.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum;
mod common;

use common::{id, moto};
use hygiene_aws::moto::MotoServer;
use hygiene_aws::{ApiCallCounter, Elbv2Balancer};
use hygiene_core::testing::ScriptedExecutor;
use hygiene_core::{Amount, Error, LoadBalancer, Rollout, RolloutConfig, TargetId, TargetState};

/// Registered (id, port) pairs of a target group, sorted.
async fn registered(m: &MotoServer, tg: &str) -> Vec<(String, i32)> {
    let out = m
        .elbv2()
        .await
        .describe_target_health()
        .target_group_arn(tg)
        .send()
        .await
        .expect("describe target health");
    let mut v: Vec<(String, i32)> = out
        .target_health_descriptions()
        .iter()
        .filter_map(|d| {
            d.target().map(|t| {
                (
                    t.id().unwrap_or_default().to_owned(),
                    t.port().unwrap_or_default(),
                )
            })
        })
        .collect();
    v.sort();
    v
}

/// The fleet: instances i0..i5. i0..i4 carry `Patch Group=web`, i5 does
/// not. Target groups: `a` (port 80) and `b` (8080) on load balancer
/// `shop`, `c` (9000) on `edge`, `d` (7000) on none; plus a `lambda`
/// group. (moto keeps one registration per instance and group, so two
/// ports in one group are tested with mocks, in `mock_discovery.rs`.)
///
/// | instance | registrations |
/// |---|---|
/// | i0 | a:80, b:8080 |
/// | i1 | a:80, c:9000 |
/// | i2 | d:7000 |
/// | i3 | c:9000 |
/// | i4 | none |
/// | i5 (untagged) | a:80 |
struct Fleet {
    instances: Vec<String>,
    groups: BTreeMap<&'static str, String>,
}

async fn fleet(m: &MotoServer) -> Fleet {
    let vpc = m.create_vpc().await.expect("vpc");
    let s1 = m
        .create_subnet(&vpc, "10.0.1.0/24", "us-east-1a")
        .await
        .expect("subnet");
    let s2 = m
        .create_subnet(&vpc, "10.0.2.0/24", "us-east-1b")
        .await
        .expect("subnet");
    let instances = m.run_instances(6, Some(&s1)).await.expect("instances");
    m.create_tags(&instances[..5], "Patch Group", "web")
        .await
        .expect("tags");
    let mut groups = BTreeMap::new();
    for (name, port) in [("a", 80), ("b", 8080), ("c", 9000), ("d", 7000)] {
        let arn = m
            .create_target_group(name, &vpc, port)
            .await
            .expect("target group");
        groups.insert(name, arn);
    }
    let i = |n: usize| instances[n].clone();
    m.register(&groups["a"], &[(i(0), 80), (i(1), 80), (i(5), 80)])
        .await
        .expect("register a");
    m.register(&groups["b"], &[(i(0), 8080)])
        .await
        .expect("register b");
    m.register(&groups["c"], &[(i(1), 9000), (i(3), 9000)])
        .await
        .expect("register c");
    m.register(&groups["d"], &[(i(2), 7000)])
        .await
        .expect("register d");
    let subnets = [s1, s2];
    m.create_load_balancer(
        "shop",
        &subnets,
        &[groups["a"].clone(), groups["b"].clone()],
    )
    .await
    .expect("lb shop");
    m.create_load_balancer("edge", &subnets, &[groups["c"].clone()])
        .await
        .expect("lb edge");
    m.elbv2()
        .await
        .create_target_group()
        .name("fn")
        .target_type(TargetTypeEnum::Lambda)
        .send()
        .await
        .expect("lambda target group");
    Fleet { instances, groups }
}

async fn by_tag(m: &MotoServer, counter: &ApiCallCounter) -> Elbv2Balancer {
    Elbv2Balancer::builder()
        .with_sdk_config(m.sdk_config().await)
        .with_call_counter(counter.clone())
        .with_poll_interval(Duration::from_millis(50))
        .with_instance_tag("Patch Group", ["web"])
        .build()
        .expect("balancer builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_by_tag_are_found_in_every_target_group() {
    let Some(m) = moto().await else { return };
    let f = fleet(&m).await;
    let counter = ApiCallCounter::new();
    let lb = by_tag(&m, &counter).await;
    let d = lb
        .discovery()
        .await
        .expect("discovery")
        .expect("instance pool");
    let mut want: Vec<TargetId> = f.instances[..5].iter().map(|s| id(s)).collect();
    want.sort();
    assert_eq!(d.instances(), want.as_slice(), "tagged instances only");
    assert_eq!(d.not_in_any_target_group(), &[id(&f.instances[4])]);
    let mut tgs = d.target_groups().to_vec();
    tgs.sort();
    assert_eq!(tgs, ["a", "b", "c", "d"]);
    assert!(
        d.skipped_target_groups()
            .iter()
            .any(|s| s.starts_with("fn:") && s.contains("lambda")),
        "{:?}",
        d.skipped_target_groups()
    );
    // DescribeInstances, DescribeTargetGroups, one DescribeTargetHealth
    // per instance group (the lambda group is not asked).
    assert_eq!(d.api_calls(), 6, "{:?}", counter.snapshot());
    assert_eq!(counter.total(), d.api_calls(), "{:?}", counter.snapshot());

    // list answers from what discovery learnt, plus one listing per group.
    let listed = lb.list().await.expect("list");
    let by_id: BTreeMap<String, _> = listed
        .iter()
        .map(|l| (l.target.id.to_string(), l))
        .collect();
    assert_eq!(by_id.len(), 5, "the untagged instance is not a target");
    let meta = |n: usize, k: &str| {
        by_id[&f.instances[n]]
            .target
            .meta
            .get(k)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(meta(0, "target_groups"), "a:80,b:8080");
    assert_eq!(meta(0, "load_balancers"), "shop");
    assert_eq!(meta(1, "target_groups"), "a:80,c:9000");
    assert_eq!(meta(1, "load_balancers"), "edge,shop");
    assert_eq!(meta(2, "target_groups"), "d:7000");
    assert_eq!(meta(2, "load_balancers"), "");
    assert_eq!(meta(4, "target_groups"), "");
    for l in &listed {
        assert_eq!(l.status.state, TargetState::InService, "{}", l.target.id);
    }
    assert!(by_id[&f.instances[4]]
        .status
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("no target group")));
    assert!(
        lb.enable_hint(&id(&f.instances[4]))
            .starts_with("nothing to register"),
        "{}",
        lb.enable_hint(&id(&f.instances[4]))
    );
    assert!(lb
        .enable_hint(&id(&f.instances[0]))
        .contains("--targets Id="));
    m.stop().await.expect("moto stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_drains_every_group_and_port_and_restores_them_exactly() {
    let Some(m) = moto().await else { return };
    let f = fleet(&m).await;
    let mut before = BTreeMap::new();
    for (name, arn) in &f.groups {
        before.insert(*name, registered(&m, arn).await);
    }
    let counter = ApiCallCounter::new();
    let lb = by_tag(&m, &counter).await;
    // i1 goes out of every group and port while its maintenance runs.
    lb.drain(&[id(&f.instances[1])]).await.expect("drain");
    let i1 = f.instances[1].as_str();
    for name in ["a", "c"] {
        assert!(
            !registered(&m, &f.groups[name])
                .await
                .iter()
                .any(|(i, _)| i == i1),
            "i1 still in {name}"
        );
    }
    lb.enable(&[id(i1)]).await.expect("enable");

    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .min_healthy(Amount::Count(1))
        .poll_interval(Duration::from_millis(50))
        .health_timeout(Duration::from_secs(20))
        .drain_timeout(Duration::from_secs(20))
        .build()
        .expect("config");
    let exec = ScriptedExecutor::new();
    let report = Rollout::new(lb.clone(), exec.clone(), config)
        .run()
        .await
        .expect("runs");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    let mut executed: Vec<String> = exec.records().iter().map(|r| r.id.to_string()).collect();
    executed.sort();
    executed.dedup();
    let mut want: Vec<String> = f.instances[..5].to_vec();
    want.sort();
    assert_eq!(executed, want, "every selected instance, i4 included");
    for (name, arn) in &f.groups {
        assert_eq!(
            registered(&m, arn).await,
            before[name],
            "{name}: every registration back, same ports"
        );
    }
    m.stop().await.expect("moto stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_by_id_and_by_auto_scaling_group() {
    let Some(m) = moto().await else { return };
    let f = fleet(&m).await;
    let lb = Elbv2Balancer::builder()
        .with_sdk_config(m.sdk_config().await)
        .with_instances([f.instances[2].clone(), f.instances[5].clone()])
        .build()
        .expect("balancer builds");
    let listed = lb.list().await.expect("list");
    let got: Vec<(String, String)> = listed
        .iter()
        .map(|l| {
            (
                l.target.id.to_string(),
                l.target
                    .meta
                    .get("target_groups")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    let mut want = vec![
        (f.instances[2].clone(), "d:7000".to_owned()),
        (f.instances[5].clone(), "a:80".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);
    // Not selected: unknown to this pool.
    assert!(matches!(
        lb.status(&[id(&f.instances[0])]).await,
        Err(Error::NotFound { .. })
    ));

    let vpc = m.create_vpc().await.expect("vpc");
    let subnet = m
        .create_subnet(&vpc, "10.0.3.0/24", "us-east-1a")
        .await
        .expect("subnet");
    let asg = m
        .create_auto_scaling_group("web-asg", &subnet, 2)
        .await
        .expect("asg");
    assert_eq!(asg.len(), 2);
    m.register(&f.groups["b"], &[(asg[0].clone(), 8081)])
        .await
        .expect("register");
    let lb = Elbv2Balancer::builder()
        .with_sdk_config(m.sdk_config().await)
        .with_auto_scaling_group("web-asg")
        .build()
        .expect("balancer builds");
    let d = lb.discovery().await.expect("discovery").expect("instances");
    let mut want: Vec<TargetId> = asg.iter().map(|s| id(s)).collect();
    want.sort();
    assert_eq!(d.instances(), want.as_slice());
    assert_eq!(d.target_groups(), ["b"]);
    assert_eq!(d.not_in_any_target_group(), &[id(&asg[1])]);
    let st = lb.status(&[id(&asg[0])]).await.expect("status");
    assert_eq!(st[0].state, TargetState::InService);

    let missing = Elbv2Balancer::builder()
        .with_sdk_config(m.sdk_config().await)
        .with_auto_scaling_group("nope")
        .build()
        .expect("builds")
        .discovery()
        .await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    m.stop().await.expect("moto stops");
}

/// `ip` target groups hold instances by their private addresses: a pool
/// of instances finds them there (DescribeInstances gives the addresses),
/// drains them there and registers them again exactly, with the same
/// address and port; an address of an instance outside the pool is left
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_target_groups_hold_instances_by_their_private_address() {
    let Some(m) = moto().await else { return };
    let vpc = m.create_vpc().await.expect("vpc");
    let s1 = m
        .create_subnet(&vpc, "10.0.1.0/24", "us-east-1a")
        .await
        .expect("subnet");
    let instances = m.run_instances(3, Some(&s1)).await.expect("instances");
    m.create_tags(&instances[..2], "Patch Group", "web")
        .await
        .expect("tags");
    let mut ips = Vec::new();
    for i in &instances {
        ips.push(m.private_ip(i).await.expect("private ip"));
    }
    let a = m.create_target_group("a", &vpc, 80).await.expect("a");
    let by_ip = m
        .create_ip_target_group("ips", &vpc, 9443)
        .await
        .expect("ips");
    m.register(&a, &[(instances[0].clone(), 80)])
        .await
        .expect("register a");
    m.register(
        &by_ip,
        &[
            (ips[0].clone(), 9443),
            (ips[1].clone(), 9443),
            (ips[2].clone(), 9443),
        ],
    )
    .await
    .expect("register ips");
    let before = registered(&m, &by_ip).await;

    let counter = ApiCallCounter::new();
    let lb = by_tag(&m, &counter).await;
    let d = lb.discovery().await.expect("discovery").expect("instances");
    let mut tgs = d.target_groups().to_vec();
    tgs.sort();
    assert_eq!(tgs, ["a", "ips"], "{:?}", d.skipped_target_groups());
    assert!(
        d.not_in_any_target_group().is_empty(),
        "i1 is in ips by its address"
    );
    let listed = lb.list().await.expect("list");
    let meta: BTreeMap<String, String> = listed
        .iter()
        .map(|l| {
            (
                l.target.id.to_string(),
                l.target.meta["target_groups"].clone(),
            )
        })
        .collect();
    assert_eq!(meta.len(), 2, "{meta:?}");
    assert_eq!(meta[&instances[0]], format!("a:80,ips:9443@{}", ips[0]));
    assert_eq!(meta[&instances[1]], format!("ips:9443@{}", ips[1]));
    let i1 = id(&instances[1]);
    assert!(
        lb.enable_hint(&i1)
            .contains(&format!("--targets Id={},Port=9443", ips[1])),
        "{}",
        lb.enable_hint(&i1)
    );

    // Out of the ip group by its address; the outsider stays.
    lb.drain(std::slice::from_ref(&i1)).await.expect("drain");
    let during = registered(&m, &by_ip).await;
    assert!(!during.iter().any(|(i, _)| *i == ips[1]), "{during:?}");
    assert!(during.iter().any(|(i, _)| *i == ips[2]), "{during:?}");
    assert!(lb.status(std::slice::from_ref(&i1)).await.expect("status")[0].is_drained());
    lb.enable(std::slice::from_ref(&i1)).await.expect("enable");
    assert_eq!(registered(&m, &by_ip).await, before, "back, same port");

    // After a crash: another process learns the registration from the
    // journal's listing and puts it back exactly.
    lb.drain(std::slice::from_ref(&i1)).await.expect("drain");
    let target = listed
        .iter()
        .find(|l| l.target.id == i1)
        .expect("listed")
        .target
        .clone();
    let fresh = by_tag(&m, &ApiCallCounter::new()).await;
    fresh.adopt(&[target]).await.expect("adopt");
    fresh
        .enable(std::slice::from_ref(&i1))
        .await
        .expect("enable");
    assert_eq!(registered(&m, &by_ip).await, before);

    // A whole rollout: every registration back.
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(1))
        .poll_interval(Duration::from_millis(50))
        .health_timeout(Duration::from_secs(20))
        .drain_timeout(Duration::from_secs(20))
        .build()
        .expect("config");
    let report = Rollout::new(lb.clone(), ScriptedExecutor::new(), config)
        .run()
        .await
        .expect("runs");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    assert_eq!(registered(&m, &by_ip).await, before);
    assert_eq!(registered(&m, &a).await, vec![(instances[0].clone(), 80)]);
    m.stop().await.expect("moto stops");
}

/// An Auto Scaling group names its instances only: their addresses are
/// read from EC2 (once, because an `ip` group exists) to find them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_scaling_group_finds_its_instances_in_ip_groups() {
    let Some(m) = moto().await else { return };
    let vpc = m.create_vpc().await.expect("vpc");
    let subnet = m
        .create_subnet(&vpc, "10.0.3.0/24", "us-east-1a")
        .await
        .expect("subnet");
    let asg = m
        .create_auto_scaling_group("web-asg", &subnet, 2)
        .await
        .expect("asg");
    let ip = m.private_ip(&asg[0]).await.expect("private ip");
    let by_ip = m
        .create_ip_target_group("ips", &vpc, 9443)
        .await
        .expect("ips");
    m.register(&by_ip, &[(ip.clone(), 9443)])
        .await
        .expect("register");
    let lb = Elbv2Balancer::builder()
        .with_sdk_config(m.sdk_config().await)
        .with_auto_scaling_group("web-asg")
        .build()
        .expect("balancer builds");
    let d = lb.discovery().await.expect("discovery").expect("instances");
    assert_eq!(
        d.target_groups(),
        ["ips"],
        "{:?}",
        d.skipped_target_groups()
    );
    assert_eq!(d.not_in_any_target_group(), &[id(&asg[1])]);
    lb.drain(&[id(&asg[0])]).await.expect("drain");
    assert!(registered(&m, &by_ip).await.is_empty());
    lb.enable(&[id(&asg[0])]).await.expect("enable");
    assert_eq!(registered(&m, &by_ip).await, vec![(ip, 9443)]);
    m.stop().await.expect("moto stops");
}
