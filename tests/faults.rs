//! Fault injection: rayhead as PID 1 must not die or wedge by accident. A
//! closed or blocked stderr, a huge duration, a connection flood, an
//! unwritable termination log, a tiny fd limit, SIGSTOP of rayhead itself,
//! `/proc` entries vanishing mid-walk, and a panic.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ray_util::RayTest;
use crate::util::{alive, free_port, run_sh, Dir};
use crate::wait::{eventually, holds_for};

const LIMIT: Duration = Duration::from_secs(60);

/// A child that records its pid, then waits to be stopped.
const WAITER: &str = "echo $$ > \"$D/child.pid\"; touch \"$D/ready\"; exec sleep 1000";

fn child_pid(dir: &Dir) -> i32 {
    dir.read("child.pid").trim().parse().expect("child.pid")
}

/// Whether `pid` is stopped (`T` in its `/proc` stat).
fn stopped(pid: Pid) -> bool {
    rayhead::sys::proctree::stat(pid).is_some_and(|p| p.state == 'T')
}

/// A pipe whose ends no other process inherits (close-on-exec): once the
/// test drops the read end, the pipe is closed for real.
fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    (std::fs::File::from(r), w)
}

/// Fills the pipe behind `w` until a write would block, so that the next
/// writer blocks at once.
fn fill(w: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let flags = OFlag::from_bits_truncate(fcntl(w.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
    fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
    let chunk = [b'x'; 4096];
    while nix::unistd::write(w, &chunk).is_ok() {}
    fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(flags)).unwrap();
}

/// `( rayhead run -- sh -c 'sleep 100' 2>&1 ) | head -c 1`, then SIGTERM:
/// every later write to stderr fails with EPIPE. rayhead still stops its
/// child and exits 143 (it used to abort with 134 and leave the child).
#[test]
fn a_closed_stderr_neither_kills_rayhead_nor_orphans_the_child() {
    let dir = Dir::new("closed-stderr");
    let (mut r, w) = pipe();
    let w2 = w.try_clone().unwrap();
    let mut run = run_sh(&dir, &[], WAITER)
        .stdout(Stdio::from(w))
        .stderr(Stdio::from(w2))
        .spawn();
    let mut one = [0u8; 1];
    r.read_exact(&mut one).unwrap();
    drop(r);
    run.wait_for_file("ready", LIMIT);
    let child = child_pid(&dir);
    run.signal(Signal::SIGTERM);
    let out = run.wait(LIMIT);
    out.assert_code(143);
    assert!(!alive(child), "the child {child} was left running");
    // The reason still reaches the termination log.
    out.assert_termination_log("SIGTERM");
}

/// stderr is a pipe that nobody reads, full before rayhead writes a byte;
/// ~3,000 logged SIGWINCHs, then SIGTERM. rayhead runs its command, and
/// exits 143 within 5 s of the SIGTERM (it used to hang on its first log
/// write, deaf to every signal).
#[test]
fn a_blocked_stderr_does_not_wedge_rayhead() {
    let dir = Dir::new("blocked-stderr");
    let (r, w) = pipe();
    fill(&w);
    let mut run = run_sh(&dir, &[], WAITER)
        .env("RAYHEAD_INIT_FORWARD_SIGNALS", "SIGTERM,SIGINT")
        .stderr(Stdio::from(w))
        .spawn();
    run.wait_for_file("ready", LIMIT);
    let child = child_pid(&dir);
    let rayhead = run.rayhead_pid();
    for i in 0..3000 {
        let _ = kill(rayhead, Signal::SIGWINCH);
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let sent = Instant::now();
    run.signal(Signal::SIGTERM);
    let out = run.wait(LIMIT);
    let took = sent.elapsed();
    out.assert_code(143);
    assert!(took < Duration::from_secs(5), "took {took:?} after SIGTERM");
    assert!(!alive(child), "the child {child} was left running");
    drop(r);
}

/// A duration that `config check` used to accept and `Instant + Duration`
/// then overflowed (a panic, 134): now a configuration error naming the key.
#[test]
fn a_huge_duration_is_a_config_error_not_a_panic() {
    let dir = Dir::new("huge-duration");
    for cmd in [
        vec!["run", "--", "ray", "start", "--head"],
        vec!["config", "check"],
    ] {
        let out = dir
            .rayhead()
            .env("RAY_REDIS_ADDRESS", "127.0.0.1:1")
            .env("RAYHEAD_REDIS_STARTUP_TIMEOUT", "584542046090years")
            .args(cmd)
            .run(LIMIT);
        out.assert_code(64);
        assert!(
            out.stderr.contains("redis.startup-timeout") && out.stderr.contains("7 days"),
            "{}",
            out.dump()
        );
    }
    let out = dir
        .rayhead()
        .env(
            "RAY_gcs_rpc_server_reconnect_timeout_s",
            "18446744073709551615",
        )
        .args(["config", "check"])
        .run(LIMIT);
    out.assert_code(64);
    assert!(
        out.stderr.contains("ray.reconnect-timeout"),
        "{}",
        out.dump()
    );
}

/// 200 idle connections from one peer (127.0.0.2) cannot hold `/livez`
/// down for anyone else, nor the exec probe on its Unix socket.
#[test]
fn a_connection_flood_from_one_peer_does_not_fail_the_probes() {
    let dir = Dir::new("flood");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut run = run_sh(&dir, &[], WAITER)
        .env("RAYHEAD_PROBE_LISTEN", format!("127.0.0.1:{port}"))
        .spawn();
    run.wait_for_file("ready", LIMIT);
    eventually(LIMIT, "/livez", || {
        rayhead::probe::client::query(&url, "/livez")
            .0
            .then_some(())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let idle: Vec<tokio::net::TcpStream> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..200 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(c) = s.connect(target).await {
                v.push(c);
            }
        }
        v
    });
    assert!(idle.len() >= 100, "only {} connections made", idle.len());
    let until = Instant::now() + Duration::from_secs(6);
    let mut probes = 0;
    while Instant::now() < until {
        let t = Instant::now();
        let (ok, why) = rayhead::probe::client::query(&url, "/livez");
        assert!(ok, "/livez failed during the flood: {why}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "/livez took {:?}",
            t.elapsed()
        );
        let out = dir
            .rayhead()
            .args(["probe", "live"])
            .spawn_named("probe-")
            .wait(LIMIT);
        out.assert_code(0);
        probes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(probes >= 5);
    drop(idle);
    run.signal(Signal::SIGTERM);
    run.wait(LIMIT).assert_code(143);
}

/// The termination log unwritable (a directory that does not exist, a full
/// file system): the exit code is the command's all the same.
#[test]
fn an_unwritable_termination_log_does_not_change_the_exit_code() {
    let dir = Dir::new("termlog");
    let out = run_sh(&dir, &[], "exit 7")
        .env("RAYHEAD_INIT_TERMINATION_LOG", "/nonexistent/dir/msg")
        .run(LIMIT);
    out.assert_code(7);
    assert!(
        out.stderr.contains("cannot write the termination message"),
        "{}",
        out.dump()
    );
    // A full tmpfs, in a mount namespace of its own (root, as CI has).
    let script = format!(
        "set -e; mkdir -p \"$D/full\"; mount -t tmpfs -o size=4k tmpfs \"$D/full\"; \
         dd if=/dev/zero of=\"$D/full/fill\" bs=4k count=8 2>/dev/null || true; \
         exec {} run -- sh -c 'exit 9'",
        crate::util::rayhead_bin().display()
    );
    let out = dir
        .command("unshare")
        .args(["--mount", "--", "sh", "-c", &script])
        .env("RAYHEAD_INIT_TERMINATION_LOG", dir.join("full/msg"))
        .spawn_named("full-")
        .wait(LIMIT);
    out.assert_code(9);
    assert!(out.stderr.contains("No space left"), "{}", out.dump());
}

/// `ulimit -n 16`: rayhead runs a plain command and stops it cleanly, or
/// exits 70 with a clear reason; never a panic.
#[test]
fn a_tiny_fd_limit_is_a_clean_run_or_a_clear_failure() {
    let dir = Dir::new("ulimit");
    let script = format!(
        "ulimit -n 16; exec {} run -- sh -c 'exit 3'",
        crate::util::rayhead_bin().display()
    );
    let out = dir.command("sh").args(["-c", &script]).run(LIMIT);
    match out.code {
        Some(3) => {}
        Some(70) => assert!(
            out.stderr.contains("Too many open files")
                || out.termination_log.contains("open files"),
            "{}",
            out.dump()
        ),
        _ => panic!("neither a clean run nor a clear failure\n{}", out.dump()),
    }
    assert!(!out.stderr.contains("panicked"), "{}", out.dump());
}

/// SIGSTOP, then SIGCONT, of rayhead itself: it carries on, its heartbeat
/// recovers, and a stop still works.
#[test]
fn rayhead_stopped_and_continued_carries_on() {
    let dir = Dir::new("sigstop-self");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut run = run_sh(&dir, &[], WAITER)
        .env("RAYHEAD_PROBE_LISTEN", format!("127.0.0.1:{port}"))
        .env("RAYHEAD_PROBE_STALL_AFTER", "1s")
        .spawn();
    run.wait_for_file("ready", LIMIT);
    let rayhead = run.rayhead_pid();
    let child = child_pid(&dir);
    kill(rayhead, Signal::SIGSTOP).unwrap();
    eventually(LIMIT, "rayhead stopped", || stopped(rayhead).then_some(()));
    // Stopped past probe.stall-after, so that its heartbeat goes stale.
    holds_for(
        Duration::from_secs(2),
        "rayhead stopped, its child alive",
        || stopped(rayhead) && alive(child),
    );
    kill(rayhead, Signal::SIGCONT).unwrap();
    eventually(LIMIT, "/livez 200 again", || {
        rayhead::probe::client::query(&url, "/livez")
            .0
            .then_some(())
    });
    assert!(alive(child));
    run.signal(Signal::SIGTERM);
    run.wait(LIMIT).assert_code(143);
    assert!(!alive(child));
}

/// A stop while the tree churns: 1,000 short-lived children, each of whose
/// `/proc` entry may vanish mid-walk. No error, nothing left behind.
#[test]
fn processes_vanishing_mid_walk_are_no_error() {
    let dir = RayTest::unlocked("churn");
    // Ready once the 1,000 are started and the churn loop turns: the stop
    // comes mid-churn.
    let script = "for i in $(seq 1000); do sh -c 'exit 0' & done; \
                  while :; do sh -c 'exit 0' & sleep 0.001; \
                  [ -e \"$D/ready\" ] || touch \"$D/ready\"; done";
    let mut run = run_sh(&dir, &[], script).spawn();
    run.wait_for_file("ready", LIMIT);
    run.signal(Signal::SIGTERM);
    let out = run.wait(LIMIT);
    out.assert_code(143);
    assert!(!out.stderr.contains("ERROR"), "{}", out.dump());
    assert!(!out.stderr.contains("waitpid failed"), "{}", out.dump());
    assert!(
        dir.cleanup.pids().is_empty(),
        "left: {:?}",
        dir.cleanup.pids()
    );
}

/// A bug's panic is the last line of defence: the reason goes to the
/// termination log, every descendant is SIGKILLed, and rayhead exits 70.
/// (Debug builds only: `RAYHEAD_DEBUG_PANIC_AFTER` makes the panic.)
#[test]
fn a_panic_kills_the_tree_and_exits_70() {
    let dir = Dir::new("panic");
    let script = "sleep 1000 & echo $! > \"$D/grandchild.pid\"; echo $$ > \"$D/child.pid\"; \
                  touch \"$D/ready\"; wait";
    let mut run = run_sh(&dir, &[], script)
        .env("RAYHEAD_DEBUG_PANIC_AFTER", "1s")
        .spawn();
    run.wait_for_file("ready", LIMIT);
    let child = child_pid(&dir);
    let grandchild: i32 = dir.read("grandchild.pid").trim().parse().unwrap();
    let out = run.wait(LIMIT);
    out.assert_code(70)
        .assert_termination_log("rayhead itself failed");
    for p in [child, grandchild] {
        assert!(!alive(p), "{p} outlived rayhead's panic");
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}
