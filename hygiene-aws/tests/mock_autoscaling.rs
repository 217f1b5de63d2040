//! Auto Scaling group rules through `aws-smithy-mocks`, against a fake
//! group scripted after the Auto Scaling API reference — because moto is
//! not faithful here: its `EnterStandby` neither deregisters the instance
//! nor refuses to take the desired capacity below `MinSize` (both checked
//! against moto 5). The fake refuses what the API refuses:
//! `EnterStandby` with `ShouldDecrementDesiredCapacity` below `MinSize`,
//! `UpdateAutoScalingGroup` with a `MinSize` above the desired capacity,
//! `ExitStandby` of an instance not in standby, more than 20 instances a
//! standby call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use aws_sdk_autoscaling::error::ErrorMetadata;
use aws_sdk_autoscaling::operation::describe_auto_scaling_groups::DescribeAutoScalingGroupsOutput;
use aws_sdk_autoscaling::operation::describe_auto_scaling_instances::DescribeAutoScalingInstancesOutput;
use aws_sdk_autoscaling::operation::enter_standby::{EnterStandbyError, EnterStandbyOutput};
use aws_sdk_autoscaling::operation::exit_standby::{ExitStandbyError, ExitStandbyOutput};
use aws_sdk_autoscaling::operation::resume_processes::ResumeProcessesOutput;
use aws_sdk_autoscaling::operation::suspend_processes::SuspendProcessesOutput;
use aws_sdk_autoscaling::operation::update_auto_scaling_group::{
    UpdateAutoScalingGroupError, UpdateAutoScalingGroupOutput,
};
use aws_sdk_autoscaling::types::{
    AutoScalingGroup, AutoScalingInstanceDetails, Instance, LifecycleState, SuspendedProcess,
};
use aws_smithy_mocks::{mock, mock_client, MockResponse, RuleMode};
use hygiene_aws::autoscaling::{self, AutoScalingMode, GroupKeeper};
use hygiene_core::journal::{open_changes, Journal, MemoryJournal, Record};
use hygiene_core::TargetId;

/// One group, as the API holds it.
#[derive(Debug, Clone)]
struct Group {
    min: i32,
    max: i32,
    desired: i32,
    health: &'static str,
    suspended: BTreeSet<String>,
    /// Instance → lifecycle state.
    instances: BTreeMap<String, &'static str>,
}

#[derive(Debug, Default)]
struct Fake {
    groups: BTreeMap<String, Group>,
    /// Every mutating call, in order: `Op group args`.
    log: Vec<String>,
}

fn validation(msg: String) -> ErrorMetadata {
    ErrorMetadata::builder()
        .code("ValidationError")
        .message(msg)
        .build()
}

fn fake(groups: &[(&str, Group)]) -> Arc<Mutex<Fake>> {
    Arc::new(Mutex::new(Fake {
        groups: groups
            .iter()
            .map(|(n, g)| ((*n).to_owned(), g.clone()))
            .collect(),
        log: Vec::new(),
    }))
}

fn group(min: i32, desired: i32, ids: &[&str]) -> Group {
    Group {
        min,
        max: 20,
        desired,
        health: "ELB",
        suspended: BTreeSet::new(),
        instances: ids.iter().map(|i| ((*i).to_owned(), "InService")).collect(),
    }
}

