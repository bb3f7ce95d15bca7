//! `rayhead dev`: the missing-tool and bad-option errors and the kubelet
//! emulation on the fake Ray (its harness, shared with `dev_walkthrough`,
//! is in `dev_util`).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::dev_util::{alive_redis, fake_ray, tree, DevRun, RedisGuard, LIMIT, STATE};
use crate::ray_util::{path_with_venv, RayTest};
use crate::redis_util::RedisServer;
use crate::util::{count_lines, free_port, Dir};
use crate::wait::eventually;

#[test]
fn dev_without_ray_or_redis_says_how_to_install_each_and_exits_69() {
    let dir = Dir::new("dev-tools");
    let out = dir
        .rayhead()
        .env("PATH", "/nonexistent")
        .args(["dev"])
        .run(LIMIT);
    out.assert_code(69);
    assert!(
        out.stderr.contains("`ray` was not found on PATH"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("pip install 'ray[default]==2.60.0'"),
        "{}",
        out.dump()
    );
    fake_ray(&dir);
    let bin = dir.join("bin");
    // Without redis-server the default is RocksDB; asked for Redis, it
    // is missing.
    let out = dir
        .rayhead()
        .env("PATH", &bin)
        .args(["dev", "--storage", "redis"])
        .run(LIMIT);
    out.assert_code(69);
    assert!(
        out.stderr.contains("`redis-server` was not found"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("apt-get install -y redis-server"),
        "{}",
        out.dump()
    );
    for text in [&out.stderr, &out.stdout] {
        assert!(
            !text.contains("panicked") && !text.contains("backtrace"),
            "{}",
            out.dump()
        );
    }
    assert!(
        !dir.join(".rayhead-dev").exists(),
        "nothing is created before the checks"
    );
}

#[test]
fn dev_refuses_bad_options_naming_each() {
    let dir = Dir::new("dev-opts");
    fake_ray(&dir);
    let path = format!("{}:/usr/bin:/bin", dir.join("bin").display());
    for (args, needle) in [
        (vec!["--redis-url", "http://x:1"], "--redis-url"),
        (vec!["--head-timeout", "0"], "--head-timeout"),
        (vec!["--head-timeout", "1.5s"], "whole seconds"),
        // The head itself would refuse it: no time left to recover.
        (vec!["--head-timeout", "3"], "gcs.deadline-margin"),
        (vec!["--set", "gcs.max-restarts=lots"], "gcs.max-restarts"),
        (vec!["--workers=-1"], "--workers"),
        (vec!["--workers", "many"], "--workers"),
        (vec!["--workers", "65"], "--workers"),
        (vec!["--restart-policy", "Sometimes"], "--restart-policy"),
    ] {
        let out = dir
            .rayhead()
            .env("PATH", &path)
            .args(["dev"])
            .args(&args)
            .run(LIMIT);
        out.assert_code(64);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.dump());
    }
    let state = dir.write("not-a-dir", "");
    let out = dir
        .rayhead()
        .env("PATH", &path)
        .args(["dev", "--state-dir"])
        .arg_path(&state)
        .run(LIMIT);
    out.assert_code(64);
    assert!(out.stderr.contains("--state-dir"), "{}", out.dump());
}

/// Removes a directory a test made outside its own temp dir.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A long state dir puts Ray's temp dir at a predictable path in /tmp.
/// Made first by someone else (ours but 0777; owned by uid 65534 when the
/// tests run as root), it would give them the session's sockets and logs:
/// the runner refuses it, naming it, and leaves what is in it.
#[test]
fn dev_refuses_a_ray_temp_dir_made_first_by_another() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("dev-squat");
    fake_ray(&dir);
    let path = format!("{}:/usr/bin:/bin", dir.join("bin").display());
    let state = dir.join("a-state-dir-long-enough-to-need-tmp");
    let squat = rayhead::dev::cluster::ray_temp_root(&state);
    assert!(squat.starts_with("/tmp"), "{}", squat.display());
    let _gone = RemoveDir(squat.clone());
    std::fs::create_dir(&squat).unwrap();
    std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(squat.join("theirs"), "planted").unwrap();
    let mut cases = vec![("mode 0777", None)];
    if nix::unistd::geteuid().is_root() {
        cases.push(("owned by uid 65534", Some(65534)));
    }
    for (why, owner) in cases {
        if let Some(uid) = owner {
            std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&squat, Some(uid), Some(uid)).unwrap();
        }
        let out = dir
            .rayhead()
            .env("PATH", &path)
            .args(["dev", "--workers", "0", "--state-dir"])
            .arg_path(&state)
            .run(LIMIT);
        out.assert_code(i32::from(rayhead::exit::CONFIG));
        let shown = squat.display().to_string();
        assert!(
            out.stderr.contains(&shown) && out.stderr.contains(why),
            "{}",
            out.dump()
        );
        assert_eq!(
            std::fs::read_to_string(squat.join("theirs")).unwrap(),
            "planted"
        );
    }
}

