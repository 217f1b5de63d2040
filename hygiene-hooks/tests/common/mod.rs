//! Test harness: small HTTP servers on loopback (a metrics endpoint a real
//! Prometheus scrapes, a webhook receiver) and a real Prometheus per test.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a test server answers: (method, path and query, body) → (status, body).
pub type Handler = Arc<dyn Fn(&str, &str, &[u8]) -> (u16, String) + Send + Sync>;

/// An HTTP/1 server on 127.0.0.1 (a free port), answering with `handler`.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(handler: Handler) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let h = Arc::clone(&handler);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let h = Arc::clone(&h);
                        async move {
                            let method = req.method().to_string();
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let (status, text) = h(&method, &path, &body);
                            let mut r = Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                            Ok::<_, Infallible>(r)
                        }
                    });
                    // A client that hangs up mid-request is its own business.
                    let _closed = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The Prometheus binary: `HYGIENE_PROMETHEUS_BIN`, else `prometheus` on
/// the PATH. `None` (after a loud skip message) when missing; panics
/// instead when `HYGIENE_REQUIRE_INTEGRATION=1`.
pub fn prometheus_bin() -> Option<PathBuf> {
    let found = match std::env::var_os("HYGIENE_PROMETHEUS_BIN") {
        Some(bin) => Some(PathBuf::from(bin)).filter(|p| p.is_file()),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        }
    };
    let available = hygiene_core::conformance::integration_available(
        "prometheus",
        found.is_some(),
        "apt-get install -y prometheus, or set HYGIENE_PROMETHEUS_BIN",
    );
    if available {
        found
    } else {
        None
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A real Prometheus on loopback scraping `target` every 200 ms, with the
/// alerting `rules` (a rules file's YAML), stopped by pid when dropped.
pub struct Prometheus {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Stopped by its own pid, never by name.
        let _gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

impl Prometheus {
    pub async fn start(bin: &std::path::Path, target: SocketAddr, rules: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("rules.yml"), rules).expect("rules");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 200ms\n  evaluation_interval: 200ms\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: test\n    static_configs:\n      - targets: [\"{target}\"]\n",
                dir.path().join("rules.yml").display()
            ),
        )
        .expect("config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus");
        let p = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", p.url);
        for _ in 0..150 {
            if let Ok(r) = reqwest_get(&ready).await {
                if r == 200 {
                    return p;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(p._dir.path().join("prometheus.log")).unwrap_or_default();
        panic!("prometheus did not become ready in 15 s: {log}");
    }

    /// Waits until `query` returns `want` series (at most 30 s).
    pub async fn wait_series(&self, query: &str, want: usize) {
        let client = reqwest::Client::new();
        for _ in 0..300 {
            let r = client
                .get(format!("{}/api/v1/query", self.url))
                .query(&[("query", query)])
                .send()
                .await;
            if let Ok(r) = r {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["data"]["result"].as_array().map(Vec::len) == Some(want) {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{query} never returned {want} series");
    }
}

async fn reqwest_get(url: &str) -> Result<u16, reqwest::Error> {
    Ok(reqwest::get(url).await?.status().as_u16())
}
