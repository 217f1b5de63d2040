//! A constant load against an HTTP endpoint that counts every request and
//! classifies every failure. Clients either keep their connection alive or
//! open a new one per request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How the load is made.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    /// Clients that keep their connection alive.
    pub keepalive_clients: usize,
    /// Clients that open a new connection per request.
    pub fresh_clients: usize,
    /// Requests per second per client (`None`: as fast as answers come).
    pub rate_per_client: Option<u32>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            keepalive_clients: 4,
            fresh_clients: 4,
            rate_per_client: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    requests: AtomicU64,
    failed: AtomicU64,
    by_kind: Mutex<BTreeMap<String, u64>>,
    by_server: Mutex<BTreeMap<String, u64>>,
}

/// What the load saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadStats {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Failures by kind (`connect`, `reset`, `timeout`, `status_503`, …).
    pub failed_by_kind: BTreeMap<String, u64>,
    /// Successful answers by the server that gave them.
    pub by_server: BTreeMap<String, u64>,
}

/// A running load.
#[derive(Debug)]
pub struct Load {
    tally: Arc<Tally>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Load {
    /// Starts the load against `http://<target>/`.
    pub fn start(target: SocketAddr, cfg: LoadConfig) -> Self {
        let tally = Arc::new(Tally::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let uri: hyper::Uri = format!("http://{target}/").parse().unwrap_or_default();
        for i in 0..cfg.keepalive_clients + cfg.fresh_clients {
            let keepalive = i < cfg.keepalive_clients;
            let mut builder = Client::builder(TokioExecutor::new());
            if !keepalive {
                builder.pool_max_idle_per_host(0);
            }
            let client: Client<_, Empty<Bytes>> = builder.build_http();
            let (tally, stop, uri) = (Arc::clone(&tally), stop.clone(), uri.clone());
            tasks.spawn(async move {
                let mut ticker = cfg.rate_per_client.map(|r| {
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(r.max(1))))
                });
                loop {
                    if let Some(t) = ticker.as_mut() {
                        tokio::select! {
                            _ = t.tick() => {}
                            () = stop.cancelled() => return,
                        }
                    } else if stop.is_cancelled() {
                        return;
                    }
                    let outcome =
                        tokio::time::timeout(cfg.timeout, request(&client, uri.clone())).await;
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    let kind = match outcome {
                        Ok(Ok(server)) => {
                            *tally
                                .by_server
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(server)
                                .or_default() += 1;
                            continue;
                        }
                        Ok(Err(kind)) => kind,
                        Err(_) => "timeout".to_owned(),
                    };
                    let kind = if keepalive {
                        format!("keepalive_{kind}")
                    } else {
                        format!("fresh_{kind}")
                    };
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    *tally
                        .by_kind
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(kind)
                        .or_default() += 1;
                }
            });
        }
        Self { tally, stop, tasks }
    }

    /// What was seen so far.
    pub fn stats(&self) -> LoadStats {
        let t = &self.tally;
        LoadStats {
            requests: t.requests.load(Ordering::Relaxed),
            failed: t.failed.load(Ordering::Relaxed),
            failed_by_kind: t
                .by_kind
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            by_server: t
                .by_server
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    /// Stops every client (requests in flight finish) and returns the tally.
    pub async fn stop(mut self) -> LoadStats {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.stats()
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// One GET; `Ok(server name)` or `Err(kind of failure)`.
async fn request(client: &HttpClient, uri: hyper::Uri) -> Result<String, String> {
    let resp = client.get(uri).await.map_err(|e| {
        if e.is_connect() {
            "connect".to_owned()
        } else {
            "reset".to_owned()
        }
    })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| "body".to_owned())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("status_{}", status.as_u16()));
    }
    let text = String::from_utf8_lossy(&body);
    text.trim()
        .strip_prefix("Hello, World! From ")
        .map(str::to_owned)
        .ok_or_else(|| "bad_body".to_owned())
}
