//! A shared lease for the pool (`[lease.etcd]` or `[lease.dynamodb]`):
//! `run`, `resume` and `restore` take it before they change anything and
//! keep the run's journal in the same store, under the lease's fence, so
//! `status`, `resume` and `restore` work from any machine with the same
//! configuration. Without a `[lease]` section, the journal's file lock on
//! this host (the default, unchanged).
//!
//! Decisions: a fresh `run` tries once and refuses a pool another run
//! holds, naming it (exit 5); `resume` and `restore` wait for the lease up
//! to one and a half lease durations, which lets them take over from a
//! holder that died (a takeover needs a whole lease seen unrenewed). The
//! lease is released when the command ends (also when the journal stays
//! unfinished: the journal, not the lease, keeps a new run out).

use std::sync::Arc;
use std::time::Duration;

use hygiene_core::duration_text;
use hygiene_core::lease::{HeldLease, LeaseError, LeaseStore, Owner};
use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Loaded};
use crate::Failure;

/// `[lease.dynamodb]`
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DynamoSection {
    /// The table (key `pk` string + `sk` number; `hygiene validate` checks
    /// it is there and writable).
    pub(crate) table: Spanned<String>,
    /// How long a lease lasts without renewal (default 60 s).
    #[serde(default, with = "duration_text::option")]
    pub(crate) lease_duration: Option<Duration>,
    /// AWS region and profile (default: the SDK's chain).
    pub(crate) region: Option<String>,
    pub(crate) profile: Option<String>,
    /// Another endpoint (a test server such as moto).
    pub(crate) endpoint_url: Option<String>,
}

/// The lease duration when the section sets none.
pub(crate) const DEFAULT_DURATION: Duration = Duration::from_secs(60);

fn dynamodb(loaded: &Loaded) -> Option<&Spanned<DynamoSection>> {
    loaded.file.lease.as_ref()?.get_ref().dynamodb.as_ref()
}

fn both(loaded: &Loaded) -> Result<(), ConfigError> {
    if let (Some(_), Some(d)) = (crate::lease_etcd::section(loaded), dynamodb(loaded)) {
        return Err(loaded.error_at(
            Some(d.span()),
            "lease.dynamodb",
            "a pool's lease is kept in one store: keep [lease.etcd] or [lease.dynamodb], not both",
        ));
    }
    Ok(())
}

/// `hygiene validate --offline`: the sections' fields, connecting nowhere.
pub(crate) fn check_offline(loaded: &Loaded) -> Result<(), Failure> {
    both(loaded)?;
    crate::lease_etcd::check_offline(loaded)?;
    if let Some(d) = dynamodb(loaded) {
        check_dynamodb(loaded, d)?;
    }
    Ok(())
}

fn check_dynamodb(loaded: &Loaded, d: &Spanned<DynamoSection>) -> Result<(), Failure> {
    let s = d.get_ref();
    if s.table.get_ref().is_empty() {
        return Err(loaded
            .error_at(
                Some(s.table.span()),
                "lease.dynamodb.table",
                "the table has no name",
            )
            .into());
    }
    if let Some(u) = &s.endpoint_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(loaded
                .error_at(
                    Some(d.span()),
                    "lease.dynamodb.endpoint_url",
                    format!("{u:?} is not an http:// or https:// URL"),
                )
                .into());
        }
    }
    if s.lease_duration.is_some_and(|l| l < Duration::from_secs(5)) {
        return Err(loaded
            .error_at(
                Some(d.span()),
                "lease.dynamodb.lease_duration",
                "a lease shorter than 5 s leaves no time for a step: give at least 5s (60s is the default)",
            )
            .into());
    }
    #[cfg(not(feature = "aws"))]
    return Err(loaded
        .error_at(
            Some(d.span()),
            "lease.dynamodb",
            "this hygiene was built without AWS support: build it with the `aws` feature",
        )
        .into());
    #[cfg(feature = "aws")]
    Ok(())
}

/// A store opened from the configuration, with its own writability check
/// (`validate`).
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn LeaseStore>,
    check: CheckFn,
}

type CheckFn = Box<
    dyn FnOnce() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), LeaseError>> + Send>,
        > + Send,
>;

impl Opened {
    /// Writes and deletes an entry of its own.
    pub(crate) async fn check_writable(
        self,
    ) -> Result<Arc<dyn LeaseStore>, (Arc<dyn LeaseStore>, LeaseError)> {
        match (self.check)().await {
            Ok(()) => Ok(self.store),
            Err(e) => Err((self.store, e)),
        }
    }
}

