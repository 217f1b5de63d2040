//! What Caddy's own reloads cost under load, without hygiene: a real Caddy
//! (`HYGIENE_CADDY_BIN`, Debian's 2.6.2) in front of three services under
//! the load the Caddy rollout test uses, and `--reloads` configuration
//! changes that change nothing that matters (the health check interval),
//! `--every` apart. Every change through Caddy's admin API restarts its
//! HTTP server; the failed requests counted here by the load generator are
//! the baseline a Caddy rollout (two changes per target) cannot go under,
//! whoever makes the changes. The line says whether the host migrates a
//! replaced listener's accept queue (`tcp_migrate_req`; without it new
//! connections are reset) and how many GETs the keep-alive clients sent
//! again because a reload closed their idle connection (`retried`; `--raw`
//! counts them as failures instead). Prints one JSON line.
//!
//! `cargo run --release -p examples --bin bench-caddy-reloads`

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use examples::caddy::{caddy_bin, Caddy};
use examples::hello::HelloService;
use examples::load::{Load, LoadConfig};
use examples::BoxResult;

/// Measure failed requests caused by Caddy's reloads alone.
#[derive(Debug, Parser)]
struct Args {
    /// Configuration changes to make.
    #[arg(long, default_value_t = 40)]
    reloads: u32,
    /// Time between two changes, in milliseconds.
    #[arg(long, default_value_t = 300)]
    every: u64,
    /// Caddy's `grace_period` for the old server at a reload ("10s").
    #[arg(long)]
    grace_period: Option<String>,
    /// Caddy's `shutdown_delay` before the old server stops ("1s").
    #[arg(long)]
    shutdown_delay: Option<String>,
    /// Keep-alive clients do not send a GET again when a reload closed
    /// their idle connection as it went out (what hyper's pool alone does).
    #[arg(long)]
    raw: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(&args)) {
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

async fn bench(args: &Args) -> BoxResult<serde_json::Value> {
    let bin =
        caddy_bin().ok_or("caddy not found: apt-get install -y caddy, or set HYGIENE_CADDY_BIN")?;
    let mut services = Vec::new();
    for n in ["s1", "s2", "s3"] {
        services.push(HelloService::start(n, Duration::from_millis(20)).await?);
    }
    let dials: Vec<String> = services.iter().map(|s| s.addr().to_string()).collect();
    let mut app = serde_json::Map::new();
    if let Some(g) = &args.grace_period {
        app.insert("grace_period".into(), g.clone().into());
    }
    if let Some(d) = &args.shutdown_delay {
        app.insert("shutdown_delay".into(), d.clone().into());
    }
    let caddy = Caddy::start_with(&bin, &dials, app).await?;
    let load = Load::start(
        caddy.http,
        LoadConfig {
            keepalive_clients: 6,
            fresh_clients: 6,
            rate_per_client: None,
            timeout: Duration::from_secs(10),
            retry_idle_races: !args.raw,
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..args.reloads {
        caddy
            .patch(
                "apps/http/servers/web/routes/0/handle/0/health_checks/active/interval",
                serde_json::json!(format!("{}ms", 300 + i)),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(args.every)).await;
    }
    let stats = load.stop().await;
    Ok(serde_json::json!({
        "bench": "caddy_reloads",
        "reloads": args.reloads,
        "grace_period": args.grace_period,
        "shutdown_delay": args.shutdown_delay,
        "requests": stats.requests,
        "failed": stats.failed,
        "failed_by_kind": stats.failed_by_kind,
        "retried": stats.retried,
        "raw": args.raw,
        "tcp_migrate_req": examples::caddy::tcp_migrate_req(),
        "failed_per_100_reloads": if args.reloads == 0 { 0.0 } else {
            f64::from(u32::try_from(stats.failed).unwrap_or(u32::MAX)) * 100.0 / f64::from(args.reloads)
        },
    }))
}
