//! A child's output passed on to rayhead's own stdout and stderr (the
//! container log) with secrets redacted, its tail kept so that a failure can
//! be explained in the termination message. `ray start` and `ray stop` print
//! daemons' command lines, which carry `--redis_password`.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use super::reaper::Spawned;
use tokio_util::task::TaskTracker;

/// How many lines of the tail are kept.
const TAIL: usize = 12;

/// The last lines of the output, shared with the forwarding tasks.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL {
            t.pop_front();
        }
        t.push_back(line);
    }

    /// The kept lines, the most telling first: an `Error`/`Exception` line
    /// if there is one, else the last line.
    pub fn summary(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<&String> = t.iter().filter(|l| !l.trim().is_empty()).collect();
        let key = lines
            .iter()
            .rev()
            .find(|l| l.contains("Error") || l.contains("Exception") || l.contains("error:"))
            .or(lines.last());
        match key {
            Some(l) => l.trim().to_string(),
            None => "no output".to_string(),
        }
    }
}

/// Which of rayhead's streams a pipe is passed on to.
#[derive(Clone, Copy)]
pub enum To {
    Stdout,
    Stderr,
}

/// The forwarding of a child's pipes, to wait for: every line the child
/// wrote is in the tail once its pipes are drained.
pub struct Forwarding(Vec<tokio::task::JoinHandle<()>>);

impl Forwarding {
    /// Waits until every pipe is at its end (the child and whatever
    /// inherited the pipe closed it), or `limit`, whichever comes first: a
    /// grandchild that keeps the pipe open must not hold the caller.
    pub async fn drained(self, limit: std::time::Duration) {
        let all = async {
            for h in self.0 {
                let _ = h.await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }
}

/// Forwards both of a spawned child's pipes (those it has) to rayhead's
/// stdout and stderr, sharing one tail.
pub fn forward_spawned(
    spawned: &mut Spawned,
    tail: &Tail,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Forwarding {
    let mut tasks = Vec::new();
    if let Some(o) = spawned.stdout.take() {
        tasks.extend(forward(
            o.into(),
            To::Stdout,
            tail.clone(),
            tracker,
            cancel.clone(),
        ));
    }
    if let Some(e) = spawned.stderr.take() {
        tasks.extend(forward(
            e.into(),
            To::Stderr,
            tail.clone(),
            tracker,
            cancel.clone(),
        ));
    }
    Forwarding(tasks)
}

/// Forwards a child's pipe until it closes or `cancel`.
fn forward(
    fd: OwnedFd,
    to: To,
    tail: Tail,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let rx = match pipe::Receiver::from_owned_fd(fd) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a child's output");
            return None;
        }
    };
    Some(tracker.spawn(async move {
        let mut lines = BufReader::new(rx).lines();
        loop {
            let line = tokio::select! {
                l = lines.next_line() => l,
                _ = cancel.cancelled() => return,
            };
            let Ok(Some(line)) = line else { return };
            let line = crate::redact::line(&line);
            let out = format!("{line}\n").into_bytes();
            // Never a blocking write: a stuck log reader must not stall
            // the supervisor (the line is dropped and counted instead).
            match to {
                To::Stdout => crate::logging::to_stdout(out),
                To::Stderr => crate::logging::to_stderr(out),
            }
            tail.push(line);
        }
    }))
}
