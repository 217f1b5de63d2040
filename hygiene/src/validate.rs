//! `validate`: check the configuration; then (unless `--offline`) connect
//! to the balancer and the executor and say what they hold. Changes nothing.

use hygiene_core::journal::{FileJournal, Record};
use hygiene_core::{CancellationToken, Capabilities, Preflight};
use hygiene_haproxy::SocketLevel;
use serde::Serialize;

use crate::cli::{Global, RolloutFlags};
use crate::config::Loaded;
use crate::output::clean;
use crate::status::health_text;
use crate::{elbv2, exit, output, plan, setup, Failure};

#[derive(Debug, Serialize)]
struct Found {
    id: String,
    address: Option<String>,
    port: Option<u16>,
    state: String,
    health: &'static str,
    connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backends: Option<String>,
    /// HAProxy servers of the host with an agent check.
    #[serde(skip_serializing_if = "Option::is_none")]
    agents: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preflight: Option<String>,
}

#[derive(Debug, Serialize)]
struct Validation {
    config: String,
    pool: String,
    journal: String,
    journal_state: String,
    balancer: String,
    executor: String,
    probe: Option<String>,
    /// The gates and notifiers, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outside: Vec<String>,
    /// The shared lease store: reachable and writable, and the holder.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
    rollout: hygiene_core::RolloutConfig,
    online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    capabilities: Option<Capabilities>,
    targets: Vec<Found>,
    problems: Vec<String>,
    /// A run would refuse to start or abort (exit code 6).
    blocked: bool,
    /// Targets earlier runs kept out of rotation, still out.
    kept_out: Vec<String>,
    /// The pool's zones and Auto Scaling groups (mode, `MinSize`
    /// arithmetic), as `plan` shows them.
    #[serde(skip_serializing_if = "String::is_empty")]
    zones_and_groups: String,
}

fn journal_state(path: &std::path::Path) -> String {
    match FileJournal::read(path) {
        Err(e) => format!("unreadable: {e}"),
        Ok(r) if r.is_empty() => "no run yet".into(),
        Ok(r) => {
            let last = r
                .iter()
                .rposition(|x| matches!(x, Record::Header(_)))
                .unwrap_or(0);
            if r[last..].iter().any(|x| matches!(x, Record::End { .. })) {
                "last run finished".into()
            } else {
                "LAST RUN UNFINISHED: run `hygiene status`, then resume or restore it".into()
            }
        }
    }
}

