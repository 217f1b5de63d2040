//! A rollout over the in-memory balancer with the local-command executor:
//! the default scenario, which needs nothing installed. Prints progress and
//! the JSON report; exits non-zero unless every target was maintained.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hygiene_core::testing::{DrainProfile, InMemoryBalancer};
use hygiene_core::{
    Amount, EventKind, LocalCommand, Rollout, RolloutConfig, Stage, Target, TargetId,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

/// Patch an in-memory pool, one batch at a time.
#[derive(Debug, Parser)]
struct Args {
    /// Number of targets.
    #[arg(long, default_value_t = 6)]
    targets: usize,
    /// Batch size: a count ("2") or a percent ("25%").
    #[arg(long, default_value = "2")]
    batch: Amount,
    /// Targets that must stay healthy: a count or a percent.
    #[arg(long, default_value = "50%")]
    min_healthy: Amount,
    /// Simulated patch time per target, in milliseconds.
    #[arg(long, default_value_t = 500)]
    patch_ms: u64,
    /// Simulated drain time per target (in-flight requests ending), in milliseconds.
    #[arg(long, default_value_t = 300)]
    drain_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> hygiene_core::Result<bool> {
    let lb = InMemoryBalancer::new();
    for i in 1..=args.targets {
        let id = TargetId::new(format!("web-{i}"))?;
        lb.add_target(
            Target::new(id.clone())
                .with_address(format!("10.0.0.{i}"))
                .with_port(8080),
        );
        lb.set_drain_profile(
            &id,
            DrainProfile {
                initial: 3,
                duration: Duration::from_millis(args.drain_ms),
            },
        )?;
    }
    // The "patch": a fixed program; the target reaches it only through the
    // environment, never through the command line.
    let patch = format!(
        "echo \"patching $HYGIENE_TARGET_ID at $HYGIENE_TARGET_ADDRESS\"; sleep {}",
        args.patch_ms as f64 / 1000.0
    );
    let exec =
        LocalCommand::new("sh", ["-c", patch.as_str()])?.with_timeout(Duration::from_secs(60));
    let config = RolloutConfig::builder()
        .batch_size(args.batch)
        .min_healthy(args.min_healthy)
        .poll_interval(Duration::from_millis(100))
        .health_timeout(Duration::from_secs(10))
        .build()?;

    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("Ctrl-C: finishing the running batch, putting drained targets back");
            ctrl_c.cancel();
        }
    });

    let rollout = Rollout::new(lb.clone(), exec, config).with_cancellation(cancel);
    let mut events = rollout.subscribe();
    let bar = ProgressBar::new(args.targets as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} targets done  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = {
        let bar = bar.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event.kind {
                    EventKind::BatchStarted { index, targets } => {
                        bar.println(format!(
                            "batch {index}: {}",
                            targets
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    EventKind::Phase { id, stage, detail } => {
                        bar.set_message(format!("{id}: {stage}"));
                        if matches!(
                            stage,
                            Stage::Done
                                | Stage::Failed
                                | Stage::Skipped
                                | Stage::Restored
                                | Stage::Vanished
                        ) {
                            bar.inc(1);
                            bar.println(format!(
                                "  {id} {stage}{}",
                                detail.map(|d| format!(" ({d})")).unwrap_or_default()
                            ));
                        }
                    }
                    EventKind::Retry {
                        operation, error, ..
                    } => bar.println(format!("  retrying {operation}: {error}")),
                    _ => {}
                }
            }
        })
    };
    let report = rollout.run().await?;
    if progress.await.is_err() {
        eprintln!("progress display stopped early");
    }
    bar.finish_and_clear();
    println!("{}", report.to_json_pretty());
    for t in report.kept_out() {
        eprintln!("KEPT OUT: {} — {:?}", t.id, t.result);
    }
    Ok(report.is_success())
}
