//! The command line: commands, flags and their `HYGIENE_…` variables.

use std::path::PathBuf;
use std::time::Duration;

use std::collections::BTreeMap;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hygiene_core::{duration_text, Amount};

use crate::config::ConfigError;
use crate::exit;
use crate::telemetry::LogFormat;

/// Safe rolling maintenance of the servers behind a load balancer.
///
/// One configuration file (`hygiene.toml`) names the balancer (HAProxy,
/// NGINX Plus or AWS ELBv2), the executor that runs the maintenance
/// (local command, ssh or SSM) and the rollout's settings. Every run keeps a
/// journal in the state directory, so a run whose process died can be
/// resumed or undone.
#[derive(Debug, Parser)]
#[command(name = "hygiene", version, after_help = exit::HELP, after_long_help = exit::HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "HYGIENE_CONFIG",
        default_value = "hygiene.toml",
        value_name = "FILE"
    )]
    pub(crate) config: PathBuf,
    /// Where journals and maintenance output are kept (default: the file's
    /// `state_dir`, else $XDG_STATE_HOME/hygiene, ~/.local/state/hygiene or
    /// /var/lib/hygiene).
    #[arg(long, global = true, env = "HYGIENE_STATE_DIR", value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line on stdout, each
    /// with a "type" ("event", "report", "plan", "status", "validate",
    /// "error"); for run, resume and restore the report is the last line.
    #[arg(long, global = true, env = "HYGIENE_JSON", value_parser = BoolishValueParser::new())]
    pub(crate) json: bool,
    /// Overrides a setting of the file: `--set balancer.nginx.api_urls='["http://10.0.0.5/api"]'`,
    /// `--set executor.ssh.user=ops` (repeatable; the value is read as TOML,
    /// else as a string). In `HYGIENE_SET`, separate them with `;`. Secrets
    /// still come only from the environment or files.
    #[arg(
        long = "set",
        global = true,
        env = "HYGIENE_SET",
        value_delimiter = ';',
        value_name = "KEY=VALUE"
    )]
    pub(crate) set: Vec<String>,
    /// Print only errors and the final summary (no progress view, no
    /// progress lines).
    #[arg(
        short,
        long,
        global = true,
        env = "HYGIENE_QUIET",
        value_parser = BoolishValueParser::new(),
        conflicts_with = "verbose"
    )]
    pub(crate) quiet: bool,
    /// More log detail on stderr: -v info, -vv debug, -vvv trace (RUST_LOG,
    /// when set, decides instead). Colour follows NO_COLOR.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Log lines on stderr: `text`, or `json` (one object per line with
    /// `run`, `pool`, `batch`, `target` and `phase`; default level info).
    #[arg(long, global = true, env = "HYGIENE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// After run, resume and restore: push the run's metrics to this
    /// Pushgateway (`http://host:9091`), group `job="hygiene"`, `pool`.
    #[arg(long, global = true, env = "HYGIENE_PUSHGATEWAY", value_name = "URL")]
    pub(crate) pushgateway: Option<String>,
    /// After run, resume and restore: write the run's metrics to this file
    /// for node-exporter's textfile collector (replaced atomically).
    #[arg(
        long,
        global = true,
        env = "HYGIENE_METRICS_TEXTFILE",
        value_name = "FILE"
    )]
    pub(crate) metrics_textfile: Option<PathBuf>,
}

