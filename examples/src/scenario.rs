//! The classic scenario: N "Hello, World!" services behind a real HAProxy,
//! patched through hygiene while a load runs against the frontend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hygiene_core::{
    Event, EventKind, LoadBalancer, LocalCommand, Report, Rollout, Stage, TargetId, TargetState,
};
use hygiene_haproxy::{HaproxyBalancer, Node};

use crate::control::{self, Control};
use crate::haproxy::{haproxy_bin, Checks, Haproxy};
use crate::hello::HelloService;
use crate::BoxResult;

/// How the scenario is built.
#[derive(Debug, Clone, Copy)]
pub struct ScenarioConfig {
    /// Number of services.
    pub servers: usize,
    /// Time each request takes on a service.
    pub work: Duration,
    /// HAProxy health checks.
    pub checks: Checks,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            servers: 3,
            work: Duration::from_millis(20),
            checks: Checks::default(),
        }
    }
}

/// The running scenario; everything it started stops when it is dropped.
#[derive(Debug)]
pub struct Scenario {
    /// The services, `s1`, `s2`, …
    pub services: Vec<Arc<HelloService>>,
    /// HAProxy in front of them.
    pub haproxy: Haproxy,
    /// The patch's control channel.
    pub control: Control,
    /// hygiene's view of HAProxy.
    pub balancer: HaproxyBalancer,
}

/// The message shown when HAProxy is missing.
pub const HAPROXY_MISSING: &str =
    "HAProxy is not installed: run ./scripts/demo (it installs it) or `apt-get install -y haproxy`";

impl Scenario {
    /// Starts the services, HAProxy and the control channel, and waits
    /// until HAProxy sees every service healthy.
    pub async fn start(cfg: ScenarioConfig) -> BoxResult<Self> {
        let bin = haproxy_bin().ok_or(HAPROXY_MISSING)?;
        let mut services = Vec::new();
        for i in 1..=cfg.servers {
            services.push(HelloService::start(&format!("s{i}"), cfg.work).await?);
        }
        let servers: Vec<(String, SocketAddr)> = services
            .iter()
            .map(|s| (s.name().to_owned(), s.addr()))
            .collect();
        let haproxy = Haproxy::start(&bin, &servers, cfg.checks).await?;
        let control = Control::start(&services).await?;
        let balancer = HaproxyBalancer::builder()
            .node(Node::unix(haproxy.socket()).named("demo-haproxy"))
            .backend("web")
            .build()?;
        let s = Self {
            services,
            haproxy,
            control,
            balancer,
        };
        s.wait_all_healthy(Duration::from_secs(15)).await?;
        Ok(s)
    }

    /// The frontend the load goes to.
    pub fn frontend(&self) -> SocketAddr {
        self.haproxy.frontend()
    }

    /// The service behind a target id (`web/s1` → `s1`).
    pub fn service(&self, id: &TargetId) -> Option<&Arc<HelloService>> {
        let name = id.as_str().rsplit('/').next()?;
        self.services.iter().find(|s| s.name() == name)
    }

    /// The simulated patch: `exe patch …`, which stops the target's service,
    /// waits `patch` and starts it again (or fails, leaving it stopped, for
    /// the targets named in `fail_on`). The target reaches it only through
    /// `HYGIENE_TARGET_ID`.
    pub fn patch_command(
        &self,
        exe: &Path,
        patch: Duration,
        fail_on: &[String],
    ) -> hygiene_core::Result<LocalCommand> {
        let mut args = vec![
            "patch".to_owned(),
            "--control".to_owned(),
            self.control.addr().to_string(),
            "--patch-ms".to_owned(),
            patch.as_millis().to_string(),
        ];
        for f in fail_on {
            args.push("--fail-on".to_owned());
            args.push(f.clone());
        }
        Ok(LocalCommand::new(exe, args)?.with_timeout(patch + Duration::from_secs(30)))
    }

