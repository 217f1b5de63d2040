//! The soak's clients: a constant load on each node's frontend (moved off
//! a node while it is killed, as a virtual IP would), long requests when
//! that fault is on, and samples of everything counted so far.

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

use super::fault::Rng;
use super::node::HaCounters;
use crate::load::{Load, LoadConfig, LoadStats};

/// Everything counted so far (or between two samples).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Client requests sent (constant load and long requests).
    pub requests: u64,
    /// Client requests that failed.
    pub failed: u64,
    /// Failures by cause (`fresh_status_503`, `keepalive_reset`, `long_reset`, …).
    pub failed_by_cause: BTreeMap<String, u64>,
    /// HAProxy's error counters, summed over both nodes.
    pub haproxy: HaCounters,
    /// Milliseconds a stopped or broken service was in rotation and `UP`
    /// on a node (sampled every 10 ms, summed over nodes).
    pub dead_in_rotation_ms: u64,
    /// Times that began.
    pub dead_in_rotation: u64,
}

impl Sample {
    /// `self - earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        let mut by = BTreeMap::new();
        for (k, v) in &self.failed_by_cause {
            let d = v.saturating_sub(earlier.failed_by_cause.get(k).copied().unwrap_or(0));
            if d > 0 {
                by.insert(k.clone(), d);
            }
        }
        Self {
            requests: self.requests.saturating_sub(earlier.requests),
            failed: self.failed.saturating_sub(earlier.failed),
            failed_by_cause: by,
            haproxy: self.haproxy.since(&earlier.haproxy),
            dead_in_rotation_ms: self
                .dead_in_rotation_ms
                .saturating_sub(earlier.dead_in_rotation_ms),
            dead_in_rotation: self
                .dead_in_rotation
                .saturating_sub(earlier.dead_in_rotation),
        }
    }

    /// Adds `other`.
    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.failed += other.failed;
        for (k, v) in &other.failed_by_cause {
            *self.failed_by_cause.entry(k.clone()).or_default() += v;
        }
        self.haproxy.add(&other.haproxy);
        self.dead_in_rotation_ms += other.dead_in_rotation_ms;
        self.dead_in_rotation += other.dead_in_rotation;
    }
}

fn add_stats(into: &mut Sample, s: &LoadStats) {
    into.requests += s.requests;
    into.failed += s.failed;
    for (k, v) in &s.failed_by_kind {
        *into.failed_by_cause.entry(k.clone()).or_default() += v;
    }
}

/// The constant load, one [`Load`] per node's frontend.
#[derive(Debug)]
pub struct Clients {
    cfg: LoadConfig,
    loads: Vec<tokio::sync::Mutex<Option<Load>>>,
    banked: Mutex<Sample>,
    long: Arc<LongTally>,
    /// Per frontend: the virtual IP points to it (long requests go there).
    vip: Arc<Vec<std::sync::atomic::AtomicBool>>,
    /// Per frontend: long requests in flight.
    long_in_flight: Arc<Vec<AtomicU64>>,
}

impl Clients {
    /// Starts the load on every frontend.
    pub fn start(frontends: &[SocketAddr], cfg: LoadConfig) -> Self {
        Self {
            cfg,
            loads: frontends
                .iter()
                .map(|f| tokio::sync::Mutex::new(Some(Load::start(*f, cfg))))
                .collect(),
            banked: Mutex::new(Sample::default()),
            long: Arc::default(),
            vip: Arc::new(
                frontends
                    .iter()
                    .map(|_| std::sync::atomic::AtomicBool::new(true))
                    .collect(),
            ),
            long_in_flight: Arc::new(frontends.iter().map(|_| AtomicU64::new(0)).collect()),
        }
    }

    /// Moves the load off node `i` (its requests in flight finish first),
    /// as a virtual IP moved to the other node would: no new request,
    /// long ones included, goes to it, and those in flight end (at most
    /// 10 s: the long requests last a few seconds).
    pub async fn pause(&self, i: usize) {
        let Some(slot) = self.loads.get(i) else {
            return;
        };
        if let Some(v) = self.vip.get(i) {
            v.store(false, Ordering::SeqCst);
        }
        if let Some(flight) = self.long_in_flight.get(i) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let Some(load) = slot.lock().await.take() {
            let stats = load.stop().await;
            add_stats(
                &mut self
                    .banked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                &stats,
            );
        }
    }

