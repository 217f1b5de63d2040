//! The configuration file (`hygiene.toml`): its schema, and errors that name
//! the file, the line and the key, and say what is expected.
// Built without a backend's feature, its section is still parsed (and
// refused with a clear error) but not read.
#![cfg_attr(not(all(feature = "nginx", feature = "aws")), allow(dead_code))]

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hygiene_core::{duration_text, RolloutConfig};
use serde::Deserialize;
use toml::Spanned;

use crate::set::{apply_set, attribute_to_set};

/// A configuration error: where (file, line, column, key) and what.
#[derive(Debug, Clone)]
pub(crate) struct ConfigError {
    /// `file:line:col`, or just the file, or the flag / variable at fault.
    pub(crate) place: String,
    /// The key path (`rollout.drain_timeout`), when known.
    pub(crate) key: Option<String>,
    /// What is wrong and what is expected.
    pub(crate) message: String,
    /// The source line with a caret under the fault, when known.
    pub(crate) snippet: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.place)?;
        if let Some(k) = &self.key {
            write!(f, "{k}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(s) = &self.snippet {
            write!(f, "\n{s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error not tied to a place in a file (a flag, a variable).
    pub(crate) fn flag(flag: &str, message: impl Into<String>) -> Self {
        Self {
            place: flag.to_owned(),
            key: None,
            message: message.into(),
            snippet: None,
        }
    }

    /// The same, naming the key it sets.
    pub(crate) fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }
}

/// A loaded configuration file, kept with its text for error positions.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) path: PathBuf,
    text: String,
    pub(crate) file: File,
    /// The `--set` overrides applied, as (key, `key=value`): errors about
    /// their keys name them, not a line of the rewritten document.
    sets: Vec<(String, String)>,
}

