//! `hygiene run` end to end against a real moto server (started by the
//! test on a loopback port), driven by `examples/config/elbv2.toml` with
//! the load balancer moto made, moto's region and endpoint filled in, and
//! the SSM settings moto needs (`preflight = "skip"`, `status_api = "get"`).
#![cfg(feature = "aws")]

mod common;

use common::{aws_env, example_config, hygiene, json_lines, out, replace, set, write};
use hygiene_aws::moto::{find_moto_server, MotoServer, REGION};
use hygiene_core::conformance::integration_available;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_elbv2_with_ssm_on_moto() {
    if !integration_available(
        "moto",
        find_moto_server().is_some(),
        "run ./scripts/test, which installs moto[server] into .venv, or set HYGIENE_MOTO_SERVER",
    ) {
        return;
    }
    let m = MotoServer::start().await.expect("moto starts");
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
        .run_instances(4, Some(&subnets[0]))
        .await
        .expect("instances");
    let tg = m.create_target_group("web", &vpc, 8080).await.expect("tg");
    let regs: Vec<(String, u16)> = instances.iter().map(|i| (i.clone(), 8080)).collect();
    m.register(&tg, &regs).await.expect("register");
    let alb = m
        .create_load_balancer("front", &subnets, std::slice::from_ref(&tg))
        .await
        .expect("load balancer");
    // The first instance also serves a target group outside the pool.
    let other = m
        .create_target_group("other", &vpc, 9090)
        .await
        .expect("tg");
    m.register(&other, &[(instances[0].clone(), 9090)])
        .await
        .expect("register");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = example_config("elbv2.toml");
    replace(&mut t, "balancer.elbv2", "load_balancer", alb.clone());
    replace(&mut t, "balancer.elbv2", "region", REGION);
    set(&mut t, "balancer.elbv2", "endpoint_url", m.endpoint_url());
    // moto has neither DescribeInstanceInformation, ListCommandInvocations
    // nor AWS-managed documents to describe.
    replace(&mut t, "executor.ssm", "preflight", "skip");
    replace(&mut t, "executor.ssm", "status_api", "get");
    set(&mut t, "executor.ssm", "poll_interval", "200ms");
    let cfg = write(dir.path(), &t);
    let state = dir.path().join("state");
    let run = |args: &[&str]| {
        let mut c = hygiene(&cfg, &state);
        c.args(args);
        aws_env(&mut c, dir.path());
        out(c)
    };

    // The file's min_healthy leaves no room (below): a run would abort,
    // exit 6.
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&["validate"]));
    assert_eq!(code, 6, "{stdout}{err}");
    for i in &instances {
        assert!(stdout.contains(i.as_str()), "validate lists {i}: {stdout}");
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("problem:")
            && l.contains(instances[0].as_str())
            && l.contains("other")
            && l.contains("other_target_groups = \"drain\"")),
        "validate names the group outside the pool and the setting: {stdout}"
    );

    // The file's 10% / 80% of 4 leaves no room (80% of 4 is all of them):
    // the plan says so, and flags override it.
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&["plan", "--json"]));
    assert_eq!(code, 6, "{stdout}{err}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect("plan json");
    assert_eq!(plan["required_healthy"], 4, "{plan}");
    let overrides = ["--batch-size", "50%", "--min-healthy", "2"];
    let (code, stdout, err) =
        tokio::task::block_in_place(|| run(&[&["plan", "--json"][..], &overrides[..]].concat()));
    assert_eq!(code, 0, "{stdout}{err}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect("plan json");
    assert_eq!(plan["batches"].as_array().map(Vec::len), Some(2), "{plan}");

    let (code, stdout, err) = tokio::task::block_in_place(|| {
        run(&[
            &["run", "--json", "--poll-interval", "200ms"][..],
            &overrides[..],
        ]
        .concat())
    });
    assert_eq!(code, 0, "{stdout}{err}");
    let lines = json_lines(&stdout);
    let report = lines.last().expect("report");
    assert_eq!(report["type"], "report", "{stdout}");
    assert_eq!(report["outcome"]["kind"], "completed", "{report}");
    assert_eq!(report["batches"], 2, "batch 50% of 4: {report}");
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 4, "{report}");
    for t in targets {
        assert_eq!(t["result"]["kind"], "done", "{report}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "phase" && l["stage"] == "draining"),
        "{stdout}"
    );

    // Every instance is registered again, on its port.
    let health = m
        .elbv2()
        .await
        .describe_target_health()
        .target_group_arn(&tg)
        .send()
        .await
        .expect("describe target health");
    let mut back: Vec<(String, i32)> = health
        .target_health_descriptions()
        .iter()
        .filter_map(|d| d.target())
        .map(|t| (t.id().unwrap_or_default().to_owned(), t.port().unwrap_or(0)))
        .collect();
    back.sort();
    let mut want: Vec<(String, i32)> = instances.iter().map(|i| (i.clone(), 8080)).collect();
    want.sort();
    assert_eq!(back, want);

    let (code, stdout, err) = tokio::task::block_in_place(|| run(&["status"]));
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("nothing is out of rotation"), "{stdout}");
    assert!(state.join("web-prod.jsonl").exists());
}

