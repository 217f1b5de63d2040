//! [`StoreJournal`]: the run's journal in a lease store, under the fence.

use std::future::Future;
use std::sync::Arc;

use super::{Grant, LeaseStore};
use crate::error::{Error, Result};
use crate::journal::{Journal, Record};

/// A [`Journal`] kept in a [`LeaseStore`]: every record is appended with
/// the holder's [`Grant`], so a holder whose lease was taken over has its
/// records refused ([`Error::Journal`] saying the lease is lost) and, since
/// the engine makes no drain or maintenance it could not journal, starts
/// nothing more. Anybody can read it ([`records`](Journal::records)): a
/// run can be resumed or restored from any machine.
///
/// The engine's journal calls are synchronous: on a multi-thread tokio
/// runtime (the `hygiene` command's) a store call runs in
/// `block_in_place`; elsewhere it is polled to its end on the spot, which
/// only suits stores that do no network I/O (memory, files).
#[derive(Debug, Clone)]
pub struct StoreJournal {
    store: Arc<dyn LeaseStore>,
    pool: String,
    grant: Option<Grant>,
}

impl StoreJournal {
    /// The journal of `grant`'s pool, written under `grant`.
    pub fn new(store: Arc<dyn LeaseStore>, grant: Grant) -> Self {
        Self {
            pool: grant.pool.clone(),
            store,
            grant: Some(grant),
        }
    }

    /// The journal of `pool`, to read only (`hygiene status`): every
    /// append is refused.
    pub fn reader(store: Arc<dyn LeaseStore>, pool: impl Into<String>) -> Self {
        Self {
            store,
            pool: pool.into(),
            grant: None,
        }
    }
}

/// Runs a store call from synchronous code (see [`StoreJournal`]).
pub(crate) fn block<F: Future>(fut: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(fut))
        }
        _ => futures::executor::block_on(fut),
    }
}

impl Journal for StoreJournal {
    fn location(&self) -> String {
        format!("{} (journal of pool {})", self.store.name(), self.pool)
    }

    fn append(&self, record: &Record) -> Result<()> {
        let Some(grant) = &self.grant else {
            return Err(Error::journal(
                self.location(),
                "is open to read only: a run writes it under its lease",
            ));
        };
        block(self.store.append(grant, record))
            .map_err(|e| Error::journal(self.location(), format!("refused a record: {e}")))
    }

    fn records(&self) -> Result<Vec<Record>> {
        block(self.store.records(&self.pool))
            .map_err(|e| Error::journal(self.location(), format!("cannot be read: {e}")))
    }
}
