//! A real Caddy (Debian's 2.6.2, `HYGIENE_CADDY_BIN`) on loopback with its
//! admin API on a loopback port, no autosave and no automatic HTTPS; small
//! HTTP backends it proxies to; and raw admin API calls to look at what
//! the balancer did.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hygiene_core::conformance::integration_available;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Caddy's binary, or `None` (the test skips) when it is missing.
pub fn caddy_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("HYGIENE_CADDY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/caddy"));
    let ok = std::process::Command::new(&bin)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    integration_available(
        "caddy",
        ok,
        "apt-get install -y caddy, or set HYGIENE_CADDY_BIN",
    )
    .then_some(bin)
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A backend: answers `Hello from <name>` on `/`, after `ms` on
/// `/slow?ms=<ms>`, `200` on `/health` (or `500` when broken).
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub broken: Arc<AtomicBool>,
    pub served: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let broken = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (n, b, s) = (name.to_owned(), broken.clone(), served.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (n, b, s) = (n.clone(), b.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (n, b, s) = (n.clone(), b.clone(), s.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let query = req.uri().query().unwrap_or("").to_owned();
                            if b.load(Ordering::SeqCst) {
                                return Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(500)
                                        .body(Full::new(Bytes::from("broken")))
                                        .expect("response"),
                                );
                            }
                            if path == "/slow" {
                                let ms: u64 = query
                                    .strip_prefix("ms=")
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(1000);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if path != "/health" {
                                s.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(Response::new(Full::new(Bytes::from(format!(
                                "Hello from {n}"
                            )))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            broken,
            served,
            task,
        }
    }

    pub fn dial(&self) -> String {
        self.addr.to_string()
    }
}

/// A running Caddy, killed when dropped.
pub struct Caddy {
    pub admin: String,
    pub http: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A route's reverse_proxy handler with an `@id`, with active health
/// checks on `/health` every 300 ms when `checks`.
pub fn proxy(id: &str, upstreams: Value, checks: bool) -> Value {
    let mut h = json!({"@id": id, "handler": "reverse_proxy", "upstreams": upstreams});
    if checks {
        h["health_checks"] =
            json!({"active": {"uri": "/health", "interval": "300ms", "timeout": "250ms"}});
    }
    h
}

impl Caddy {
    /// Starts Caddy with server `web` listening on a free loopback port
    /// and these routes.
    pub async fn start(bin: &std::path::Path, routes: Value) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_port = free_port("127.0.0.1");
        let http_port = free_port("127.0.0.1");
        let admin = format!("127.0.0.1:{admin_port}");
        let cfg = json!({
            "admin": {"listen": admin, "config": {"persist": false}},
            "logging": {"logs": {"default": {"level": "ERROR"}}},
            "apps": {"http": {"servers": {"web": {
                "listen": [format!("127.0.0.1:{http_port}")],
                "automatic_https": {"disable": true},
                "routes": routes,
            }}}}
        });
        let path = dir.path().join("caddy.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write");
        let child = std::process::Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("caddy starts");
        let caddy = Self {
            admin: format!("http://{admin}"),
            http: format!("127.0.0.1:{http_port}").parse().expect("addr"),
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if caddy.try_config().await.is_some() {
                return caddy;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("caddy did not answer on {}", caddy.admin);
    }

    async fn try_config(&self) -> Option<Value> {
        let (status, body) = raw(&self.admin, "GET", "/config/", None).await.ok()?;
        (status == 200).then(|| serde_json::from_slice(&body).ok())?
    }

    /// The whole configuration, read raw.
    pub async fn config(&self) -> Value {
        self.try_config().await.expect("config")
    }

    /// A raw admin request; panics unless it succeeds.
    pub async fn call(&self, method: &str, path: &str, body: Value) {
        let (status, text) = raw(&self.admin, method, path, Some(body))
            .await
            .expect("admin call");
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&text)
        );
    }

    /// `num_requests` per upstream address, read raw.
    pub async fn requests(&self) -> Vec<(String, i64)> {
        let (_, body) = raw(&self.admin, "GET", "/reverse_proxy/upstreams", None)
            .await
            .expect("upstreams");
        let rows: Vec<Value> = serde_json::from_slice(&body).expect("json");
        rows.iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap_or_default().to_owned(),
                    r["num_requests"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    }

    /// One GET through Caddy's HTTP server.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let (s, b) = raw(&format!("http://{}", self.http), "GET", path, None)
            .await
            .expect("get");
        (s, String::from_utf8_lossy(&b).into_owned())
    }
}

/// A raw HTTP request to `base` + `path`: status and body.
pub async fn raw(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Bytes), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    let payload = match body {
        Some(v) => {
            req = req.header("Content-Type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let resp = client
        .request(req.body(payload).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Polls `f` until it gives `Some`, or panics naming `what`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn id(s: &str) -> hygiene_core::TargetId {
    hygiene_core::TargetId::new(s).expect("id")
}