pub(crate) async fn main(g: &Global, flags: &RolloutFlags, offline: bool) -> Result<u8, Failure> {
    let loaded = Loaded::read_with(&g.config, &g.set)?;
    let cancel = CancellationToken::new();
    let mut setup = setup::build(&loaded, g.state_dir.as_ref(), flags, &cancel).await?;
    // ELBv2: the default drain timeout comes from the deregistration
    // delays, and one that cannot succeed is a problem.
    let drain_problems = if offline {
        Vec::new()
    } else {
        elbv2::drain_timeout(&mut setup).await
    };
    let mut v = Validation {
        config: setup.config_path.display().to_string(),
        pool: setup.pool.clone(),
        journal: setup.journal.display().to_string(),
        journal_state: journal_state(&setup.journal),
        balancer: setup.balancer.name(),
        executor: setup.executor.name(),
        probe: probe_text(&loaded),
        outside: setup.outside.described.clone(),
        lease: None,
        rollout: setup.rollout.clone(),
        online: !offline,
        capabilities: None,
        targets: Vec::new(),
        problems: Vec::new(),
        blocked: false,
        kept_out: Vec::new(),
        zones_and_groups: String::new(),
    };
    v.problems.extend(private_problems(&loaded, &setup.journal));
    let mut blocked = false;
    if v.journal_state.starts_with("LAST RUN UNFINISHED") {
        v.problems.push(format!(
            "the journal {} holds an unfinished run: a new run is refused until it is resumed or restored",
            v.journal
        ));
        blocked = true;
    }
    if let Some(p) = crate::preflight::local_program_problem(&loaded) {
        v.problems.push(p);
        // Offline checks the file, perhaps for another host: the program
        // is that host's.
        blocked |= !offline;
    }
    let mut code = exit::OK;
    v.problems.extend(drain_problems);
    if offline {
        crate::lease::check_offline(&loaded)?;
    } else {
        match crate::lease::validate(&loaded, &setup.pool).await? {
            Some(Ok(line)) => v.lease = Some(line),
            Some(Err(problem)) => {
                v.problems.push(problem);
                blocked = true;
            }
            None => {}
        }
    }
    if !offline {
        let listed = setup.balancer.list().await?;
        setup::select(&mut setup, &listed, flags, false)?;
        let caps = setup.balancer.capabilities();
        v.capabilities = Some(caps);
        if !caps.health_checks && setup.probe.is_none() {
            v.problems.push(
                "the balancer runs no health check on some targets: \"in service\" will count as healthy; add a [probe] so a broken target is never put back".into(),
            );
        }
        if !caps.counts_connections {
            v.problems.push(
                "the balancer does not count in-flight work: a drain ends only when the balancer says the target is out of service".into(),
            );
        }
        #[cfg(feature = "nginx")]
        if let Some(n) = loaded
            .file
            .balancer
            .as_ref()
            .and_then(|b| b.get_ref().nginx.as_ref())
        {
            if setup.probe.is_none() {
                let mode = match n.get_ref().health_checks {
                    Some(crate::config::NginxHealth::Passive) => {
                        hygiene_nginx::HealthChecks::Passive
                    }
                    _ => hygiene_nginx::HealthChecks::Active,
                };
                v.problems
                    .push(hygiene_nginx::traffic_before_fresh_check(mode));
            }
        }
        if let Some(h) = &setup.haproxy {
            for (node, version) in h.versions().await {
                let Ok(Some(ver)) = version else { continue };
                if hygiene_haproxy::HaproxyBalancer::counts_old_workers(&ver) == Some(false) {
                    v.problems.push(format!(
                        "node {node} runs HAProxy {ver}: before 2.5 a worker that a reload is stopping lists no server (haproxy issue 1307), so its requests cannot be counted: during a reload, status reads fail and the drain waits until the old worker exits; upgrade HAProxy to 2.5 or later"
                    ));
                }
            }
            for (node, level) in h.socket_levels().await {
                match level {
                    Ok(SocketLevel::Admin) => {}
                    Ok(SocketLevel::Unknown(reply)) => v.problems.push(format!(
                        "node {node}: `show cli level` is not understood ({reply:?}; HAProxy older than 2.0?): make sure its socket is `level admin`"
                    )),
                    Ok(level) => {
                        v.problems.push(format!(
                            "node {node}: the runtime API socket is at level {level}: every drain would be refused; declare it `stats socket <path> level admin` and reload HAProxy"
                        ));
                        code = exit::UNREACHABLE;
                    }
                    Err(e) => {
                        v.problems.push(format!("node {node}: {e}"));
                        code = exit::UNREACHABLE;
                    }
                }
            }
        }
        let targets: Vec<hygiene_core::Target> = listed.iter().map(|l| l.target.clone()).collect();
        let preflight = match setup.executor.preflight(&targets).await {
            Ok(p) => p,
            Err(e) => {
                v.problems
                    .push(format!("the executor's preflight failed: {e}"));
                code = exit::UNREACHABLE;
                Vec::new()
            }
        };
        for (k, l) in listed.iter().enumerate() {
            let pf = preflight.get(k).map(|p| match p {
                Preflight::Ready => "ready".to_owned(),
                Preflight::NotReady(why) => format!("NOT READY: {why}"),
                other => format!("{other:?}"),
            });
            if let Some(p) = pf.as_ref().filter(|p| p.starts_with("NOT READY")) {
                v.problems.push(format!(
                    "{}: the executor cannot reach it ({p}); it would be skipped",
                    l.target.id
                ));
            }
            let backends = l.target.meta.get("backends").cloned().or_else(|| {
                // ELBv2: the target groups (and their load balancers) holding it.
                let tgs = l.target.meta.get("target_groups")?;
                Some(
                    match l
                        .target
                        .meta
                        .get("load_balancers")
                        .filter(|s| !s.is_empty())
                    {
                        Some(lbs) => format!("{tgs} on {lbs}"),
                        None => tgs.clone(),
                    },
                )
            });
            if let Some(p) = outside_problem(&loaded, &l.target) {
                v.problems.push(p);
            }
            if let Some(agents) = l.target.meta.get("agents") {
                v.problems.push(format!(
                    "{}: {agents} run(s) an agent check, whose `ready` ends a drain or a maintenance: hygiene stops it (`disable agent`) while the host is out and starts it again after, where it ran; a reload or another tool starting it meanwhile ends the drain until hygiene drains again (remove `agent-check`, or have the agent answer no admin state, to rule that out)",
                    l.target.id
                ));
            }
            // Backends of the pool only (HAProxy lists every backend it
            // drains, those outside the pool too).
            let outside: Vec<&str> = l
                .target
                .meta
                .get("other_backends")
                .map(|o| o.split(',').filter_map(|x| x.split('/').next()).collect())
                .unwrap_or_default();
            let in_pool: Vec<&str> = backends
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .filter(|b| !b.is_empty() && !outside.contains(b))
                .collect();
            if in_pool.len() > 1 {
                v.problems.push(format!(
                    "{} serves several backends of the pool ({}): it is drained from all of them together",
                    l.target.id,
                    in_pool.join(",")
                ));
            }
            v.targets.push(Found {
                id: l.target.id.to_string(),
                address: l.target.address.clone(),
                port: l.target.port,
                state: crate::status::state_text(l.status.state).to_owned(),
                health: health_text(l.status.health),
                connections: l.status.connections,
                backends,
                agents: l.target.meta.get("agents").cloned(),
                preflight: pf,
            });
        }
        let (fleet, fleet_problems) = crate::asg::read(&loaded, &mut setup, &listed, false).await?;
        v.problems.extend(fleet_problems);
        let mut p = plan::compute(&setup, &listed, None);
        crate::asg::into_plan(fleet.as_ref(), &mut p);
        v.zones_and_groups = crate::zones::human(&p);
        v.rollout = setup.rollout.clone();
        for s in &p.skipped {
            v.problems.push(format!("{}: {}", s.id, s.reason));
        }
        v.problems.extend(p.problems);
        blocked |= !p.blockers.is_empty();
        v.problems.extend(p.blockers);
        if !preflight.is_empty()
            && preflight
                .iter()
                .all(|p| matches!(p, Preflight::NotReady(_)))
        {
            v.problems
                .push("the maintenance cannot start on any target: a run would refuse".into());
            blocked = true;
        }
        v.kept_out = crate::run::warn_kept_out(g, &setup.journal, &listed, false)?;
        if listed.is_empty() {
            v.problems
                .push("the pool is empty: nothing to maintain".into());
        }
    }
    if blocked && code == exit::OK {
        code = exit::BLOCKED;
    }
    v.blocked = blocked;
    if g.json {
        output::json_line("validate", &v);
    } else {
        output::print(&human(&v));
    }
    Ok(code)
}

