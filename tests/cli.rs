//! The command line and configuration errors, through the real binary.

use std::time::Duration;

use rayhead::config::keys::{Kind, KEYS};

use crate::util::Dir;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn version_and_help_exit_0() {
    let dir = Dir::new("version");
    let out = dir.rayhead().args(["--version"]).run(LIMIT);
    out.assert_code(0);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        out.dump()
    );
    let out = dir.rayhead().args(["help"]).run(LIMIT);
    out.assert_code(0);
    // clap lists each subcommand on its own line: "  run     Run COMMAND ...".
    for sub in ["run", "config", "probe", "redis-check", "redis-cleanup"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(sub) && l.starts_with("  ")),
            "no `{sub}` line in the help\n{}",
            out.dump()
        );
    }
}

#[test]
fn usage_errors_exit_64() {
    let dir = Dir::new("usage");
    let out = dir.rayhead().args(["frobnicate"]).run(LIMIT);
    out.assert_code(64);
    let out = dir.rayhead().args(["run"]).run(LIMIT);
    out.assert_code(64);
    assert!(out.stderr.contains("no command to run"), "{}", out.dump());
    let out = dir
        .rayhead()
        .args(["run", "--set", "novalue", "--", "true"])
        .run(LIMIT);
    out.assert_code(64);
    assert!(out.stderr.contains("KEY=VALUE"), "{}", out.dump());
}

#[test]
fn config_check_names_both_bad_keys_and_exits_64() {
    let dir = Dir::new("check-two");
    let file = dir.write(
        "bad.toml",
        "[init]\nstop-grace = \"soon\"\nsotp-command = \"x\"\n",
    );
    let out = dir
        .rayhead()
        .args(["config", "check", "--config"])
        .arg_path(&file)
        .run(LIMIT);
    out.assert_code(64);
    assert!(out.stderr.contains("init.stop-grace"), "{}", out.dump());
    assert!(out.stderr.contains("init.sotp-command"), "{}", out.dump());
    assert!(out.stderr.contains("\"soon\""), "{}", out.dump());
    assert!(out.stderr.contains("2 problems"), "{}", out.dump());
}

#[test]
fn config_check_prints_values_with_sources_and_redacts_secrets() {
    let dir = Dir::new("check-ok");
    let file = dir.write("ok.toml", "[gcs]\nmax-restarts = 3\n");
    let out = dir
        .rayhead()
        .env("REDIS_PASSWORD", "hunter2-do-not-print")
        .env("RAY_PORT", "6390")
        .args([
            "--log-format",
            "json",
            "config",
            "check",
            "--set",
            "init.stop-grace=9s",
            "-c",
        ])
        .arg_path(&file)
        .run(LIMIT);
    out.assert_code(0);
    let text = &out.stdout;
    assert!(
        !text.contains("hunter2") && !out.stderr.contains("hunter2"),
        "{}",
        out.dump()
    );
    for want in [
        "max-restarts = 3",
        "# file ",
        "gcs-port = 6390",
        "# env RAY_PORT",
        "stop-grace = \"9s\"",
        "# flag --set init.stop-grace",
        "format = \"json\"",
        "# flag --log-format",
        "password = \"<redacted>\"",
        "# env REDIS_PASSWORD",
    ] {
        assert!(text.contains(want), "missing {want:?}\n{}", out.dump());
    }
}

/// A bad value for a key of this kind, or `None` when any text is valid.
fn bad_value(name: &str, kind: Kind) -> Option<&'static str> {
    match (name, kind) {
        ("log.level", _) => Some("[[nope"),
        ("redis.namespace", _) => Some("a@b"),
        (_, Kind::Duration) => Some("soonish"),
        (_, Kind::Count { .. }) => Some("-1"),
        (_, Kind::Choice(_)) => Some("sideways"),
        (_, Kind::Signals) => Some("SIGNOPE"),
        (_, Kind::Argv) => Some("'unterminated"),
        (_, Kind::Listen) => Some("nowhere"),
        (_, Kind::Mark) => Some("half"),
        (_, Kind::Text | Kind::Secret) => None,
    }
}