impl Loaded {
    /// Reads and parses `path`, applying `--set key.path=value` overrides (flag or
    /// `HYGIENE_SET`, `;`-separated) before parsing. With overrides, an
    /// error under an overridden key names the `--set`; others name the
    /// file and the key (the rewritten document's lines are not the file's).
    pub(crate) fn read_with(path: &Path, sets: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            place: path.display().to_string(),
            key: None,
            message: format!(
                "cannot read the configuration file: {e}; give it with -c/--config or HYGIENE_CONFIG"
            ),
            snippet: None,
        })?;
        if sets.is_empty() {
            return Self::parse(path, text);
        }
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| toml_error(path, &text, &e, None))?;
        for set in sets {
            apply_set(&mut table, set)?;
        }
        let rewritten = toml::to_string(&table).map_err(|e| {
            ConfigError::flag(
                "--set",
                format!("the overridden configuration cannot be written back: {e}"),
            )
        })?;
        let sets: Vec<(String, String)> = sets
            .iter()
            .map(|s| {
                let key = s.split_once('=').map_or(s.as_str(), |(k, _)| k);
                let key = key.split('.').map(str::trim).collect::<Vec<_>>().join(".");
                (key, s.clone())
            })
            .collect();
        let mut loaded =
            Self::parse(path, rewritten).map_err(|e| attribute_to_set(path, &sets, e))?;
        loaded.sets = sets;
        Ok(loaded)
    }

    /// Parses `text` as the file `path`.
    pub(crate) fn parse(path: &Path, text: String) -> Result<Self, ConfigError> {
        let file = {
            let de =
                toml::Deserializer::parse(&text).map_err(|e| toml_error(path, &text, &e, None))?;
            serde_path_to_error::deserialize::<_, File>(de).map_err(|e| {
                let key = key_path(e.path(), e.inner().message());
                let mut err = toml_error(path, &text, e.inner(), key);
                refine_section_error(path, &text, e.inner().span(), &mut err);
                err
            })?
        };
        let loaded = Self {
            path: path.to_owned(),
            text,
            file,
            sets: Vec::new(),
        };
        loaded.check()?;
        Ok(loaded)
    }

    /// An error at `span` of this file, under `key`.
    pub(crate) fn error_at(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (place, snippet) = locate(&self.path, &self.text, span);
        let e = ConfigError {
            place,
            key: Some(key.to_owned()),
            message: message.into(),
            snippet,
        };
        if self.sets.is_empty() {
            e
        } else {
            attribute_to_set(&self.path, &self.sets, e)
        }
    }

    /// The span of `field = …` in the section at `section`, else the
    /// section's own.
    pub(crate) fn field_span(&self, section: Range<usize>, field: &str) -> Range<usize> {
        field_in_section(&self.text, section.start, field).unwrap_or(section)
    }

    /// Whether the file (with its `--set` overrides) sets `key` in
    /// `[section]`, as opposed to leaving it to the default.
    pub(crate) fn sets(&self, section: &str, key: &str) -> bool {
        self.text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get(section)?.as_table()?.get(key).cloned())
            .is_some()
    }

    /// Exactly one balancer and one executor; pool name well formed.
    fn check(&self) -> Result<(), ConfigError> {
        let f = &self.file;
        let Some(b) = &f.balancer else {
            return Err(self.error_at(
                Some(0..0),
                "balancer",
                "no balancer is configured: add one of [balancer.haproxy], [balancer.nginx], [balancer.elbv2] or [balancer.caddy]",
            ));
        };
        let present: Vec<(&str, Range<usize>)> = [
            b.get_ref().haproxy.as_ref().map(|s| ("haproxy", s.span())),
            b.get_ref().nginx.as_ref().map(|s| ("nginx", s.span())),
            b.get_ref().elbv2.as_ref().map(|s| ("elbv2", s.span())),
            b.get_ref().caddy.as_ref().map(|s| ("caddy", s.span())),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.exactly_one(
            "balancer",
            b.span(),
            &present,
            "[balancer.haproxy], [balancer.nginx], [balancer.elbv2] or [balancer.caddy]",
            " per file",
            "; give each pool its own configuration file",
        )?;
        let Some(x) = &f.executor else {
            return Err(self.error_at(
                Some(0..0),
                "executor",
                "no executor is configured: add one of [executor.local], [executor.ssh] or [executor.ssm] (what runs the maintenance)",
            ));
        };
        let present: Vec<(&str, Range<usize>)> = [
            x.get_ref().local.as_ref().map(|s| ("local", s.span())),
            x.get_ref().ssh.as_ref().map(|s| ("ssh", s.span())),
            x.get_ref().ssm.as_ref().map(|s| ("ssm", s.span())),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.exactly_one(
            "executor",
            x.span(),
            &present,
            "[executor.local], [executor.ssh] or [executor.ssm]",
            "",
            "",
        )?;
        if let Some(p) = &f.pool {
            check_pool_name(p.get_ref()).map_err(|m| self.error_at(Some(p.span()), "pool", m))?;
        }
        Ok(())
    }

    /// Exactly one of the `present` kinds of `section` (at `span`): none
    /// or a second one is an error at the right place.
    fn exactly_one(
        &self,
        section: &str,
        span: Range<usize>,
        present: &[(&str, Range<usize>)],
        choices: &str,
        scope: &str,
        hint: &str,
    ) -> Result<(), ConfigError> {
        match present {
            [] => Err(self.error_at(
                Some(span),
                section,
                format!("the [{section}] section names no {section}: add one of {choices}"),
            )),
            [_] => Ok(()),
            [_, (second, at), ..] => {
                Err(self.error_at(
                    Some(at.clone()),
                    &format!("{section}.{second}"),
                    format!(
                    "a second {section}: exactly one {section} is allowed{scope} (found {}){hint}",
                    present.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" and ")
                ),
                ))
            }
        }
    }

    /// The pool's name: `pool`, else derived from the balancer section.
    pub(crate) fn pool_name(&self) -> String {
        if let Some(p) = &self.file.pool {
            return p.get_ref().clone();
        }
        let Some(b) = &self.file.balancer else {
            return "pool".into();
        };
        let b = b.get_ref();
        let raw = if let Some(h) = &b.haproxy {
            h.get_ref().backends.get_ref().join("+")
        } else if let Some(n) = &b.nginx {
            let n = n.get_ref();
            n.upstreams
                .iter()
                .chain(&n.stream_upstreams)
                .cloned()
                .collect::<Vec<_>>()
                .join("+")
        } else if let Some(c) = &b.caddy {
            c.get_ref().pool_name()
        } else {
            "elbv2".into()
        };
        let clean: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean.is_empty() {
            "pool".into()
        } else {
            clean
        }
    }
}

/// A pool name becomes a file name: keep it to a safe charset.
pub(crate) fn check_pool_name(p: &str) -> Result<(), String> {
    if p.is_empty()
        || p.len() > 100
        || p.starts_with('.')
        || !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
    {
        return Err(format!(
            "{p:?} is not a usable pool name: 1 to 100 characters of [A-Za-z0-9._+-], not starting with '.' (it names the journal file)"
        ));
    }
    Ok(())
}