fn client(state: &Arc<Mutex<Fake>>) -> aws_sdk_autoscaling::Client {
    let s = Arc::clone(state);
    let describe = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .then_compute_response(move |req| {
            let f = s.lock().expect("fake");
            let mut out = DescribeAutoScalingGroupsOutput::builder();
            for name in req.auto_scaling_group_names() {
                let Some(g) = f.groups.get(name) else {
                    continue;
                };
                let mut b = AutoScalingGroup::builder()
                    .auto_scaling_group_name(name)
                    .min_size(g.min)
                    .max_size(g.max)
                    .desired_capacity(g.desired)
                    .default_cooldown(300)
                    .availability_zones("us-east-1a")
                    .health_check_type(g.health)
                    .created_time(aws_smithy_types::DateTime::from_secs(0));
                for p in &g.suspended {
                    b = b.suspended_processes(SuspendedProcess::builder().process_name(p).build());
                }
                for (i, st) in &g.instances {
                    b = b.instances(
                        Instance::builder()
                            .instance_id(i)
                            .lifecycle_state(LifecycleState::from(*st))
                            .availability_zone("us-east-1a")
                            .health_status("Healthy")
                            .protected_from_scale_in(false)
                            .build(),
                    );
                }
                out = out.auto_scaling_groups(b.build());
            }
            MockResponse::Output(out.build())
        });
    let s = Arc::clone(state);
    let instances = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_instances)
        .then_compute_response(move |req| {
            let f = s.lock().expect("fake");
            let mut out = DescribeAutoScalingInstancesOutput::builder();
            for id in req.instance_ids() {
                for (name, g) in &f.groups {
                    if let Some(st) = g.instances.get(id) {
                        let zone = if id.ends_with('1') || id.ends_with('3') {
                            "us-east-1b"
                        } else {
                            "us-east-1a"
                        };
                        out = out.auto_scaling_instances(
                            AutoScalingInstanceDetails::builder()
                                .instance_id(id)
                                .auto_scaling_group_name(name)
                                .availability_zone(zone)
                                .lifecycle_state(*st)
                                .health_status("HEALTHY")
                                .protected_from_scale_in(false)
                                .build(),
                        );
                    }
                }
            }
            MockResponse::Output(out.build())
        });
    let s = Arc::clone(state);
    let suspend =
        mock!(aws_sdk_autoscaling::Client::suspend_processes).then_compute_response(move |req| {
            let mut f = s.lock().expect("fake");
            let name = req.auto_scaling_group_name().expect("group").to_owned();
            let ps = req.scaling_processes().to_vec();
            f.log
                .push(format!("SuspendProcesses {name} {}", ps.join(",")));
            let g = f.groups.get_mut(&name).expect("group");
            g.suspended.extend(ps);
            MockResponse::Output(SuspendProcessesOutput::builder().build())
        });
    let s = Arc::clone(state);
    let resume =
        mock!(aws_sdk_autoscaling::Client::resume_processes).then_compute_response(move |req| {
            let mut f = s.lock().expect("fake");
            let name = req.auto_scaling_group_name().expect("group").to_owned();
            let ps = req.scaling_processes().to_vec();
            f.log
                .push(format!("ResumeProcesses {name} {}", ps.join(",")));
            let g = f.groups.get_mut(&name).expect("group");
            for p in ps {
                g.suspended.remove(&p);
            }
            MockResponse::Output(ResumeProcessesOutput::builder().build())
        });
    let s = Arc::clone(state);
    let update = mock!(aws_sdk_autoscaling::Client::update_auto_scaling_group)
        .then_compute_response(move |req| {
            let mut f = s.lock().expect("fake");
            let name = req.auto_scaling_group_name().expect("group").to_owned();
            let min = req.min_size().expect("min size");
            let g = f.groups.get_mut(&name).expect("group");
            if min > g.desired {
                return MockResponse::Error(UpdateAutoScalingGroupError::generic(validation(
                    format!(
                        "Desired capacity:{} must be between the specified min size:{min} and max size:{}",
                        g.desired, g.max
                    ),
                )));
            }
            g.min = min;
            f.log.push(format!("UpdateAutoScalingGroup {name} MinSize={min}"));
            MockResponse::Output(UpdateAutoScalingGroupOutput::builder().build())
        });
    let s = Arc::clone(state);
    let enter = mock!(aws_sdk_autoscaling::Client::enter_standby).then_compute_response(
        move |req| {
            let mut f = s.lock().expect("fake");
            let name = req.auto_scaling_group_name().expect("group").to_owned();
            let ids = req.instance_ids().to_vec();
            assert_eq!(
                req.should_decrement_desired_capacity(),
                Some(true),
                "never without the decrement: the group would launch a replacement"
            );
            let g = f.groups.get_mut(&name).expect("group");
            if ids.len() > 20 {
                return MockResponse::Error(EnterStandbyError::generic(validation(
                    "at most 20 instances".into(),
                )));
            }
            let after = g.desired - ids.len() as i32;
            if after < g.min {
                return MockResponse::Error(EnterStandbyError::generic(validation(format!(
                    "AutoScalingGroup {name} has min-size={}, max-size={}, and desired-size={}. To place into standby {} instances, please update the AutoScalingGroup sizes appropriately.",
                    g.min, g.max, g.desired, ids.len()
                ))));
            }
            g.desired = after;
            for i in &ids {
                g.instances.insert(i.clone(), "Standby");
            }
            f.log.push(format!("EnterStandby {name} {}", ids.join(",")));
            MockResponse::Output(EnterStandbyOutput::builder().build())
        },
    );
    let s = Arc::clone(state);
    let exit = mock!(aws_sdk_autoscaling::Client::exit_standby).then_compute_response(move |req| {
        let mut f = s.lock().expect("fake");
        let name = req.auto_scaling_group_name().expect("group").to_owned();
        let ids = req.instance_ids().to_vec();
        let g = f.groups.get_mut(&name).expect("group");
        if let Some(i) = ids.iter().find(|i| g.instances.get(*i) != Some(&"Standby")) {
            return MockResponse::Error(ExitStandbyError::generic(validation(format!(
                "The instance {i} is not in Standby."
            ))));
        }
        g.desired += ids.len() as i32;
        for i in &ids {
            g.instances.insert(i.clone(), "InService");
        }
        f.log.push(format!("ExitStandby {name} {}", ids.join(",")));
        MockResponse::Output(ExitStandbyOutput::builder().build())
    });
    mock_client!(
        aws_sdk_autoscaling,
        RuleMode::MatchAny,
        &[&describe, &instances, &suspend, &resume, &update, &enter, &exit]
    )
}

