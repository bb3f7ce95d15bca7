//! Signal handling for PID 1.
//!
//! The kernel drops any signal sent to a namespace's PID 1 that has no
//! handler, so every signal rayhead means to act on gets one. Signals arrive
//! on one channel, in order, for the supervisor's `select!`.

use std::io;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The signals rayhead always handles: the defaults of
/// `init.forward-signals` (a test holds the two equal). One of them left
/// out of the forward list is still caught (and logged), so that it cannot
/// kill rayhead when it runs as a subreaper rather than PID 1.
pub const ALWAYS_HANDLED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Installs handlers for `signals` now, and delivers them on the receiver.
pub fn listen(
    signals: &[Signal],
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> io::Result<mpsc::UnboundedReceiver<Signal>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for &sig in signals {
        let mut stream = signal(SignalKind::from_raw(sig as i32))?;
        let tx = tx.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    got = stream.recv() => match got {
                        Some(()) => {
                            if tx.send(sig).is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = cancel.cancelled() => break,
                }
            }
        });
    }
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed set and the configuration's default text are one set.
    #[test]
    fn always_handled_is_the_forward_default() {
        let text = crate::config::keys::DEFAULT_FORWARD_SIGNALS;
        let parsed: Vec<Signal> = text
            .split(',')
            .map(|n| crate::config::value::parse_signal(n).unwrap())
            .collect();
        assert_eq!(parsed, ALWAYS_HANDLED);
    }
}
