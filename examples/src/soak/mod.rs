//! The fault soak: rollouts in a loop, through the `rollout` binary, over
//! two HAProxy nodes (an HA pair: same configuration and servers, each its
//! own admin socket and frontend) in front of local services, under a
//! constant load on both frontends, with faults drawn from a seed. Every
//! figure is counted outside the engine: the clients count every response,
//! HAProxy's own counters are read (banked before each reload or kill, which
//! reset them), and each node's runtime state is read raw after each
//! rollout to find targets out of rotation that the report does not name.
//!
//! After each rollout the soak repairs what the faults legitimately left
//! (a target kept out by name: its service restarted and the target
//! enabled, as an operator following the report would; a removed server
//! put back by a reload) and checks that every server is in rotation and
//! up on both nodes before the next rollout.

mod fault;
mod node;
mod round;
mod traffic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hygiene_haproxy::HaproxyBalancer;
use serde::Serialize;

pub use fault::{FaultDraw, FaultKind, Rng};
pub use node::{HaCounters, Node, ServerView};
pub use traffic::{Clients, LongRequests, Sample};

use crate::control::Control;
use crate::haproxy::{haproxy_bin, Checks};
use crate::hello::HelloService;
use crate::load::LoadConfig;
use crate::scenario::HAPROXY_MISSING;
use crate::BoxResult;

/// How the soak runs.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Stop starting rollouts after this long.
    pub duration: Option<Duration>,
    /// Stop after this many rollouts.
    pub rollouts: Option<usize>,
    /// Services (`s1`, `s2`, …) in the pool.
    pub servers: usize,
    /// Most faults drawn for one rollout (at least one).
    pub max_faults: usize,
    /// The rollout's status poll interval.
    pub poll: Duration,
    /// The simulated patch's time.
    pub patch: Duration,
    /// The rollout's health timeout, in seconds (what a broken service costs).
    pub health_timeout_s: u64,
    /// The maintenance's time limit (what a hanging maintenance costs).
    pub execute_timeout: Duration,
    /// HAProxy's health checks.
    pub checks: Checks,
    /// The constant load, per node.
    pub load: LoadConfig,
    /// The `rollout` binary.
    pub rollout_bin: PathBuf,
    /// The `demo` binary (its `patch` subcommand is the maintenance).
    pub demo_bin: PathBuf,
    /// Where journals and logs go (a temporary directory when `None`).
    pub dir: Option<PathBuf>,
    /// Print a line per rollout on stderr.
    pub verbose: bool,
}

impl SoakConfig {
    /// The defaults, with the `rollout` and `demo` binaries next to `exe`.
    pub fn new(exe: &std::path::Path) -> Self {
        let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
        Self {
            seed: 7,
            duration: None,
            rollouts: None,
            servers: 3,
            max_faults: 3,
            poll: Duration::from_millis(100),
            patch: Duration::from_millis(300),
            health_timeout_s: 3,
            execute_timeout: Duration::from_millis(1500),
            checks: Checks::default(),
            load: LoadConfig {
                keepalive_clients: 1,
                fresh_clients: 1,
                rate_per_client: Some(50),
                timeout: Duration::from_secs(10),
                retry_idle_races: false,
            },
            rollout_bin: dir.join("rollout"),
            demo_bin: dir.join("demo"),
            dir: None,
            verbose: false,
        }
    }

    /// Bound on the time a reload may leave a stopped service in rotation:
    /// one poll interval plus HAProxy's own check time (`inter × fall`).
    pub fn reaction_bound(&self) -> Duration {
        self.poll + self.checks.inter * self.checks.fall
    }
}