fn ids(names: &[&str]) -> Vec<TargetId> {
    names
        .iter()
        .map(|n| TargetId::new(*n).expect("id"))
        .collect()
}

async fn keeper(
    state: &Arc<Mutex<Fake>>,
    journal: &MemoryJournal,
    mode: AutoScalingMode,
    allow_min_size_change: bool,
    pool: &[&str],
) -> GroupKeeper {
    let c = client(state);
    let (groups, _) = autoscaling::describe(&c, &ids(pool))
        .await
        .expect("describe");
    let open = open_changes(&journal.records().expect("records"));
    GroupKeeper::new(
        c,
        Arc::new(journal.clone()),
        mode,
        allow_min_size_change,
        &groups,
        open,
    )
}

fn log(state: &Arc<Mutex<Fake>>) -> Vec<String> {
    state.lock().expect("fake").log.clone()
}

#[tokio::test]
async fn describe_finds_each_instances_group_and_zone() {
    let state = fake(&[
        ("web", group(1, 3, &["i-01", "i-02", "i-03"])),
        ("api", group(0, 1, &["i-04"])),
    ]);
    let (groups, zones) = autoscaling::describe(&client(&state), &ids(&["i-01", "i-04", "i-09"]))
        .await
        .expect("describe");
    let names: Vec<(&str, usize)> = groups
        .iter()
        .map(|g| (g.name.as_str(), g.instances.len()))
        .collect();
    assert_eq!(names, [("api", 1), ("web", 1)]);
    assert_eq!(zones[&TargetId::new("i-01").expect("id")], "us-east-1b");
    assert!(
        !zones.contains_key(&TargetId::new("i-09").expect("id")),
        "in no group"
    );
    assert!(autoscaling::refusal(AutoScalingMode::Refuse, &groups).is_some());
}

#[tokio::test]
async fn suspend_leaves_the_operators_suspended_processes_suspended() {
    let mut g = group(1, 3, &["i-01", "i-02", "i-03"]);
    // The operator suspended HealthCheck before the run.
    g.suspended.insert("HealthCheck".into());
    let state = fake(&[("web", g)]);
    let journal = MemoryJournal::new();
    let k = keeper(
        &state,
        &journal,
        AutoScalingMode::Suspend,
        false,
        &["i-01", "i-02"],
    )
    .await;
    k.suspend().await.expect("suspend");
    k.suspend().await.expect("once per run");
    assert_eq!(
        log(&state),
        ["SuspendProcesses web AZRebalance,ReplaceUnhealthy"]
    );
    let open = open_changes(&journal.records().expect("records"));
    assert_eq!(open.len(), 1);
    k.finish().await.expect("finish");
    assert_eq!(
        log(&state)[1],
        "ResumeProcesses web AZRebalance,ReplaceUnhealthy",
        "only what the run suspended"
    );
    let f = state.lock().expect("fake");
    assert_eq!(
        f.groups["web"].suspended.iter().collect::<Vec<_>>(),
        ["HealthCheck"]
    );
    drop(f);
    assert!(open_changes(&journal.records().expect("records")).is_empty());
}