    /// Puts the load back on node `i`.
    pub async fn resume(&self, i: usize, frontend: SocketAddr) {
        if let Some(slot) = self.loads.get(i) {
            let mut slot = slot.lock().await;
            if slot.is_none() {
                *slot = Some(Load::start(frontend, self.cfg));
            }
        }
        if let Some(v) = self.vip.get(i) {
            v.store(true, Ordering::SeqCst);
        }
    }

    /// What the clients counted so far (HAProxy's counters left at zero).
    pub async fn sample(&self) -> Sample {
        let mut s = self
            .banked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for slot in &self.loads {
            if let Some(load) = slot.lock().await.as_ref() {
                add_stats(&mut s, &load.stats());
            }
        }
        self.long.add_to(&mut s);
        s
    }

    /// Stops everything; the final count.
    pub async fn stop(&self) -> Sample {
        for i in 0..self.loads.len() {
            self.pause(i).await;
        }
        self.sample().await
    }

    /// Starts `per_frontend` clients on each frontend sending requests that
    /// take `ms.0..=ms.1` milliseconds, one after another on fresh
    /// connections.
    pub fn long_requests(
        &self,
        frontends: &[SocketAddr],
        per_frontend: usize,
        ms: (u64, u64),
        seed: u64,
    ) -> LongRequests {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut n = 0;
        for (idx, f) in frontends.iter().enumerate() {
            for _ in 0..per_frontend {
                n += 1;
                let mut rng = Rng::new(seed ^ (n * 0x1000_0001));
                let (stop, tally, f) = (stop.clone(), Arc::clone(&self.long), *f);
                let (vip, in_flight) = (Arc::clone(&self.vip), Arc::clone(&self.long_in_flight));
                tasks.spawn(async move {
                    let mut b = Client::builder(TokioExecutor::new());
                    b.pool_max_idle_per_host(0);
                    let client: Client<_, Empty<Bytes>> = b.build_http();
                    while !stop.is_cancelled() {
                        let ms = rng.range(ms.0, ms.1);
                        let Some(flight) = in_flight.get(idx) else {
                            return;
                        };
                        // In flight before looking at the virtual IP, so
                        // that a pause waiting for none in flight cannot
                        // miss a request about to start.
                        flight.fetch_add(1, Ordering::SeqCst);
                        if !vip.get(idx).is_some_and(|v| v.load(Ordering::SeqCst)) {
                            flight.fetch_sub(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        let uri: hyper::Uri = match format!("http://{f}/slow/{ms}").parse() {
                            Ok(u) => u,
                            Err(_) => return,
                        };
                        let call = async {
                            let resp = client.get(uri).await.map_err(|e| {
                                if e.is_connect() {
                                    "long_connect"
                                } else {
                                    "long_reset"
                                }
                            })?;
                            let ok = resp.status().is_success();
                            let code = resp.status().as_u16();
                            resp.into_body().collect().await.map_err(|_| "long_body")?;
                            if ok {
                                Ok(())
                            } else {
                                Err(format!("long_status_{code}"))
                            }
                        };
                        let r = tokio::time::timeout(Duration::from_secs(30), call)
                            .await
                            .unwrap_or_else(|_| Err("long_timeout".to_owned()));
                        flight.fetch_sub(1, Ordering::SeqCst);
                        if r.is_err() {
                            // Counted once, not once per spin of a tight loop.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        tally.count(r.err().as_deref());
                    }
                });
            }
        }
        LongRequests { stop, tasks }
    }
}

#[derive(Debug, Default)]
struct LongTally {
    requests: AtomicU64,
    failed: AtomicU64,
    by_cause: Mutex<BTreeMap<String, u64>>,
}

impl LongTally {
    fn count(&self, failure: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(cause) = failure {
            self.failed.fetch_add(1, Ordering::Relaxed);
            *self
                .by_cause
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(cause.to_owned())
                .or_default() += 1;
        }
    }

    fn add_to(&self, s: &mut Sample) {
        s.requests += self.requests.load(Ordering::Relaxed);
        s.failed += self.failed.load(Ordering::Relaxed);
        for (k, v) in self
            .by_cause
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            *s.failed_by_cause.entry(k.clone()).or_default() += v;
        }
    }
}

/// Long requests running; [`LongRequests::stop`] lets those in flight end.
#[derive(Debug)]
pub struct LongRequests {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl LongRequests {
    /// Stops sending and waits for the requests in flight.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
