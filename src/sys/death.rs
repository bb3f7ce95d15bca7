//! A child that cannot outlive its parent: the kernel sends it a signal
//! when the parent dies, even by SIGKILL. Used by the dev runner for its
//! pods and by the integration tests for their runs.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `cmd`'s child gets `sig` when the thread that spawns it ends (the
/// kernel's unit is the thread: spawn from one that lives as long as the
/// child should). Set it after any hook that changes the user, which
/// clears it.
pub fn die_with_parent(cmd: &mut Command, sig: libc::c_int) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and raise are async-signal-safe; the closure
    // runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong);
            // The parent died between the fork and the prctl.
            if libc::getppid() != parent {
                libc::raise(sig);
            }
            Ok(())
        });
    }
}
