//! `hygiene` over an instance pool in an Auto Scaling group on a real moto
//! server: `plan` shows the group, its mode, the `MinSize` arithmetic and
//! the zones; `run` under each mode (refuse, suspend, standby); and a run
//! killed (`kill -9`) with an instance in standby, a lowered `MinSize` and
//! `AZRebalance` suspended, which `restore` undoes exactly, leaving the
//! operator's own suspended process suspended.
//!
//! moto is used for what it models (groups, processes, sizes, lifecycle
//! states); the rules it does not keep (its `EnterStandby` neither
//! deregisters nor refuses to go below `MinSize`) are tested with
//! aws-smithy-mocks in hygiene-aws (`tests/mock_autoscaling.rs`).
#![cfg(feature = "aws")]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{aws_env, hygiene, json_lines, out, write};
use hygiene_aws::moto::{find_moto_server, MotoServer, REGION};
use hygiene_core::conformance::integration_available;

#[derive(Debug, PartialEq, Eq)]
struct GroupNow {
    min: i32,
    desired: i32,
    suspended: Vec<String>,
    states: Vec<String>,
}

async fn group_now(m: &MotoServer) -> GroupNow {
    let c = m.autoscaling().await;
    let out = c
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("web")
        .send()
        .await
        .expect("describe");
    let g = &out.auto_scaling_groups()[0];
    let mut suspended: Vec<String> = g
        .suspended_processes()
        .iter()
        .filter_map(|p| p.process_name().map(str::to_owned))
        .collect();
    suspended.sort();
    GroupNow {
        min: g.min_size().unwrap_or(-1),
        desired: g.desired_capacity().unwrap_or(-1),
        suspended,
        states: g
            .instances()
            .iter()
            .map(|i| i.lifecycle_state().map_or("?", |s| s.as_str()).to_owned())
            .collect(),
    }
}

