//! Against a real moto server: each test starts its own on a free loopback
//! port and builds its VPC, instances and target groups.

use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};
mod common;

use common::{id, moto};
use hygiene_aws::moto::MotoServer;
use hygiene_aws::{ApiCallCounter, Elbv2Balancer, PreflightCheck, SsmExecutor, StatusApi};
use hygiene_core::conformance::{check_all, Fixture};
use hygiene_core::{
    Amount, Error, Executor, LoadBalancer, Rollout, RolloutConfig, Target, TargetId, TargetState,
};

/// A VPC, `n` instances and a target group on `port` with all of them registered.
async fn pool(m: &MotoServer, name: &str, n: usize, port: u16) -> (String, Vec<String>, String) {
    let vpc = m.create_vpc().await.expect("vpc");
    let instances = m.run_instances(n, None).await.expect("instances");
    let tg = m
        .create_target_group(name, &vpc, port)
        .await
        .expect("target group");
    let regs: Vec<(String, u16)> = instances.iter().map(|i| (i.clone(), port)).collect();
    m.register(&tg, &regs).await.expect("register");
    (vpc, instances, tg)
}

async fn balancer(m: &MotoServer, tgs: &[&str], counter: Option<&ApiCallCounter>) -> Elbv2Balancer {
    let mut b = Elbv2Balancer::builder()
        .with_sdk_config(m.sdk_config().await)
        .with_poll_interval(Duration::from_millis(50));
    for tg in tgs {
        b = b.with_target_group(*tg);
    }
    if let Some(c) = counter {
        b = b.with_call_counter(c.clone());
    }
    b.build().expect("balancer builds")
}

/// (state, port) of `id` in `tg`, asked by id and port as ELBv2 requires.
async fn raw_health(m: &MotoServer, tg: &str, id: &str, port: u16) -> TargetHealthStateEnum {
    let out = m
        .elbv2()
        .await
        .describe_target_health()
        .target_group_arn(tg)
        .targets(
            TargetDescription::builder()
                .id(id)
                .port(i32::from(port))
                .build(),
        )
        .send()
        .await
        .expect("describe target health");
    out.target_health_descriptions()[0]
        .target_health()
        .and_then(|h| h.state())
        .cloned()
        .expect("state")
}

