//! [`LocalCommand`]: runs a program on this machine for each target, and
//! the runner it shares with the ssh executor: a child that outlives the
//! process that started it, and leaves its exit status and output in files
//! another process can read (crash safety).

mod env;
mod handle;

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use tokio::process::Command;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::executor::{
    ExecHandle, ExecOutcome, Executor, HandleSink, Preflight, Recovered, OUTPUT_TAIL_BYTES,
};
use crate::journal::private::{create_private_file, no_follow, private_dir};
use crate::target::Target;
pub(crate) use env::ChildEnv;
pub(crate) use handle::kill_group;
use handle::{dir_name, liveness, start_ticks, ChildHandle, Liveness};

/// Runs `program args…` once per target, all targets of a batch at once.
///
/// No shell interprets anything of the target's or the configuration's:
/// the target reaches the program as the environment variables
/// `HYGIENE_TARGET_ID`, `HYGIENE_TARGET_ADDRESS` (empty when the target has
/// no address) and `HYGIENE_TARGET_PORT` (when it has one). Exit code 0 is
/// success. Output is kept in files; the last
/// [`OUTPUT_TAIL_BYTES`] of stdout and of stderr are **stored in the
/// journal and the report**: a maintenance must not print secrets.
///
/// **Environment:** the program does not inherit hygiene's environment
/// (which holds the balancer's password, cloud credentials, tokens). It
/// gets `PATH`, `HOME`, `LANG`, `LC_*` and `TZ` from it, the variables
/// named by [`with_pass_env`](Self::with_pass_env), those set by
/// [`with_env`](Self::with_env), and the target's; never one
/// [`withhold_env`](Self::withhold_env) names.
///
/// The program runs in its own process group, so a Ctrl-C at the
/// operator's terminal does not reach it, and it outlives the rollout
/// process: when that process dies, the program finishes, a small `sh`
/// wrapper (the program and its arguments are its positional parameters,
/// never parsed) records its exit status in a file, and a resumed run
/// waits for it and reads that status ([`Executor::recover`]). When the
/// program runs past its timeout, its whole process group is killed.
///
/// Its files live in a directory of its own under the state directory's
/// `exec/` (directories 0700, files 0600). A resumed run acts on a handle
/// from the journal (waits for its process, kills it past its time limit,
/// reads and deletes its directory) only when the handle was written on
/// this host, names a pid above 1 with its start time, that pid still is
/// that process, leads its own process group and was started for that
/// directory (its environment names it), and its directory is a
/// real directory directly under this `exec/`, named as the runner names
/// them; any other handle is refused and its target gets `on_interrupted`
/// with the reason.
#[derive(Debug, Clone)]
pub struct LocalCommand {
    program: OsString,
    args: Vec<OsString>,
    timeout: Duration,
    state_dir: Option<PathBuf>,
    env: ChildEnv,
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
            state_dir: None,
            env: ChildEnv::new(&[]),
        })
    }

    /// Passes hygiene's own variable `name` to the program (when set).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `name` is not a variable name, is one
    /// of the target's, or is withheld.
    pub fn with_pass_env(mut self, name: &str) -> Result<Self> {
        self.env.pass("pass_env", name)?;
        Ok(self)
    }

    /// Sets `name` to `value` in the program's environment.
    ///
    /// # Errors
    /// As [`with_pass_env`](Self::with_pass_env), and for a value with a NUL.
    pub fn with_env(mut self, name: &str, value: &str) -> Result<Self> {
        self.env.set("env", name, value)?;
        Ok(self)
    }

    /// Never gives hygiene's variable `name` to the program (the one
    /// holding the balancer's password), even when it is on the allow-list.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when it was passed or set already.
    pub fn withhold_env(mut self, name: &str) -> Result<Self> {
        self.env.withhold("password_env", name)?;
        Ok(self)
    }

    /// Kills the program after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where each run keeps its output and exit status until it is read
    /// (default: `exec/` under [`journal::default_dir`](crate::journal::default_dir)).
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    fn runner(&self) -> Runner {
        Runner {
            timeout: self.timeout,
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(|| crate::journal::default_dir().join("exec")),
            env: self.env.clone(),
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
        self.execute_tracked(targets, &HandleSink::none()).await
    }

    async fn execute_tracked(
        &self,
        targets: &[Target],
        sink: &HandleSink,
    ) -> Result<Vec<ExecOutcome>> {
        let runner = self.runner();
        Ok(join_all(targets.iter().map(|t| {
            let span = crate::trace::maintenance_span(&t.id);
            let inv = Invocation::new(self.program.clone(), self.args.clone(), t).traced(&span);
            runner.run(inv, t, sink).instrument(span)
        }))
        .await)
    }

    async fn recover(&self, target: &Target, handle: &ExecHandle) -> Result<Recovered> {
        Ok(self.runner().recover(target, handle).await)
    }
}

