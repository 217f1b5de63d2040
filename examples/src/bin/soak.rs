//! The fault soak (issue 13): rollouts in a loop over two real HAProxy
//! nodes under load, with faults drawn from a seed; one JSON line at the
//! end. Exit code 0 when every invariant held, 1 when one broke, 2 when
//! the soak itself could not run.
//!
//! `soak --minutes 20 --seed 7` (replay a run with its seed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use examples::soak::{self, SoakConfig};

/// Rollouts in a loop over two HAProxy nodes, with seeded faults.
#[derive(Debug, Parser)]
struct Args {
    /// Stop starting rollouts after this many minutes.
    #[arg(long)]
    minutes: Option<f64>,
    /// Stop after this many rollouts.
    #[arg(long)]
    rollouts: Option<usize>,
    /// The seed of every random choice (printed; replay with it).
    #[arg(long)]
    seed: Option<u64>,
    /// Services in the pool.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Most faults per rollout.
    #[arg(long, default_value_t = 3)]
    max_faults: usize,
    /// The rollout's poll interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// The simulated patch's time, in milliseconds.
    #[arg(long, default_value_t = 300)]
    patch_ms: u64,
    /// Keep journals and logs here.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A line per rollout on stderr.
    #[arg(long)]
    verbose: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_secs())
    });
    let mut cfg = SoakConfig::new(&exe);
    cfg.seed = seed;
    cfg.duration = args
        .minutes
        .map(|m| Duration::from_secs_f64(m.max(0.0) * 60.0));
    cfg.rollouts = args.rollouts;
    if cfg.duration.is_none() && cfg.rollouts.is_none() {
        cfg.duration = Some(Duration::from_secs(60));
    }
    cfg.servers = args.servers.max(2);
    cfg.max_faults = args.max_faults;
    cfg.poll = Duration::from_millis(args.poll_ms);
    cfg.patch = Duration::from_millis(args.patch_ms);
    cfg.dir = args.dir;
    cfg.verbose = args.verbose;
    eprintln!("soak: seed {seed} (replay with --seed {seed})");
    // Ctrl-C drops the soak: every HAProxy, service and rollout it
    // started is killed with it (kill on drop).
    let result = tokio::select! {
        r = soak::run(cfg) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("soak: interrupted");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(report) => {
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("soak: {e}"),
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}