/// The drain timeout on ELBv2: without one in the file, the longest
/// deregistration delay of the pool's target groups plus a margin; one the
/// operator set that cannot succeed, and an NLB group that keeps
/// connections open past the delay, are named by `validate` (and said by
/// `run`) with the setting that fixes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_follows_the_deregistration_delay() {
    if !integration_available(
        "moto",
        find_moto_server().is_some(),
        "run ./scripts/test, which installs moto[server] into .venv, or set HYGIENE_MOTO_SERVER",
    ) {
        return;
    }
    let m = MotoServer::start().await.expect("moto starts");
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
        .run_instances(2, Some(&subnets[0]))
        .await
        .expect("instances");
    let tg = m.create_target_group("web", &vpc, 8080).await.expect("tg");
    let regs: Vec<(String, u16)> = instances.iter().map(|i| (i.clone(), 8080)).collect();
    m.register(&tg, &regs).await.expect("register");
    let alb = m
        .create_load_balancer("front", &subnets, std::slice::from_ref(&tg))
        .await
        .expect("load balancer");
    m.set_target_group_attributes(
        &tg,
        &[
            ("deregistration_delay.timeout_seconds", "45"),
            (
                "deregistration_delay.connection_termination.enabled",
                "false",
            ),
        ],
    )
    .await
    .expect("attributes");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = example_config("elbv2.toml");
    replace(&mut t, "balancer.elbv2", "load_balancer", alb.clone());
    replace(&mut t, "balancer.elbv2", "region", REGION);
    set(&mut t, "balancer.elbv2", "endpoint_url", m.endpoint_url());
    replace(&mut t, "executor.ssm", "preflight", "skip");
    replace(&mut t, "executor.ssm", "status_api", "get");
    set(&mut t, "executor.ssm", "poll_interval", "200ms");
    common::section(&mut t, "rollout").remove("drain_timeout");
    // This pool is small: a min_healthy of 80% would block the run (exit 6),
    // which is not what this test is about.
    replace(&mut t, "rollout", "min_healthy", "25%");
    let cfg = write(dir.path(), &t);
    let state = dir.path().join("state");
    let run = |args: &[&str]| {
        let mut c = hygiene(&cfg, &state);
        c.args(args);
        aws_env(&mut c, dir.path());
        out(c)
    };

    let (code, stdout, err) = tokio::task::block_in_place(|| run(&["validate", "--json"]));
    assert_eq!(code, 0, "{stdout}{err}");
    let v = json_lines(&stdout).pop().expect("validate line");
    let drain = v["rollout"]["drain_timeout"]
        .as_str()
        .expect("drain_timeout");
    assert_eq!(
        hygiene_core::duration_text::parse(drain).expect("a duration"),
        std::time::Duration::from_secs(45) + hygiene_aws::DRAIN_TIMEOUT_MARGIN,
        "{v}"
    );
    let problems: Vec<&str> = v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("web")
            && p.contains("deregistration_delay.connection_termination.enabled = true")),
        "the NLB setting is named: {problems:#?}"
    );
    assert!(
        !problems.iter().any(|p| p.contains("is not above")),
        "the default drain timeout is above the delay: {problems:#?}"
    );

    // Set too short by the operator: named by validate, said by run.
    let (code, stdout, err) =
        tokio::task::block_in_place(|| run(&["validate", "--json", "--drain-timeout", "30s"]));
    assert_eq!(code, 0, "{stdout}{err}");
    let v = json_lines(&stdout).pop().expect("validate line");
    assert_eq!(
        v["rollout"]["drain_timeout"], "30s",
        "the operator's value stays: {v}"
    );
    assert!(
        v["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .any(|p| p.as_str().is_some_and(
                |p| p.contains("is not above the deregistration delay of target group web")
            )),
        "{v}"
    );
    let (code, stdout, err) = tokio::task::block_in_place(|| {
        run(&[
            "run",
            "--json",
            "--drain-timeout",
            "30s",
            "--batch-size",
            "1",
            "--min-healthy",
            "1",
            "--poll-interval",
            "200ms",
        ])
    });
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        err.contains("warning: drain_timeout 30s is not above the deregistration delay"),
        "{err}"
    );
}
