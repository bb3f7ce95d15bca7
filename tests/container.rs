//! The images, run for real: podman (with runc) builds the carrier image from
//! `make dist`'s static binary, runs its `install` into a volume as the init
//! container does, and a second container runs the installed binary as PID 1,
//! as root and as uid 1000: exit codes, `podman stop`, `podman healthcheck`,
//! `--restart on-failure`, and the guide's scenario with real Ray inside.
//!
//! The second container's root is a skeleton made here with the host's `/usr`
//! mounted read-only (and, for Ray, the project's venv and its Python at their
//! own paths): no image is pulled, nothing leaves the machine.
//!
//! Where podman cannot run (no podman, not root), each test says so on its
//! output and passes; under `CI=true` it fails instead.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::dev_util::fake_ray;
use crate::ray_drivers::guide_scenario_with;
use crate::ray_util::{find_comm, RayTest};
use crate::util::{carrier_stage, dist_bin, Dir};
use crate::wait::{eventually, poll_until};

/// Any one podman call; a hung one fails the test with what it printed.
const PODMAN_LIMIT: Duration = Duration::from_secs(120);

/// podman with runc and a storage of its own in a temp dir (removed with
/// it), so that tests never touch the machine's images or each other's.
pub struct Podman {
    storage: tempfile::TempDir,
}

impl Podman {
    /// Podman, or `None` where it cannot run here, said on the test's
    /// output; under `CI=true` that is a failure, never a silent skip.
    pub fn new() -> Option<Podman> {
        match Self::available() {
            Ok(()) => Some(Podman {
                storage: tempfile::Builder::new()
                    .prefix("rayhead-podman-")
                    .tempdir()
                    .unwrap(),
            }),
            Err(why) => {
                crate::util::cannot_run("the container tests", &why);
                None
            }
        }
    }

    fn available() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("they run podman as root".into());
        }
        for tool in ["podman", "runc"] {
            let ok = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("no {tool} (make setup installs it)"));
            }
        }
        Ok(())
    }

    /// The global options: runc (crun fails on this machine's hybrid cgroup
    /// layout), cgroupfs (no systemd), vfs in the temp dir.
    fn global_args(&self) -> Vec<String> {
        let s = self.storage.path();
        vec![
            format!("--root={}", s.join("root").display()),
            format!("--runroot={}", s.join("run").display()),
            "--storage-driver=vfs".into(),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=file".into(),
            "--runtime=runc".into(),
        ]
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(self.global_args())
            .env("TMPDIR", self.storage.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs podman with `args` to its end; the output, whatever the code.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut child = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podman");
        if poll_until(PODMAN_LIMIT, None, || child.try_wait().unwrap()).is_err() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "podman {args:?} hung for {PODMAN_LIMIT:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        child.wait_with_output().unwrap()
    }

    /// `run`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The carrier image, built from the static binary with the Dockerfile's
    /// carrier stage (its `COPY --from=build` reading the binary from the
    /// build context instead).
    pub fn build_carrier(&self, ctx: &Path) -> &'static str {
        const TAG: &str = "localhost/rayhead-carrier:test";
        std::fs::create_dir_all(ctx).unwrap();
        std::fs::copy(dist_bin("DIST_BIN"), ctx.join("rayhead")).unwrap();
        let stage = carrier_stage();
        let copy = "COPY --from=build /rayhead /rayhead";
        assert!(stage.contains(&copy), "{stage:?}");
        let file: Vec<&str> = stage
            .iter()
            .map(|l| match *l {
                "FROM scratch AS carrier" => "FROM scratch",
                l if l == copy => "COPY rayhead /rayhead",
                l => l,
            })
            .collect();
        std::fs::write(ctx.join("Containerfile"), file.join("\n") + "\n").unwrap();
        self.ok(&[
            "build",
            "--quiet",
            "--network=none",
            "-t",
            TAG,
            "-f",
            &ctx.join("Containerfile").display().to_string(),
            &ctx.display().to_string(),
        ]);
        TAG
    }

    /// The init container: the carrier's `install` into `volume` (made
    /// writable by all, as Kubernetes makes an emptyDir), as the image's
    /// own user; the installed file's path on the host.
    pub fn install(&self, carrier: &str, volume: &Path) -> PathBuf {
        std::fs::create_dir_all(volume).unwrap();
        std::fs::set_permissions(volume, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut args = vec!["run".to_string(), "--rm".into(), "--network=none".into()];
        args.extend(limits());
        args.extend([
            "-v".into(),
            format!("{}:/rayhead-bin", volume.display()),
            carrier.into(),
            "/rayhead".into(),
            "install".into(),
            "/rayhead-bin/rayhead".into(),
        ]);
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        volume.join("rayhead")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers a failed test left, before their storage goes.
        let _ = self
            .command()
            .args(["rm", "--all", "--force", "--time=0"])
            .output();
    }
}