/// The pool's configuration: the target group (the Auto Scaling group is
/// found from its instances, whatever selects them); moto places every instance of the group in
/// one zone, so the last two are said to be in us-east-1b in the file
/// (which wins over what the group says).
fn config(
    dir: &Path,
    m: &MotoServer,
    tg: &str,
    program: &Path,
    extra: &str,
    zone_b: &[String],
) -> std::path::PathBuf {
    let text = format!(
        r#"pool = "fleet"

[balancer.elbv2]
target_groups = ["{tg}"]
region = "{REGION}"
endpoint_url = "{}"
{extra}

[executor.local]
program = "{}"

[rollout]
batch_size = 2
poll_interval = "200ms"
drain_timeout = "30s"
health_timeout = "30s"
batch_by = "zone"

[rollout.zones]
{}
"#,
        m.endpoint_url(),
        program.display(),
        zone_b
            .iter()
            .map(|i| format!("{i} = \"us-east-1b\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let t: toml::Table = toml::from_str(&text).expect("toml");
    write(dir, &t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_pool_in_an_auto_scaling_group_under_each_mode() {
    if !integration_available(
        "moto",
        find_moto_server().is_some(),
        "run ./scripts/test, which installs moto[server] into .venv, or set HYGIENE_MOTO_SERVER",
    ) {
        return;
    }
    let m = MotoServer::start().await.expect("moto starts");
    let vpc = m.create_vpc().await.expect("vpc");
    let a = m
        .create_subnet(&vpc, "10.0.1.0/24", "us-east-1a")
        .await
        .expect("subnet");
    let b = m
        .create_subnet(&vpc, "10.0.2.0/24", "us-east-1b")
        .await
        .expect("subnet");
    let instances = m
        .create_auto_scaling_group("web", &format!("{a},{b}"), 4)
        .await
        .expect("group");
    assert_eq!(instances.len(), 4);
    let tg = m.create_target_group("web", &vpc, 8080).await.expect("tg");
    let regs: Vec<(String, u16)> = instances.iter().map(|i| (i.clone(), 8080)).collect();
    m.register(&tg, &regs).await.expect("register");
    m.set_target_group_attributes(&tg, &[("deregistration_delay.timeout_seconds", "5")])
        .await
        .expect("delay");
    m.create_load_balancer("front", &[a.clone(), b.clone()], std::slice::from_ref(&tg))
        .await
        .expect("load balancer");
    let asg = m.autoscaling().await;
    asg.update_auto_scaling_group()
        .auto_scaling_group_name("web")
        .health_check_type("ELB")
        .send()
        .await
        .expect("ELB health checks");
    // The operator's own suspension, which no mode may resume.
    asg.suspend_processes()
        .auto_scaling_group_name("web")
        .scaling_processes("AlarmNotification")
        .send()
        .await
        .expect("suspend");
    let before = group_now(&m).await;
    assert_eq!((before.min, before.desired), (4, 4));

    let dir = tempfile::tempdir().expect("tempdir");
    let quick = dir.path().join("patch");
    std::fs::write(&quick, "#!/bin/sh\nexit 0\n").expect("script");
    let slow = dir.path().join("patch-slow");
    std::fs::write(&slow, "#!/bin/sh\nsleep 3\nexit 0\n").expect("script");
    for p in [&quick, &slow] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let state = dir.path().join("state");
    let run = |cfg: &Path, args: &[&str]| {
        let mut c = hygiene(cfg, &state);
        c.args(args);
        aws_env(&mut c, dir.path());
        out(c)
    };

    // refuse (the default): plan shows the group and why, run refuses.
    let cfg = config(dir.path(), &m, &tg, &quick, "", &instances[2..]);
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&cfg, &["plan", "--json"]));
    assert_eq!(code, 6, "{stdout}{err}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect("plan json");
    assert_eq!(plan["auto_scaling"][0]["group"], "web", "{plan}");
    assert_eq!(plan["auto_scaling"][0]["mode"], "refuse", "{plan}");
    assert!(
        plan["blockers"]
            .to_string()
            .contains("balancer.elbv2.auto_scaling"),
        "{plan}"
    );
    // Zones from the group's instances, one zone per batch, in order.
    let zones: Vec<String> = plan["zones"]
        .as_array()
        .expect("zones")
        .iter()
        .map(|z| z["zone"].as_str().expect("zone").to_owned())
        .collect();
    assert_eq!(zones, ["us-east-1a", "us-east-1b"], "{plan}");
    let bz: Vec<&str> = plan["batch_zones"]
        .as_array()
        .expect("batch zones")
        .iter()
        .map(|z| z.as_str().expect("zone"))
        .collect();
    assert_eq!(bz, ["us-east-1a", "us-east-1b"], "{plan}");
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&cfg, &["run", "--yes"]));
    assert_eq!(code, 3, "{stdout}{err}");
    assert!(err.contains("web") && err.contains("auto_scaling"), "{err}");
    assert_eq!(group_now(&m).await, before, "nothing changed");

    // suspend: AZRebalance, HealthCheck, ReplaceUnhealthy for the run, and
    // resumed at its end; the operator's AlarmNotification stays.
    let cfg = config(
        dir.path(),
        &m,
        &tg,
        &quick,
        "auto_scaling = \"suspend\"",
        &instances[2..],
    );
    let (code, stdout, err) =
        tokio::task::block_in_place(|| run(&cfg, &["run", "--yes", "--json"]));
    assert_eq!(code, 0, "{stdout}{err}");
    let report = json_lines(&stdout).pop().expect("report");
    assert_eq!(report["outcome"]["kind"], "completed", "{report}");
    let journal = std::fs::read_to_string(state.join("fleet.jsonl")).expect("journal");
    assert!(
        journal.contains(
            "suspended AZRebalance, HealthCheck, ReplaceUnhealthy on Auto Scaling group web"
        ),
        "{journal}"
    );
    assert_eq!(
        group_now(&m).await,
        before,
        "every process the run suspended is resumed"
    );

    // standby: MinSize 4 = desired 4, so a batch of 2 needs MinSize 2.
    let cfg = config(
        dir.path(),
        &m,
        &tg,
        &quick,
        "auto_scaling = \"standby\"",
        &instances[2..],
    );
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&cfg, &["plan"]));
    assert_eq!(code, 6, "{stdout}{err}");
    assert!(
        stdout.contains("below MinSize 4") && stdout.contains("allow_min_size_change"),
        "{stdout}"
    );
    let cfg = config(
        dir.path(),
        &m,
        &tg,
        &quick,
        "auto_scaling = \"standby\"\nallow_min_size_change = true",
        &instances[2..],
    );
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&cfg, &["plan", "--json"]));
    assert_eq!(code, 0, "{stdout}{err}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect("plan json");
    assert_eq!(plan["auto_scaling"][0]["temporary_min_size"], 2, "{plan}");
    assert_eq!(plan["auto_scaling"][0]["desired_during_batch"], 2, "{plan}");
    let (code, stdout, err) =
        tokio::task::block_in_place(|| run(&cfg, &["run", "--yes", "--json"]));
    assert_eq!(code, 0, "{stdout}{err}");
    let journal = std::fs::read_to_string(state.join("fleet.jsonl")).expect("journal");
    let last_run = &journal[journal.rfind("\"record\":\"header\"").expect("header")..];
    for i in &instances {
        assert!(
            last_run.contains(&format!("put {i} in standby")),
            "{last_run}"
        );
    }
    assert!(last_run.contains("lowered MinSize of Auto Scaling group web from 4 to 2"));
    assert_eq!(
        group_now(&m).await,
        before,
        "out of standby, MinSize 4, processes resumed"
    );

    // A failed maintenance: the instance is kept out, in standby (the
    // group neither replaces nor registers it), MinSize stays lowered;
    // `hygiene enable` takes it out of standby, verified, and sets MinSize
    // back.
    let failing = dir.path().join("patch-fail");
    std::fs::write(
        &failing,
        format!(
            "#!/bin/sh\n[ \"$HYGIENE_TARGET_ID\" = \"{}\" ] && exit 1\nexit 0\n",
            instances[0]
        ),
    )
    .expect("script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let cfg = config(
        dir.path(),
        &m,
        &tg,
        &failing,
        "auto_scaling = \"standby\"\nallow_min_size_change = true",
        &instances[2..],
    );
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&cfg, &["run", "--yes"]));
    assert_eq!(code, 11, "{stdout}{err}");
    assert!(
        err.contains(&format!("{} stays in standby", instances[0])),
        "{err}"
    );
    let kept = group_now(&m).await;
    assert_eq!(
        kept.states.iter().filter(|s| *s == "Standby").count(),
        1,
        "{kept:?}"
    );
    assert_eq!(
        kept.min, 2,
        "MinSize stays lowered while one is in standby: {kept:?}"
    );
    assert_eq!(
        kept.suspended, before.suspended,
        "AZRebalance resumed: {kept:?}"
    );
    // status lists the change not undone, with the instance.
    let (_, stdout, err) = tokio::task::block_in_place(|| run(&cfg, &["status", "--json"]));
    let st: serde_json::Value = serde_json::from_str(stdout.trim()).expect("status json");
    assert!(
        st["open_changes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c
                .as_str()
                .is_some_and(|c| c.contains(&format!("put {} in standby", instances[0]))))),
        "{st}{err}"
    );

    // Another run in between (a journal of its own: the last one is moved
    // aside; the instance in standby is in no target group, so not in the
    // pool) carries the open standby on, so `enable` still finds it.
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&cfg, &["run", "--yes"]));
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, stdout, err) =
        tokio::task::block_in_place(|| run(&cfg, &["enable", instances[0].as_str()]));
    assert_eq!(code, 0, "{stdout}{err}");
    assert_eq!(
        group_now(&m).await,
        before,
        "out of standby, MinSize 4: {stdout}{err}"
    );

    // kill -9 while an instance is in standby, then restore.
    let cfg = config(
        dir.path(),
        &m,
        &tg,
        &slow,
        "auto_scaling = \"standby\"\nallow_min_size_change = true",
        &instances[2..],
    );
    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    aws_env(&mut c, dir.path());
    let mut child = c.spawn().expect("spawn");
    let journal_path = state.join("fleet.jsonl");
    let started = Instant::now();
    // Killed during a maintenance (3 s), its instances in standby.
    loop {
        let j = std::fs::read_to_string(&journal_path).unwrap_or_default();
        let last = j.rfind("\"record\":\"header\"").map_or("", |k| &j[k..]);
        if last.contains("\"op\":\"execute\"")
            && group_now(&m).await.states.iter().any(|s| s == "Standby")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no maintenance started: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let dead = group_now(&m).await;
    assert!(dead.states.iter().any(|s| s == "Standby"), "{dead:?}");
    assert_eq!(dead.min, 2, "{dead:?}");
    assert!(
        dead.suspended.contains(&"AZRebalance".to_owned()),
        "{dead:?}"
    );
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&cfg, &["restore"]));
    assert_eq!(code, 0, "{stdout}{err}");
    assert_eq!(
        group_now(&m).await,
        before,
        "restore undid every group change: out of standby, MinSize 4, AZRebalance resumed, AlarmNotification still suspended: {stdout}{err}"
    );
    let journal = std::fs::read_to_string(&journal_path).expect("journal");
    let records: Vec<hygiene_core::journal::Record> = journal
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    assert!(
        hygiene_core::journal::open_changes(&records).is_empty(),
        "{journal}"
    );
    // A new run starts again.
    let (code, stdout, err) = tokio::task::block_in_place(|| run(&cfg, &["plan"]));
    assert_eq!(code, 0, "{stdout}{err}");
    m.stop().await.expect("moto stops");
}

