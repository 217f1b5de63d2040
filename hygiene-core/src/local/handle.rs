//! The handle a runner journals for each child, and the checks a handle
//! read back from a journal must pass before anything is signalled or
//! deleted: a journal is data, not orders (DESIGN invariant 11). A
//! hand-edited or planted journal could otherwise name `pid 1` (`kill -1`:
//! every process), an unrelated process, or any directory to delete.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::journal::private::euid;
use crate::target::Target;

/// What a resumed run needs to find a child again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ChildHandle {
    /// The wrapper's pid (the leader of the child's process group).
    pub(super) pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field
    /// 22): tells the same process from a later one with the same pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) start_ticks: Option<u64>,
    /// The host it runs on: a pid means nothing on another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) host: Option<String>,
    /// The directory holding `status`, `stdout` and `stderr`.
    pub(super) dir: PathBuf,
    /// The program, for messages.
    pub(super) program: String,
    /// When it started (RFC 3339), for its time limit.
    pub(super) started_at: String,
}

/// The name of a child's directory: the target's id made a file name,
/// `-`, 32 hex digits (a v4 uuid).
pub(super) fn dir_name(target: &Target, uuid: &str) -> String {
    format!("{}-{uuid}", file_name(target.id.as_str()))
}

/// A file name made of a target id.
fn file_name(id: &str) -> String {
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

impl ChildHandle {
    /// Why this handle must not be acted on (signalled, its directory read
    /// or deleted) by a runner whose directories are under `exec_dir`, on
    /// this host, for `target`; `None` when it may.
    pub(super) fn refusal(&self, target: &Target, exec_dir: &Path) -> Option<String> {
        let here = crate::journal::host();
        match &self.host {
            None => {
                return Some(
                    "the handle names no host (written by an older hygiene, or not by hygiene): its pid cannot be trusted to be a process of this host"
                        .into(),
                )
            }
            Some(h) if *h != here => {
                return Some(format!(
                    "the maintenance was started on host {h:?}, not on this one ({here:?}): its process and files are there. \
                     Check it on {h} (or resume there); this run does not signal or delete anything for it"
                ))
            }
            Some(_) => {}
        }
        if self.pid <= 1 {
            return Some(format!(
                "pid {} is not a process a maintenance can have been",
                self.pid
            ));
        }
        if self.start_ticks.is_none() {
            return Some(format!(
                "the handle has no start time for pid {}: that pid may be any process now",
                self.pid
            ));
        }
        self.dir_refusal(target, exec_dir)
    }

    /// The directory must be one this runner made for this target: a real
    /// directory (not a symlink), owned by this user, directly under
    /// `exec_dir`, named as the runner names them.
    fn dir_refusal(&self, target: &Target, exec_dir: &Path) -> Option<String> {
        let dir = &self.dir;
        let shown = dir.display();
        let prefix = format!("{}-", file_name(target.id.as_str()));
        let named = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(&prefix))
            .is_some_and(|uuid| {
                uuid.len() == 32 && uuid.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
            });
        if !named {
            return Some(format!(
                "{shown} is not the name of a directory hygiene makes for {}",
                target.id
            ));
        }
        let parent = dir.parent().and_then(|p| p.canonicalize().ok());
        let exec = exec_dir.canonicalize().ok();
        if parent.is_none() || parent != exec {
            return Some(format!(
                "{shown} is not in this state directory's {}",
                exec_dir.display()
            ));
        }
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => Some(format!("{shown} is a symlink")),
            Ok(m) if !m.is_dir() => Some(format!("{shown} is not a directory")),
            Ok(m) if m.uid() != euid() => Some(format!(
                "{shown} is owned by user {}, not by this user",
                m.uid()
            )),
            Ok(_) => None,
            Err(e) => Some(format!("{shown} cannot be read ({e})")),
        }
    }

    /// How long it has run; `None` when its start time cannot be read or
    /// lies in the future (then it counts as past any time limit).
    pub(super) fn ran(&self) -> Option<Duration> {
        let started: jiff::Timestamp = self.started_at.parse().ok()?;
        Duration::try_from(jiff::Timestamp::now().duration_since(started)).ok()
    }
}