/// The fake Ray's `ray start` fails, so `rayhead run` exits 85 at once.
fn fake_dev(dir: &Dir, args: &[&str]) -> DevRun {
    fake_ray(dir);
    let path = format!("{}:{}", dir.join("bin").display(), path_with_venv());
    DevRun::start(dir, &path, &[&["--workers", "0"], args].concat())
}

#[test]
fn dev_never_keeps_a_failed_head_down_and_exits_with_its_code() {
    let dir = RayTest::new("dev-never");
    let _redis = RedisGuard(&dir);
    dir.write("ray-start-fails", "");
    let dev = fake_dev(&dir, &["--restart-policy", "Never"]);
    let (done, text) = dev.wait(LIMIT);
    assert_eq!(done.code, Some(85), "{text}");
    assert!(text.contains("head exited with code 85: "), "{text}");
    assert!(
        text.contains("ValueError: the fake port is taken"),
        "the head's reason: {text}"
    );
    assert!(
        text.contains("--restart-policy Never: head is not restarted"),
        "{text}"
    );
    let log = dir.read(&format!("{STATE}/logs/head.log"));
    assert_eq!(count_lines(&log, "fake ray start"), 1, "{log}");
    assert!(!alive_redis(&dir), "the embedded Redis was left running");
}

#[test]
fn dev_restarts_a_failed_head_after_the_kubelets_back_off() {
    let dir = RayTest::new("dev-always");
    let _redis = RedisGuard(&dir);
    dir.write("ray-start-fails-once", "");
    let dev = fake_dev(&dir, &[]);
    dev.wait_for(
        "rayhead dev: restarting head in 10s (restart 1; back-off 10s doubling to 300s, as the kubelet)",
        1,
        LIMIT,
    );
    let t = Instant::now();
    let log = || dir.read(&format!("{STATE}/logs/head.log"));
    eventually(LIMIT, "the second start", || {
        (count_lines(&log(), "fake ray start") == 2).then_some(())
    });
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(30),
        "restarted after {waited:?}"
    );
    let text = dev.text();
    assert!(text.contains("head exited with code 85: "), "{text}");
    assert!(
        text.contains("pod restarts 1"),
        "the status line counts it: {text}"
    );
    assert!(alive_redis(&dir), "the check finds the Redis while it runs");
    let pid = dev.pid();
    kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(dev.wait(LIMIT).0.code, Some(0));
    assert!(!alive_redis(&dir), "the embedded Redis was left running");
}

