//! [`MemoryLeaseStore`]: leases that expire, in memory, for tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    Fence, Grant, Holder, LeaseCapabilities, LeaseError, LeaseResult, LeaseStore, Owner, Sightings,
};
use crate::journal::Record;

/// A lease store in memory that behaves like a shared one: records with a
/// version that changes at every renewal, takeover only after a whole lease
/// with the version unchanged ([`Sightings`], on tokio's clock: paused-time
/// tests take it over at once), fences, hosts, a journal under the fence.
///
/// Clones share the store; [`MemoryLeaseStore::contender`] is another
/// "machine" on the same store (its own sightings). Faults:
/// [`set_unavailable`](Self::set_unavailable) makes every call fail as a
/// store that cannot be reached.
#[derive(Debug, Clone)]
pub struct MemoryLeaseStore {
    shared: Arc<Mutex<Shared>>,
    sightings: Sightings,
    duration: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    pools: HashMap<String, PoolRecord>,
    /// host → pool holding it.
    hosts: HashMap<String, String>,
    journals: HashMap<String, Vec<Record>>,
    unavailable: bool,
    versions: u64,
    calls: u64,
}

#[derive(Debug, Clone)]
struct PoolRecord {
    /// The last fence given (kept after a release).
    fence: Fence,
    holder: Option<Holder>,
}

impl MemoryLeaseStore {
    /// An empty store granting leases of `duration`.
    pub fn new(duration: Duration) -> Self {
        Self {
            shared: Arc::default(),
            sightings: Sightings::new(),
            duration,
        }
    }

    /// Another client of the same store, as another machine would be: it
    /// shares the records, not this client's sightings.
    pub fn contender(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            sightings: Sightings::new(),
            duration: self.duration,
        }
    }

    /// Every later call fails with [`LeaseError::Unavailable`], or succeeds
    /// again.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// Calls made so far (all clients).
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store, counted and checked for the injected fault.
    fn enter(&self) -> LeaseResult<std::sync::MutexGuard<'_, Shared>> {
        let mut s = self.lock();
        s.calls += 1;
        if s.unavailable {
            return Err(LeaseError::unavailable(
                self.name(),
                "cannot be reached (injected fault)",
                None,
            ));
        }
        Ok(s)
    }
}

impl Shared {
    fn version(&mut self) -> String {
        self.versions += 1;
        format!("v{}", self.versions)
    }

    /// The current holder of `grant`'s pool, when it is `grant`.
    fn current(&mut self, store: &str, grant: &Grant) -> LeaseResult<&mut Holder> {
        let lost = |message: String| LeaseError::Lost {
            store: store.to_owned(),
            pool: grant.pool.clone(),
            fence: grant.fence,
            message,
        };
        match self
            .pools
            .get_mut(&grant.pool)
            .and_then(|r| r.holder.as_mut())
        {
            Some(h) if h.fence == grant.fence => Ok(h),
            Some(h) => Err(lost(format!("taken over by {h}"))),
            None => Err(lost("released".into())),
        }
    }

    /// The first of `hosts` another pool than `pool` holds.
    fn conflict(&self, store: &str, pool: &str, hosts: &[String]) -> LeaseResult<()> {
        for h in hosts {
            if let Some(other) = self.hosts.get(h).filter(|p| *p != pool) {
                let holder = self
                    .pools
                    .get(other)
                    .and_then(|r| r.holder.clone())
                    .unwrap_or_else(|| Holder {
                        pool: other.clone(),
                        owner: Owner {
                            run_id: "(released)".into(),
                            who: "unknown".into(),
                            started_at: String::new(),
                        },
                        fence: Fence(0),
                        hosts: vec![h.clone()],
                        duration: Duration::ZERO,
                        version: String::new(),
                        renewed_at: String::new(),
                    });
                return Err(LeaseError::Held {
                    store: store.to_owned(),
                    key: format!("host {h}"),
                    pool: other.clone(),
                    holder: Box::new(holder),
                    retry_in: None,
                });
            }
        }
        Ok(())
    }