/// What became of the process a checked handle names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Liveness {
    /// No process with that pid and start time runs (it ended; the pid
    /// may belong to another process since, which is never signalled).
    Gone,
    /// It runs, leads its own process group and was started for this
    /// handle's directory: the maintenance.
    Running,
    /// It runs but is not the runner's wrapper for this directory (it
    /// does not lead its own process group, or its environment does not
    /// name the directory): never signalled. The reason says which.
    NotOurs(String),
}

/// Whether the process of a handle (already checked) still runs.
pub(super) fn liveness(h: &ChildHandle) -> Liveness {
    match proc_stat(h.pid) {
        None => Liveness::Gone,
        Some((state, _)) if state == "Z" => Liveness::Gone,
        Some((_, ticks)) if ticks.is_none() || ticks != h.start_ticks => Liveness::Gone,
        Some(_) if !leads_its_group(h.pid) => {
            Liveness::NotOurs(format!("pid {} does not lead its own process group", h.pid))
        }
        Some(_) if !started_for(h.pid, &h.dir) => Liveness::NotOurs(format!(
            "pid {} was not started for {} (its environment does not name it)",
            h.pid,
            h.dir.display()
        )),
        Some(_) => Liveness::Running,
    }
}

/// The runner's wrapper for `dir` has `HYGIENE_EXEC_DIR=<dir>` in the
/// environment it was started with: an unrelated process, even one that
/// leads its group and whose start time was copied into a journal, has not.
fn started_for(pid: u32, dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut want = b"HYGIENE_EXEC_DIR=".to_vec();
    want.extend_from_slice(dir.as_os_str().as_bytes());
    environ.split(|b| *b == 0).any(|var| var == want.as_slice())
}

fn leads_its_group(pid: u32) -> bool {
    let Some(p) = pid_of(pid) else {
        return false;
    };
    rustix::process::getpgid(Some(p)).is_ok_and(|g| g == p)
}

fn pid_of(pid: u32) -> Option<rustix::process::Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .and_then(rustix::process::Pid::from_raw)
}

/// `(state, start time in clock ticks since boot)` of `pid`, where
/// `/proc/<pid>/stat` says (fields 3 and 22).
pub(super) fn proc_stat(pid: u32) -> Option<(String, Option<u64>)> {
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
pub(super) fn start_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid)?.1
}