#[tokio::test]
async fn standby_below_min_size_is_refused_without_the_permission_and_changes_nothing() {
    // desired 3, MinSize 2: one instance may enter standby, two may not.
    let state = fake(&[("web", group(2, 3, &["i-01", "i-02", "i-03"]))]);
    let journal = MemoryJournal::new();
    let k = keeper(
        &state,
        &journal,
        AutoScalingMode::Standby,
        false,
        &["i-01", "i-02", "i-03"],
    )
    .await;
    k.check_min_size(&ids(&["i-01"])).await.expect("one fits");
    let e = k
        .check_min_size(&ids(&["i-01", "i-02"]))
        .await
        .expect_err("two do not");
    let msg = e.to_string();
    assert!(msg.contains("web") && msg.contains("MinSize 2"), "{msg}");
    assert!(msg.contains("allow_min_size_change"), "{msg}");
    let e = k
        .enter_standby(&ids(&["i-01", "i-02"]))
        .await
        .expect_err("refused");
    assert!(
        matches!(e, hygiene_core::Error::InvalidConfig { .. }),
        "{e:?}"
    );
    assert!(log(&state).is_empty(), "nothing changed: {:?}", log(&state));
    assert!(open_changes(&journal.records().expect("records")).is_empty());
}

#[tokio::test]
async fn standby_with_a_temporary_min_size_sets_it_back_after_the_last_exit() {
    let state = fake(&[("web", group(3, 3, &["i-01", "i-02", "i-03"]))]);
    let journal = MemoryJournal::new();
    let k = keeper(
        &state,
        &journal,
        AutoScalingMode::Standby,
        true,
        &["i-01", "i-02", "i-03"],
    )
    .await;
    k.suspend().await.expect("suspend");
    k.enter_standby(&ids(&["i-01", "i-02"]))
        .await
        .expect("standby");
    {
        let f = state.lock().expect("fake");
        assert_eq!((f.groups["web"].min, f.groups["web"].desired), (1, 1));
    }
    k.exit_standby(&ids(&["i-01"])).await.expect("exit one");
    assert_eq!(
        state.lock().expect("fake").groups["web"].min,
        1,
        "i-02 still in standby"
    );
    k.exit_standby(&ids(&["i-02"])).await.expect("exit two");
    k.finish().await.expect("finish");
    assert_eq!(
        log(&state),
        [
            "SuspendProcesses web AZRebalance",
            "UpdateAutoScalingGroup web MinSize=1",
            "EnterStandby web i-01,i-02",
            "ExitStandby web i-01",
            "ExitStandby web i-02",
            "UpdateAutoScalingGroup web MinSize=3",
            "ResumeProcesses web AZRebalance",
        ]
    );
    let f = state.lock().expect("fake");
    assert_eq!((f.groups["web"].min, f.groups["web"].desired), (3, 3));
    drop(f);
    assert!(open_changes(&journal.records().expect("records")).is_empty());
}

#[tokio::test]
async fn more_than_twenty_instances_enter_standby_twenty_at_a_time() {
    let names: Vec<String> = (0..25).map(|i| format!("i-{i:02x}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let state = fake(&[("web", group(0, 25, &refs))]);
    let journal = MemoryJournal::new();
    let k = keeper(&state, &journal, AutoScalingMode::Standby, false, &refs).await;
    k.enter_standby(&ids(&refs)).await.expect("standby");
    let calls: Vec<String> = log(&state);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].split(',').count(), 20);
    assert_eq!(state.lock().expect("fake").groups["web"].desired, 0);
}

