//! [`LocalCommand`]: runs a program on this machine for each target.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::executor::{tail, ExecOutcome, Executor, Preflight, OUTPUT_TAIL_BYTES};
use crate::target::Target;

/// Runs `program args…` once per target, all targets of a batch at once.
///
/// No shell is involved and nothing is interpolated into the arguments: the
/// target reaches the program as the environment variables
/// `HYGIENE_TARGET_ID` and `HYGIENE_TARGET_ADDRESS` (empty when the target
/// has no address). Exit code 0 is success. The program is killed when it
/// runs past the timeout. Output is captured; the report keeps its tail.
#[derive(Debug, Clone)]
pub struct LocalCommand {
    program: OsString,
    args: Vec<OsString>,
    timeout: Duration,
}

impl LocalCommand {
    /// A command with a 10-minute timeout.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the program is empty.
    pub fn new<P, I, A>(program: P, args: I) -> Result<Self>
    where
        P: Into<OsString>,
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        let program = program.into();
        if program.is_empty() {
            return Err(Error::invalid_config(
                "command",
                "the program to run is empty; give a program path",
            ));
        }
        Ok(Self {
            program,
            args: args.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(600),
        })
    }

    /// Kills the program after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn run_one(&self, target: &Target) -> ExecOutcome {
        let started = Instant::now();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("HYGIENE_TARGET_ID", target.id.as_str())
            .env(
                "HYGIENE_TARGET_ADDRESS",
                target.address.as_deref().unwrap_or(""),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group: a Ctrl-C at the operator's terminal cancels
        // the run, and a maintenance already running must finish (then go
        // through enable and health), not die half-way with the terminal's
        // SIGINT.
        #[cfg(unix)]
        cmd.process_group(0);
        if let Some(port) = target.port {
            cmd.env("HYGIENE_TARGET_PORT", port.to_string());
        }
        let program = self.program.to_string_lossy().into_owned();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return ExecOutcome::failure(
                    target.id.clone(),
                    started.elapsed(),
                    format!("cannot start {program:?}: {e}"),
                )
            }
        };
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let read = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let a = async {
                if let Some(s) = stdout.as_mut() {
                    let _ignored = s.read_to_end(&mut out).await;
                }
            };
            let b = async {
                if let Some(s) = stderr.as_mut() {
                    let _ignored = s.read_to_end(&mut err).await;
                }
            };
            tokio::join!(a, b);
            (out, err)
        };
        let waited = tokio::time::timeout(self.timeout, async {
            let (out, err) = read.await;
            (child.wait().await, out, err)
        })
        .await;
        let duration = started.elapsed();
        match waited {
            Err(_) => {
                // kill_on_drop ends the child when `child` goes out of scope.
                ExecOutcome::failure(
                    target.id.clone(),
                    duration,
                    format!(
                        "{program:?} ran past its timeout of {:?} and was killed",
                        self.timeout
                    ),
                )
            }
            Ok((Err(e), _, _)) => ExecOutcome::failure(
                target.id.clone(),
                duration,
                format!("waiting for {program:?}: {e}"),
            ),
            Ok((Ok(status), out, err)) => {
                let code = status.code();
                ExecOutcome {
                    id: target.id.clone(),
                    success: status.success(),
                    exit_code: code,
                    stdout_tail: tail(&String::from_utf8_lossy(&out), OUTPUT_TAIL_BYTES),
                    stderr_tail: tail(&String::from_utf8_lossy(&err), OUTPUT_TAIL_BYTES),
                    duration,
                    message: (!status.success()).then(|| match code {
                        Some(c) => format!("{program:?} exited with code {c}"),
                        None => format!("{program:?} was killed by a signal"),
                    }),
                }
            }
        }
    }
}

#[async_trait]
impl Executor for LocalCommand {
    fn name(&self) -> String {
        format!("local command {:?}", self.program)
    }

    async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>> {
        Ok(vec![Preflight::Ready; targets.len()])
    }

    async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>> {
        Ok(join_all(targets.iter().map(|t| self.run_one(t))).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::TargetId;

    fn target(id: &str) -> Target {
        Target::new(TargetId::new(id).expect("id")).with_address("10.0.0.1")
    }

    #[tokio::test]
    async fn passes_target_through_env_not_shell() {
        let cmd = LocalCommand::new(
            "sh",
            [
                "-c",
                "echo \"$HYGIENE_TARGET_ID@$HYGIENE_TARGET_ADDRESS\"; echo oops >&2; exit 3",
            ],
        )
        .expect("cmd");
        // A name that would be dangerous in a shell string stays inert.
        let out = cmd
            .execute(&[target("web/$(touch_x)")])
            .await
            .expect("execute");
        assert_eq!(out.len(), 1);
        assert!(!out[0].success);
        assert_eq!(out[0].exit_code, Some(3));
        assert_eq!(out[0].stdout_tail.trim(), "web/$(touch_x)@10.0.0.1");
        assert_eq!(out[0].stderr_tail.trim(), "oops");
    }

    #[tokio::test]
    async fn success_and_missing_program() {
        let ok = LocalCommand::new("true", Vec::<String>::new()).expect("cmd");
        assert!(ok.execute(&[target("a")]).await.expect("execute")[0].success);
        let missing = LocalCommand::new("/nonexistent/program", Vec::<String>::new()).expect("cmd");
        let out = missing.execute(&[target("a")]).await.expect("execute");
        assert!(!out[0].success);
        assert!(out[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("cannot start"));
        assert!(LocalCommand::new("", Vec::<String>::new()).is_err());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn runs_in_its_own_process_group() {
        // pid and process group of the shell: equal when it leads its own group.
        let cmd =
            LocalCommand::new("sh", ["-c", "echo $$; cut -d' ' -f5 /proc/$$/stat"]).expect("cmd");
        let out = cmd.execute(&[target("a")]).await.expect("execute");
        let lines: Vec<&str> = out[0].stdout_tail.lines().collect();
        assert_eq!(lines.len(), 2, "{:?}", out[0]);
        assert_eq!(
            lines[0], lines[1],
            "a terminal's Ctrl-C must not reach the maintenance"
        );
    }

    #[tokio::test]
    async fn timeout_kills() {
        let slow = LocalCommand::new("sleep", ["5"])
            .expect("cmd")
            .with_timeout(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let out = slow.execute(&[target("a")]).await.expect("execute");
        assert!(!out[0].success);
        assert!(out[0].message.as_deref().unwrap_or("").contains("timeout"));
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
