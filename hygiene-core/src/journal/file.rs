//! [`FileJournal`]: JSON Lines on disk, one writer at a time.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::private::{euid, no_follow};
use super::{Journal, Record};
use crate::error::{Error, Result};

/// A journal in a file: one JSON record per line, `sync_data` after each,
/// and an exclusive lock (released when the process ends, however it
/// ends) so two runs never write the same journal.
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    file: Mutex<File>,
    /// The torn tail cut when it was opened (bytes), if any.
    cut: Option<u64>,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::journal(
        path.display().to_string(),
        format!("cannot be {what}: {e}; check the state directory and its permissions"),
    )
}

impl FileJournal {
    /// Opens the journal at `path` (creating it and its directory), and
    /// takes its lock.
    ///
    /// # Errors
    /// [`Error::Journal`] when it cannot be created or opened, or when
    /// another process holds it (the message names that run's id, host,
    /// pid and start time).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Missing directories are private (0700); an existing one is
            // the caller's choice (`prepare_state_dir` checks a state dir).
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io(&path, "created", e))?;
        }
        // Never through a symlink: a link planted where the journal goes
        // would have this process (often root) create and write its target.
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&path)
            .map_err(|e| io(&path, "opened (a symlink is refused)", e))?;
        let meta = file.metadata().map_err(|e| io(&path, "read", e))?;
        if !meta.file_type().is_file() {
            return Err(Error::journal(
                path.display().to_string(),
                "is not a regular file: move it away, hygiene writes its journal there",
            ));
        }
        let me = euid();
        if meta.uid() != me {
            return Err(Error::journal(
                path.display().to_string(),
                format!(
                    "is owned by user {}, not by this user ({me}): a journal this user did not write is not acted on; \
                     move it away (or `chown {me}` it if it is this pool's journal from another account)",
                    meta.uid()
                ),
            ));
        }
        if meta.mode() & 0o077 != 0 {
            // Written by an older hygiene under a loose umask: made private.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io(&path, "made private (chmod 600)", e))?;
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = match Self::read(&path) {
                    Ok(r) => holder(&r),
                    Err(_) => "another process".into(),
                };
                return Err(Error::journal(
                    path.display().to_string(),
                    format!("is in use by {holder}: wait for that run to end or stop it (a run that dies releases it), then resume or restore"),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(io(&path, "locked", e)),
        }
        let cut = cut_torn_tail(&file, &path)?;
        Ok(Self {
            path,
            file: Mutex::new(file),
            cut,
        })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many bytes of a torn last record (what a process killed while
    /// writing leaves) were cut when the journal was opened, so the next
    /// record starts on a line of its own; `None` when the file ended whole.
    pub fn torn_tail_cut(&self) -> Option<u64> {
        self.cut
    }

    /// Reads the journal at `path` without taking its lock (to show what a
    /// run, perhaps a dead one, left).
    ///
    /// # Errors
    /// [`Error::Journal`] when it cannot be read, or a line other than the
    /// last is damaged.
    pub fn read(path: &Path) -> Result<Vec<Record>> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(no_follow())
            .open(path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(path, "read (a symlink is refused)", e)),
        };
        if !file.metadata().map_err(|e| io(path, "read", e))?.is_file() {
            return Err(Error::journal(
                path.display().to_string(),
                "is not a regular file: move it away",
            ));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io(path, "read", e))?;
        parse(&bytes, &path.display().to_string())
    }

    /// Moves this finished journal aside, next to where it was, named by
    /// its run id (`<name>.<run id>.done`), so the next run starts a new one
    /// and the old one stays for the record. Returns the new path.
    ///
    /// # Errors
    /// [`Error::Journal`] when the journal cannot be renamed.
    pub fn archive(self, run_id: &str) -> Result<PathBuf> {
        let name = self
            .path
            .file_name()
            .map_or_else(|| "journal".into(), |n| n.to_string_lossy().into_owned());
        let to = self.path.with_file_name(format!("{name}.{run_id}.done"));
        std::fs::rename(&self.path, &to).map_err(|e| io(&self.path, "archived", e))?;
        Ok(to)
    }
}

