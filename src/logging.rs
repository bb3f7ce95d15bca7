//! Logging through `tracing`, to stderr (the child owns stdout), and the
//! passing-on of children's output: nothing written here can block or kill
//! PID 1.
//!
//! Each of rayhead's two streams is fed by a [`Lossy`] writer: a bounded
//! queue drained by a thread of its own. A full queue (a stderr that nobody
//! reads) drops the line and counts it; a failed write (a closed pipe,
//! EPIPE) is swallowed and counted. The supervisor never waits on either,
//! and never panics on either, where `eprintln!` would. Once the stream takes
//! lines again, one line says how many were lost.
//!
//! Why not `tracing-appender`'s `non_blocking`: its guard, dropped at exit
//! with a full queue, `println!`s, which panics when stdout is closed, and
//! its worker `eprintln!`s on a failed flush: the very failures this module
//! is for.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// How many lines may wait for a slow stream before new ones are dropped.
const QUEUE: usize = 4096;

/// Lines lost on either stream since start: dropped on a full queue, or
/// failed to write.
static DROPPED: AtomicU64 = AtomicU64::new(0);

static STDERR: OnceLock<Lossy> = OnceLock::new();
static STDOUT: OnceLock<Lossy> = OnceLock::new();

/// Lines lost so far, for `rayhead_log_lines_dropped_total`.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

enum Msg {
    Line(Vec<u8>),
    /// Answer once everything before it is written.
    Flush(mpsc::Sender<()>),
}

/// A writer that never blocks and never fails: see the module docs.
#[derive(Clone)]
pub struct Lossy {
    tx: SyncSender<Msg>,
}

