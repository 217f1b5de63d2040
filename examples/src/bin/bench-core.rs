//! Engine benchmarks on the in-memory balancer. Prints one JSON line:
//!
//! - `engine`: a rollout over 10,000 targets, batch 100, zero drain and
//!   execute time, in real time: what the engine itself costs.
//! - `pacing`: a rollout of targets whose maintenance takes 1–5 s (drawn
//!   from a seeded generator), in virtual time, once with batches and once
//!   with a rolling window of the same width, against the lower bound
//!   max(Σ times / width, longest time).
//!
//! Run in release mode: `cargo run --release -p examples --bin bench-core`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hygiene_core::testing::{InMemoryBalancer, Script, ScriptedExecutor};
use hygiene_core::{Amount, Pacing, Rollout, RolloutConfig, Target, TargetId};

/// Measure engine cost and pacing on the in-memory balancer.
#[derive(Debug, Parser)]
struct Args {
    /// Number of targets of the cost run.
    #[arg(long, default_value_t = 10_000)]
    targets: usize,
    /// Batch size (count) of the cost run.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Number of targets of the pacing run.
    #[arg(long, default_value_t = 200)]
    pacing_targets: usize,
    /// Width (batch size) of the pacing run.
    #[arg(long, default_value_t = 4)]
    pacing_width: usize,
    /// Seed of the maintenance times.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> hygiene_core::Result<serde_json::Value> {
    let real = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| hygiene_core::Error::invalid_config("runtime", e.to_string()))?;
    let engine = real.block_on(cost(args))?;
    let pacing = pacing(args)?;
    Ok(serde_json::json!({ "engine": engine, "pacing": pacing }))
}

fn failed(what: &str, report: &hygiene_core::Report) -> hygiene_core::Error {
    hygiene_core::Error::invalid_config(
        "bench",
        format!("{what}: rollout did not complete: {:?}", report.outcome),
    )
}

async fn cost(args: &Args) -> hygiene_core::Result<serde_json::Value> {
    let lb = InMemoryBalancer::new();
    for i in 0..args.targets {
        lb.add_target(Target::new(TargetId::new(format!("t{i}"))?));
    }
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(args.batch))
        .poll_interval(Duration::from_millis(1))
        .build()?;
    let started = Instant::now();
    let report = Rollout::new(lb.clone(), ScriptedExecutor::new(), config)
        .run()
        .await?;
    let wall = started.elapsed().as_secs_f64();
    if !report.is_success() {
        return Err(failed("cost", &report));
    }
    Ok(serde_json::json!({
        "targets": args.targets,
        "batches": report.batches,
        "wall_s": round3(wall),
        "balancer_calls": report.balancer_calls,
        "balancer_calls_per_batch": report.balancer_calls as f64 / report.batches.max(1) as f64,
        "executor_calls": report.executor_calls,
        "us_per_target": (wall * 1e6 / args.targets as f64).round(),
    }))
}

/// Maintenance times in whole milliseconds from 1 s to 5 s (splitmix64:
/// the same seed gives the same times on every machine).
fn times(n: usize, seed: u64) -> Vec<Duration> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            Duration::from_millis(1000 + z % 4001)
        })
        .collect()
}

fn pacing(args: &Args) -> hygiene_core::Result<serde_json::Value> {
    let times = times(args.pacing_targets, args.seed);
    let width = args.pacing_width.max(1);
    let sum: Duration = times.iter().sum();
    let longest = times.iter().max().copied().unwrap_or_default();
    let bound = (sum / u32::try_from(width).unwrap_or(u32::MAX)).max(longest);
    let mut wall = Vec::new();
    for pacing in [Pacing::Batches, Pacing::Window] {
        // Virtual time: the runtime's clock only moves when every task
        // waits, so 1–5 s maintenances take no real time.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| hygiene_core::Error::invalid_config("runtime", e.to_string()))?;
        wall.push(rt.block_on(async {
            let lb = InMemoryBalancer::new();
            let exec = ScriptedExecutor::new();
            for (i, t) in times.iter().enumerate() {
                let id = TargetId::new(format!("t{i}"))?;
                lb.add_target(Target::new(id.clone()));
                exec.script(
                    &id,
                    Script {
                        duration: *t,
                        ..Script::default()
                    },
                );
            }
            let config = RolloutConfig::builder()
                .batch_size(Amount::Count(width))
                .pacing(pacing)
                .poll_interval(Duration::from_millis(100))
                .build()?;
            let started = tokio::time::Instant::now();
            let report = Rollout::new(lb, exec, config).run().await?;
            if !report.is_success() {
                return Err(failed("pacing", &report));
            }
            Ok::<_, hygiene_core::Error>(started.elapsed())
        })?);
    }
    let (batches, window) = (wall[0].as_secs_f64(), wall[1].as_secs_f64());
    let bound = bound.as_secs_f64();
    Ok(serde_json::json!({
        "targets": args.pacing_targets,
        "width": width,
        "seed": args.seed,
        "lower_bound_s": round3(bound),
        "batches_s": round3(batches),
        "window_s": round3(window),
        "window_over_bound": round3(window / bound),
        "batches_over_window": round3(batches / window),
    }))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
