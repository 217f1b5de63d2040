//! Zero-downtime benchmark: on one HAProxy setup (retries 0, no redispatch)
//! under the same constant load (keep-alive clients and new-connection
//! clients), compares the hygiene rollout with a naive restart of each
//! server in turn. Prints one JSON line.
//!
//! `cargo run --release -p examples --bin bench-zero-downtime`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use examples::load::{Load, LoadConfig};
use examples::scenario::{ideal, run_rollout, Scenario, ScenarioConfig};
use examples::BoxResult;
use hygiene_core::{Amount, Rollout, RolloutConfig};

/// Compare a hygiene rollout with a naive restart loop.
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
    /// Time each request takes on a server, in milliseconds (so that
    /// requests are in flight when a drain starts).
    #[arg(long, default_value_t = 5)]
    work_ms: u64,
    /// Path of the patch program (default: the `demo` binary next to this one).
    #[arg(long)]
    patch_program: Option<std::path::PathBuf>,
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
    let exe = match args.patch_program {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("demo"),
    };
    if !exe.is_file() {
        return Err(format!("patch program {} not found: build it with `cargo build --release -p examples --bin demo`", exe.display()).into());
    }
    let scn = Scenario::start(ScenarioConfig {
        servers: args.servers,
        ..ScenarioConfig::default()
    })
    .await?;
    let load_cfg = LoadConfig {
        keepalive_clients: args.keepalive_clients,
        fresh_clients: args.fresh_clients,
        ..LoadConfig::default()
    };

    // 1. hygiene.
    let load = Load::start(scn.frontend(), load_cfg);
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .build()?;
    let rollout = Rollout::new(
        scn.balancer.clone(),
        scn.patch_command(&exe, patch, &[])?,
        config,
    );
    let started = Instant::now();
    let result = run_rollout(&scn, rollout, |_| {}).await;
    let wall = started.elapsed();
    let hygiene_stats = load.stop().await;
    let (report, timeline) = result?;
    if !report.is_success() {
        return Err(format!("the hygiene rollout did not complete: {:?}", report.outcome).into());
    }
    let ideal = ideal(&report);
    scn.wait_all_healthy(Duration::from_secs(15)).await?;

    // 2. naive restart loop, same load.
    let load = Load::start(scn.frontend(), load_cfg);
    let started = Instant::now();
    let naive = scn.naive_restart(patch, Duration::from_millis(500)).await;
    let naive_wall = started.elapsed();
    let naive_stats = load.stop().await;
    scn.stop().await;
    naive?;

    Ok(serde_json::json!({
        "hygiene": {
            "requests": hygiene_stats.requests,
            "failed": hygiene_stats.failed,
            "failed_by_kind": hygiene_stats.failed_by_kind,
            "wall_s": round3(report.duration.as_secs_f64()),
            "ideal_s": round3(ideal.as_secs_f64()),
            "overhead_ratio": round3(report.duration.as_secs_f64() / ideal.as_secs_f64().max(1e-9)),
            "drain_detect_ms_max": timeline.drain_detect_max.as_millis(),
            "poll_interval_ms": 100,
            "outer_wall_s": round3(wall.as_secs_f64()),
        },
        "naive": {
            "requests": naive_stats.requests,
            "failed": naive_stats.failed,
            "failed_by_kind": naive_stats.failed_by_kind,
            "wall_s": round3(naive_wall.as_secs_f64()),
        },
        "servers": args.servers,
        "patch_ms": args.patch_ms,
        "work_ms": args.work_ms,
        "clients": { "keepalive": args.keepalive_clients, "fresh": args.fresh_clients },
    }))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