/// Kills the process group `pid` leads, with `kill(2)` (no program looked
/// up on the `PATH`). Never for pid 0 or 1: `kill(-1)` is every process.
pub(crate) fn kill_group(pid: u32) {
    let Some(p) = pid_of(pid) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(p, rustix::process::Signal::KILL) {
        // ESRCH: it ended meanwhile.
        tracing::debug!(pid, error = %e, "kill of a maintenance's process group");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::TargetId;
    use std::os::unix::process::CommandExt;

    fn target() -> Target {
        Target::new(TargetId::new("web/1").expect("id"))
    }

    fn handle(dir: PathBuf) -> ChildHandle {
        ChildHandle {
            pid: std::process::id(),
            start_ticks: start_ticks(std::process::id()),
            host: Some(crate::journal::host()),
            dir,
            program: "patch".into(),
            started_at: jiff::Timestamp::now().to_string(),
        }
    }

    const UUID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn only_a_handle_of_this_host_and_this_exec_dir_is_honoured() {
        let tmp = tempfile::tempdir().expect("dir");
        let exec = tmp.path().join("exec");
        let dir = exec.join(dir_name(&target(), UUID));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let good = handle(dir.clone());
        assert_eq!(good.refusal(&target(), &exec), None);
        // Through another spelling of the same exec dir.
        let other_spelling = handle(
            tmp.path()
                .join("exec/./")
                .join(dir.file_name().expect("name")),
        );
        assert_eq!(other_spelling.refusal(&target(), &exec), None);

        let refused = |h: ChildHandle, why: &str| {
            let got = h.refusal(&target(), &exec);
            assert!(
                got.as_deref().is_some_and(|g| g.contains(why)),
                "{why}: {got:?}"
            );
        };
        refused(
            ChildHandle {
                pid: 1,
                ..good.clone()
            },
            "pid 1",
        );
        refused(
            ChildHandle {
                pid: 0,
                ..good.clone()
            },
            "pid 0",
        );
        refused(
            ChildHandle {
                start_ticks: None,
                ..good.clone()
            },
            "no start time",
        );
        refused(
            ChildHandle {
                host: None,
                ..good.clone()
            },
            "names no host",
        );
        refused(
            ChildHandle {
                host: Some("elsewhere".into()),
                ..good.clone()
            },
            "started on host \"elsewhere\"",
        );
        // Outside exec/, or not named as the runner names them.
        let outside = tmp.path().join(dir_name(&target(), UUID));
        std::fs::create_dir_all(&outside).expect("mkdir");
        refused(handle(outside), "is not in this state directory's");
        let home = handle(PathBuf::from("/root"));
        refused(home, "is not the name of a directory");
        let other_target = exec.join(format!("web_2-{UUID}"));
        std::fs::create_dir_all(&other_target).expect("mkdir");
        refused(handle(other_target), "is not the name of a directory");
        let deeper = exec.join("x").join(dir_name(&target(), UUID));
        std::fs::create_dir_all(&deeper).expect("mkdir");
        refused(handle(deeper), "is not in this state directory's");
        // A symlink with the right name, to a directory elsewhere.
        let elsewhere = tmp.path().join("precious");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        let link = exec.join(dir_name(&target(), &UUID.replace('0', "1")));
        std::os::unix::fs::symlink(&elsewhere, &link).expect("symlink");
        refused(handle(link), "is a symlink");
        let missing = exec.join(dir_name(&target(), &UUID.replace('0', "2")));
        refused(handle(missing), "cannot be read");
    }

    #[test]
    fn a_bad_or_future_time_is_past_any_limit() {
        let tmp = tempfile::tempdir().expect("dir");
        let mut h = handle(tmp.path().into());
        assert!(h.ran().is_some_and(|d| d < Duration::from_secs(60)));
        h.started_at = "yesterday".into();
        assert_eq!(h.ran(), None);
        h.started_at = "2999-01-01T00:00:00Z".into();
        assert_eq!(h.ran(), None);
    }

    #[test]
    fn liveness_tells_the_process_from_a_later_one_and_from_a_non_leader() {
        let tmp = tempfile::tempdir().expect("dir");
        // This test process does not lead its process group (cargo's does).
        let me = handle(tmp.path().into());
        if leads_its_group(me.pid) {
            return;
        }
        assert!(
            matches!(liveness(&me), Liveness::NotOurs(why) if why.contains("does not lead")),
            "{:?}",
            liveness(&me)
        );
        // A process leading its own group, not started for this directory.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn");
        let theirs = ChildHandle {
            pid: other.id(),
            start_ticks: start_ticks(other.id()),
            ..me.clone()
        };
        let got = liveness(&theirs);
        other.kill().expect("kill");
        other.wait().expect("reap");
        assert!(
            matches!(&got, Liveness::NotOurs(why) if why.contains("was not started for")),
            "{got:?}"
        );
        let later = ChildHandle {
            start_ticks: me.start_ticks.map(|t| t + 1),
            ..me.clone()
        };
        assert_eq!(liveness(&later), Liveness::Gone);
        assert_eq!(
            liveness(&ChildHandle {
                pid: u32::MAX,
                ..me
            }),
            Liveness::Gone
        );
        assert!(pid_of(1).is_none() && pid_of(0).is_none());
    }
}
