//! `[[gate]]` and `[[notify]]`: the outside checks a rollout waits on and
//! the webhooks it tells, built from the file and described for `plan` and
//! `validate`.
//!
//! ```toml
//! [[gate]]                      # held while an alert fires (kured, Argo Rollouts)
//! name = "alerts"
//! prometheus = "http://127.0.0.1:9090"
//! query = 'ALERTS{alertstate="firing",service="web"}'
//! when = ["before", "after"]    # the default: before and after each batch
//! interval = "30s"              # asked again this often while it says no
//! timeout = "30m"               # then [rollout] on_gate_timeout decides
//!
//! [[gate]]
//! name = "smoke"
//! url = "https://smoke.internal/ready"   # 2xx = go
//!
//! [[gate]]
//! name = "freeze"
//! command = ["/usr/local/bin/change-freeze", "--team", "web"]   # exit 0 = go
//!
//! [[notify]]
//! url_env = "SLACK_WEBHOOK_URL" # or url = "…"
//! format = "slack"              # or "json" (the default)
//!
//! [[hook]]                      # exit 0 = success; a failure is named
//! name = "silence"
//! when = "before_run"           # after_run, before_batch, after_batch
//! command = ["/usr/local/bin/silence-alerts", "30m"]
//! timeout = "5m"                # the default: 10m
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use hygiene_core::{
    duration_text, CommandGate, Gate, GatePolicy, GateWhen, Notifier, Rollout, RolloutConfig,
};
use hygiene_hooks::{HttpGate, PrometheusGate, WebhookFormat, WebhookNotifier};
use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Loaded};
use crate::setup::at;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// One `[[gate]]`: a name, when and how often, and exactly one of
/// `prometheus` (with `query`), `url` or `command`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GateSection {
    pub(crate) name: String,
    /// `before`, `after`; both when left out.
    #[serde(default)]
    pub(crate) when: Option<Vec<GateWhen>>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) interval: Option<Duration>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) timeout: Option<Duration>,
    /// The Prometheus server's URL.
    pub(crate) prometheus: Option<String>,
    /// Its instant query: go when empty (or a scalar 1).
    pub(crate) query: Option<String>,
    /// An HTTP(S) URL: 2xx = go.
    pub(crate) url: Option<String>,
    /// A program and its arguments: exit 0 = go.
    pub(crate) command: Option<Vec<String>>,
    /// Variables of hygiene's environment the command gets.
    #[serde(default)]
    pub(crate) pass_env: Vec<String>,
    /// Variables set for the command.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HookWhen {
    BeforeRun,
    AfterRun,
    BeforeBatch,
    AfterBatch,
}

/// One `[[hook]]`: a command before or after the run or each batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HookSection {
    pub(crate) name: String,
    pub(crate) when: HookWhen,
    pub(crate) command: Vec<String>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) pass_env: Vec<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
}

/// One `[[notify]]`: a webhook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotifySection {
    /// The webhook's URL (a secret for Slack: prefer `url_env`).
    pub(crate) url: Option<String>,
    /// The variable holding the URL.
    pub(crate) url_env: Option<String>,
    #[serde(default)]
    pub(crate) format: WebhookFormat,
}

/// The gates and notifiers the file configures.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outside {
    gates: Vec<(Arc<dyn Gate>, GatePolicy)>,
    /// Hooks of each batch, with their time limit.
    batch_hooks: Vec<(CommandGate, GateWhen, Duration)>,
    /// Hooks before and after the whole run (`true`: before).
    run_hooks: Vec<(CommandGate, bool, Duration)>,
    notifiers: Vec<Arc<dyn Notifier>>,
    /// One line per gate and notifier, for `plan` and `validate`.
    pub(crate) described: Vec<String>,
}

impl Outside {
    /// `rollout` with the gates and notifiers.
    pub(crate) fn apply(&self, mut rollout: Rollout) -> hygiene_core::Result<Rollout> {
        for (g, p) in &self.gates {
            rollout = rollout.with_gate(Arc::clone(g), p.clone());
        }
        for (h, when, limit) in &self.batch_hooks {
            rollout = rollout.with_hook(h.clone(), *when, *limit)?;
        }
        for n in &self.notifiers {
            rollout = rollout.with_notifier(Arc::clone(n));
        }
        Ok(rollout)
    }

