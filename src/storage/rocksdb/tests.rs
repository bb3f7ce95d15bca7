//! The RocksDB checks against real directories (a tempdir), and the
//! numbers' rules as pure functions.

use super::*;
use crate::exit::Exit;

fn db(path: &Path, min: &str) -> Rocksdb {
    Rocksdb::new(path.to_path_buf(), Mark::parse(min).unwrap()).unwrap()
}

impl Rocksdb {
    /// The gate's look, on this thread, as a result.
    fn check(&self) -> Result<Disk, DiskProblem> {
        match self.look(true) {
            (Some(d), None) => Ok(d),
            (_, Some(p)) => Err(p),
            (None, None) => unreachable!("a look without numbers has a problem"),
        }
    }

    /// The monitor's look, on this thread.
    fn check_space(&self) -> Result<Disk, DiskProblem> {
        match self.look(false) {
            (Some(d), None) => Ok(d),
            (_, Some(p)) => Err(p),
            (None, None) => unreachable!("a look without numbers has a problem"),
        }
    }
}

#[test]
fn a_writable_directory_passes_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = db(t.path(), "1MiB").check().expect("usable");
    assert!(d.total_bytes >= d.free_bytes && d.free_bytes > 0);
    assert_eq!(d.min_free_bytes, Some(1 << 20));
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}

#[test]
fn missing_and_not_a_directory_are_permanent() {
    let t = tempfile::tempdir().unwrap();
    let p = db(&t.path().join("nope"), "off").check().unwrap_err();
    assert!(matches!(p, DiskProblem::Missing(_)) && p.is_permanent());
    assert!(p.to_string().contains("is its volume mounted"), "{p}");
    let f = t.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let p = db(&f, "off").check().unwrap_err();
    assert!(matches!(p, DiskProblem::NotADirectory(_)) && p.is_permanent());
    assert!(matches!(p.exit("r"), Exit::StorageUnusable(_)));
}

#[test]
fn a_mark_above_the_free_space_is_full_and_waits() {
    let t = tempfile::tempdir().unwrap();
    let p = db(t.path(), "99%").check();
    // 99% of a volume in use is not free.
    let p = p.unwrap_err();
    assert!(matches!(p, DiskProblem::Full { .. }) && !p.is_permanent());
    assert!(p.to_string().contains("gcs.storage-min-free"), "{p}");
    assert!(matches!(p.exit("r"), Exit::StorageFull(_)));
}

