//! Where the exec probe's Unix socket lives, and who may serve it.
//!
//! The socket is how the kubelet's exec probe learns that the head is
//! alive, so whoever serves it decides whether a head is restarted. A
//! predictable path in a shared `/tmp` lets anyone who binds it first (job
//! code as the same user, a sidecar sharing `/tmp`) answer `ok` for a
//! wedged head, and a careless unlink there deletes whatever file is in the
//! way. So:
//!
//! - "auto" puts the socket in a directory of rayhead's own,
//!   `$XDG_RUNTIME_DIR/rayhead/` or else `/tmp/rayhead-<uid>/`, created
//!   0700; one owned by another user, or open to group or others, is
//!   refused;
//! - only a socket owned by this user is ever unlinked: a stale one at
//!   bind, and at exit the very one bound (same inode);
//! - `rayhead probe` believes an answer only from a server running as its
//!   own user or root (`SO_PEERCRED`), and fails closed otherwise.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::SocketSetting;
use crate::private_dir::{self, with_purpose};

/// Where the socket is, resolved from `probe.socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPlace {
    pub path: PathBuf,
    /// "auto": rayhead's own directory, which must be this user's and 0700.
    pub own_dir: Option<PathBuf>,
}

impl SocketPlace {
    /// The place `setting` names for this process (its `XDG_RUNTIME_DIR`
    /// and effective uid); `None` when the socket is turned off.
    pub fn of(setting: &SocketSetting) -> Option<SocketPlace> {
        let xdg = std::env::var_os("XDG_RUNTIME_DIR");
        Self::resolve(setting, xdg, nix::unistd::geteuid().as_raw())
    }

    /// As [`SocketPlace::of`], from given inputs. An `XDG_RUNTIME_DIR` that
    /// is empty or relative is ignored, as the XDG spec says.
    pub fn resolve(setting: &SocketSetting, xdg: Option<OsString>, uid: u32) -> Option<Self> {
        match setting {
            SocketSetting::Off => None,
            SocketSetting::At(path) => Some(SocketPlace {
                path: path.clone(),
                own_dir: None,
            }),
            SocketSetting::Auto { port } => {
                let dir = match xdg.map(PathBuf::from) {
                    Some(x) if x.is_absolute() => x.join("rayhead"),
                    _ => PathBuf::from(format!("/tmp/rayhead-{uid}")),
                };
                Some(SocketPlace {
                    path: dir.join(format!("probe-{port}.sock")),
                    own_dir: Some(dir),
                })
            }
        }
    }
}

/// Why a place is refused, or a socket's server not believed.
fn refuse(what: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: {why}", what.display()),
    )
}

/// Checks rayhead's own directory for the socket: see [`private_dir::check`].
pub fn check_own_dir(dir: &Path, uid: u32) -> io::Result<()> {
    private_dir::check(dir, uid).map_err(|e| with_purpose(e, "the probe socket"))
}

/// Creates rayhead's own directory for the socket 0700, or checks it.
pub fn make_own_dir(dir: &Path, uid: u32) -> io::Result<()> {
    private_dir::make(dir, uid).map_err(|e| with_purpose(e, "the probe socket"))
}

/// What is at `path` before a bind: nothing, a stale socket of this user's
/// (removed), or something rayhead must not touch (an error naming it).
/// `answers` tells a live socket (another rayhead's) from a stale one.
pub fn clear_stale(path: &Path, uid: u32, answers: impl FnOnce() -> bool) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symlink"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "a file"
        };
        return Err(refuse(
            path,
            format!("{what} is in the way, not a socket: refusing to delete it (set probe.socket to a free path)"),
        ));
    }
    if meta.uid() != uid {
        return Err(refuse(
            path,
            format!(
                "is a socket owned by uid {}, not by this user (uid {uid}): refusing to replace it",
                meta.uid()
            ),
        ));
    }
    if answers() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{}: another rayhead serves it", path.display()),
        ));
    }
    fs::remove_file(path)
}

/// The socket rayhead bound, to remove at exit only if it is still that
/// one: a socket some other process put there since stays.
#[derive(Debug)]
pub struct Bound {
    path: PathBuf,
    dev: u64,
    ino: u64,
    uid: u32,
}

impl Bound {
    /// Records the socket now at `path`, and makes it 0600: only this
    /// user (and root) may connect.
    pub fn record(path: &Path) -> io::Result<Bound> {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        let meta = fs::symlink_metadata(path)?;
        Ok(Bound {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            uid: nix::unistd::geteuid().as_raw(),
        })
    }

    /// Unlinks the socket if it is still the one bound: a socket, this
    /// user's, the same inode (which a file system may give again to a
    /// socket bound since, so the owner is checked too).
    pub fn remove(self) {
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            let ours = m.uid() == self.uid;
            if m.file_type().is_socket() && ours && m.dev() == self.dev && m.ino() == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Checks that the server on the other end of `stream` runs as `uid` or
/// as root: another user's process must not answer for rayhead.
pub fn check_peer(
    stream: &std::os::unix::net::UnixStream,
    path: &Path,
    uid: u32,
) -> io::Result<()> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    let peer = cred.uid();
    if peer != uid && peer != 0 {
        return Err(refuse(
            path,
            format!(
                "is served by uid {peer} (pid {}), not by this user (uid {uid}) or root: refusing its answer; another process holds rayhead's probe socket",
                cred.pid()
            ),
        ));
    }
    Ok(())
}
