//! Caddy through `hygiene-caddy`, against a real Caddy (Debian's 2.6.2,
//! `HYGIENE_CADDY_BIN`) on loopback: a rollout under constant load in
//! which no request fails (no answer from a stopped service, nothing cut,
//! reset or hanging; the host migrates a reloaded listener's accept queue
//! and the load's keep-alive clients send a GET again when a reload closes
//! their idle connection, as browsers do), and `hygiene` driven by
//! `examples/config/caddy.toml`'s `[balancer.caddy]`.
#![cfg(feature = "caddy")]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{example_config, hygiene, json_lines, out, replace, set, write};
use examples::caddy::Caddy;
use examples::hello::HelloService;
use examples::load::{Load, LoadConfig};
use hygiene_caddy::CaddyBalancer;
use hygiene_core::conformance::integration_available;
use hygiene_core::{
    Amount, ExecOutcome, Executor, Outcome, Preflight, Rollout, RolloutConfig, Target,
};

fn caddy_bin() -> Option<PathBuf> {
    let bin = examples::caddy::caddy_bin();
    if integration_available(
        "caddy",
        bin.is_some(),
        "apt-get install -y caddy, or set HYGIENE_CADDY_BIN",
    ) {
        bin
    } else {
        None
    }
}

/// The maintenance: the target's service stops (listener closed,
/// connections cut), is down for `patch`, and starts again.
#[derive(Debug)]
struct Restart {
    services: HashMap<String, Arc<HelloService>>,
    patch: Duration,
}