#[tokio::test]
async fn a_dead_runs_changes_are_undone_newest_first_from_the_journal() {
    let mut g = group(2, 2, &["i-01", "i-02"]);
    g.suspended.insert("Launch".into());
    let state = fake(&[("web", g)]);
    let journal = MemoryJournal::new();
    journal
        .append(&Record::Header(Box::new(header())))
        .expect("header");
    {
        let k = keeper(
            &state,
            &journal,
            AutoScalingMode::Standby,
            true,
            &["i-01", "i-02"],
        )
        .await;
        k.suspend().await.expect("suspend");
        k.enter_standby(&ids(&["i-01"])).await.expect("standby");
        // The process dies here: no exit, no finish.
    }
    let open = open_changes(&journal.records().expect("records"));
    assert_eq!(open.len(), 3, "{open:?}");
    let undone = autoscaling::undo_all(&client(&state), &journal, &open)
        .await
        .expect("undo");
    assert_eq!(undone, ["web"]);
    assert_eq!(
        &log(&state)[3..],
        [
            "ExitStandby web i-01",
            "UpdateAutoScalingGroup web MinSize=2",
            "ResumeProcesses web AZRebalance",
        ]
    );
    let g = state.lock().expect("fake").groups["web"].clone();
    assert_eq!((g.min, g.desired), (2, 2));
    assert_eq!(
        g.suspended.iter().collect::<Vec<_>>(),
        ["Launch"],
        "the operator's stays"
    );
    assert!(open_changes(&journal.records().expect("records")).is_empty());
    // Undoing again finds nothing open and calls nothing.
    let n = log(&state).len();
    autoscaling::undo_all(&client(&state), &journal, &[])
        .await
        .expect("nothing");
    assert_eq!(log(&state).len(), n);
}

#[tokio::test]
async fn an_undo_of_a_change_never_applied_is_harmless() {
    // The process died after journaling the standby, before EnterStandby.
    let state = fake(&[("web", group(0, 2, &["i-01", "i-02"]))]);
    let journal = MemoryJournal::new();
    journal
        .append(&Record::Change(Box::new(
            hygiene_core::journal::Change::new(
                "autoscaling:web:standby:i-01",
                autoscaling::SYSTEM,
                "put i-01 in standby",
                serde_json::json!({"op": "exit_standby", "group": "web", "instance": "i-01"}),
            )
            .for_target(TargetId::new("i-01").expect("id")),
        )))
        .expect("append");
    let open = open_changes(&journal.records().expect("records"));
    autoscaling::undo_all(&client(&state), &journal, &open)
        .await
        .expect("undo");
    assert!(
        log(&state).is_empty(),
        "no ExitStandby of an instance in service"
    );
    assert!(open_changes(&journal.records().expect("records")).is_empty());
}

fn header() -> hygiene_core::journal::Header {
    serde_json::from_value(serde_json::json!({
        "format": 1,
        "hygiene": "test",
        "run_id": "r1",
        "started_at": "2026-12-06T00:00:00Z",
        "balancer": "elbv2",
        "executor": "ssm",
        "host": "h",
        "pid": 1,
        "config": {},
        "plan": []
    }))
    .expect("header")
}

#[tokio::test]
async fn a_new_run_carries_over_what_a_finished_run_left_in_standby() {
    let state = fake(&[("web", group(1, 3, &["i-01", "i-02", "i-03"]))]);
    let journal = MemoryJournal::new();
    journal
        .append(&Record::Header(Box::new(header())))
        .expect("header");
    {
        let k = keeper(
            &state,
            &journal,
            AutoScalingMode::Standby,
            false,
            &["i-01", "i-02"],
        )
        .await;
        k.suspend().await.expect("suspend");
        k.enter_standby(&ids(&["i-01"])).await.expect("standby");
        // i-01's maintenance failed: kept out, in standby; the run ends.
        k.finish().await.expect("finish");
        assert_eq!(k.in_standby().await.len(), 1);
    }
    // The next run: its keeper is built from the journal as it is, then
    // the engine writes the new run's header.
    let k = keeper(
        &state,
        &journal,
        AutoScalingMode::Standby,
        false,
        &["i-01", "i-02"],
    )
    .await;
    journal
        .append(&Record::Header(Box::new(header())))
        .expect("header");
    k.suspend().await.expect("suspend");
    let open = open_changes(&journal.records().expect("records"));
    let keys: Vec<&str> = open.iter().map(|c| c.key.as_str()).collect();
    assert!(
        keys.contains(&"autoscaling:web:standby:i-01"),
        "the standby is this run's to undo too: {keys:?}"
    );
    // Putting it back takes it out of standby.
    k.exit_standby(&ids(&["i-01"])).await.expect("exit");
    k.finish().await.expect("finish");
    assert!(open_changes(&journal.records().expect("records")).is_empty());
    let g = state.lock().expect("fake").groups["web"].clone();
    assert_eq!(g.desired, 3);
    assert!(g.instances.values().all(|s| *s == "InService"), "{g:?}");
}
