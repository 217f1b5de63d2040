//! Exit codes, from the library's typed errors and the run's report.

use hygiene_core::{AbortReason, Error, Outcome, Report};

/// Every target done (or, for validate / plan / status, nothing wrong).
pub(crate) const OK: u8 = 0;
/// An error none of the codes below describes.
pub(crate) const OTHER: u8 = 1;
// 2 is clap's: a command line it cannot parse.
/// The configuration (file, flags, variables) is wrong; nothing was changed.
pub(crate) const CONFIG: u8 = 3;
/// The balancer or the executor cannot be reached or refused us (before
/// anything was changed); `validate` found it unreachable.
pub(crate) const UNREACHABLE: u8 = 4;
/// The journal stops this: another run holds it, the last run did not
/// finish (resume or restore it first), there is nothing to resume, or it
/// is unreadable. Nothing was changed. Also a run that could not write
/// some of its records (and nothing worse happened): its journal is left
/// unfinished.
pub(crate) const JOURNAL: u8 = 5;
/// `plan` / `validate`: the run would refuse to start or abort (a
/// `min_healthy` no batch fits, an `--only` naming nothing, a maintenance
/// that cannot start, an unfinished journal); the blockers say why. As
/// `terraform plan -detailed-exitcode`, distinct from an error.
pub(crate) const BLOCKED: u8 = 6;
/// The run failed: aborted (failure budget exceeded, no capacity, the
/// balancer gave up) or targets failed, but none is out of rotation.
pub(crate) const RUN_FAILED: u8 = 10;
/// Targets are out of rotation because of the run (kept out after a
/// failure, or in a state the run could not read): `hygiene status` names
/// them and says how to put them back. `status` also exits with it when
/// the journal shows targets out.
pub(crate) const KEPT_OUT: u8 = 11;
/// The run lost its shared lease (`[lease.*]`: renewals failed, or another
/// machine took it over): it drained nothing more and put back what it
/// could; the report names what is still out; the lease's next holder
/// resumes or restores the run from the shared journal.
pub(crate) const LEASE_LOST: u8 = 12;
/// The run was cancelled (Ctrl-C) and every target is back in service.
pub(crate) const CANCELLED: u8 = 130;

/// The exit codes, for `--help` and the man page.
pub(crate) const HELP: &str = "\
Exit codes:
    0    success: every target maintained and back in service
    1    another error
    2    the command line cannot be parsed
    3    configuration error (file, flag or HYGIENE_ variable); nothing changed
    4    balancer or executor unreachable, or it refused access; nothing changed
    5    journal locked by another run, or left unfinished by a run that died
         (run `hygiene resume` or `hygiene restore`), or unusable; nothing changed;
         `status` too while a run is unfinished; also a run that could not
         write some of its journal records (it is left unfinished: restore)
    6    plan / validate: the run would refuse to start or abort (the
         blockers say why)
    10   run failed: aborted (failure budget exceeded, capacity, balancer) or
         targets failed; none left out of rotation
    11   targets kept out of rotation: `hygiene status` names them and how to
         put them back (`status` and `enable` too, while one is; a third
         Ctrl-C with targets still in progress)
    12   the run lost its shared lease ([lease.*]): nothing more was drained,
         what it could put back is back, the report names what is still
         out; `hygiene status` from any machine, then `hygiene resume` or
         `hygiene restore` (they take the lease over)
    130  cancelled (Ctrl-C); every target back in service

Environment: every flag has a HYGIENE_ variable (HYGIENE_CONFIG,
HYGIENE_STATE_DIR, HYGIENE_JSON, HYGIENE_BATCH_SIZE, HYGIENE_POLL_INTERVAL,
HYGIENE_ONLY, HYGIENE_EXCLUDE, HYGIENE_YES, …; booleans take 1/0, true/false);
RUST_LOG sets the log level (logs go to stderr).";

/// The exit code of a library error.
pub(crate) fn of_error(e: &Error) -> u8 {
    match e {
        Error::InvalidConfig { .. } | Error::InvalidName { .. } | Error::NotFound { .. } => CONFIG,
        Error::Unavailable { .. }
        | Error::Throttled { .. }
        | Error::Timeout { .. }
        | Error::PermissionDenied { .. }
        | Error::Protocol { .. }
        | Error::Rejected { .. }
        | Error::Executor { .. } => UNREACHABLE,
        Error::Journal { .. } => JOURNAL,
        Error::Capacity { .. } => RUN_FAILED,
        Error::Cancelled { .. } => CANCELLED,
        _ => OTHER,
    }
}

/// A short name of the error's kind (for `--json`).
pub(crate) fn kind_of_error(e: &Error) -> &'static str {
    match of_error(e) {
        CONFIG => "config",
        UNREACHABLE => "unreachable",
        JOURNAL => "journal",
        RUN_FAILED => "capacity",
        CANCELLED => "cancelled",
        _ => "other",
    }
}

/// The exit code of a finished run: targets out of rotation first (they
/// need an operator), then a failed or aborted run, then cancellation.
pub(crate) fn of_report(r: &Report) -> u8 {
    if matches!(
        r.outcome,
        Outcome::Aborted {
            reason: AbortReason::LeaseLost { .. }
        }
    ) {
        // First: whatever is still out, the next step is the lease's next
        // holder's, and the report names it.
        LEASE_LOST
    } else if r.kept_out().next().is_some() {
        KEPT_OUT
    } else if matches!(r.outcome, Outcome::Aborted { .. }) || r.failed().next().is_some() {
        RUN_FAILED
    } else if r.outcome == Outcome::Cancelled {
        CANCELLED
    } else {
        OK
    }
}
