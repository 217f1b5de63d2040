//! [`EtcdLeaseStore`]: hygiene's [`LeaseStore`] in etcd.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use hygiene_core::journal::Record;
use hygiene_core::lease::{
    Fence, Grant, Holder, LeaseCapabilities, LeaseError, LeaseResult, LeaseStore, Owner, Sightings,
};
use hygiene_core::Result;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::config::Settings;
use crate::error::{lease_not_found, map};
use crate::keys::{prefix_end, unescape, Keys};

/// How often `acquire`, `take_hosts` and friends read again and retry when
/// another client changed a key between their read and their transaction.
const RACES: usize = 8;
/// Records read per request.
const PAGE: i64 = 500;

/// A lease store in etcd (see the crate docs for the keys and the rules).
///
/// Clones share the connection and what this client holds. Each machine
/// (each `hygiene` process) has its own client: takeover of a live-looking
/// holder is judged by the contender's own sightings.
#[derive(Clone)]
pub struct EtcdLeaseStore {
    client: Client,
    keys: Keys,
    name: String,
    duration: Duration,
    sightings: Sightings,
    held: Arc<Mutex<HashMap<(String, u64), Held>>>,
    /// Per pool, the `alive` version this client last saw.
    last_alive: Arc<Mutex<HashMap<String, String>>>,
}

/// What this client knows of a grant it holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The etcd lease the `alive` key is attached to.
    lease: i64,
    /// The next journal record's sequence number under this fence.
    seq: u64,
}

impl fmt::Debug for EtcdLeaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLeaseStore")
            .field("name", &self.name)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

/// The `owner` key's value.
#[derive(Debug, Serialize, Deserialize)]
struct OwnerValue {
    owner: Owner,
    /// The lease duration, whole seconds.
    duration_secs: u64,
}

/// The `alive` key's value.
#[derive(Debug, Serialize, Deserialize)]
struct AliveValue {
    renewed_at: String,
}

/// A pool's keys as read at one revision.
#[derive(Debug, Default)]
struct PoolState {
    owner: Option<KeyValue>,
    alive: Option<KeyValue>,
    hosts: Vec<String>,
}

