//! GCS fault tolerance without Redis: Ray 2.60's embedded RocksDB
//! (`RAY_gcs_storage=rocksdb`, `RAY_gcs_storage_path`), as KubeRay 1.7 gives
//! a head with `gcsFaultToleranceOptions.backend: rocksdb`. No redis-server
//! anywhere in these tests.
//!
//! The disk's failures are real: a small tmpfs as the volume, filled from
//! outside, or mounted read-only. Mounting needs root; elsewhere those
//! tests say NOT RUN (and fail under CI=true).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use crate::ray_drivers::*;
use crate::ray_util::*;
use crate::util::{cannot_run, count_lines, free_port, Dir};
use crate::wait::{eventually, holds_for};

/// A tmpfs mounted at a path for the test; unmounted on drop, even when
/// the test fails, before the temp dir that holds it goes.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (NOT RUN said) where this user cannot mount.
    fn mount(at: &Path, options: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            cannot_run("a tmpfs volume", "mounting needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            cannot_run("a tmpfs volume", "mount -t tmpfs failed");
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }

    fn free(&self) -> u64 {
        let v = nix::sys::statvfs::statvfs(self.0.as_path()).unwrap();
        v.blocks_available() as u64 * v.fragment_size()
    }

    /// Fills the volume from outside until `leave` bytes are free.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.0.join("filler");
        let size = self.free().saturating_sub(leave);
        std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
        filler
    }

    /// Fills the volume from outside until a write fails for space: what a
    /// runaway writer beside the GCS does.
    fn fill_to_the_brim(&self) -> PathBuf {
        use std::io::Write;
        let brim = self.0.join("brim");
        let mut f = std::fs::File::create(&brim).unwrap();
        for chunk in [1 << 20, 64 << 10, 4 << 10] {
            while f.write_all(&vec![0u8; chunk]).is_ok() {}
        }
        let _ = f.sync_all();
        brim
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The env of a KubeRay 1.7 head with `backend: rocksdb`, and rayhead's
/// storage checks every second.
fn rocksdb_env(db: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("RAY_gcs_storage", "rocksdb".into()),
        ("RAY_gcs_storage_path", db.display().to_string()),
        ("RAYHEAD_GCS_STORAGE_CHECK_INTERVAL", "1s".into()),
    ]
}

/// A head on RocksDB at `db`, its output in `<name>stderr`; started with
/// `ports` so that a second head takes the first one's place.
fn start_rocksdb_head(
    dir: &Dir,
    name: &str,
    ports: NodePorts,
    db: &Path,
    extra: &[(&str, &str)],
) -> Head {
    let probe_port = free_port();
    let mut cmd = dir
        .rayhead()
        .env("PATH", path_with_venv())
        .env("RAY_DISABLE_USAGE_STATS", "1")
        .env(
            "KUBERAY_GEN_RAY_START_CMD",
            head_start_command(&ports, &dir.join(&format!("{name}-tmp")), false),
        )
        .env("RAYHEAD_RAY_MODE", "direct")
        .env("RAYHEAD_PROBE_LISTEN", format!("127.0.0.1:{probe_port}"))
        .env("RAYHEAD_PROBE_SOCKET", dir.join(&format!("{name}.sock")));
    for (k, v) in &manifest_env().head {
        cmd = cmd.env(k, v);
    }
    for (k, v) in rocksdb_env(db) {
        cmd = cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd = cmd.env(k, v);
    }
    let run = cmd.args(["run"]).spawn_named(name);
    let log = format!("{name}stderr");
    eventually(START, "the head to run", || {
        let err = dir.read(&log);
        assert!(!err.contains("rayhead exiting"), "rayhead exited:\n{err}");
        err.contains("to=\"running\"").then_some(())
    });
    Head {
        run,
        ports,
        namespace: String::new(),
        probe: format!("http://127.0.0.1:{probe_port}"),
    }
}

fn same_ports(p: &NodePorts) -> NodePorts {
    NodePorts {
        gcs: p.gcs,
        dashboard: p.dashboard,
        agent: p.agent,
        client: p.client,
        metrics: p.metrics,
    }
}

