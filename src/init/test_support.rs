//! What the init's unit tests share: a test run in a process of its own
//! (this test binary again, with that one test), and a reaper started as
//! [`Init`](super::Init) starts it.
//!
//! A reaper waits for any child, and a stop signals every descendant: in
//! the shared test process either would take the children of the tests
//! running beside it. So the reaper's and the stop's tests each run
//! [`isolated`].

use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::reaper::{ExitStatus, Reaper};
use crate::sys::proctree;

/// Set in the child to the one test it must run for real.
const ISOLATED: &str = "RAYHEAD_TEST_ISOLATED";

/// Runs `body` in a process of its own, as rayhead runs: a subreaper, with
/// a tokio runtime. `module` is the caller's `module_path!()` and `name`
/// the test function's name: together the test's path, which the child
/// runs with `--exact`. Whatever `body` leaves running is killed when it
/// ends, passed or failed.
pub(crate) fn isolated<F, Fut>(module: &str, name: &str, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // `rayhead::init::reaper::tests` names the test `init::reaper::tests::…`.
    let module = module.split_once("::").map_or(module, |m| m.1);
    let test = format!("{module}::{name}");
    if std::env::var_os(ISOLATED).is_some_and(|v| v == test.as_str()) {
        // SAFETY: a plain prctl on this process.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
        let _cleanup = KillDescendants;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body());
        return;
    }
    let mut out = tempfile::tempfile().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(ISOLATED, &test)
        .stdout(out.try_clone().unwrap())
        .stderr(out.try_clone().unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    out.rewind().unwrap();
    out.read_to_string(&mut text).unwrap();
    let status = status.unwrap_or_else(|| panic!("{test} hung for 60s:\n{text}"));
    assert!(
        status.success(),
        "{test} failed in its own process:\n{text}"
    );
    assert!(text.contains("1 passed"), "{test} did not run:\n{text}");
}

/// SIGKILLs every live descendant when dropped.
struct KillDescendants;
impl Drop for KillDescendants {
    fn drop(&mut self) {
        for p in proctree::live_descendants_of_self() {
            let _ = nix::sys::signal::kill(p.pid, Signal::SIGKILL);
        }
    }
}

pub(crate) fn sh(script: &str) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script]).stdin(Stdio::null());
    cmd
}

/// A reaper started as `Init` starts it.
pub(crate) fn reaper() -> (Arc<Reaper>, TaskTracker, CancellationToken) {
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let r = Reaper::start(&tracker, cancel.clone()).unwrap();
    (r, tracker, cancel)
}

pub(crate) async fn status_of(exit: oneshot::Receiver<ExitStatus>) -> ExitStatus {
    tokio::time::timeout(Duration::from_secs(20), exit)
        .await
        .expect("no exit status within 20s")
        .expect("the exit status was lost")
}