/// Figures of one fault kind (failures and re-drains are those of the
/// rollouts the kind was injected in; a reload's window is its own).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindFigures {
    /// Times injected.
    pub injected: u64,
    /// Times drawn but not reached (the rollout ended first).
    pub not_reached: u64,
    /// Targets out of rotation on a node and named nowhere.
    pub targets_lost: u64,
    /// Targets the reports named as kept out (then repaired).
    pub kept_out_named: u64,
    /// Failed client requests.
    pub failed_requests: u64,
    /// Failed client requests by cause.
    pub failed_by_cause: BTreeMap<String, u64>,
    /// HAProxy's error counters.
    pub haproxy: HaCounters,
    /// Re-drains the engine reported (`drain_lost`).
    pub drain_lost: u64,
    /// Longest time a re-drained target was in rotation, by the reports.
    pub drain_lost_in_service_ms_max: u64,
    /// Resumes that ended with a report and an end record (SIGKILL kind).
    pub resumes_completed: u64,
    /// Reloads: longest time from the new process answering to the server
    /// under maintenance leaving rotation on that node (drained again,
    /// marked down by a check, or its service back).
    pub reaction_ms_max: u64,
    /// Node kills that landed while the target was still draining.
    pub killed_during_drain: u64,
    /// Milliseconds a stopped or broken service was in rotation and `UP`
    /// on a node, seen by the soak's own 10 ms watch.
    pub dead_in_rotation_ms: u64,
}

/// The soak's result, printed as one JSON line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    /// The seed (replay with `--seed`).
    pub seed: u64,
    /// Wall time.
    pub duration_s: f64,
    /// Rollouts run.
    pub rollouts: u64,
    /// Faults injected.
    pub faults: u64,
    /// Targets out of rotation that no report named (must be 0).
    pub targets_lost: u64,
    /// Client requests sent.
    pub requests: u64,
    /// Client requests failed.
    pub failed_requests: u64,
    /// Of those, outside the windows where a node came back with fresh
    /// state during a maintenance (a reload, a restart, a reload removing a
    /// server: HAProxy itself puts the stopped server back in rotation
    /// until the run drains it again). Must be 0.
    pub failed_outside_reload: u64,
    /// HAProxy's error counters over the whole soak.
    pub haproxy: HaCounters,
    /// HAProxy's error counters outside reload windows (must be all 0).
    pub haproxy_outside_reload: HaCounters,
    /// `drain_lost` re-drains reported.
    pub drain_lost: u64,
    /// Milliseconds a stopped or broken service was in rotation and `UP`
    /// on a node, outside reload windows (watched every 10 ms).
    pub dead_in_rotation_outside_reload_ms: u64,
    /// Longest reload reaction measured (see [`KindFigures::reaction_ms_max`]).
    pub reaction_ms_max: u64,
    /// Its bound: poll interval + `inter × fall`.
    pub reaction_bound_ms: u64,
    /// Resumes completed.
    pub resumes_completed: u64,
    /// Per fault kind.
    pub kinds: BTreeMap<FaultKind, KindFigures>,
    /// What broke an invariant, in words (at most 50).
    pub violations: Vec<String>,
    /// Every invariant held.
    pub ok: bool,
}

impl SoakReport {
    fn violation(&mut self, what: String) {
        if self.violations.len() < 50 {
            self.violations.push(what);
        }
    }
}

/// What runs during the soak.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) cfg: SoakConfig,
    pub(crate) services: Vec<Arc<HelloService>>,
    pub(crate) control: Control,
    pub(crate) nodes: Vec<Arc<tokio::sync::Mutex<Node>>>,
    pub(crate) frontends: Vec<SocketAddr>,
    /// Each node's admin socket and master socket.
    pub(crate) sockets: Vec<(PathBuf, PathBuf)>,
    /// Dead services seen in rotation: (milliseconds, times).
    pub(crate) exposure: std::sync::Mutex<(u64, u64)>,
    pub(crate) started: Instant,
    pub(crate) clients: Clients,
    pub(crate) balancer: HaproxyBalancer,
    pub(crate) dir: PathBuf,
}

