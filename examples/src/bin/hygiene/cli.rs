//! The command line: commands, flags and their `HYGIENE_…` variables.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hygiene_core::{duration_text, Amount};

use crate::exit;

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
    #[arg(long, global = true, env = "HYGIENE_JSON")]
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
    #[command(after_help = exit::HELP)]
    Run {
        #[command(flatten)]
        rollout: RolloutFlags,
    },
    /// Finish the run the journal says did not finish (its process died).
    #[command(after_help = exit::HELP)]
    Resume {
        #[command(flatten)]
        rollout: RolloutFlags,
    },
    /// Abandon the unfinished run and put back every target it took out.
    #[command(after_help = exit::HELP)]
    Restore {
        #[command(flatten)]
        rollout: RolloutFlags,
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
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// Overrides of the `[rollout]` section.
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct RolloutFlags {
    /// Targets worked on at once: a count ("2") or a percent ("25%").
    #[arg(long, env = "HYGIENE_BATCH_SIZE", value_name = "AMOUNT")]
    pub(crate) batch_size: Option<Amount>,
    /// Targets of the pool that must stay healthy in service ("3", "80%").
    #[arg(long, env = "HYGIENE_MIN_HEALTHY", value_name = "AMOUNT")]
    pub(crate) min_healthy: Option<Amount>,
    /// The run aborts when more than this many targets fail ("0", "5%").
    #[arg(long, env = "HYGIENE_MAX_FAILURES", value_name = "AMOUNT")]
    pub(crate) max_failures: Option<Amount>,
    /// How often status is polled ("100ms", "5s").
    #[arg(long, env = "HYGIENE_POLL_INTERVAL", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) poll_interval: Option<Duration>,
    /// How long to wait for in-flight work to end ("5m").
    #[arg(long, env = "HYGIENE_DRAIN_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) drain_timeout: Option<Duration>,
    /// How long a target has to be healthy after it is put back ("5m").
    #[arg(long, env = "HYGIENE_HEALTH_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) health_timeout: Option<Duration>,
    /// Wait after each batch is healthy ("30s").
    #[arg(long, env = "HYGIENE_WARMUP", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) warmup: Option<Duration>,
    /// The first batch is a single target.
    #[arg(long, env = "HYGIENE_CANARY")]
    pub(crate) canary: bool,
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
    /// with commas).
    #[arg(long = "only", value_delimiter = ',', value_name = "TARGET")]
    pub(crate) only: Vec<String>,
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

fn parse_duration(s: &str) -> Result<Duration, String> {
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
    /// (flag, `[rollout]` key, value) of every override given.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, &'static str, serde_json::Value)> {
        let mut o = Vec::new();
        if let Some(a) = self.batch_size {
            o.push(("--batch-size", "batch_size", amount(a)));
        }
        if let Some(a) = self.min_healthy {
            o.push(("--min-healthy", "min_healthy", amount(a)));
        }
        if let Some(a) = self.max_failures {
            o.push(("--max-failures", "max_failures", amount(a)));
        }
        if let Some(d) = self.poll_interval {
            o.push(("--poll-interval", "poll_interval", dur(d)));
        }
        if let Some(d) = self.drain_timeout {
            o.push(("--drain-timeout", "drain_timeout", dur(d)));
        }
        if let Some(d) = self.health_timeout {
            o.push(("--health-timeout", "health_timeout", dur(d)));
        }
        if let Some(d) = self.warmup {
            o.push(("--warmup", "warmup", dur(d)));
        }
        if self.canary {
            o.push(("--canary", "canary", serde_json::Value::Bool(true)));
        }
        if let Some(p) = self.pacing {
            let v = match p {
                PacingArg::Batches => "batches",
                PacingArg::Window => "window",
            };
            o.push(("--pacing", "pacing", v.into()));
        }
        if let Some(p) = self.on_failure {
            let v = match p {
                OnFailureArg::KeepOut => "keep_out",
                OnFailureArg::Restore => "restore",
            };
            o.push(("--on-failure", "on_failure", v.into()));
        }
        if let Some(p) = self.on_interrupted {
            let v = match p {
                OnInterruptedArg::Fail => "fail",
                OnInterruptedArg::Rerun => "rerun",
            };
            o.push(("--on-interrupted", "on_interrupted", v.into()));
        }
        if !self.only.is_empty() {
            o.push((
                "--only",
                "selection",
                serde_json::json!({ "named": self.only }),
            ));
        }
        o
    }
}
