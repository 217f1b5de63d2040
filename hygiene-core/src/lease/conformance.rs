//! The checks every [`LeaseStore`] must pass (feature `conformance`): the
//! rules of the trait's `# Contract`. Each `check_*` panics naming the
//! broken rule; [`check_all`] runs them all, directly and through
//! `Arc<dyn LeaseStore>`.
//!
//! A store's test gives two clients of the **same** store, as two machines
//! would have them (each with its own sightings: takeover is judged by the
//! contender's own clock), and a [`LeaseFixture`] whose `prefix` makes the
//! pool and host names unique to the test.
//!
//! ```
//! use std::time::Duration;
//! use hygiene_core::lease::conformance::{check_all, LeaseFixture};
//! use hygiene_core::lease::MemoryLeaseStore;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let a = MemoryLeaseStore::new(Duration::from_secs(10));
//! let b = a.contender();
//! check_all(&a, &b, &LeaseFixture::new("doc")).await;
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::{Fence, Grant, LeaseError, LeaseStore, Owner};
use crate::journal::Record;

/// What a store's test gives the checks.
#[derive(Debug, Clone)]
pub struct LeaseFixture {
    /// Prefix of every pool and host name the checks use (unique per test:
    /// a shared table or etcd cluster may hold other tests' keys).
    pub prefix: String,
}

impl LeaseFixture {
    /// A fixture whose names start with `prefix` and a random suffix.
    pub fn new(prefix: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("{prefix}-{}", &id[..8]),
        }
    }

    fn pool(&self, check: &str, n: u8) -> String {
        format!("{}-{check}-p{n}", self.prefix)
    }

    fn host(&self, check: &str, n: u8) -> String {
        format!("{}-{check}-h{n}", self.prefix)
    }
}

fn owner(n: &str) -> Owner {
    Owner {
        run_id: format!("run-{n}-{}", uuid::Uuid::new_v4().simple()),
        who: format!("tester@{n}"),
        started_at: jiff::Timestamp::now().to_string(),
    }
}

fn note(text: &str) -> Record {
    Record::Resumed {
        mode: text.to_owned(),
        at: jiff::Timestamp::now().to_string(),
        host: "conformance".into(),
        pid: 0,
    }
}

async fn grant(store: &dyn LeaseStore, pool: &str, who: &Owner, hosts: &[String]) -> Grant {
    store
        .acquire(pool, who, hosts)
        .await
        .unwrap_or_else(|e| panic!("acquire of a free pool {pool} failed: {e}"))
}

fn expect_held<T: std::fmt::Debug>(
    r: Result<T, LeaseError>,
    rule: &str,
    key: &str,
    holder_run: &str,
) {
    match r {
        Err(e @ LeaseError::Held { .. }) => {
            let text = e.to_string();
            let LeaseError::Held { key: k, holder, .. } = &e else {
                unreachable!()
            };
            assert_eq!(
                k, key,
                "{rule}: the refusal must name the conflicting {key}: {text}"
            );
            assert_eq!(
                holder.owner.run_id, holder_run,
                "{rule}: the refusal must name the holder {holder_run}: {text}"
            );
            assert!(
                text.contains(holder_run),
                "{rule}: message names the holder: {text}"
            );
        }
        other => panic!("{rule}: expected Held naming {key}, got {other:?}"),
    }
}

fn expect_lost<T: std::fmt::Debug>(r: Result<T, LeaseError>, rule: &str) {
    assert!(
        matches!(r, Err(LeaseError::Lost { .. })),
        "{rule}: expected Lost, got {r:?}"
    );
}

/// One grant at a time: a second acquire is refused naming the holder;
/// `holder` shows it; after release the pool is free.
pub async fn check_exclusive(a: &dyn LeaseStore, b: &dyn LeaseStore, fx: &LeaseFixture) {
    let pool = fx.pool("excl", 1);
    let (o1, o2) = (owner("one"), owner("two"));
    let g = grant(a, &pool, &o1, &[]).await;
    assert_eq!(g.pool, pool);
    expect_held(
        b.acquire(&pool, &o2, &[]).await,
        "exclusive rule",
        &format!("pool {pool}"),
        &o1.run_id,
    );
    let h = b
        .holder(&pool)
        .await
        .expect("holder")
        .expect("inspect rule: a held pool has a holder");
    assert_eq!(h.owner, o1, "inspect rule: holder is the owner");
    assert_eq!(h.fence, g.fence, "inspect rule: holder's fence");
    a.release(&g).await.expect("release");
    assert!(
        b.holder(&pool).await.expect("holder").is_none(),
        "release rule: a released pool has no holder"
    );
    let g2 = grant(b, &pool, &o2, &[]).await;
    b.release(&g2).await.expect("release");
}

