//! rayhead as an init: as PID 1 of its own PID namespace (`unshare --pid
//! --kill-child --mount-proc`, as CI runs as root) and as a subreaper.
//!
//! The scripts run by `sh -c` find their temp dir in `$D`.

use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use rayhead::sys::proctree;

use crate::util::{alive, count_lines, free_port, run_sh, Dir, Output};
use crate::wait::eventually;

/// A generous bound for runs that should take well under a second.
const QUICK: Duration = Duration::from_secs(30);
/// How long to wait for a child's "ready" mark.
const READY: Duration = Duration::from_secs(20);

#[test]
fn pid1_smoke_exit_7() {
    let dir = Dir::new("exit7");
    let out = run_sh(&dir, &[], "exit 7").pid1().run(QUICK);
    out.assert_code(7)
        .assert_termination_log("exited with code 7");
}

#[test]
fn every_exit_code_is_passed_on() {
    let dir = Dir::new("codes");
    for code in 0..=255 {
        let out = run_sh(&dir, &[], &format!("exit {code}"))
            .env("RAYHEAD_LOG", "warn")
            .pid1()
            .run(QUICK);
        out.assert_code(code);
    }
}

#[test]
fn deaths_by_signal_give_128_plus_n() {
    let dir = Dir::new("sigdeath");
    for (sig, n) in [("TERM", 15), ("KILL", 9), ("USR1", 10), ("SEGV", 11)] {
        for pid1 in [true, false] {
            let mut cmd = run_sh(&dir, &[], &format!("kill -{sig} $$; sleep 5"));
            if pid1 {
                cmd = cmd.pid1();
            }
            let out = cmd.run(QUICK);
            out.assert_code(128 + n)
                .assert_termination_log(&format!("killed by SIG{sig}"));
        }
    }
}

#[test]
fn cannot_execute_is_126_and_not_found_is_127() {
    let dir = Dir::new("126-127");
    let script = dir.write("noexec.sh", "#!/bin/sh\necho hi\n");
    let run = |argv: &[&str]| {
        let mut args = vec!["run", "--"];
        args.extend_from_slice(argv);
        dir.rayhead().args(args).pid1().run(QUICK)
    };
    let out = run(&[script.to_str().unwrap()]);
    out.assert_code(126).assert_termination_log("cannot start");
    run(&[dir.path().to_str().unwrap()]).assert_code(126);
    let out = run(&["/nonexistent/command"]);
    out.assert_code(127);
    assert!(
        out.stderr.contains("/nonexistent/command"),
        "{}",
        out.dump()
    );
    run(&["no-such-command-on-path"]).assert_code(127);
}

