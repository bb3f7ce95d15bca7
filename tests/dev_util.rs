//! The fake Ray (shell scripts named `ray`, `gcs_server` and `raylet`) and
//! the harness of `rayhead dev`'s tests: a run whose stderr is read as it
//! comes, the lines' shapes, its process tree, its embedded Redis.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rayhead::sys::proctree;

use crate::ray_util::assert_all_dead;
use crate::util::{Dir, Output, Running};
use crate::wait::eventually;

/// `ray start` starts gcs_server and raylet in the background and exits 0.
/// The first gcs_server lives; the ones after it exit with code 3 (unless
/// `$D/gcs-lives` exists). `$D/ray-start-fails` fails every start,
/// `$D/ray-start-fails-once` the next one only. Each gcs_server prints the
/// Redis password to its output, a pipe from `ray start`, so that a leak
/// through a restarted one shows.
pub fn fake_ray(dir: &Dir) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let scripts = [
        (
            "ray",
            r#"#!/bin/sh
case "$1" in
  start)
    echo "fake ray start $*"
    [ -e "$D/ray-start-fails" ] && { echo "ValueError: the fake port is taken" >&2; exit 1; }
    [ -e "$D/ray-start-fails-once" ] && { rm "$D/ray-start-fails-once"; echo "ValueError: the fake port is taken" >&2; exit 1; }
    [ -e "$D/no-daemons" ] && exit 0
    echo "$(date +%s.%N)" > "$D/ray-start-ran"
    env | grep '^RAY_' > "$D/ray-start-env"
    "$D/bin/gcs_server" &
    "$D/bin/raylet" &
    # Like the real one, return once the daemons run.
    while [ ! -e "$D/raylet-up" ] || [ ! -e "$D/gcs-up" ]; do sleep 0.01; done
    exit 0 ;;
  stop) echo "fake ray stop"; exit 0 ;;