/// A container's root: the host's `/usr` is mounted on it read-only, with
/// Debian's merged-/usr links, a 1777 `/tmp`, and users 0 and 1000.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["usr", "etc", "proc", "sys", "dev", "run", "root", "rayhead"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    for l in ["bin", "sbin", "lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nray:x:1000:100:ray:/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nusers:x:100:\n").unwrap();
    root
}

/// The options of a container that runs the installed rayhead from
/// `volume`, as `user`.
/// The root file system itself goes last, where an image would (podman's
/// `--rootfs` is a flag that makes the image argument a directory).
fn head_options(volume: &Path, user: &str) -> Vec<String> {
    let mut opts = limits();
    opts.extend([
        format!("--user={user}"),
        "--network=none".into(),
        "-v".into(),
        "/usr:/usr:ro".into(),
        "-v".into(),
        format!("{}:/rayhead:ro", volume.display()),
    ]);
    opts
}

/// runc sets the container's limits itself, and fails on podman's defaults
/// above this process's hard limits: explicit ones within them. (The process
/// count is the user's on the whole host: 4096 is plenty for these tests
/// unless uid 1000 runs that many processes beside them.)
fn limits() -> Vec<String> {
    use nix::sys::resource::{getrlimit, Resource};
    let nofile = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(_, hard)| hard.min(65536));
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        "--ulimit=nproc=4096:4096".into(),
    ]
}

/// Removes a container, however the test ends.
struct Removed<'a>(&'a Podman, String);

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .command()
            .args(["rm", "--force", "--time=0", &self.1])
            .output();
    }
}

/// A carrier built and installed from, in a test dir: the podman, the
/// volume the binary was installed into, the container root.
struct Installed {
    podman: Podman,
    volume: PathBuf,
    rootfs: PathBuf,
}

fn installed(dir: &Dir) -> Option<Installed> {
    let podman = Podman::new()?;
    let carrier = podman.build_carrier(&dir.join("carrier"));
    let volume = dir.join("rayhead-bin");
    podman.install(carrier, &volume);
    Some(Installed {
        podman,
        volume,
        rootfs: rootfs(dir.path()),
    })
}

impl Installed {
    /// `podman run --rm` of the installed rayhead with `args`, as `user`:
    /// the exit code and the output.
    fn run(&self, user: &str, args: &[&str]) -> (i32, String) {
        let mut all: Vec<String> = vec!["run".into(), "--rm".into()];
        all.extend(head_options(&self.volume, user));
        all.extend(self.rootfs_args());
        all.push("/rayhead/rayhead".into());
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = self.podman.run(&all);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// Starts the installed rayhead detached, named `name`, with `extra`
    /// options before the image; removed when the guard drops.
    fn start(&self, name: &str, user: &str, extra: &[&str], args: &[&str]) -> Removed<'_> {
        let mut all: Vec<String> = vec!["run".into(), "-d".into(), format!("--name={name}")];
        all.extend(head_options(&self.volume, user));
        all.extend(extra.iter().map(|s| s.to_string()));
        all.extend(self.rootfs_args());
        all.push("/rayhead/rayhead".into());
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.podman.ok(&all);
        Removed(&self.podman, name.to_string())
    }

    fn rootfs_args(&self) -> [String; 2] {
        ["--rootfs".into(), self.rootfs.display().to_string()]
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        self.podman.ok(&["inspect", "--format", format, name])
    }
}

#[test]
fn container_the_carrier_installs_a_static_binary_into_a_volume() {
    let dir = Dir::new("container-install");
    let Some(inst) = installed(&dir) else { return };
    let bin = inst.volume.join("rayhead");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(dist_bin("DIST_BIN")).unwrap(),
        "the installed file is not the carrier's binary"
    );
    let meta = std::fs::metadata(&bin).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    // The carrier's non-root user wrote it.
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65532);
    // Nothing but the binary is left in the volume.
    let names: Vec<_> = std::fs::read_dir(&inst.volume)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["rayhead"]);
}

