//! Leases: who may change a pool now, shared between machines, with a
//! fencing token, and the run's journal kept in the same store.
//!
//! A run holds the lease of its **pool** for as long as it runs, and the
//! lease of every **host** it has out of rotation (a host may serve several
//! pools: two pools that share a host never have it out at once). Every
//! acquisition gets a [`Fence`] greater than every fence given before for
//! that pool; the store refuses a renewal or a journal record from a
//! holder whose fence is no longer the current one (etcd's documentation:
//! a lease alone does not give mutual exclusion, a fencing token does).
//!
//! - [`LeaseStore`]: the trait every store implements (its `# Contract`).
//! - [`FileLeaseStore`]: the one-machine store (lock files in a directory;
//!   the kernel frees a lock when its process dies). Without a configured
//!   shared store, hygiene keeps using the journal's own file lock
//!   ([`FileJournal`](crate::journal::FileJournal)), which stays the
//!   default.
//! - [`MemoryLeaseStore`]: a store in memory whose leases expire like a
//!   shared store's (record versions, takeover after a whole lease), with
//!   fault injection, for tests.
//! - [`StoreJournal`]: a [`Journal`](crate::journal::Journal) written into a
//!   store under the holder's fence.
//! - [`Heartbeat`]: renews a lease in the background and says how much of
//!   it is left, or that it is lost.
//! - Feature `conformance`: [`conformance`] checks every store runs.
//!
//! # Takeover without trusting clocks
//!
//! Where a holder can die without the store noticing (DynamoDB), a lease
//! is taken over the way the DynamoDB lock client does it: the store keeps
//! a record version that changes with every renewal; a contender that sees
//! the **same version unchanged for a whole lease duration**, measured on
//! its own monotonic clock from its first sighting, may take the lease over
//! with a write conditional on that version. No clock of another machine
//! is read. [`Sightings`] keeps those first sightings for a store.

mod file;
mod heartbeat;
mod journal;
mod memory;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{BoxError, Error};
use crate::journal::Record;

pub use file::FileLeaseStore;
pub use heartbeat::{Heartbeat, LeaseState};
pub use journal::StoreJournal;
pub use memory::MemoryLeaseStore;

/// A fencing token: greater for every acquisition of a pool's lease than
/// for any acquisition before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fence(pub u64);

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fence {}", self.0)
    }
}

/// Who asks for a lease: the run, and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The run's id (the journal header's).
    pub run_id: String,
    /// `user@host`, or the CI job (`github: owner/repo run 123`).
    pub who: String,
    /// When the run started (RFC 3339, the holder's clock: shown, never
    /// compared).
    pub started_at: String,
}

impl Owner {
    /// An owner for run `run_id` started now on this machine: `who` is the
    /// CI job when the environment names one (GitHub Actions, GitLab CI,
    /// Jenkins, Buildkite), else `$USER@hostname`.
    pub fn here(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            who: who_here(),
            started_at: jiff::Timestamp::now().to_string(),
        }
    }
}

fn who_here() -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(repo), Some(run)) = (env("GITHUB_REPOSITORY"), env("GITHUB_RUN_ID")) {
        return format!("github: {repo} run {run}");
    }
    if let Some(url) = env("CI_JOB_URL") {
        return format!("gitlab: {url}");
    }
    if let Some(url) = env("BUILD_URL") {
        return format!("jenkins: {url}");
    }
    if let Some(url) = env("BUILDKITE_BUILD_URL") {
        return format!("buildkite: {url}");
    }
    let user = env("USER")
        .or_else(|| env("LOGNAME"))
        .unwrap_or_else(|| format!("uid {}", rustix::process::geteuid().as_raw()));
    format!("{user}@{}", crate::journal::host())
}

/// A lease held: what [`LeaseStore::acquire`] returns, and what every
/// later call of the holder presents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The pool.
    pub pool: String,
    /// Who holds it.
    pub owner: Owner,
    /// Its fencing token.
    pub fence: Fence,
    /// How long it lasts after each renewal, as written in the store (the
    /// holder's setting: a contender waits this long).
    #[serde(with = "crate::config::duration_text")]
    pub duration: Duration,
}