    /// The longest the gates and hooks can hold one batch: before it and
    /// after it, the longest gate timeout (gates are asked together) plus
    /// every batch hook's limit; for `plan`'s worst case.
    pub(crate) fn worst_per_batch(&self) -> Duration {
        [GateWhen::Before, GateWhen::After]
            .into_iter()
            .map(|when| {
                let gates = self
                    .gates
                    .iter()
                    .filter(|(_, p)| p.applies(when))
                    .map(|(_, p)| p.timeout())
                    .max()
                    .unwrap_or_default();
                let hooks: Duration = self
                    .batch_hooks
                    .iter()
                    .filter(|(_, w, _)| *w == when)
                    .map(|(_, _, limit)| *limit)
                    .sum();
                gates + hooks
            })
            .sum()
    }

    /// The run hooks' limits, before and after the whole run.
    pub(crate) fn worst_per_run(&self) -> Duration {
        self.run_hooks.iter().map(|(_, _, limit)| *limit).sum()
    }

    /// Runs the hooks before (`before`) or after the whole run, in the
    /// file's order, each within its time limit, with `vars` in its
    /// environment. The first that fails is named in the error.
    pub(crate) async fn run_hooks(
        &self,
        before: bool,
        vars: &[(&str, String)],
    ) -> Result<(), String> {
        for (h, b, limit) in &self.run_hooks {
            if *b != before {
                continue;
            }
            let name = hygiene_core::Gate::name(h);
            let when = if before { "before" } else { "after" };
            let failed = match tokio::time::timeout(*limit, h.run_with(vars)).await {
                Ok(Ok(None)) => None,
                Ok(Ok(Some(why))) => Some(why),
                Ok(Err(e)) => Some(format!("could not run: {e}")),
                Err(_) => Some(format!(
                    "still running after {} (its timeout): stopped",
                    duration_text::format(*limit)
                )),
            };
            if let Some(why) = failed {
                return Err(format!("hook {name} ({when} the run) failed: {why}"));
            }
        }
        Ok(())
    }
}

