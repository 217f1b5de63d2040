//! AWS API cost of a rollout: 500 instances in 2 target groups (each
//! instance in both, on ports 80 and 8080), batch 10 %, SSM Run Command,
//! against a moto server this binary starts. Every AWS request of the
//! rollout is counted by an SDK interceptor. Prints one JSON line and
//! fails when DescribeTargetHealth exceeds 0.5 calls per instance.
//!
//! `cargo run --release -p examples --bin bench-aws-api`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hygiene_aws::moto::MotoServer;
use hygiene_aws::{ApiCallCounter, Elbv2Balancer, PreflightCheck, SsmExecutor, StatusApi};
use hygiene_core::{Amount, Error, Rollout, RolloutConfig};

/// Count AWS API calls of a rollout against moto.
#[derive(Debug, Parser)]
struct Args {
    /// Number of instances.
    #[arg(long, default_value_t = 500)]
    instances: usize,
    /// Batch size (count or percent).
    #[arg(long, default_value = "10%")]
    batch: Amount,
    /// Put half the instances in each target group instead of all in both.
    #[arg(long)]
    split: bool,
    /// Poll interval in ms (default: the balancer's own, 5 s ± 20 %).
    #[arg(long)]
    poll_ms: Option<u64>,
    /// Upper bound of DescribeTargetHealth calls per instance.
    #[arg(long, default_value_t = 0.5)]
    max_dth_per_instance: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args).await {
        Ok((line, ok)) => {
            println!("{line}");
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: more than {} DescribeTargetHealth calls per instance",
                    args.max_dth_per_instance
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: &Args) -> hygiene_core::Result<(serde_json::Value, bool)> {
    let moto = MotoServer::start().await?;
    let vpc = moto.create_vpc().await?;
    let mut instances = Vec::new();
    while instances.len() < args.instances {
        let n = (args.instances - instances.len()).min(250);
        instances.extend(moto.run_instances(n, None).await?);
    }
    let web = moto.create_target_group("bench-web", &vpc, 80).await?;
    let api = moto.create_target_group("bench-api", &vpc, 8080).await?;
    let (web_members, api_members) = if args.split {
        let (a, b) = instances.split_at(instances.len() / 2);
        (a.to_vec(), b.to_vec())
    } else {
        (instances.clone(), instances.clone())
    };
    moto.register(
        &web,
        &web_members
            .iter()
            .map(|i| (i.clone(), 80))
            .collect::<Vec<_>>(),
    )
    .await?;
    moto.register(
        &api,
        &api_members
            .iter()
            .map(|i| (i.clone(), 8080))
            .collect::<Vec<_>>(),
    )
    .await?;

    // Only the rollout's own requests are counted: setup used other clients.
    let counter = ApiCallCounter::new();
    let sdk = moto.sdk_config().await;
    let mut lb = Elbv2Balancer::builder()
        .with_sdk_config(sdk.clone())
        .with_call_counter(counter.clone())
        .with_target_group(&web)
        .with_target_group(&api);
    if let Some(ms) = args.poll_ms {
        lb = lb.with_poll_interval(Duration::from_millis(ms));
    }
    let lb = lb.build()?;
    let exec = SsmExecutor::builder("AWS-RunShellScript")
        .with_sdk_config(sdk)
        .with_call_counter(counter.clone())
        .with_parameter("commands", ["sudo yum -y update"])
        .with_preflight(PreflightCheck::Skip)
        .with_status_api(StatusApi::GetCommandInvocation)
        .build()?;
    let config = RolloutConfig::builder().batch_size(args.batch).build()?;

    let started = Instant::now();
    let report = Rollout::new(lb, exec, config).run().await?;
    let wall = started.elapsed().as_secs_f64();
    if !report.is_success() {
        return Err(Error::invalid_config(
            "bench",
            format!("rollout did not complete: {}", report.to_json_pretty()),
        ));
    }
    let n = args.instances as f64;
    let dth = counter.count("DescribeTargetHealth");
    let total = counter.total();
    let line = serde_json::json!({
        "instances": args.instances,
        "target_groups": 2,
        "describe_target_health_calls": dth,
        "api_calls_total": total,
        "calls_per_instance": ((total as f64 / n) * 1000.0).round() / 1000.0,
        "describe_target_health_per_instance": ((dth as f64 / n) * 1000.0).round() / 1000.0,
        "batches": report.batches,
        "wall_s": (wall * 10.0).round() / 10.0,
        "calls": counter.snapshot(),
    });
    Ok((line, dth as f64 / n <= args.max_dth_per_instance))
}