/// Registered (id, port) pairs of a target group.
async fn registered(m: &MotoServer, tg: &str) -> Vec<(String, i32)> {
    let out = m
        .elbv2()
        .await
        .describe_target_health()
        .target_group_arn(tg)
        .send()
        .await
        .expect("describe target health");
    out.target_health_descriptions()
        .iter()
        .filter_map(|d| {
            d.target().map(|t| {
                (
                    t.id().unwrap_or_default().to_owned(),
                    t.port().unwrap_or_default(),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_moto() {
    let Some(m) = moto().await else { return };
    let (_vpc, instances, tg) = pool(&m, "conformance", 2, 8080).await;
    let stranger = m.run_instances(1, None).await.expect("instance")[0].clone();
    let lb = balancer(&m, &[&tg], None).await;
    let fx = Fixture {
        a: id(&instances[0]),
        b: id(&instances[1]),
        unknown: id(&stranger),
        // An ELBv2 target id is an instance id or an IP address.
        invalid: Some(id(&format!("{}/80", instances[0]))),
        settle: Duration::from_secs(2),
    };
    check_all(&lb, &fx).await;
    assert!(!lb.capabilities().counts_connections);
    assert!(
        lb.enable_hint(&fx.a).contains("register-targets")
            && lb.enable_hint(&fx.a).contains("Port=8080"),
        "{}",
        lb.enable_hint(&fx.a)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_rollout_with_ssm_over_two_target_groups() {
    let Some(m) = moto().await else { return };
    let vpc = m.create_vpc().await.expect("vpc");
    let instances = m.run_instances(5, None).await.expect("instances");
    let web = m.create_target_group("web", &vpc, 80).await.expect("tg");
    let api = m.create_target_group("api", &vpc, 8080).await.expect("tg");
    // i0..i3 in web; i3 and i4 in api: i3 is in both.
    m.register(
        &web,
        &instances[..4]
            .iter()
            .map(|i| (i.clone(), 80))
            .collect::<Vec<_>>(),
    )
    .await
    .expect("register");
    m.register(
        &api,
        &instances[3..]
            .iter()
            .map(|i| (i.clone(), 8080))
            .collect::<Vec<_>>(),
    )
    .await
    .expect("register");
    let counter = ApiCallCounter::new();
    let lb = balancer(&m, &[&web, &api], Some(&counter)).await;
    let exec = SsmExecutor::builder("AWS-RunShellScript")
        .with_sdk_config(m.sdk_config().await)
        .with_call_counter(counter.clone())
        .with_parameter("commands", ["uptime"])
        .with_comment("hygiene test")
        .with_preflight(PreflightCheck::Skip)
        .with_status_api(StatusApi::GetCommandInvocation)
        .with_poll_interval(Duration::from_millis(50))
        .build()
        .expect("executor builds");
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .min_healthy(Amount::Count(3))
        .poll_interval(Duration::from_millis(50))
        .build()
        .expect("config");
    let report = Rollout::new(lb.clone(), exec, config)
        .run()
        .await
        .expect("rollout runs");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    assert_eq!(
        report.targets.len(),
        5,
        "the instance in two groups is one target"
    );
    let listed = lb.list().await.expect("list");
    assert_eq!(listed.len(), 5);
    assert!(
        listed.iter().all(|l| l.status.is_serving_healthy()),
        "{listed:?}"
    );
    assert_eq!(registered(&m, &web).await.len(), 4);
    assert_eq!(registered(&m, &api).await.len(), 2);
    assert!(
        counter.count("SendCommand") >= 3,
        "{:?}",
        counter.snapshot()
    );
    assert!(
        counter.count("DeregisterTargets") >= 3,
        "{:?}",
        counter.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_in_two_groups_is_drained_from_both() {
    let Some(m) = moto().await else { return };
    let vpc = m.create_vpc().await.expect("vpc");
    let instances = m.run_instances(2, None).await.expect("instances");
    let web = m.create_target_group("web", &vpc, 80).await.expect("tg");
    let api = m.create_target_group("api", &vpc, 9000).await.expect("tg");
    let both = &instances[0];
    m.register(&web, &[(both.clone(), 80), (instances[1].clone(), 80)])
        .await
        .expect("register");
    m.register(&api, &[(both.clone(), 9000)])
        .await
        .expect("register");
    let lb = balancer(&m, &[&web, &api], None).await;
    let listed = lb.list().await.expect("list");
    let t = listed
        .iter()
        .find(|l| l.target.id.as_str() == both)
        .expect("listed");
    assert_eq!(t.target.instance_id.as_deref(), Some(both.as_str()));
    assert!(
        t.target.meta["target_groups"].contains("web:80")
            && t.target.meta["target_groups"].contains("api:9000"),
        "{:?}",
        t.target.meta
    );

    lb.drain(&[id(both)]).await.expect("drain");
    assert_eq!(
        raw_health(&m, &web, both, 80).await,
        TargetHealthStateEnum::Unused
    );
    assert_eq!(
        raw_health(&m, &api, both, 9000).await,
        TargetHealthStateEnum::Unused
    );
    let st = lb
        .status(&[id(both), id(&instances[1])])
        .await
        .expect("status");
    assert!(st[0].is_drained(), "{st:?}");
    assert!(st[1].is_serving_healthy(), "{st:?}");

    lb.enable(&[id(both)]).await.expect("enable");
    assert_eq!(
        raw_health(&m, &web, both, 80).await,
        TargetHealthStateEnum::Healthy
    );
    assert_eq!(
        raw_health(&m, &api, both, 9000).await,
        TargetHealthStateEnum::Healthy
    );
    assert!(lb.status(&[id(both)]).await.expect("status")[0].is_serving_healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_port_is_preserved() {
    let Some(m) = moto().await else { return };
    let vpc = m.create_vpc().await.expect("vpc");
    let instances = m.run_instances(1, None).await.expect("instances");
    // Default port 80, registered on 8081.
    let tg = m.create_target_group("ports", &vpc, 80).await.expect("tg");
    m.register(&tg, &[(instances[0].clone(), 8081)])
        .await
        .expect("register");
    let lb = balancer(&m, &[&tg], None).await;
    let listed = lb.list().await.expect("list");
    assert_eq!(listed[0].target.port, Some(8081));
    lb.drain(&[id(&instances[0])]).await.expect("drain");
    assert!(registered(&m, &tg).await.is_empty());
    assert_eq!(
        lb.status(&[id(&instances[0])]).await.expect("status")[0].state,
        TargetState::OutOfService
    );
    lb.enable(&[id(&instances[0])]).await.expect("enable");
    assert_eq!(
        registered(&m, &tg).await,
        vec![(instances[0].clone(), 8081)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_things_are_typed_errors() {
    let Some(m) = moto().await else { return };
    let (_vpc, instances, tg) = pool(&m, "known", 1, 80).await;

    let missing_tg =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/missing/0123456789abcdef"
            .to_owned();
    let lb = balancer(&m, &[&missing_tg], None).await;
    let e = lb.list().await.expect_err("unknown target group");
    assert!(
        matches!(
            e,
            Error::NotFound {
                kind: "target group",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&missing_tg), "{e}");

    let lb_arn = format!(
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/nope/{}",
        "0123456789abcdef"
    );
    let lb2 = Elbv2Balancer::builder()
        .with_sdk_config(m.sdk_config().await)
        .with_load_balancer(&lb_arn)
        .build()
        .expect("builds");
    let e = lb2.list().await.expect_err("unknown load balancer");
    assert!(
        matches!(
            e,
            Error::NotFound {
                kind: "load balancer",
                ..
            }
        ),
        "{e:?}"
    );

    let lb = balancer(&m, &[&tg], None).await;
    let e = lb
        .status(&[id("i-0123456789abcdef0")])
        .await
        .expect_err("unknown instance");
    assert!(matches!(e, Error::NotFound { kind: "target", .. }), "{e:?}");
    let e = lb
        .drain(&[id(&instances[0]), id("i-0123456789abcdef0")])
        .await
        .expect_err("drain with an unknown instance");
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert_eq!(
        registered(&m, &tg).await.len(),
        1,
        "nothing was deregistered"
    );
    let e = lb
        .status(&[id("web/s1")])
        .await
        .expect_err("not an ELBv2 id");
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_from_a_load_balancer() {
    let Some(m) = moto().await else { return };
    let vpc = m.create_vpc().await.expect("vpc");
    let subnets = vec![
        m.create_subnet(&vpc, "10.0.1.0/24", "us-east-1a")
            .await
            .expect("subnet"),
        m.create_subnet(&vpc, "10.0.2.0/24", "us-east-1b")
            .await
            .expect("subnet"),
    ];
    let instances = m
        .run_instances(3, Some(&subnets[0]))
        .await
        .expect("instances");
    let web = m.create_target_group("web", &vpc, 80).await.expect("tg");
    let api = m.create_target_group("api", &vpc, 8080).await.expect("tg");
    let other = m.create_target_group("other", &vpc, 80).await.expect("tg");
    m.register(&web, &[(instances[0].clone(), 80)])
        .await
        .expect("register");
    m.register(&api, &[(instances[1].clone(), 8080)])
        .await
        .expect("register");
    m.register(&other, &[(instances[2].clone(), 80)])
        .await
        .expect("register");
    let alb = m
        .create_load_balancer("front", &subnets, &[web.clone(), api.clone()])
        .await
        .expect("load balancer");
    let lb = Elbv2Balancer::builder()
        .with_sdk_config(m.sdk_config().await)
        .with_load_balancer(&alb)
        .build()
        .expect("builds");
    let mut groups = lb.target_group_arns().await.expect("groups");
    groups.sort();
    let mut want = vec![web, api];
    want.sort();
    assert_eq!(groups, want);
    let ids: Vec<String> = lb
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|l| l.target.id.to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        !ids.contains(&instances[2]),
        "a target group of another balancer is not in the pool"
    );
}

/// A maintenance that never ends: the process dies during it.
#[derive(Debug)]
struct Forever;

#[async_trait::async_trait]
impl hygiene_core::Executor for Forever {
    fn name(&self) -> String {
        "forever".into()
    }
    async fn preflight(
        &self,
        targets: &[hygiene_core::Target],
    ) -> hygiene_core::Result<Vec<hygiene_core::Preflight>> {
        Ok(vec![hygiene_core::Preflight::Ready; targets.len()])
    }
    async fn execute(
        &self,
        _targets: &[hygiene_core::Target],
    ) -> hygiene_core::Result<Vec<hygiene_core::ExecOutcome>> {
        std::future::pending().await
    }
}

// A run dies with an instance deregistered (port 8081, not the group's
// default); a new process, whose balancer never saw it registered, restores
// it from the journal on exactly that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_restores_exact_registrations_from_the_journal() {
    let Some(m) = moto().await else { return };
    let vpc = m.create_vpc().await.expect("vpc");
    let instances = m.run_instances(2, None).await.expect("instances");
    let tg = m.create_target_group("crash", &vpc, 80).await.expect("tg");
    m.register(
        &tg,
        &[(instances[0].clone(), 8081), (instances[1].clone(), 8081)],
    )
    .await
    .expect("register");
    let journal = hygiene_core::journal::MemoryJournal::new();
    let config = RolloutConfig::builder()
        .poll_interval(Duration::from_millis(50))
        .health_timeout(Duration::from_secs(10))
        .build()
        .expect("config");
    let first = balancer(&m, &[&tg], None).await;
    let run = Rollout::new(first, Forever, config.clone())
        .with_journal(journal.clone())
        .run();
    assert!(
        tokio::time::timeout(Duration::from_secs(3), run)
            .await
            .is_err(),
        "the maintenance never ends: the process dies during it"
    );
    let left = registered(&m, &tg).await;
    assert_eq!(
        left.len(),
        1,
        "the dead run left one deregistered: {left:?}"
    );
    let out = instances
        .iter()
        .find(|i| !left.iter().any(|(r, _)| r == *i))
        .expect("one instance out")
        .clone();
    // A new process: a new balancer that never saw `out` registered.
    let second = balancer(&m, &[&tg], None).await;
    let report = Rollout::new(second, Forever, config)
        .with_journal(journal)
        .restore()
        .await
        .expect("restore");
    let mut regs = registered(&m, &tg).await;
    regs.sort();
    let mut want = vec![(instances[0].clone(), 8081), (instances[1].clone(), 8081)];
    want.sort();
    assert_eq!(regs, want, "{report:#?}");
    let t = report.target(&id(&out)).expect("reported");
    assert!(!t.is_kept_out(), "{t:?}");
}

// Crash safety against a real SSM endpoint: the command id a run reports
// is enough for a new process to read the command's outcome, without
// sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_reads_the_outcome_of_a_command_a_dead_run_sent() {
    let Some(m) = moto().await else { return };
    let instances = m.run_instances(2, None).await.expect("instances");
    let counter = ApiCallCounter::new();
    let exec = |counter: &ApiCallCounter| {
        let cfg = m.sdk_config();
        let counter = counter.clone();
        async move {
            SsmExecutor::builder("AWS-RunShellScript")
                .with_sdk_config(cfg.await)
                .with_call_counter(counter)
                .with_parameter("commands", ["uptime"])
                .with_preflight(PreflightCheck::Skip)
                .with_status_api(StatusApi::GetCommandInvocation)
                .with_poll_interval(Duration::from_millis(50))
                .build()
                .expect("executor builds")
        }
    };
    let targets: Vec<Target> = instances
        .iter()
        .map(|i| Target::new(TargetId::new(i.clone()).expect("id")).with_instance_id(i.clone()))
        .collect();
    let kept = hygiene_core::testing::KeptHandles::new();
    let sink = kept.sink();
    let out = exec(&counter)
        .await
        .execute_tracked(&targets, &sink)
        .await
        .expect("execute");
    assert!(out.iter().all(|o| o.success), "{out:?}");
    let kept = kept.handles();
    assert_eq!(kept.len(), 2);
    let sent = counter.count("SendCommand");
    let fresh = exec(&counter).await;
    for (t, (id, handle)) in targets.iter().zip(&kept) {
        assert_eq!(&t.id, id);
        let got = fresh.recover(t, handle).await.expect("recover");
        assert!(
            matches!(&got, hygiene_core::Recovered::Finished(o) if o.success && o.id == t.id),
            "{got:?}"
        );
    }
    assert_eq!(counter.count("SendCommand"), sent, "never sent again");
    let bogus = hygiene_core::ExecHandle(serde_json::json!({
        "command_id": "00000000-0000-0000-0000-000000000000",
        "instance_id": instances[0],
    }));
    let got = fresh.recover(&targets[0], &bogus).await.expect("recover");
    assert!(
        matches!(&got, hygiene_core::Recovered::Unknown(_)),
        "{got:?}"
    );
}
