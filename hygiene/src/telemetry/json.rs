//! `--log-format json`: one JSON object per log line, with the fields of
//! the spans around it flattened in, so every line says which `run`,
//! `pool`, `batch`, `target` and `phase` it belongs to (`null` where it
//! belongs to none: a line before the run, a line about the whole run).
//!
//! tracing-subscriber's own JSON format nests span fields in a list; log
//! pipelines (Loki, Elasticsearch, CloudWatch) filter on top-level keys.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The keys every line has.
const CONTEXT: &[&str] = &["run", "pool", "batch", "target", "phase"];

/// The event format of `--log-format json` (with [`JsonFields`] as the
/// span field format).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JsonLines;

/// A field's key in the line: the engine's `target.id` is the `target`.
fn key(name: &str) -> &str {
    match name {
        "target.id" => "target",
        other => other,
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(key(field.name()).to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(key(field.name()).to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(key(field.name()).to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(key(field.name()).to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(key(field.name()).to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(key(field.name()).to_owned(), format!("{value:?}").into());
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            jiff::Timestamp::now().to_string().into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        for k in CONTEXT {
            line.insert((*k).into(), Value::Null);
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&fields.fields) {
                    for (k, v) in m {
                        if !k.starts_with("otel.") {
                            line.insert(key(&k).to_owned(), v);
                        }
                    }
                }
                line.insert("span".into(), span.name().into());
            }
        }
        let mut own = Map::new();
        event.record(&mut Fields(&mut own));
        line.extend(own);
        line.insert("module".into(), meta.target().into());
        writeln!(writer, "{}", Value::Object(line))
    }
}