/// Who holds the journal now: the run of its last header, and the process
/// that took it up last (a resume or restore writes a `resumed` record).
fn holder(records: &[Record]) -> String {
    let Some(start) = records.iter().rposition(|r| matches!(r, Record::Header(_))) else {
        return "a process that has not written its header yet".into();
    };
    let Record::Header(h) = &records[start] else {
        return "another process".into();
    };
    let taken_up = records[start..].iter().rev().find_map(|r| match r {
        Record::Resumed {
            mode,
            at,
            host,
            pid,
            ..
        } => Some(format!(
            "run {} ({mode} on host {host}, pid {pid}, since {at}; the run started {} on host {})",
            h.run_id, h.started_at, h.host
        )),
        _ => None,
    });
    taken_up.unwrap_or_else(|| {
        format!(
            "run {} on host {} (pid {}, started {})",
            h.run_id, h.host, h.pid, h.started_at
        )
    })
}

/// Where the complete records of `bytes` end: after the last newline,
/// less a last line that is not a record (torn, then followed by a
/// newline of a later write that died too).
fn whole_len(bytes: &[u8]) -> usize {
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
        return 0;
    };
    let end = end + 1;
    let start = bytes[..end - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let last = &bytes[start..end - 1];
    if last.iter().all(u8::is_ascii_whitespace) || serde_json::from_slice::<Record>(last).is_ok() {
        end
    } else {
        start
    }
}

/// Cuts a torn tail before anything is appended (the caller holds the
/// lock): a record glued to half a line would make the journal unreadable.
fn cut_torn_tail(file: &File, path: &Path) -> Result<Option<u64>> {
    let mut bytes = Vec::new();
    let mut reader = file;
    reader
        .seek(SeekFrom::Start(0))
        .and_then(|_| reader.read_to_end(&mut bytes))
        .map_err(|e| io(path, "read", e))?;
    let keep = whole_len(&bytes);
    if keep == bytes.len() {
        return Ok(None);
    }
    let cut = (bytes.len() - keep) as u64;
    file.set_len(keep as u64)
        .and_then(|()| file.sync_data())
        .map_err(|e| io(path, "repaired (cutting its torn last line)", e))?;
    tracing::warn!(
        journal = %path.display(),
        bytes = cut,
        "cut a torn last record (a process killed while writing leaves one)"
    );
    Ok(Some(cut))
}

/// Parses JSON Lines from bytes; a torn last line (no newline, not JSON,
/// or not even UTF-8: output tails carry raw UTF-8 and a write can stop
/// inside a character) is what a process killed while writing leaves, and
/// is ignored. Any other damaged line is refused.
pub(crate) fn parse(bytes: &[u8], location: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes
        .strip_suffix(b"\n")
        .unwrap_or(bytes)
        .split(|&b| b == b'\n')
        .collect();
    for (n, line) in lines.iter().enumerate() {
        let last = n + 1 == lines.len();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(r) if !last || complete => records.push(r),
            Ok(_) => {} // a last line without its newline was cut short
            Err(_) if last => {}
            Err(e) => {
                return Err(Error::journal(
                    location,
                    format!(
                        "line {} is damaged ({e}): the journal cannot be trusted; read it by hand, restore the targets it names, and move it away",
                        n + 1
                    ),
                ))
            }
        }
    }
    Ok(records)
}

