//! Engine cost benchmark: a rollout over 10,000 in-memory targets, batch
//! 100, zero drain and execute time. Prints one JSON line.
//!
//! Run in release mode: `cargo run --release -p examples --bin bench-core`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hygiene_core::testing::{InMemoryBalancer, ScriptedExecutor};
use hygiene_core::{Amount, Rollout, RolloutConfig, TargetId};

/// Measure engine cost on the in-memory balancer.
#[derive(Debug, Parser)]
struct Args {
    /// Number of targets.
    #[arg(long, default_value_t = 10_000)]
    targets: usize,
    /// Batch size (count).
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args).await {
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

async fn bench(args: &Args) -> hygiene_core::Result<serde_json::Value> {
    let lb = InMemoryBalancer::new();
    for i in 0..args.targets {
        lb.add_target(hygiene_core::Target::new(TargetId::new(format!("t{i}"))?));
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
        return Err(hygiene_core::Error::invalid_config(
            "bench",
            format!("rollout did not complete: {:?}", report.outcome),
        ));
    }
    Ok(serde_json::json!({
        "targets": args.targets,
        "batches": report.batches,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "balancer_calls": report.balancer_calls,
        "balancer_calls_per_batch": report.balancer_calls as f64 / report.batches.max(1) as f64,
        "executor_calls": report.executor_calls,
        "us_per_target": (wall * 1e6 / args.targets as f64).round(),
    }))
}
