//! Availability Zones in the engine: `batch_by = zone` rolls one zone at a
//! time, `zone_min_healthy` keeps a floor in every zone, and both are
//! checked before anything is touched.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{all_in_service, ids_of};
use hygiene_core::testing::{InMemoryBalancer, Operation, ScriptedExecutor};
use hygiene_core::{
    Amount, BatchBy, Error, ExecOutcome, Executor, Outcome, Pacing, Preflight, Rollout,
    RolloutConfig, Target, TargetId, TargetState, ZONE_META,
};

/// Targets `t0…` with these zones (the zone of `ti` is `zones[i]`).
fn zoned_pool(zones: &[&str]) -> (InMemoryBalancer, Vec<TargetId>, BTreeMap<TargetId, String>) {
    let ids: Vec<TargetId> = (0..zones.len())
        .map(|i| TargetId::new(format!("t{i}")).expect("id"))
        .collect();
    let lb = InMemoryBalancer::with_targets(ids.iter().map(|i| i.to_string())).expect("pool");
    let map = ids
        .iter()
        .zip(zones)
        .map(|(i, z)| (i.clone(), (*z).to_owned()))
        .collect();
    (lb, ids, map)
}

fn base() -> hygiene_core::RolloutConfigBuilder {
    RolloutConfig::builder()
        .poll_interval(Duration::from_millis(100))
        .health_timeout(Duration::from_secs(30))
}