    /// Waits until HAProxy reports every service in service and healthy.
    pub async fn wait_all_healthy(&self, within: Duration) -> BoxResult<()> {
        let deadline = Instant::now() + within;
        loop {
            let listed = self.balancer.list().await?;
            if listed.len() == self.services.len()
                && listed.iter().all(|l| l.status.is_serving_healthy())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "HAProxy did not see every service healthy within {within:?}: {listed:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ids of targets not in service now.
    pub async fn out_of_rotation(&self) -> BoxResult<Vec<TargetId>> {
        Ok(self
            .balancer
            .list()
            .await?
            .into_iter()
            .filter(|l| l.status.state != TargetState::InService)
            .map(|l| l.target.id)
            .collect())
    }

    /// What a cron loop does: restart each service in turn, no drain, then
    /// wait a fixed `settle` before the next.
    pub async fn naive_restart(&self, patch: Duration, settle: Duration) -> BoxResult<()> {
        for s in &self.services {
            s.stop();
            tokio::time::sleep(patch).await;
            s.resume()?;
            tokio::time::sleep(settle).await;
        }
        Ok(())
    }

    /// Stops HAProxy and every service.
    pub async fn stop(mut self) {
        self.haproxy.stop().await;
        for s in &self.services {
            s.stop();
        }
    }
}

/// The body of the `patch` subcommand.
pub async fn patch_main(
    control_addr: SocketAddr,
    patch: Duration,
    fail_on: &[String],
) -> BoxResult<()> {
    let faults = PatchFaults {
        fail_on: fail_on.to_vec(),
        ..PatchFaults::default()
    };
    patch_main_with(control_addr, patch, &faults).await
}

/// What the simulated patch does wrong, per target (a service name `s2` or
/// a target id `web/s2`); the first that names the target wins, in this
/// order: hang, fail, break.
#[derive(Debug, Clone, Default)]
pub struct PatchFaults {
    /// Exit non-zero, leaving the service stopped.
    pub fail_on: Vec<String>,
    /// Exit zero, leaving the service answering 500 to everything (its
    /// health never returns).
    pub break_on: Vec<String>,
    /// Never end (until the executor's time limit kills it), leaving the
    /// service stopped.
    pub hang_on: Vec<String>,
}

/// The `patch` subcommand with faults: stops the target's service, waits
/// `patch`, then starts it again, or does what `faults` says.
pub async fn patch_main_with(
    control_addr: SocketAddr,
    patch: Duration,
    faults: &PatchFaults,
) -> BoxResult<()> {
    let id = std::env::var("HYGIENE_TARGET_ID").map_err(|_| {
        "HYGIENE_TARGET_ID is not set: this command is run by hygiene's LocalCommand"
    })?;
    let name = id.rsplit('/').next().unwrap_or(&id).to_owned();
    let named = |list: &[String]| list.iter().any(|f| f == &name || f == &id);
    control::send(control_addr, &format!("stop {name}")).await?;
    tokio::time::sleep(patch).await;
    if named(&faults.hang_on) {
        // Until killed: the executor's time limit is the fault under test.
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    if named(&faults.fail_on) {
        return Err(format!("simulated patch failure on {id}: the service stays stopped").into());
    }
    if named(&faults.break_on) {
        control::send(control_addr, &format!("break {name}")).await?;
        return Ok(());
    }
    control::send(control_addr, &format!("start {name}")).await?;
    Ok(())
}

/// Per-target timing seen from outside the engine.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Longest delay between the last in-flight request on a drained server
    /// ending (or the drain call, when none was in flight) and the engine
    /// seeing it drained.
    pub drain_detect_max: Duration,
    /// The same per target.
    pub drain_detect: HashMap<TargetId, Duration>,
}

/// Runs `rollout` over the scenario, calling `on_event` for each event, and
/// measures drain detection.
pub async fn run_rollout(
    scn: &Scenario,
    rollout: Rollout,
    mut on_event: impl FnMut(&Event) + Send,
) -> BoxResult<(Report, Timeline)> {
    let mut events = rollout.subscribe();
    let run = tokio::spawn(rollout.run());
    let mut draining_at: HashMap<TargetId, Instant> = HashMap::new();
    let mut timeline = Timeline::default();
    while let Some(e) = events.recv().await {
        if let EventKind::Phase { id, stage, .. } = &e.kind {
            let now = Instant::now();
            match stage {
                Stage::Draining => {
                    draining_at.insert(id.clone(), now);
                }
                Stage::Drained => {
                    if let (Some(svc), Some(start)) = (scn.service(id), draining_at.get(id)) {
                        let last = svc.last_end().map_or(*start, |l| l.max(*start));
                        let d = now.saturating_duration_since(last);
                        timeline.drain_detect_max = timeline.drain_detect_max.max(d);
                        timeline.drain_detect.insert(id.clone(), d);
                    }
                }
                _ => {}
            }
        }
        on_event(&e);
    }
    let report = run.await??;
    Ok((report, timeline))
}

/// `ideal_s`: the sum over batches of the measured drain + patch + health
/// durations (the slowest target of each batch).
pub fn ideal(report: &Report) -> Duration {
    let mut per_batch: HashMap<usize, Duration> = HashMap::new();
    for t in &report.targets {
        if let Some(b) = t.batch {
            let d = t.timings.drain.unwrap_or_default()
                + t.timings.execute.unwrap_or_default()
                + t.timings.health.unwrap_or_default();
            let e = per_batch.entry(b).or_default();
            *e = (*e).max(d);
        }
    }
    per_batch.values().sum()
}