/// What a store says about a pool's lease: the holder, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The pool.
    pub pool: String,
    /// Who holds it.
    pub owner: Owner,
    /// Its fencing token.
    pub fence: Fence,
    /// The hosts it has out (taken with the pool or with
    /// [`LeaseStore::take_hosts`], not given back yet).
    pub hosts: Vec<String>,
    /// Its lease duration.
    #[serde(with = "crate::config::duration_text")]
    pub duration: Duration,
    /// The record's version: changes with every renewal. Opaque.
    pub version: String,
    /// When it last renewed, by the holder's clock (RFC 3339; shown to
    /// operators, never used to decide anything).
    pub renewed_at: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "run {} ({}, started {}, {}, last renewed {} by its clock",
            self.owner.run_id, self.owner.who, self.owner.started_at, self.fence, self.renewed_at
        )?;
        if !self.hosts.is_empty() {
            write!(f, ", hosts out: {}", self.hosts.join(", "))?;
        }
        write!(f, ")")
    }
}

/// What a store can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCapabilities {
    /// Leases expire unless renewed: a holder that died is taken over after
    /// a whole lease with no renewal seen. `false` for the file lock, which
    /// the kernel frees when its process dies (and which never expires
    /// while it lives).
    pub expires: bool,
    /// Reachable from other machines (a journal there can be resumed from
    /// anywhere with the same configuration).
    pub shared: bool,
}

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// Someone else holds what was asked for (the pool, or a host: `key`
    /// names it). Nothing was taken: a request is granted as a whole or
    /// not at all.
    #[error("{key} in {store} is held by {holder} for pool {pool}{}", retry_in.map(|d| format!("; it can be taken over if not renewed within {}", crate::duration_text::format(d))).unwrap_or_default())]
    Held {
        /// The store.
        store: String,
        /// What conflicts: `pool <name>` or `host <name>`.
        key: String,
        /// The pool holding it.
        pool: String,
        /// Its holder, as the store shows it.
        holder: Box<Holder>,
        /// For a store whose leases expire: the longest this caller must
        /// still see the holder's record unchanged before a takeover.
        retry_in: Option<Duration>,
    },

    /// The caller's lease is no longer current: another holder took it
    /// over (a greater fence), or it was released. The call was refused
    /// and changed nothing; the caller must touch nothing more.
    #[error("the lease of pool {pool} ({fence}) in {store} is lost: {message}")]
    Lost {
        /// The store.
        store: String,
        /// The pool.
        pool: String,
        /// The fence the caller presented.
        fence: Fence,
        /// What the store shows instead (the new holder, if any).
        message: String,
    },

    /// The store could not be reached or did not answer in time
    /// (retryable). Whether a write took effect is unknown.
    #[error("lease store {store} is unavailable: {message}")]
    Unavailable {
        /// The store.
        store: String,
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The store's configuration is wrong (a missing table, a bad name);
    /// the message says what to change.
    #[error("lease store {store}: {message}")]
    Config {
        /// The store.
        store: String,
        /// What is wrong and what to do.
        message: String,
    },

    /// The store answered something this version does not understand, or
    /// refused for a reason of its own (permissions).
    #[error("lease store {store}: {message}")]
    Store {
        /// The store.
        store: String,
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl LeaseError {
    /// Whether another try may succeed (the store was unavailable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// Shorthand for [`LeaseError::Unavailable`] with a source.
    pub fn unavailable(
        store: impl Into<String>,
        message: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Self::Unavailable {
            store: store.into(),
            message: message.into(),
            source,
        }
    }

    /// Shorthand for [`LeaseError::Store`] with a source.
    pub fn store(
        store: impl Into<String>,
        message: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Self::Store {
            store: store.into(),
            message: message.into(),
            source,
        }
    }
}

impl From<LeaseError> for Error {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Held { ref store, .. } => Error::journal(
                store.clone(),
                format!("{e}: wait for that run to end, or stop it (its lease is then taken over after a whole lease duration), then resume or restore"),
            ),
            LeaseError::Lost { ref store, .. } => Error::journal(
                store.clone(),
                format!("{e}; the new holder resumes or restores the run"),
            ),
            LeaseError::Unavailable {
                store,
                message,
                source,
            } => Error::Unavailable {
                location: format!("lease store {store}"),
                message,
                source,
            },
            LeaseError::Config { store, message } => Error::InvalidConfig {
                field: "lease",
                message: format!("{store}: {message}"),
            },
            LeaseError::Store {
                store,
                message,
                source,
            } => Error::Rejected {
                location: format!("lease store {store}"),
                message,
                source,
            },
        }
    }
}

/// `Result` with [`LeaseError`].
pub type LeaseResult<T> = std::result::Result<T, LeaseError>;

