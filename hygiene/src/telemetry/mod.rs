//! Numbers where teams look: log lines as text or JSON (`--log-format`),
//! a run's metrics for a Pushgateway or node-exporter's textfile
//! collector ([`metrics`]), and traces over OTLP (feature `otel`).
//!
//! This lives in the command, not in hygiene-core: the library emits
//! `tracing` spans and events and its [`Event`](hygiene_core::Event)
//! stream, and a program decides what to export and where. The engine
//! carries no exporter, no HTTP client for them and no global state.

pub(crate) mod json;
pub(crate) mod metrics;
#[cfg(feature = "otel")]
mod otel;

use clap::ValueEnum;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Span;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with `run`, `pool`, `batch`, `target`
    /// and `phase` on every line.
    Json,
}

/// What must be finished before the process exits (the traces not sent
/// yet).
#[derive(Debug, Default)]
pub(crate) struct Guard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Guard {
    /// Sends what is left and stops the exporters.
    pub(crate) fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("warning: the last traces were not all sent: {e}");
            }
        }
    }
}

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the process's subscriber: log lines at `default_level`
/// (unless `RUST_LOG` says otherwise) in `format`, and the OTLP exporter
/// when the `otel` feature is built and the `OTEL_*` variables ask for it.
pub(crate) fn init(format: LogFormat, default_level: &str, ansi: bool) -> Guard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let lines: Boxed = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(json::JsonLines)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    #[allow(unused_mut)] // Without `otel`, one layer.
    let mut layers = vec![lines];
    #[allow(unused_mut)]
    let mut guard = Guard::default();
    #[cfg(feature = "otel")]
    if otel::wanted() {
        match otel::provider() {
            Ok(provider) => {
                // Only hygiene's own spans and events, whatever RUST_LOG
                // says for the lines: the HTTP clients below must not
                // trace their own exports.
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(otel::tracer(&provider))
                    .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                        m.target().starts_with("hygiene") && *m.level() <= tracing::Level::INFO
                    }))
                    .boxed();
                layers.push(layer);
                hygiene_core::trace::set_injector(otel::traceparent);
                guard.provider = Some(provider);
            }
            Err(e) => eprintln!("warning: {e}; the run goes on without traces"),
        }
    }
    tracing_subscriber::registry().with(layers).init();
    guard
}

/// The span of the whole command (`hygiene`, with `command` and, once the
/// configuration is read, `pool`): the root of the run's trace, or a
/// child of the caller's `TRACEPARENT` with the `otel` feature.
pub(crate) fn command_span(command: &str) -> Span {
    let span = tracing::info_span!("hygiene", command, pool = tracing::field::Empty);
    #[cfg(feature = "otel")]
    otel::adopt_traceparent(&span);
    span
}

/// The metrics of one run, recorded from its events and its report and
/// sent at its end where [`metrics::Sinks`] say.
#[derive(Debug)]
pub(crate) struct RunMetrics {
    handle: Option<PrometheusHandle>,
    sinks: metrics::Sinks,
    pool: String,
}

impl RunMetrics {
    /// Starts recording when `sinks` name a destination (else every call
    /// does nothing).
    pub(crate) fn start(sinks: metrics::Sinks, pool: &str) -> Self {
        let handle = sinks.any().then(|| {
            let recorder = metrics::builder(pool).build_recorder();
            let handle = recorder.handle();
            // One run per process: the recorder is the process's.
            if ::metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            metrics::describe();
            handle
        });
        Self {
            handle,
            sinks,
            pool: pool.to_owned(),
        }
    }

    /// Counts what an event says.
    pub(crate) fn event(&self, e: &hygiene_core::Event) {
        if self.handle.is_some() {
            metrics::event(e);
        }
    }

    /// Records the report and sends everything; returns a warning per
    /// destination that failed.
    pub(crate) async fn finish(&self, report: &hygiene_core::Report) -> Vec<String> {
        let Some(handle) = &self.handle else {
            return Vec::new();
        };
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        metrics::report(report, now);
        metrics::export(handle, &self.sinks, &self.pool).await
    }
}
