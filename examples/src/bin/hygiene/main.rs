//! `hygiene`: the operator's command. One configuration file for every
//! balancer (HAProxy, NGINX Plus, AWS ELBv2) and executor (local command,
//! ssh, SSM): `validate`, `plan`, `run`, `resume`, `restore`, `status`,
//! `completions`, `man`. See `hygiene --help` and the README.

mod cli;
mod config;
mod elbv2;
mod exit;
mod output;
mod plan;
mod run;
mod setup;
mod status;
mod validate;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, Global};
use crate::config::ConfigError;

/// Why a command could not do its job, with its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The configuration is wrong.
    Config(ConfigError),
    /// The library refused or failed.
    Lib(hygiene_core::Error),
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
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Lib(e) => exit::kind_of_error(e),
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

fn shell_word(s: &str) -> String {
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
        Command::Run { rollout } => run::main(g, &rollout, run::Mode::Run).await,
        Command::Resume { rollout } => run::main(g, &rollout, run::Mode::Resume).await,
        Command::Restore { rollout } => run::main(g, &rollout, run::Mode::Restore).await,
        Command::Status { live } => status::main(g, live).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "hygiene",
                &mut std::io::stdout(),
            );
            Ok(exit::OK)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| {
                    hygiene_core::Error::invalid_config("man", format!("cannot write: {e}"))
                })?;
            Ok(exit::OK)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.global.json;
    // On a terminal the progress view says what the warnings would; in a
    // log (not a terminal) the warnings are the progress.
    let terminal = std::io::stderr().is_terminal();
    let default_level = if terminal && !json { "error" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_ansi(terminal)
        .with_writer(std::io::stderr)
        .init();
    let code = match dispatch(cli).await {
        Ok(code) => code,
        Err(f) => {
            let message = match &f {
                Failure::Config(e) => e.to_string(),
                Failure::Lib(e) => e.to_string(),
            };
            eprintln!("error: {message}");
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
