//! Zero-downtime benchmark, measured from the balancer's side: on one
//! HAProxy setup (retries 0, no redispatch) under the same constant load
//! (keep-alive and new-connection clients), a hygiene rollout — in two
//! scenarios — beside a naive restart of each server in turn. Prints one
//! JSON line.
//!
//! - `base`: short requests.
//! - `inflight`: one request of `--inflight-ms` (1.5 s) in flight on each
//!   server when its drain starts.
//!
//! The ideal is what HAProxy shows, sampled every 20 ms from its runtime
//! API (`show stat`), not the engine's own timings: per target, from the
//! server first shown `DRAIN`/`MAINT` to its `scur + qcur` reaching 0, plus
//! the maintenance (the service stopped → answering again), plus from the
//! server shown back to its first plain `UP` after a fresh check. Batches of
//! one, so the ideal is the sum over targets. `overhead_ratio` = the
//! rollout's wall time / that ideal; `drain_detect_ms_max` = the longest
//! delay between HAProxy showing a server drained and the engine reporting
//! it. Failed requests come from the load generator and HAProxy's own
//! counters.
//!
//! `cargo run --release -p examples --bin bench-zero-downtime`

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Parser;
use examples::load::{Load, LoadConfig, LoadStats};
use examples::monitor::{number, phases, show_stat, Monitor};
use examples::scenario::{Scenario, ScenarioConfig};
use examples::BoxResult;
use hygiene_core::{
    Amount, Capabilities, EventKind, ListedTarget, LoadBalancer, Rollout, RolloutConfig, Stage,
    Target, TargetId, TargetStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Measure a hygiene rollout against what HAProxy shows, beside a naive
/// restart loop.
#[derive(Debug, Parser)]
struct Args {
    /// Number of backends.
    #[arg(long, default_value_t = 5)]
    servers: usize,
    /// Simulated patch time, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    patch_ms: u64,
    /// Load clients with keep-alive.
    #[arg(long, default_value_t = 24)]
    keepalive_clients: usize,
    /// Load clients opening a new connection per request.
    #[arg(long, default_value_t = 24)]
    fresh_clients: usize,
    /// Time each request takes on a server, in milliseconds.
    #[arg(long, default_value_t = 5)]
    work_ms: u64,
    /// The long request in flight when a drain starts (`inflight`), in ms.
    #[arg(long, default_value_t = 1500)]
    inflight_ms: u64,
    /// Path of the patch program (default: the `demo` binary next to this one).
    #[arg(long)]
    patch_program: Option<std::path::PathBuf>,
    /// Runs of each scenario; each prints its figures, and the median of
    /// their overhead ratios is `overhead_median`.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match bench(args).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-zero-downtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: Args) -> BoxResult<serde_json::Value> {
    let patch = Duration::from_millis(args.patch_ms);
    let exe = match &args.patch_program {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("demo"),
    };
    if !exe.is_file() {
        return Err(format!("patch program {} not found: build it with `cargo build --release -p examples --bin demo`", exe.display()).into());
    }
    let scn = Scenario::start(ScenarioConfig {
        servers: args.servers,
        work: Duration::from_millis(args.work_ms),
        ..ScenarioConfig::default()
    })
    .await?;
    let load_cfg = LoadConfig {
        keepalive_clients: args.keepalive_clients,
        fresh_clients: args.fresh_clients,
        ..LoadConfig::default()
    };
    let mut base = Vec::new();
    let mut inflight = Vec::new();
    for _ in 0..args.runs.max(1) {
        base.push(scenario(&scn, &exe, patch, load_cfg, None).await?);
        scn.wait_all_healthy(Duration::from_secs(15)).await?;
        inflight.push(
            scenario(
                &scn,
                &exe,
                patch,
                load_cfg,
                Some(Duration::from_millis(args.inflight_ms)),
            )
            .await?,
        );
        scn.wait_all_healthy(Duration::from_secs(15)).await?;
    }

    // The naive restart loop, same load.
    let before = counters(&scn).await?;
    let load = Load::start(scn.frontend(), load_cfg);
    let started = Instant::now();
    let naive = scn.naive_restart(patch, Duration::from_millis(500)).await;
    let naive_wall = started.elapsed();
    let naive_stats = load.stop().await;
    let haproxy_naive = counters(&scn).await?.since(&before);
    scn.stop().await;
    naive?;

    Ok(serde_json::json!({
        "base": summary(base),
        "inflight": summary(inflight),
        "naive": {
            "requests": naive_stats.requests,
            "failed": naive_stats.failed,
            "failed_by_kind": naive_stats.failed_by_kind,
            "haproxy": haproxy_naive.json(),
            "wall_s": round3(naive_wall.as_secs_f64()),
        },
        "servers": args.servers,
        "patch_ms": args.patch_ms,
        "work_ms": args.work_ms,
        "inflight_ms": args.inflight_ms,
        "clients": { "keepalive": args.keepalive_clients, "fresh": args.fresh_clients },
    }))
}

/// The runs of one scenario: each in full, the median overhead, and the
/// failures of all (from the load generator and HAProxy's counters).
fn summary(runs: Vec<serde_json::Value>) -> serde_json::Value {
    let mut ratios: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["overhead_ratio"].as_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let failed: u64 = runs.iter().filter_map(|r| r["failed"].as_u64()).sum();
    serde_json::json!({
        "overhead_median": median,
        "overhead_ratios": ratios,
        "failed": failed,
        "runs": runs,
    })
}

/// One hygiene rollout under load, measured from HAProxy's side.
async fn scenario(
    scn: &Scenario,
    exe: &std::path::Path,
    patch: Duration,
    load_cfg: LoadConfig,
    inflight: Option<Duration>,
) -> BoxResult<serde_json::Value> {
    let before = counters(scn).await?;
    let monitor = Monitor::start(
        scn.haproxy.socket(),
        "web",
        &scn.services,
        Duration::from_millis(20),
    );
    let load = Load::start(scn.frontend(), load_cfg);
    let long = Arc::new(LongRequests::default());
    let lb: Arc<dyn LoadBalancer> = match inflight {
        None => Arc::new(scn.balancer.clone()),
        Some(hold) => Arc::new(WithLongRequest {
            inner: scn.balancer.clone(),
            frontend: scn.frontend(),
            services: scn.services.clone(),
            hold,
            long: Arc::clone(&long),
        }),
    };
    let poll = lb.default_poll_interval();
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .build()?;
    let rollout = Rollout::new(lb, scn.patch_command(exe, patch, &[])?, config);
    let mut events = rollout.subscribe();
    let started = Instant::now();
    let run = tokio::spawn(rollout.run());
    let mut seen_drained: HashMap<TargetId, Instant> = HashMap::new();
    while let Some(e) = events.recv().await {
        if let EventKind::Phase {
            id,
            stage: Stage::Drained,
            ..
        } = &e.kind
        {
            seen_drained.entry(id.clone()).or_insert_with(Instant::now);
        }
    }
    let report = run.await??;
    let wall = started.elapsed();
    let stats: LoadStats = load.stop().await;
    let samples = monitor.stop().await;
    let haproxy = counters(scn).await?.since(&before);
    if !report.is_success() {
        return Err(format!("the hygiene rollout did not complete: {:?}", report.outcome).into());
    }
    let mut ideal = Duration::ZERO;
    let mut detect_max = Duration::ZERO;
    let mut per_target = serde_json::Map::new();
    for t in &report.targets {
        let name = t.id.as_str().rsplit('/').next().unwrap_or_default();
        let p = phases(&samples, name);
        let one = p
            .ideal()
            .ok_or_else(|| format!("the monitor did not see every phase of {}: {p:?}", t.id))?;
        ideal += one;
        let detect = match (p.drained, seen_drained.get(&t.id)) {
            (Some(shown), Some(seen)) => seen.saturating_duration_since(shown),
            _ => return Err(format!("no drain seen for {}", t.id).into()),
        };
        detect_max = detect_max.max(detect);
        per_target.insert(
            t.id.to_string(),
            serde_json::json!({
                "ideal_s": round3(one.as_secs_f64()),
                "drain_s": round3(p.drained.zip(p.out).map_or(0.0, |(d, o)| d.saturating_duration_since(o).as_secs_f64())),
                "drain_detect_ms": detect.as_millis(),
            }),
        );
    }
    let failed = stats.failed + long.failed.load(Ordering::Relaxed);
    Ok(serde_json::json!({
        "requests": stats.requests + long.done.load(Ordering::Relaxed),
        "failed": failed,
        "failed_by_kind": stats.failed_by_kind,
        "long_requests": { "done": long.done.load(Ordering::Relaxed), "failed": long.failed.load(Ordering::Relaxed) },
        "haproxy": haproxy.json(),
        "wall_s": round3(wall.as_secs_f64()),
        "ideal_s": round3(ideal.as_secs_f64()),
        "overhead_ratio": round3(wall.as_secs_f64() / ideal.as_secs_f64().max(1e-9)),
        "drain_detect_ms_max": detect_max.as_millis(),
        "poll_interval_ms": poll.as_millis(),
        "monitor_interval_ms": 20,
        "targets": per_target,
    }))
}

/// Long requests sent by [`WithLongRequest`], counted apart.
#[derive(Debug, Default)]
struct LongRequests {
    done: AtomicU64,
    failed: AtomicU64,
}

/// The balancer, with one long request put in flight on a server (through
/// HAProxy, `X-Server` routing) just before its drain: the `inflight`
/// scenario. Everything else is the real balancer.
#[derive(Debug)]
struct WithLongRequest {
    inner: hygiene_haproxy::HaproxyBalancer,
    frontend: std::net::SocketAddr,
    services: Vec<Arc<examples::hello::HelloService>>,
    hold: Duration,
    long: Arc<LongRequests>,
}

#[async_trait]
impl LoadBalancer for WithLongRequest {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn default_poll_interval(&self) -> Duration {
        self.inner.default_poll_interval()
    }
    fn enable_hint(&self, id: &TargetId) -> String {
        self.inner.enable_hint(id)
    }
    async fn adopt(&self, targets: &[Target]) -> hygiene_core::Result<()> {
        self.inner.adopt(targets).await
    }
    async fn list(&self) -> hygiene_core::Result<Vec<ListedTarget>> {
        self.inner.list().await
    }
    async fn status(&self, ids: &[TargetId]) -> hygiene_core::Result<Vec<TargetStatus>> {
        self.inner.status(ids).await
    }
    async fn drain(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        for id in ids {
            let name = id
                .as_str()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let Some(svc) = self.services.iter().find(|s| s.name() == name).cloned() else {
                continue;
            };
            let before = svc.in_flight();
            let (frontend, hold, long) = (self.frontend, self.hold, Arc::clone(&self.long));
            tokio::spawn(async move {
                match long_request(frontend, &name, hold).await {
                    Ok(()) => long.done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => long.failed.fetch_add(1, Ordering::Relaxed),
                };
            });
            // In flight on the server before the drain goes out.
            let deadline = Instant::now() + Duration::from_millis(500);
            while svc.in_flight() <= before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        self.inner.drain(ids).await
    }
    async fn disable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.inner.disable(ids).await
    }
    async fn enable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.inner.enable(ids).await
    }
}

