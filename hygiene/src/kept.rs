//! What earlier runs left out of rotation, remembered until it is back.
//!
//! A journal tells only its last run; once another run starts, what an
//! earlier one kept out would be forgotten. So every command that reads
//! the journal first carries the targets its last *finished* run left out
//! into a small file beside it, `<pool>.kept-out.json`, and takes out of
//! that file what a later run or `hygiene enable` put back. The file is
//! the CLI's, not the engine's: the journal format stays as it is, the
//! file survives the journal being replaced, and it is read without the
//! balancer. Written whole (a temporary file renamed over it), mode 0600.

use std::path::{Path, PathBuf};

use hygiene_core::journal::{summarize, FileJournal, JournaledState};
use hygiene_core::{Location, Target, TargetId};
use serde::{Deserialize, Serialize};

use crate::Failure;

/// The file's format.
const FORMAT: u32 = 1;

/// One target an earlier run left out of rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeptTarget {
    /// The target as the run listed it (what puts it back exactly).
    pub(crate) target: Target,
    /// The run that left it out.
    pub(crate) run_id: String,
    /// When that run started (RFC 3339).
    pub(crate) since: String,
    /// What the journal (or the last `enable`) says of it.
    pub(crate) state: String,
    /// Its state could not be read back: an operator must look.
    #[serde(default)]
    pub(crate) unknown: bool,
}

/// The file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KeptOut {
    #[serde(default)]
    format: u32,
    /// The last journal run merged in (a run is merged once).
    #[serde(default)]
    synced_run: Option<String>,
    /// Out of rotation because of hygiene, oldest first.
    #[serde(default)]
    pub(crate) targets: Vec<KeptTarget>,
}

/// The file beside `journal` (`web.jsonl` → `web.kept-out.json`).
pub(crate) fn path_for(journal: &Path) -> PathBuf {
    let stem = journal
        .file_stem()
        .map_or_else(|| "pool".into(), |s| s.to_string_lossy().into_owned());
    journal.with_file_name(format!("{stem}.kept-out.json"))
}

fn journal_error(path: &Path, message: String) -> Failure {
    Failure::Lib(hygiene_core::Error::journal(
        path.display().to_string(),
        message,
    ))
}

impl KeptOut {
    /// Reads the file (none: nothing kept out).
    pub(crate) fn read(path: &Path) -> Result<Self, Failure> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(journal_error(
                    path,
                    format!("cannot be read: {e}; check the state directory's permissions"),
                ))
            }
        };
        let k: Self = serde_json::from_str(&text).map_err(|e| {
            journal_error(
                path,
                format!("is damaged ({e}): it lists what earlier runs left out of rotation; read it, put those targets back, and move it away"),
            )
        })?;
        if k.format > FORMAT {
            return Err(journal_error(
                path,
                format!(
                    "was written by a newer hygiene (format {}; this one reads {FORMAT})",
                    k.format
                ),
            ));
        }
        Ok(k)
    }

    /// Writes the file whole: a temporary file (0600) renamed over it.
    pub(crate) fn write(&mut self, path: &Path) -> Result<(), Failure> {
        use std::io::Write;
        self.format = FORMAT;
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| journal_error(path, format!("cannot be written: {e}")))?;
        let io = |e: std::io::Error| {
            journal_error(
                path,
                format!("cannot be written: {e}; check the state directory and its permissions"),
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_data())
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The ids, in order.
    pub(crate) fn ids(&self) -> Vec<TargetId> {
        self.targets.iter().map(|t| t.target.id.clone()).collect()
    }

    /// Takes `id` off the list; whether it was on it.
    pub(crate) fn remove(&mut self, id: &TargetId) -> bool {
        let before = self.targets.len();
        self.targets.retain(|t| &t.target.id != id);
        self.targets.len() != before
    }

    /// Merges the journal's last run, when it finished and was not merged
    /// yet: what it left out is added, what it put back in service is
    /// removed. Returns whether anything changed.
    fn merge(&mut self, journal: &Path) -> Result<bool, Failure> {
        let records = FileJournal::read(journal)?;
        let Some(sum) = summarize(&records) else {
            return Ok(false);
        };
        if sum.outcome.is_none() || self.synced_run.as_deref() == Some(&sum.header.run_id) {
            // Unfinished: the journal itself says what is out (status,
            // resume, restore); merged once it ends.
            return Ok(false);
        }
        let h = &sum.header;
        for t in &sum.targets {
            if t.state.maybe_out() {
                let target = h
                    .plan
                    .iter()
                    .find(|p| p.id == t.id)
                    .cloned()
                    .unwrap_or_else(|| Target::new(t.id.clone()));
                let entry = KeptTarget {
                    target,
                    run_id: h.run_id.clone(),
                    since: h.started_at.clone(),
                    state: crate::status::describe(&t.state).1,
                    unknown: matches!(
                        t.state,
                        JournaledState::Finished {
                            location: Location::Unknown,
                            ..
                        }
                    ),
                };
                match self.targets.iter_mut().find(|k| k.target.id == t.id) {
                    Some(k) => *k = entry,
                    None => self.targets.push(entry),
                }
            } else if matches!(
                t.state,
                JournaledState::Finished {
                    location: Location::InService,
                    ..
                }
            ) {
                self.remove(&t.id);
            }
        }
        self.synced_run = Some(h.run_id.clone());
        Ok(true)
    }
}

/// Reads the file beside `journal`, merges the journal's last finished
/// run into it (and writes it back when that changed anything).
pub(crate) fn sync(journal: &Path) -> Result<KeptOut, Failure> {
    let path = path_for(journal);
    let mut kept = KeptOut::read(&path)?;
    // No file yet and nothing to keep: leave the state directory as it is.
    if kept.merge(journal)? && (path.exists() || !kept.targets.is_empty()) {
        kept.write(&path)?;
    }
    Ok(kept)
}