impl Journal for FileJournal {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn append(&self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record)
            .map_err(|e| Error::journal(self.location(), format!("record not written: {e}")))?;
        line.push('\n');
        let file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (&*file)
            .write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| io(&self.path, "written", e))
    }

    fn records(&self) -> Result<Vec<Record>> {
        // From the file this process opened and locked, not the path again
        // (which may have been replaced since).
        let file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut bytes = Vec::new();
        (&*file)
            .seek(SeekFrom::Start(0))
            .and_then(|_| (&*file).read_to_end(&mut bytes))
            .map_err(|e| io(&self.path, "read", e))?;
        parse(&bytes, &self.location())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("meta").mode() & 0o777
    }

    #[test]
    fn a_new_journal_and_its_directory_are_private() {
        let tmp = tempfile::tempdir().expect("dir");
        let path = tmp.path().join("state/web.jsonl");
        let j = FileJournal::open(&path).expect("open");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("state")), 0o700);
        drop(j);
        // One an older hygiene left readable by all is made private.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(FileJournal::open(&path).expect("open again"));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_symlinked_journal_is_refused_and_its_target_untouched() {
        let tmp = tempfile::tempdir().expect("dir");
        let victim = tmp.path().join("victim");
        let path = tmp.path().join("web.jsonl");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        let e = FileJournal::open(&path).expect_err("refused").to_string();
        assert!(e.contains("symlink"), "{e}");
        assert!(!victim.exists(), "the link's target was created");
        std::fs::write(&victim, "precious\n").expect("write");
        assert!(FileJournal::open(&path).is_err());
        assert!(
            FileJournal::read(&path).is_err(),
            "not read through a link either"
        );
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious\n"
        );
    }

    #[test]
    fn a_journal_that_is_not_a_regular_file_of_this_user_is_refused() {
        let tmp = tempfile::tempdir().expect("dir");
        let dir = tmp.path().join("web.jsonl");
        std::fs::create_dir(&dir).expect("mkdir");
        assert!(FileJournal::open(&dir).is_err());
        let path = tmp.path().join("other.jsonl");
        std::fs::write(&path, "").expect("write");
        // Only root can give a file away: elsewhere, nothing more to test.
        if std::os::unix::fs::chown(&path, Some(65534), None).is_err() {
            return;
        }
        let e = FileJournal::open(&path).expect_err("refused").to_string();
        assert!(e.contains("owned by user 65534"), "{e}");
    }

    #[test]
    fn a_private_journal_keeps_the_mode_its_owner_gave_it() {
        let tmp = tempfile::tempdir().expect("dir");
        let path = tmp.path().join("web.jsonl");
        drop(FileJournal::open(&path).expect("open"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        drop(FileJournal::open(&path).expect("open again"));
        assert_eq!(
            mode(&path),
            0o700,
            "only group and other bits are taken away"
        );
    }

    #[test]
    fn a_journal_not_written_yet_reads_as_empty() {
        let tmp = tempfile::tempdir().expect("dir");
        let records = FileJournal::read(&tmp.path().join("none.jsonl")).expect("read");
        assert!(records.is_empty());
    }

    fn record_line(call: u64) -> String {
        let r = Record::Intent {
            call,
            op: crate::journal::Op::Drain,
            ids: Vec::new(),
            at: String::new(),
        };
        format!("{}\n", serde_json::to_string(&r).expect("json"))
    }

    #[test]
    fn archive_moves_the_journal_aside_by_its_run_id() {
        let tmp = tempfile::tempdir().expect("dir");
        let path = tmp.path().join("web.jsonl");
        let j = FileJournal::open(&path).expect("open");
        let r: Record = serde_json::from_str(record_line(1).trim()).expect("record");
        j.append(&r).expect("append");
        let to = j.archive("run-42").expect("archive");
        assert_eq!(to, tmp.path().join("web.jsonl.run-42.done"));
        assert!(!path.exists(), "the next run starts a new journal");
        assert_eq!(FileJournal::read(&to).expect("read"), vec![r]);
    }

    #[test]
    fn whole_records_end_before_a_torn_last_line() {
        let a = record_line(1);
        let b = record_line(2);
        assert_eq!(whole_len(format!("{a}{b}").as_bytes()), a.len() + b.len());
        // Torn without a newline: cut after the last newline.
        assert_eq!(
            whole_len(format!("{a}{{\"record\":\"int").as_bytes()),
            a.len()
        );
        // Torn, then the newline of a later write that died too.
        assert_eq!(
            whole_len(format!("{a}{b}{{\"record\":\"int\n").as_bytes()),
            a.len() + b.len()
        );
        assert_eq!(whole_len(b"{\"record\":\"int\n"), 0);
    }

    #[test]
    fn a_last_record_without_its_newline_is_not_trusted() {
        let a = record_line(1);
        let b = record_line(2);
        let whole = parse(format!("{a}{b}").as_bytes(), "j").expect("parse");
        assert_eq!(whole.len(), 2);
        // The same bytes less the final newline: the write stopped there,
        // and a record cut short can still be valid JSON (a number).
        let cut = parse(format!("{a}{}", b.trim_end()).as_bytes(), "j").expect("parse");
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0], whole[0]);
    }
}