impl World {
    /// Every server as the configuration should hold it.
    pub(crate) fn all_servers(&self) -> Vec<(String, SocketAddr)> {
        self.services
            .iter()
            .map(|s| (s.name().to_owned(), s.addr()))
            .collect()
    }

    /// The service named `name`.
    pub(crate) fn service(&self, name: &str) -> Option<&Arc<HelloService>> {
        self.services.iter().find(|s| s.name() == name)
    }

    /// What the clients and both nodes counted so far.
    pub(crate) async fn sample(&self) -> Sample {
        let mut s = self.clients.sample().await;
        for n in &self.nodes {
            s.haproxy.add(&n.lock().await.counters().await);
        }
        let (ms, times) = *self
            .exposure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.dead_in_rotation_ms = ms;
        s.dead_in_rotation = times;
        s
    }

    /// A line in `soak.log` (the soak's own timeline of faults).
    pub(crate) fn note(&self, msg: &str) {
        use std::io::Write as _;
        let line = format!("{:>9.3} {msg}\n", self.started.elapsed().as_secs_f64());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("soak.log"))
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("soak: cannot write soak.log: {e}");
        }
    }

    /// Waits until every server is in rotation and plainly `UP` on every
    /// node and every service runs unbroken.
    pub(crate) async fn wait_all_serving(&self, within: Duration) -> BoxResult<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut bad = Vec::new();
            for n in &self.nodes {
                let n = n.lock().await;
                match n.servers().await {
                    Ok(views) => {
                        for s in &self.services {
                            match views.iter().find(|v| v.name == s.name()) {
                                Some(v) if v.is_serving() => {}
                                Some(v) => bad.push(format!(
                                    "{}: {} admin {} {}",
                                    n.name(),
                                    v.name,
                                    v.admin,
                                    v.status
                                )),
                                None => bad.push(format!("{}: {} missing", n.name(), s.name())),
                            }
                        }
                    }
                    Err(e) => bad.push(e.to_string()),
                }
            }
            for s in &self.services {
                if !s.is_running() || s.is_broken() {
                    bad.push(format!("service {} not serving", s.name()));
                }
            }
            if bad.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not every server serving within {within:?}: {bad:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every 10 ms, each node's view of each server whose service is stopped
/// or broken: in rotation and `UP` there means requests can fail.
async fn watch_dead_in_rotation(world: Arc<World>) {
    let mut exposed: std::collections::BTreeSet<(usize, String)> = Default::default();
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let dt = ms(last.elapsed());
        last = Instant::now();
        for (i, node) in world.nodes.iter().enumerate() {
            let views = match node.try_lock() {
                Ok(n) if n.is_up() => n.servers().await.ok().map(|v| (n.name().to_owned(), v)),
                _ => None,
            };
            let Some((node_name, views)) = views else {
                continue;
            };
            for v in views {
                let dead = world
                    .service(&v.name)
                    .is_some_and(|s| !s.is_running() || s.is_broken());
                let key = (i, v.name.clone());
                if dead && !v.is_out() && v.status.starts_with("UP") {
                    let mut e = world
                        .exposure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    e.0 += dt;
                    if exposed.insert(key) {
                        e.1 += 1;
                        drop(e);
                        world.note(&format!(
                            "dead service {} in rotation on {} ({})",
                            v.name, node_name, v.status
                        ));
                    }
                } else {
                    exposed.remove(&key);
                }
            }
        }
    }
}