/// Builds the `[[gate]]` and `[[notify]]` sections.
pub(crate) fn build(loaded: &Loaded, rollout: &RolloutConfig) -> Result<Outside, ConfigError> {
    let mut out = Outside::default();
    let on_timeout = rollout.on_gate_timeout();
    let mut names: Vec<&str> = Vec::new();
    for (k, g) in loaded.file.gate.iter().enumerate() {
        let key = format!("gate[{k}]");
        let span = g.span();
        let g = g.get_ref();
        if names.contains(&g.name.as_str()) {
            return Err(loaded.error_at(
                Some(span),
                &format!("{key}.name"),
                format!("a second gate named {:?}: give each gate its own name (events, the journal and the report name it)", g.name),
            ));
        }
        names.push(&g.name);
        let (gate, what) = gate(loaded, span.clone(), &key, g)?;
        let interval = g.interval.unwrap_or(DEFAULT_INTERVAL);
        let timeout = g.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut policy = at(
            loaded,
            span.clone(),
            &key,
            GatePolicy::new(interval, timeout),
        )?;
        let when = match g.when.as_deref() {
            None => "before and after each batch",
            Some([GateWhen::Before]) => {
                policy = policy.only(GateWhen::Before);
                "before each batch"
            }
            Some([GateWhen::After]) => {
                policy = policy.only(GateWhen::After);
                "after each batch"
            }
            Some([a, b]) if a != b => "before and after each batch",
            Some(_) => {
                return Err(loaded.error_at(
                    Some(span),
                    &format!("{key}.when"),
                    "give [\"before\"], [\"after\"] or both (the default)",
                ))
            }
        };
        out.described.push(format!(
            "gate {}: {what}; {when}; asked every {} while it says no, for at most {}, then on_gate_timeout = {}",
            g.name,
            duration_text::format(interval),
            duration_text::format(timeout),
            match on_timeout {
                hygiene_core::OnGateTimeout::Abort => "abort",
                hygiene_core::OnGateTimeout::Proceed => "proceed",
            }
        ));
        out.gates.push((gate, policy));
    }
    for (k, h) in loaded.file.hook.iter().enumerate() {
        let key = format!("hook[{k}]");
        let span = h.span();
        let h = h.get_ref();
        if names.contains(&h.name.as_str()) {
            return Err(loaded.error_at(
                Some(span),
                &format!("{key}.name"),
                format!(
                    "{:?} already names a gate or hook: give each its own name",
                    h.name
                ),
            ));
        }
        names.push(&h.name);
        let timeout = h.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT);
        if timeout.is_zero() {
            return Err(loaded.error_at(
                Some(span),
                &format!("{key}.timeout"),
                "must be greater than zero",
            ));
        }
        let cmd = at(
            loaded,
            span.clone(),
            &key,
            CommandGate::hook(&h.name, &h.command),
        )?;
        let cmd = command_env(loaded, span, &key, cmd, &h.pass_env, &h.env)?;
        let when = match h.when {
            HookWhen::BeforeRun => "before the run",
            HookWhen::AfterRun => "after the run",
            HookWhen::BeforeBatch => "before each batch (after its gates)",
            HookWhen::AfterBatch => "after each batch (before the soak and its gates)",
        };
        out.described.push(format!(
            "hook {}: command {} {when}, within {}; a failure is named{}",
            h.name,
            h.command.first().cloned().unwrap_or_default(),
            duration_text::format(timeout),
            match h.when {
                HookWhen::AfterRun => " (the report stands)",
                HookWhen::BeforeRun => " and nothing starts",
                _ => " and nothing more starts",
            }
        ));
        match h.when {
            HookWhen::BeforeRun => out.run_hooks.push((cmd, true, timeout)),
            HookWhen::AfterRun => out.run_hooks.push((cmd, false, timeout)),
            HookWhen::BeforeBatch => out.batch_hooks.push((cmd, GateWhen::Before, timeout)),
            HookWhen::AfterBatch => out.batch_hooks.push((cmd, GateWhen::After, timeout)),
        }
    }
    for (k, n) in loaded.file.notify.iter().enumerate() {
        let key = format!("notify[{k}]");
        let span = n.span();
        let n = n.get_ref();
        let url = match (&n.url, &n.url_env) {
            (Some(u), None) => u.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                loaded.error_at(
                    Some(span.clone()),
                    &format!("{key}.url_env"),
                    format!("{var} is not set (or not UTF-8): export the webhook's URL in it"),
                )
            })?,
            _ => {
                return Err(loaded.error_at(
                    Some(span),
                    &key,
                    "give the webhook's URL in url or, better (a webhook URL is a secret), the name of a variable holding it in url_env; exactly one",
                ))
            }
        };
        let hook = at(loaded, span, &key, WebhookNotifier::new(&url, n.format))?;
        out.described.push(format!(
            "notify {} ({}): start, target failed, gate held, end",
            hook.name(),
            match n.format {
                WebhookFormat::Json => "json",
                WebhookFormat::Slack => "slack",
            }
        ));
        out.notifiers.push(Arc::new(hook));
    }
    Ok(out)
}

