//! The main demo: N "Hello, World! From `<name>`" services behind a real
//! HAProxy, patched one batch at a time by hygiene under a steady load,
//! with not one request failing.
//!
//! `demo` runs the scenario; `demo patch` is the simulated patch that the
//! rollout runs per target (through `LocalCommand`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use examples::load::{Load, LoadConfig};
use examples::scenario::{patch_main_with, run_rollout, PatchFaults, Scenario, ScenarioConfig};
use examples::BoxResult;
use hygiene_core::{
    Amount, Event, EventKind, Outcome, Rollout, RolloutConfig, Stage, TargetResult,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

/// Patch a live pool behind HAProxy without one failed request.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Number of services.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Batch size: a count ("1") or a percent ("50%").
    #[arg(long, default_value = "1")]
    batch: Amount,
    /// Simulated patch time per service, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    patch_ms: u64,
    /// Requests per second per load client (0: as fast as answers come).
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Load clients keeping their connection alive.
    #[arg(long, default_value_t = 2)]
    keepalive_clients: usize,
    /// Load clients opening a new connection per request.
    #[arg(long, default_value_t = 2)]
    fresh_clients: usize,
    /// Make the patch fail on these services (e.g. `s2`), to see a failure handled.
    #[arg(long)]
    fail_on: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The simulated patch (run by the rollout for each target).
    Patch {
        /// The demo's control address.
        #[arg(long)]
        control: SocketAddr,
        /// Patch time in milliseconds.
        #[arg(long)]
        patch_ms: u64,
        /// Fail on these services.
        #[arg(long)]
        fail_on: Vec<String>,
        /// Leave these services broken (500 to everything) and exit 0.
        #[arg(long)]
        break_on: Vec<String>,
        /// Hang on these services until killed.
        #[arg(long)]
        hang_on: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Patch {
        control,
        patch_ms,
        fail_on,
        break_on,
        hang_on,
    }) = &args.command
    {
        let faults = PatchFaults {
            fail_on: fail_on.clone(),
            break_on: break_on.clone(),
            hang_on: hang_on.clone(),
        };
        return match patch_main_with(*control, Duration::from_millis(*patch_ms), &faults).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("patch: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match demo(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(2)
        }
    }
}

async fn demo(args: Args) -> BoxResult<bool> {
    // Ctrl-C: the rollout stops starting work and puts drained services back.
    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nCtrl-C: finishing what is running, putting every service back in rotation…"
            );
            ctrl_c.cancel();
        }
    });

    println!("starting {} \"Hello, World!\" services behind HAProxy (retries 0, no redispatch, health checks on)…", args.servers);
    let scn = Scenario::start(ScenarioConfig {
        servers: args.servers,
        ..ScenarioConfig::default()
    })
    .await?;
    println!("HAProxy frontend at http://{}/", scn.frontend());
    let load = Load::start(
        scn.frontend(),
        LoadConfig {
            keepalive_clients: args.keepalive_clients,
            fresh_clients: args.fresh_clients,
            rate_per_client: (args.rate > 0).then_some(args.rate),
            ..LoadConfig::default()
        },
    );
    let result = rollout(&scn, &args, &load, cancel).await;
    let stats = load.stop().await;
    let out = scn.out_of_rotation().await;
    scn.stop().await;
    let (report, wall) = result?;

    println!("\n== summary ==");
    println!("requests sent:   {}", stats.requests);
    println!(
        "failed requests: {}{}",
        stats.failed,
        if stats.failed > 0 {
            format!(" {:?}", stats.failed_by_kind)
        } else {
            String::new()
        }
    );
    println!("answers by service: {:?}", stats.by_server);
    println!(
        "{:<8} {:>9} {:>9} {:>9}  result",
        "target", "drain", "patch", "health"
    );
    for t in &report.targets {
        let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{}ms", d.as_millis()));
        let result = match &t.result {
            TargetResult::Failed {
                reason,
                kept_out,
                restore_hint,
                ..
            } => format!(
                "FAILED: {reason}{}",
                if *kept_out {
                    format!(
                        " — KEPT OUT of rotation; to put it back: {}",
                        restore_hint.as_deref().unwrap_or("")
                    )
                } else {
                    String::new()
                }
            ),
            other => format!("{other:?}"),
        };
        println!(
            "{:<8} {:>9} {:>9} {:>9}  {result}",
            t.id,
            ms(t.timings.drain),
            ms(t.timings.execute),
            ms(t.timings.health)
        );
        for lost in &t.drain_lost {
            println!(
                "         drain lost: HAProxy put {} back in rotation during its maintenance (seen {}ms into the run); drained again, in rotation for at most {}",
                t.id,
                lost.seen_in_service.as_millis(),
                ms(lost.in_service_at_most())
            );
        }
        for note in &t.notes {
            println!("         note: {note}");
        }
    }
    println!(
        "rollout: {:?} in {:.1}s ({} balancer calls)",
        report.outcome,
        wall.as_secs_f64(),
        report.balancer_calls
    );
    match out {
        Ok(out) if out.is_empty() => println!("every service is in rotation"),
        Ok(out) => println!(
            "out of rotation: {}",
            out.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => println!("could not read HAProxy's final state: {e}"),
    }
    Ok(stats.failed == 0 && report.outcome == Outcome::Completed && report.is_success())
}

async fn rollout(
    scn: &Scenario,
    args: &Args,
    load: &Load,
    cancel: CancellationToken,
) -> BoxResult<(hygiene_core::Report, Duration)> {
    let exe = std::env::current_exe()?;
    let exec = scn.patch_command(&exe, Duration::from_millis(args.patch_ms), &args.fail_on)?;
    let config = RolloutConfig::builder()
        .batch_size(args.batch)
        .drain_timeout(Duration::from_secs(30))
        .health_timeout(Duration::from_secs(20))
        .build()?;
    let rollout = Rollout::new(scn.balancer.clone(), exec, config).with_cancellation(cancel);

    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>6} {spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut lines: BTreeMap<String, ProgressBar> = BTreeMap::new();
    for s in &scn.services {
        let pb = multi.add(
            ProgressBar::new_spinner()
                .with_style(style.clone())
                .with_prefix(format!("web/{}", s.name())),
        );
        pb.set_message("pending");
        pb.enable_steady_tick(Duration::from_millis(120));
        lines.insert(format!("web/{}", s.name()), pb);
    }
    let bar = multi.add(ProgressBar::new(scn.services.len() as u64));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} done  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let on_event = |e: &Event| {
        let stats = load.stats();
        bar.set_message(format!(
            "{} requests, {} failed",
            stats.requests, stats.failed
        ));
        if let EventKind::Phase { id, stage, detail } = &e.kind {
            if let Some(pb) = lines.get(id.as_str()) {
                let t = started.elapsed().as_secs_f64();
                pb.set_message(format!(
                    "{stage} (t={t:.1}s){}",
                    detail
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ));
                if matches!(
                    stage,
                    Stage::Done | Stage::Failed | Stage::Skipped | Stage::Restored
                ) {
                    pb.finish();
                    bar.inc(1);
                }
            }
        }
    };
    let (report, _timeline) = run_rollout(scn, rollout, on_event).await?;
    for pb in lines.values() {
        pb.finish();
    }
    bar.abandon();
    Ok((report, started.elapsed()))
}
