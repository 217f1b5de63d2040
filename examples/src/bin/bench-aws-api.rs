//! AWS API cost of a rollout: 500 instances in 2 target groups (each
//! instance in both, on ports 80 and 8080), batch 10 %, SSM Run Command,
//! against a moto server this binary starts. Every AWS request of the
//! rollout is counted by an SDK interceptor. Prints one JSON line and
//! fails when DescribeTargetHealth exceeds 0.5 calls per instance.
//!
//! With `--discover`, the pool is found from the instances instead (tag
//! `Patch Group=bench`): `--target-groups` groups (20 by default in that
//! mode), instance n in group n mod G on port 80 and every fifth one also
//! in the next group on port 8080. The line then also gives what
//! discovery cost and the peak ELBv2 `Describe*` rate, checked against
//! ELB's own bucket (40 tokens, refilled at 10 a second): the run fails
//! if that bucket would have run dry.
//!
//! `cargo run --release -p examples --features aws --bin bench-aws-api [-- --discover]`

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
    /// Find the pool from the instances (tags) instead of naming the groups.
    #[arg(long)]
    discover: bool,
    /// Target groups with --discover.
    #[arg(long, default_value_t = 20)]
    target_groups: usize,
    /// Upper bound of DescribeTargetHealth calls per instance (default 0.5
    /// for named target groups; none with --discover, where the bound is
    /// ELB's Describe bucket).
    #[arg(long)]
    max_dth_per_instance: Option<f64>,
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
                    "error: more than {:?} DescribeTargetHealth calls per instance, or over ELB's Describe bucket",
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

/// ELB's `Describe*` bucket: 40 tokens, 10 a second.
const ELB_BURST: f64 = 40.0;
const ELB_PER_SECOND: f64 = 10.0;

/// The most calls in any one-second window, and the fewest tokens ELB's
/// bucket would have held (below 0: throttled).
fn describe_rate(times: &[tokio::time::Instant]) -> (usize, f64) {
    let mut peak = 0;
    for (i, t) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        peak = peak.max(n);
    }
    let mut tokens = ELB_BURST;
    let mut low = ELB_BURST;
    let mut last = times.first().copied();
    for t in times {
        if let Some(l) = last {
            tokens = (tokens + t.duration_since(l).as_secs_f64() * ELB_PER_SECOND).min(ELB_BURST);
        }
        last = Some(*t);
        tokens -= 1.0;
        low = low.min(tokens);
    }
    (peak, low)
}

/// The rollout of the pool, batch `batch`: an error unless it completed.
async fn roll(
    lb: Elbv2Balancer,
    exec: SsmExecutor,
    batch: Amount,
) -> hygiene_core::Result<hygiene_core::Report> {
    let config = RolloutConfig::builder().batch_size(batch).build()?;
    let report = Rollout::new(lb, exec, config).run().await?;
    if report.is_success() {
        Ok(report)
    } else {
        Err(Error::invalid_config(
            "bench",
            format!("rollout did not complete: {}", report.to_json_pretty()),
        ))
    }
}

async fn bench(args: &Args) -> hygiene_core::Result<(serde_json::Value, bool)> {
    if args.discover {
        return bench_discover(args).await;
    }
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
    let started = Instant::now();
    let report = roll(lb, exec, args.batch).await?;
    let wall = started.elapsed().as_secs_f64();
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
    Ok((
        line,
        dth as f64 / n <= args.max_dth_per_instance.unwrap_or(0.5),
    ))
}

/// The pool found from tagged instances over `--target-groups` groups.
async fn bench_discover(args: &Args) -> hygiene_core::Result<(serde_json::Value, bool)> {
    let moto = MotoServer::start().await?;
    let vpc = moto.create_vpc().await?;
    let mut instances = Vec::new();
    while instances.len() < args.instances {
        let n = (args.instances - instances.len()).min(250);
        instances.extend(moto.run_instances(n, None).await?);
    }
    for chunk in instances.chunks(200) {
        moto.create_tags(chunk, "Patch Group", "bench").await?;
    }
    let g = args.target_groups.max(1);
    let mut groups = Vec::new();
    for n in 0..g {
        groups.push(
            moto.create_target_group(&format!("bench-{n}"), &vpc, 80)
                .await?,
        );
    }
    let mut members: Vec<Vec<(String, u16)>> = vec![Vec::new(); g];
    for (i, id) in instances.iter().enumerate() {
        members[i % g].push((id.clone(), 80));
        if i % 5 == 0 && g > 1 {
            members[(i + 1) % g].push((id.clone(), 8080));
        }
    }
    for (tg, m) in groups.iter().zip(&members) {
        moto.register(tg, m).await?;
    }

    let counter = ApiCallCounter::new();
    let sdk = moto.sdk_config().await;
    let mut lb = Elbv2Balancer::builder()
        .with_sdk_config(sdk.clone())
        .with_call_counter(counter.clone())
        .with_instance_tag("Patch Group", ["bench"]);
    if let Some(ms) = args.poll_ms {
        lb = lb.with_poll_interval(Duration::from_millis(ms));
    }
    let lb = lb.build()?;
    let started = Instant::now();
    let discovery = lb
        .discovery()
        .await?
        .ok_or_else(|| Error::invalid_config("bench", "not an instance pool"))?;
    let discovery_s = started.elapsed().as_secs_f64();
    let exec = SsmExecutor::builder("AWS-RunShellScript")
        .with_sdk_config(sdk)
        .with_call_counter(counter.clone())
        .with_parameter("commands", ["sudo yum -y update"])
        .with_preflight(PreflightCheck::Skip)
        .with_status_api(StatusApi::GetCommandInvocation)
        .build()?;
    let report = roll(lb, exec, args.batch).await?;
    let wall = started.elapsed().as_secs_f64();
    let n = args.instances as f64;
    let dth = counter.count("DescribeTargetHealth");
    let total = counter.total();
    let (peak, low) = describe_rate(&counter.describe_times());
    let line = serde_json::json!({
        "mode": "discover",
        "instances": args.instances,
        "target_groups": g,
        "discovery_api_calls": discovery.api_calls(),
        "discovery_s": (discovery_s * 10.0).round() / 10.0,
        "describe_target_health_calls": dth,
        "api_calls_total": total,
        "calls_per_instance": ((total as f64 / n) * 1000.0).round() / 1000.0,
        "describe_target_health_per_instance": ((dth as f64 / n) * 1000.0).round() / 1000.0,
        "peak_describe_per_s": peak,
        "elb_bucket_low_tokens": (low * 10.0).round() / 10.0,
        "within_elb_bucket": low >= 0.0,
        "batches": report.batches,
        "wall_s": (wall * 10.0).round() / 10.0,
        "calls": counter.snapshot(),
    });
    Ok((
        line,
        args.max_dth_per_instance
            .is_none_or(|m| dth as f64 / n <= m)
            && low >= 0.0,
    ))
}
