//! [`LocalCommand`]: runs a program on this machine for each target, and
//! the runner it shares with the ssh executor: a child that outlives the
//! process that started it, and leaves its exit status and output in files
//! another process can read (crash safety).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::executor::{
    ExecHandle, ExecOutcome, Executor, HandleSink, Preflight, Recovered, OUTPUT_TAIL_BYTES,
};
use crate::target::Target;

/// Runs `program args…` once per target, all targets of a batch at once.
///
/// No shell interprets anything of the target's or the configuration's:
/// the target reaches the program as the environment variables
/// `HYGIENE_TARGET_ID`, `HYGIENE_TARGET_ADDRESS` (empty when the target has
/// no address) and `HYGIENE_TARGET_PORT` (when it has one). Exit code 0 is
/// success. Output is kept in files; the report keeps its tail.
///
/// The program runs in its own process group, so a Ctrl-C at the
/// operator's terminal does not reach it, and it outlives the rollout
/// process: when that process dies, the program finishes, a small `sh`
/// wrapper (the program and its arguments are its positional parameters,
/// never parsed) records its exit status in a file, and a resumed run
/// waits for it and reads that status ([`Executor::recover`]). When the
/// program runs past its timeout, its whole process group is killed.
#[derive(Debug, Clone)]
pub struct LocalCommand {
    program: OsString,
    args: Vec<OsString>,
    timeout: Duration,
    state_dir: Option<PathBuf>,
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
        })
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
            let inv = Invocation::new(self.program.clone(), self.args.clone(), t);
            runner.run(inv, t, sink)
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
}

/// What a resumed run needs to find a child again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChildHandle {
    /// The wrapper's pid (the leader of the child's process group).
    pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field
    /// 22): tells the same process from a later one with the same pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_ticks: Option<u64>,
    /// The directory holding `status`, `stdout` and `stderr`.
    dir: PathBuf,
    /// The program, for messages.
    program: String,
    /// When it started (RFC 3339), for its time limit.
    started_at: String,
}

/// Starts programs in their own process group with output and exit status
/// in files, waits for them, kills them at the time limit, and finds them
/// again from another process.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub(crate) timeout: Duration,
    pub(crate) state_dir: PathBuf,
}

/// The wrapper: runs its positional parameters as the command (never
/// parsed), then writes the exit status atomically next to the output.
const WRAPPER: &str = r#""$@"; s=$?; printf '%s\n' "$s" > "$HYGIENE_EXEC_DIR/status.part" && mv -f "$HYGIENE_EXEC_DIR/status.part" "$HYGIENE_EXEC_DIR/status"; exit "$s""#;

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
        let dir = self.state_dir.join(format!(
            "{}-{}",
            sanitize(target.id.as_str()),
            uuid::Uuid::new_v4().simple()
        ));
        let fail = |why: String| ExecOutcome::failure(target.id.clone(), started.elapsed(), why);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            // Nothing was started: the maintenance fails before it ran.
            return fail(format!(
                "cannot create {} for the output of {program:?}: {e}; check the state directory",
                dir.display()
            ));
        }
        let files = (
            std::fs::File::create(dir.join("stdout")),
            std::fs::File::create(dir.join("stderr")),
        );
        let (Ok(out), Ok(err)) = files else {
            return fail(format!("cannot create output files in {}", dir.display()));
        };
        let mut cmd = Command::new("sh");
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
                kill_group(pid).await;
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

    /// Finds a child a dead process started: waits while it runs (up to
    /// what is left of its time limit), then reads its status file.
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
        let started: Option<jiff::Timestamp> = h.started_at.parse().ok();
        let ran = || {
            started
                .and_then(|s| {
                    let d = jiff::Timestamp::now().duration_since(s);
                    Duration::try_from(d).ok()
                })
                .unwrap_or_default()
        };
        let mut poll = Duration::from_millis(50);
        while alive(&h) {
            if ran() >= self.timeout {
                kill_group(h.pid).await;
                let mut o = read_outcome(target, &h.dir, &h.program, ran(), None);
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
        let o = read_outcome(target, &h.dir, &h.program, ran(), Some(code));
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
    let Ok(mut f) = std::fs::File::open(path) else {
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

/// A file name made of a target id.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// `(state, start time in clock ticks since boot)` of `pid`, where
/// `/proc/<pid>/stat` says (fields 3 and 22).
fn proc_stat(pid: u32) -> Option<(String, Option<u64>)> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = fields.next()?.to_owned();
    Some((state, fields.nth(18).and_then(|f| f.parse().ok())))
}

/// The start time of `pid` in clock ticks since boot, where `/proc` says.
fn start_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid)?.1
}

/// The process a handle names still runs (and is not a zombie).
fn alive(h: &ChildHandle) -> bool {
    match proc_stat(h.pid) {
        None => false,
        Some((state, _)) if state == "Z" => false,
        Some((_, ticks)) => h.start_ticks.is_none() || ticks == h.start_ticks,
    }
}

/// Kills a process group with the system's `kill` (no unsafe code here).
async fn kill_group(pid: u32) {
    if pid == 0 {
        return;
    }
    let _ignored = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
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
        let gone = ExecHandle(
            serde_json::to_value(ChildHandle {
                pid: 0,
                start_ticks: None,
                dir: dir.path().join("nothing-here"),
                program: "patch".into(),
                started_at: jiff::Timestamp::now().to_string(),
            })
            .expect("json"),
        );
        let c = cmd(&dir, "true", &[]);
        let got = c.recover(&target("a"), &gone).await.expect("recover");
        assert!(
            matches!(&got, Recovered::Unknown(why) if why.contains("without recording")),
            "{got:?}"
        );
        let foreign = ExecHandle(serde_json::json!({"command_id": "abc"}));
        let got = c.recover(&target("a"), &foreign).await.expect("recover");
        assert!(
            matches!(&got, Recovered::Unknown(why) if why.contains("not a local command")),
            "{got:?}"
        );
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
        assert!(!alive(&h), "the orphan was killed");
    }
}