/// Where leases and shared journals are kept: DynamoDB, etcd, a directory
/// on one machine.
///
/// # Contract
///
/// Keys: a pool's lease is keyed by the pool's name, a host's by the
/// host's name (what the engine uses: a target's instance id, else its
/// address, else its id). Names are given as they are; a store that cannot
/// hold a name refuses it with [`LeaseError::Config`].
///
/// - **Exclusive.** At most one grant of a pool is current at any time. A
///   host is held by at most one pool at a time.
/// - **As a whole.** `acquire` and `take_hosts` take the pool (or check it
///   is still the caller's) and every host asked for in one transaction:
///   all of it or nothing. A refusal is [`LeaseError::Held`] naming the
///   first conflicting key and its holder.
/// - **Fenced.** Every grant of a pool gets a [`Fence`] greater than every
///   fence given before for that pool, across releases and takeovers.
///   `renew`, `take_hosts`, `give_back`, `release` and `append` succeed only
///   for the current fence; otherwise [`LeaseError::Lost`], changing
///   nothing.
/// - **Takeover.** Where leases expire
///   ([`LeaseCapabilities::expires`]), `acquire` of a held pool returns
///   `Held` with `retry_in`, and grants the pool (a new fence; the hosts it
///   had out stay held, now by the new grant: it is answerable for them)
///   only to a caller that has seen the holder's record version unchanged
///   for the holder's whole lease duration on its own monotonic clock
///   ([`Sightings`]). Where they do not, the pool is granted once its
///   holder is gone (its process died).
/// - **Hosts stay held by the pool** until given back or released: a run
///   that died leaves them held, and the run that takes its pool over
///   inherits them (they may still be out of rotation).
/// - **Release** gives back the pool and every host it holds; releasing a
///   lease that is no longer current is `Lost` and changes nothing.
/// - **Journal.** `append` adds a record to the pool's journal only while
///   the fence is current (a conditional write), durably before it
///   returns; `records` returns every record appended, in order, to
///   anybody (no lease needed).
/// - **Unavailable** means the outcome of a write is unknown: a caller
///   retries, and a write that did apply must not be applied twice
///   (renewals and journal records are idempotent for the same grant in
///   the store's implementation, or the caller reads back).
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + fmt::Debug + 'static {
    /// The store, for messages (`dynamodb table hygiene-leases`).
    fn name(&self) -> String;

    /// What it can do.
    fn capabilities(&self) -> LeaseCapabilities;

    /// The lease duration it grants (the holder renews well within it).
    fn duration(&self) -> Duration;

    /// Takes the lease of `pool` for `owner`, and the leases of `hosts`,
    /// in one transaction.
    ///
    /// # Errors
    /// [`LeaseError::Held`] (the pool or a host; nothing taken);
    /// [`LeaseError::Unavailable`]; [`LeaseError::Config`].
    async fn acquire(&self, pool: &str, owner: &Owner, hosts: &[String]) -> LeaseResult<Grant>;

    /// Takes `hosts` for the pool of `grant`, as a whole, checking in the
    /// same transaction that `grant` is still current. Hosts already held
    /// by this pool are kept.
    ///
    /// # Errors
    /// [`LeaseError::Held`] naming a host another pool holds (nothing
    /// taken); [`LeaseError::Lost`]; [`LeaseError::Unavailable`].
    async fn take_hosts(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()>;

    /// Gives back `hosts` (back in service) while keeping the pool.
    /// Hosts this pool does not hold are ignored.
    ///
    /// # Errors
    /// [`LeaseError::Lost`]; [`LeaseError::Unavailable`].
    async fn give_back(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()>;

    /// Renews the lease: it lasts [`Grant::duration`] again, counted from
    /// when this call was sent (a caller counts from there: never later).
    ///
    /// # Errors
    /// [`LeaseError::Lost`] (taken over or released);
    /// [`LeaseError::Unavailable`].
    async fn renew(&self, grant: &Grant) -> LeaseResult<()>;

    /// Gives back the pool and every host it holds.
    ///
    /// # Errors
    /// [`LeaseError::Lost`]; [`LeaseError::Unavailable`].
    async fn release(&self, grant: &Grant) -> LeaseResult<()>;

    /// The current holder of `pool`'s lease, `None` when it is free (for a
    /// store whose leases expire: held until taken over, however old).
    ///
    /// # Errors
    /// [`LeaseError::Unavailable`]; [`LeaseError::Store`].
    async fn holder(&self, pool: &str) -> LeaseResult<Option<Holder>>;

    /// Appends `record` to the pool's journal, only while `grant` is
    /// current; durable when it returns.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] (nothing written); [`LeaseError::Unavailable`].
    async fn append(&self, grant: &Grant, record: &Record) -> LeaseResult<()>;

    /// Every record of the pool's journal, in order.
    ///
    /// # Errors
    /// [`LeaseError::Unavailable`]; [`LeaseError::Store`] (a damaged
    /// record).
    async fn records(&self, pool: &str) -> LeaseResult<Vec<Record>>;
}

macro_rules! forward {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl<T: LeaseStore + ?Sized> LeaseStore for $ty {
            fn name(&self) -> String {
                (**self).name()
            }
            fn capabilities(&self) -> LeaseCapabilities {
                (**self).capabilities()
            }
            fn duration(&self) -> Duration {
                (**self).duration()
            }
            async fn acquire(
                &self,
                pool: &str,
                owner: &Owner,
                hosts: &[String],
            ) -> LeaseResult<Grant> {
                (**self).acquire(pool, owner, hosts).await
            }
            async fn take_hosts(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
                (**self).take_hosts(grant, hosts).await
            }
            async fn give_back(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
                (**self).give_back(grant, hosts).await
            }
            async fn renew(&self, grant: &Grant) -> LeaseResult<()> {
                (**self).renew(grant).await
            }
            async fn release(&self, grant: &Grant) -> LeaseResult<()> {
                (**self).release(grant).await
            }
            async fn holder(&self, pool: &str) -> LeaseResult<Option<Holder>> {
                (**self).holder(pool).await
            }
            async fn append(&self, grant: &Grant, record: &Record) -> LeaseResult<()> {
                (**self).append(grant, record).await
            }
            async fn records(&self, pool: &str) -> LeaseResult<Vec<Record>> {
                (**self).records(pool).await
            }
        }
    };
}
forward!(Arc<T>);
forward!(Box<T>);