/// Every key that can be wrong: a bad value from a flag, from the env and
/// from the file each give exit 64 and a message that names the key.
#[test]
fn each_bad_key_exits_64_and_is_named() {
    let dir = Dir::new("each-key");
    let mut tried = 0;
    for key in KEYS {
        let Some(bad) = bad_value(key.name, key.kind) else {
            continue;
        };
        tried += 1;
        let out = dir
            .rayhead()
            .args(["run", "--set", &format!("{}={bad}", key.name), "--", "true"])
            .run(LIMIT);
        out.assert_code(64);
        assert!(
            out.stderr.contains(key.name),
            "flag {}: {}",
            key.name,
            out.dump()
        );

        let out = dir
            .rayhead()
            .env(&key.env_name(), bad)
            .args(["config", "check"])
            .run(LIMIT);
        out.assert_code(64);
        assert!(
            out.stderr.contains(key.name),
            "env {}: {}",
            key.name,
            out.dump()
        );
        assert!(out.stderr.contains(&key.env_name()), "{}", out.dump());

        let file = dir.write(
            "key.toml",
            &format!("[{}]\n{} = {:?}\n", key.section(), key.leaf(), bad),
        );
        // The harness's env (RAYHEAD_LOG, ...) would beat the file.
        let out = dir
            .rayhead()
            .env_remove(&key.env_name())
            .env_remove("RAYHEAD_LOG")
            .args(["config", "check", "--config"])
            .arg_path(&file)
            .run(LIMIT);
        out.assert_code(64);
        assert!(
            out.stderr.contains(key.name),
            "file {}: {}",
            key.name,
            out.dump()
        );
    }
    assert!(tried >= 20, "only {tried} keys tried");
}

/// The exec probe believes only a server of its own user (or root): a
/// rayhead running as another user (here uid 65534, as a process that
/// squatted the socket would) answers `ok`, and `rayhead probe` refuses
/// the answer, fails, and says why, rather than ask probe.listen.
#[test]
fn the_exec_probe_refuses_another_users_socket() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        return crate::util::cannot_run(
            "the exec probe's peer test",
            "it needs root to run a server as another uid",
        );
    }
    let dir = Dir::new("probe-peer");
    let open = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open(dir.path(), 0o755);
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    open(&shared, 0o777);
    let sock = shared.join("probe.sock");
    let cmd = dir
        .rayhead()
        .args(["run", "--", "sleep", "60"])
        .env("RAYHEAD_PROBE_SOCKET", &sock);
    // SAFETY: setgid and setuid are async-signal-safe.
    let cmd = unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
            Ok(())
        })
    };
    let _squatter = cmd.spawn();
    crate::wait::eventually(LIMIT, "the other user's socket", || {
        rayhead::probe::client::query_socket(
            &rayhead::probe::socket::SocketPlace {
                path: sock.clone(),
                own_dir: None,
            },
            "/livez",
        )
        .map(drop)
    });
    let out = dir
        .rayhead()
        .args(["probe", "live"])
        .env("RAYHEAD_PROBE_SOCKET", &sock)
        .spawn_named("probe-")
        .wait(LIMIT);
    out.assert_code(1);
    assert!(
        out.stderr.contains("served by uid 65534") && out.stderr.contains("refusing"),
        "{}",
        out.dump()
    );
    assert!(!out.stdout.contains("ok"), "{}", out.dump());
}

