//! Traces over OTLP/HTTP (feature `otel`), configured only by the
//! standard variables: on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (or `OTEL_TRACES_EXPORTER=otlp`),
//! off with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`;
//! `OTEL_SERVICE_NAME` (default `hygiene`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` and
//! `OTEL_TRACES_SAMPLER` as the SDK reads them. A `TRACEPARENT` in the
//! environment becomes the parent of the command's span.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// Whether the `OTEL_*` variables ask for traces.
pub(crate) fn wanted() -> bool {
    if env_is("OTEL_SDK_DISABLED", "true") || env_is("OTEL_TRACES_EXPORTER", "none") {
        return false;
    }
    let set = |n: &str| std::env::var(n).is_ok_and(|v| !v.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        || env_is("OTEL_TRACES_EXPORTER", "otlp")
}

/// The tracer provider (shut down at the end, which sends what is left)
/// and its tracer.
pub(crate) fn provider() -> Result<SdkTracerProvider, String> {
    check_protocol(|n| std::env::var(n).ok())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("the OTLP exporter cannot start (check OTEL_EXPORTER_OTLP_*): {e}"))?;
    let mut resource = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("hygiene");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// This build exports OTLP over HTTP (protobuf): a gRPC protocol asked
/// by the standard variables is said, not silently sent to the wrong port.
fn check_protocol(var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = var(name).map(|p| p.trim().to_ascii_lowercase()) {
            if p.is_empty() {
                continue;
            }
            if p == "http/protobuf" {
                return Ok(());
            }
            return Err(format!(
                "{name}={p}: hygiene sends traces over OTLP/HTTP (http/protobuf) only; set {name}=http/protobuf and the collector's HTTP endpoint (port 4318)"
            ));
        }
    }
    Ok(())
}

/// The tracer of `provider`.
pub(crate) fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("hygiene")
}

/// Makes `span` a child of the `TRACEPARENT` hygiene was started with,
/// when there is one.
pub(crate) fn adopt_traceparent(span: &Span) {
    let Ok(tp) = std::env::var("TRACEPARENT") else {
        return;
    };
    if !hygiene_core::trace::is_traceparent(&tp) {
        tracing::warn!(
            traceparent = %tp,
            "TRACEPARENT is not a W3C traceparent (00-<trace id>-<span id>-<flags>): the run starts a trace of its own"
        );
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), tp)]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if let Err(e) = span.set_parent(cx) {
        tracing::warn!(error = %e, "TRACEPARENT could not become the run's parent");
    }
}

/// The W3C `traceparent` of `span`, when it is recorded
/// ([`hygiene_core::trace::Injector`]).
pub(crate) fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_http_protocol_is_taken_and_grpc_is_named() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(check_protocol(env(&[])).is_ok());
        assert!(check_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])).is_ok());
        let e = check_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).expect_err("grpc");
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc") && e.contains("4318"),
            "{e}"
        );
        // The traces' own variable wins over the general one.
        assert!(check_protocol(env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .is_ok());
        assert!(
            check_protocol(env(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")])).is_err()
        );
    }
}
