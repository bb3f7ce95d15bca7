//! Directories only their owner can use: rayhead's probe socket directory,
//! `rayhead dev`'s state directory and Ray's temp root under it.
//!
//! Whoever can write a directory can replace what is in it: a socket that
//! answers for rayhead, a log, a Redis AOF. So such a directory is made
//! 0700 explicitly (the umask plays no part), and one found there already
//! is used only if it is a real directory (not a symlink), this user's,
//! and closed to group and others. Anything else is refused with the
//! reason, never repaired: a directory of another user's may hold
//! anything already.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

fn refuse(dir: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: {why}", dir.display()),
    )
}

/// Adds what the directory is for to a refusal.
pub fn with_purpose(e: io::Error, purpose: &str) -> io::Error {
    if e.kind() == io::ErrorKind::PermissionDenied {
        io::Error::new(e.kind(), format!("{e}: refusing to use it for {purpose}"))
    } else {
        e
    }
}

/// Checks that `dir` is a directory (not a symlink to one) owned by `uid`
/// with no group or other permissions.
pub fn check(dir: &Path, uid: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(refuse(
            dir,
            "is not a directory (a symlink or a file is in the way)".into(),
        ));
    }
    if meta.uid() != uid {
        return Err(refuse(
            dir,
            format!(
                "is owned by uid {}, not by this user (uid {uid}): another user controls what is in it",
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refuse(
            dir,
            format!(
                "has mode {mode:04o}: group or others could replace what is in it; it must be 0700"
            ),
        ));
    }
    Ok(())
}

/// Creates `dir` 0700, or checks the one that is there. Its parent must
/// exist.
pub fn make(dir: &Path, uid: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check(dir, uid)
}

/// As [`make`], for a directory an earlier version made with the umask's
/// mode: one of this user's that nobody else could write (0755, say) is
/// closed to 0700 first; one that others could write is refused, since
/// they may have put anything in it.
pub fn make_or_close(dir: &Path, uid: u32) -> io::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(dir) {
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_dir() && meta.uid() == uid && mode & 0o022 == 0 && mode & 0o077 != 0
        {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    make(dir, uid)
}

/// This process's effective uid: the owner its private directories have.
pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}
