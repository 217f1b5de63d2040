//! The run's spans, derived from its events: one per batch, per target
//! (a child of its batch) and per phase of a target (a child of the
//! target), all under the run's span; a target's checks before its batch
//! is formed (preflight) are a phase span of the run's. The machine decides nothing here:
//! it only sees the events the subscribers see. Without a subscriber that
//! wants them, the spans cost next to nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::Span;

use crate::phase::Stage;
use crate::report::{Event, EventKind};
use crate::target::TargetId;

#[derive(Debug)]
struct TargetSpans {
    span: Span,
    phase: Option<(Stage, Span)>,
}

#[derive(Debug, Default)]
struct Inner {
    batches: HashMap<usize, (Span, usize)>,
    /// A target's checks before its batch starts (preflight), under the run.
    before: HashMap<TargetId, Span>,
    targets: HashMap<TargetId, (Option<usize>, TargetSpans)>,
}

/// The open spans of a run.
#[derive(Debug)]
pub(crate) struct SpanTree {
    run: Span,
    inner: Mutex<Inner>,
}

fn terminal(stage: Stage) -> bool {
    matches!(
        stage,
        Stage::Done | Stage::Failed | Stage::Skipped | Stage::Restored | Stage::Vanished
    )
}

impl SpanTree {
    /// Spans under the current span (the run's).
    pub(crate) fn new() -> Self {
        Self {
            run: Span::current(),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens and closes spans as `event` says.
    pub(crate) fn observe(&self, event: &Event) {
        let mut inner = self.lock();
        match &event.kind {
            EventKind::BatchStarted { index, targets } => {
                let span = tracing::info_span!(parent: &self.run, "batch", batch = index, size = targets.len());
                for id in targets {
                    inner.before.remove(id);
                    let t = tracing::info_span!(parent: &span, "target", target = %id, result = tracing::field::Empty);
                    inner.targets.insert(
                        id.clone(),
                        (
                            Some(*index),
                            TargetSpans {
                                span: t,
                                phase: None,
                            },
                        ),
                    );
                }
                inner.batches.insert(*index, (span, targets.len()));
            }
            EventKind::Phase { id, stage, detail } => {
                let stage = *stage;
                if !inner.targets.contains_key(id)
                    && matches!(stage, Stage::Pending | Stage::Preflight)
                {
                    // Its batch is not formed yet: a span of the run's.
                    let span = tracing::info_span!(parent: &self.run, "phase", target = %id, phase = %stage, "otel.name" = %stage);
                    inner.before.insert(id.clone(), span);
                    return;
                }
                inner.before.remove(id);
                if !inner.targets.contains_key(id) {
                    let parent = event
                        .batch
                        .and_then(|b| inner.batches.get(&b).map(|(s, _)| s.clone()))
                        .unwrap_or_else(|| self.run.clone());
                    let span = tracing::info_span!(parent: &parent, "target", target = %id, result = tracing::field::Empty);
                    inner
                        .targets
                        .insert(id.clone(), (event.batch, TargetSpans { span, phase: None }));
                }
                let Some((batch, t)) = inner.targets.get_mut(id) else {
                    return;
                };
                if terminal(stage) {
                    t.span.record("result", tracing::field::display(stage));
                    if let Some(d) = detail {
                        tracing::info!(parent: &t.span, target = %id, phase = %stage, detail = %d, "target ends");
                    }
                    let batch = *batch;
                    inner.targets.remove(id);
                    self.batch_member_done(&mut inner, batch);
                } else if t.phase.as_ref().is_none_or(|(s, _)| *s != stage) {
                    // The previous phase's span closes when replaced.
                    let span = tracing::info_span!(parent: &t.span, "phase", phase = %stage, "otel.name" = %stage);
                    t.phase = Some((stage, span));
                }
            }
            EventKind::Finished { .. } => {
                inner.targets.clear();
                inner.before.clear();
                inner.batches.clear();
            }
            _ => {}
        }
    }

    fn batch_member_done(&self, inner: &mut Inner, batch: Option<usize>) {
        let Some(b) = batch else { return };
        let close = match inner.batches.get_mut(&b) {
            Some((_, left)) => {
                *left = left.saturating_sub(1);
                *left == 0
            }
            None => false,
        };
        if close {
            inner.batches.remove(&b);
        }
    }

    /// The span of `id`'s current phase (or of the target, between phases).
    pub(crate) fn phase_span(&self, id: &TargetId) -> Option<Span> {
        let inner = self.lock();
        inner.targets.get(id).map(|(_, t)| {
            t.phase
                .as_ref()
                .map_or_else(|| t.span.clone(), |(_, s)| s.clone())
        })
    }

    /// [`phase_span`](Self::phase_span) as the executors look it up.
    pub(crate) fn lookup(self: &Arc<Self>) -> crate::trace::PhaseSpans {
        let tree = Arc::clone(self);
        Arc::new(move |id| tree.phase_span(id))
    }
}