/// The dotted key path of a serde_path_to_error path, without serde's
/// private `Spanned` segments, plus the unknown field a message names.
fn key_path(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    let mut parts: Vec<String> = path
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                (!key.starts_with("$__")).then(|| key.clone())
            }
            serde_path_to_error::Segment::Seq { index } => Some(format!("[{index}]")),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(field) = rest.split('`').next() {
            if parts.last().map(String::as_str) != Some(field) {
                parts.push(field.to_owned());
            }
        }
    }
    let mut out = String::new();
    for p in parts {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(&p);
    }
    (!out.is_empty()).then_some(out)
}

/// A section's own validation (`[rollout]`: "invalid configuration:
/// min_healthy: …") names the field only in its message and points at the
/// section: point at the field's line instead, and name its key.
fn refine_section_error(
    path: &Path,
    text: &str,
    span: Option<Range<usize>>,
    err: &mut ConfigError,
) {
    let Some(rest) = err.message.strip_prefix("invalid configuration: ") else {
        return;
    };
    let Some((field, message)) = rest.split_once(": ") else {
        return;
    };
    if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return;
    }
    let section = err.key.clone().unwrap_or_default();
    err.key = Some(if section.is_empty() {
        field.to_owned()
    } else {
        format!("{section}.{field}")
    });
    let message = message.to_owned();
    if let Some(at) = field_in_section(text, span.map_or(0, |s| s.start), field) {
        let (place, snippet) = locate(path, text, Some(at));
        err.place = place;
        err.snippet = snippet;
    }
    err.message = message;
}

/// Where `field = …` is set in the section starting at byte `from`: the
/// first line from there that sets it, before the next section.
fn field_in_section(text: &str, from: usize, field: &str) -> Option<Range<usize>> {
    let from = from.min(text.len());
    let mut offset = from;
    for line in text[from..].split_inclusive('\n') {
        let trimmed = line.trim_start();
        if offset > from && trimmed.starts_with('[') {
            return None;
        }
        if trimmed
            .strip_prefix(field)
            .is_some_and(|r| r.trim_start().starts_with('='))
        {
            let start = offset + (line.len() - trimmed.len());
            return Some(start..start + field.len());
        }
        offset += line.len();
    }
    None
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error, key: Option<String>) -> ConfigError {
    let (place, snippet) = locate(path, text, e.span());
    ConfigError {
        place,
        key,
        message: e.message().trim().to_owned(),
        snippet,
    }
}

/// `file:line:col` and the line with a caret, for a byte span of `text`.
fn locate(path: &Path, text: &str, span: Option<Range<usize>>) -> (String, Option<String>) {
    let Some(span) = span else {
        return (path.display().to_string(), None);
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..start].chars().count() + 1;
    let content = text[line_start..].lines().next().unwrap_or("");
    let width = text[start..span.end.min(text.len())]
        .lines()
        .next()
        .map_or(1, |l| l.chars().count().max(1));
    let gutter = line.to_string().len();
    let snippet = format!(
        "{:gutter$} |\n{line} | {content}\n{:gutter$} | {}{}",
        "",
        "",
        " ".repeat(col - 1),
        "^".repeat(width.min(80))
    );
    (format!("{}:{line}:{col}", path.display()), Some(snippet))
}

// ---------------------------------------------------------------- schema

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    /// The pool's name: names its journal (`<state_dir>/<pool>.jsonl`).
    pub(crate) pool: Option<Spanned<String>>,
    /// Where journals and maintenance output are kept.
    pub(crate) state_dir: Option<PathBuf>,
    /// Exactly one balancer.
    pub(crate) balancer: Option<Spanned<BalancerSection>>,
    /// Exactly one executor.
    pub(crate) executor: Option<Spanned<ExecutorSection>>,
    /// The engine's settings (`RolloutConfig`'s own serde form).
    pub(crate) rollout: Option<Spanned<RolloutConfig>>,
    /// A direct check of each target before it is put back.
    pub(crate) probe: Option<Spanned<ProbeSection>>,
    /// `[[gate]]`: checks the rollout waits on before and after each batch.
    #[serde(default)]
    pub(crate) gate: crate::gates::Gates,
    /// `[[notify]]`: webhooks told of the run.
    #[serde(default)]
    pub(crate) notify: crate::gates::Notifies,
    /// `[[hook]]`: commands before and after the run and each batch.
    #[serde(default)]
    pub(crate) hook: crate::gates::Hooks,
    /// Where the pool's lease is kept (`[lease.etcd]` or `[lease.dynamodb]`).
    pub(crate) lease: Option<Spanned<crate::lease_etcd::LeaseSection>>,
}

