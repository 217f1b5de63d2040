//! One rollout of the soak: the faults drawn for it, the `rollout`
//! process (and its `resume`), the faults injected while it runs, then the
//! check of the invariant and the repair.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hygiene_core::journal::{FileJournal, Op, Record};
use hygiene_core::{LoadBalancer as _, Report, TargetId};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::fault::{FaultKind, Rng};
use super::traffic::Sample;
use super::{ms, KindFigures, SoakConfig, SoakReport, World};
use crate::BoxResult;

/// The faults of one rollout and where they land.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) kinds: Vec<FaultKind>,
    fail_on: Option<String>,
    break_on: Option<String>,
    hang_on: Option<String>,
    /// SIGKILL / SIGINT once the journal holds this many records…
    signal_at_record: usize,
    /// …plus this delay.
    signal_delay: Duration,
    /// Reload during the n-th maintenance (1-based), this long after it starts.
    reload_exec: usize,
    reload_delay: Duration,
    reload_nodes: Vec<usize>,
    /// Remove the server of the n-th maintenance.
    remove_exec: usize,
    /// Kill node `restart_node` at the n-th drain, for `restart_down`.
    restart_drain: usize,
    restart_node: usize,
    restart_down: Duration,
    long_ms: (u64, u64),
    long_seed: u64,
}

impl Plan {
    /// Draws where each fault lands.
    pub(crate) fn draw(rng: &mut Rng, kinds: Vec<FaultKind>, cfg: &SoakConfig) -> Self {
        let n = cfg.servers.max(1);
        let mut names: Vec<String> = (1..=n).map(|i| format!("s{i}")).collect();
        rng.shuffle(&mut names);
        let mut names = names.into_iter();
        let mut pick = |k: FaultKind| {
            if kinds.contains(&k) {
                names.next()
            } else {
                None
            }
        };
        let (fail_on, break_on, hang_on) = (
            pick(FaultKind::Fail),
            pick(FaultKind::Broken),
            pick(FaultKind::Hang),
        );
        let half_patch = u64::try_from(cfg.patch.as_millis() / 2).unwrap_or(0);
        Self {
            fail_on,
            break_on,
            hang_on,
            // A run writes about eight records per target (drain, maintenance
            // and enable intents and results, finish): stay below that so the
            // signal nearly always lands.
            signal_at_record: rng.range(2, 6 * n as u64) as usize,
            signal_delay: Duration::from_millis(rng.range(0, 150)),
            reload_exec: rng.range(1, n as u64) as usize,
            reload_delay: Duration::from_millis(rng.range(0, half_patch)),
            reload_nodes: match rng.range(0, 2) {
                0 => vec![0],
                1 => vec![1],
                _ => vec![0, 1],
            },
            remove_exec: rng.range(1, n as u64) as usize,
            restart_drain: rng.range(1, n as u64) as usize,
            restart_node: rng.index(2),
            restart_down: Duration::from_millis(rng.range(200, 1500)),
            long_ms: (2000, 4000),
            long_seed: rng.next_u64(),
            kinds,
        }
    }

    fn has(&self, k: FaultKind) -> bool {
        self.kinds.contains(&k)
    }
}

/// What one rollout gave.
#[derive(Debug, Default)]
pub(crate) struct RoundResult {
    pub(crate) injected: Vec<FaultKind>,
    pub(crate) lost: Vec<String>,
    kept_out: u64,
    /// Counted outside the windows of a node back with fresh state
    /// (a reload, a restart, a reload removing a server) during a
    /// maintenance.
    pub(crate) outside: Sample,
    /// Counted inside them.
    pub(crate) in_reload: Sample,
    /// The same, per fault kind.
    by_window: BTreeMap<FaultKind, Sample>,
    drain_lost: u64,
    drain_lost_ms_max: u64,
    resumes_completed: u64,
    reactions: Vec<(FaultKind, u64)>,
    killed_during_drain: u64,
    violations: Vec<String>,
    /// The soak cannot go on (repair failed, a process would not end).
    pub(crate) fatal: Option<String>,
    planned: Vec<FaultKind>,
    index: usize,
}

