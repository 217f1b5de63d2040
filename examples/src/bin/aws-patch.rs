//! Rolling patch of EC2 instances behind ELBv2 target groups with SSM Run
//! Command: each batch is deregistered, patched, registered again with the
//! same port, and must be healthy in every target group before the next.
//!
//! Against AWS (credentials from the standard chain):
//! `aws-patch --target-group arn:…:targetgroup/web/… --batch 10% --min-healthy 80%`
//!
//! Against a moto server you started (no SSM agent info there, so skip the
//! preflight and read status per instance):
//! `aws-patch --endpoint-url http://127.0.0.1:5000 --target-group arn:… --skip-preflight --status-api get`
//!
//! Self-contained demo that starts moto and builds a pool in it:
//! `aws-patch --moto-demo 6 --batch 2`

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hygiene_aws::moto::MotoServer;
use hygiene_aws::{Elbv2Balancer, PreflightCheck, SsmExecutor, StatusApi};
use hygiene_core::{Amount, CancellationToken, Error, EventKind, Rollout, RolloutConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusApiArg {
    /// ListCommandInvocations: one call per command (≤ 50 instances).
    List,
    /// GetCommandInvocation: one call per instance (moto has only this).
    Get,
}

/// Patch the instances behind ELBv2 target groups one batch at a time.
#[derive(Debug, Parser)]
struct Args {
    /// A target group ARN of the pool (repeat for several).
    #[arg(long = "target-group", value_name = "ARN")]
    target_groups: Vec<String>,
    /// A load balancer ARN: the pool is all its target groups.
    #[arg(long, value_name = "ARN", conflicts_with = "target_groups")]
    load_balancer: Option<String>,
    /// SSM document to run.
    #[arg(long, default_value = "AWS-RunPatchBaseline")]
    document: String,
    /// Document version ($LATEST, $DEFAULT, 3).
    #[arg(long)]
    document_version: Option<String>,
    /// Document parameter NAME=VALUE (repeat; a repeated name adds values).
    #[arg(long = "parameter", value_name = "NAME=VALUE")]
    parameters: Vec<String>,
    /// Comment shown in the SSM console.
    #[arg(long, default_value = "hygiene rolling maintenance")]
    comment: String,
    /// Batch size: a count ("2") or a percent of the pool ("10%").
    #[arg(long, default_value = "1")]
    batch: Amount,
    /// Targets that must stay healthy in service ("3" or "80%").
    #[arg(long, default_value = "0")]
    min_healthy: Amount,
    /// The run aborts when more than this many targets fail ("0" or "5%").
    #[arg(long, default_value = "0")]
    max_failures: Amount,
    /// Seconds to wait for a deregistered target to become unused.
    #[arg(long, default_value_t = 600)]
    drain_timeout: u64,
    /// Seconds to wait for a registered target to become healthy everywhere.
    #[arg(long, default_value_t = 600)]
    health_timeout: u64,
    /// Balancer poll interval in milliseconds (default: 5 s ± 20 %).
    #[arg(long)]
    poll_ms: Option<u64>,
    /// Send AWS requests here (moto, a VPC endpoint).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Do not check SSM agents with DescribeInstanceInformation (moto).
    #[arg(long)]
    skip_preflight: bool,
    /// Which API reads command status.
    #[arg(long, value_enum, default_value_t = StatusApiArg::List)]
    status_api: StatusApiArg,
    /// On Ctrl-C, let running SSM commands finish instead of cancelling
    /// them (CancelCommand, the default).
    #[arg(long)]
    let_commands_finish: bool,
    /// Start moto, create this many instances in a target group, and patch them.
    #[arg(long, value_name = "INSTANCES")]
    moto_demo: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
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

fn parameters(raw: &[String]) -> hygiene_core::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    Error::invalid_config("parameter", format!("{p:?} is not NAME=VALUE"))
                })
        })
        .collect()
}