/// One program to run for one target.
#[derive(Debug, Clone)]
pub(crate) struct Invocation {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(String, String)>,
}

impl Invocation {
    /// `program args…` with the target's environment variables.
    pub(crate) fn new(program: OsString, args: Vec<OsString>, target: &Target) -> Self {
        let mut env = vec![
            (
                "HYGIENE_TARGET_ID".to_owned(),
                target.id.as_str().to_owned(),
            ),
            (
                "HYGIENE_TARGET_ADDRESS".to_owned(),
                target.address.clone().unwrap_or_default(),
            ),
        ];
        if let Some(port) = target.port {
            env.push(("HYGIENE_TARGET_PORT".to_owned(), port.to_string()));
        }
        Self { program, args, env }
    }

    /// With the `TRACEPARENT` of the maintenance's span, when it has one.
    pub(crate) fn traced(mut self, span: &tracing::Span) -> Self {
        if let Some(tp) = crate::trace::traceparent(span) {
            self.env.push((crate::trace::TRACEPARENT.to_owned(), tp));
        }
        self
    }
}

/// Starts programs in their own process group with output and exit status
/// in files, waits for them, kills them at the time limit, and finds them
/// again from another process.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub(crate) timeout: Duration,
    pub(crate) state_dir: PathBuf,
    pub(crate) env: ChildEnv,
}

/// The wrapper: runs its positional parameters as the command (never
/// parsed), then writes the exit status atomically next to the output
/// (mode 0600 without changing the command's umask; `mv` from the
/// system's default path, not the `PATH`).
const WRAPPER: &str = r#""$@"; s=$?; (umask 077 && printf '%s\n' "$s" > "$HYGIENE_EXEC_DIR/status.part") && command -p mv -f "$HYGIENE_EXEC_DIR/status.part" "$HYGIENE_EXEC_DIR/status"; exit "$s""#;

/// The shell that runs the wrapper: by absolute path, never looked up on
/// the `PATH`.
const SHELL: &str = "/bin/sh";

