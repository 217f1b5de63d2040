//! Whether the maintenance can start at all, asked before a run drains
//! anything (and by `plan` and `validate`): the executor's preflight over
//! the targets a run would take, and for a local command, its program.

use hygiene_core::{ListedTarget, Preflight, Selection, TargetState};

use crate::config::Loaded;
use crate::setup::Setup;

/// What the preflight found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// The local program cannot be run (then nothing can start).
    pub(crate) program: Option<String>,
    /// The preflight call itself failed.
    pub(crate) error: Option<String>,
    /// Targets asked, and those not ready with why.
    pub(crate) asked: usize,
    pub(crate) not_ready: Vec<(String, String)>,
}

impl Found {
    /// Why a run would refuse: the maintenance can start on no target.
    pub(crate) fn refusal(&self) -> Option<String> {
        if let Some(p) = &self.program {
            return Some(p.clone());
        }
        if let Some(e) = &self.error {
            return Some(format!("the executor's preflight failed: {e}"));
        }
        if self.asked > 0 && self.not_ready.len() == self.asked {
            return Some(format!(
                "the maintenance cannot start on any target: {}",
                self.not_ready
                    .iter()
                    .map(|(id, why)| format!("{id}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        None
    }
}

/// Asks the executor about the targets a run would take (selected, in
/// service).
pub(crate) async fn check(loaded: &Loaded, setup: &Setup, listed: &[ListedTarget]) -> Found {
    let mut found = Found {
        program: local_program_problem(loaded),
        ..Found::default()
    };
    if found.program.is_some() {
        return found;
    }
    let targets: Vec<hygiene_core::Target> = listed
        .iter()
        .filter(|l| l.status.state == TargetState::InService)
        .filter(|l| match setup.rollout.selection() {
            Selection::Named(ids) => ids.contains(&l.target.id),
            _ => true,
        })
        .map(|l| l.target.clone())
        .collect();
    if targets.is_empty() {
        return found;
    }
    found.asked = targets.len();
    match setup.executor.preflight(&targets).await {
        Ok(p) => {
            for (t, p) in targets.iter().zip(p) {
                if let Preflight::NotReady(why) = p {
                    found.not_ready.push((t.id.to_string(), why));
                }
            }
        }
        Err(e) => found.error = Some(e.to_string()),
    }
    found
}

/// `[executor.local] program` that cannot be run: missing (nor on the
/// PATH), not a file, or not executable.
pub(crate) fn local_program_problem(loaded: &Loaded) -> Option<String> {
    let l = loaded.file.executor.as_ref()?.get_ref().local.as_ref()?;
    let program = l.get_ref().program.get_ref();
    let candidates: Vec<std::path::PathBuf> = if program.contains('/') {
        vec![std::path::PathBuf::from(program)]
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(program))
            .collect()
    };
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            }
            #[cfg(not(unix))]
            {
                m.is_file()
            }
        })
    };
    if candidates.iter().any(|p| runnable(p)) {
        return None;
    }
    let why = if program.contains('/') && std::path::Path::new(program).is_file() {
        "is not executable (chmod +x it)"
    } else if program.contains('/') {
        "does not exist"
    } else {
        "is not found on the PATH"
    };
    Some(format!(
        "executor.local.program {program:?} {why}: the maintenance cannot start on any target"
    ))
}
