//! [`FileJournal`]: JSON Lines on disk, one writer at a time.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Journal, Record};
use crate::error::{Error, Result};

/// A journal in a file: one JSON record per line, `sync_data` after each,
/// and an exclusive lock (released when the process ends, however it
/// ends) so two runs never write the same journal.
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    file: Mutex<File>,
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
            std::fs::create_dir_all(dir).map_err(|e| io(&path, "created", e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io(&path, "opened", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = match Self::read(&path) {
                    Ok(r) => match r.first() {
                        Some(Record::Header(h)) => format!(
                            "run {} on host {} (pid {}, started {})",
                            h.run_id, h.host, h.pid, h.started_at
                        ),
                        _ => "a process that has not written its header yet".into(),
                    },
                    Err(_) => "another process".into(),
                };
                return Err(Error::journal(
                    path.display().to_string(),
                    format!("is in use by {holder}: wait for that run to end or stop it (a run that dies releases it), then resume or restore"),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(io(&path, "locked", e)),
        }
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the journal at `path` without taking its lock (to show what a
    /// run, perhaps a dead one, left).
    ///
    /// # Errors
    /// [`Error::Journal`] when it cannot be read, or a line other than the
    /// last is damaged.
    pub fn read(path: &Path) -> Result<Vec<Record>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(path, "read", e)),
        };
        parse(&text, &path.display().to_string())
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

/// Parses JSON Lines; a torn last line (no newline, or not JSON) is what a
/// process killed while writing leaves, and is ignored.
pub(crate) fn parse(text: &str, location: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let last = n + 1 == lines.len();
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
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
        Self::read(&self.path)
    }
}
