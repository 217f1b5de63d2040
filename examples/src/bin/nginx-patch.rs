//! `nginx-patch`: rolling maintenance of the servers of NGINX Plus upstreams.
//!
//! Each server is drained through the NGINX Plus API (on every instance of
//! an HA pair), the command runs for it once it is drained, and it is put
//! back once healthy. The command gets the server in `HYGIENE_TARGET_ID`,
//! `HYGIENE_TARGET_ADDRESS` and `HYGIENE_TARGET_PORT`. The JSON report goes
//! to stdout, progress to stderr. Ctrl-C cancels cleanly.
//!
//! ```text
//! NGINX_API_PASSWORD=… nginx-patch --api https://lb1:8443/api --api https://lb2:8443/api \
//!     --upstream backend --user hygiene --ca-cert ca.pem \
//!     --batch 25% --min-healthy 50% --max-failures 0 -- /usr/local/bin/patch-host --reboot
//! ```
//!
//! Exit status: 0 when every server was maintained, 1 when the run finished
//! with failures or was cancelled, 2 when it could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hygiene_core::{
    Amount, Error, Event, HttpProbe, LocalCommand, OnDrainTimeout, OnFailure, Rollout,
    RolloutConfig, Selection, TargetId, TcpProbe,
};
use hygiene_nginx::{HealthChecks, NginxBalancer};
use tokio_util::sync::CancellationToken;

/// Rolling maintenance of NGINX Plus upstream servers.
#[derive(Debug, Parser)]
#[command(name = "nginx-patch", version)]
struct Args {
    /// API URL of an nginx instance (`https://lb1:8443/api`); repeat for an HA pair.
    #[arg(long = "api", required = true, value_name = "URL")]
    apis: Vec<String>,
    /// An http upstream whose servers to maintain (repeatable).
    #[arg(long = "upstream", value_name = "NAME")]
    upstreams: Vec<String>,
    /// A stream upstream whose servers to maintain (repeatable; drained by
    /// `down` and waiting for its connections to end).
    #[arg(long = "stream-upstream", value_name = "NAME")]
    stream_upstreams: Vec<String>,
    /// Basic auth user; the password is read from the variable named by `--password-env`.
    #[arg(long)]
    user: Option<String>,
    /// Environment variable holding the basic auth password (never a command-line argument).
    #[arg(long, default_value = "NGINX_API_PASSWORD", value_name = "VAR")]
    password_env: String,
    /// PEM file of a CA to trust for the API's certificate.
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// PEM file with a client private key and certificate chain.
    #[arg(long, value_name = "PEM")]
    client_identity: Option<PathBuf>,
    /// Time limit of one API request, seconds.
    #[arg(long, default_value_t = 10)]
    api_timeout_secs: u64,
    /// The upstreams have no active `health_check`: nginx's `up` counts as
    /// healthy (combine with --probe-tcp or --probe-http).
    #[arg(long)]
    passive_health: bool,
    /// Only these targets (`backend/3` or `backend/10.0.0.5:8080`), in this order; default all.
    #[arg(long = "target", value_name = "ID")]
    targets: Vec<String>,
    /// Servers per batch: a count (`2`) or a percent of the selection (`25%`).
    #[arg(long, default_value = "1")]
    batch: Amount,
    /// Servers of the pool that must stay healthy and in service: count or percent.
    #[arg(long, default_value = "0")]
    min_healthy: Amount,
    /// The run aborts when MORE than this many servers failed (0: on the first failure).
    #[arg(long, default_value = "0")]
    max_failures: Amount,
    /// First batch is a single server.
    #[arg(long)]
    canary: bool,
    /// Put failed servers back in rotation instead of keeping them out.
    #[arg(long)]
    restore_on_failure: bool,
    /// Seconds to wait for in-flight work to end.
    #[arg(long, default_value_t = 300)]
    drain_timeout_secs: u64,
    /// Run the command anyway when the drain times out (cutting what is in flight).
    #[arg(long)]
    proceed_on_drain_timeout: bool,
    /// Seconds to wait for a fresh healthy check after the enable.
    #[arg(long, default_value_t = 300)]
    health_timeout_secs: u64,
    /// Seconds a server must stay healthy before the next batch.
    #[arg(long, default_value_t = 0)]
    warmup_secs: u64,
    /// Status poll interval, milliseconds (default: the balancer's, 500 ms).
    #[arg(long)]
    poll_ms: Option<u64>,
    /// Seconds the command may run per server.
    #[arg(long, default_value_t = 600)]
    command_timeout_secs: u64,
    /// Before putting a server back, check that this TCP port accepts connections.
    #[arg(long, value_name = "PORT", conflicts_with = "probe_http")]
    probe_tcp: Option<u16>,
    /// Before putting a server back, GET this path on its port and expect 2xx.
    #[arg(long, value_name = "PATH")]
    probe_http: Option<String>,
    /// The command to run per server, after `--`.
    #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn read_pem(path: &PathBuf, field: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::invalid_config(field, format!("cannot read {}: {e}", path.display())))
}