impl EtcdLeaseStore {
    /// A builder for the cluster at `endpoints`.
    pub fn builder<I, S>(endpoints: I) -> crate::EtcdLeaseStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        crate::EtcdLeaseStoreBuilder::new(endpoints)
    }

    pub(crate) async fn connect(s: Settings) -> Result<Self> {
        let name = format!("etcd {} ({})", s.endpoints.join(","), s.prefix);
        let client = Client::connect(&s.endpoints, Some(s.options))
            .await
            .map_err(|e| hygiene_core::Error::from(map(&name, "connect", e)))?;
        Ok(Self {
            client,
            keys: Keys::new(&s.prefix),
            name,
            duration: s.duration,
            sightings: Sightings::new(),
            held: Arc::default(),
            last_alive: Arc::default(),
        })
    }

    /// Another client on the same connection with its own sightings and
    /// grants, as another machine would have (tests).
    pub fn contender(&self) -> Self {
        Self {
            sightings: Sightings::new(),
            held: Arc::default(),
            last_alive: Arc::default(),
            ..self.clone()
        }
    }

    /// Writes, reads back and deletes a key under the prefix: the cluster
    /// is reachable, has a leader, and lets this user write there
    /// (`hygiene validate`).
    ///
    /// # Errors
    /// [`LeaseError::Unavailable`], or [`LeaseError::Config`] for refused
    /// credentials or permissions.
    pub async fn check_writable(&self) -> LeaseResult<()> {
        let key = self.keys.probe(&uuid_like());
        let mut c = self.client.clone();
        c.put(key.clone(), "probe", None)
            .await
            .map_err(|e| self.err("write a probe key", e))?;
        let got = c
            .get(key.clone(), None)
            .await
            .map_err(|e| self.err("read the probe key back", e))?;
        c.delete(key, None)
            .await
            .map_err(|e| self.err("delete the probe key", e))?;
        if got.kvs().first().map(KeyValue::value) != Some(b"probe".as_slice()) {
            return Err(LeaseError::store(
                &self.name,
                "a probe key written was not read back",
                None,
            ));
        }
        Ok(())
    }

    fn err(&self, what: &str, e: etcd_client::Error) -> LeaseError {
        map(&self.name, what, e)
    }

    fn lost(&self, grant: &Grant, message: impl Into<String>) -> LeaseError {
        LeaseError::Lost {
            store: self.name.clone(),
            pool: grant.pool.clone(),
            fence: grant.fence,
            message: message.into(),
        }
    }

    fn held_of(&self, grant: &Grant) -> Option<Held> {
        self.lock()
            .get(&(grant.pool.clone(), grant.fence.0))
            .copied()
    }

    fn last_alive_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.last_alive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn last_alive_put(&self, key: &str, version: &str) {
        self.last_alive_map()
            .insert(key.to_owned(), version.to_owned());
    }

    fn last_alive_get(&self, key: &str) -> Option<String> {
        self.last_alive_map().get(key).cloned()
    }

    fn last_alive_forget(&self, key: &str) {
        self.last_alive_map().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn txn(&self, what: &str, txn: Txn) -> LeaseResult<TxnResponse> {
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.err(what, e))
    }

    /// Reads `pool`'s keys and the keys of `hosts`, in one request (one
    /// revision).
    async fn read(
        &self,
        pool: &str,
        hosts: &[String],
    ) -> LeaseResult<(PoolState, Vec<Option<KeyValue>>)> {
        let prefix = self.keys.pool_prefix(pool);
        let mut ops = vec![TxnOp::get(
            prefix.clone(),
            Some(GetOptions::new().with_range(prefix_end(&prefix))),
        )];
        ops.extend(hosts.iter().map(|h| TxnOp::get(self.keys.host(h), None)));
        let resp = self
            .txn(&format!("read pool {pool}"), Txn::new().and_then(ops))
            .await?;
        let mut responses = resp.op_responses().into_iter();
        let mut state = PoolState::default();
        let (owner_key, alive_key, hosts_prefix) = (
            self.keys.owner(pool),
            self.keys.alive(pool),
            self.keys.pool_hosts(pool),
        );
        if let Some(TxnOpResponse::Get(g)) = responses.next() {
            for kv in g.kvs() {
                let key = String::from_utf8_lossy(kv.key());
                if key == owner_key {
                    state.owner = Some(kv.clone());
                } else if key == alive_key {
                    state.alive = Some(kv.clone());
                } else if let Some(h) = key.strip_prefix(&hosts_prefix).and_then(unescape) {
                    state.hosts.push(h);
                }
            }
        }
        state.hosts.sort();
        let host_kvs = responses
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            .collect();
        Ok((state, host_kvs))
    }

    /// The holder shown for a pool's state; `None` when it has no owner.
    fn holder_of(&self, pool: &str, state: &PoolState) -> LeaseResult<Option<Holder>> {
        let Some(owner) = &state.owner else {
            return Ok(None);
        };
        let value: OwnerValue = serde_json::from_slice(owner.value()).map_err(|e| {
            LeaseError::store(
                &self.name,
                format!(
                    "key {} is not a hygiene lease ({e}): another program writes under this prefix; give hygiene its own",
                    self.keys.owner(pool)
                ),
                None,
            )
        })?;
        let (version, renewed_at) = match &state.alive {
            Some(a) => (
                a.mod_revision().to_string(),
                serde_json::from_slice::<AliveValue>(a.value())
                    .map(|v| v.renewed_at)
                    .unwrap_or_default(),
            ),
            None => (
                format!("expired@{}", owner.mod_revision()),
                "never since its etcd lease expired".to_owned(),
            ),
        };
        Ok(Some(Holder {
            pool: pool.to_owned(),
            owner: value.owner,
            fence: Fence(u64::try_from(owner.mod_revision()).unwrap_or(0)),
            hosts: state.hosts.clone(),
            duration: Duration::from_secs(value.duration_secs),
            version,
            renewed_at,
        }))
    }

    /// `Held` naming host `host`, held by `other`.
    async fn host_held(&self, host: &str, other: &str) -> LeaseError {
        let holder = match self.read(other, &[]).await {
            Ok((state, _)) => self.holder_of(other, &state).ok().flatten(),
            Err(e) => return e,
        };
        let holder = holder.unwrap_or_else(|| Holder {
            pool: other.to_owned(),
            owner: Owner {
                run_id: "(none: the pool has no holder)".into(),
                who: "unknown".into(),
                started_at: String::new(),
            },
            fence: Fence(0),
            hosts: vec![host.to_owned()],
            duration: Duration::ZERO,
            version: String::new(),
            renewed_at: String::new(),
        });
        LeaseError::Held {
            store: self.name.clone(),
            key: format!("host {host}"),
            pool: other.to_owned(),
            holder: Box::new(holder),
            retry_in: None,
        }
    }

    /// For hosts read as `kvs`: the compares and puts that take them for
    /// `pool`, or `Held` for the first another pool holds.
    async fn take_ops(
        &self,
        pool: &str,
        hosts: &[String],
        kvs: &[Option<KeyValue>],
        cmps: &mut Vec<Compare>,
        ops: &mut Vec<TxnOp>,
    ) -> LeaseResult<()> {
        let mut seen = std::collections::HashSet::new();
        for (h, kv) in hosts.iter().zip(kvs) {
            if !seen.insert(h) {
                continue;
            }
            let key = self.keys.host(h);
            match kv {
                None => {
                    cmps.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                    ops.push(TxnOp::put(key, pool, None));
                    ops.push(TxnOp::put(self.keys.pool_host(pool, h), "", None));
                }
                Some(kv) if kv.value() == pool.as_bytes() => {
                    // Already this pool's (this holder's, or inherited from
                    // the holder it took over): unchanged until the txn.
                    cmps.push(Compare::mod_revision(
                        key,
                        CompareOp::Equal,
                        kv.mod_revision(),
                    ));
                    ops.push(TxnOp::put(self.keys.pool_host(pool, h), "", None));
                }
                Some(kv) => {
                    let other = String::from_utf8_lossy(kv.value()).into_owned();
                    return Err(self.host_held(h, &other).await);
                }
            }
        }
        Ok(())
    }

    /// After a refused fenced transaction: `Lost` when `grant` is no
    /// longer current, else `Ok` (another key changed: read again).
    async fn check_current(&self, grant: &Grant) -> LeaseResult<()> {
        let (state, _) = self.read(&grant.pool, &[]).await?;
        match &state.owner {
            None => Err(self.lost(grant, "released (no holder in etcd)")),
            Some(o) if u64::try_from(o.mod_revision()).ok() != Some(grant.fence.0) => {
                let now = self
                    .holder_of(&grant.pool, &state)?
                    .map(|h| format!("taken over by {h}"))
                    .unwrap_or_else(|| "taken over".into());
                Err(self.lost(grant, now))
            }
            Some(_) => Ok(()),
        }
    }

    fn fenced(&self, grant: &Grant) -> Compare {
        Compare::mod_revision(
            self.keys.owner(&grant.pool),
            CompareOp::Equal,
            i64::try_from(grant.fence.0).unwrap_or(i64::MAX),
        )
    }

    fn alive_value(&self) -> String {
        serde_json::to_string(&AliveValue {
            renewed_at: jiff::Timestamp::now().to_string(),
        })
        .unwrap_or_default()
    }

    async fn grant_lease(&self, what: &str) -> LeaseResult<(i64, Duration)> {
        let secs = i64::try_from(self.duration.as_secs()).unwrap_or(i64::MAX);
        let g = self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(|e| self.err(what, e))?;
        // etcd raises a TTL below its minimum: the grant says what it gave.
        let ttl = u64::try_from(g.ttl())
            .unwrap_or(0)
            .max(self.duration.as_secs());
        Ok((g.id(), Duration::from_secs(ttl)))
    }

    /// Revokes an etcd lease no key should stay attached to; a failure
    /// only lets it expire on its own.
    async fn revoke(&self, lease: i64) {
        if let Err(e) = self.client.clone().lease_revoke(lease).await {
            debug!(lease, error = %e, "etcd lease not revoked; it expires on its own");
        }
    }
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    )
}