/// `[balancer.*]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalancerSection {
    pub(crate) haproxy: Option<Spanned<HaproxySection>>,
    pub(crate) nginx: Option<Spanned<NginxSection>>,
    pub(crate) elbv2: Option<Spanned<Elbv2Section>>,
    pub(crate) caddy: Option<Spanned<crate::caddy::CaddySection>>,
}

/// `[balancer.haproxy]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HaproxySection {
    /// Runtime API sockets: a Unix path (`/run/haproxy/admin.sock`) or
    /// `host:port`, one per HAProxy node.
    pub(crate) nodes: Spanned<Vec<String>>,
    /// Backends of the pool.
    pub(crate) backends: Spanned<Vec<String>>,
    /// Each node's master CLI socket (`haproxy -W -S …`), in the order of
    /// `nodes`: a drain then also counts the requests a reload's old
    /// worker is still finishing.
    pub(crate) master_sockets: Option<Spanned<Vec<String>>>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) connect_timeout: Option<Duration>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) read_timeout: Option<Duration>,
    /// Which backends a host is drained from: `all_backends` (default:
    /// every backend holding the same host) or `pool_backends`.
    #[serde(default)]
    pub(crate) hosts: HaproxyHosts,
    /// What makes two servers one host: `address_and_port` (default) or
    /// `address`.
    #[serde(default)]
    pub(crate) host_match: HaproxyHostMatch,
}

/// `[balancer.haproxy] hosts`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HaproxyHosts {
    #[default]
    AllBackends,
    PoolBackends,
}

/// `[balancer.haproxy] host_match`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HaproxyHostMatch {
    #[default]
    AddressAndPort,
    Address,
}

/// `[balancer.nginx]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NginxSection {
    /// API URLs, one per instance (`https://lb1:8443/api`).
    pub(crate) api_urls: Spanned<Vec<String>>,
    /// http upstreams.
    #[serde(default)]
    pub(crate) upstreams: Vec<String>,
    /// stream upstreams.
    #[serde(default)]
    pub(crate) stream_upstreams: Vec<String>,
    /// Basic-auth user; the password comes from `password_env` or `password_file`.
    pub(crate) user: Option<String>,
    /// The environment variable holding the password.
    pub(crate) password_env: Option<Spanned<String>>,
    /// A file holding the password (first line).
    pub(crate) password_file: Option<Spanned<PathBuf>>,
    /// CA certificate(s) to trust (PEM).
    pub(crate) ca_file: Option<Spanned<PathBuf>>,
    /// Client identity: one PEM with the private key and the chain.
    pub(crate) client_identity_file: Option<Spanned<PathBuf>>,
    /// `active` (default) or `passive` health checks.
    pub(crate) health_checks: Option<NginxHealth>,
    pub(crate) api_version: Option<u32>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) timeout: Option<Duration>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) connect_timeout: Option<Duration>,
    /// Which upstreams a host is drained from: `all_upstreams` (default:
    /// every http and stream upstream listing it) or `listed_only`.
    #[serde(default)]
    pub(crate) hosts: NginxHosts,
}

/// `[balancer.nginx] hosts`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NginxHosts {
    #[default]
    AllUpstreams,
    ListedOnly,
}

/// How nginx judges health.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NginxHealth {
    Active,
    Passive,
}

/// `[balancer.elbv2]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Elbv2Section {
    /// A load balancer ARN: the pool is all its target groups.
    pub(crate) load_balancer: Option<String>,
    /// Target group ARNs.
    #[serde(default)]
    pub(crate) target_groups: Vec<String>,
    /// Instance ids: the pool is every target group of the Region holding them.
    #[serde(default)]
    pub(crate) instances: Vec<String>,
    /// Instances by tag (`{ "Patch Group" = "web" }`; a value or a list).
    #[serde(default)]
    pub(crate) tags: BTreeMap<String, ParamValue>,
    /// The `InService` instances of this Auto Scaling group.
    pub(crate) auto_scaling_group: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) profile: Option<String>,
    /// Send requests here (a VPC endpoint, moto).
    pub(crate) endpoint_url: Option<String>,
    /// Target groups outside the pool that hold a pool's instance:
    /// `report` (default: named by validate and the report, not drained),
    /// `drain` (drained and registered again with the pool's) or `ignore`
    /// (not looked for).
    #[serde(default)]
    pub(crate) other_target_groups: OtherGroups,
    /// Instances of an Auto Scaling group: `refuse` (default: a run over
    /// a group with ELB health checks is refused), `suspend` or `standby`.
    #[serde(default)]
    pub(crate) auto_scaling: AutoScaling,
    /// Standby may lower a group's `MinSize` for a batch (journaled, set
    /// back when its instances leave standby).
    #[serde(default)]
    pub(crate) allow_min_size_change: bool,
}