/// A target that also serves a pool outside the configuration (another
/// HAProxy backend, NGINX upstream or target group holding the same host):
/// said whether it is drained there too or keeps receiving requests during
/// its maintenance, with the setting that changes it.
fn outside_problem(loaded: &Loaded, t: &hygiene_core::Target) -> Option<String> {
    use crate::config::{HaproxyHosts, NginxHosts, OtherGroups};
    let b = loaded.file.balancer.as_ref()?.get_ref();
    let id = &t.id;
    if let Some(h) = &b.haproxy {
        let others = t.meta.get("other_backends")?;
        return Some(match h.get_ref().hosts {
            HaproxyHosts::AllBackends => format!(
                "{id} also serves {others}, outside the pool: it is drained there too (hosts = \"all_backends\")"
            ),
            HaproxyHosts::PoolBackends => format!(
                "{id} also serves {others}, outside the pool: they keep sending it requests during its maintenance (hosts = \"pool_backends\"); set hosts = \"all_backends\" to drain it there too"
            ),
        });
    }
    if let Some(n) = &b.nginx {
        let others = t.meta.get("other_upstreams")?;
        return Some(match n.get_ref().hosts {
            NginxHosts::AllUpstreams => format!(
                "{id} is also listed in upstream(s) {others}, outside the configured ones: it is drained there too (hosts = \"all_upstreams\")"
            ),
            NginxHosts::ListedOnly => format!(
                "{id} is also listed in upstream(s) {others}, outside the configured ones: they keep sending it work during its maintenance (hosts = \"listed_only\"); set hosts = \"all_upstreams\" to drain it there too"
            ),
        });
    }
    if let Some(e) = &b.elbv2 {
        let others = t.meta.get("other_target_groups")?;
        return Some(match e.get_ref().other_target_groups {
            OtherGroups::Drain => format!(
                "{id} is also registered in target group(s) {others}, outside the pool: it is deregistered there too (other_target_groups = \"drain\")"
            ),
            _ => format!(
                "{id} is also registered in target group(s) {others}, outside the pool: they keep sending it requests during its maintenance; set other_target_groups = \"drain\" to take it out there too"
            ),
        });
    }
    None
}

/// Secrets and state that other local users can read (or a state
/// directory they could plant a journal in).
fn private_problems(loaded: &Loaded, journal: &std::path::Path) -> Vec<String> {
    use hygiene_core::journal::{check_state_dir, readable_by_others};
    let mut problems = Vec::new();
    if let Some(dir) = journal.parent().filter(|d| d.exists()) {
        match check_state_dir(dir) {
            Err(e) => problems.push(format!("{e}; run, resume and restore refuse it")),
            Ok(()) => problems.extend(readable_by_others(dir).map(|w| {
                format!("the state directory {w}: journals and maintenance output are private")
            })),
        }
    }
    let nginx = loaded
        .file
        .balancer
        .as_ref()
        .and_then(|b| b.get_ref().nginx.as_ref());
    if let Some(n) = nginx {
        let n = n.get_ref();
        for (key, file) in [
            ("password_file", &n.password_file),
            ("client_identity_file", &n.client_identity_file),
        ] {
            if let Some(w) = file.as_ref().and_then(|f| readable_by_others(f.get_ref())) {
                problems.push(format!("balancer.nginx.{key}: {w}: it holds a secret"));
            }
        }
    }
    let ssh_key = loaded
        .file
        .executor
        .as_ref()
        .and_then(|x| x.get_ref().ssh.as_ref())
        .and_then(|s| s.get_ref().identity_file.clone());
    if let Some(w) = ssh_key.as_deref().and_then(readable_by_others) {
        problems.push(format!(
            "executor.ssh.identity_file: {w}: it is a private key (ssh refuses it)"
        ));
    }
    problems
}

