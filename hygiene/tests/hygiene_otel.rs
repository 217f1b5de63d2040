//! `hygiene`'s traces (feature `otel`) end to end against a real HAProxy:
//! a test OTLP/HTTP receiver on loopback takes what the command exports
//! (protobuf, configured only by `OTEL_*` variables) and the test checks
//! the span tree — the caller's `TRACEPARENT` → `hygiene` → `rollout` →
//! `batch` → `target` → phase spans → `maintenance` — and that each
//! maintenance saw the `TRACEPARENT` of its own span.
#![cfg(feature = "otel")]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{have_haproxy, hygiene, out};
use examples::scenario::{Scenario, ScenarioConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A receiver of OTLP/HTTP protobuf on loopback: every span it was sent.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let spans = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&spans);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let status = match body {
                            Ok(b) if path == "/v1/traces" => {
                                match ExportTraceServiceRequest::decode(b) {
                                    Ok(export) => {
                                        let mut seen = seen.lock().expect("lock");
                                        for rs in export.resource_spans {
                                            for ss in rs.scope_spans {
                                                for s in ss.spans {
                                                    let attrs = s
                                                        .attributes
                                                        .iter()
                                                        .map(|kv| {
                                                            let v = match kv
                                                                .value
                                                                .as_ref()
                                                                .and_then(|v| v.value.as_ref())
                                                            {
                                                                Some(Value::StringValue(s)) => {
                                                                    s.clone()
                                                                }
                                                                Some(Value::IntValue(i)) => {
                                                                    i.to_string()
                                                                }
                                                                Some(other) => format!("{other:?}"),
                                                                None => String::new(),
                                                            };
                                                            (kv.key.clone(), v)
                                                        })
                                                        .collect();
                                                    seen.push(Span {
                                                        name: s.name,
                                                        trace_id: hex(&s.trace_id),
                                                        span_id: hex(&s.span_id),
                                                        parent: hex(&s.parent_span_id),
                                                        attrs,
                                                    });
                                                }
                                            }
                                        }
                                        200
                                    }
                                    Err(_) => 400,
                                }
                            }
                            _ => 404,
                        };
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _closed = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, spans)
}

fn config(dir: &Path, scn: &Scenario, seen: &Path) -> std::path::PathBuf {
    let path = dir.join("hygiene.toml");
    let text = format!(
        r#"pool = "web"

[balancer.haproxy]
nodes = [{sock:?}]
backends = ["web"]

[executor.local]
program = "/bin/sh"
args = ["-c", "printf '%s' \"$TRACEPARENT\" > \"$0/$(echo $HYGIENE_TARGET_ID | tr / _)\"", {seen:?}]
timeout = "30s"

[rollout]
batch_size = 1
poll_interval = "50ms"
drain_timeout = "20s"
health_timeout = "20s"
"#,
        sock = scn.haproxy.socket().display().to_string(),
        seen = seen.display().to_string(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_span_tree_reaches_an_otlp_receiver_and_each_maintenance_joins_it() {
    if !have_haproxy() {
        return;
    }
    let (url, spans) = receiver().await;
    let scn = Scenario::start(ScenarioConfig::default())
        .await
        .expect("scenario");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let seen = dir.path().join("seen");
    std::fs::create_dir(&seen).expect("dir");
    let cfg = config(dir.path(), &scn, &seen);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    let mut c = hygiene(&cfg, &state);
    c.arg("run")
        .env("TRACEPARENT", format!("00-{trace}-{caller}-01"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &url)
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let (code, stdout, err) = tokio::task::spawn_blocking(move || out(c))
        .await
        .expect("run");
    assert_eq!(code, 0, "{stdout}{err}");
    let spans = spans.lock().expect("lock").clone();
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_of = |s: &Span| by_id.get(s.parent.as_str()).copied();
    let named = |n: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == n).collect() };
    assert!(
        spans.iter().all(|s| s.trace_id == trace),
        "every span is in the caller's trace: {spans:#?}"
    );

    let root = named("hygiene");
    assert_eq!(root.len(), 1, "{spans:#?}");
    assert_eq!(
        root[0].parent, caller,
        "TRACEPARENT is the command's parent"
    );
    assert_eq!(root[0].attrs.get("pool").map(String::as_str), Some("web"));
    let rollout = named("rollout");
    assert_eq!(rollout.len(), 1, "{spans:#?}");
    assert_eq!(rollout[0].parent, root[0].span_id);
    assert!(rollout[0].attrs.contains_key("run"), "{:?}", rollout[0]);
    let batches = named("batch");
    assert_eq!(batches.len(), 3, "{spans:#?}");
    assert!(batches.iter().all(|b| b.parent == rollout[0].span_id));
    let preflights = named("preflight");
    assert_eq!(preflights.len(), 3, "{spans:#?}");
    assert!(
        preflights.iter().all(|p| p.parent == rollout[0].span_id),
        "a target's preflight comes before its batch: {preflights:#?}"
    );
    let targets = named("target");
    assert_eq!(targets.len(), 3, "{spans:#?}");
    for t in &targets {
        assert_eq!(
            parent_of(t).map(|p| p.name.as_str()),
            Some("batch"),
            "{t:?}"
        );
        assert_eq!(
            t.attrs.get("result").map(String::as_str),
            Some("done"),
            "{t:?}"
        );
    }
    for phase in ["draining", "executing", "enabling"] {
        let ps = named(phase);
        assert_eq!(ps.len(), 3, "{phase}: {spans:#?}");
        for p in ps {
            assert_eq!(
                parent_of(p).map(|t| t.name.as_str()),
                Some("target"),
                "{p:?}"
            );
        }
    }
    let maintenances = named("maintenance");
    assert_eq!(maintenances.len(), 3, "{spans:#?}");
    for m in maintenances {
        let executing = parent_of(m).expect("the maintenance has a parent");
        assert_eq!(executing.name, "executing", "{m:?}");
        let target = parent_of(executing).expect("target");
        let id = m.attrs.get("target").expect("target attribute");
        assert_eq!(target.attrs.get("target"), Some(id), "{m:?} {target:?}");
        let file = seen.join(id.replace('/', "_"));
        let tp = std::fs::read_to_string(&file).expect("the maintenance ran");
        assert_eq!(
            tp,
            format!("00-{trace}-{}-01", m.span_id),
            "{id}'s maintenance got the TRACEPARENT of its own span"
        );
    }
    scn.stop().await;
}