    fn hosts_of(&self, pool: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, p)| *p == pool)
            .map(|(h, _)| h.clone())
            .collect();
        v.sort();
        v
    }
}

#[async_trait::async_trait]
impl LeaseStore for MemoryLeaseStore {
    fn name(&self) -> String {
        "memory lease store".into()
    }

    fn capabilities(&self) -> LeaseCapabilities {
        LeaseCapabilities {
            expires: true,
            shared: true,
        }
    }

    fn duration(&self) -> Duration {
        self.duration
    }

    async fn acquire(&self, pool: &str, owner: &Owner, hosts: &[String]) -> LeaseResult<Grant> {
        let name = self.name();
        let mut s = self.enter()?;
        let last = s.pools.get(pool).cloned();
        if let Some(PoolRecord {
            holder: Some(h), ..
        }) = &last
        {
            if let Some(left) = self.sightings.observe(pool, &h.version, h.duration) {
                return Err(LeaseError::Held {
                    store: name,
                    key: format!("pool {pool}"),
                    pool: pool.to_owned(),
                    holder: Box::new(h.clone()),
                    retry_in: Some(left),
                });
            }
        }
        s.conflict(&name, pool, hosts)?;
        self.sightings.forget(pool);
        let fence = Fence(last.map_or(0, |r| r.fence.0) + 1);
        for h in hosts {
            s.hosts.insert(h.clone(), pool.to_owned());
        }
        let version = s.version();
        let holder = Holder {
            pool: pool.to_owned(),
            owner: owner.clone(),
            fence,
            hosts: s.hosts_of(pool),
            duration: self.duration,
            version,
            renewed_at: jiff::Timestamp::now().to_string(),
        };
        s.pools.insert(
            pool.to_owned(),
            PoolRecord {
                fence,
                holder: Some(holder),
            },
        );
        Ok(Grant {
            pool: pool.to_owned(),
            owner: owner.clone(),
            fence,
            duration: self.duration,
        })
    }

    async fn take_hosts(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
        let name = self.name();
        let mut s = self.enter()?;
        s.current(&name, grant)?;
        s.conflict(&name, &grant.pool, hosts)?;
        for h in hosts {
            s.hosts.insert(h.clone(), grant.pool.clone());
        }
        let all = s.hosts_of(&grant.pool);
        s.current(&name, grant)?.hosts = all;
        Ok(())
    }

    async fn give_back(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
        let name = self.name();
        let mut s = self.enter()?;
        s.current(&name, grant)?;
        for h in hosts {
            if s.hosts.get(h) == Some(&grant.pool) {
                s.hosts.remove(h);
            }
        }
        let all = s.hosts_of(&grant.pool);
        s.current(&name, grant)?.hosts = all;
        Ok(())
    }

    async fn renew(&self, grant: &Grant) -> LeaseResult<()> {
        let name = self.name();
        let mut s = self.enter()?;
        s.current(&name, grant)?;
        let version = s.version();
        let h = s.current(&name, grant)?;
        h.version = version;
        h.renewed_at = jiff::Timestamp::now().to_string();
        Ok(())
    }

    async fn release(&self, grant: &Grant) -> LeaseResult<()> {
        let name = self.name();
        let mut s = self.enter()?;
        s.current(&name, grant)?;
        s.hosts.retain(|_, p| *p != grant.pool);
        if let Some(r) = s.pools.get_mut(&grant.pool) {
            r.holder = None;
        }
        Ok(())
    }

    async fn holder(&self, pool: &str) -> LeaseResult<Option<Holder>> {
        let s = self.enter()?;
        Ok(s.pools.get(pool).and_then(|r| r.holder.clone()))
    }

    async fn append(&self, grant: &Grant, record: &Record) -> LeaseResult<()> {
        let name = self.name();
        let mut s = self.enter()?;
        s.current(&name, grant)?;
        s.journals
            .entry(grant.pool.clone())
            .or_default()
            .push(record.clone());
        Ok(())
    }

    async fn records(&self, pool: &str) -> LeaseResult<Vec<Record>> {
        let s = self.enter()?;
        Ok(s.journals.get(pool).cloned().unwrap_or_default())
    }
}
