//! `hygiene`: the operator's command. One configuration file for every
//! balancer (HAProxy, NGINX Plus, AWS ELBv2) and executor (local command,
//! ssh, SSM): `validate`, `plan`, `run`, `resume`, `restore`, `status`,
//! `completions`, `man`. See `hygiene --help` and the README.

mod asg;
mod caddy;
mod cli;
mod config;
mod elbv2;
mod enable;
mod exit;
mod gates;
mod history;
mod kept;
mod lease;
mod lease_etcd;
mod output;
mod plan;
mod preflight;
mod run;
mod set;
mod setup;
mod status;
mod telemetry;
mod validate;
mod zones;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tracing::Instrument as _;

use crate::cli::{Cli, Command, Global};
use crate::config::ConfigError;

/// Why a command could not do its job, with its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The configuration is wrong.
    Config(ConfigError),
    /// The library refused or failed.
    Lib(hygiene_core::Error),
    /// Anything else (exit 1).
    Other(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<hygiene_core::Error> for Failure {
    fn from(e: hygiene_core::Error) -> Self {
        Self::Lib(e)
    }
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Config(_) => exit::CONFIG,
            Self::Lib(e) => exit::of_error(e),
            Self::Other(_) => exit::OTHER,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Lib(e) => exit::kind_of_error(e),
            Self::Other(_) => "other",
        }
    }
}

/// The command that continues this configuration's run, for messages.
pub(crate) fn command_for(global: &Global, verb: &str) -> String {
    let mut s = format!(
        "hygiene {verb} -c {}",
        shell_word(&global.config.display().to_string())
    );
    if let Some(d) = &global.state_dir {
        s.push_str(&format!(
            " --state-dir {}",
            shell_word(&d.display().to_string())
        ));
    }
    s
}

pub(crate) fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

async fn dispatch(cli: Cli) -> Result<u8, Failure> {
    let g = &cli.global;
    match cli.command {
        Command::Validate { offline, rollout } => validate::main(g, &rollout, offline).await,
        Command::Plan {
            rollout,
            maintenance_time,
        } => plan::main(g, &rollout, maintenance_time).await,
        Command::Run { rollout, yes } => run::main(g, &rollout, run::Mode::Run { yes }).await,
        Command::Resume { rollout } => run::main(g, &rollout, run::Mode::Resume).await,
        Command::Restore {
            kept_out: true,
            rollout,
        } => {
            if !rollout.overrides()?.is_empty() {
                return Err(config::ConfigError::flag(
                    "--kept-out",
                    "puts back what earlier runs kept out, with the file's settings: it takes no rollout flag",
                )
                .into());
            }
            enable::main(g, &[], true).await
        }
        Command::Restore { rollout, .. } => run::main(g, &rollout, run::Mode::Restore).await,
        Command::Enable { targets, all } => enable::main(g, &targets, all).await,
        Command::Status { live } => status::main(g, live).await,
        Command::History { limit } => history::history(g, limit).await,
        Command::Logs { target, all } => history::logs(g, &target, all).await,
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a closed stdout.
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "hygiene", &mut buf);
            output::print_bytes(&buf);
            Ok(exit::OK)
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut buf)
                .map_err(|e| Failure::Other(format!("the man page cannot be rendered: {e}")))?;
            output::print_bytes(&buf);
            Ok(exit::OK)
        }
    }
}

/// The log level on stderr when RUST_LOG is not set: on a terminal the
/// progress view says what the warnings would (errors only); in a log the
/// warnings are the progress; `-q` keeps errors only; each `-v` one more.
fn log_level(view: bool, quiet: bool, verbose: u8) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) if view => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    }
}

/// Whether colour may be used: not when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>).
fn colour_allowed(no_color: Option<&std::ffi::OsStr>) -> bool {
    no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Some((_, sub)) = matches.subcommand() {
        if let Some(r) = cli.command.rollout_mut() {
            r.note_sources(sub);
        }
    }
    let json = cli.global.json;
    let terminal = std::io::stderr().is_terminal();
    let log_format = cli.global.log_format;
    let default_level = match log_format {
        // Lines for a log pipeline: phase changes included (unless -q).
        telemetry::LogFormat::Json if cli.global.verbose == 0 && !cli.global.quiet => "info",
        _ => log_level(terminal && !json, cli.global.quiet, cli.global.verbose),
    };
    let telemetry = telemetry::init(
        log_format,
        default_level,
        terminal && colour_allowed(std::env::var_os("NO_COLOR").as_deref()),
    );
    let span = telemetry::command_span(matches.subcommand_name().unwrap_or("hygiene"));
    let result = dispatch(cli).instrument(span).await;
    telemetry.shutdown();
    let code = match result {
        Ok(code) => code,
        Err(f) => {
            let message = match &f {
                Failure::Config(e) => e.to_string(),
                // The library's own names mean nothing to an operator.
                Failure::Lib(e) => e
                    .to_string()
                    .replace("Rollout::resume, ", "")
                    .replace("Rollout::restore, ", ""),
                Failure::Other(m) => m.clone(),
            };
            // Errors quote balancers' replies and targets' names.
            eprintln!("error: {}", output::clean(&message));
            if json {
                output::json_line(
                    "error",
                    &serde_json::json!({ "code": f.code(), "kind": f.kind(), "message": message }),
                );
            }
            f.code()
        }
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_set_to_anything_but_empty_turns_colour_off() {
        assert!(colour_allowed(None));
        assert!(colour_allowed(Some(std::ffi::OsStr::new(""))));
        assert!(!colour_allowed(Some(std::ffi::OsStr::new("1"))));
        assert!(!colour_allowed(Some(std::ffi::OsStr::new("0"))));
    }

    #[test]
    fn quiet_and_verbose_set_the_log_level() {
        assert_eq!(log_level(true, false, 0), "error");
        assert_eq!(log_level(false, false, 0), "warn");
        assert_eq!(log_level(false, true, 0), "error");
        assert_eq!(log_level(true, false, 1), "info");
        assert_eq!(log_level(false, false, 2), "debug");
        assert_eq!(log_level(false, false, 7), "trace");
    }
}