impl Global {
    /// Where the run's metrics go; a URL that is not http(s) is refused.
    pub(crate) fn metrics_sinks(&self) -> Result<crate::telemetry::metrics::Sinks, ConfigError> {
        let pushgateway = match &self.pushgateway {
            None => None,
            Some(u) => {
                let url = reqwest::Url::parse(u)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                    .ok_or_else(|| {
                        ConfigError::flag(
                            "--pushgateway",
                            format!("{u:?} is not a Pushgateway URL: give its base, like http://pushgateway:9091"),
                        )
                    })?;
                Some(url)
            }
        };
        Ok(crate::telemetry::metrics::Sinks {
            pushgateway,
            textfile: self.metrics_textfile.clone(),
        })
    }
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check the configuration, then connect to the balancer and the
    /// executor and say what they hold (pools, targets, states,
    /// capabilities, problems). Changes nothing.
    #[command(after_help = exit::HELP)]
    Validate {
        /// Only check the file; connect to nothing.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        rollout: RolloutFlags,
    },
    /// Show what a run would do: batches in order, the min_healthy and
    /// max_failures arithmetic, skipped targets, the duration range.
    /// Reads the balancer; changes nothing.
    #[command(after_help = exit::HELP)]
    Plan {
        #[command(flatten)]
        rollout: RolloutFlags,
        /// How long one maintenance usually takes, for a typical duration
        /// besides the bounds ("2m").
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        maintenance_time: Option<Duration>,
    },
    /// Run the rollout, with a journal. Refused over an unfinished journal.
    /// On a terminal, shows the plan and asks first (--yes does not ask;
    /// without a terminal nothing is asked).
    #[command(after_help = exit::HELP)]
    Run {
        #[command(flatten)]
        rollout: RolloutFlags,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long, env = "HYGIENE_YES", value_parser = BoolishValueParser::new())]
        yes: bool,
    },
    /// Finish the run the journal says did not finish (its process died, or
    /// it could not write all its records).
    #[command(after_help = exit::HELP)]
    Resume {
        #[command(flatten)]
        rollout: RolloutFlags,
    },
    /// Abandon the unfinished run and put back every target it took out;
    /// with --kept-out, put back what earlier runs kept out (as `enable
    /// --all`).
    #[command(after_help = exit::HELP)]
    Restore {
        #[command(flatten)]
        rollout: RolloutFlags,
        /// Put back every target earlier runs kept out of rotation,
        /// verified healthy (the same as `hygiene enable --all`).
        #[arg(long)]
        kept_out: bool,
    },
    /// Put back targets hygiene kept out of rotation (after a failure),
    /// once fixed: the probe first, then the enable, then a fresh healthy
    /// status within health_timeout; a target that is not healthy is taken
    /// out again. Only targets `hygiene status` lists as kept out.
    #[command(after_help = exit::HELP)]
    Enable {
        /// The targets (as `hygiene status` names them).
        #[arg(value_name = "TARGET", required_unless_present = "all")]
        targets: Vec<String>,
        /// Every target kept out.
        #[arg(long, conflicts_with = "targets")]
        all: bool,
    },
    /// Show what the last run left: targets out of rotation, by name, and
    /// the commands to put them back. Reads only the journal (the run's
    /// process may be dead) unless --live.
    #[command(after_help = exit::HELP)]
    Status {
        /// Also read the balancer and compare.
        #[arg(long)]
        live: bool,
    },
    /// List the pool's past runs, newest first, with their outcome and
    /// what they left out (every run keeps a journal of its own; the
    /// newest 100 are kept).
    #[command(after_help = exit::HELP)]
    History {
        /// How many runs to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// Print what a target's maintenance printed (the last 4 KiB of its
    /// stdout and stderr, kept in the journal), newest first.
    #[command(after_help = exit::HELP)]
    Logs {
        /// The target (as `hygiene status` names it).
        #[arg(value_name = "TARGET")]
        target: String,
        /// Every maintenance of the target the journals hold, not only
        /// the last.
        #[arg(long)]
        all: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

impl Command {
    /// The rollout flags of the commands that take them.
    pub(crate) fn rollout_mut(&mut self) -> Option<&mut RolloutFlags> {
        match self {
            Self::Validate { rollout, .. }
            | Self::Plan { rollout, .. }
            | Self::Run { rollout, .. }
            | Self::Resume { rollout }
            | Self::Restore { rollout, .. } => Some(rollout),
            _ => None,
        }
    }
}

/// Overrides of the `[rollout]` section. Values are checked after
/// parsing, like the file's (exit 3), and an error names the flag or the
/// variable it came from.
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct RolloutFlags {
    /// Targets worked on at once: a count ("2") or a percent ("25%").
    #[arg(long, env = "HYGIENE_BATCH_SIZE", value_name = "AMOUNT")]
    pub(crate) batch_size: Option<String>,
    /// Targets of the pool that must stay healthy in service ("3", "80%").
    #[arg(long, env = "HYGIENE_MIN_HEALTHY", value_name = "AMOUNT")]
    pub(crate) min_healthy: Option<String>,
    /// The run aborts when more than this many targets fail ("0", "5%").
    #[arg(long, env = "HYGIENE_MAX_FAILURES", value_name = "AMOUNT")]
    pub(crate) max_failures: Option<String>,
    /// How often status is polled ("100ms", "5s").
    #[arg(long, env = "HYGIENE_POLL_INTERVAL", value_name = "DURATION")]
    pub(crate) poll_interval: Option<String>,
    /// How long to wait for in-flight work to end ("5m").
    #[arg(long, env = "HYGIENE_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub(crate) drain_timeout: Option<String>,
    /// How long a target has to be healthy after it is put back ("5m").
    #[arg(long, env = "HYGIENE_HEALTH_TIMEOUT", value_name = "DURATION")]
    pub(crate) health_timeout: Option<String>,
    /// Wait after each batch is healthy ("30s").
    #[arg(long, env = "HYGIENE_WARMUP", value_name = "DURATION")]
    pub(crate) warmup: Option<String>,
    /// The first batch is a single target (HYGIENE_CANARY=1/true/yes/on).
    #[arg(long, env = "HYGIENE_CANARY", value_parser = BoolishValueParser::new(), conflicts_with = "no_canary")]
    pub(crate) canary: bool,
    /// No canary, whatever the file says (`canary = true`).
    #[arg(long)]
    pub(crate) no_canary: bool,
    /// Batches, or a rolling window.
    #[arg(long, env = "HYGIENE_PACING", value_enum)]
    pub(crate) pacing: Option<PacingArg>,
    /// A failed target stays out (keep-out) or goes back (restore).
    #[arg(long, env = "HYGIENE_ON_FAILURE", value_enum)]
    pub(crate) on_failure: Option<OnFailureArg>,
    /// On resume, a maintenance whose outcome is unknown: keep the target
    /// out (fail) or run it again (rerun).
    #[arg(long, env = "HYGIENE_ON_INTERRUPTED", value_enum)]
    pub(crate) on_interrupted: Option<OnInterruptedArg>,
    /// Maintain only these targets, in this order (repeat, or separate
    /// with commas). Not for resume and restore: they keep the targets of
    /// the run they finish.
    #[arg(
        long = "only",
        env = "HYGIENE_ONLY",
        value_delimiter = ',',
        value_name = "TARGET"
    )]
    pub(crate) only: Vec<String>,
    /// Leave these targets out of the run (repeat, or separate with
    /// commas); with --only, out of those. Not for resume and restore.
    #[arg(
        long = "exclude",
        env = "HYGIENE_EXCLUDE",
        value_delimiter = ',',
        value_name = "TARGET"
    )]
    pub(crate) exclude: Vec<String>,
    /// Where each value came from (`--batch-size` or `HYGIENE_BATCH_SIZE`),
    /// for messages; filled after parsing.
    #[arg(skip)]
    pub(crate) sources: BTreeMap<&'static str, String>,
}

