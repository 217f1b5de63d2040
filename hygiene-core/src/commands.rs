//! A command as a gate ([`CommandGate`]): exit status 0 is go, anything
//! else is a no with the command's last words. No shell: the program and
//! its arguments are given apart. Like a maintenance, the command does
//! not inherit hygiene's environment (which holds the balancer's password
//! and cloud credentials): it gets `PATH`, `HOME`, `LANG`, `TZ`, `LC_*`,
//! what the operator passes or sets, and the run's variables.

use std::fmt::Debug;
use std::process::Stdio;

use async_trait::async_trait;
use tokio::process::Command;

use crate::error::{Error, Result};
use crate::executor::tail;
use crate::gate::{Gate, GateCheck, GateVerdict};
use crate::local::ChildEnv;

/// How much of the command's output a no keeps.
const SAID_BYTES: usize = 300;

/// Checks a gate or hook name: a short word an operator can grep for.
pub(crate) fn check_name(field: &'static str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::invalid_config(
            field,
            format!("{name:?} is not a name: use 1 to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

/// A program run with the run's variables in its environment.
#[derive(Debug, Clone)]
struct Program {
    program: String,
    args: Vec<String>,
    env: ChildEnv,
}

impl Program {
    fn new(field: &'static str, argv: &[String]) -> Result<Self> {
        let Some((program, args)) = argv.split_first() else {
            return Err(Error::invalid_config(
                field,
                "the command is empty: give the program and its arguments",
            ));
        };
        if program.is_empty() || argv.iter().any(|a| a.contains('\0')) {
            return Err(Error::invalid_config(
                field,
                "the program is empty or an argument holds a NUL byte",
            ));
        }
        Ok(Self {
            program: program.clone(),
            args: args.to_vec(),
            env: ChildEnv::new(&[]),
        })
    }

    /// Runs it to its end, in a process group of its own: when the future
    /// is dropped (a gate or hook past its time limit), the whole group is
    /// killed, what the command started in the background too.
    /// `Ok(None)` is exit 0; `Ok(Some(why))` any other end.
    async fn run(&self, vars: &[(&str, String)]) -> Result<Option<String>> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        self.env.apply(&mut cmd);
        cmd.envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let cannot = |e: std::io::Error| {
            Error::unavailable(
                format!("command {}", self.program),
                format!("cannot run it: {e}"),
            )
        };
        let child = cmd.spawn().map_err(cannot)?;
        let mut group = GroupKill(child.id());
        let out = child.wait_with_output().await.map_err(cannot)?;
        // It ended by itself: what it left running is its own business.
        group.0 = None;
        if out.status.success() {
            return Ok(None);
        }
        let said = {
            let err = String::from_utf8_lossy(&out.stderr);
            let text = if err.trim().is_empty() {
                String::from_utf8_lossy(&out.stdout).into_owned()
            } else {
                err.into_owned()
            };
            tail(text.trim(), SAID_BYTES)
        };
        let how = match out.status.code() {
            Some(c) => format!("exited {c}"),
            None => "was killed by a signal".to_owned(),
        };
        Ok(Some(if said.is_empty() {
            format!("{} {how}", self.program)
        } else {
            format!("{} {how}: {said}", self.program)
        }))
    }
}

/// Kills the process group it names when dropped while armed.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            crate::local::kill_group(pid);
        }
    }
}

/// A gate that runs a command: exit 0 is go, any other exit a no (with
/// the last lines it wrote), a command that cannot start cannot be asked
/// (a no too). Its environment holds `HYGIENE_RUN_ID`, `HYGIENE_GATE`,
/// `HYGIENE_GATE_WHEN` (`before` / `after`), `HYGIENE_BATCH` (0-based) and
/// `HYGIENE_TARGETS` (the batch's targets, space-separated; empty before a
/// batch). It is killed when it runs past the rollout's `call_timeout`.
#[derive(Debug, Clone)]
pub struct CommandGate {
    name: String,
    program: Program,
    /// Run as a hook: `HYGIENE_HOOK` and `HYGIENE_HOOK_WHEN` instead of
    /// `HYGIENE_GATE` and `HYGIENE_GATE_WHEN`.
    hook: bool,
}

impl CommandGate {
    /// A gate named `name` running `argv` (program, then arguments).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad name or an empty command.
    pub fn new(name: impl Into<String>, argv: &[String]) -> Result<Self> {
        let name = name.into();
        check_name("gate.name", &name)?;
        Ok(Self {
            name,
            program: Program::new("gate.command", argv)?,
            hook: false,
        })
    }

    /// The same command as a hook (see [`crate::Rollout::with_hook`]): its
    /// environment names it `HYGIENE_HOOK` and says `HYGIENE_HOOK_WHEN`
    /// (`before` / `after` the batch); exit 0 is success.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn hook(name: impl Into<String>, argv: &[String]) -> Result<Self> {
        let name = name.into();
        check_name("hook.name", &name)?;
        Ok(Self {
            name,
            program: Program::new("hook.command", argv)?,
            hook: true,
        })
    }

    /// Runs the command once with `vars` added to its environment (a hook
    /// before or after the whole run: `HYGIENE_RUN_ID`, the outcome, …).
    /// `Ok(None)` is exit 0, `Ok(Some(why))` any other exit.
    ///
    /// # Errors
    /// The command could not start.
    pub async fn run_with(&self, vars: &[(&str, String)]) -> Result<Option<String>> {
        let mut all = vec![("HYGIENE_HOOK", self.name.clone())];
        all.extend(vars.iter().cloned());
        self.program.run(&all).await
    }

    /// Passes hygiene's own variable `name` through, when set.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a name that is not a variable name.
    pub fn with_pass_env(mut self, name: &str) -> Result<Self> {
        self.program.env.pass("gate.pass_env", name)?;
        Ok(self)
    }

    /// Sets `name` to `value` in its environment.
    ///
    /// # Errors
    /// As [`with_pass_env`](Self::with_pass_env), and for a NUL in `value`.
    pub fn with_env(mut self, name: &str, value: &str) -> Result<Self> {
        self.program.env.set("gate.env", name, value)?;
        Ok(self)
    }

    /// Never gives hygiene's variable `name` to the command (the balancer's
    /// password), even when passed.
    ///
    /// # Errors
    /// When `name` is also passed or set.
    pub fn withhold_env(mut self, name: &str) -> Result<Self> {
        self.program.env.withhold("gate.pass_env", name)?;
        Ok(self)
    }
}