/// One gate, and what it asks, in words.
fn gate(
    loaded: &Loaded,
    span: Range<usize>,
    key: &str,
    g: &GateSection,
) -> Result<(Arc<dyn Gate>, String), ConfigError> {
    let command_only = !g.pass_env.is_empty() || !g.env.is_empty();
    let err =
        |field: &str, m: &str| loaded.error_at(Some(span.clone()), &format!("{key}.{field}"), m);
    if g.query.is_some() && g.prometheus.is_none() {
        return Err(err(
            "query",
            "a query needs prometheus = \"http://…:9090\" (the server to ask)",
        ));
    }
    if command_only && g.command.is_none() {
        return Err(err(
            "env",
            "pass_env and env are the command's: remove them, or give command = [\"program\", …]",
        ));
    }
    match (&g.prometheus, &g.url, &g.command) {
        (Some(p), None, None) => {
            let Some(q) = &g.query else {
                return Err(err(
                    "query",
                    "a Prometheus gate needs its query, e.g. query = 'ALERTS{alertstate=\"firing\"}' (go when empty)",
                ));
            };
            let gate = at(
                loaded,
                span.clone(),
                key,
                PrometheusGate::new(&g.name, p, q),
            )?;
            Ok((
                Arc::new(gate),
                format!("prometheus {q} (go when empty or 1)"),
            ))
        }
        (None, Some(u), None) => {
            let gate = at(loaded, span.clone(), key, HttpGate::new(&g.name, u))?;
            Ok((Arc::new(gate), "GET (go on 2xx)".to_owned()))
        }
        (None, None, Some(argv)) => {
            let gate = at(loaded, span.clone(), key, CommandGate::new(&g.name, argv))?;
            let gate = command_env(loaded, span.clone(), key, gate, &g.pass_env, &g.env)?;
            let program = argv.first().cloned().unwrap_or_default();
            Ok((Arc::new(gate), format!("command {program} (go on exit 0)")))
        }
        _ => Err(loaded.error_at(
            Some(span),
            key,
            "give exactly one of prometheus (with query), url or command: what the gate asks",
        )),
    }
}

/// A command's environment: hygiene's secrets (the balancer's password,
/// the webhooks' URLs) withheld, then `pass_env` and `env`.
fn command_env(
    loaded: &Loaded,
    span: Range<usize>,
    key: &str,
    mut cmd: CommandGate,
    pass_env: &[String],
    env: &BTreeMap<String, String>,
) -> Result<CommandGate, ConfigError> {
    if let Some(secret) = crate::setup::password_env(loaded) {
        cmd = at(loaded, span.clone(), key, cmd.withhold_env(&secret))?;
    }
    for n in &loaded.file.notify {
        if let Some(var) = &n.get_ref().url_env {
            cmd = at(loaded, span.clone(), key, cmd.withhold_env(var))?;
        }
    }
    for name in pass_env {
        cmd = at(loaded, span.clone(), key, cmd.with_pass_env(name))?;
    }
    for (k, v) in env {
        cmd = at(loaded, span.clone(), key, cmd.with_env(k, v))?;
    }
    Ok(cmd)
}

/// The hook sections of a file.
pub(crate) type Hooks = Vec<Spanned<HookSection>>;

/// The gate sections of a file, for its checks (`Spanned` keeps the
/// place for errors).
pub(crate) type Gates = Vec<Spanned<GateSection>>;
/// The notify sections of a file.
pub(crate) type Notifies = Vec<Spanned<NotifySection>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_case_holds_every_gate_to_its_timeout_and_every_hook_to_its_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("hygiene.toml");
        std::fs::write(
            &path,
            r#"pool = "web"
[balancer.haproxy]
nodes = ["/run/h.sock"]
backends = ["web"]
[executor.local]
program = "/bin/true"

[[gate]]
name = "alerts"
command = ["/bin/true"]
timeout = "20m"

[[gate]]
name = "smoke"
command = ["/bin/true"]
when = ["after"]
timeout = "25m"

[[hook]]
name = "pre"
when = "before_batch"
command = ["/bin/true"]
timeout = "1m"

[[hook]]
name = "post"
when = "after_batch"
command = ["/bin/true"]
timeout = "2m"

[[hook]]
name = "silence"
when = "before_run"
command = ["/bin/true"]
timeout = "30s"
"#,
        )
        .expect("write");
        let loaded = Loaded::read_with(&path, &[]).expect("loads");
        let rollout = RolloutConfig::builder().build().expect("config");
        let out = build(&loaded, &rollout).expect("builds");
        // Before: the longest gate (20m) + 1m; after: max(20m, 25m) + 2m.
        assert_eq!(out.worst_per_batch(), Duration::from_secs((21 + 27) * 60));
        assert_eq!(out.worst_per_run(), Duration::from_secs(30));
        assert_eq!(
            Outside::default().worst_per_batch(),
            Duration::ZERO,
            "no gate, no hook: nothing added"
        );
    }
}