#[test]
fn an_unwritable_directory_is_named() {
    if nix::unistd::geteuid().is_root() {
        // root writes through mode bits; the read-only mount and the
        // full disk are the e2e tests' (a real tmpfs).
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let p = db(t.path(), "off").check().unwrap_err();
    assert!(matches!(p, DiskProblem::NotWritable { .. }), "{p}");
}

#[test]
fn a_killed_checks_leftover_is_removed_and_nothing_else() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join(".rayhead-write-check.1.0"), b"x").unwrap();
    std::fs::write(t.path().join("session_name"), b"s").unwrap();
    std::fs::create_dir(t.path().join(".rayhead-write-check.dir")).unwrap();
    db(t.path(), "off").check().unwrap();
    let mut left: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [".rayhead-write-check.dir", "session_name"]);
    // The monitor's check writes nothing.
    let before = std::fs::metadata(t.path()).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    db(t.path(), "off").check_space().unwrap();
    assert_eq!(
        std::fs::metadata(t.path()).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn unresolvable_paths_are_permanent_and_named() {
    let t = tempfile::tempdir().unwrap();
    let looped = t.path().join("loop");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let file = t.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    for path in [looped, file.join("gcs")] {
        let p = db(&path, "off").check().unwrap_err();
        assert!(matches!(p, DiskProblem::BadPath { .. }), "{p}");
        assert!(
            p.is_permanent() && p.to_string().contains("cannot be resolved"),
            "{p}"
        );
    }
}

#[test]
fn the_numbers_forbid_no_inodes_and_a_disk_with_nothing_left() {
    let at = Path::new("/data/gcs");
    let disk = |free_bytes, free_inodes, min_free_bytes| Disk {
        total_bytes: 100 << 20,
        free_bytes,
        free_inodes,
        min_free_bytes,
    };
    assert_eq!(disk(50 << 20, Some(10), Some(1 << 20)).problem(at), None);
    assert_eq!(disk(50 << 20, None, None).problem(at), None);
    let p = disk(50 << 20, Some(0), None).problem(at).unwrap();
    assert!(
        matches!(p, DiskProblem::NoInodes(_)) && !p.is_permanent(),
        "{p}"
    );
    assert!(matches!(p.exit("r"), Exit::StorageFull(_)));
    // gcs.storage-min-free off still means something must be left.
    let p = disk(0, None, None).problem(at).unwrap();
    assert!(p.to_string().contains("nothing is left"), "{p}");
    assert!(
        !p.is_margin_only(),
        "a disk with nothing left fails readiness"
    );
    let p = disk(1 << 20, None, Some(64 << 20)).problem(at).unwrap();
    assert!(p.is_margin_only(), "{p}");
    assert!(p.to_string().contains("1.0 MiB free"), "{p}");
}

#[test]
fn a_margin_is_a_warning_and_a_full_disk_a_problem() {
    let mut r = crate::state::Snapshot::ray_head("gcs".into(), None)
        .with_rocksdb("/data/gcs".into())
        .rocksdb
        .unwrap();
    let reading = |free| Reading {
        disk: Some(Disk {
            total_bytes: 100,
            free_bytes: free,
            free_inodes: Some(7),
            min_free_bytes: Some(10),
        }),
        used_bytes: Some(3),
        problem: Disk {
            total_bytes: 100,
            free_bytes: free,
            free_inodes: Some(7),
            min_free_bytes: Some(10),
        }
        .problem(Path::new("/data/gcs")),
    };
    record(&mut r, &reading(5));
    assert!(r.problem.is_none() && r.warning.is_some(), "{r:?}");
    assert_eq!(
        (r.free_bytes, r.free_inodes, r.used_bytes),
        (Some(5), Some(7), Some(3))
    );
    record(&mut r, &reading(0));
    assert!(r.problem.is_some() && r.warning.is_none(), "{r:?}");
    // A look without numbers keeps the last ones.
    record(
        &mut r,
        &Reading {
            disk: None,
            used_bytes: None,
            problem: Some(DiskProblem::Missing("/data/gcs".into())),
        },
    );
    assert_eq!((r.free_bytes, r.used_bytes), (Some(0), Some(3)));
}

#[test]
fn paths_in_messages_are_one_line_and_hide_secrets() {
    let p = DiskProblem::Missing("/data/gcs\n2026-01-01 INFO forged".into());
    let text = p.to_string();
    assert!(!text.contains('\n') && text.contains("\\n"), "{text}");
    let p = DiskProblem::Missing("/data/--redis-password=hunter2".into());
    assert!(!p.to_string().contains("hunter2"), "{p}");
}

#[tokio::test]
async fn checks_stuck_on_a_hung_volume_are_bounded() {
    let t = tempfile::tempdir().unwrap();
    let d = db(t.path(), "off");
    // As if MAX_CHECKS threads were stuck in the kernel.
    d.running.store(MAX_CHECKS, Ordering::SeqCst);
    let start = Instant::now();
    let r = d.read(Look::Gate, CHECK_TIMEOUT).await;
    assert!(start.elapsed() < Duration::from_secs(1), "answered at once");
    let p = r.problem.unwrap();
    assert!(
        p.to_string().contains("hung volume") && !p.is_permanent(),
        "{p}"
    );
    d.running.store(0, Ordering::SeqCst);
    let r = d.read(Look::Report, CHECK_TIMEOUT).await;
    assert_eq!(r.problem, None);
    assert!(r.used_bytes.is_some() && r.disk.is_some());
    assert_eq!(
        d.running.load(Ordering::SeqCst),
        0,
        "the slot is given back"
    );
}

#[test]
fn relative_paths_are_refused() {
    assert!(Rocksdb::new("data/gcs".into(), Mark::Off).is_err());
}

#[test]
fn used_bytes_counts_what_is_under_the_directory() {
    let t = tempfile::tempdir().unwrap();
    let empty = used_bytes(t.path()).unwrap();
    std::fs::create_dir(t.path().join("kv")).unwrap();
    std::fs::write(t.path().join("kv/000004.log"), vec![7u8; 1 << 20]).unwrap();
    let full = used_bytes(t.path()).unwrap();
    assert!(full >= empty + (1 << 20), "{empty} -> {full}");
    assert_eq!(used_bytes(&t.path().join("gone")), None);
    // A file (or a FIFO) is no database.
    assert_eq!(used_bytes(&t.path().join("kv/000004.log")), None);
}

#[test]
fn sizes_read_as_people_write_them() {
    assert_eq!(human(0), "0 B");
    assert_eq!(human(1023), "1023 B");
    assert_eq!(human(64 << 20), "64.0 MiB");
    assert_eq!(human(u64::MAX), "16777216.0 TiB");
}

#[tokio::test]
async fn the_gate_returns_at_once_on_a_missing_path_and_waits_out_a_full_one() {
    let t = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let e = db(&t.path().join("nope"), "off")
        .wait_ready(start + Duration::from_secs(30), "test")
        .await
        .unwrap_err();
    assert!(matches!(e, DiskProblem::Missing(_)));
    assert!(start.elapsed() < Duration::from_secs(10));
    let start = Instant::now();
    let e = db(t.path(), "99%")
        .wait_ready(start + Duration::from_secs(3), "test")
        .await
        .unwrap_err();
    assert!(matches!(e, DiskProblem::Full { .. }));
    assert!(start.elapsed() >= Duration::from_secs(2));
}

#[test]
fn a_mark_as_large_as_the_volume_is_a_config_error() {
    let disk = Disk {
        total_bytes: 100 << 20,
        free_bytes: 50 << 20,
        free_inodes: None,
        min_free_bytes: Some(100 << 20),
    };
    let p = disk.problem(Path::new("/data/gcs")).unwrap();
    assert!(
        matches!(p, DiskProblem::MarkUnreachable { .. }) && p.is_permanent(),
        "{p}"
    );
    assert_eq!(p.exit("r").code(), 64);
    assert!(p.to_string().contains("can never be free"), "{p}");
    // 100% of a real volume, through the gate.
    let t = tempfile::tempdir().unwrap();
    let p = db(t.path(), "100%").check().unwrap_err();
    assert!(matches!(p, DiskProblem::MarkUnreachable { .. }), "{p}");
}

#[test]
fn a_file_system_that_makes_no_files_is_not_a_missing_volume() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let p = db(Path::new("/proc"), "off").check().unwrap_err();
    assert!(!matches!(p, DiskProblem::Missing(_)), "{p}");
    assert!(p.is_permanent(), "{p}");
}

#[test]
fn a_database_ray_cannot_write_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("kv")).unwrap();
    std::fs::write(t.path().join("kv/LOCK"), b"").unwrap();
    db(t.path(), "off")
        .check()
        .expect("a writable database passes");
    if nix::unistd::geteuid().is_root() {
        // root writes through mode bits (an immutable or root-owned
        // database under another user is the case this is for).
        return;
    }
    std::fs::set_permissions(t.path().join("kv"), std::fs::Permissions::from_mode(0o500)).unwrap();
    let p = db(t.path(), "off").check().unwrap_err();
    assert!(
        matches!(p, DiskProblem::NotWritable { .. }) && p.to_string().contains("kv"),
        "{p}"
    );
    std::fs::set_permissions(t.path().join("kv"), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_linked_storage_path_is_sized() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("real")).unwrap();
    std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).unwrap();
    assert!(used_bytes(&t.path().join("link")).is_some());
}