/// Instances in no Auto Scaling group take their zone from EC2 (their
/// placement): `plan` orders them by zone with nothing in `[rollout.zones]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_outside_groups_take_their_zone_from_ec2() {
    if !integration_available(
        "moto",
        find_moto_server().is_some(),
        "run ./scripts/test, which installs moto[server] into .venv, or set HYGIENE_MOTO_SERVER",
    ) {
        return;
    }
    let m = MotoServer::start().await.expect("moto starts");
    let vpc = m.create_vpc().await.expect("vpc");
    let a = m
        .create_subnet(&vpc, "10.0.1.0/24", "us-east-1a")
        .await
        .expect("subnet");
    let b = m
        .create_subnet(&vpc, "10.0.2.0/24", "us-east-1b")
        .await
        .expect("subnet");
    let in_b = m.run_instances(2, Some(&b)).await.expect("instances");
    let in_a = m.run_instances(1, Some(&a)).await.expect("instances");
    let tg = m.create_target_group("web", &vpc, 8080).await.expect("tg");
    let regs: Vec<(String, u16)> = in_b
        .iter()
        .chain(&in_a)
        .map(|i| (i.clone(), 8080))
        .collect();
    m.register(&tg, &regs).await.expect("register");
    m.create_load_balancer("front", &[a, b], std::slice::from_ref(&tg))
        .await
        .expect("load balancer");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &m, &tg, Path::new("/bin/true"), "", &[]);
    let mut c = hygiene(&cfg, &dir.path().join("state"));
    c.args(["plan", "--json"]);
    aws_env(&mut c, dir.path());
    let (code, stdout, err) = tokio::task::block_in_place(|| out(c));
    assert_eq!(code, 0, "{stdout}{err}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect("plan json");
    assert!(
        plan["auto_scaling"].as_array().expect("groups").is_empty(),
        "{plan}"
    );
    let bz: Vec<&str> = plan["batch_zones"]
        .as_array()
        .expect("batch zones")
        .iter()
        .map(|z| z.as_str().expect("zone"))
        .collect();
    assert_eq!(bz, ["us-east-1a", "us-east-1b"], "{plan}");
    assert_eq!(plan["batches"][0][0], in_a[0].as_str(), "{plan}");
    m.stop().await.expect("moto stops");
}