impl RoundResult {
    /// Adds this rollout's figures to the soak's.
    pub(crate) fn fold_into(&self, r: &mut SoakReport) {
        let add = |f: &mut KindFigures, this: &Self| {
            f.targets_lost += this.lost.len() as u64;
            f.kept_out_named += this.kept_out;
            f.failed_requests += this.outside.failed;
            for (k, v) in &this.outside.failed_by_cause {
                *f.failed_by_cause.entry(k.clone()).or_default() += v;
            }
            f.haproxy.add(&this.outside.haproxy);
            f.dead_in_rotation_ms += this.outside.dead_in_rotation_ms;
            f.drain_lost += this.drain_lost;
            f.drain_lost_in_service_ms_max =
                f.drain_lost_in_service_ms_max.max(this.drain_lost_ms_max);
        };
        for k in &self.planned {
            let Some(f) = r.kinds.get_mut(k) else {
                continue;
            };
            if !self.injected.contains(k) {
                f.not_reached += 1;
                continue;
            }
            f.injected += 1;
            add(f, self);
            match k {
                FaultKind::Sigkill => f.resumes_completed += self.resumes_completed,
                FaultKind::Reload | FaultKind::NodeRestart | FaultKind::ServerRemoved => {
                    if *k == FaultKind::NodeRestart {
                        f.killed_during_drain += self.killed_during_drain;
                    }
                    if let Some(w) = self.by_window.get(k) {
                        f.failed_requests += w.failed;
                        for (c, v) in &w.failed_by_cause {
                            *f.failed_by_cause.entry(c.clone()).or_default() += v;
                        }
                        f.haproxy.add(&w.haproxy);
                        f.dead_in_rotation_ms += w.dead_in_rotation_ms;
                    }
                    let m = self
                        .reactions
                        .iter()
                        .filter(|(x, _)| x == k)
                        .map(|(_, m)| *m)
                        .max()
                        .unwrap_or(0);
                    f.reaction_ms_max = f.reaction_ms_max.max(m);
                }
                _ => {}
            }
        }
        r.faults += self.injected.len() as u64;
        r.targets_lost += self.lost.len() as u64;
        r.failed_outside_reload += self.outside.failed;
        r.haproxy_outside_reload.add(&self.outside.haproxy);
        r.dead_in_rotation_outside_reload_ms += self.outside.dead_in_rotation_ms;
        r.drain_lost += self.drain_lost;
        r.resumes_completed += self.resumes_completed;
        let m = self.reactions.iter().map(|(_, m)| *m).max().unwrap_or(0);
        r.reaction_ms_max = r.reaction_ms_max.max(m);
        if !self.lost.is_empty() {
            r.violations_push(format!("targets lost: {:?}", self.lost));
        }
        if self.outside.failed > 0 || self.outside.haproxy.total() > 0 {
            r.violations_push(format!(
                "rollout {}, faults {:?}: {} failed requests outside reload windows {:?}, haproxy {:?}, dead service in rotation {} ms",
                self.index,
                self.injected,
                self.outside.failed,
                self.outside.failed_by_cause,
                self.outside.haproxy,
                self.outside.dead_in_rotation_ms
            ));
        }
        for v in &self.violations {
            r.violations_push(v.clone());
        }
    }
}

impl SoakReport {
    fn violations_push(&mut self, v: String) {
        self.violation(v);
    }
}

/// A fresh-state window: the clients' and HAProxy's counts at its start
/// and at its end, with when each was read.
#[derive(Debug, Clone)]
struct Window {
    from: (Instant, Sample),
    to: (Instant, Sample),
}

impl Window {
    async fn open(world: &World) -> (Instant, Sample) {
        (Instant::now(), world.sample().await)
    }

    async fn close(world: &World, from: (Instant, Sample)) -> Self {
        let to = (Instant::now(), world.sample().await);
        Self { from, to }
    }

    fn counted(&self) -> Sample {
        self.to.1.since(&self.from.1)
    }
}