/// `[balancer.elbv2] auto_scaling`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AutoScaling {
    #[default]
    Refuse,
    Suspend,
    Standby,
}

/// `[balancer.elbv2] other_target_groups`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OtherGroups {
    Ignore,
    #[default]
    Report,
    Drain,
}

/// `[executor.*]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecutorSection {
    pub(crate) local: Option<Spanned<LocalSection>>,
    pub(crate) ssh: Option<Spanned<SshSection>>,
    pub(crate) ssm: Option<Spanned<SsmSection>>,
}

/// `[executor.local]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LocalSection {
    /// The program (no shell): targets reach it as `HYGIENE_TARGET_ID`,
    /// `HYGIENE_TARGET_ADDRESS`, `HYGIENE_TARGET_PORT`.
    pub(crate) program: Spanned<String>,
    #[serde(default)]
    pub(crate) args: Vec<String>,
    /// Kill it after this long (default 10m).
    #[serde(default, with = "duration_text::option")]
    pub(crate) timeout: Option<Duration>,
    /// hygiene's own variables the program gets (beyond PATH, HOME, LANG,
    /// LC_*, TZ): nothing else of hygiene's environment reaches it.
    pub(crate) pass_env: Option<Spanned<Vec<String>>>,
    /// Variables set for the program.
    pub(crate) env: Option<Spanned<BTreeMap<String, String>>>,
}

/// `[executor.ssh]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SshSection {
    /// The remote command, run on each target's address.
    pub(crate) command: Spanned<String>,
    pub(crate) user: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) identity_file: Option<PathBuf>,
    pub(crate) known_hosts_file: Option<PathBuf>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) timeout: Option<Duration>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) connect_timeout: Option<Duration>,
    /// The OpenSSH client (default `ssh` on the PATH).
    pub(crate) ssh_program: Option<PathBuf>,
    /// More `-o key=value` options (`ProxyJump = "bastion"`); never the
    /// ones that turn off host key checking or batch mode.
    #[serde(default)]
    pub(crate) options: BTreeMap<String, String>,
    /// hygiene's own variables the local ssh gets (beyond PATH, HOME, LANG,
    /// LC_*, TZ, SSH_AUTH_SOCK).
    pub(crate) pass_env: Option<Spanned<Vec<String>>>,
    /// Variables set for the local ssh.
    pub(crate) env: Option<Spanned<BTreeMap<String, String>>>,
}

/// A document parameter: one value or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum ParamValue {
    One(String),
    Many(Vec<String>),
}