/// Opens the configured store; `None` without a `[lease]` section.
pub(crate) async fn open(loaded: &Loaded) -> Result<Option<Opened>, Failure> {
    check_offline(loaded)?;
    #[cfg(feature = "etcd")]
    if let Some(s) = crate::lease_etcd::open(loaded).await? {
        let c = Arc::clone(&s);
        return Ok(Some(Opened {
            store: s,
            check: Box::new(move || Box::pin(async move { c.check_writable().await })),
        }));
    }
    #[cfg(feature = "aws")]
    if let Some(d) = dynamodb(loaded) {
        let s = d.get_ref();
        let sdk = crate::setup::sdk_config(s.region.as_deref(), s.profile.as_deref()).await;
        let store = hygiene_aws::DynamoLeaseStore::from_sdk_config(
            &sdk,
            s.endpoint_url.clone(),
            s.table.get_ref().clone(),
            s.lease_duration.unwrap_or(DEFAULT_DURATION),
        )
        .map_err(|e| {
            Failure::Config(loaded.error_at(Some(d.span()), "lease.dynamodb", e.to_string()))
        })?;
        let store = Arc::new(store);
        let c = Arc::clone(&store);
        return Ok(Some(Opened {
            store,
            check: Box::new(move || Box::pin(async move { c.check_writable().await })),
        }));
    }
    Ok(None)
}

/// What `hygiene validate` says of the store: reachable and writable, and
/// who holds the pool; a problem otherwise. `None` without a store.
pub(crate) async fn validate(
    loaded: &Loaded,
    pool: &str,
) -> Result<Option<Result<String, String>>, Failure> {
    let Some(opened) = open(loaded).await? else {
        return Ok(None);
    };
    let store = match opened.check_writable().await {
        Ok(s) => s,
        Err((s, e)) => return Ok(Some(Err(format!("lease store {}: {e}", s.name())))),
    };
    let holder = match store.holder(pool).await {
        Ok(Some(h)) => format!("held by {h}"),
        Ok(None) => "free".into(),
        Err(e) => return Ok(Some(Err(format!("lease store {}: {e}", store.name())))),
    };
    Ok(Some(Ok(format!(
        "{}: reachable and writable; pool {pool} {holder}",
        store.name()
    ))))
}

/// Takes the pool's lease for a run, resume or restore (see the module's
/// decisions). `resume`/`restore` say on stderr that they wait.
pub(crate) async fn acquire(
    store: Arc<dyn LeaseStore>,
    pool: &str,
    fresh_run: bool,
) -> Result<HeldLease, Failure> {
    let owner = Owner::here(uuid::Uuid::new_v4().to_string());
    let wait = if fresh_run {
        Duration::ZERO
    } else {
        store.duration() + store.duration() / 2
    };
    if !fresh_run {
        if let Ok(Some(h)) = store.holder(pool).await {
            eprintln!(
                "the lease of pool {pool} in {} is held by {h}: waiting for it to be released, or for it to go unrenewed for a whole lease ({}) if that run died",
                store.name(),
                duration_text::format(h.duration)
            );
        }
    }
    let since = tokio::time::Instant::now();
    let mut since_try = since;
    let deadline = since + wait;
    // Like `acquire_waiting`, but the lease is counted from the call that
    // granted it, not from the first try.
    loop {
        since_try = tokio::time::Instant::now().max(since_try);
        match store.acquire(pool, &owner, &[]).await {
            Ok(grant) => {
                return Ok(HeldLease {
                    store,
                    grant,
                    since: since_try,
                })
            }
            Err(LeaseError::Held { retry_in, .. }) if tokio::time::Instant::now() < deadline => {
                let step = retry_in
                    .unwrap_or(store.duration())
                    .min(store.duration() / 4)
                    .max(Duration::from_millis(50));
                tokio::time::sleep(
                    step.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                )
                .await;
            }
            Err(e @ LeaseError::Held { .. }) if fresh_run => {
                return Err(Failure::Lib(hygiene_core::Error::journal(
                    store.name(),
                    format!(
                        "{e}. Another run holds this pool: wait for it to end (`hygiene status` shows it from any machine). If that run died, `hygiene resume` or `hygiene restore` take its lease over once it has gone unrenewed for a whole lease; nothing was changed"
                    ),
                )))
            }
            Err(e) => return Err(Failure::Lib(e.into())),
        }
    }
}

/// Gives the lease back at the end of a command; a lease already lost or
/// a store that does not answer is a warning (the lease then runs out).
pub(crate) async fn release(held: &HeldLease) -> Option<String> {
    match held.store.release(&held.grant).await {
        Ok(()) | Err(LeaseError::Lost { .. }) => None,
        Err(e) => Some(format!(
            "the lease of pool {} could not be released ({e}): it runs out after {} unrenewed",
            held.grant.pool,
            duration_text::format(held.grant.duration)
        )),
    }
}