/// An executor that, at the start of every maintenance, records which
/// targets are being maintained and how many targets of each zone the
/// balancer has in service right then.
#[derive(Debug, Clone)]
struct Watching {
    inner: ScriptedExecutor,
    lb: InMemoryBalancer,
    zones: BTreeMap<TargetId, String>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// The targets of one maintenance call, and the targets in service per
/// zone when it started.
type Seen = (Vec<TargetId>, BTreeMap<String, usize>);

#[async_trait]
impl Executor for Watching {
    fn name(&self) -> String {
        "watching".into()
    }
    async fn preflight(&self, targets: &[Target]) -> hygiene_core::Result<Vec<Preflight>> {
        self.inner.preflight(targets).await
    }
    async fn execute(&self, targets: &[Target]) -> hygiene_core::Result<Vec<ExecOutcome>> {
        let mut serving: BTreeMap<String, usize> = BTreeMap::new();
        for (id, st) in self.lb.snapshot() {
            if st.state == TargetState::InService {
                *serving.entry(self.zones[&id].clone()).or_insert(0) += 1;
            }
        }
        self.seen
            .lock()
            .expect("lock")
            .push((targets.iter().map(|t| t.id.clone()).collect(), serving));
        self.inner.execute(targets).await
    }
}

fn watching(lb: &InMemoryBalancer, zones: &BTreeMap<TargetId, String>) -> Watching {
    Watching {
        inner: ScriptedExecutor::new(),
        lb: lb.clone(),
        zones: zones.clone(),
        seen: Arc::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn batches_by_zone_never_mix_zones_and_finish_a_zone_first() {
    for pacing in [Pacing::Batches, Pacing::Window] {
        // Interleaved zones in the pool's order; batches of 2.
        let (lb, ids, zones) = zoned_pool(&["b", "a", "c", "a", "b", "a", "c"]);
        let exec = ScriptedExecutor::new().observe(&lb);
        // Maintenances of different lengths, so a window would overlap
        // zones if it were let.
        for (k, id) in ids.iter().enumerate() {
            exec.set_duration_all([id], Duration::from_secs(10 + 7 * k as u64));
        }
        let cfg = base()
            .batch_size(Amount::Count(2))
            .pacing(pacing)
            .batch_by(BatchBy::Zone)
            .zones(zones.clone())
            .build()
            .expect("config");
        let r = Rollout::new(lb.clone(), exec.clone(), cfg)
            .run()
            .await
            .expect("run");
        assert_eq!(r.outcome, Outcome::Completed, "{pacing:?}");
        assert!(all_in_service(&lb));
        let recs = exec.records();
        assert_eq!(recs.len(), 7);
        // Zones in order a, b, c; every maintenance of a zone ends before
        // any of the next zone starts.
        let zone = |id: &TargetId| zones[id].clone();
        let order: Vec<String> = {
            let mut v: Vec<_> = recs.iter().map(|r| (r.started, zone(&r.id))).collect();
            v.sort();
            v.into_iter().map(|(_, z)| z).collect()
        };
        assert_eq!(order, ["a", "a", "a", "b", "b", "c", "c"], "{pacing:?}");
        for x in &recs {
            for y in &recs {
                if zone(&x.id) < zone(&y.id) {
                    assert!(
                        x.ended <= y.started,
                        "{pacing:?}: {} ({}) still ran when {} ({}) started",
                        x.id,
                        zone(&x.id),
                        y.id,
                        zone(&y.id)
                    );
                }
            }
        }
        // Drains never name two zones in one call.
        for c in lb.calls().iter().filter(|c| c.op == Operation::Drain) {
            let zs: std::collections::BTreeSet<String> = c.ids.iter().map(zone).collect();
            assert_eq!(zs.len(), 1, "{pacing:?}: one drain over zones {zs:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_zone_floor_keeps_the_last_healthy_target_of_each_zone() {
    // Zone b has two targets, zone c one: with zone_min_healthy = 1 the
    // two b's are never out together, and c… is the only one of its zone:
    // refused below. Here: a has 3, b has 2.
    let (lb, _, zones) = zoned_pool(&["a", "b", "a", "b", "a"]);
    let exec = watching(&lb, &zones);
    let cfg = base()
        .batch_size(Amount::Count(5))
        .pacing(Pacing::Window)
        .zone_min_healthy(Amount::Count(1))
        .zones(zones.clone())
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), exec.clone(), cfg)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Completed);
    assert!(all_in_service(&lb));
    let seen = exec.seen.lock().expect("lock").clone();
    assert_eq!(seen.iter().map(|s| s.0.len()).sum::<usize>(), 5);
    for (targets, serving) in &seen {
        for z in ["a", "b"] {
            assert!(
                serving.get(z).copied().unwrap_or(0) >= 1,
                "zone {z} had no target in service while {targets:?} were maintained: {serving:?}"
            );
        }
    }
    // The window of 5 took two of a and one of b at once: the floor
    // shrank it, not the pool's (unset) min_healthy.
    let most_out = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
    assert_eq!(seen[0].1, most_out, "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_zone_floor_per_cent_counts_in_the_zone() {
    // 50% of a zone of 4 is 2: at most 2 of zone a out at once.
    let (lb, _, zones) = zoned_pool(&["a", "a", "a", "a"]);
    let exec = watching(&lb, &zones);
    let cfg = base()
        .batch_size(Amount::Count(4))
        .zone_min_healthy(Amount::Percent(50))
        .zones(zones.clone())
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), exec.clone(), cfg)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Completed);
    for (targets, serving) in exec.seen.lock().expect("lock").iter() {
        assert!(targets.len() <= 2, "{targets:?}");
        assert!(serving["a"] >= 2, "{serving:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn batch_by_zone_without_a_zone_is_refused_naming_the_target() {
    let (lb, ids, mut zones) = zoned_pool(&["a", "b", "a"]);
    zones.remove(&ids[1]);
    let cfg = base()
        .batch_by(BatchBy::Zone)
        .zones(zones)
        .build()
        .expect("config");
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect_err("refused");
    match &e {
        Error::InvalidConfig { field, .. } => assert_eq!(*field, "batch_by"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(e.to_string().contains("t1"), "{e}");
    assert!(e.to_string().contains("rollout.zones"), "{e}");
    assert!(ids_of(&lb, Operation::Drain).is_empty(), "nothing drained");
}

#[tokio::test(start_paused = true)]
async fn a_zone_whose_only_target_must_stay_is_refused_before_anything_changes() {
    let (lb, _, zones) = zoned_pool(&["a", "a", "c"]);
    let cfg = base()
        .zone_min_healthy(Amount::Count(1))
        .zones(zones)
        .build()
        .expect("config");
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect_err("refused");
    match &e {
        Error::InvalidConfig { field, .. } => assert_eq!(*field, "zone_min_healthy"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(e.to_string().contains("zone c"), "{e}");
    assert!(ids_of(&lb, Operation::Drain).is_empty(), "nothing drained");
}

#[tokio::test(start_paused = true)]
async fn the_balancers_zone_is_used_when_the_configuration_gives_none() {
    let lb = InMemoryBalancer::new();
    for (id, z) in [("x1", "b"), ("x2", "a"), ("x3", "b"), ("x4", "a")] {
        lb.add_target(Target::new(TargetId::new(id).expect("id")).with_meta(ZONE_META, z));
    }
    let exec = ScriptedExecutor::new();
    let cfg = base().batch_by(BatchBy::Zone).build().expect("config");
    let r = Rollout::new(lb.clone(), exec.clone(), cfg)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Completed);
    let order: Vec<String> = exec.records().iter().map(|r| r.id.to_string()).collect();
    assert_eq!(order, ["x2", "x4", "x1", "x3"]);
}

#[test]
fn zone_settings_are_validated_and_round_trip() {
    let e = base()
        .zone_min_healthy(Amount::Percent(100))
        .build()
        .expect_err("100%");
    assert!(matches!(
        e,
        Error::InvalidConfig {
            field: "zone_min_healthy",
            ..
        }
    ));
    let e = base()
        .zones([(TargetId::new("t0").expect("id"), " ".to_owned())].into())
        .build()
        .expect_err("empty zone");
    assert!(matches!(e, Error::InvalidConfig { field: "zones", .. }));
    let c = base()
        .batch_by(BatchBy::Zone)
        .zone_min_healthy(Amount::Count(1))
        .zones([(TargetId::new("t0").expect("id"), "eu-west-1a".to_owned())].into())
        .build()
        .expect("config");
    let json = serde_json::to_string(&c).expect("json");
    let back: RolloutConfig = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, c);
    // A configuration without zones serializes as before (old journals).
    let plain = serde_json::to_value(base().build().expect("config")).expect("json");
    assert!(plain.get("batch_by").is_none() && plain.get("zones").is_none());
}