/// What the windows counted together, each instant once: overlapping
/// windows (a reload and a restart in one rollout) are merged, so a failure
/// in both is neither counted twice nor subtracted twice from the rest.
fn union(windows: &[Window]) -> Sample {
    let mut w: Vec<&Window> = windows.iter().collect();
    w.sort_by_key(|x| x.from.0);
    let mut total = Sample::default();
    type Reading = (Instant, Sample);
    let mut cur: Option<(&Reading, &Reading)> = None;
    for x in w {
        cur = match cur {
            Some((from, to)) if x.from.0 <= to.0 => {
                Some((from, if x.to.0 > to.0 { &x.to } else { to }))
            }
            Some((from, to)) => {
                total.add(&to.1.since(&from.1));
                Some((&x.from, &x.to))
            }
            None => Some((&x.from, &x.to)),
        };
    }
    if let Some((from, to)) = cur {
        total.add(&to.1.since(&from.1));
    }
    total
}

/// What a fault task reports.
#[derive(Debug, Default)]
struct FaultOut {
    injected: Option<FaultKind>,
    window: Option<Window>,
    reactions: Vec<u64>,
    removed: Option<String>,
    killed_during_drain: bool,
    violations: Vec<String>,
}

/// A `rollout` process and its stdout.
#[derive(Debug)]
struct Proc {
    child: Child,
    stdout: JoinHandle<String>,
}

impl Proc {
    fn spawn(
        world: &World,
        plan: &Plan,
        mode: &str,
        journal: &Path,
        log: &Path,
    ) -> BoxResult<Self> {
        let cfg = &world.cfg;
        let mut c = Command::new(&cfg.rollout_bin);
        c.arg(mode);
        for (s, m) in &world.sockets {
            c.arg("--socket").arg(s).arg("--master-socket").arg(m);
        }
        c.arg("--journal")
            .arg(journal)
            .arg("--poll-ms")
            .arg(ms(cfg.poll).to_string())
            .arg("--health-timeout-s")
            .arg(cfg.health_timeout_s.to_string())
            .arg("--execute-timeout-ms")
            .arg(ms(cfg.execute_timeout).to_string())
            // Keep rolling after failures, but never leave nothing serving
            // (kept-out targets, a removed server and the one in
            // maintenance): one server stays healthy, or the run aborts.
            .arg("--max-failures")
            .arg("100%")
            .arg("--min-healthy")
            .arg("1")
            .arg("--capacity-timeout-s")
            .arg("2")
            .arg("--on-interrupted")
            .arg("fail")
            .arg("--")
            .arg(&cfg.demo_bin)
            .arg("patch")
            .arg("--control")
            .arg(world.control.addr().to_string())
            .arg("--patch-ms")
            .arg(ms(cfg.patch).to_string());
        for (flag, on) in [
            ("--fail-on", &plan.fail_on),
            ("--break-on", &plan.break_on),
            ("--hang-on", &plan.hang_on),
        ] {
            if let Some(name) = on {
                c.arg(flag).arg(name);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cfg.rollout_bin.display()))?;
        let mut out = child.stdout.take().ok_or("no stdout")?;
        let stdout = tokio::spawn(async move {
            let mut s = String::new();
            let _read = out.read_to_string(&mut s).await;
            s
        });
        Ok(Self { child, stdout })
    }

    /// Waits for the end; the report it printed, if any.
    async fn finish(mut self) -> Option<Report> {
        let _status = self.child.wait().await;
        let out = self.stdout.await.unwrap_or_default();
        serde_json::from_str(&out).ok()
    }
}

fn intents(records: &[Record], op: Op) -> Vec<Vec<TargetId>> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Intent { op: o, ids, .. } if *o == op => Some(ids.clone()),
            _ => None,
        })
        .collect()
}