impl ParamValue {
    pub(crate) fn values(&self) -> Vec<String> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `[executor.ssm]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SsmSection {
    /// The SSM document (`AWS-RunPatchBaseline`, `AWS-RunShellScript`).
    pub(crate) document: String,
    pub(crate) document_version: Option<String>,
    #[serde(default)]
    pub(crate) parameters: BTreeMap<String, ParamValue>,
    pub(crate) comment: Option<String>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) delivery_timeout: Option<Duration>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) execution_timeout: Option<Duration>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) wait_timeout: Option<Duration>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) poll_interval: Option<Duration>,
    /// What is checked before a target is drained (default
    /// `instance_information`).
    pub(crate) preflight: Option<SsmPreflight>,
    /// `list` (ListCommandInvocations, default) or `get` (GetCommandInvocation).
    pub(crate) status_api: Option<SsmStatusApi>,
    pub(crate) output_s3_bucket: Option<String>,
    pub(crate) output_s3_key_prefix: Option<String>,
    pub(crate) cloudwatch_log_group: Option<String>,
    /// On Ctrl-C, cancel running commands (default true).
    pub(crate) cancel_on_interrupt: Option<bool>,
    /// A parameter of the document that gets each command's `traceparent`.
    pub(crate) traceparent_parameter: Option<String>,
}

/// What the SSM executor checks before a target is drained.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SsmPreflight {
    /// DescribeDocument (parameters, platforms) and DescribeInstanceInformation
    /// (the agent is online): an instance SSM cannot reach is never drained.
    InstanceInformation,
    /// The document check only, for endpoints without
    /// DescribeInstanceInformation (moto).
    DocumentOnly,
    /// No check (endpoints without either, such as moto with an AWS-managed
    /// document).
    Skip,
}

/// Which API reads SSM command status.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SsmStatusApi {
    List,
    Get,
}

/// `[probe]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProbeSection {
    /// `http` (GET `path`, 2xx passes) or `tcp` (a connection opens).
    pub(crate) kind: ProbeKind,
    /// The HTTP path (http only; default `/`).
    pub(crate) path: Option<String>,
    /// The port (default: the target's own).
    pub(crate) port: Option<u16>,
    #[serde(default, with = "duration_text::option")]
    pub(crate) timeout: Option<Duration>,
}

/// The probe's kind.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProbeKind {
    Http,
    Tcp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        Loaded::parse(Path::new("h.toml"), text.to_owned()).expect_err(text)
    }

    const BASE: &str = "[balancer.haproxy]\nnodes = [\"/run/haproxy.sock\"]\nbackends = [\"web\"]\n\n[executor.local]\nprogram = \"/bin/true\"\n";

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err(&format!("{BASE}\n[rollout]\nbacth_size = 2\n"));
        assert_eq!(e.place, "h.toml:9:1", "{e}");
        assert_eq!(e.key.as_deref(), Some("rollout.bacth_size"), "{e}");
        let e = err(&format!("{BASE}\n[rollout]\ndrain_timeout = \"soon\"\n"));
        assert!(e.place.starts_with("h.toml:"), "{e}");
        assert!(e.message.contains("not a duration"), "{e}");
        let e = err(&format!(
            "{BASE}\n[balancer.nginx]\napi_urls = [\"http://x/api\"]\n"
        ));
        assert_eq!(e.key.as_deref(), Some("balancer.nginx"), "{e}");
        let e = err("[balancer.haproxy]\nnodes = [\"/x\"]\nbackends = \"web\"\n[executor.local]\nprogram = \"/bin/true\"\n");
        assert_eq!(e.place, "h.toml:3:12", "{e}");
        assert_eq!(e.key.as_deref(), Some("balancer.haproxy.backends"), "{e}");
        let e = err(&format!(
            "{BASE}\n[rollout]\nbatch_size = 2\nmin_healthy = \"100%\"\n"
        ));
        assert_eq!(e.place, "h.toml:10:1", "{e}");
        assert_eq!(e.key.as_deref(), Some("rollout.min_healthy"), "{e}");
    }

    #[test]
    fn ssm_preflight_and_status_api() {
        let ssm =
            "[balancer.elbv2]\ntarget_groups = [\"arn:tg\"]\n\n[executor.ssm]\ndocument = \"d\"\n";
        for (v, want) in [
            ("instance_information", "InstanceInformation"),
            ("document_only", "DocumentOnly"),
            ("skip", "Skip"),
        ] {
            let l = Loaded::parse(
                Path::new("h.toml"),
                format!("{ssm}preflight = \"{v}\"\nstatus_api = \"get\"\n"),
            )
            .expect(v);
            let x = l.file.executor.expect("executor").into_inner();
            let s = x.ssm.expect("ssm").into_inner();
            assert_eq!(format!("{:?}", s.preflight.expect("set")), want);
            assert!(matches!(s.status_api, Some(SsmStatusApi::Get)));
        }
        let e = err(&format!("{ssm}preflight = true\n"));
        assert_eq!(e.place, "h.toml:6:13", "{e}");
        assert_eq!(e.key.as_deref(), Some("executor.ssm.preflight"), "{e}");
    }

    #[test]
    fn a_good_file_parses() {
        let l = Loaded::parse(
            Path::new("h.toml"),
            format!("{BASE}\n[rollout]\nbatch_size = \"25%\"\ndrain_timeout = \"90s\"\n"),
        )
        .expect("valid");
        assert_eq!(l.pool_name(), "web");
        let r = l.file.rollout.expect("rollout");
        assert_eq!(r.get_ref().drain_timeout(), Duration::from_secs(90));
    }
}