impl Lossy {
    /// Starts the thread that drains into `sink`. `note` words the line
    /// that reports lost lines, in the stream's format.
    pub fn start(
        name: &str,
        mut sink: impl Write + Send + 'static,
        note: fn(u64) -> String,
    ) -> io::Result<Lossy> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        std::thread::Builder::new()
            .name(format!("rayhead-{name}"))
            .spawn(move || {
                let mut reported = 0;
                for msg in rx {
                    match msg {
                        Msg::Line(line) => {
                            let lost = DROPPED.load(Ordering::Relaxed);
                            if lost > reported
                                && sink.write_all(note(lost - reported).as_bytes()).is_ok()
                            {
                                reported = lost;
                            }
                            if sink.write_all(&line).is_err() {
                                DROPPED.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Msg::Flush(done) => {
                            let _ = sink.flush();
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Lossy { tx })
    }

    /// Queues `line`, or drops and counts it when the queue is full.
    pub fn line(&self, line: Vec<u8>) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits up to `limit` for every queued line to be written; `false`
    /// when the stream did not take them in time.
    pub fn flush(&self, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit.min(Duration::from_secs(60));
        let (done, wait) = mpsc::channel();
        let mut msg = Msg::Flush(done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < until => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }
}

impl Write for Lossy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lossy {
    type Writer = Lossy;

    fn make_writer(&'a self) -> Lossy {
        self.clone()
    }
}

/// Passes a line on to rayhead's stdout or stderr without blocking (before
/// [`init`], in unit tests, directly).
pub fn to_stdout(line: Vec<u8>) {
    match STDOUT.get() {
        Some(l) => l.line(line),
        None => {
            let _ = io::stdout().lock().write_all(&line);
        }
    }
}

pub fn to_stderr(line: Vec<u8>) {
    match STDERR.get() {
        Some(l) => l.line(line),
        None => {
            let _ = io::stderr().lock().write_all(&line);
        }
    }
}

/// Installs the global subscriber, writing through the lossy stderr.
/// `level` was validated with the config. Falls back to direct, still
/// error-proof, writes if a thread cannot be started.
pub fn init(level: &str, format: LogFormat) {
    let note: fn(u64) -> String = match format {
        LogFormat::Text => {
            |n| format!("rayhead: {n} log line(s) were dropped: stderr was blocked or closed\n")
        }
        LogFormat::Json => |n| {
            format!("{{\"level\":\"WARN\",\"message\":\"log lines were dropped: stderr was blocked or closed\",\"dropped\":{n}}}\n")
        },
    };
    let out = Lossy::start("stdout", io::stdout(), |n| {
        format!("rayhead: {n} output line(s) were dropped\n")
    });
    if let Ok(out) = out {
        let _ = STDOUT.set(out);
    }
    let Ok(err) = Lossy::start("stderr", io::stderr(), note) else {
        return;
    };
    let err = STDERR.get_or_init(|| err).clone();
    let filter = EnvFilter::builder()
        .parse(level)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(err)
        .with_target(false)
        .with_ansi(io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// rayhead's last words: waits briefly for the queued log lines, and when
/// stderr will not take them, tries `line` once more straight to stderr
/// from a thread of its own, for at most `limit`. Returns either way: an
/// exit is never held up by a stuck log reader.
pub fn last_words(line: &str, limit: Duration) {
    let flushed = STDERR.get().is_some_and(|l| l.flush(limit));
    if flushed {
        return;
    }
    let text = format!("{line}\n");
    let (done, wait) = mpsc::channel();
    let writer = std::thread::Builder::new().spawn(move || {
        let _ = io::stderr().lock().write_all(text.as_bytes());
        let _ = done.send(());
    });
    if writer.is_ok() {
        let _ = wait.recv_timeout(limit);
    }
}

/// Prints to stdout, as `print!` would, but a closed stdout (`rayhead config
/// check | head -1`) is no panic.
pub fn out(text: &str) {
    let _ = io::stdout().lock().write_all(text.as_bytes());
}

/// Prints to stderr, as `eprint!` would, without a panic on a closed stderr.
pub fn err(text: &str) {
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A sink that blocks until released, then fails: a stuck, then closed,
    /// pipe.
    struct Stuck(Arc<std::sync::Mutex<()>>);

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            let _held = self.0.lock();
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_stuck_then_broken_stream_neither_blocks_nor_panics() {
        let gate = Arc::new(std::sync::Mutex::new(()));
        let held = gate.lock().unwrap();
        let l = Lossy::start("test", Stuck(gate.clone()), |n| format!("{n}\n")).unwrap();
        let before = dropped_lines();
        let t = std::time::Instant::now();
        for _ in 0..(QUEUE + 100) {
            l.line(b"x\n".to_vec());
        }
        assert!(t.elapsed() < Duration::from_secs(1), "a full queue blocked");
        assert!(dropped_lines() - before >= 99, "drops are counted");
        assert!(
            !l.flush(Duration::from_millis(50)),
            "a stuck stream does not flush"
        );
        drop(held);
        // Released, every write fails (EPIPE): swallowed and counted.
        let mut tries = 0;
        while !l.flush(Duration::from_millis(100)) {
            tries += 1;
            assert!(tries < 100, "never drained");
        }
        assert!(dropped_lines() - before >= (QUEUE as u64) + 100);
    }

    #[test]
    fn lines_pass_in_order_with_a_note_after_losses() {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        struct Chan(mpsc::Sender<Vec<u8>>);
        impl Write for Chan {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let _ = self.0.send(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let l = Lossy::start("order", Chan(tx), |n| format!("lost {n}\n")).unwrap();
        l.line(b"a\n".to_vec());
        l.line(b"b\n".to_vec());
        assert!(l.flush(Duration::from_secs(5)));
        // A line lost on another stream (a failed write), between b and c.
        let broken = Lossy::start("broken", Broken, |n| format!("lost {n}\n")).unwrap();
        let before = dropped_lines();
        broken.line(b"gone\n".to_vec());
        assert!(broken.flush(Duration::from_secs(5)));
        let lost = dropped_lines();
        assert!(lost > before, "the failed write was not counted");
        l.line(b"c\n".to_vec());
        assert!(l.flush(Duration::from_secs(5)));
        let after = dropped_lines();
        let got: Vec<String> = rx
            .try_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
        // Other tests may lose lines meanwhile: notes may come anywhere,
        // but every line passes, in order, none twice.
        let lines: Vec<&str> = got
            .iter()
            .map(|s| s.as_str())
            .filter(|s| !s.starts_with("lost "))
            .collect();
        assert_eq!(lines, ["a\n", "b\n", "c\n"], "{got:?}");
        // A note comes after b and before c: the loss happened between.
        let b = got.iter().position(|s| s == "b\n").unwrap();
        let c = got.iter().position(|s| s == "c\n").unwrap();
        assert!(
            got[b + 1..c].iter().any(|s| s.starts_with("lost ")),
            "no note before c: {got:?}"
        );
        // The notes add up to every loss so far, counted once: at least
        // the one before c, at most all there are now.
        let noted: u64 = got
            .iter()
            .filter_map(|s| s.strip_prefix("lost "))
            .map(|n| n.trim().parse::<u64>().unwrap())
            .sum();
        assert!(
            lost <= noted && noted <= after,
            "noted {noted}, lost {lost}..{after}: {got:?}"
        );
    }
}