fn balancer(args: &Args) -> Result<NginxBalancer, Error> {
    let mut b = NginxBalancer::builder()
        .instances(args.apis.iter().cloned())
        .timeout(Duration::from_secs(args.api_timeout_secs.max(1)));
    for u in &args.upstreams {
        b = b.upstream(u.clone());
    }
    for u in &args.stream_upstreams {
        b = b.stream_upstream(u.clone());
    }
    if let Some(user) = &args.user {
        let password = std::env::var(&args.password_env).map_err(|_| {
            Error::invalid_config(
                "password",
                format!("--user is given but ${} is not set", args.password_env),
            )
        })?;
        b = b.basic_auth(user.clone(), password);
    }
    if let Some(p) = &args.ca_cert {
        b = b.ca_cert_pem(read_pem(p, "ca_cert")?);
    }
    if let Some(p) = &args.client_identity {
        b = b.client_identity_pem(read_pem(p, "client_identity")?);
    }
    if args.passive_health {
        b = b.health_checks(HealthChecks::Passive);
    }
    b.build()
}

fn config(args: &Args) -> Result<RolloutConfig, Error> {
    let mut c = RolloutConfig::builder()
        .batch_size(args.batch)
        .min_healthy(args.min_healthy)
        .max_failures(args.max_failures)
        .canary(args.canary)
        .on_failure(if args.restore_on_failure {
            OnFailure::Restore
        } else {
            OnFailure::KeepOut
        })
        .drain_timeout(Duration::from_secs(args.drain_timeout_secs))
        .on_drain_timeout(if args.proceed_on_drain_timeout {
            OnDrainTimeout::Proceed
        } else {
            OnDrainTimeout::Fail
        })
        .health_timeout(Duration::from_secs(args.health_timeout_secs))
        .warmup(Duration::from_secs(args.warmup_secs));
    if let Some(ms) = args.poll_ms {
        c = c.poll_interval(Duration::from_millis(ms));
    }
    if !args.targets.is_empty() {
        let ids = args
            .targets
            .iter()
            .map(TargetId::new)
            .collect::<Result<Vec<_>, _>>()?;
        c = c.selection(Selection::Named(ids));
    }
    c.build()
}

fn progress(ev: &Event) {
    match serde_json::to_string(ev) {
        Ok(line) => eprintln!("{line}"),
        Err(e) => eprintln!("event not printable: {e}"),
    }
}

async fn run(args: Args) -> Result<bool, Error> {
    let lb = balancer(&args)?;
    let config = config(&args)?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| Error::invalid_config("command", "no command given after --"))?;
    let exec = LocalCommand::new(program, rest)?
        .with_timeout(Duration::from_secs(args.command_timeout_secs));

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "cancelling: nothing new starts; drained servers go back, running ones finish"
            );
            on_signal.cancel();
        }
    });

    let mut rollout = Rollout::new(lb, exec, config).with_cancellation(cancel);
    rollout = match (args.probe_tcp, &args.probe_http) {
        (Some(port), _) => rollout.with_probe(TcpProbe::new().with_port(port)),
        (None, Some(path)) => rollout.with_probe(HttpProbe::new(path.clone())?),
        (None, None) => rollout,
    };
    let mut events = rollout.subscribe();
    let printer = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            progress(&ev);
        }
    });
    let report = rollout.run().await?;
    if let Err(e) = printer.await {
        eprintln!("progress printer stopped: {e}");
    }
    println!("{}", report.to_json_pretty());
    for t in report.kept_out() {
        eprintln!("KEPT OUT OF ROTATION: {} ({:?})", t.id, t.result);
    }
    Ok(report.is_success())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.upstreams.is_empty() && args.stream_upstreams.is_empty() {
        eprintln!("nginx-patch: give at least one --upstream or --stream-upstream");
        return ExitCode::from(2);
    }
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("nginx-patch: {e}");
            ExitCode::from(2)
        }
    }
}