/// The guide's scenario on RocksDB: the detached counter survives a
/// SIGKILL, a SIGTERM and a SIGSTOP of gcs_server, then a head restart
/// (the raylet dies: exit 83; a new `rayhead run` on the same storage
/// path), with the actor still on the worker.
#[test]
fn rocksdb_counter_survives_gcs_kills_and_a_head_restart() {
    let dir = RayTest::new("rocksdb-guide");
    let db = dir.join("gcs");
    std::fs::create_dir(&db).unwrap();
    let head = start_rocksdb_head(&dir, "", NodePorts::new(), &db, &[]);
    let _worker = start_worker(&dir, &head);
    let addr = format!("127.0.0.1:{}", head.ports.gcs);
    python("examples/detached_actor.py", &addr, ACTOR).unwrap_or_else(|e| panic!("{e}"));
    let (v, nodes) = increment(&head);
    assert_eq!(v, 1);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    eventually(Duration::from_secs(30), "/readyz 200", || {
        head.probe("/readyz").0.then_some(())
    });
    let (_, verbose) = head.probe("/readyz?verbose");
    assert!(verbose.contains("[+] rocksdb ok"), "{verbose}");
    let status = eventually(Duration::from_secs(10), "the database's size", || {
        let (_, s) = head.probe("/status");
        let v: serde_json::Value = serde_json::from_str(&s).ok()?;
        (v["rocksdb"]["used_bytes"].as_u64()? > 0).then_some(v)
    });
    assert_eq!(status["gcs_storage"], "rocksdb", "{status:#}");
    assert_eq!(status["fault_tolerant"], true, "{status:#}");
    assert!(status["redis"].is_null(), "{status:#}");
    assert_eq!(status["rocksdb"]["path"], db.display().to_string());
    assert!(status["rocksdb"]["free_bytes"].as_u64().unwrap() > 0);
    let (_, metrics) = head.probe("/metrics");
    for m in [
        "rayhead_gcs_storage_free_bytes ",
        "rayhead_gcs_storage_used_bytes ",
        "rayhead_gcs_storage_info{backend=\"rocksdb\"} 1",
        "rayhead_gcs_storage_usable 1",
    ] {
        assert!(metrics.contains(m), "no {m} in\n{metrics}");
    }

    kill_gcs_and_wait(&dir, &head, Signal::SIGKILL, 1, Duration::from_secs(60));
    assert_eq!(increment(&head), (2, nodes.clone()));
    kill_gcs_and_wait(&dir, &head, Signal::SIGTERM, 2, Duration::from_secs(60));
    assert_eq!(increment(&head).0, 3);
    // SIGSTOP: the stopped GCS holds RocksDB's LOCK until rayhead kills
    // and reaps it; a new one started beside it would exit 1.
    kill_gcs_and_wait(&dir, &head, Signal::SIGSTOP, 3, Duration::from_secs(60));
    assert_eq!(increment(&head), (4, nodes.clone()));
    let log = dir.read("stderr");
    assert_eq!(count_lines(&log, "gcs_recovered"), 3, "{log}");
    assert_eq!(count_lines(&log, "GCS restart attempt failed"), 0, "{log}");

    // The head pod restarts on the same volume.
    let ports = same_ports(&head.ports);
    let daemons = head_processes(&head);
    kill(raylet_pid(&head), Signal::SIGKILL).unwrap();
    let out = head.run.wait(Duration::from_secs(60));
    out.assert_code(83);
    assert_all_dead("the first head's processes", &daemons);
    let head = start_rocksdb_head(&dir, "head2", ports, &db, &[]);
    let (v, after) = increment(&head);
    assert_eq!(
        v, 5,
        "the detached counter did not survive the head restart"
    );
    assert_eq!(after.len(), 2, "{after:?}");
    head.run.signal(Signal::SIGTERM);
    head.run.wait(Duration::from_secs(60)).assert_code(0);
}

/// A volume below `gcs.storage-min-free`: the running GCS still serves, so
/// readiness holds and `/status` warns; a GCS lost then is not restarted
/// into a loop but waits at the gate until space comes back, then
/// recovers. Filled to the brim, readiness goes down; the GCS lost then
/// waits until the recovery's deadline and rayhead exits 90, before the
/// head's own reconnect timeout.
#[test]
fn rocksdb_full_disk_waits_for_space_then_exits_90() {
    let dir = RayTest::new("rocksdb-full");
    let db = dir.join("gcs");
    let Some(volume) = Tmpfs::mount(&db, "size=96m,mode=0755") else {
        return;
    };
    let head = start_rocksdb_head(
        &dir,
        "",
        NodePorts::new(),
        &db,
        &[
            ("RAYHEAD_GCS_STORAGE_MIN_FREE", "24MiB"),
            ("RAY_gcs_rpc_server_reconnect_timeout_s", "20"),
        ],
    );
    eventually(Duration::from_secs(30), "/readyz 200", || {
        head.probe("/readyz").0.then_some(())
    });
    below_min_free_a_lost_gcs_waits_for_space(&dir, &head, &volume);
    full_to_the_brim_exits_90(head, &volume);
}