/// `GET /slow/<ms>` on `server` through HAProxy; Ok when it answered 200.
async fn long_request(
    frontend: std::net::SocketAddr,
    server: &str,
    hold: Duration,
) -> BoxResult<()> {
    let mut s = tokio::net::TcpStream::connect(frontend).await?;
    let req = format!(
        "GET /slow/{} HTTP/1.1\r\nHost: bench\r\nX-Server: {server}\r\nConnection: close\r\n\r\n",
        hold.as_millis()
    );
    s.write_all(req.as_bytes()).await?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).await?;
    if reply.starts_with("HTTP/1.1 200") && reply.contains(&format!("From {server}")) {
        Ok(())
    } else {
        Err(format!("long request on {server}: {:?}", reply.lines().next()).into())
    }
}

/// HAProxy's own error counters for the backend's servers, summed.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    hrsp_5xx: u64,
    econ: u64,
    eresp: u64,
    srv_abrt: u64,
}

impl Counters {
    fn since(&self, before: &Self) -> Self {
        Self {
            hrsp_5xx: self.hrsp_5xx.saturating_sub(before.hrsp_5xx),
            econ: self.econ.saturating_sub(before.econ),
            eresp: self.eresp.saturating_sub(before.eresp),
            srv_abrt: self.srv_abrt.saturating_sub(before.srv_abrt),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "hrsp_5xx": self.hrsp_5xx, "econ": self.econ, "eresp": self.eresp, "srv_abrt": self.srv_abrt,
        })
    }
}

/// Reads the counters of the `web` backend's frontend and servers (`show
/// stat -1 7 -1`: the frontend counts the 503s HAProxy answers itself).
async fn counters(scn: &Scenario) -> BoxResult<Counters> {
    let mut c = Counters::default();
    for row in show_stat(scn.haproxy.socket(), "show stat -1 7 -1").await? {
        let n = |col: &str| number(&row, col);
        match row.get("svname").map(String::as_str).unwrap_or_default() {
            // HAProxy's own 503s (no server available) count on the frontend.
            "FRONTEND" => c.hrsp_5xx += n("hrsp_5xx"),
            "BACKEND" => {}
            _ => {
                c.hrsp_5xx += n("hrsp_5xx");
                c.econ += n("econ");
                c.eresp += n("eresp");
                c.srv_abrt += n("srv_abrt");
            }
        }
    }
    Ok(c)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
