//! What the journal records of the machine's effects and replies: one
//! place, used by the driver and by the crash simulation.

use crate::executor::Recovered;
use crate::journal::{Op, Record};
use crate::target::TargetId;

use super::machine::{CallId, Effect, Finished, Reply};

/// What the journal records of an effect that changes targets.
pub(crate) fn journaled(effect: &Effect) -> Option<(Op, Vec<TargetId>)> {
    match effect {
        Effect::Drain(_, ids) => Some((Op::Drain, ids.clone())),
        Effect::Disable(_, ids) => Some((Op::Disable, ids.clone())),
        Effect::Enable(_, ids) => Some((Op::Enable, ids.clone())),
        Effect::Execute(_, targets) => {
            Some((Op::Execute, targets.iter().map(|t| t.id.clone()).collect()))
        }
        Effect::Recover(_, target, _) => Some((Op::Recover, vec![target.id.clone()])),
        _ => None,
    }
}

/// The record written before `effect`, when it changes targets.
pub(crate) fn intent_record(effect: &Effect) -> Option<(Op, Record)> {
    journaled(effect).map(|(op, ids)| {
        (
            op,
            Record::Intent {
                call: effect.call(),
                op,
                ids,
                at: jiff::Timestamp::now().to_string(),
            },
        )
    })
}

/// The record written after a call that changes targets.
pub(crate) fn result_record(call: CallId, reply: &Reply) -> Record {
    let at = jiff::Timestamp::now().to_string();
    let (ok, error, outcomes) = match reply {
        Reply::Changed(Ok(())) => (true, None, None),
        Reply::Executed(Ok(o)) => (true, None, Some(o.clone())),
        Reply::Changed(Err(e)) | Reply::Executed(Err(e)) | Reply::Recovered(Err(e)) => {
            (false, Some(e.to_string()), None)
        }
        Reply::Recovered(Ok(Recovered::Finished(o))) => (true, None, Some(vec![o.clone()])),
        Reply::Recovered(Ok(Recovered::Unknown(why))) => {
            (false, Some(format!("outcome unknown: {why}")), None)
        }
        _ => (true, None, None),
    };
    // A recovery that could not ask the executor leaves the maintenance
    // where it was: perhaps running, its handle still the way to it.
    let open = matches!(
        reply,
        Reply::Recovered(Err(_)) | Reply::Executed(Err(crate::error::Error::Timeout { .. }))
    );
    Record::Result {
        call,
        ok,
        error,
        outcomes,
        open,
        at,
    }
}

/// The record of a target that finished.
pub(crate) fn finished_record(f: Finished) -> Record {
    Record::Finished {
        id: f.id,
        stage: f.stage,
        failed_at: f.failed_at,
        location: f.location,
        detail: f.detail,
    }
}
