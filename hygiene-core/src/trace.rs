//! Trace context for maintenances: each maintenance a rollout starts runs
//! in a span of its own (`maintenance`, a child of its target's
//! `executing` span) and gets a [W3C Trace Context] `TRACEPARENT` in its
//! environment, so a patch script's own spans join the rollout's trace.
//!
//! hygiene-core exports nothing itself: the program that installs an
//! OpenTelemetry layer also installs an [`Injector`] with
//! [`set_injector`], which turns a `tracing` span into its `traceparent`.
//! Without one, a maintenance gets the `TRACEPARENT` hygiene itself was
//! started with (when it is well formed), so its spans still join the
//! caller's trace.
//!
//! [W3C Trace Context]: https://www.w3.org/TR/trace-context/

use std::sync::{Arc, OnceLock};

use tracing::Span;

use crate::target::TargetId;

/// The variable a maintenance reads its trace context from.
pub const TRACEPARENT: &str = "TRACEPARENT";

/// Turns a span into its W3C `traceparent` (`None` when the span is not
/// recorded by any trace exporter).
pub type Injector = fn(&Span) -> Option<String>;

static INJECTOR: OnceLock<Injector> = OnceLock::new();

/// Installs the process's [`Injector`]; the first one wins (returns
/// `false` when one was already installed).
pub fn set_injector(injector: Injector) -> bool {
    INJECTOR.set(injector).is_ok()
}

/// The span of a target's current phase, as the engine knows it.
pub(crate) type PhaseSpans = Arc<dyn Fn(&TargetId) -> Option<Span> + Send + Sync>;

tokio::task_local! {
    static PHASES: PhaseSpans;
}

/// Runs `fut` (an executor's call) where [`maintenance_span`] finds each
/// target's phase span.
pub(crate) async fn with_phase_spans<F: std::future::Future>(
    spans: PhaseSpans,
    fut: F,
) -> F::Output {
    PHASES.scope(spans, fut).await
}

/// The span of one target's maintenance: a child of the target's
/// `executing` span when the engine runs the executor, else of the
/// current span. Executors enter it while the maintenance runs and pass
/// [`traceparent`] of it to the maintenance.
pub fn maintenance_span(target: &TargetId) -> Span {
    let parent = PHASES
        .try_with(|f| f(target))
        .ok()
        .flatten()
        .unwrap_or_else(Span::current);
    tracing::info_span!(parent: &parent, "maintenance", target = %target)
}

/// The `traceparent` to give a maintenance running in `span`: the
/// installed [`Injector`]'s, else hygiene's own `TRACEPARENT` when it is
/// well formed, else none.
pub fn traceparent(span: &Span) -> Option<String> {
    INJECTOR
        .get()
        .and_then(|inject| inject(span))
        .or_else(|| std::env::var(TRACEPARENT).ok())
        .filter(|v| is_traceparent(v))
}

/// A well-formed W3C `traceparent`, version 00: `00-<32 hex trace id, not
/// all zero>-<16 hex parent id, not all zero>-<2 hex flags>`.
pub fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [ver, trace, parent, flags]
        if *ver == "00" && hex(trace, 32) && nonzero(trace) && hex(parent, 16) && nonzero(parent) && hex(flags, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01; rm -rf /",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
    }
}