/// Every acquisition's fence is greater than every one before, and a
/// released grant is lost for every later call.
pub async fn check_fence(a: &dyn LeaseStore, b: &dyn LeaseStore, fx: &LeaseFixture) {
    let pool = fx.pool("fence", 1);
    let mut last = Fence(0);
    for (n, store) in [a, b, a].into_iter().enumerate() {
        let g = grant(store, &pool, &owner(&n.to_string()), &[]).await;
        assert!(
            g.fence > last,
            "fence rule: acquisition {n} got {} after {}",
            g.fence,
            last
        );
        last = g.fence;
        store.release(&g).await.expect("release");
        expect_lost(store.renew(&g).await, "fence rule: renew after release");
        expect_lost(
            store.append(&g, &note("late")).await,
            "fence rule: append after release",
        );
        expect_lost(store.release(&g).await, "fence rule: release twice");
    }
}

/// Hosts are taken with the pool as a whole: a request naming a host
/// another pool holds is refused naming it, and takes nothing.
pub async fn check_hosts(a: &dyn LeaseStore, b: &dyn LeaseStore, fx: &LeaseFixture) {
    let (p1, p2) = (fx.pool("hosts", 1), fx.pool("hosts", 2));
    let (h1, h2, h3) = (
        fx.host("hosts", 1),
        fx.host("hosts", 2),
        fx.host("hosts", 3),
    );
    let (o1, o2) = (owner("one"), owner("two"));
    let g1 = grant(a, &p1, &o1, std::slice::from_ref(&h1)).await;
    expect_held(
        b.acquire(&p2, &o2, &[h2.clone(), h1.clone()]).await,
        "hosts rule: acquire naming a held host",
        &format!("host {h1}"),
        &o1.run_id,
    );
    // Nothing was taken: h2 is free for p1.
    a.take_hosts(&g1, std::slice::from_ref(&h2))
        .await
        .unwrap_or_else(|e| panic!("as-a-whole rule: a refused acquire took {h2}: {e}"));
    a.give_back(&g1, std::slice::from_ref(&h2))
        .await
        .expect("give back");
    let g2 = grant(b, &p2, &o2, std::slice::from_ref(&h2)).await;
    expect_held(
        b.take_hosts(&g2, &[h3.clone(), h1.clone()]).await,
        "hosts rule: take_hosts naming a held host",
        &format!("host {h1}"),
        &o1.run_id,
    );
    // h3 was not taken by the refused request.
    a.take_hosts(&g1, std::slice::from_ref(&h3))
        .await
        .unwrap_or_else(|e| panic!("as-a-whole rule: a refused take_hosts took {h3}: {e}"));
    let shown = a.holder(&p1).await.expect("holder").expect("held");
    assert!(
        shown.hosts.contains(&h1) && shown.hosts.contains(&h3),
        "inspect rule: the holder shows the hosts it has out: {shown:?}"
    );
    // Given back, or released with the pool: free for the other pool.
    a.give_back(&g1, std::slice::from_ref(&h1))
        .await
        .expect("give back");
    b.take_hosts(&g2, std::slice::from_ref(&h1))
        .await
        .unwrap_or_else(|e| panic!("give_back rule: {h1} given back is still held: {e}"));
    a.release(&g1).await.expect("release");
    b.take_hosts(&g2, std::slice::from_ref(&h3))
        .await
        .unwrap_or_else(|e| panic!("release rule: {h3} released with its pool is still held: {e}"));
    b.release(&g2).await.expect("release");
}