async fn run(mut args: Args) -> hygiene_core::Result<bool> {
    // Kept alive for the whole run: dropping it stops moto.
    let moto = match args.moto_demo {
        Some(n) => {
            let m = MotoServer::start().await?;
            let vpc = m.create_vpc().await?;
            let instances = m.run_instances(n, None).await?;
            let tg = m.create_target_group("demo-web", &vpc, 8080).await?;
            m.register(
                &tg,
                &instances
                    .iter()
                    .map(|i| (i.clone(), 8080))
                    .collect::<Vec<_>>(),
            )
            .await?;
            eprintln!("moto on {}: {n} instances in {tg}", m.endpoint_url());
            args.endpoint_url = Some(m.endpoint_url());
            args.target_groups = vec![tg];
            args.skip_preflight = true;
            args.status_api = StatusApiArg::Get;
            if args.document == "AWS-RunPatchBaseline" && args.parameters.is_empty() {
                args.parameters = vec!["Operation=Install".into()];
            }
            Some(m)
        }
        None => None,
    };

    let mut lb = match &moto {
        Some(m) => Elbv2Balancer::builder().with_sdk_config(m.sdk_config().await),
        None => Elbv2Balancer::from_env().await,
    };
    let mut exec = match &moto {
        Some(m) => SsmExecutor::builder(&args.document).with_sdk_config(m.sdk_config().await),
        None => SsmExecutor::from_env(&args.document).await,
    };
    if let Some(url) = &args.endpoint_url {
        lb = lb.with_endpoint_url(url);
        exec = exec.with_endpoint_url(url);
    }
    for tg in &args.target_groups {
        lb = lb.with_target_group(tg);
    }
    if let Some(arn) = &args.load_balancer {
        lb = lb.with_load_balancer(arn);
    }
    if let Some(ms) = args.poll_ms {
        lb = lb.with_poll_interval(Duration::from_millis(ms));
        exec = exec.with_poll_interval(Duration::from_millis(ms.max(1)));
    }
    let lb = lb.build()?;

    let cancel = CancellationToken::new();
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in parameters(&args.parameters)? {
        match grouped.iter_mut().find(|(name, _)| *name == k) {
            Some((_, values)) => values.push(v),
            None => grouped.push((k, vec![v])),
        }
    }
    for (k, values) in grouped {
        exec = exec.with_parameter(k, values);
    }
    if let Some(v) = &args.document_version {
        exec = exec.with_document_version(v);
    }
    exec = exec
        .with_comment(&args.comment)
        .with_preflight(if args.skip_preflight {
            PreflightCheck::Skip
        } else {
            PreflightCheck::DescribeInstanceInformation
        })
        .with_status_api(match args.status_api {
            StatusApiArg::List => StatusApi::ListCommandInvocations,
            StatusApiArg::Get => StatusApi::GetCommandInvocation,
        });
    if !args.let_commands_finish {
        exec = exec.with_cancellation(cancel.clone());
    }
    let exec = exec.build()?;

    let mut config = RolloutConfig::builder()
        .batch_size(args.batch)
        .min_healthy(args.min_healthy)
        .max_failures(args.max_failures)
        .drain_timeout(Duration::from_secs(args.drain_timeout))
        .health_timeout(Duration::from_secs(args.health_timeout));
    if let Some(ms) = args.poll_ms {
        config = config.poll_interval(Duration::from_millis(ms));
    }
    let config = config.build()?;

    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("cancelling: nothing new starts; drained targets go back in service; running commands are cancelled unless --let-commands-finish");
            ctrl_c.cancel();
        }
    });

    let rollout = Rollout::new(lb, exec, config).with_cancellation(cancel);
    let mut events = rollout.subscribe();
    let progress = tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let EventKind::Phase { id, stage, .. } = &e.kind {
                eprintln!("{id}: {stage:?}");
            }
        }
    });
    let report = rollout.run().await?;
    progress.abort();
    if args.json {
        println!("{}", report.to_json_pretty());
    } else {
        println!(
            "{:?}: {} targets in {} batches, {:?}",
            report.outcome,
            report.targets.len(),
            report.batches,
            report.duration
        );
        for t in report.failed() {
            println!("FAILED {}: {:?}", t.id, t.result);
        }
        for t in report.kept_out() {
            if let hygiene_core::TargetResult::Failed {
                restore_hint: Some(h),
                ..
            } = &t.result
            {
                println!("{} is OUT OF SERVICE; put it back with: {h}", t.id);
            }
        }
    }
    Ok(report.is_success())
}