#[test]
fn container_the_installed_binary_passes_exit_codes_as_pid1_as_root_and_uid_1000() {
    let dir = Dir::new("container-codes");
    let Some(inst) = installed(&dir) else { return };
    for user in ["0", "1000"] {
        let (code, out) = inst.run(user, &["run", "--", "/bin/sh", "-c", "exit 7"]);
        assert_eq!(code, 7, "as {user}: {out}");
        let (code, out) = inst.run(user, &["run", "--", "/bin/sh", "-c", "kill -9 $$"]);
        assert_eq!(code, 137, "as {user}: {out}");
        // rayhead is PID 1 there, as that user.
        let (code, out) = inst.run(
            user,
            &[
                "run",
                "--",
                "/bin/sh",
                "-c",
                "test \"$(cat /proc/1/comm)\" = rayhead && test \"$(id -u)\" = \"$0\"",
                user,
            ],
        );
        assert_eq!(code, 0, "as {user}: {out}");
    }
}

/// A child that ends on SIGTERM with 0, and a grandchild that ignores it:
/// rayhead's grace ends the grandchild, and the container exits 0 long
/// before podman's own 30 s would SIGKILL it (137).
#[test]
fn container_podman_stop_ends_the_tree_within_the_grace() {
    let dir = Dir::new("container-stop");
    let Some(inst) = installed(&dir) else { return };
    for user in ["0", "1000"] {
        let name = format!("rayhead-stop-{user}");
        let _c = inst.start(
            &name,
            user,
            &[],
            &[
                "run",
                "--set",
                "init.stop-grace=2s",
                "--",
                "/bin/sh",
                "-c",
                "trap 'exit 0' TERM; (trap '' TERM; exec sleep 1000) & while :; do sleep 0.1; done",
            ],
        );
        let pid1: i32 = inst.inspect(&name, "{{.State.Pid}}").parse().unwrap();
        let sleeper = eventually(Duration::from_secs(30), "the grandchild", || {
            find_comm(Pid::from_raw(pid1), "sleep")
                .into_iter()
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| c.contains("1000"))
                })
        });
        let t = Instant::now();
        inst.podman.ok(&["stop", "--time=30", &name]);
        let took = t.elapsed();
        assert_eq!(inst.inspect(&name, "{{.State.ExitCode}}"), "0", "as {user}");
        assert!(
            took < Duration::from_secs(25),
            "as {user}: podman stop took {took:?}: rayhead did not end the tree itself"
        );
        assert!(!crate::util::alive(sleeper.as_raw()), "as {user}");
    }
}

/// `podman healthcheck run` with `rayhead probe live` over the exec probe's
/// Unix socket, at its default path: healthy while rayhead serves, unhealthy
/// while it is stopped (so the check is not hollow), healthy again after.
#[test]
fn container_healthcheck_runs_the_exec_probe() {
    let dir = Dir::new("container-health");
    let Some(inst) = installed(&dir) else { return };
    for user in ["0", "1000"] {
        let name = format!("rayhead-health-{user}");
        let _c = inst.start(
            &name,
            user,
            &[
                r#"--health-cmd=["/rayhead/rayhead", "probe", "live"]"#,
                "--health-interval=disable",
            ],
            &["run", "--", "/bin/sh", "-c", "while :; do sleep 0.1; done"],
        );
        let pid1 = Pid::from_raw(inst.inspect(&name, "{{.State.Pid}}").parse().unwrap());
        let check = || inst.podman.run(&["healthcheck", "run", &name]);
        eventually(Duration::from_secs(30), "healthy", || {
            check().status.success().then_some(())
        });
        kill(pid1, Signal::SIGSTOP).unwrap();
        let out = check();
        let _ = kill(pid1, Signal::SIGCONT);
        assert!(
            !out.status.success(),
            "as {user}: healthy while rayhead is stopped: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        eventually(Duration::from_secs(30), "healthy again", || {
            check().status.success().then_some(())
        });
    }
}

