//! The state directory is private: journals name what the run did, and a
//! maintenance's output may hold anything. Directories are created 0700
//! and files 0600, whatever the umask; a directory someone else owns or
//! can write is refused, since what it holds would be orders to a run
//! (which process to signal, which directory to delete).

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// The user this process acts as.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `O_NOFOLLOW`, for `OpenOptionsExt::custom_flags`: a symlink in the
/// last component fails the open (`ELOOP`) instead of being followed.
pub(crate) fn no_follow() -> i32 {
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

/// Creates `dir` (and missing parents) with mode 0700.
fn create_private(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Makes `dir` ready to be hygiene's state directory: created 0700 when
/// missing; when it exists, it must be a directory owned by this user
/// that neither its group nor others can write.
///
/// # Errors
/// [`Error::Journal`] naming the directory, what is wrong and the
/// `chown` / `chmod` that fixes it.
pub fn prepare_state_dir(dir: &Path) -> Result<()> {
    if let Err(e) = create_private(dir) {
        return Err(Error::journal(
            dir.display().to_string(),
            format!(
                "the state directory cannot be created: {e}; create it (mode 0700) or choose another with --state-dir"
            ),
        ));
    }
    check_state_dir(dir)
}

/// The checks of [`prepare_state_dir`] on an existing directory, creating
/// nothing.
///
/// # Errors
/// As [`prepare_state_dir`].
pub fn check_state_dir(dir: &Path) -> Result<()> {
    let here = dir.display().to_string();
    let fail = |message: String| Err(Error::journal(here.clone(), message));
    let m = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return fail(format!("the state directory cannot be read: {e}")),
    };
    if !m.is_dir() {
        return fail(
            "is not a directory: give a directory as the state directory (--state-dir)".into(),
        );
    }
    let me = euid();
    if m.uid() != me {
        return fail(format!(
            "the state directory is owned by user {}, not by this user ({me}): another user could plant a journal \
             that tells this run what to signal and delete. Fix: `chown {me} {here}` (and check what it holds), \
             or use a state directory of your own",
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return fail(format!(
            "the state directory is writable by its group or by others (mode {:o}): anyone who can write there \
             can plant a journal that tells this run what to signal and delete. Fix: `chmod 700 {here}`",
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A directory of the runner's (`exec/`): created 0700 when missing; an
/// existing one must be a real directory (not a symlink) of this user,
/// and is made 0700 when it is not.
///
/// # Errors
/// A message naming the directory and the fix.
pub(crate) fn private_dir(dir: &Path) -> std::result::Result<(), String> {
    let here = dir.display();
    create_private(dir)
        .map_err(|e| format!("cannot create {here}: {e}; check the state directory"))?;
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot read {here}: {e}"))?;
    if !m.file_type().is_dir() {
        return Err(format!(
            "{here} is not a directory (a symlink or a file): move it away; hygiene keeps maintenance output there"
        ));
    }
    let me = euid();
    if m.uid() != me {
        return Err(format!(
            "{here} is owned by user {}, not by this user ({me}): `chown {me} {here}`, or move it away",
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {here} private (chmod 700): {e}"))?;
    }
    Ok(())
}

/// Creates a new file, mode 0600, never through a symlink and never over
/// an existing file.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(path)
}

/// Says how `path` (a secret file or the state directory) is readable by
/// others, with the `chmod` that fixes it; `None` when it is not (or
/// cannot be read: the caller reports that on its own).
pub fn readable_by_others(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mode = m.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return None;
    }
    let fix = if m.is_dir() { "700" } else { "600" };
    Some(format!(
        "{} is readable or writable by its group or by others (mode {mode:o}): `chmod {fix} {}`",
        path.display(),
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_keeps_the_mode_its_owner_gave_it() {
        let tmp = tempfile::tempdir().expect("dir");
        let dir = tmp.path().join("logs");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        private_dir(&dir).expect("private already");
        assert_eq!(
            std::fs::metadata(&dir).expect("meta").mode() & 0o777,
            0o500,
            "only group and other bits are taken away"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&dir).expect("made private");
        assert_eq!(std::fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("meta").mode() & 0o777
    }

    #[test]
    fn a_new_state_dir_is_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().expect("dir");
        let dir = tmp.path().join("a/state");
        prepare_state_dir(&dir).expect("created");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        // Again: it exists and is fine.
        prepare_state_dir(&dir).expect("again");
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().expect("dir");
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).expect("mkdir");
        for m in [0o770, 0o757, 0o777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m)).expect("chmod");
            let e = prepare_state_dir(&dir).expect_err("refused").to_string();
            assert!(e.contains(&format!("chmod 700 {}", dir.display())), "{e}");
        }
        // Readable by others is a warning (validate), not a refusal.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare_state_dir(&dir).expect("0755 is accepted");
        let w = readable_by_others(&dir).expect("warned");
        assert!(w.contains("chmod 700"), "{w}");
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(readable_by_others(&file).is_some_and(|w| w.contains("chmod 600")));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(readable_by_others(&file), None);
    }

    #[test]
    fn a_state_dir_of_another_user_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().expect("dir");
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        // Only root can give a directory away: elsewhere, nothing to test.
        if std::os::unix::fs::chown(&dir, Some(65534), None).is_err() {
            return;
        }
        let e = prepare_state_dir(&dir).expect_err("refused").to_string();
        assert!(
            e.contains(&format!("chown {} {}", euid(), dir.display())),
            "{e}"
        );
        assert!(e.contains("65534"), "{e}");
    }

    #[test]
    fn exec_dirs_are_real_private_directories() {
        let tmp = tempfile::tempdir().expect("dir");
        let exec = tmp.path().join("exec");
        private_dir(&exec).expect("created");
        assert_eq!(mode(&exec), 0o700);
        std::fs::set_permissions(&exec, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&exec).expect("tightened");
        assert_eq!(mode(&exec), 0o700);
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).expect("symlink");
        let e = private_dir(&link).expect_err("a symlink is refused");
        assert!(e.contains("symlink"), "{e}");
        let f = create_private_file(&exec.join("out")).expect("file");
        drop(f);
        assert_eq!(mode(&exec.join("out")), 0o600);
        assert!(
            create_private_file(&exec.join("out")).is_err(),
            "never over a file"
        );
        std::os::unix::fs::symlink(elsewhere.join("x"), exec.join("l")).expect("symlink");
        assert!(create_private_file(&exec.join("l")).is_err());
        assert!(
            !elsewhere.join("x").exists(),
            "not created through the link"
        );
    }
}