/// `--pacing`
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PacingArg {
    Batches,
    Window,
}

/// `--on-failure`
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OnFailureArg {
    KeepOut,
    Restore,
}

/// `--on-interrupted`
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OnInterruptedArg {
    Fail,
    Rerun,
}

/// The flags that take a value, by their clap id, with their long name
/// and variable.
pub(crate) const VALUED: &[(&str, &str, &str)] = &[
    ("batch_size", "--batch-size", "HYGIENE_BATCH_SIZE"),
    ("min_healthy", "--min-healthy", "HYGIENE_MIN_HEALTHY"),
    ("max_failures", "--max-failures", "HYGIENE_MAX_FAILURES"),
    ("poll_interval", "--poll-interval", "HYGIENE_POLL_INTERVAL"),
    ("drain_timeout", "--drain-timeout", "HYGIENE_DRAIN_TIMEOUT"),
    (
        "health_timeout",
        "--health-timeout",
        "HYGIENE_HEALTH_TIMEOUT",
    ),
    ("warmup", "--warmup", "HYGIENE_WARMUP"),
    ("canary", "--canary", "HYGIENE_CANARY"),
    ("pacing", "--pacing", "HYGIENE_PACING"),
    ("on_failure", "--on-failure", "HYGIENE_ON_FAILURE"),
    (
        "on_interrupted",
        "--on-interrupted",
        "HYGIENE_ON_INTERRUPTED",
    ),
    ("only", "--only", "HYGIENE_ONLY"),
    ("exclude", "--exclude", "HYGIENE_EXCLUDE"),
];