/// A fake Ray whose raylet dies: rayhead exits 83, and podman's
/// `--restart on-failure` (the kubelet's role) starts the container again.
#[test]
fn container_restart_on_failure_after_exit_83() {
    let dir = RayTest::unlocked("container-restart");
    let Some(inst) = installed(&dir) else { return };
    fake_ray(&dir);
    // Every gcs_server started lives (the second start is the restart's).
    dir.write("gcs-lives", "");
    let d = dir.path().display().to_string();
    let name = "rayhead-restart";
    let _c = inst.start(
        name,
        "0",
        &[
            "--restart=on-failure",
            "-v",
            &format!("{d}:{d}"),
            "-e",
            &format!("D={d}"),
            "-e",
            &format!("PATH={d}/bin:/usr/bin:/bin"),
            "-e",
            &format!("KUBERAY_GEN_RAY_START_CMD={d}/bin/ray start --head --block --port=1"),
            "-e",
            &format!("RAYHEAD_INIT_TERMINATION_LOG={d}/termination-log"),
        ],
        &["run"],
    );
    let raylet = |pid1: i32| {
        eventually(Duration::from_secs(30), "the fake raylet", || {
            find_comm(Pid::from_raw(pid1), "raylet").first().copied()
        })
    };
    let first: i32 = inst.inspect(name, "{{.State.Pid}}").parse().unwrap();
    kill(raylet(first), Signal::SIGKILL).unwrap();
    let second = eventually(Duration::from_secs(60), "the restarted container", || {
        let restarts = inst.inspect(name, "{{.RestartCount}}");
        let pid: i32 = inst.inspect(name, "{{.State.Pid}}").parse().ok()?;
        (restarts == "1" && pid != 0 && pid != first).then_some(pid)
    });
    // The first run ended with 83: the raylet's death, in its message.
    let log = dir.read("termination-log");
    assert!(
        log.contains("the head raylet") && log.contains("SIGKILL"),
        "{log}"
    );
    // The new rayhead started the fake Ray again.
    raylet(second);
}

/// The guide's scenario with real Ray inside the container: the static
/// binary as PID 1 of the head container (host network, the host's `/usr`,
/// the project's venv and its Python mounted read-only at their own paths),
/// Redis and the worker outside, as other pods. The counter survives a
/// SIGKILL, a SIGTERM and a SIGSTOP of gcs_server, and `podman stop` ends it
/// all with exit 0.
#[test]
fn e2e_container_the_static_binary_runs_the_guide_scenario_as_pid1() {
    let dir = RayTest::new("e2e-container");
    let Some(inst) = installed(&dir) else { return };
    let venv = crate::ray_util::venv_bin().parent().unwrap().to_path_buf();
    let python = Command::new(venv.join("bin/python"))
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .unwrap();
    let python = String::from_utf8(python.stdout).unwrap().trim().to_string();
    let d = dir.path().display().to_string();
    let name = "rayhead-e2e";
    let mut opts: Vec<String> = vec!["run".into(), "--rm".into(), format!("--name={name}")];
    opts.extend(head_options(&inst.volume, "0"));
    opts.retain(|o| o != "--network=none");
    // The venv's scripts name its python by the venv's real path: a venv
    // that is a link is mounted at both.
    let real_venv = venv.canonicalize().unwrap().display().to_string();
    let mut mounts = vec![
        (venv.display().to_string(), "ro"),
        (python.clone(), "ro"),
        (d.clone(), "rw"),
    ];
    if real_venv != mounts[0].0 {
        mounts.push((real_venv, "ro"));
    }
    for (host, mode) in mounts {
        opts.extend(["-v".into(), format!("{host}:{host}:{mode}")]);
    }
    opts.extend([
        "--network=host".to_string(),
        "--shm-size=1g".into(),
        // The test's environment for rayhead (ports, Redis, the start
        // command) is the wrapper's own.
        "--env-host".into(),
        format!("--workdir={d}"),
    ]);
    opts.extend(inst.rootfs_args());
    opts.push("/rayhead/rayhead".into());
    let mut wrapper = String::from("#!/bin/sh\nexec podman");
    for a in inst.podman.global_args().iter().chain(&opts) {
        wrapper.push_str(&format!(" '{a}'"));
    }
    wrapper.push_str(" \"$@\"\n");
    let script = dir.write("podman-rayhead", &wrapper);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let find = {
        let inst_global = inst.podman.global_args();
        move || {
            let out = Command::new("podman")
                .args(&inst_global)
                .args(["inspect", "--format", "{{.State.Pid}}", name])
                .output()
                .ok()?;
            let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            (pid > 0).then(|| Pid::from_raw(pid))
        }
    };
    let dir = dir.running(script).located_by(find);
    let _gone = Removed(&inst.podman, name.to_string());
    guide_scenario_with(&dir, |_head| {
        inst.podman.ok(&["stop", "--time=30", name]);
    });
}
