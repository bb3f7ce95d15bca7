//! How the tests wait, and how they say that nothing happens: every loop
//! that polls for a condition is one of these.
//!
//! - [`eventually`]: until a condition holds; past the limit, the test fails.
//! - [`eventually_or_exit`]: the same while a process of the test's runs,
//!   which ends the wait early if it exits.
//! - [`poll_until`]: the loop under both, for a caller with its own way to
//!   give up (a `Drop`, a run whose output must be shown first).
//! - [`holds_for`]: a negative window: a condition stays true for all of it.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How often a condition is polled.
const TICK: Duration = Duration::from_millis(20);

/// What one poll of [`eventually`] found: `Some` or `Ok` ends the wait
/// with its value; `None` is "not yet", and `Err` is "not yet" with what
/// was seen, which the failure message shows.
pub trait Poll<T> {
    fn poll(self) -> Result<T, Option<String>>;
}

impl<T> Poll<T> for Option<T> {
    fn poll(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T> Poll<T> for Result<T, String> {
    fn poll(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Why [`poll_until`] ended without its condition.
#[derive(Debug)]
pub enum NotYet {
    /// The limit passed; with the last thing the poll saw, if it said.
    TimedOut(Option<String>),
    /// The watched process exited first.
    Exited(ExitStatus),
}

/// Polls `f` until it is done and returns its value; gives up past
/// `limit`, or as soon as `child` (when given) has exited. Never panics:
/// for a caller that must clean up, or show a run's output, before it
/// fails (or that must not fail at all, as a `Drop`).
pub fn poll_until<T, P: Poll<T>>(
    limit: Duration,
    mut child: Option<&mut Child>,
    mut f: impl FnMut() -> P,
) -> Result<T, NotYet> {
    let deadline = Instant::now() + limit;
    loop {
        let seen = match f().poll() {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        if let Some(st) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            return Err(NotYet::Exited(st));
        }
        if Instant::now() >= deadline {
            return Err(NotYet::TimedOut(seen));
        }
        std::thread::sleep(TICK);
    }
}

#[track_caller]
fn timed_out(limit: Duration, what: &str, seen: Option<String>) -> ! {
    match seen {
        Some(s) => panic!("timed out after {limit:?} waiting for {what}; last seen:\n{s}"),
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// How the tests wait for a condition: polls `f` until it is done and
/// returns its value; past `limit`, fails with `what` and the last thing
/// `f` saw. A failure unwinds, so the test's guards kill what it started.
/// (Waits on a run's own process, `Running::wait` and
/// `Running::wait_for_file`, watch for its exit and print its output.)
#[track_caller]
pub fn eventually<T, P: Poll<T>>(limit: Duration, what: &str, f: impl FnMut() -> P) -> T {
    match poll_until(limit, None, f) {
        Ok(v) => v,
        Err(NotYet::TimedOut(seen)) => timed_out(limit, what, seen),
        Err(NotYet::Exited(_)) => unreachable!("no process watched"),
    }
}

/// [`eventually`], while `child` runs: `Err` with its status as soon as it
/// exits before the condition holds (the caller says what that means, or
/// starts it again); past `limit`, fails as `eventually` does.
#[track_caller]
pub fn eventually_or_exit<T, P: Poll<T>>(
    limit: Duration,
    what: &str,
    child: &mut Child,
    f: impl FnMut() -> P,
) -> Result<T, ExitStatus> {
    match poll_until(limit, Some(child), f) {
        Ok(v) => Ok(v),
        Err(NotYet::Exited(st)) => Err(st),
        Err(NotYet::TimedOut(seen)) => timed_out(limit, what, seen),
    }
}

/// A negative window: asserts that `f` stays true for the whole of
/// `window`, checking it repeatedly, and fails at the first check that
/// finds it false, saying `what` no longer held and when. Not a wait:
/// nothing is expected to happen in the window.
#[track_caller]
pub fn holds_for(window: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        assert!(
            f(),
            "{what} held for only {:?} of {window:?}",
            start.elapsed()
        );
        if start.elapsed() >= window {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