impl RolloutFlags {
    /// Records where each value came from, from clap's matches of the
    /// subcommand.
    pub(crate) fn note_sources(&mut self, m: &clap::ArgMatches) {
        for (id, flag, var) in VALUED {
            let name = match m.value_source(id) {
                Some(clap::parser::ValueSource::EnvVariable) => (*var).to_owned(),
                _ => (*flag).to_owned(),
            };
            self.sources.insert(id, name);
        }
    }

    /// The flag or variable that gave `key` (a `[rollout]` key).
    pub(crate) fn source(&self, key: &str) -> String {
        let id = if key == "selection" { "only" } else { key };
        self.sources.get(id).cloned().unwrap_or_else(|| {
            VALUED.iter().find(|(i, _, _)| *i == id).map_or_else(
                || format!("--{}", id.replace('_', "-")),
                |(_, f, _)| (*f).to_owned(),
            )
        })
    }
}

fn parse_amount(
    flags: &RolloutFlags,
    key: &str,
    v: &str,
) -> Result<serde_json::Value, ConfigError> {
    v.parse::<Amount>().map(amount).map_err(|e| {
        let m = match &e {
            hygiene_core::Error::InvalidConfig { message, .. } => message.clone(),
            other => other.to_string(),
        };
        ConfigError::flag(
            &flags.source(key),
            format!("{m}: give a count (\"2\") or a percent from 0% to 100% (\"25%\")"),
        )
        .with_key(&format!("rollout.{key}"))
    })
}

fn parse_dur(flags: &RolloutFlags, key: &str, v: &str) -> Result<serde_json::Value, ConfigError> {
    duration_text::parse(v)
        .map(dur)
        .map_err(|e| ConfigError::flag(&flags.source(key), e).with_key(&format!("rollout.{key}")))
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    duration_text::parse(s)
}

fn amount(a: Amount) -> serde_json::Value {
    match a {
        Amount::Count(n) => serde_json::Value::from(n),
        Amount::Percent(_) => serde_json::Value::from(a.to_string()),
    }
}

fn dur(d: Duration) -> serde_json::Value {
    serde_json::Value::from(duration_text::format(d))
}

impl RolloutFlags {
    /// (`[rollout]` key, value) of every override given; a value that
    /// cannot be read is an error naming its flag or variable.
    pub(crate) fn overrides(&self) -> Result<Vec<(&'static str, serde_json::Value)>, ConfigError> {
        let mut o = Vec::new();
        for (key, v) in [
            ("batch_size", &self.batch_size),
            ("min_healthy", &self.min_healthy),
            ("max_failures", &self.max_failures),
        ] {
            if let Some(v) = v {
                o.push((key, parse_amount(self, key, v)?));
            }
        }
        for (key, v) in [
            ("poll_interval", &self.poll_interval),
            ("drain_timeout", &self.drain_timeout),
            ("health_timeout", &self.health_timeout),
            ("warmup", &self.warmup),
        ] {
            if let Some(v) = v {
                o.push((key, parse_dur(self, key, v)?));
            }
        }
        if self.canary {
            o.push(("canary", serde_json::Value::Bool(true)));
        }
        if self.no_canary {
            o.push(("canary", serde_json::Value::Bool(false)));
        }
        if let Some(p) = self.pacing {
            let v = match p {
                PacingArg::Batches => "batches",
                PacingArg::Window => "window",
            };
            o.push(("pacing", v.into()));
        }
        if let Some(p) = self.on_failure {
            let v = match p {
                OnFailureArg::KeepOut => "keep_out",
                OnFailureArg::Restore => "restore",
            };
            o.push(("on_failure", v.into()));
        }
        if let Some(p) = self.on_interrupted {
            let v = match p {
                OnInterruptedArg::Fail => "fail",
                OnInterruptedArg::Rerun => "rerun",
            };
            o.push(("on_interrupted", v.into()));
        }
        if !self.only.is_empty() {
            o.push(("selection", serde_json::json!({ "named": self.only })));
        }
        Ok(o)
    }
}
