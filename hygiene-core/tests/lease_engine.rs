//! The engine under a shared lease (memory store, paused time): the
//! journal in the store under the fence, renewals, restore-only when the
//! lease is at risk, nothing touched once it ran out or was taken over.

use std::sync::Arc;
use std::time::Duration;

use hygiene_core::journal::Record;
use hygiene_core::lease::{HeldLease, LeaseError, LeaseStore, MemoryLeaseStore, Owner};
use hygiene_core::testing::{InMemoryBalancer, Operation, ScriptedExecutor};
use hygiene_core::{
    AbortReason, Amount, Error, Outcome, Rollout, RolloutConfig, TargetId, TargetResult,
    TargetState,
};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(60);

fn config(batch: usize) -> RolloutConfig {
    RolloutConfig::builder()
        .batch_size(Amount::Count(batch))
        .min_healthy(Amount::Count(0))
        .max_failures(Amount::Count(0))
        .poll_interval(Duration::from_millis(200))
        .health_timeout(Duration::from_secs(5))
        .build()
        .expect("config")
}

struct Setup {
    lb: InMemoryBalancer,
    exec: ScriptedExecutor,
    store: MemoryLeaseStore,
    held: HeldLease,
    ids: Vec<TargetId>,
}

/// Pool "web"'s lease in `store`, taken now by run-1.
async fn hold<S: LeaseStore + Clone>(store: &S) -> HeldLease {
    let since = Instant::now();
    let grant = store
        .acquire("web", &Owner::here("run-1"), &[])
        .await
        .expect("acquire");
    HeldLease {
        store: Arc::new(store.clone()),
        grant,
        since,
    }
}

async fn setup(maintenance: Duration) -> Setup {
    let lb = InMemoryBalancer::with_targets(["web-1", "web-2", "web-3", "web-4"]).expect("lb");
    let ids: Vec<TargetId> = lb.snapshot().into_iter().map(|(id, _)| id).collect();
    let exec = ScriptedExecutor::new();
    exec.set_duration_all(&ids, maintenance);
    let store = MemoryLeaseStore::new(LEASE);
    let held = hold(&store).await;
    Setup {
        lb,
        exec,
        store,
        held,
        ids,
    }
}

fn all_in_service(lb: &InMemoryBalancer) -> bool {
    lb.snapshot()
        .iter()
        .all(|(_, s)| s.state == TargetState::InService)
}

#[tokio::test(start_paused = true)]
async fn a_run_under_a_lease_renews_it_and_journals_in_the_store() {
    let s = setup(Duration::from_secs(40)).await;
    let report = Rollout::new(s.lb.clone(), s.exec.clone(), config(1))
        .with_lease(s.held.clone())
        .run()
        .await
        .expect("run");
    assert_eq!(report.outcome, Outcome::Completed);
    assert!(report.duration > LEASE * 2, "the run outlived two leases");
    assert_eq!(report.run_id, "run-1", "the run's id is the grant's");
    let records = s.store.records("web").await.expect("records");
    assert!(matches!(records.first(), Some(Record::Header(h)) if h.run_id == "run-1"));
    assert!(matches!(records.last(), Some(Record::End { .. })));
    let holder = s.store.holder("web").await.expect("holder").expect("held");
    assert_eq!(
        holder.fence, s.held.grant.fence,
        "still this run's: renewed"
    );
    assert!(
        holder.hosts.is_empty(),
        "hosts back in service are given back"
    );
    // A contender never took it over: it was renewed all along.
    let other = s.store.contender();
    assert!(matches!(
        other.acquire("web", &Owner::here("run-2"), &[]).await,
        Err(LeaseError::Held { .. })
    ));
    // The run's heartbeat ends with the run: no renewal afterwards (the
    // last give-back, sent as the run ends, is let through first).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = s.store.calls();
    tokio::time::sleep(LEASE * 5).await;
    assert_eq!(s.store.calls(), calls, "renewed after the run ended");
}

