//! What a shared lease adds to each batch of a rollout, on each store: a
//! batch takes its host (`take_hosts`, one transaction with the pool's
//! fence), journals its drain and its enable (intent and result of each:
//! four records, each a write conditional on the fence) and gives the host
//! back. Measured against a real etcd (Debian's `etcd-server`) and moto's
//! DynamoDB, both started here on loopback. Prints one JSON line and fails
//! when a store's median is not under one poll interval (`--poll-ms`,
//! 100 ms: the default poll of the fast balancers is 200 ms).
//!
//! moto answers from one local process: its times are hygiene's own cost
//! plus the SDK's, not DynamoDB's (a conditional write there takes a few
//! milliseconds in the region, a `TransactWriteItems` about twice that).
//!
//! `./scripts/test` once (installs etcd and moto), then
//! `cargo run --release -p examples --features aws,etcd --bin bench-lease`

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hygiene_aws::moto::MotoServer;
use hygiene_aws::DynamoLeaseStore;
use hygiene_core::journal::Record;
use hygiene_core::lease::{LeaseStore, Owner};
use hygiene_etcd::server::EtcdServer;

/// Measure the lease's added time per batch on etcd and DynamoDB (moto).
#[derive(Debug, Parser)]
struct Args {
    /// Batches to measure on each store.
    #[arg(long, default_value_t = 50)]
    batches: usize,
    /// The bound of each store's median, in milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
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
        Ok((line, ok)) => {
            println!("{line}");
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "a store's median is not under one poll interval ({} ms)",
                    args.poll_ms
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

fn record(n: usize) -> Record {
    Record::Resumed {
        mode: format!("bench record {n}"),
        at: "2026-12-06T00:00:00Z".into(),
        host: "bench".into(),
        pid: 0,
    }
}

/// Times of `batches` batches on `store`.
async fn batches(store: &dyn LeaseStore, batches: usize) -> examples::BoxResult<Vec<Duration>> {
    let g = store.acquire("bench", &Owner::here("bench"), &[]).await?;
    let mut took = Vec::with_capacity(batches);
    for n in 0..batches {
        let host = vec![format!("10.0.{}.{}", n / 250, n % 250)];
        let start = Instant::now();
        store.take_hosts(&g, &host).await?;
        for k in 0..4 {
            store.append(&g, &record(k)).await?;
        }
        store.give_back(&g, &host).await?;
        took.push(start.elapsed());
    }
    store.release(&g).await?;
    took.sort();
    Ok(took)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn summary(took: &[Duration], bound: Duration) -> (serde_json::Value, bool) {
    let median = took[took.len() / 2];
    let p90 = took[took.len() * 9 / 10];
    let max = took[took.len() - 1];
    (
        serde_json::json!({
            "median_ms": ms(median),
            "p90_ms": ms(p90),
            "max_ms": ms(max),
            "under_one_poll": median < bound,
        }),
        median < bound,
    )
}

async fn bench(args: &Args) -> examples::BoxResult<(serde_json::Value, bool)> {
    if args.batches == 0 {
        return Err("--batches must be at least 1".into());
    }
    let bound = Duration::from_millis(args.poll_ms);

    let etcd = EtcdServer::start().await?;
    let store = hygiene_etcd::EtcdLeaseStore::builder([etcd.endpoint()])
        .with_lease_duration(Duration::from_secs(30))
        .connect()
        .await?;
    let took = batches(&store, args.batches).await?;
    let (etcd_line, etcd_ok) = summary(&took, bound);

    let moto = MotoServer::start().await?;
    let sdk = moto.sdk_config().await;
    let store = Arc::new(DynamoLeaseStore::from_sdk_config(
        &sdk,
        Some(moto.endpoint_url()),
        "hygiene-leases",
        Duration::from_secs(30),
    )?);
    store.create_table().await?;
    let took = batches(store.as_ref(), args.batches).await?;
    let (dynamo_line, dynamo_ok) = summary(&took, bound);

    Ok((
        serde_json::json!({
            "bench": "lease_per_batch",
            "what": "take_hosts + 4 journal records + give_back",
            "batches": args.batches,
            "poll_ms": args.poll_ms,
            "etcd": etcd_line,
            "dynamodb_moto": dynamo_line,
        }),
        etcd_ok && dynamo_ok,
    ))
}