/// Below `gcs.storage-min-free`: `/status` warns, readiness holds; the GCS
/// lost then waits at the gate (none is started) until space comes back,
/// then recovers.
fn below_min_free_a_lost_gcs_waits_for_space(dir: &Dir, head: &Head, volume: &Tmpfs) {
    let filler = volume.fill(8 << 20);
    let status =
        || -> serde_json::Value { serde_json::from_str(&head.probe("/status").1).unwrap() };
    let warning = eventually(Duration::from_secs(15), "a warning in /status", || {
        status()["rocksdb"]["warning"].as_str().map(str::to_string)
    });
    assert!(warning.contains("below gcs.storage-min-free"), "{warning}");
    let (ready, body) = head.probe("/readyz?verbose");
    assert!(
        ready,
        "a serving GCS above 0 bytes free keeps readiness: {body}"
    );
    assert!(
        head.probe("/metrics")
            .1
            .contains("rayhead_gcs_storage_usable 0"),
        "a new GCS could not start there"
    );
    let recovered = count_lines(&dir.read("stderr"), "gcs_recovered");
    assert_eq!(recovered, 0);
    kill(gcs_pid(head), Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(15), "the gate to wait", || {
        dir.read("stderr")
            .contains("not usable yet: waiting before a GCS starts")
            .then_some(())
    });
    let (_, status) = head.probe("/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["phase"], "recovering", "{status}");
    assert!(
        v["rocksdb"]["warning"]
            .as_str()
            .unwrap_or("")
            .contains("is full"),
        "{status}"
    );
    let root = head.run.rayhead_pid();
    holds_for(
        Duration::from_secs(2),
        "no GCS started on a full disk",
        || find_comm(root, "gcs_server").is_empty(),
    );
    std::fs::remove_file(&filler).unwrap();
    eventually(
        Duration::from_secs(20),
        "recovery once space is back",
        || (count_lines(&dir.read("stderr"), "gcs_recovered") == 1).then_some(()),
    );
    eventually(Duration::from_secs(15), "/readyz 200 again", || {
        head.probe("/readyz").0.then_some(())
    });
}

/// Filled to the brim: readiness goes; the GCS lost then waits until the
/// recovery's deadline, and rayhead exits 90 before the raylet gives up.
fn full_to_the_brim_exits_90(head: Head, volume: &Tmpfs) {
    let _brim = volume.fill_to_the_brim();
    let why = eventually(
        Duration::from_secs(15),
        "/readyz 503 on a full disk",
        || {
            let (ready, body) = head.probe("/readyz?verbose");
            (!ready).then_some(body)
        },
    );
    assert!(why.contains("is full"), "{why}");
    let daemons = head_processes(&head);
    let t = Instant::now();
    // The GCS may already have died of the full disk by itself.
    if let Some(gcs) = find_comm(head.run.rayhead_pid(), "gcs_server").first() {
        let _ = kill(*gcs, Signal::SIGKILL);
    }
    let out = head.run.wait(Duration::from_secs(60));
    let took = t.elapsed();
    out.assert_code(90);
    assert!(
        out.termination_log.contains("is full")
            && out
                .termination_log
                .contains("until the recovery's deadline"),
        "{}",
        out.dump()
    );
    // Deadline: 20 s less gcs.deadline-margin (5 s); the raylet would give
    // up at 20 s.
    assert!(took < Duration::from_secs(20), "{took:?}\n{}", out.dump());
    assert_all_dead("the head's processes", &daemons);
}

/// What the start gate refuses, before `ray start` runs at all: each with
/// its own exit and reason (a mark the volume can never meet included).
#[test]
fn rocksdb_start_gate_refuses_a_missing_a_read_only_and_a_full_path() {
    let dir = RayTest::unlocked("rocksdb-gate");
    let head = |db: &Path, extra: &[(&str, &str)]| {
        let mut cmd = dir.rayhead().env("PATH", path_with_venv()).env(
            "KUBERAY_GEN_RAY_START_CMD",
            format!(
                "ray start --head --port={} --temp-dir={}",
                free_port(),
                dir.join("t").display()
            ),
        );
        for (k, v) in rocksdb_env(db) {
            cmd = cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd = cmd.env(k, v);
        }
        cmd.args(["run"]).run(Duration::from_secs(60))
    };
    let assert_refused = |out: &crate::util::Output, code: i32, why: &str| {
        out.assert_code(code);
        assert!(out.termination_log.contains(why), "{}", out.dump());
        assert!(!out.stderr.contains("to=\"running\""), "{}", out.dump());
        assert!(!dir.join("t").exists(), "ray start ran:\n{}", out.dump());
    };

    // No volume mounted: Ray would create the path in the container.
    let out = head(&dir.join("not-mounted/gcs"), &[]);
    assert_refused(&out, 89, "does not exist: is its volume mounted?");
    assert!(out.elapsed < Duration::from_secs(20), "{}", out.dump());
    let file = dir.write("a-file", "x");
    assert_refused(&head(&file, &[]), 89, "is not a directory");
    // Without a path Ray refuses too, later and less clearly.
    let out = dir
        .rayhead()
        .env("PATH", path_with_venv())
        .env(
            "KUBERAY_GEN_RAY_START_CMD",
            format!("ray start --head --port={}", free_port()),
        )
        .env("RAY_gcs_storage", "rocksdb")
        .args(["run"])
        .run(Duration::from_secs(30));
    out.assert_code(64);
    assert!(
        out.stderr.contains("RAY_gcs_storage_path"),
        "{}",
        out.dump()
    );

    let ro = dir.join("ro");
    if let Some(_ro) = Tmpfs::mount(&ro, "ro,size=1m") {
        assert_refused(&head(&ro, &[]), 89, "read-only file system");
    }
    let full = dir.join("full");
    if let Some(volume) = Tmpfs::mount(&full, "size=8m") {
        // The default mark (64MiB) on an 8 MiB volume can never be met: a
        // configuration error at once, not a wait.
        let out = head(&full, &[]);
        assert_refused(&out, 64, "can never be free");
        assert!(out.elapsed < Duration::from_secs(20), "{}", out.dump());
        volume.fill(1 << 20);
        let out = head(
            &full,
            &[
                ("RAYHEAD_GCS_STORAGE_STARTUP_TIMEOUT", "3s"),
                ("RAYHEAD_GCS_STORAGE_MIN_FREE", "4MiB"),
            ],
        );
        assert_refused(&out, 90, "is full");
        assert!(
            out.termination_log.contains("gcs.storage-startup-timeout"),
            "{}",
            out.dump()
        );
    }
}

/// `rayhead storage-check` reports the head's store as the head resolves
/// it, and says what is wrong.
#[test]
fn storage_check_reports_rocksdb() {
    let dir = Dir::new("rocksdb-check");
    let db = dir.join("gcs");
    std::fs::create_dir(&db).unwrap();
    std::fs::write(db.join("session_name"), "session_2026_12_02_x\n").unwrap();
    let run = |db: &Path, json: bool| {
        let mut cmd = dir.rayhead().args(["storage-check"]);
        if json {
            cmd = cmd.args(["--json"]);
        }
        for (k, v) in rocksdb_env(db) {
            cmd = cmd.env(k, v);
        }
        cmd.run(Duration::from_secs(20))
    };
    let out = run(&db, false);
    out.assert_code(0);
    for want in [
        "backend    rocksdb",
        "usable     yes",
        "session_2026_12_02_x",
    ] {
        assert!(out.stdout.contains(want), "{want}\n{}", out.dump());
    }
    let out = run(&db, true);
    out.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["usable"], true);
    assert!(v["free_bytes"].as_u64().unwrap() > 0);
    let out = run(&dir.join("gone"), false);
    out.assert_code(1);
    assert!(out.stdout.contains("usable     no: "), "{}", out.dump());
    let out = dir
        .rayhead()
        .args(["storage-check"])
        .run(Duration::from_secs(20));
    out.assert_code(64);
    assert!(out.stderr.contains("in memory"), "{}", out.dump());
}