fn human(v: &Validation) -> String {
    let mut o = format!("configuration {}: valid\n", v.config);
    o.push_str(&format!("  pool       {}\n", v.pool));
    o.push_str(&format!(
        "  journal    {} ({})\n",
        v.journal,
        clean(&v.journal_state)
    ));
    o.push_str(&format!("  balancer   {}\n", v.balancer));
    o.push_str(&format!("  executor   {}\n", v.executor));
    o.push_str(&format!(
        "  probe      {}\n",
        v.probe.as_deref().unwrap_or("none")
    ));
    for line in &v.outside {
        o.push_str(&format!("  {}\n", clean(line)));
    }
    if let Some(l) = &v.lease {
        // The holder is read back from the store: data, escaped.
        o.push_str(&format!("  lease      {}\n", clean(l)));
    }
    let r = &v.rollout;
    o.push_str(&format!(
        "  rollout    batch_size {}, min_healthy {}, max_failures {}, drain_timeout {}, health_timeout {}, pacing {}{}\n",
        r.batch_size(),
        r.min_healthy(),
        r.max_failures(),
        hygiene_core::duration_text::format(r.drain_timeout()),
        hygiene_core::duration_text::format(r.health_timeout()),
        if r.pacing() == hygiene_core::Pacing::Window {
            "window"
        } else {
            "batches"
        },
        if r.canary() { ", canary" } else { "" }
    ));
    if !v.online {
        o.push_str("offline: nothing was contacted\n");
    }
    if let Some(c) = &v.capabilities {
        o.push_str(&format!(
            "balancer reached: counts connections {}, graceful drain {}, hard disable {}, health checks {}\n",
            yes(c.counts_connections),
            yes(c.graceful_drain),
            yes(c.hard_disable),
            yes(c.health_checks)
        ));
        o.push_str(&format!("{} target(s):\n", v.targets.len()));
        for t in &v.targets {
            // Names and addresses came from the balancer: escaped.
            let addr = match (&t.address, t.port) {
                (Some(a), Some(p)) => format!("{}:{p}", clean(a)),
                (Some(a), None) => clean(a),
                _ => "-".into(),
            };
            o.push_str(&format!(
                "  {:<24} {:<22} {:<12} {:<15} {:>3} in flight{}{}{}\n",
                clean(&t.id),
                addr,
                t.state,
                t.health,
                t.connections.map_or_else(|| "?".into(), |c| c.to_string()),
                t.backends
                    .as_ref()
                    .map(|b| format!("  backends {}", clean(b)))
                    .unwrap_or_default(),
                t.agents
                    .as_ref()
                    .map(|a| format!("  agents {}", clean(a)))
                    .unwrap_or_default(),
                t.preflight
                    .as_ref()
                    .map(|p| format!("  executor {}", clean(p)))
                    .unwrap_or_default(),
            ));
        }
    }
    o.push_str(&v.zones_and_groups);
    if v.problems.is_empty() {
        o.push_str("no problem found\n");
    }
    for p in &v.problems {
        o.push_str(&format!("problem: {}\n", clean(p)));
    }
    for k in &v.kept_out {
        o.push_str(&format!("warning: {k}\n"));
    }
    if v.blocked {
        o.push_str("a run would refuse to start or abort (exit code 6)\n");
    }
    o
}

/// The `[probe]` section in words.
fn probe_text(loaded: &Loaded) -> Option<String> {
    use crate::config::ProbeKind;
    let p = loaded.file.probe.as_ref()?.get_ref();
    let port = p
        .port
        .map_or_else(|| "the target's port".to_owned(), |p| format!("port {p}"));
    let timeout =
        hygiene_core::duration_text::format(p.timeout.unwrap_or(std::time::Duration::from_secs(2)));
    Some(match p.kind {
        ProbeKind::Http => format!(
            "http GET {} on {port}, 2xx passes, timeout {timeout}",
            p.path.as_deref().unwrap_or("/")
        ),
        ProbeKind::Tcp => format!("tcp connect to {port}, timeout {timeout}"),
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