#[tokio::test(start_paused = true)]
async fn renewals_cut_turn_the_run_restore_only_and_it_puts_back_within_the_lease() {
    // Two targets at a time, each maintenance 40 s; the store is cut off
    // after 5 s. The lease (60 s, a step needs 32 s) is at risk at 28 s:
    // restore-only. The maintenances end at 40 s, within the lease: put
    // back. Nothing else drains.
    let s = setup(Duration::from_secs(40)).await;
    let cut = s.store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        cut.set_unavailable(true);
    });
    let report = Rollout::new(s.lb.clone(), s.exec.clone(), config(2))
        .with_lease(s.held.clone())
        .run()
        .await
        .expect("run");
    assert!(
        matches!(&report.outcome, Outcome::Aborted { reason: AbortReason::LeaseLost { message } } if message.contains("not renewed")),
        "{:?}",
        report.outcome
    );
    assert!(
        all_in_service(&s.lb),
        "everything put back: {:?}",
        s.lb.snapshot()
    );
    let done = report
        .targets
        .iter()
        .filter(|t| t.result == TargetResult::Done)
        .count();
    let not_started = report
        .targets
        .iter()
        .filter(|t| t.result == TargetResult::NotStarted)
        .count();
    assert_eq!((done, not_started), (2, 2), "{:#?}", report.targets);
    assert_eq!(s.exec.records().len(), 2, "no maintenance started after");
    let drains =
        s.lb.calls()
            .iter()
            .filter(|c| c.op == Operation::Drain)
            .count();
    assert_eq!(drains, 1, "one drain call: the first batch");
    let _ = s.ids;
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_ran_out_and_was_taken_over_touches_the_balancer_no_more() {
    // Maintenances of 100 s; the holder is cut off from 5 s to 90 s. Its
    // lease runs out at 60 s; a contender that watched the record since
    // 1 s takes it over after a whole lease. When the maintenances end
    // (100 s) the old holder enables nothing: the new holder answers for
    // the pool, and the report names both targets as kept out.
    let s = setup(Duration::from_secs(100)).await;
    let cut = s.store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        cut.set_unavailable(true);
        tokio::time::sleep(Duration::from_secs(85)).await;
        cut.set_unavailable(false);
    });
    let contender = s.store.contender();
    let taken = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let g = hygiene_core::lease::acquire_waiting(
            &contender,
            "web",
            &Owner::here("run-2"),
            &[],
            Duration::from_secs(300),
        )
        .await
        .expect("taken over");
        (g, Instant::now())
    });
    let start = Instant::now();
    let report = Rollout::new(s.lb.clone(), s.exec.clone(), config(2))
        .with_lease(s.held.clone())
        .run()
        .await
        .expect("run");
    let (g2, at) = taken.await.expect("join");
    assert!(g2.fence > s.held.grant.fence);
    assert!(
        at.duration_since(start) >= LEASE,
        "taken over only after a whole lease unchanged: at {:?}",
        at.duration_since(start)
    );
    assert!(matches!(
        report.outcome,
        Outcome::Aborted {
            reason: AbortReason::LeaseLost { .. }
        }
    ));
    let late_changes: Vec<_> =
        s.lb.calls()
            .into_iter()
            .filter(|c| {
                c.at.duration_since(start) > LEASE
                    && matches!(
                        c.op,
                        Operation::Enable | Operation::Drain | Operation::Disable
                    )
            })
            .collect();
    assert!(
        late_changes.is_empty(),
        "changed after its lease ran out: {late_changes:?}"
    );
    let kept: Vec<&TargetId> = report.kept_out().map(|t| &t.id).collect();
    assert_eq!(kept.len(), 2, "both named as out: {:#?}", report.targets);
    // The stale holder's journal records are refused by the store.
    let e = s
        .store
        .append(
            &s.held.grant,
            &Record::End {
                outcome: Outcome::Completed,
                at: String::new(),
            },
        )
        .await
        .expect_err("stale append");
    assert!(matches!(e, LeaseError::Lost { .. }), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_lease_too_short_for_a_step_is_refused_before_anything_changes() {
    let lb = InMemoryBalancer::with_targets(["a", "b"]).expect("lb");
    let store = MemoryLeaseStore::new(Duration::from_secs(30));
    let grant = store
        .acquire("web", &Owner::here("run-1"), &[])
        .await
        .expect("acquire");
    let held = HeldLease {
        store: Arc::new(store),
        grant,
        since: Instant::now(),
    };
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), config(1))
        .with_lease(held)
        .run()
        .await
        .expect_err("refused");
    assert!(
        matches!(e, Error::InvalidConfig { field: "lease", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("call_timeout"), "{e}");
    assert!(lb.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_hosts_a_batch_takes_out_are_held_by_address_and_a_host_another_pool_holds_is_never_drained(
) {
    // web-1 and web-2 on two hosts (their addresses); another pool ("api")
    // holds 10.0.0.2 (it has it out). The store must show 10.0.0.1 held by
    // "web" while web-1 is maintained, and web-2 must never be drained.
    let lb = InMemoryBalancer::new();
    for (id, address) in [("web-1", "10.0.0.1"), ("web-2", "10.0.0.2")] {
        lb.add_target(
            hygiene_core::Target::new(TargetId::new(id).expect("id")).with_address(address),
        );
    }
    let ids: Vec<TargetId> = lb.snapshot().into_iter().map(|(id, _)| id).collect();
    let exec = ScriptedExecutor::new();
    exec.set_duration_all(&ids, Duration::from_secs(10));
    let store = MemoryLeaseStore::new(LEASE);
    let other = store.contender();
    other
        .acquire("api", &Owner::here("api-run"), &["10.0.0.2".to_string()])
        .await
        .expect("the other pool holds 10.0.0.2");
    let held = hold(&store).await;
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(0))
        .max_failures(Amount::Count(1))
        .poll_interval(Duration::from_millis(200))
        .health_timeout(Duration::from_secs(5))
        .build()
        .expect("config");
    let run = tokio::spawn(
        Rollout::new(lb.clone(), exec.clone(), cfg)
            .with_lease(held)
            .run(),
    );
    // web-1 is in its maintenance (10 s) at 5 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let holder = store.holder("web").await.expect("holder").expect("held");
    assert_eq!(
        holder.hosts,
        vec!["10.0.0.1".to_string()],
        "the host of the target out, by address"
    );
    let report = run.await.expect("join").expect("run");
    let web2 = TargetId::new("web-2").expect("id");
    assert!(
        !lb.calls()
            .iter()
            .any(|c| c.op == Operation::Drain && c.ids.contains(&web2)),
        "web-2's host is held by another pool: never drained: {:?}",
        lb.calls()
    );
    let r2 = report
        .targets
        .iter()
        .find(|t| t.id == web2)
        .expect("web-2 in the report");
    assert_ne!(r2.result, TargetResult::Done, "{:#?}", report.targets);
    assert!(all_in_service(&lb), "{:?}", lb.snapshot());
    assert_eq!(exec.records().len(), 1, "only web-1 maintained");
    let holder = store.holder("web").await.expect("holder");
    assert!(
        holder.is_none_or(|h| h.hosts.is_empty()),
        "every host given back"
    );
}

/// The memory store, except that its second `take_hosts` finds the lease
/// taken over (before the heartbeat's next renewal could tell).
#[derive(Debug, Clone)]
struct LostAtSecondTake {
    inner: MemoryLeaseStore,
    takes: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl LeaseStore for LostAtSecondTake {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn capabilities(&self) -> hygiene_core::lease::LeaseCapabilities {
        self.inner.capabilities()
    }
    fn duration(&self) -> Duration {
        self.inner.duration()
    }
    async fn acquire(
        &self,
        pool: &str,
        owner: &Owner,
        hosts: &[String],
    ) -> hygiene_core::lease::LeaseResult<hygiene_core::lease::Grant> {
        self.inner.acquire(pool, owner, hosts).await
    }
    async fn take_hosts(
        &self,
        grant: &hygiene_core::lease::Grant,
        hosts: &[String],
    ) -> hygiene_core::lease::LeaseResult<()> {
        if self.takes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            return Err(LeaseError::Lost {
                store: self.name(),
                pool: grant.pool.clone(),
                fence: grant.fence,
                message: "taken over by run-2".into(),
            });
        }
        self.inner.take_hosts(grant, hosts).await
    }
    async fn give_back(
        &self,
        grant: &hygiene_core::lease::Grant,
        hosts: &[String],
    ) -> hygiene_core::lease::LeaseResult<()> {
        self.inner.give_back(grant, hosts).await
    }
    async fn renew(
        &self,
        grant: &hygiene_core::lease::Grant,
    ) -> hygiene_core::lease::LeaseResult<()> {
        self.inner.renew(grant).await
    }
    async fn release(
        &self,
        grant: &hygiene_core::lease::Grant,
    ) -> hygiene_core::lease::LeaseResult<()> {
        self.inner.release(grant).await
    }
    async fn holder(
        &self,
        pool: &str,
    ) -> hygiene_core::lease::LeaseResult<Option<hygiene_core::lease::Holder>> {
        self.inner.holder(pool).await
    }
    async fn append(
        &self,
        grant: &hygiene_core::lease::Grant,
        record: &Record,
    ) -> hygiene_core::lease::LeaseResult<()> {
        self.inner.append(grant, record).await
    }
    async fn records(&self, pool: &str) -> hygiene_core::lease::LeaseResult<Vec<Record>> {
        self.inner.records(pool).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_found_lost_at_a_drain_starts_no_maintenance_on_a_target_already_out() {
    // A window of 2 over three targets: web-1 and web-2 go out together;
    // web-2 drains for 30 s. web-1 is done at ~2 s and web-3's drain finds
    // the lease lost. When web-2 has drained, its maintenance is not
    // started: this run changes nothing more.
    use hygiene_core::testing::DrainProfile;
    let lb = InMemoryBalancer::with_targets(["web-1", "web-2", "web-3"]).expect("lb");
    let web2 = TargetId::new("web-2").expect("id");
    lb.set_drain_profile(
        &web2,
        DrainProfile {
            initial: 3,
            duration: Duration::from_secs(30),
        },
    )
    .expect("profile");
    let ids: Vec<TargetId> = lb.snapshot().into_iter().map(|(id, _)| id).collect();
    let exec = ScriptedExecutor::new();
    exec.set_duration_all(&ids, Duration::from_secs(1));
    let store = LostAtSecondTake {
        inner: MemoryLeaseStore::new(LEASE),
        takes: Arc::default(),
    };
    let held = hold(&store).await;
    let cfg = RolloutConfig::builder()
        .batch_size(Amount::Count(2))
        .pacing(hygiene_core::Pacing::Window)
        .min_healthy(Amount::Count(0))
        .max_failures(Amount::Count(3))
        .poll_interval(Duration::from_millis(200))
        .health_timeout(Duration::from_secs(5))
        .drain_timeout(Duration::from_secs(120))
        .build()
        .expect("config");
    let report = Rollout::new(lb.clone(), exec.clone(), cfg)
        .with_lease(held)
        .run()
        .await
        .expect("run");
    let maintained: Vec<TargetId> = exec.records().into_iter().map(|r| r.id).collect();
    assert_eq!(
        maintained,
        vec![TargetId::new("web-1").expect("id")],
        "only web-1 maintained: {:#?}",
        report.targets
    );
    assert!(
        store.takes.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "web-3's drain asked for its host"
    );
    let r2 = report.target(&web2).expect("web-2");
    assert_ne!(r2.result, TargetResult::Done, "{r2:?}");
    // Left to the new holder: named as out, not put back by this run.
    assert!(r2.is_kept_out(), "{r2:?}");
}