impl Runner {
    /// Runs `inv` for `target`, reports its handle, and waits for it (up to
    /// the time limit).
    pub(crate) async fn run(
        &self,
        inv: Invocation,
        target: &Target,
        sink: &HandleSink,
    ) -> ExecOutcome {
        let started = Instant::now();
        let program = inv.program.to_string_lossy().into_owned();
        let dir = self
            .state_dir
            .join(dir_name(target, &uuid::Uuid::new_v4().simple().to_string()));
        let fail = |why: String| ExecOutcome::failure(target.id.clone(), started.elapsed(), why);
        let made = private_dir(&self.state_dir).and_then(|()| {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))
        });
        if let Err(e) = made {
            // Nothing was started: the maintenance fails before it ran.
            return fail(format!(
                "{e} (for the output of {program:?}); check the state directory"
            ));
        }
        let files = (
            create_private_file(&dir.join("stdout")),
            create_private_file(&dir.join("stderr")),
        );
        let (Ok(out), Ok(err)) = files else {
            return fail(format!("cannot create output files in {}", dir.display()));
        };
        let mut cmd = Command::new(SHELL);
        self.env.apply(&mut cmd);
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg(&inv.program)
            .arg(&inv.program)
            .args(&inv.args)
            .envs(inv.env.iter().map(|(k, v)| (k, v)))
            .env("HYGIENE_EXEC_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Its own process group: a Ctrl-C at the operator's terminal cancels
        // the run, and a maintenance already running must finish (then go
        // through enable and health), not die half-way with the terminal's
        // SIGINT. Not killed when dropped: it outlives a dead rollout.
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ignored = std::fs::remove_dir_all(&dir);
                return fail(format!("cannot start {program:?}: {e}"));
            }
        };
        let pid = child.id().unwrap_or(0);
        sink.started(
            &target.id,
            ExecHandle(
                serde_json::to_value(ChildHandle {
                    pid,
                    start_ticks: start_ticks(pid),
                    host: Some(crate::journal::host()),
                    dir: dir.clone(),
                    program: program.clone(),
                    started_at: jiff::Timestamp::now().to_string(),
                })
                .unwrap_or_default(),
            ),
        );
        let waited = tokio::time::timeout(self.timeout, child.wait()).await;
        let duration = started.elapsed();
        let outcome = match waited {
            Err(_) => {
                kill_group(pid);
                let _reaped = child.wait().await;
                let mut o = read_outcome(target, &dir, &program, duration, None);
                o.success = false;
                o.message = Some(format!(
                    "{program:?} ran past its timeout of {:?} and was killed",
                    self.timeout
                ));
                o
            }
            Ok(Err(e)) => fail(format!("waiting for {program:?}: {e}")),
            Ok(Ok(status)) => read_outcome(target, &dir, &program, duration, status.code()),
        };
        let _ignored = std::fs::remove_dir_all(&dir);
        outcome
    }

    /// Finds a child a dead process started: checks its handle (see
    /// [`LocalCommand`]), waits while it runs (up to what is left of its
    /// time limit), then reads its status file.
    pub(crate) async fn recover(&self, target: &Target, handle: &ExecHandle) -> Recovered {
        let h: ChildHandle = match serde_json::from_value(handle.0.clone()) {
            Ok(h) => h,
            Err(e) => {
                return Recovered::Unknown(format!(
                    "the journal's handle on the maintenance of {} is not a local command's ({e})",
                    target.id
                ))
            }
        };
        if let Some(why) = h.refusal(target, &self.state_dir) {
            tracing::warn!(target.id = %target.id, reason = %why, "journal handle refused");
            return Recovered::Unknown(format!(
                "the journal's handle on the maintenance of {} was refused, nothing was signalled or deleted: {why}",
                target.id
            ));
        }
        let mut poll = Duration::from_millis(50);
        loop {
            match liveness(&h) {
                Liveness::Gone => break,
                Liveness::NotOurs(why) => {
                    tracing::warn!(target.id = %target.id, reason = %why, "journal handle refused");
                    return Recovered::Unknown(format!(
                        "the journal's handle on the maintenance of {} was refused, nothing was signalled or deleted: \
                         {why}, so it is not the maintenance hygiene started",
                        target.id
                    ));
                }
                Liveness::Running => {}
            }
            // A start time that cannot be read counts as past the limit.
            if h.ran().is_none_or(|ran| ran >= self.timeout) {
                kill_group(h.pid);
                let mut o = read_outcome(
                    target,
                    &h.dir,
                    &h.program,
                    h.ran().unwrap_or_default(),
                    None,
                );
                o.success = false;
                o.message = Some(format!(
                    "{:?} ran past its timeout of {:?} and was killed (by the resumed run)",
                    h.program, self.timeout
                ));
                let _ignored = std::fs::remove_dir_all(&h.dir);
                return Recovered::Finished(o);
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_secs(1));
        }
        let code = std::fs::read_to_string(h.dir.join("status"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let Some(code) = code else {
            return Recovered::Unknown(format!(
                "{:?} (pid {}) ended without recording its exit status in {} (killed, or the files were removed)",
                h.program,
                h.pid,
                h.dir.display()
            ));
        };
        let o = read_outcome(
            target,
            &h.dir,
            &h.program,
            h.ran().unwrap_or_default(),
            Some(code),
        );
        let _ignored = std::fs::remove_dir_all(&h.dir);
        Recovered::Finished(o)
    }
}

/// The outcome from the files a child left, `code` being its exit code
/// (`None`: killed by a signal).
fn read_outcome(
    target: &Target,
    dir: &Path,
    program: &str,
    duration: Duration,
    code: Option<i32>,
) -> ExecOutcome {
    let success = code == Some(0);
    ExecOutcome {
        id: target.id.clone(),
        success,
        exit_code: code,
        stdout_tail: read_tail(&dir.join("stdout")),
        stderr_tail: read_tail(&dir.join("stderr")),
        duration,
        message: (!success).then(|| match code {
            // The wrapper's shell reports a signal as 128 + its number.
            Some(c) if c > 128 => format!("{program:?} was killed by signal {}", c - 128),
            Some(c) => format!("{program:?} exited with code {c}"),
            None => format!("{program:?} was killed by a signal"),
        }),
        may_still_run: false,
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of a file, as text.
fn read_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)
    else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(OUTPUT_TAIL_BYTES as u64 + 4);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _partial = f.read_to_end(&mut buf);
    crate::executor::tail(&String::from_utf8_lossy(&buf), OUTPUT_TAIL_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::TargetId;
    use crate::testing::KeptHandles;

    fn target(id: &str) -> Target {
        Target::new(TargetId::new(id).expect("id")).with_address("10.0.0.1")
    }

    fn cmd(dir: &tempfile::TempDir, program: &str, args: &[&str]) -> LocalCommand {
        LocalCommand::new(program, args.iter().copied())
            .expect("cmd")
            .with_state_dir(dir.path())
    }

    /// A sink keeping the handles it is told.
    fn keeper() -> (HandleSink, KeptHandles) {
        let kept = KeptHandles::new();
        (kept.sink(), kept)
    }

    fn empty(dir: &tempfile::TempDir) -> bool {
        std::fs::read_dir(dir.path()).expect("dir").next().is_none()
    }

    #[tokio::test]
    async fn passes_target_through_env_not_shell() {
        let dir = tempfile::tempdir().expect("dir");
        let c = cmd(
            &dir,
            "sh",
            &[
                "-c",
                "echo \"$HYGIENE_TARGET_ID@$HYGIENE_TARGET_ADDRESS\"; echo oops >&2; exit 3",
            ],
        );
        // A name that would be dangerous in a shell string stays inert.
        let out = c
            .execute(&[target("web/$(touch_x)")])
            .await
            .expect("execute");
        assert_eq!(out.len(), 1);
        assert!(!out[0].success);
        assert_eq!(out[0].exit_code, Some(3));
        assert_eq!(out[0].stdout_tail.trim(), "web/$(touch_x)@10.0.0.1");
        assert_eq!(out[0].stderr_tail.trim(), "oops");
        assert!(empty(&dir), "files of a finished run are removed");
    }

    #[tokio::test]
    async fn arguments_reach_the_program_unparsed() {
        let dir = tempfile::tempdir().expect("dir");
        let c = cmd(&dir, "printf", &["%s|", "a b", "$(x)", "'q'", "-n"]);
        let out = c.execute(&[target("a")]).await.expect("execute");
        assert!(out[0].success, "{:?}", out[0]);
        assert_eq!(out[0].stdout_tail, "a b|$(x)|'q'|-n|");
    }

    #[tokio::test]
    async fn success_and_missing_program() {
        let dir = tempfile::tempdir().expect("dir");
        let ok = cmd(&dir, "true", &[]);
        assert!(ok.execute(&[target("a")]).await.expect("execute")[0].success);
        let missing = cmd(&dir, "/nonexistent/program", &[]);
        let out = missing.execute(&[target("a")]).await.expect("execute");
        assert!(!out[0].success);
        assert_eq!(out[0].exit_code, Some(127), "{:?}", out[0]);
        assert!(out[0].stderr_tail.contains("/nonexistent/program"));
        assert!(LocalCommand::new("", Vec::<String>::new()).is_err());
    }

    #[tokio::test]
    async fn an_unusable_state_dir_fails_the_maintenance_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").expect("write");
        let c = LocalCommand::new("true", Vec::<String>::new())
            .expect("cmd")
            .with_state_dir(&file);
        let out = c.execute(&[target("a")]).await.expect("execute");
        assert!(!out[0].success);
        assert!(
            out[0].message.as_deref().unwrap_or("").contains("a-file"),
            "{:?}",
            out[0]
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn runs_in_its_own_process_group_and_reports_its_handle() {
        let dir = tempfile::tempdir().expect("dir");
        // The process group of the program: the wrapper's pid, which leads it.
        let c = cmd(&dir, "sh", &["-c", "cut -d' ' -f5 /proc/$$/stat"]);
        let (sink, kept) = keeper();
        let out = c
            .execute_tracked(&[target("a")], &sink)
            .await
            .expect("execute");
        let kept = kept.handles();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0.as_str(), "a");
        let h: ChildHandle = serde_json::from_value(kept[0].1 .0.clone()).expect("handle");
        assert_eq!(
            out[0].stdout_tail.trim(),
            h.pid.to_string(),
            "a terminal's Ctrl-C must not reach the maintenance"
        );
        assert!(h.start_ticks.is_some());
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("dir");
        let marker = dir.path().join("grandchild-ran");
        // A grandchild that would write the marker after a second.
        let script = format!("(sleep 1; touch {}) & sleep 5", marker.display());
        let slow = cmd(&dir, "sh", &["-c", &script]).with_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let out = slow.execute(&[target("a")]).await.expect("execute");
        assert!(!out[0].success);
        assert!(out[0].message.as_deref().unwrap_or("").contains("timeout"));
        assert!(started.elapsed() < Duration::from_secs(4));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the grandchild outlived the timeout");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_new_process_waits_for_an_orphaned_maintenance_and_reads_its_status() {
        let dir = tempfile::tempdir().expect("dir");
        let c = cmd(&dir, "sh", &["-c", "sleep 0.6; echo patched; exit 4"]);
        let (sink, kept) = keeper();
        let t = target("web-1");
        // The run that started it is dropped (as a killed process would be).
        let run = {
            let c = c.clone();
            let t = t.clone();
            tokio::spawn(async move { c.execute_tracked(&[t], &sink).await })
        };
        while kept.handles().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        run.abort();
        let handle = kept.handles()[0].1.clone();
        let started = std::time::Instant::now();
        let got = cmd(&dir, "true", &[])
            .recover(&t, &handle)
            .await
            .expect("recover");
        let Recovered::Finished(o) = got else {
            panic!("{got:?}");
        };
        assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
        assert!(!o.success);
        assert_eq!(o.exit_code, Some(4));
        assert_eq!(o.stdout_tail.trim(), "patched");
        assert!(empty(&dir), "recovered files are removed");
    }

    #[tokio::test]
    async fn a_maintenance_that_left_no_status_is_unknown() {
        let dir = tempfile::tempdir().expect("dir");
        // A process that ended: its pid, and a start time no process has.
        let mut done = std::process::Command::new("true").spawn().expect("spawn");
        let pid = done.id();
        done.wait().expect("wait");
        let t = target("a");
        let files = dir
            .path()
            .join(handle::dir_name(&t, "0123456789abcdef0123456789abcdef"));
        std::fs::create_dir(&files).expect("mkdir");
        let gone = ExecHandle(
            serde_json::to_value(ChildHandle {
                pid,
                start_ticks: Some(u64::MAX),
                host: Some(crate::journal::host()),
                dir: files.clone(),
                program: "patch".into(),
                started_at: jiff::Timestamp::now().to_string(),
            })
            .expect("json"),
        );
        let c = cmd(&dir, "true", &[]);
        let got = c.recover(&t, &gone).await.expect("recover");
        assert!(
            matches!(&got, Recovered::Unknown(why) if why.contains("without recording")),
            "{got:?}"
        );
        let foreign = ExecHandle(serde_json::json!({"command_id": "abc"}));
        let got = c.recover(&t, &foreign).await.expect("recover");
        assert!(
            matches!(&got, Recovered::Unknown(why) if why.contains("not a local command")),
            "{got:?}"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn files_are_private_and_the_environment_is_not_inherited() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("dir");
        let exec = tmp.path().join("exec");
        // Where the maintenance can see its own files while it runs.
        let script = "stat -c '%a' \"$HYGIENE_EXEC_DIR\" \"$HYGIENE_EXEC_DIR/stdout\"; env";
        let c = LocalCommand::new("/bin/sh", ["-c", script])
            .expect("cmd")
            .with_state_dir(&exec)
            .with_pass_env("HYGIENE_TEST_PASSED")
            .expect("pass")
            .with_env("MODE", "fast")
            .expect("env")
            .withhold_env("LC_HYGIENE_TEST_SECRET")
            .expect("withhold");
        // Variables of this process's own, set for this test only: the
        // child must see the passed one and neither secret.
        std::env::set_var("HYGIENE_TEST_PASSED", "yes");
        std::env::set_var("HYGIENE_TEST_SECRET", "s3cr3t-one");
        std::env::set_var("LC_HYGIENE_TEST_SECRET", "s3cr3t-two");
        let out = c.execute(&[target("a")]).await.expect("execute");
        assert!(out[0].success, "{:?}", out[0]);
        let text = &out[0].stdout_tail;
        assert!(text.starts_with("700\n600\n"), "{text}");
        assert!(text.contains("HYGIENE_TEST_PASSED=yes"), "{text}");
        assert!(text.contains("MODE=fast"), "{text}");
        assert!(text.contains("HYGIENE_TARGET_ID=a"), "{text}");
        assert!(
            !text.contains("s3cr3t"),
            "a secret reached the child: {text}"
        );
        let m = std::fs::metadata(&exec).expect("exec").permissions().mode();
        assert_eq!(m & 0o777, 0o700);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_recovered_maintenance_past_its_time_limit_is_killed() {
        let dir = tempfile::tempdir().expect("dir");
        let c = cmd(&dir, "sleep", &["30"]);
        let (sink, kept) = keeper();
        let t = target("a");
        let run = {
            let (c, t) = (c.clone(), t.clone());
            tokio::spawn(async move { c.execute_tracked(&[t], &sink).await })
        };
        while kept.handles().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        run.abort();
        let handle = kept.handles()[0].1.clone();
        let h: ChildHandle = serde_json::from_value(handle.0.clone()).expect("handle");
        let got = c
            .with_timeout(Duration::from_millis(300))
            .recover(&t, &handle)
            .await
            .expect("recover");
        let Recovered::Finished(o) = got else {
            panic!("{got:?}");
        };
        assert!(!o.success);
        assert!(
            o.message.as_deref().unwrap_or("").contains("timeout"),
            "{o:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(liveness(&h), Liveness::Gone, "the orphan was killed");
    }
}
