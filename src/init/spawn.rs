//! Starting a child the way an init should.
//!
//! The child gets its own process group (so signals can be forwarded to its
//! whole job), every signal back at its default disposition with an empty
//! mask (rayhead's handlers must not leak into it, and a PID 1 started with
//! signals ignored must not pass that on), and no file descriptor beyond 0, 1
//! and 2. stdin, stdout and stderr are inherited untouched.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::exit::Exit;

/// A command ready to spawn through the reaper.
pub fn command(argv: &[String]) -> Command {
    // An empty argv cannot reach here (clap and the start command's checks
    // refuse it); were it to, "" fails to spawn with ENOENT, a clear 127.
    let (program, args) = argv
        .split_first()
        .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
    let mut cmd = Command::new(program);
    cmd.args(args);
    prepare(&mut cmd);
    cmd
}

/// Gives `cmd` its own process group and a clean signal state and fd table
/// in the child.
pub fn prepare(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (sigprocmask, raw syscalls).
    unsafe {
        cmd.pre_exec(reset_child);
    }
}

/// In the forked child: default dispositions, empty mask, no extra fds.
fn reset_child() -> io::Result<()> {
    // SAFETY: plain libc calls on values we own; see `command`.
    unsafe {
        // The raw syscall reaches the real-time signals too, which glibc's
        // wrappers refuse for the two it reserves. All zeroes is SIG_DFL
        // with no flags and an empty mask, whatever the arch's field order.
        let dfl = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // Mark every fd from 3 up close-on-exec (Linux >= 5.11). std's own
        // error pipe is already close-on-exec, so exec failures still report.
        // Older kernels answer ENOSYS; `close_inherited_fds` covered them at
        // start-up.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    Ok(())
}

/// Marks every file descriptor rayhead inherited, beyond 0, 1 and 2,
/// close-on-exec, so none leaks into the child. Rust opens its own with
/// `O_CLOEXEC` already.
pub fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on an fd number; a stale one (the dir's own) fails
        // harmlessly with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// How a shell reports a command that could not be started: 127 when it
/// does not exist, 126 when it exists but cannot be executed.
pub fn spawn_error(e: &io::Error, reason: String) -> Exit {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => Exit::NotFound(reason),
        _ => Exit::CannotExecute(reason),
    }
}

/// Makes this process a child subreaper when it is not PID 1, so orphans of
/// its tree are re-parented to it rather than to the host's init.
pub fn become_subreaper() -> io::Result<bool> {
    if nix::unistd::getpid().as_raw() == 1 {
        return Ok(false);
    }
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(true)
}