/// The script orphans 100 grandchildren (their parent exits at once), waits
/// until every one of them has died, then until no zombie is left in the
/// namespace (up to 20 s), and reports the count: rayhead must have reaped
/// every one. A reaper that missed some leaves them as zombies for good.
const ORPHANS: &str = r#"
for i in $(seq 100); do sh -c 'sleep 0.2 & echo $! >> "$D/orphans"'; done
zombies() { cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z '; }
live() { n=0; for p in $(cat "$D/orphans"); do
  [ -e /proc/$p ] && ! grep -q ') Z ' /proc/$p/stat 2>/dev/null && n=$((n+1)); done; echo $n; }
i=0; while [ "$(live)" != 0 ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
i=0; while [ "$(zombies)" != 0 ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
echo "orphans=$(wc -l < "$D/orphans") zombies=$(zombies)"
"#;

#[test]
fn pid1_reaps_100_orphans() {
    let dir = Dir::new("orphans");
    let out = run_sh(&dir, &[], ORPHANS).pid1().run(QUICK);
    out.assert_code(0);
    assert!(
        out.stdout.contains("orphans=100 zombies=0"),
        "{}",
        out.dump()
    );
    assert_orphans_reaped(&out, 100);
}

/// As a subreaper, rayhead inherits the orphans of its tree and reaps them
/// while it runs: each orphan's `/proc` entry disappears (a zombie keeps
/// it) long before the command ends.
#[test]
fn subreaper_reaps_orphans() {
    let dir = Dir::new("subreaper");
    let script = r#"
for i in $(seq 20); do sh -c 'sleep 0.2 & echo $! >> "$D/pids"'; done
touch "$D/ready"
while [ ! -e "$D/quit" ]; do sleep 0.05; done
"#;
    let mut run = run_sh(&dir, &[], script).spawn();
    run.wait_for_file("ready", READY);
    let pids: Vec<i32> = dir
        .read("pids")
        .lines()
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 20);
    let rayhead = run.rayhead_pid();
    eventually(QUICK, "every orphan reaped", || {
        pids.iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    });
    assert!(alive(rayhead.as_raw()), "rayhead ended before the check");
    dir.write("quit", "");
    let out = run.wait(QUICK);
    out.assert_code(0);
    assert_orphans_reaped(&out, 20);
}

/// 50 grandchildren in the child's group and the child itself die of one
/// SIGKILL to the group, at the same instant; 5 more in their own sessions
/// are still running and must be stopped.
#[test]
fn burst_of_simultaneous_deaths() {
    for pid1 in [true, false] {
        let dir = Dir::new("burst");
        let script = r#"
for i in $(seq 50); do sleep 1000 & done
for i in $(seq 5); do setsid sh -c 'echo $$ >> "$D/setsid"; exec sleep 1000' & done
while [ "$(wc -l < "$D/setsid" 2>/dev/null)" != 5 ]; do sleep 0.05; done
touch "$D/ready"
exec sleep 1000
"#;
        let mut cmd = run_sh(&dir, &["--set", "init.stop-grace=20s"], script);
        if pid1 {
            cmd = cmd.pid1();
        }
        let mut run = cmd.spawn();
        run.wait_for_file("ready", READY);
        let rayhead = run.rayhead_pid();
        let group = proctree::descendants(&proctree::snapshot(), rayhead)
            .into_iter()
            .find(|p| p.ppid == rayhead)
            .expect("the child")
            .pgid;
        let killed = std::time::Instant::now();
        killpg(group, Signal::SIGKILL).unwrap();
        let out = run.wait(QUICK);
        let took = killed.elapsed();
        out.assert_code(137);
        let reaped = count_lines(&out.stderr, "reaped");
        assert!(reaped >= 56, "only {reaped} reaped\n{}", out.dump());
        assert!(
            took < Duration::from_secs(15),
            "waited for the grace ({took:?} after the kill)\n{}",
            out.dump()
        );
        // Pids in the file are the namespace's own in PID 1 mode.
        if !pid1 {
            for pid in dir.read("setsid").lines() {
                assert!(!alive(pid.trim().parse().unwrap()), "setsid {pid} survived");
            }
        }
    }
}

/// The child and a grandchild in its group each log every signal they get.
const TRAPS: &str = r#"
for s in HUP INT QUIT USR1 USR2 WINCH TERM; do trap "echo child-$s >> \"\$D/log\"" $s; done
# An async list in a non-interactive shell starts with SIGINT and SIGQUIT
# ignored, which a new shell cannot trap: `env --default-signal` undoes it.
env --default-signal=INT,QUIT sh -c '
  for s in HUP INT QUIT USR1 USR2 WINCH TERM; do trap "echo grand-$s >> \"\$D/log\"" $s; done
  touch "$D/grand-ready"
  while :; do sleep 0.05; done' &
while [ ! -e "$D/grand-ready" ]; do sleep 0.05; done
touch "$D/ready"
while [ ! -e "$D/quit" ]; do sleep 0.05; done
kill -KILL $!
"#;

/// Waits for every line of `want` in the log; a failure drops (and so kills)
/// the run as the panic unwinds.
fn wait_for_log(dir: &Dir, want: &[String]) {
    eventually(READY, &format!("{want:?} in the log"), || {
        let log = dir.read("log");
        if want.iter().all(|w| log.lines().any(|l| l == w)) {
            Ok(())
        } else {
            Err(log)
        }
    })
}

#[test]
fn forwarded_signals_reach_the_childs_group() {
    let dir = Dir::new("forward");
    let mut run = run_sh(&dir, &[], TRAPS).pid1().spawn();
    run.wait_for_file("ready", READY);
    for (sig, name) in [
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGQUIT, "QUIT"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
        (Signal::SIGWINCH, "WINCH"),
    ] {
        run.signal(sig);
        wait_for_log(&dir, &[format!("child-{name}"), format!("grand-{name}")]);
    }
    dir.write("quit", "");
    let out = run.wait(QUICK);
    out.assert_code(0);
    assert!(!dir.read("log").contains("TERM"), "{}", dir.read("log"));
}

/// SIGTERM and SIGINT reach the group too, and start the stop: the child
/// that traps them and exits 0 gives exit 0.
#[test]
fn stop_signals_reach_the_childs_group() {
    for (sig, name) in [(Signal::SIGTERM, "TERM"), (Signal::SIGINT, "INT")] {
        let dir = Dir::new("stopsig");
        let script = format!("{TRAPS}\n");
        let script = script.replace(
            "while [ ! -e \"$D/quit\" ]; do sleep 0.05; done",
            &format!(
                "while ! grep -q child-{name} \"$D/log\" 2>/dev/null; do sleep 0.05; done; exit 0"
            ),
        );
        // The grandchild traps the signal and carries on: the grace ends it.
        let mut run = run_sh(&dir, &["--set", "init.stop-grace=1s"], &script)
            .pid1()
            .spawn();
        run.wait_for_file("ready", READY);
        run.signal(sig);
        let out = run.wait(QUICK);
        out.assert_code(0);
        let log = dir.read("log");
        assert!(
            log.contains(&format!("child-{name}")),
            "{log}\n{}",
            out.dump()
        );
        assert!(
            log.contains(&format!("grand-{name}")),
            "{log}\n{}",
            out.dump()
        );
        out.assert_termination_log(&format!("received SIG{name}"));
    }
}

/// A child that ignores SIGTERM is SIGKILLed once the grace is over, and
/// rayhead does not wait longer.
#[test]
fn a_child_that_traps_sigterm_is_killed_after_the_grace() {
    let dir = Dir::new("grace");
    let script =
        "trap 'echo got-term >> \"$D/log\"' TERM; touch \"$D/ready\"; while :; do sleep 0.05; done";
    let mut run = run_sh(&dir, &["--set", "init.stop-grace=2s"], script)
        .pid1()
        .spawn();
    run.wait_for_file("ready", READY);
    let sent = std::time::Instant::now();
    run.signal(Signal::SIGTERM);
    let out = run.wait(QUICK);
    let took = sent.elapsed();
    out.assert_code(137);
    assert!(dir.read("log").contains("got-term"), "{}", out.dump());
    assert!(
        took >= Duration::from_millis(1900),
        "killed before the grace: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "waited past the grace: {took:?}\n{}",
        out.dump()
    );
    out.assert_termination_log("after the grace period");
}

/// A grandchild that left the group with `setsid` is stopped too, at once
/// (not after the grace), as PID 1 and as a subreaper.
#[test]
fn a_setsid_grandchild_is_stopped() {
    for pid1 in [true, false] {
        let dir = Dir::new("setsid");
        let script = r#"
setsid sh -c 'trap "echo setsid-term >> \"\$D/log\"; exit 0" TERM; echo $$ > "$D/setsid.pid"; while :; do sleep 0.05; done' &
while [ ! -s "$D/setsid.pid" ]; do sleep 0.05; done
touch "$D/ready"
exec sleep 1000
"#;
        let mut cmd = run_sh(&dir, &["--set", "init.stop-grace=20s"], script);
        if pid1 {
            cmd = cmd.pid1();
        }
        let mut run = cmd.spawn();
        run.wait_for_file("ready", READY);
        let setsid: i32 = dir.read("setsid.pid").trim().parse().unwrap();
        let sent = std::time::Instant::now();
        run.signal(Signal::SIGTERM);
        let out = run.wait(QUICK);
        out.assert_code(143);
        assert!(sent.elapsed() < Duration::from_secs(10), "{}", out.dump());
        assert!(dir.read("log").contains("setsid-term"), "{}", out.dump());
        if !pid1 {
            assert!(!alive(setsid), "the setsid grandchild {setsid} survived");
        }
    }
}

#[test]
fn a_second_sigterm_escalates_to_sigkill() {
    let dir = Dir::new("second");
    let script =
        "trap 'echo got-term >> \"$D/log\"' TERM; touch \"$D/ready\"; while :; do sleep 0.05; done";
    let mut run = run_sh(&dir, &["--set", "init.stop-grace=60s"], script)
        .pid1()
        .spawn();
    run.wait_for_file("ready", READY);
    let sent = std::time::Instant::now();
    run.signal(Signal::SIGTERM);
    wait_for_log(&dir, &["got-term".to_string()]);
    run.signal(Signal::SIGTERM);
    let out = run.wait(QUICK);
    out.assert_code(137);
    assert!(sent.elapsed() < Duration::from_secs(20), "{}", out.dump());
    out.assert_termination_log("second stop signal");
}

/// rayhead is started with signals ignored and blocked and an extra fd open;
/// the child sees none of it.
#[test]
fn the_child_gets_a_clean_signal_state_and_no_extra_fds() {
    for pid1 in [true, false] {
        let dir = Dir::new("clean");
        let extra = std::fs::File::open("/dev/null").unwrap();
        let extra_fd = extra.as_raw_fd();
        // The shell reads its own status and tests its own fds with builtins:
        // a forked `grep` would see the shell blocking signals around the
        // fork (dash does), and a pipe or redirection would add fds.
        let script = r#"while read -r line; do case "$line" in SigBlk*|SigIgn*) echo "$line";; esac; done < /proc/$$/status
extra=""
for fd in $(seq 3 64); do [ -e /proc/$$/fd/$fd ] && extra="$extra $fd"; done
echo "extra fds:[$extra]""#;
        let mut cmd = run_sh(&dir, &[], script);
        if pid1 {
            cmd = cmd.pid1();
        }
        // SAFETY: only async-signal-safe libc calls in the forked child.
        let cmd = unsafe {
            cmd.pre_exec(move || {
                libc::dup2(extra_fd, 9);
                libc::signal(libc::SIGUSR1, libc::SIG_IGN);
                libc::signal(libc::SIGALRM, libc::SIG_IGN);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                libc::sigaddset(&mut set, libc::SIGHUP);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            })
        };
        let out = cmd.run(QUICK);
        drop(extra);
        out.assert_code(0);
        assert!(
            out.stdout.contains("SigBlk:\t0000000000000000"),
            "{}",
            out.dump()
        );
        assert!(
            out.stdout.contains("SigIgn:\t0000000000000000"),
            "{}",
            out.dump()
        );
        assert!(out.stdout.contains("extra fds:[]"), "{}", out.dump());
    }
}

#[test]
fn stdio_is_passed_through_untouched() {
    let dir = Dir::new("stdio");
    let input = dir.write("in", "line one\nline two\n");
    let out = run_sh(&dir, &[], "cat; echo to-stderr >&2")
        .stdin(Stdio::from(std::fs::File::open(input).unwrap()))
        .pid1()
        .run(QUICK);
    out.assert_code(0);
    assert_eq!(out.stdout, "line one\nline two\n", "{}", out.dump());
    assert!(out.stderr.contains("to-stderr\n"), "{}", out.dump());
}

#[test]
fn the_stop_command_runs_first() {
    let dir = Dir::new("stopcmd");
    let script = "trap 'echo child-term >> \"$D/log\"; exit 0' TERM; touch \"$D/ready\"; while :; do sleep 0.05; done";
    let stop = format!(
        "init.stop-command=sh -c 'echo stop-command >> {}/log'",
        dir.path().display()
    );
    let mut run = run_sh(&dir, &["--set", &stop], script).pid1().spawn();
    run.wait_for_file("ready", READY);
    run.signal(Signal::SIGTERM);
    let out = run.wait(QUICK);
    out.assert_code(0);
    assert_eq!(
        dir.read("log"),
        "stop-command\nchild-term\n",
        "{}",
        out.dump()
    );
}

#[test]
fn a_hung_stop_command_is_bounded() {
    let dir = Dir::new("stopcmd-hang");
    let script = "touch \"$D/ready\"; exec sleep 1000";
    let mut run = run_sh(
        &dir,
        &[
            "--set",
            "init.stop-command=sleep 1000",
            "--set",
            "init.stop-command-timeout=1s",
        ],
        script,
    )
    .pid1()
    .spawn();
    run.wait_for_file("ready", READY);
    let sent = std::time::Instant::now();
    run.signal(Signal::SIGTERM);
    let out: Output = run.wait(QUICK);
    out.assert_code(143);
    assert!(sent.elapsed() < Duration::from_secs(10), "{}", out.dump());
    assert!(
        out.stderr.contains("stop command timed out"),
        "{}",
        out.dump()
    );
}

#[test]
fn leftover_processes_are_stopped_after_the_child_exits() {
    let dir = Dir::new("leftover");
    let script = "sleep 1000 & echo $! > \"$D/left.pid\"; exit 3";
    let out = run_sh(&dir, &[], script).run(QUICK);
    out.assert_code(3);
    let left: i32 = dir.read("left.pid").trim().parse().unwrap();
    assert!(!alive(left), "leftover {left} survived");
    out.assert_termination_log("stopped the process tree");
}

/// A plain command gets the probe server too: `/livez`, `/readyz` (ready
/// while it runs) and `/status`, over HTTP and through `rayhead probe`.
#[test]
fn a_plain_command_serves_the_probes() {
    let dir = Dir::new("plain-probes");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut run = run_sh(
        &dir,
        &[],
        "touch \"$D/ready\"; while [ ! -e \"$D/quit\" ]; do sleep 0.05; done",
    )
    .env("RAYHEAD_PROBE_LISTEN", format!("127.0.0.1:{port}"))
    .pid1()
    .spawn();
    run.wait_for_file("ready", READY);
    let query = |path: &str| rayhead::probe::client::query(&url, path);
    eventually(QUICK, "/readyz 200", || query("/readyz").0.then_some(()));
    assert_eq!(query("/livez"), (true, "ok\n".to_string()));
    let (ok, text) = query("/status");
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["supervising"], "command", "{v:#}");
    assert_eq!(v["phase"], "running", "{v:#}");
    assert_eq!(v["daemons"]["command"]["state"], "running", "{v:#}");
    assert!(v["gcs"].is_null(), "{v:#}");
    let out = dir
        .rayhead()
        .args(["probe", "live", "--url", &url])
        .spawn_named("probe-")
        .wait(QUICK);
    out.assert_code(0);
    // A stop under way is not ready; the run then ends as the command did.
    dir.write("quit", "");
    let out = run.wait(QUICK);
    out.assert_code(0);
    assert!(
        out.stderr.contains("probe server listening"),
        "{}",
        out.dump()
    );
    let (ok, text) = query("/livez");
    assert!(
        !ok && text.contains("refused"),
        "the server outlived rayhead: {text}"
    );
}

/// The probe port is rayhead's: a taken one is a configuration error that
/// names the key, and the command never starts.
#[test]
fn a_taken_probe_port_is_a_config_error() {
    let dir = Dir::new("probe-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = run_sh(&dir, &[], "touch \"$D/ran\"")
        .env("RAYHEAD_PROBE_LISTEN", addr.to_string())
        .run(QUICK);
    out.assert_code(64).assert_termination_log("probe.listen");
    assert!(!dir.join("ran").exists(), "the command ran");
}

/// At least `n` orphans reaped, as rayhead's log counts them.
fn assert_orphans_reaped(out: &Output, n: usize) {
    let orphans = count_lines(&out.stderr, "\"orphan\"");
    assert!(
        orphans >= n,
        "only {orphans} orphans reaped\n{}",
        out.dump()
    );
}