fn revision(resp: &TxnResponse) -> u64 {
    resp.header()
        .map(|h| u64::try_from(h.revision()).unwrap_or(0))
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl LeaseStore for EtcdLeaseStore {
    fn name(&self) -> String {
        self.name.clone()
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
        let what = format!("acquire pool {pool}");
        let (owner_key, alive_key) = (self.keys.owner(pool), self.keys.alive(pool));
        for _ in 0..RACES {
            let (state, host_kvs) = self.read(pool, hosts).await?;
            let mut cmps = Vec::new();
            if let Some(o) = &state.owner {
                // A holder, alive or expired in etcd: taken over only once
                // this client saw it renew nothing for a whole lease on its
                // own clock (the DynamoDB lock client's rule, and the
                // trait's contract). etcd's expiry of the `alive` key is no
                // renewal: the version last seen alive stays the one
                // watched.
                let holder = self
                    .holder_of(pool, &state)?
                    .ok_or_else(|| LeaseError::store(&self.name, "holder vanished", None))?;
                let version = match &state.alive {
                    Some(_) => {
                        self.last_alive_put(&owner_key, &holder.version);
                        holder.version.clone()
                    }
                    None => self
                        .last_alive_get(&owner_key)
                        .unwrap_or_else(|| holder.version.clone()),
                };
                let whole = holder.duration.max(self.duration);
                if let Some(left) = self.sightings.observe(&owner_key, &version, whole) {
                    return Err(LeaseError::Held {
                        store: self.name.clone(),
                        key: format!("pool {pool}"),
                        pool: pool.to_owned(),
                        holder: Box::new(holder),
                        retry_in: Some(left),
                    });
                }
                cmps.push(Compare::mod_revision(
                    owner_key.clone(),
                    CompareOp::Equal,
                    o.mod_revision(),
                ));
            }
            match (&state.owner, &state.alive) {
                (Some(_), Some(a)) => {
                    cmps.push(Compare::mod_revision(
                        alive_key.clone(),
                        CompareOp::Equal,
                        a.mod_revision(),
                    ));
                }
                (Some(_), None) => {
                    // etcd expired the holder's lease (no keep-alive for a
                    // whole TTL by its leader's clock): still expired.
                    cmps.push(Compare::create_revision(
                        alive_key.clone(),
                        CompareOp::Equal,
                        0,
                    ));
                }
                (None, alive) => {
                    cmps.push(Compare::create_revision(
                        owner_key.clone(),
                        CompareOp::Equal,
                        0,
                    ));
                    cmps.push(match alive {
                        Some(a) => Compare::mod_revision(
                            alive_key.clone(),
                            CompareOp::Equal,
                            a.mod_revision(),
                        ),
                        None => Compare::create_revision(alive_key.clone(), CompareOp::Equal, 0),
                    });
                }
            }
            let mut ops = Vec::new();
            self.take_ops(pool, hosts, &host_kvs, &mut cmps, &mut ops)
                .await?;
            let (lease, duration) = self.grant_lease(&what).await?;
            let owner_value = serde_json::to_string(&OwnerValue {
                owner: owner.clone(),
                duration_secs: duration.as_secs(),
            })
            .map_err(|e| LeaseError::store(&self.name, e.to_string(), None))?;
            ops.push(TxnOp::put(owner_key.clone(), owner_value, None));
            ops.push(TxnOp::put(
                alive_key.clone(),
                self.alive_value(),
                Some(PutOptions::new().with_lease(lease)),
            ));
            let resp = match self.txn(&what, Txn::new().when(cmps).and_then(ops)).await {
                Ok(r) => r,
                Err(e) => {
                    self.revoke(lease).await;
                    return Err(e);
                }
            };
            if !resp.succeeded() {
                // Another client changed a key since the read: read again.
                self.revoke(lease).await;
                continue;
            }
            let fence = revision(&resp);
            self.sightings.forget(&owner_key);
            self.last_alive_forget(&owner_key);
            if let Some(old) = state
                .alive
                .as_ref()
                .map(KeyValue::lease)
                .filter(|l| *l != 0)
            {
                // The holder taken over: its keep-alives fail from now on.
                self.revoke(old).await;
            }
            self.lock()
                .insert((pool.to_owned(), fence), Held { lease, seq: 0 });
            debug!(pool, fence, lease, "lease acquired");
            return Ok(Grant {
                pool: pool.to_owned(),
                owner: owner.clone(),
                fence: Fence(fence),
                duration,
            });
        }
        Err(LeaseError::unavailable(
            &self.name,
            format!("{what}: its keys kept changing under {RACES} tries"),
            None,
        ))
    }

    async fn take_hosts(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
        let what = format!("take hosts for pool {}", grant.pool);
        for _ in 0..RACES {
            let (_, host_kvs) = self.read(&grant.pool, hosts).await?;
            let mut cmps = vec![self.fenced(grant)];
            let mut ops = Vec::new();
            self.take_ops(&grant.pool, hosts, &host_kvs, &mut cmps, &mut ops)
                .await?;
            if self
                .txn(&what, Txn::new().when(cmps).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(());
            }
            self.check_current(grant).await?;
        }
        Err(LeaseError::unavailable(
            &self.name,
            format!("{what}: its keys kept changing under {RACES} tries"),
            None,
        ))
    }

    async fn give_back(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
        let what = format!("give back hosts of pool {}", grant.pool);
        for _ in 0..RACES {
            let (_, host_kvs) = self.read(&grant.pool, hosts).await?;
            let mut cmps = vec![self.fenced(grant)];
            let mut ops = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (h, kv) in hosts.iter().zip(&host_kvs) {
                // Hosts this pool does not hold are left alone.
                let Some(kv) = kv.as_ref().filter(|kv| kv.value() == grant.pool.as_bytes()) else {
                    continue;
                };
                if !seen.insert(h) {
                    continue;
                }
                let key = self.keys.host(h);
                cmps.push(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                ));
                ops.push(TxnOp::delete(key, None));
                ops.push(TxnOp::delete(self.keys.pool_host(&grant.pool, h), None));
            }
            if self
                .txn(&what, Txn::new().when(cmps).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(());
            }
            self.check_current(grant).await?;
        }
        Err(LeaseError::unavailable(
            &self.name,
            format!("{what}: its keys kept changing under {RACES} tries"),
            None,
        ))
    }

    async fn renew(&self, grant: &Grant) -> LeaseResult<()> {
        let what = format!("renew pool {}", grant.pool);
        let lease = match self.held_of(grant) {
            Some(h) => h.lease,
            None => {
                // A grant this client did not take (another process of
                // the same machine): its lease is on the `alive` key.
                let (state, _) = self.read(&grant.pool, &[]).await?;
                state.alive.map_or(0, |a| a.lease())
            }
        };
        let kept = if lease == 0 {
            false
        } else {
            match self.client.clone().lease_keep_alive(lease).await {
                Ok(_) => true,
                Err(e) if lease_not_found(&e) => false,
                Err(e) => return Err(self.err(&what, e)),
            }
        };
        let alive = self.keys.alive(&grant.pool);
        if kept {
            let resp = self
                .txn(
                    &what,
                    Txn::new()
                        .when(vec![self.fenced(grant)])
                        .and_then(vec![TxnOp::put(
                            alive.clone(),
                            self.alive_value(),
                            Some(PutOptions::new().with_lease(lease)),
                        )]),
                )
                .await;
            match resp {
                Ok(r) if r.succeeded() => return Ok(()),
                Ok(_) => {
                    self.check_current(grant).await?;
                    return Err(LeaseError::store(
                        &self.name,
                        format!("{what}: refused although the fence is current"),
                        None,
                    ));
                }
                // The lease expired between the keep-alive and the put.
                Err(LeaseError::Store { ref message, .. })
                    if message.contains("lease not found") => {}
                Err(e) => return Err(e),
            }
        }
        // etcd expired this holder's lease (no keep-alive reached it for a
        // whole TTL) but nobody took the pool over: the fence is still
        // current, so the holder may go on with a new etcd lease — in one
        // transaction conditional on both, racing a contender's takeover
        // fairly.
        let (new, _) = self.grant_lease(&what).await?;
        let resp = self
            .txn(
                &what,
                Txn::new()
                    .when(vec![
                        self.fenced(grant),
                        Compare::create_revision(alive.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then(vec![TxnOp::put(
                        alive,
                        self.alive_value(),
                        Some(PutOptions::new().with_lease(new)),
                    )]),
            )
            .await;
        match resp {
            Ok(r) if r.succeeded() => {
                let key = (grant.pool.clone(), grant.fence.0);
                let mut held = self.lock();
                let entry = held.entry(key).or_insert(Held { lease: new, seq: 0 });
                entry.lease = new;
                debug!(pool = %grant.pool, lease = new, "lease renewed on a new etcd lease after expiry");
                Ok(())
            }
            Ok(_) => {
                self.revoke(new).await;
                self.check_current(grant).await?;
                Err(LeaseError::store(
                    &self.name,
                    format!("{what}: another etcd lease holds the pool's alive key"),
                    None,
                ))
            }
            Err(e) => {
                self.revoke(new).await;
                Err(e)
            }
        }
    }

    async fn release(&self, grant: &Grant) -> LeaseResult<()> {
        let what = format!("release pool {}", grant.pool);
        for _ in 0..RACES {
            let (state, _) = self.read(&grant.pool, &[]).await?;
            let (_, host_kvs) = self.read(&grant.pool, &state.hosts).await?;
            let prefix = self.keys.pool_prefix(&grant.pool);
            let mut cmps = vec![self.fenced(grant)];
            let mut ops = vec![TxnOp::delete(
                prefix.clone(),
                Some(etcd_client::DeleteOptions::new().with_range(prefix_end(&prefix))),
            )];
            for (h, kv) in state.hosts.iter().zip(&host_kvs) {
                if let Some(kv) = kv.as_ref().filter(|kv| kv.value() == grant.pool.as_bytes()) {
                    let key = self.keys.host(h);
                    cmps.push(Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    ));
                    ops.push(TxnOp::delete(key, None));
                }
            }
            if self
                .txn(&what, Txn::new().when(cmps).and_then(ops))
                .await?
                .succeeded()
            {
                if let Some(lease) = state
                    .alive
                    .as_ref()
                    .map(KeyValue::lease)
                    .filter(|l| *l != 0)
                {
                    self.revoke(lease).await;
                }
                self.lock().remove(&(grant.pool.clone(), grant.fence.0));
                return Ok(());
            }
            self.check_current(grant).await?;
        }
        Err(LeaseError::unavailable(
            &self.name,
            format!("{what}: its keys kept changing under {RACES} tries"),
            None,
        ))
    }

    async fn holder(&self, pool: &str) -> LeaseResult<Option<Holder>> {
        let (state, _) = self.read(pool, &[]).await?;
        self.holder_of(pool, &state)
    }

    async fn append(&self, grant: &Grant, record: &Record) -> LeaseResult<()> {
        let what = format!("append to the journal of pool {}", grant.pool);
        let value = serde_json::to_vec(record)
            .map_err(|e| LeaseError::store(&self.name, format!("{what}: {e}"), None))?;
        let mut seq = match self.held_of(grant) {
            Some(h) => h.seq,
            None => self.next_seq(grant).await?,
        };
        for _ in 0..RACES {
            let key = self.keys.record(&grant.pool, grant.fence.0, seq);
            let resp = self
                .txn(
                    &what,
                    Txn::new()
                        .when(vec![
                            self.fenced(grant),
                            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                        ])
                        .and_then(vec![TxnOp::put(key.clone(), value.clone(), None)])
                        .or_else(vec![TxnOp::get(key, None)]),
                )
                .await?;
            if !resp.succeeded() {
                self.check_current(grant).await?;
                // The key is taken: by this very record when an earlier try
                // applied but its answer was lost (done), else by another
                // record (take the next number).
                let same = resp.op_responses().into_iter().any(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().is_some_and(|kv| kv.value() == value),
                    _ => false,
                });
                seq += 1;
                if !same {
                    continue;
                }
            } else {
                seq += 1;
            }
            let key = (grant.pool.clone(), grant.fence.0);
            let mut held = self.lock();
            let entry = held.entry(key).or_insert(Held { lease: 0, seq });
            entry.seq = seq;
            return Ok(());
        }
        Err(LeaseError::unavailable(
            &self.name,
            format!("{what}: its keys kept changing under {RACES} tries"),
            None,
        ))
    }

    async fn records(&self, pool: &str) -> LeaseResult<Vec<Record>> {
        let prefix = self.keys.journal(pool);
        let end = prefix_end(&prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut out = Vec::new();
        loop {
            let resp = self
                .client
                .clone()
                .get(
                    from.clone(),
                    Some(GetOptions::new().with_range(end.clone()).with_limit(PAGE)),
                )
                .await
                .map_err(|e| self.err(&format!("read the journal of pool {pool}"), e))?;
            for kv in resp.kvs() {
                let record: Record = serde_json::from_slice(kv.value()).map_err(|e| {
                    LeaseError::store(
                        &self.name,
                        format!(
                            "journal record {} cannot be read ({e}): it was not written by this version of hygiene",
                            String::from_utf8_lossy(kv.key())
                        ),
                        None,
                    )
                })?;
                out.push(record);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }
}

impl EtcdLeaseStore {
    /// The next sequence number under `grant`'s fence, read from etcd (a
    /// grant this client did not take).
    async fn next_seq(&self, grant: &Grant) -> LeaseResult<u64> {
        let prefix = self.keys.journal_fence(&grant.pool, grant.fence.0);
        let resp = self
            .client
            .clone()
            .get(
                prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(&prefix))
                        .with_keys_only()
                        .with_sort(
                            etcd_client::SortTarget::Key,
                            etcd_client::SortOrder::Descend,
                        )
                        .with_limit(1),
                ),
            )
            .await
            .map_err(|e| self.err("read the journal's last record", e))?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| {
                String::from_utf8_lossy(kv.key())
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
            })
            .map_or(0, |s| s + 1))
    }
}