esac
exit 2
"#,
        ),
        (
            "gcs_server",
            r#"#!/bin/sh
# Like the real one's log lines: the password, to the pipe from ray start.
echo "gcs_server --redis_password=$REDIS_PASSWORD"
echo "connecting to redis://:$REDIS_PASSWORD@127.0.0.1:1" >&2
if [ -e "$D/gcs-started" ] && [ ! -e "$D/gcs-lives" ]; then echo crash >> "$D/gcs-crashes"; exit 3; fi
touch "$D/gcs-started" "$D/gcs-up"
while :; do sleep 1; done
"#,
        ),
        (
            "raylet",
            "#!/bin/sh\ntouch \"$D/raylet-up\"\nwhile :; do sleep 1; done\n",
        ),
    ];
    for (name, text) in scripts {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

pub const LIMIT: Duration = Duration::from_secs(60);

/// The state dir, short: Ray's socket paths live under it.
pub const STATE: &str = "s";

/// A running `rayhead dev`, its stderr read into `out` by a thread until
/// `close` is set: then the thread drops the pipe, as a `tee` that dies.
pub struct DevRun {
    run: Running,
    out: Arc<Mutex<String>>,
    close: Arc<AtomicBool>,
    /// The reader; it owns the pipe, which it drops when it returns.
    reader: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl DevRun {
    pub fn start(dir: &Dir, path: &str, args: &[&str]) -> DevRun {
        let mut run = dir
            .rayhead()
            .env("PATH", path)
            .env("RAYHEAD_LOG", "info")
            .args(["dev", "--state-dir", STATE])
            .args(args)
            .stderr(Stdio::piped())
            .spawn();
        let mut pipe = run.take_stderr().expect("stderr pipe");
        let out = Arc::new(Mutex::new(String::new()));
        let close = Arc::new(AtomicBool::new(false));
        let (o, c) = (out.clone(), close.clone());
        // A reader, not a wait: poll(2) with a timeout, so that it sees
        // `close` even while the runner writes nothing.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !c.load(Ordering::SeqCst) {
                let mut fd = libc::pollfd {
                    fd: pipe.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd we own, for at most 100 ms.
                if unsafe { libc::poll(&mut fd, 1, 100) } <= 0 {
                    continue;
                }
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => o
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        DevRun {
            run,
            out,
            close,
            reader: Mutex::new(Some(reader)),
        }
    }

    pub fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn pid(&self) -> Pid {
        self.run.outer_pid()
    }

    /// Waits for `n` lines of `shape` in the runner's output.
    pub fn wait_for(&self, expected: &str, n: usize, limit: Duration) {
        let want = shape(expected);
        eventually(limit, &format!("{n} x {expected:?}"), || {
            let text = self.text();
            if text.lines().filter(|l| shape(l) == want).count() >= n {
                Ok(())
            } else {
                Err(text)
            }
        })
    }

    /// Waits for the runner to end within `limit`: how it ended, and all
    /// the stderr read.
    pub fn wait(self, limit: Duration) -> (Output, String) {
        let DevRun { run, out, .. } = self;
        let done = run.wait(limit);
        let text = out.lock().unwrap().clone();
        (done, text)
    }

    /// Closes the stderr pipe, as a pipeline's reader that died: returns
    /// once the reader has returned, and so dropped its end.
    pub fn close_stderr(&self) {
        self.close.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.lock().unwrap().take() {
            reader.join().expect("the stderr reader panicked");
        }
    }
}

/// A line with its variable parts masked: numbers (but a lone 0, which
/// the walkthrough means), the generated namespace, the state dir.
pub fn shape(line: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = line.trim().chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let lone_zero = i - start == 1
                && chars[start] == '0'
                && (start == 0 || chars[start - 1] == ' ')
                && chars.get(i).is_none_or(|c| *c == ' ');
            out.push_str(if lone_zero { "0" } else { "#" });
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    let mut masked = Vec::new();
    for word in out.split(' ') {
        if let Some(at) = word.find("rayhead-dev-") {
            masked.push(format!("{}rayhead-dev-NS\"", &word[..at]));
        } else {
            masked.push(word.replace(".rayhead-dev/", &format!("{STATE}/")));
        }
    }
    masked.join(" ")
}

/// Every process of the runner's tree now, with its comm.
pub fn tree(dev: &DevRun) -> Vec<(Pid, String)> {
    proctree::descendants(&proctree::snapshot(), dev.pid())
        .into_iter()
        .map(|p| (p.pid, p.comm))
        .collect()
}

/// Stops the runner with `sig`; asserts exit 0 and that nothing of its
/// tree (recorded first) lives on.
pub fn stop(dev: DevRun, sig: Signal) -> String {
    let before = tree(&dev);
    // A RocksDB cluster (the banner says so) has no Redis to stop.
    let rocksdb = dev.text().contains("GCS store  RocksDB in ");
    let comms: &[&str] = if rocksdb {
        &["gcs_server", "raylet"]
    } else {
        &["gcs_server", "raylet", "redis-server"]
    };
    for comm in comms {
        assert!(
            before.iter().any(|(_, c)| c == comm),
            "no {comm} in the tree before the stop: {before:?}"
        );
    }
    assert!(
        before.iter().any(|(_, c)| c.starts_with("ray::")),
        "{before:?}"
    );
    let pid = dev.pid();
    kill(pid, sig).unwrap();
    let (done, text) = dev.wait(LIMIT);
    assert_eq!(done.code, Some(0), "{text}\n{}", done.dump());
    let pids: Vec<Pid> = before.iter().map(|(p, _)| *p).collect();
    assert_all_dead("the dev cluster", &pids);
    text
}

/// The state dir's embedded Redis, SIGKILLed when dropped: the tests'
/// guard by marker cannot find it (Redis retitles itself), and a test that
/// SIGKILLs the runner, or fails, must not leave it behind.
pub struct RedisGuard<'a>(pub &'a Dir);

impl Drop for RedisGuard<'_> {
    fn drop(&mut self) {
        for pid in redis_pids(self.0) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// Whether the state dir's embedded Redis runs. Redis retitles itself
/// (`redis-server 127.0.0.1:PORT`), so it is found by its port, not by
/// the state dir in its command line.
pub fn alive_redis(dir: &Dir) -> bool {
    saved(dir).unwrap_or_else(|e| panic!("{e}"));
    !redis_pids(dir).is_empty()
}

/// The state dir's `cluster.json`, read by rayhead's own code.
pub fn saved(dir: &Dir) -> Result<rayhead::dev::state_dir::Saved, String> {
    rayhead::dev::state_dir::StateDir::saved(&dir.join(STATE))
}

/// The live processes of the state dir's embedded Redis, by its port.
fn redis_pids(dir: &Dir) -> Vec<Pid> {
    let Ok(saved) = saved(dir) else {
        return Vec::new();
    };
    let port = saved.ports.redis;
    let title = format!("redis-server 127.0.0.1:{port}");
    proctree::snapshot()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&title))
        })
        .map(|p| p.pid)
        .collect()
}