/// A command whose words hold whitespace that is not a space (a `\r`, a
/// non-breaking space) once sent PID 1 into unbounded recursion in the
/// redactor; and the secrets of a command line, in every spelling, are
/// redacted from what rayhead logs of it (a plain command's own output is
/// its own: it is not rayhead's to rewrite).
#[test]
fn run_logs_any_command_line_without_crashing_or_leaking() {
    let dir = Dir::new("run-words");
    for script in [
        "true; echo https://x/y\r",
        "true; echo https://x/y\u{a0}",
        "echo a\u{2028}b\u{85}c\u{3000}\u{b}d",
    ] {
        let out = dir
            .rayhead()
            .args(["run", "--", "sh", "-c", script])
            .run(LIMIT);
        out.assert_code(0);
    }
    let secret = "Zq7hunter2secret";
    for argv in [
        vec![
            "redis-server",
            "--port",
            "0",
            "--requirepass",
            secret,
            "--version",
        ],
        vec!["redis-cli", "-a", secret, "--version"],
        vec![
            "sh",
            "-c",
            &format!(": --redis-password  {secret}"),
            "--masterauth",
        ],
        vec![
            "sh",
            "-c",
            &format!(": '{{\"redis_password\": \"a {secret}\"}}'"),
        ],
        vec![
            "sh",
            "-c",
            ": redis://:Ab/Zq7hunter2secret==@127.0.0.1,redis://:Zq7hunter2secret@h:1",
        ],
    ] {
        let out = dir.rayhead().args(["run", "--"]).args(argv).run(LIMIT);
        out.assert_no_secret(secret);
    }
}

/// A URL password with a `/` (the review's case), a password in the
/// second entry of a comma list, one cut at a comma: `redis-check` fails
/// on each without echoing it; `config check` lists the address and a
/// start command with a literal password, masked.
#[test]
fn addresses_and_config_never_show_a_password() {
    let dir = Dir::new("address-leaks");
    let secret = "Zq7Cd3secret";
    for address in [
        format!("redis://:Ab/{secret}==@127.0.0.1"),
        format!("rediss://u:{secret}?x#y@h:0"),
        format!("a:1,redis://:{secret}@b:2,c"),
        format!("redis://:{}@h:1", secret.replace("Cd3", ",Cd3")),
        format!("{secret}://u:p@h:1"),
    ] {
        let out = dir
            .rayhead()
            .env("RAY_REDIS_ADDRESS", &address)
            .args(["redis-check"])
            .run(LIMIT);
        assert_ne!(out.code, Some(0), "{address}: {}", out.dump());
        out.assert_no_secret(secret)
            .assert_no_secret("Zq7")
            .assert_no_secret("Cd3secret");
    }
    let out = dir
        .rayhead()
        .env(
            "RAY_REDIS_ADDRESS",
            format!("redis://:Ab/{secret}==@127.0.0.1:1"),
        )
        .env(
            "KUBERAY_GEN_RAY_START_CMD",
            format!("ray start --head --redis-password={secret} --x-token  '{secret} b'"),
        )
        .args(["config", "check"])
        .run(LIMIT);
    out.assert_code(0).assert_no_secret(secret);
    assert!(
        out.stdout.contains("redis://:<redacted>@127.0.0.1:1"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("--redis-password=<redacted>"),
        "{}",
        out.dump()
    );
}

/// A start command with what bash would act on and rayhead does not is a
/// config error (64) that names the construct, in the log and the
/// termination message, and never quotes the command's password.
#[test]
fn an_unsupported_start_command_is_a_named_config_error() {
    let dir = Dir::new("start-shell");
    let secret = "Zq7start-secret";
    for (text, named) in [
        (
            "ray start --head --redis-password={S} $(id)",
            "command substitution",
        ),
        (
            "ray start --head --redis-password={S} `id`",
            "command substitution",
        ),
        ("ray start --head --redis-password={S} ${X:-y}", "${...}"),
        ("ray start --head --redis-password={S} *", "glob"),
        (
            "ray start --head --redis-password={S}\nrm -rf /",
            "second command",
        ),
        (
            "ray start --head --redis-password='{S}",
            "unterminated single quote",
        ),
        (
            "ray start --head --redis-password={S} ${X",
            "unterminated ${",
        ),
    ] {
        let out = dir
            .rayhead()
            .env("KUBERAY_GEN_RAY_START_CMD", text.replace("{S}", secret))
            .args(["run"])
            .run(LIMIT);
        out.assert_code(64)
            .assert_no_secret(secret)
            .assert_termination_log("ray.start-command")
            .assert_termination_log(named);
    }
}
