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
/// exists already (planted, or a near impossible clash) is skipped, not
/// reused. Each name is new (the time in nanoseconds and a counter), so an
/// init container killed mid-copy, always PID 1, never uses one up.
const NAME_TRIES: u32 = 16;

/// What every temporary name of ours contains, after `.DEST-NAME`.
const TMP_MARK: &str = ".rayhead-install.";

/// `rayhead install DEST`: the copy's error names DEST, since an init
/// container's log is all there is to read.
pub(super) fn command(dest: &Path) -> u8 {
    match install(dest) {
        Ok(()) => 0,
        Err(e) => {
            crate::logging::err(&format!("rayhead install: {}: {e}\n", dest.display()));
            1
        }
    }
}

fn install(dest: &Path) -> io::Result<()> {
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
    remove_leftovers(&dir, name);
    let (mut tmp, tmp_path) = create_temporary(&dir, name)
        .map_err(|e| context(e, &format!("cannot create a new file in {}", dir.display())))?;
    let written = (|| {
        io::copy(&mut src, &mut tmp).map_err(|e| context(e, "cannot write the copy"))?;
        tmp.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|e| context(e, "cannot make the copy executable"))?;
        tmp.sync_all()
            .map_err(|e| context(e, "cannot sync the copy"))?;
        drop(tmp);
        std::fs::rename(&tmp_path, dest)
            .map_err(|e| context(e, "cannot rename the copy into place"))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
        return written;
    }
    // The rename survives a crash once the directory is synced. DEST is
    // whole either way, so a directory that cannot be opened or synced (no
    // read permission, a file system that refuses) only warns.
    if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
        crate::logging::err(&format!(
            "rayhead install: warning: installed, but cannot sync {}: {e}\n",
            dir.display()
        ));
    }
    Ok(())
}

/// The error with what was being done, keeping its kind.
fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Removes what an earlier install into `dir` left when it was killed
/// mid-copy: files of ours for this DEST name. `remove_file` removes a
/// symlink itself, never its target; anything that cannot be removed stays.
fn remove_leftovers(dir: &Path, name: &std::ffi::OsStr) {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(TMP_MARK);
    let prefix = prefix.as_encoded_bytes().to_vec();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().as_encoded_bytes().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A new file in `dir`, created by this call and no one else (`O_EXCL`),
/// not through a symlink (`O_NOFOLLOW`), readable by its owner only until
/// its mode is set on the open file.
fn create_temporary(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(File, PathBuf)> {
    let mut last = None;
    for attempt in 0..NAME_TRIES {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            "{TMP_MARK}{}.{nanos}.{attempt}",
            std::process::id()
        ));
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
    fn a_planted_symlink_is_not_followed_and_leftovers_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The old fixed name; names of ours that killed installs left (as
        // files and as planted links); a sibling that is not ours.
        std::os::unix::fs::symlink(&victim, d.path().join("rayhead.tmp")).unwrap();
        for n in 0..20 {
            let name = format!(".rayhead{TMP_MARK}1.{n}.0");
            if n % 2 == 0 {
                std::os::unix::fs::symlink(&victim, d.path().join(name)).unwrap();
            } else {
                std::fs::write(d.path().join(name), b"half a binary").unwrap();
            }
        }
        std::fs::write(d.path().join(".other.rayhead-install.1.0.0"), b"not ours").unwrap();
        let dest = d.path().join("rayhead");
        install(&dest).unwrap();
        assert_eq!(read(&victim), b"keep me");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the link's target was chmodded");
        assert_eq!(read(&dest), exe());
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".other.rayhead-install.1.0.0",
                "rayhead",
                "rayhead.tmp",
                "victim"
            ]
        );
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
    fn a_directory_in_the_way_of_dest_is_an_error_that_says_so() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("rayhead");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("keep"), b"x").unwrap();
        let e = install(&dest).unwrap_err();
        assert!(
            e.to_string().contains("cannot rename the copy into place"),
            "{e}"
        );
        assert!(dest.join("keep").exists());
        // The temporary copy is gone.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = install(&d.path().join("no/such/dir/rayhead")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