#[async_trait]
impl Executor for Restart {
    fn name(&self) -> String {
        "restart".into()
    }
    async fn preflight(&self, targets: &[Target]) -> hygiene_core::Result<Vec<Preflight>> {
        Ok(vec![Preflight::Ready; targets.len()])
    }
    async fn execute(&self, targets: &[Target]) -> hygiene_core::Result<Vec<ExecOutcome>> {
        let start = tokio::time::Instant::now();
        for t in targets {
            let s = &self.services[t.id.as_str()];
            s.stop();
            tokio::time::sleep(self.patch).await;
            s.resume().map_err(|e| hygiene_core::Error::Executor {
                executor: "restart".into(),
                message: e.to_string(),
                source: None,
            })?;
        }
        Ok(targets
            .iter()
            .map(|t| ExecOutcome::success(t.id.clone(), start.elapsed()))
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_under_load_loses_no_request() {
    let Some(bin) = caddy_bin() else { return };
    // Every drain and enable is a Caddy reload, which replaces its
    // SO_REUSEPORT listener: connections in the old one's accept queue are
    // reset unless the kernel migrates them (`scripts/test` sets it).
    // Without it (and outside CI) the test still runs, and allows new
    // connections reset by a reload, at most one per change.
    let migrates = integration_available(
        "net.ipv4.tcp_migrate_req=1",
        examples::caddy::tcp_migrate_req() == Some(1),
        "sysctl -w net.ipv4.tcp_migrate_req=1 (Linux 5.14+; scripts/test sets it); checking with new-connection resets allowed",
    );
    // Each request takes 20 ms, so requests are in flight at every drain.
    let mut services = Vec::new();
    for n in ["s1", "s2", "s3"] {
        services.push(
            HelloService::start(n, Duration::from_millis(20))
                .await
                .expect("service"),
        );
    }
    let dials: Vec<String> = services.iter().map(|s| s.addr().to_string()).collect();
    let caddy = Caddy::start(&bin, &dials).await.expect("caddy starts");
    let before = caddy.config().await.expect("config");
    let lb = CaddyBalancer::builder()
        .admin(&caddy.admin)
        .handler("web")
        .build()
        .expect("valid");
    let exec = Restart {
        services: dials
            .iter()
            .cloned()
            .zip(services.iter().cloned())
            .collect(),
        patch: Duration::from_millis(500),
    };
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(1))
        .max_failures(Amount::Count(0))
        .poll_interval(Duration::from_millis(100))
        .health_timeout(Duration::from_secs(30))
        .drain_timeout(Duration::from_secs(30))
        .build()
        .expect("config");
    let load = Load::start(caddy.http, load_config());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = Rollout::new(lb, exec, config).run().await.expect("rollout");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = load.stop().await;
    eprintln!(
        "caddy rollout under load: {} requests, {} failed {:?}, {} sent again after an idle close, by server {:?}",
        stats.requests, stats.failed, stats.failed_by_kind, stats.retried, stats.by_server
    );
    assert_eq!(
        report.outcome,
        Outcome::Completed,
        "{}",
        report.to_json_pretty()
    );
    assert!(stats.requests > 500, "the load ran: {stats:?}");
    // No request fails: no answer from a stopped service (502/503), nothing
    // cut, hanging or reset. The load's keep-alive clients do what browsers
    // do when Caddy's reload closes an idle connection as a GET goes out on
    // it (send it again on a new one; counted in `retried`, and a failure
    // if that fails too).
    let changes = 6; // a drain and an enable per target: Caddy reloads
    if migrates {
        assert_eq!(stats.failed, 0, "failed requests: {stats:?}");
    } else {
        let other: Vec<_> = stats
            .failed_by_kind
            .keys()
            .filter(|k| !matches!(k.as_str(), "fresh_reset" | "fresh_connect"))
            .collect();
        assert!(other.is_empty(), "failed requests: {stats:?}");
        assert!(stats.failed <= changes, "failed requests: {stats:?}");
    }
    // What is sent again comes from Caddy's reloads only: at most one per
    // configuration change (many more would hide a rollout that reloads
    // Caddy more than it needs, or a Caddy that drops connections).
    assert!(stats.retried <= changes, "sent again: {stats:?}");
    for s in ["s1", "s2", "s3"] {
        assert!(
            stats.by_server.get(s).copied().unwrap_or(0) > 0,
            "{s} served: {stats:?}"
        );
    }
    assert_eq!(
        caddy.config().await.expect("config"),
        before,
        "put back exactly"
    );
}

fn load_config() -> LoadConfig {
    LoadConfig {
        keepalive_clients: 6,
        fresh_clients: 6,
        rate_per_client: None,
        timeout: Duration::from_secs(10),
        retry_idle_races: true,
    }
}

/// `hygiene validate` and `hygiene run` with `examples/config/caddy.toml`,
/// pointed at the test's Caddy, with a maintenance that does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hygiene_command_runs_a_caddy_pool() {
    let Some(bin) = caddy_bin() else { return };
    let mut services = Vec::new();
    for n in ["s1", "s2"] {
        services.push(
            HelloService::start(n, Duration::ZERO)
                .await
                .expect("service"),
        );
    }
    let dials: Vec<String> = services.iter().map(|s| s.addr().to_string()).collect();
    let caddy = Caddy::start(&bin, &dials).await.expect("caddy starts");
    let before = caddy.config().await.expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut t = example_config("caddy.toml");
    replace(&mut t, "balancer.caddy", "admin", caddy.admin.clone());
    replace(&mut t, "executor.local", "program", "/bin/true");
    set(&mut t, "rollout", "poll_interval", "100ms");
    let cfg = write(dir.path(), &t);

    let mut c = hygiene(&cfg, &state);
    c.args(["validate", "--json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}\n{err}");
    for d in &dials {
        assert!(stdout.contains(d.as_str()), "lists {d}: {stdout}");
    }

    let mut c = hygiene(&cfg, &state);
    c.args(["run", "--yes", "--json"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let lines = json_lines(&stdout);
    let report = lines.last().expect("a report line");
    assert_eq!(report["type"], "report", "{report}");
    assert_eq!(report["outcome"]["kind"], "completed", "{report}");
    assert_eq!(caddy.config().await.expect("config"), before);

    // A misspelled handler: a configuration error naming it, nothing changed.
    replace(&mut t, "balancer.caddy", "handlers", vec!["wbe"]);
    let cfg = write(dir.path(), &t);
    let mut c = hygiene(&cfg, &state);
    c.arg("run").arg("--yes");
    let (code, _, err) = out(c);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("wbe"), "{err}");
    assert_eq!(caddy.config().await.expect("config"), before);
}