/// A head whose rayhead is SIGKILLed leaves its daemons to the runner,
/// which kills them, as a container's processes die with it, before the
/// next head needs their ports. And a runner SIGKILLed itself leaves no
/// pod behind: each gets SIGTERM from the kernel when its parent dies.
#[test]
fn dev_sweeps_a_killed_heads_daemons_and_a_killed_runner_leaves_nothing() {
    let dir = RayTest::new("dev-kill");
    let _redis = RedisGuard(&dir);
    let dev = fake_dev(&dir, &[]);
    let daemons = || -> Vec<Pid> {
        ["gcs_server", "raylet"]
            .iter()
            .flat_map(|c| crate::ray_util::find_comm(dev.pid(), c))
            .collect()
    };
    let first = eventually(LIMIT, "the fake daemons", || {
        let d = daemons();
        (d.len() == 2).then_some(d)
    });
    let head = tree(&dev)
        .into_iter()
        .find(|(_, c)| c == "rayhead")
        .map(|(p, _)| p)
        .expect("the head's rayhead");
    kill(head, Signal::SIGKILL).unwrap();
    dev.wait_for(
        "rayhead dev: head was killed by SIGKILL (log: s/logs/head.log)",
        1,
        LIMIT,
    );
    dev.wait_for(
        "rayhead dev: restarting head in 10s (restart 1; back-off 10s doubling to 300s, as the kubelet)",
        1,
        LIMIT,
    );
    eventually(
        Duration::from_secs(5),
        "the old head's daemons gone",
        || {
            first
                .iter()
                .all(|p| !crate::util::alive(p.as_raw()))
                .then_some(())
        },
    );

    // The next head, with its daemons, before the runner dies.
    dir.write("gcs-lives", "");
    eventually(LIMIT, "the next head's daemons", || {
        let d = daemons();
        (d.len() == 2 && d.iter().all(|p| !first.contains(p))).then_some(())
    });
    let before: Vec<(Pid, String)> = tree(&dev);
    for comm in ["redis-server", "rayhead", "gcs_server", "raylet"] {
        assert!(before.iter().any(|(_, c)| c == comm), "{comm}: {before:?}");
    }
    let before: Vec<Pid> = before.into_iter().map(|(p, _)| p).collect();
    kill(dev.pid(), Signal::SIGKILL).unwrap();
    eventually(
        Duration::from_secs(30),
        "every pod gone after the runner",
        || {
            before
                .iter()
                .all(|p| !crate::util::alive(p.as_raw()))
                .then_some(())
        },
    );
}

/// `--redis-url`: a wrong password ends the runner at once with 87, a Redis
/// that does not answer with 86 after `redis.startup-timeout`; neither
/// shows the password, and neither starts a head.
#[test]
fn dev_with_a_redis_url_that_refuses_or_is_down_exits_87_or_86() {
    let dir = RayTest::unlocked("dev-url");
    let _redis = RedisGuard(&dir);
    let redis = RedisServer::start(&dir);
    fake_ray(&dir);
    let path = format!("{}:/usr/bin:/bin", dir.join("bin").display());
    let wrong = "not-the-password-4711";
    let down = free_port();
    for (url, code, why) in [
        (
            format!("redis://:{wrong}@127.0.0.1:{}", redis.port),
            87,
            "refused rayhead dev",
        ),
        (
            format!("redis://:{wrong}@127.0.0.1:{down}"),
            86,
            "did not answer within 2s",
        ),
    ] {
        let out = dir
            .rayhead()
            .env("PATH", &path)
            .args(["dev", "--state-dir", STATE, "--redis-url", &url])
            .args(["--set", "redis.startup-timeout=2s"])
            .run(LIMIT);
        out.assert_code(code).assert_no_secret(wrong);
        assert!(out.stderr.contains(why), "{}", out.dump());
        assert!(
            out.stderr.contains("redis://:<redacted>@127.0.0.1:"),
            "{}",
            out.dump()
        );
        assert!(
            !dir.join(&format!("{STATE}/logs/head.log")).exists(),
            "a head started"
        );
    }
    // No password in the URL: REDIS_PASSWORD's is used.
    let out = dir
        .rayhead()
        .env("PATH", &path)
        .env("REDIS_PASSWORD", wrong)
        .args(["dev", "--state-dir", STATE])
        .args([format!("--redis-url=redis://127.0.0.1:{}", redis.port)])
        .run(LIMIT);
    out.assert_code(87).assert_no_secret(wrong);
}