/// A lease held in a store: what a [`Rollout`](crate::Rollout) is given
/// ([`Rollout::with_lease`](crate::Rollout::with_lease)).
#[derive(Debug, Clone)]
pub struct HeldLease {
    /// The store.
    pub store: Arc<dyn LeaseStore>,
    /// The grant.
    pub grant: Grant,
}

/// Acquires `pool`, waiting while it is held, up to `wait` in all: the
/// first refusal starts the sightings of the holder's record, and a holder
/// that renews keeps it. `wait = 0` tries once.
///
/// # Errors
/// The last [`LeaseError::Held`] when `wait` passed; any other error at
/// once.
pub async fn acquire_waiting(
    store: &dyn LeaseStore,
    pool: &str,
    owner: &Owner,
    hosts: &[String],
    wait: Duration,
) -> LeaseResult<Grant> {
    let deadline = Instant::now() + wait;
    loop {
        match store.acquire(pool, owner, hosts).await {
            Err(LeaseError::Held { retry_in, .. }) if Instant::now() < deadline => {
                // Look again well within the holder's lease, so a renewal
                // is seen and a takeover is not later than it must be.
                let step = retry_in
                    .unwrap_or(store.duration())
                    .min(store.duration() / 4)
                    .max(Duration::from_millis(10));
                tokio::time::sleep(step.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
            other => return other,
        }
    }
}

/// The host key the engine uses for a target: its instance id, else its
/// address, else its id.
pub fn host_key(target: &crate::target::Target) -> String {
    target
        .instance_id
        .clone()
        .or_else(|| target.address.clone())
        .unwrap_or_else(|| target.id.to_string())
}

/// First sightings of holders' record versions, on this process's
/// monotonic clock: the DynamoDB lock client's takeover rule for stores
/// whose leases expire. Clones share the sightings.
#[derive(Debug, Clone, Default)]
pub struct Sightings {
    seen: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Sightings {
    /// No sightings yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `key`'s holder record has version `version` now.
    /// Returns `None` when that same version was first seen a whole
    /// `duration` ago or more (it may be taken over, conditional on that
    /// version), else how much longer it must stay unchanged.
    pub fn observe(&self, key: &str, version: &str, duration: Duration) -> Option<Duration> {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = seen
            .entry(key.to_owned())
            .or_insert_with(|| (version.to_owned(), now));
        if entry.0 != version {
            *entry = (version.to_owned(), now);
        }
        let waited = now.saturating_duration_since(entry.1);
        (waited < duration).then(|| duration - waited)
    }

    /// Forgets `key` (it was taken, or is free).
    pub fn forget(&self, key: &str) {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}
