//! A rollout over one HAProxy backend with a durable journal: `run`, or,
//! after the process died, `resume` or `restore`. Prints the report as JSON
//! on stdout; exit code 0 when every target is done or put back.
//!
//! `rollout run --socket /run/haproxy/admin.sock --backend web --journal
//! /var/lib/hygiene/web.jsonl -- /usr/local/bin/patch-and-restart`
//!
//! `--socket` may be given once per HAProxy node (an HA pair: every change
//! goes to every node). Ctrl-C (SIGINT) cancels: nothing new starts,
//! drained targets go back, running maintenances finish and are verified.
//!
//! The crash tests kill it with SIGKILL at every kind of journal record and
//! resume it; the soak kills it, interrupts it and reloads HAProxy under it. (The `hygiene` command will grow out of it.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hygiene_core::journal::FileJournal;
use hygiene_core::{Amount, Error, LocalCommand, OnInterrupted, Rollout, RolloutConfig};
use hygiene_haproxy::{HaproxyBalancer, Node};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A new run (refused over an unfinished journal).
    Run,
    /// Finish the run the journal says did not finish.
    Resume,
    /// Put back everything that run took out.
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Interrupted {
    /// Keep a target whose maintenance outcome is unknown out, named.
    Fail,
    /// Run its maintenance again.
    Rerun,
}

/// Roll a maintenance over an HAProxy backend, with a journal.
#[derive(Debug, Parser)]
struct Args {
    /// What to do.
    #[arg(value_enum)]
    mode: Mode,
    /// HAProxy's admin socket (a Unix path); repeat it for each node.
    #[arg(long, required = true)]
    socket: Vec<PathBuf>,
    /// Each node's master CLI socket (`haproxy -W -S`), in the order of
    /// `--socket`: a drain then counts the requests a reload's old worker
    /// still finishes.
    #[arg(long)]
    master_socket: Vec<PathBuf>,
    /// The backend to roll.
    #[arg(long, default_value = "web")]
    backend: String,
    /// The journal file.
    #[arg(long)]
    journal: PathBuf,
    /// Batch size: a count ("1") or a percent ("50%").
    #[arg(long, default_value = "1")]
    batch: Amount,
    /// Failed targets tolerated before the run stops starting new ones: a
    /// count or a percent of the selected targets.
    #[arg(long, default_value = "0")]
    max_failures: Amount,
    /// Targets that must stay healthy and in service: a count or a percent
    /// of the pool.
    #[arg(long, default_value = "0")]
    min_healthy: Amount,
    /// Seconds to wait for capacity before aborting, when `min_healthy`
    /// lets no target out.
    #[arg(long, default_value_t = 300)]
    capacity_timeout_s: u64,
    /// Status poll interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Seconds a target has to be healthy after its enable.
    #[arg(long, default_value_t = 30)]
    health_timeout_s: u64,
    /// Time limit of one target's maintenance, in milliseconds (the
    /// program's process group is killed past it).
    #[arg(long, default_value_t = 600_000)]
    execute_timeout_ms: u64,
    /// On resume, a maintenance whose outcome is unknown.
    #[arg(long, value_enum, default_value = "fail")]
    on_interrupted: Interrupted,
    /// The maintenance: a program and its arguments (after `--`); each
    /// target reaches it as HYGIENE_TARGET_ID / HYGIENE_TARGET_ADDRESS.
    #[arg(last = true)]
    command: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, Error> {
    let mut lb = HaproxyBalancer::builder();
    if !args.master_socket.is_empty() && args.master_socket.len() != args.socket.len() {
        return Err(Error::invalid_config(
            "master_socket",
            "give one --master-socket per --socket, in the same order, or none",
        ));
    }
    for (k, socket) in args.socket.iter().enumerate() {
        let mut node = Node::unix(socket);
        if let Some(m) = args.master_socket.get(k) {
            node = node.master_socket(m);
        }
        lb = lb.node(node);
    }
    let lb = lb.backend(args.backend.as_str()).build()?;
    let (program, rest) = match args.command.split_first() {
        Some((p, r)) => (p.clone(), r.to_vec()),
        None if args.mode == Mode::Restore => ("true".to_owned(), Vec::new()),
        None => {
            return Err(Error::invalid_config(
                "command",
                "no maintenance given: add `-- <program> [args…]`",
            ))
        }
    };
    let execute_timeout = Duration::from_millis(args.execute_timeout_ms);
    let exec = LocalCommand::new(program, rest)?.with_timeout(execute_timeout);
    let config = RolloutConfig::builder()
        .batch_size(args.batch)
        .max_failures(args.max_failures)
        .min_healthy(args.min_healthy)
        .capacity_timeout(Duration::from_secs(args.capacity_timeout_s))
        .poll_interval(Duration::from_millis(args.poll_ms))
        .health_timeout(Duration::from_secs(args.health_timeout_s))
        // The command's own limit kills it; the engine's is a backstop.
        .execute_timeout(execute_timeout + Duration::from_secs(10))
        .on_interrupted(match args.on_interrupted {
            Interrupted::Fail => OnInterrupted::Fail,
            Interrupted::Rerun => OnInterrupted::Rerun,
        })
        .build()?;
    // Ctrl-C: start nothing new, put drained targets back, let running
    // maintenances finish (their children are in their own process groups
    // and do not get the terminal's SIGINT).
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing what runs, putting drained targets back");
            on_signal.cancel();
        }
    });
    let rollout = Rollout::new(lb, exec, config)
        .with_journal(FileJournal::open(&args.journal)?)
        .with_cancellation(cancel);
    let report = match args.mode {
        Mode::Run => rollout.run().await?,
        Mode::Resume => rollout.resume().await?,
        Mode::Restore => rollout.restore().await?,
    };
    println!("{}", report.to_json_pretty());
    for t in report.kept_out() {
        eprintln!("KEPT OUT OF ROTATION: {} ({:?})", t.id, t.result);
    }
    Ok(report.kept_out().next().is_none() && report.failed().next().is_none())
}