/// Runs the soak until its time or rollout bound.
pub async fn run(cfg: SoakConfig) -> BoxResult<SoakReport> {
    let bin = haproxy_bin().ok_or(HAPROXY_MISSING)?;
    for b in [&cfg.rollout_bin, &cfg.demo_bin] {
        if !b.is_file() {
            return Err(format!(
                "{} is missing: cargo build -p examples --bin soak --bin rollout --bin demo",
                b.display()
            )
            .into());
        }
    }
    let tmp = tempfile::Builder::new().prefix("hygiene-soak-").tempdir()?;
    let dir = cfg.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let mut services = Vec::new();
    for i in 1..=cfg.servers {
        services.push(HelloService::start(&format!("s{i}"), Duration::from_millis(20)).await?);
    }
    let servers: Vec<(String, SocketAddr)> = services
        .iter()
        .map(|s| (s.name().to_owned(), s.addr()))
        .collect();
    let mut nodes = Vec::new();
    let mut frontends = Vec::new();
    let mut sockets = Vec::new();
    let mut lb = HaproxyBalancer::builder();
    for name in ["lb-a", "lb-b"] {
        let n = Node::start(name, &bin, &dir.join(name), &servers, cfg.checks).await?;
        frontends.push(n.frontend());
        sockets.push((n.socket().to_owned(), n.master_socket().to_owned()));
        lb = lb.node(
            hygiene_haproxy::Node::unix(n.socket())
                .master_socket(n.master_socket())
                .named(name),
        );
        nodes.push(Arc::new(tokio::sync::Mutex::new(n)));
    }
    let control = Control::start(&services).await?;
    let world = Arc::new(World {
        clients: Clients::start(&frontends, cfg.load),
        balancer: lb.backend("web").build()?,
        cfg,
        services,
        control,
        nodes,
        frontends,
        sockets,
        exposure: std::sync::Mutex::new((0, 0)),
        started: Instant::now(),
        dir,
    });
    let monitor = tokio::spawn(watch_dead_in_rotation(Arc::clone(&world)));
    let result = soak(&world).await;
    monitor.abort();
    if result.is_err() || cfg_keep(&world) {
        eprintln!("soak: journals and logs in {}", world.dir.display());
        let _kept = tmp.keep();
    }
    let total = world.clients.stop().await;
    for n in &world.nodes {
        n.lock().await.stop().await;
    }
    for s in &world.services {
        s.stop();
    }
    let mut report = result?;
    report.requests = total.requests;
    Ok(report)
}

async fn soak(world: &Arc<World>) -> BoxResult<SoakReport> {
    let cfg = &world.cfg;
    let started = Instant::now();
    let mut report = SoakReport {
        seed: cfg.seed,
        reaction_bound_ms: ms(cfg.reaction_bound()),
        ..SoakReport::default()
    };
    for k in FaultKind::ALL {
        report.kinds.insert(k, KindFigures::default());
    }
    world.wait_all_serving(Duration::from_secs(15)).await?;
    // Let the load reach a steady state before the first sample.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = world.sample().await;
    let mut rng = Rng::new(cfg.seed);
    let mut draw = FaultDraw::new(cfg.max_faults);
    let mut i = 0usize;
    loop {
        if cfg.rollouts.is_some_and(|n| i >= n)
            || cfg.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        i += 1;
        let kinds = draw.next(&mut rng);
        let plan = round::Plan::draw(&mut rng, kinds, cfg);
        let r = round::run(world, i, &plan).await?;
        report.rollouts += 1;
        r.fold_into(&mut report);
        if cfg.verbose {
            eprintln!(
                "soak: rollout {i} {:?}: injected {:?}, lost {}, failed {} (reload windows {}), t={:.0}s",
                plan.kinds,
                r.injected,
                r.lost.len(),
                r.outside.failed,
                r.in_reload.failed,
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(fatal) = r.fatal {
            report.violation(format!("rollout {i}: {fatal}"));
            break;
        }
    }
    let last = world.sample().await;
    let all = last.since(&first);
    report.failed_requests = all.failed;
    report.haproxy = all.haproxy;
    report.duration_s = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    report.ok = report.violations.is_empty()
        && report.targets_lost == 0
        && report.failed_outside_reload == 0
        && report.haproxy_outside_reload.total() == 0
        && report.reaction_ms_max <= report.reaction_bound_ms;
    Ok(report)
}

/// Keep the directory: the caller chose it, or something failed.
fn cfg_keep(world: &World) -> bool {
    world.cfg.dir.is_some()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