#[async_trait]
impl Gate for CommandGate {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn check(&self, at: &GateCheck) -> Result<GateVerdict> {
        let targets: Vec<&str> = at.targets.iter().map(|t| t.as_str()).collect();
        let (name_var, when_var) = if self.hook {
            ("HYGIENE_HOOK", "HYGIENE_HOOK_WHEN")
        } else {
            ("HYGIENE_GATE", "HYGIENE_GATE_WHEN")
        };
        let vars = [
            ("HYGIENE_RUN_ID", at.run_id.clone()),
            (name_var, self.name.clone()),
            (when_var, at.when.to_string()),
            ("HYGIENE_BATCH", at.batch.to_string()),
            ("HYGIENE_TARGETS", targets.join(" ")),
        ];
        Ok(match self.program.run(&vars).await? {
            None => GateVerdict::Go,
            Some(why) => GateVerdict::Hold(why),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::GateWhen;
    use crate::target::TargetId;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn at() -> GateCheck {
        GateCheck::new(GateWhen::After, 2, "run-1").with_targets(vec![
            TargetId::new("web/s1").expect("id"),
            TargetId::new("web/s2").expect("id"),
        ])
    }

    #[tokio::test]
    async fn exit_zero_is_go_and_the_run_s_variables_are_in_its_environment() {
        let g = CommandGate::new(
            "vars",
            &sh(r#"test "$HYGIENE_GATE_WHEN/$HYGIENE_BATCH/$HYGIENE_RUN_ID/$HYGIENE_TARGETS/$HYGIENE_GATE" = "after/2/run-1/web/s1 web/s2/vars""#),
        )
        .expect("gate");
        assert_eq!(g.check(&at()).await.expect("asked"), GateVerdict::Go);
    }

    #[tokio::test]
    async fn another_exit_is_a_no_with_its_last_words() {
        let g = CommandGate::new(
            "smoke",
            &sh("echo '5 errors in the last minute' >&2; exit 3"),
        )
        .expect("gate");
        match g.check(&at()).await.expect("asked") {
            GateVerdict::Hold(why) => {
                assert!(why.contains("exited 3"), "{why}");
                assert!(why.contains("5 errors"), "{why}");
            }
            GateVerdict::Go => panic!("go on exit 3"),
        }
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_cannot_be_asked() {
        let g = CommandGate::new("missing", &["/nonexistent/gate".to_owned()]).expect("gate");
        assert!(matches!(
            g.check(&at()).await,
            Err(Error::Unavailable { .. })
        ));
    }

    #[tokio::test]
    async fn hygiene_s_own_environment_is_not_inherited() {
        std::env::set_var("HYGIENE_TEST_GATE_SECRET", "s3cret");
        let g =
            CommandGate::new("env", &sh(r#"test -z "$HYGIENE_TEST_GATE_SECRET""#)).expect("gate");
        assert_eq!(g.check(&at()).await.expect("asked"), GateVerdict::Go);
    }

    #[tokio::test]
    async fn a_hook_is_named_as_a_hook() {
        let g = CommandGate::hook(
            "post",
            &sh(r#"test "$HYGIENE_HOOK/$HYGIENE_HOOK_WHEN/$HYGIENE_BATCH" = "post/after/2" && test -z "$HYGIENE_GATE""#),
        )
        .expect("hook");
        assert_eq!(g.check(&at()).await.expect("ran"), GateVerdict::Go);
        let r = g
            .run_with(&[("HYGIENE_OUTCOME", "completed".into())])
            .await
            .expect("ran");
        assert!(r.is_some(), "no batch variables in a run hook");
    }

    #[tokio::test]
    async fn a_command_past_its_limit_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().expect("dir");
        let pidfile = dir.path().join("pid");
        let g = CommandGate::new(
            "slow",
            &sh(&format!("sleep 30 & echo $! > {}; wait", pidfile.display())),
        )
        .expect("gate");
        let r = tokio::time::timeout(std::time::Duration::from_millis(500), g.check(&at())).await;
        assert!(r.is_err(), "still running at its limit");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .expect("the background sleep wrote its pid")
            .trim()
            .parse()
            .expect("pid");
        // Killed: gone, or a zombie waiting for its new parent.
        let mut gone = false;
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if matches!(state, None | Some("Z" | "X")) {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(gone, "the background sleep {pid} still runs");
    }

    #[test]
    fn bad_names_and_empty_commands_are_refused() {
        assert!(CommandGate::new("a b", &sh("true")).is_err());
        assert!(CommandGate::new("", &sh("true")).is_err());
        assert!(CommandGate::new("ok", &[]).is_err());
    }
}