/// The journal takes records only under the current fence, keeps them in
/// order, and shows them to anybody.
pub async fn check_journal(a: &dyn LeaseStore, b: &dyn LeaseStore, fx: &LeaseFixture) {
    let pool = fx.pool("journal", 1);
    let g = grant(a, &pool, &owner("one"), &[]).await;
    for n in 0..3 {
        a.append(&g, &note(&format!("r{n}"))).await.expect("append");
    }
    let seen = b.records(&pool).await.expect("records");
    let modes: Vec<String> = seen
        .iter()
        .filter_map(|r| match r {
            Record::Resumed { mode, .. } => Some(mode.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        modes,
        ["r0", "r1", "r2"],
        "journal rule: every record, in order"
    );
    a.release(&g).await.expect("release");
    let g2 = grant(b, &pool, &owner("two"), &[]).await;
    expect_lost(
        a.append(&g, &note("stale")).await,
        "journal rule: an append under an old fence",
    );
    b.append(&g2, &note("r3"))
        .await
        .expect("append under the new fence");
    assert_eq!(b.records(&pool).await.expect("records").len(), 4);
    b.release(&g2).await.expect("release");
}

/// For stores whose leases expire: a contender takes over only after it
/// saw the holder's record unchanged for a whole lease (a renewal starts
/// its wait again); then the old holder's renewals, host requests and
/// journal records are refused, and the hosts it had out are the new
/// holder's. Takes about two lease durations of (tokio) time.
pub async fn check_takeover(a: &dyn LeaseStore, b: &dyn LeaseStore, fx: &LeaseFixture) {
    if !a.capabilities().expires {
        return;
    }
    let pool = fx.pool("takeover", 1);
    let h1 = fx.host("takeover", 1);
    let (o1, o2) = (owner("one"), owner("two"));
    let g1 = grant(a, &pool, &o1, std::slice::from_ref(&h1)).await;
    let d = g1.duration;
    expect_held(
        b.acquire(&pool, &o2, &[]).await,
        "takeover rule: a live holder is not taken over",
        &format!("pool {pool}"),
        &o1.run_id,
    );
    tokio::time::sleep(d * 3 / 5).await;
    a.renew(&g1).await.expect("renew");
    tokio::time::sleep(d * 3 / 5).await;
    // A whole lease since the first sighting, but the holder renewed.
    expect_held(
        b.acquire(&pool, &o2, &[]).await,
        "takeover rule: a renewal seen restarts the wait (the version changed)",
        &format!("pool {pool}"),
        &o1.run_id,
    );
    tokio::time::sleep(d / 2).await;
    expect_held(
        b.acquire(&pool, &o2, &[]).await,
        "takeover rule: not before a whole lease with the version unchanged",
        &format!("pool {pool}"),
        &o1.run_id,
    );
    tokio::time::sleep(d / 2 + Duration::from_millis(50)).await;
    let g2 = b
        .acquire(&pool, &o2, &[])
        .await
        .unwrap_or_else(|e| panic!("takeover rule: a whole lease unchanged: {e}"));
    assert!(g2.fence > g1.fence, "takeover rule: a greater fence");
    expect_lost(
        a.renew(&g1).await,
        "takeover rule: the stale holder's renew",
    );
    expect_lost(
        a.append(&g1, &note("stale")).await,
        "takeover rule: the stale holder's journal record",
    );
    expect_lost(
        a.take_hosts(&g1, &[fx.host("takeover", 2)]).await,
        "takeover rule: the stale holder's host request",
    );
    expect_lost(
        a.release(&g1).await,
        "takeover rule: the stale holder's release",
    );
    let shown = b.holder(&pool).await.expect("holder").expect("held");
    assert_eq!(shown.owner, o2);
    assert!(
        shown.hosts.contains(&h1),
        "takeover rule: the hosts the dead holder had out are the new holder's: {shown:?}"
    );
    b.append(&g2, &note("new")).await.expect("append");
    b.release(&g2).await.expect("release");
}

/// Every check, directly and through `Arc<dyn LeaseStore>`.
pub async fn check_all<A, B>(a: &A, b: &B, fx: &LeaseFixture)
where
    A: LeaseStore + Clone,
    B: LeaseStore + Clone,
{
    check_exclusive(a, b, fx).await;
    check_fence(a, b, fx).await;
    check_hosts(a, b, fx).await;
    check_journal(a, b, fx).await;
    check_takeover(a, b, fx).await;
    let (da, db): (Arc<dyn LeaseStore>, Arc<dyn LeaseStore>) =
        (Arc::new(a.clone()), Arc::new(b.clone()));
    let fx2 = LeaseFixture {
        prefix: format!("{}-dyn", fx.prefix),
    };
    check_exclusive(&da, &db, &fx2).await;
    check_hosts(&da, &db, &fx2).await;
}