fn server_of(id: &TargetId) -> String {
    id.as_str()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs rollout number `i` with its faults.
pub(crate) async fn run(world: &Arc<World>, i: usize, plan: &Plan) -> BoxResult<RoundResult> {
    let journal = world.dir.join(format!("rollout-{i}.jsonl"));
    let log = world.dir.join(format!("rollout-{i}.log"));
    world.note(&format!("rollout {i}: faults {:?} {plan:?}", plan.kinds));
    let mut res = RoundResult {
        index: i,
        planned: plan.kinds.clone(),
        ..RoundResult::default()
    };
    let before = world.sample().await;
    let long = if plan.has(FaultKind::LongRequests) {
        let l = world
            .clients
            .long_requests(&world.frontends, 2, plan.long_ms, plan.long_seed);
        // In flight on every server before the first drain.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some(l)
    } else {
        None
    };
    let mut proc = Proc::spawn(world, plan, "run", &journal, &log)?;
    let mut tasks: Vec<JoinHandle<BoxResult<FaultOut>>> = Vec::new();
    let signal = plan
        .kinds
        .iter()
        .copied()
        .find(|k| matches!(k, FaultKind::Sigkill | FaultKind::Sigint));
    let (mut signalled, mut reloaded, mut removed, mut restarted) = (false, false, false, false);
    let mut resumed = false;
    let mut reports: Vec<Report> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let final_report = loop {
        let records = FileJournal::read(&journal).unwrap_or_default();
        let execs = intents(&records, Op::Execute);
        let drains = intents(&records, Op::Drain);
        if let Some(sig) = signal.filter(|_| !signalled && records.len() >= plan.signal_at_record) {
            signalled = true;
            tokio::time::sleep(plan.signal_delay).await;
            if proc.child.try_wait()?.is_none() {
                world.note(&format!("rollout {i}: {sig} at record {}", records.len()));
                res.injected.push(sig);
                if sig == FaultKind::Sigkill {
                    let _sent = proc.child.start_kill();
                    if let Some(r) = proc.finish().await {
                        reports.push(r);
                    }
                    proc = Proc::spawn(world, plan, "resume", &journal, &log)?;
                    resumed = true;
                    continue;
                }
                let pid = proc.child.id().ok_or("rollout gone")?;
                let status = Command::new("kill")
                    .arg("-INT")
                    .arg(pid.to_string())
                    .status()
                    .await?;
                if !status.success() {
                    res.violations.push(format!("kill -INT {pid} failed"));
                }
            }
        }
        if plan.has(FaultKind::Reload) && !reloaded {
            if let Some(ids) = execs.get(plan.reload_exec - 1) {
                reloaded = true;
                let target = ids.first().map(server_of).unwrap_or_default();
                tasks.push(tokio::spawn(reload(
                    Arc::clone(world),
                    target,
                    plan.reload_nodes.clone(),
                    plan.reload_delay,
                )));
            }
        }
        if plan.has(FaultKind::ServerRemoved) && !removed {
            if let Some(ids) = execs.get(plan.remove_exec - 1) {
                removed = true;
                let target = ids.first().map(server_of).unwrap_or_default();
                tasks.push(tokio::spawn(remove(Arc::clone(world), target)));
            }
        }
        if plan.has(FaultKind::NodeRestart) && !restarted {
            if let Some(ids) = drains.get(plan.restart_drain - 1) {
                restarted = true;
                let target = ids.first().map(server_of).unwrap_or_default();
                tasks.push(tokio::spawn(restart(
                    Arc::clone(world),
                    plan.restart_node,
                    target,
                    journal.clone(),
                    plan.restart_down,
                )));
            }
        }
        if proc.child.try_wait()?.is_some() {
            let report = proc.finish().await;
            if resumed
                && report.is_some()
                && FileJournal::read(&journal)
                    .unwrap_or_default()
                    .iter()
                    .any(|r| matches!(r, Record::End { .. }))
            {
                res.resumes_completed += 1;
            }
            break report;
        }
        if Instant::now() > deadline {
            let _sent = proc.child.start_kill();
            let _report = proc.finish().await;
            res.fatal = Some(format!(
                "the rollout did not end within 180 s; log {}",
                log.display()
            ));
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut windows: Vec<Window> = Vec::new();
    let mut removed_server = None;
    for t in tasks {
        let out = t.await.map_err(|e| format!("fault task: {e}"))??;
        res.injected.extend(out.injected);
        if let (Some(w), Some(k)) = (&out.window, out.injected) {
            res.by_window.entry(k).or_default().add(&w.counted());
            windows.push(w.clone());
        }
        if let Some(k) = out.injected {
            res.reactions.extend(out.reactions.iter().map(|m| (k, *m)));
        }
        res.killed_during_drain += u64::from(out.killed_during_drain);
        res.violations.extend(out.violations);
        removed_server = removed_server.or(out.removed);
    }
    if plan.has(FaultKind::Fail) && plan.fail_on.is_some() {
        res.injected.push(FaultKind::Fail);
    }
    if plan.has(FaultKind::Broken) {
        res.injected.push(FaultKind::Broken);
    }
    if plan.has(FaultKind::Hang) {
        res.injected.push(FaultKind::Hang);
    }
    if let Some(l) = long {
        l.stop().await;
        res.injected.push(FaultKind::LongRequests);
    }
    res.injected.sort();
    // Which faults actually hit their target: a maintenance fault only
    // lands if that target's maintenance started.
    let started: BTreeSet<String> = intents(
        &FileJournal::read(&journal).unwrap_or_default(),
        Op::Execute,
    )
    .iter()
    .flatten()
    .map(server_of)
    .collect();
    for (k, on) in [
        (FaultKind::Fail, &plan.fail_on),
        (FaultKind::Broken, &plan.break_on),
        (FaultKind::Hang, &plan.hang_on),
    ] {
        if on.as_ref().is_some_and(|n| !started.contains(n)) {
            res.injected.retain(|x| *x != k);
        }
    }
    if let Some(r) = &final_report {
        reports.push(r.clone());
    } else if res.fatal.is_none() {
        // Nothing to check the balancer against: stop here, loudly.
        res.fatal = Some(format!("no report from the rollout; log {}", log.display()));
    }
    for r in &reports {
        for t in &r.targets {
            res.drain_lost += t.drain_lost.len() as u64;
            for l in &t.drain_lost {
                let m = l.in_service_at_most().map_or(u64::MAX, ms);
                res.drain_lost_ms_max = res.drain_lost_ms_max.max(m);
            }
        }
    }
    if res.fatal.is_none() {
        check_and_repair(world, i, final_report.as_ref(), removed_server, &mut res).await;
    }
    let after = world.sample().await;
    world.note(&format!(
        "rollout {i}: end, report {:?}",
        final_report.as_ref().map(|r| &r.outcome)
    ));
    let windows = union(&windows);
    res.outside = after.since(&before).since(&windows);
    res.in_reload = windows;
    Ok(res)
}

/// The invariant after a rollout (every server out of rotation on a node
/// is named by the report as kept out), then the repair, then every
/// server serving on both nodes.
async fn check_and_repair(
    world: &World,
    i: usize,
    report: Option<&Report>,
    removed: Option<String>,
    res: &mut RoundResult,
) {
    let named: BTreeSet<String> = report
        .map(|r| r.kept_out().map(|t| server_of(&t.id)).collect())
        .unwrap_or_default();
    res.kept_out = named.len() as u64;
    let mut lost = BTreeSet::new();
    for n in &world.nodes {
        let n = n.lock().await;
        match n.servers().await {
            Ok(views) => {
                for v in views {
                    if v.is_out() && !named.contains(&v.name) {
                        lost.insert(v.name.clone());
                    }
                    let dead = world
                        .service(&v.name)
                        .is_some_and(|s| !s.is_running() || s.is_broken());
                    if dead && !v.is_out() && v.status.starts_with("UP") {
                        res.violations.push(format!(
                            "rollout {i}: {} serves {} (status {}) while its service is down, named: {}",
                            n.name(),
                            v.name,
                            v.status,
                            named.contains(&v.name)
                        ));
                    }
                }
            }
            Err(e) => res
                .violations
                .push(format!("rollout {i}: {}: {e}", n.name())),
        }
    }
    res.lost = lost.iter().cloned().collect();
    // Repair: what the report names (and, to go on, what it lost).
    let mut ids = Vec::new();
    for name in named.iter().chain(lost.iter()) {
        if let Some(s) = world.service(name) {
            s.set_broken(false);
            if let Err(e) = s.resume() {
                res.fatal = Some(format!("cannot restart {name}: {e}"));
                return;
            }
        }
        if removed.as_deref() != Some(name.as_str()) {
            if let Ok(id) = TargetId::new(format!("web/{name}")) {
                ids.push(id);
            }
        }
    }
    // Services a fault stopped whose target was never taken out (a
    // maintenance cut short where the report says nothing) come back too.
    for s in &world.services {
        if !s.is_running() || s.is_broken() {
            s.set_broken(false);
            if let Err(e) = s.resume() {
                res.fatal = Some(format!("cannot restart {}: {e}", s.name()));
                return;
            }
        }
    }
    ids.dedup();
    if !ids.is_empty() {
        if let Err(e) = world.balancer.enable(&ids).await {
            res.violations
                .push(format!("rollout {i}: enable {ids:?} failed: {e}"));
        }
    }
    if removed.is_some() {
        let servers = world.all_servers();
        for n in &world.nodes {
            let mut n = n.lock().await;
            let put_back = match n.write_config(&servers) {
                Ok(()) => n.reload().await,
                Err(e) => Err(e),
            };
            if let Err(e) = put_back {
                res.fatal = Some(format!("cannot put the removed server back: {e}"));
                return;
            }
        }
    }
    if let Err(e) = world.wait_all_serving(Duration::from_secs(20)).await {
        res.fatal = Some(format!("repair: {e}"));
    }
}

/// A reload of `nodes` during the maintenance of `target`; measures how
/// long the new process keeps the stopped service in rotation.
async fn reload(
    world: Arc<World>,
    target: String,
    nodes: Vec<usize>,
    delay: Duration,
) -> BoxResult<FaultOut> {
    tokio::time::sleep(delay).await;
    let mut out = FaultOut::default();
    let start = Window::open(&world).await;
    for i in nodes {
        let Some(node) = world.nodes.get(i) else {
            continue;
        };
        {
            let mut n = node.lock().await;
            if !n.is_up() {
                continue;
            }
            n.reload().await?;
            world.note(&format!(
                "reload of {} during the maintenance of {target}",
                n.name()
            ));
        }
        out.injected = Some(FaultKind::Reload);
        react(&world, node, &target, &mut out).await;
    }
    // Requests sent to the stopped service end at once (refused, 503).
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.window = Some(Window::close(&world, start).await);
    Ok(out)
}

/// After a node came back with fresh state (a reload, a restart), how long
/// it keeps `target` in rotation while its service is stopped or broken:
/// until the node shows it out (drained again) or down (its check), or the
/// service is back. Over 5 s is a violation.
async fn react(
    world: &World,
    node: &Arc<tokio::sync::Mutex<crate::soak::node::Node>>,
    target: &str,
    out: &mut FaultOut,
) {
    let t0 = Instant::now();
    loop {
        let view = {
            let n = node.lock().await;
            n.servers().await.ok()
        };
        let gone = view.is_some_and(|v| {
            v.iter()
                .find(|s| s.name == target)
                .is_none_or(|s| s.is_out() || s.status.starts_with("DOWN"))
        });
        let back = world
            .service(target)
            .is_some_and(|s| s.is_running() && !s.is_broken());
        if gone || back {
            world.note(&format!(
                "reaction {} ms for {target} ({})",
                ms(t0.elapsed()),
                if gone { "out or down" } else { "service back" }
            ));
            out.reactions.push(ms(t0.elapsed()));
            return;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            out.reactions.push(ms(t0.elapsed()));
            out.violations.push(format!(
                "{target} stayed in rotation with its service down for 5 s after its node came back with fresh state"
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The services stopped or broken right now (a maintenance running).
fn stopped(world: &World) -> Vec<String> {
    world
        .services
        .iter()
        .filter(|s| !s.is_running() || s.is_broken())
        .map(|s| s.name().to_owned())
        .collect()
}

/// `target` removed from both nodes' configuration by a reload.
async fn remove(world: Arc<World>, target: String) -> BoxResult<FaultOut> {
    let servers: Vec<_> = world
        .all_servers()
        .into_iter()
        .filter(|(n, _)| *n != target)
        .collect();
    let mut out = FaultOut {
        injected: Some(FaultKind::ServerRemoved),
        removed: Some(target.clone()),
        ..FaultOut::default()
    };
    // The reload also puts every other server back in rotation: one under
    // maintenance then takes requests until the run drains it again.
    let start = Window::open(&world).await;
    for node in &world.nodes {
        let up = {
            let mut n = node.lock().await;
            n.write_config(&servers)?;
            if n.is_up() {
                n.reload().await?;
            }
            world.note(&format!("{target} removed from {} by a reload", n.name()));
            n.is_up()
        };
        if up {
            for s in stopped(&world).into_iter().filter(|s| *s != target) {
                react(&world, node, &s, &mut out).await;
            }
        }
    }
    // The replaced workers finish their requests (long ones last seconds)
    // and close their idle keep-alive connections: still the reload.
    for node in &world.nodes {
        let old = node.lock().await.old_worker();
        if let Some(pid) = old {
            super::node::wait_gone(pid, Duration::from_secs(6)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.window = Some(Window::close(&world, start).await);
    Ok(out)
}

/// Node `i` killed when the drain of `target` starts, started again after
/// `down`. Its load moves off it first, as a virtual IP would.
async fn restart(
    world: Arc<World>,
    i: usize,
    target: String,
    journal: PathBuf,
    down: Duration,
) -> BoxResult<FaultOut> {
    let Some(node) = world.nodes.get(i) else {
        return Ok(FaultOut::default());
    };
    world.clients.pause(i).await;
    node.lock().await.kill().await;
    world.note(&format!("node {i} killed at the drain of {target}"));
    let executing = intents(
        &FileJournal::read(&journal).unwrap_or_default(),
        Op::Execute,
    )
    .iter()
    .flatten()
    .any(|id| server_of(id) == target);
    tokio::time::sleep(down).await;
    // A restarted node has every server in rotation: one under maintenance
    // takes requests until the run drains it again.
    let start = Window::open(&world).await;
    let frontend = {
        let mut n = node.lock().await;
        n.restart().await?;
        n.frontend()
    };
    // A virtual IP moves back once the node's frontend answers (its
    // health check), not when its admin socket does.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(frontend).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    world.clients.resume(i, frontend).await;
    world.note(&format!("node {i} restarted, load back on it"));
    let mut out = FaultOut {
        injected: Some(FaultKind::NodeRestart),
        killed_during_drain: !executing,
        ..FaultOut::default()
    };
    for s in stopped(&world) {
        react(&world, node, &s, &mut out).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.window = Some(Window::close(&world, start).await);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64, failed: u64) -> (Instant, Sample) {
        (
            t0 + Duration::from_millis(ms),
            Sample {
                failed,
                ..Sample::default()
            },
        )
    }

    #[test]
    fn overlapping_windows_count_each_failure_once() {
        let t0 = Instant::now();
        // Cumulative failures: 0 at 0 ms, 3 at 100, 5 at 200, 9 at 300, 9 at 400, 12 at 500.
        let a = Window {
            from: at(t0, 0, 0),
            to: at(t0, 200, 5),
        };
        let b = Window {
            from: at(t0, 100, 3),
            to: at(t0, 300, 9),
        };
        let c = Window {
            from: at(t0, 400, 9),
            to: at(t0, 500, 12),
        };
        // a ∪ b = 0..300 (9), c = 400..500 (3): 12, not 5 + 6 + 3 = 14.
        assert_eq!(union(&[b.clone(), c.clone(), a.clone()]).failed, 12);
        assert_eq!(union(std::slice::from_ref(&a)).failed, 5);
        assert_eq!(union(&[]).failed, 0);
        // One window inside another.
        let inner = Window {
            from: at(t0, 50, 1),
            to: at(t0, 150, 4),
        };
        assert_eq!(union(&[a, inner]).failed, 5);
    }
}
