//! `rayhead install DEST`: the init container copies the binary it carries
//! into a volume that the Ray container runs it from (a `FROM scratch` image
//! has no `cp`).
//!
//! The volume is shared with other containers of the pod, so the copy trusts
//! nothing that is already in the directory: the temporary file is created
//! with `O_EXCL | O_NOFOLLOW` under a name nobody else picks (a planted file
//! or symlink at that name is never written through or clobbered), its mode
//! is set on the open file (never by path, which a symlink could redirect),
//! its data is synced, and only then is it renamed over DEST. A rename
//! replaces a symlink at DEST itself, never its target. The head therefore
//! sees either the old DEST or the whole new binary, never half of one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How many fresh temporary names are tried before giving up: each one that
/// exists already (left by a crash, or planted) is skipped, not reused.
const NAME_TRIES: u32 = 16;

pub(super) fn install(dest: &Path) -> io::Result<()> {
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names no file"))?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The running binary, through the kernel's own link to it: the path it
    // was started by may have changed since.
    let mut src = File::open("/proc/self/exe")
        .or_else(|_| File::open(std::env::current_exe()?))
        .map_err(|e| context(e, "cannot read this binary"))?;
    let (mut tmp, tmp_path) = create_temporary(&dir, name)
        .map_err(|e| context(e, &format!("cannot create a new file in {}", dir.display())))?;
    let written = (|| {
        io::copy(&mut src, &mut tmp).map_err(|e| context(e, "cannot write the copy"))?;
        tmp.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        tmp.sync_all()
            .map_err(|e| context(e, "cannot sync the copy"))?;
        drop(tmp);
        std::fs::rename(&tmp_path, dest)
            .map_err(|e| context(e, "cannot rename the copy into place"))?;
        // The rename itself survives a crash once the directory is synced.
        File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    written
}

/// The error with what was being done, keeping its kind.
fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A new file in `dir`, created by this call and no one else (`O_EXCL`),
/// not through a symlink (`O_NOFOLLOW`), readable by its owner only until
/// its mode is set on the open file.
fn create_temporary(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(File, PathBuf)> {
    let mut last = None;
    for attempt in 0..NAME_TRIES {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".rayhead-install.{}.{attempt}", std::process::id()));
        let path = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temporary name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    fn exe() -> Vec<u8> {
        std::fs::read("/proc/self/exe").unwrap()
    }

    #[test]
    fn copies_this_binary_executable() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("rayhead");
        install(&dest).unwrap();
        assert_eq!(read(&dest), exe());
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_planted_symlink_at_any_temporary_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The old fixed name, and every name this process would try.
        std::os::unix::fs::symlink(&victim, d.path().join("rayhead.tmp")).unwrap();
        for attempt in 0..NAME_TRIES - 1 {
            let n = format!(".rayhead.rayhead-install.{}.{attempt}", std::process::id());
            std::os::unix::fs::symlink(&victim, d.path().join(n)).unwrap();
        }
        let dest = d.path().join("rayhead");
        install(&dest).unwrap();
        assert_eq!(read(&victim), b"keep me");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the link's target was chmodded");
        assert_eq!(read(&dest), exe());
    }

    #[test]
    fn a_symlink_at_dest_is_replaced_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let dest = d.path().join("rayhead");
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        install(&dest).unwrap();
        assert_eq!(read(&victim), b"keep me");
        assert!(!std::fs::symlink_metadata(&dest).unwrap().is_symlink());
        assert_eq!(read(&dest), exe());
    }

    #[test]
    fn every_name_taken_is_an_error_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        for attempt in 0..NAME_TRIES {
            let n = format!(".rayhead.rayhead-install.{}.{attempt}", std::process::id());
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        let dest = d.path().join("rayhead");
        let e = install(&dest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(!dest.exists());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = install(&d.path().join("no/such/dir/rayhead")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
