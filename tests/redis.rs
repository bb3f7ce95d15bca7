//! `rayhead redis-check` and `rayhead redis-cleanup` against real
//! redis-server processes, each on a free port in the test's own dir.

use std::time::{Duration, Instant};

use crate::redis_util::RedisServer;
use crate::util::{free_port, Dir, Output, TestCommand};

const LIMIT: Duration = Duration::from_secs(120);

fn with_redis(dir: &Dir, r: &RedisServer, args: &[&str]) -> TestCommand {
    let mut cmd = dir.rayhead().env("RAY_REDIS_ADDRESS", r.address());
    if !r.password.is_empty() {
        cmd = cmd.env("REDIS_PASSWORD", &r.password);
    }
    cmd.args(args)
}

fn check(dir: &Dir, r: &RedisServer) -> Output {
    with_redis(dir, r, &["redis-check"]).run(LIMIT)
}

#[test]
fn check_a_healthy_redis_with_password_and_tables() {
    let dir = Dir::new("check-ok");
    let r = RedisServer::start(&dir);
    r.cli(&["HSET", "RAYns1@NODE", "a", "1", "b", "2"]);
    let out = with_redis(&dir, &r, &["redis-check"])
        .env("RAY_external_storage_namespace", "ns1")
        .run(LIMIT);
    out.assert_code(0);
    let words = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "role master",
        "table NODE 2 fields",
        "table JOB absent",
        "verdict healthy",
    ] {
        assert!(words.contains(want), "missing {want:?}\n{}", out.dump());
    }
    out.assert_no_secret(&r.password);
    let out = with_redis(&dir, &r, &["redis-check", "--json"]).run(LIMIT);
    out.assert_code(0).assert_no_secret(&r.password);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["up"], true);
    assert_eq!(v["aof"], true);
}

#[test]
fn check_without_auth_and_with_an_acl_user() {
    let dir = Dir::new("check-auth");
    let open = RedisServer::start_with(&dir, "", &[]);
    check(&dir, &open).assert_code(0);
    let acl = RedisServer::start_with(
        &dir,
        "default-pw",
        &["--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all"],
    );
    // The credentials in the env, or in the URL; a wrong password in the
    // URL is reported, and no password is shown either way.
    let in_url = |pw: &str| format!("redis://alice:{pw}@127.0.0.1:{}", acl.port);
    let cases = [
        (acl.address(), Some(("alice", "alice-pw")), "alice-pw", 0),
        (in_url("alice-pw"), None, "alice-pw", 0),
        (in_url("wrong-url-pw"), None, "wrong-url-pw", 1),
    ];
    for (address, env, secret, code) in cases {
        let mut cmd = dir.rayhead().env("RAY_REDIS_ADDRESS", address);
        if let Some((user, pw)) = env {
            cmd = cmd.env("REDIS_USERNAME", user).env("REDIS_PASSWORD", pw);
        }
        let out = cmd.args(["redis-check"]).run(LIMIT);
        out.assert_code(code).assert_no_secret(secret);
        if code != 0 {
            assert!(
                out.stdout.contains("authentication failed"),
                "{}",
                out.dump()
            );
        }
    }
}

#[test]
fn wrong_password_fails_fast_and_unreachable_within_the_bound() {
    let dir = Dir::new("check-fail");
    let r = RedisServer::start(&dir);
    let t = Instant::now();
    let out = dir
        .rayhead()
        .env("RAY_REDIS_ADDRESS", r.address())
        .env("REDIS_PASSWORD", "not-the-password")
        .args(["redis-check"])
        .run(LIMIT);
    out.assert_code(1);
    assert!(t.elapsed() < Duration::from_secs(10), "{}", out.dump());
    assert!(
        out.stdout.contains("authentication failed"),
        "{}",
        out.dump()
    );
    out.assert_no_secret("not-the-password");
    let t = Instant::now();
    let out = dir
        .rayhead()
        .env("RAY_REDIS_ADDRESS", format!("127.0.0.1:{}", free_port()))
        .args(["redis-check"])
        .run(LIMIT);
    out.assert_code(1);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(out.stdout.contains("refused"), "{}", out.dump());
}

#[test]
fn a_replica_is_unhealthy_with_the_reason() {
    let dir = Dir::new("check-replica");
    let master = RedisServer::start(&dir);
    let port = master.port.to_string();
    let replica = RedisServer::start_with(
        &dir,
        &master.password,
        &[
            "--replicaof",
            "127.0.0.1",
            &port,
            "--masterauth",
            &master.password,
        ],
    );
    let out = check(&dir, &replica);
    out.assert_code(1);
    assert!(out.stdout.contains("is a replica"), "{}", out.dump());
}

#[test]
fn eviction_and_no_persistence_are_warnings_and_forbidden_config_is_a_note() {
    let dir = Dir::new("check-warn");
    let r = RedisServer::start_with(
        &dir,
        "pw",
        &["--appendonly", "no", "--maxmemory-policy", "allkeys-lru"],
    );
    let out = check(&dir, &r);
    out.assert_code(2);
    assert_eq!(out.stdout.matches("WARNING").count(), 2, "{}", out.dump());
    assert!(out.stdout.contains("allkeys-lru") && out.stdout.contains("no persistence"));

    // The user may turn off what their managed Redis forbids: no warning can
    // come from checks that did not run, and the notes say so.
    let out = with_redis(
        &dir,
        &r,
        &["redis-check", "--set", "redis.skip-checks=info config"],
    )
    .run(LIMIT);
    out.assert_code(0);
    assert!(
        out.stdout.contains("redis.skip-checks has info"),
        "{}",
        out.dump()
    );
    let out = with_redis(
        &dir,
        &r,
        &["redis-check", "--set", "redis.skip-checks=everything"],
    )
    .run(LIMIT);
    out.assert_code(64);
    assert!(out.stderr.contains("redis.skip-checks"), "{}", out.dump());

    let r = RedisServer::start_with(&dir, "pw", &["--rename-command", "CONFIG", ""]);
    let out = check(&dir, &r);
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("NOTE     cannot check RDB save points: CONFIG is disabled"),
        "{}",
        out.dump()
    );
}

#[test]
fn a_paused_redis_trips_the_command_timeout() {
    let dir = Dir::new("check-pause");
    let r = RedisServer::start(&dir);
    // Long enough that the pause outlives the whole check, whatever the load.
    assert_eq!(r.cli(&["CLIENT", "PAUSE", "30000", "ALL"]).trim(), "OK");
    let t = Instant::now();
    let out = with_redis(
        &dir,
        &r,
        &["redis-check", "--set", "redis.command-timeout=300ms"],
    )
    .run(LIMIT);
    out.assert_code(1);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert!(out.stdout.contains("timed out"), "{}", out.dump());
}

fn count(r: &RedisServer, pattern: &str) -> usize {
    r.cli(&["--scan", "--pattern", pattern]).lines().count()
}

#[test]
fn cleanup_deletes_only_its_namespace() {
    let dir = Dir::new("cleanup");
    let r = RedisServer::start_with(&dir, "pw", &["--enable-debug-command", "yes"]);
    r.cli(&["DEBUG", "POPULATE", "50000", "RAYtarget@NODE"]);
    r.cli(&["DEBUG", "POPULATE", "50000", "RAYother@NODE"]);
    assert_eq!(r.cli(&["DBSIZE"]).trim(), "100000");
    let run = |ns: &str, extra: &[&str]| {
        let mut args = vec!["redis-cleanup"];
        args.extend_from_slice(extra);
        with_redis(&dir, &r, &args)
            .env("RAY_external_storage_namespace", ns)
            .run(LIMIT)
    };
    let out = run("target", &["--dry-run"]);
    out.assert_code(0);
    assert_eq!(out.stdout.lines().count(), 50000);
    assert!(out.stderr.contains("50000 key(s)"), "{}", out.dump());
    assert_eq!(
        r.cli(&["DBSIZE"]).trim(),
        "100000",
        "a dry run deletes nothing"
    );

    let out = run("target", &[]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("deleted 50000 key(s)"),
        "{}",
        out.dump()
    );
    assert_eq!(
        count(&r, "RAYother@*"),
        50000,
        "the other namespace is untouched"
    );
    assert_eq!(count(&r, "RAYtarget@*"), 0);

    let out = run("target", &[]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("deleted 0 key(s)"),
        "idempotent: {}",
        out.dump()
    );

    let out = with_redis(&dir, &r, &["redis-cleanup"]).run(LIMIT);
    out.assert_code(64);
    assert!(
        out.stderr.contains("refuses to clean every namespace"),
        "{}",
        out.dump()
    );
    assert_eq!(count(&r, "RAYother@*"), 50000);
}

#[test]
fn cleanup_escapes_glob_characters_and_falls_back_to_del() {
    let dir = Dir::new("cleanup-glob");
    let r = RedisServer::start_with(&dir, "pw", &["--rename-command", "UNLINK", ""]);
    // Unescaped, RAYa*b?[c]@* would match the second namespace too.
    for key in [
        "RAYa*b?[c]@NODE",
        "RAYa*b?[c]@JOB",
        "RAYaZZbYc@NODE",
        "RAYa@NODE",
    ] {
        r.cli(&["HSET", key, "f", "v"]);
    }
    let out = with_redis(&dir, &r, &["redis-cleanup"])
        .env("RAY_external_storage_namespace", "a*b?[c]")
        .run(LIMIT);
    out.assert_code(0);
    assert!(out.stderr.contains("deleted 2 key(s)"), "{}", out.dump());
    assert_eq!(count(&r, "RAYaZZbYc@*"), 1);
    assert_eq!(count(&r, "RAYa@*"), 1);
}

/// A key that is not UTF-8 (Ray's keys hold binary ids) made every run
/// fail; it is listed, counted and deleted like any other.
#[test]
fn cleanup_deletes_keys_that_are_not_utf8() {
    let dir = Dir::new("cleanup-bytes");
    let r = RedisServer::start(&dir);
    // Lua's decimal escapes write the bytes redis-cli's arguments cannot.
    for key in [
        "RAYns@\\255\\254NODE",
        "RAYns@\\0\\10x",
        "RAYns@JOB",
        "RAYother@\\255",
    ] {
        r.cli(&[
            "EVAL",
            &format!("return redis.call('SET', '{key}', 'v')"),
            "0",
        ]);
    }
    assert_eq!(r.cli(&["DBSIZE"]).trim(), "4");
    let run = |extra: &[&str]| {
        let mut args = vec!["redis-cleanup"];
        args.extend_from_slice(extra);
        with_redis(&dir, &r, &args)
            .env("RAY_external_storage_namespace", "ns")
            .run(LIMIT)
    };
    let out = run(&["--dry-run"]);
    out.assert_code(0);
    let mut listed: Vec<&str> = out.stdout.lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        ["RAYns@JOB", "RAYns@\\x00\\x0ax", "RAYns@\\xff\\xfeNODE"],
        "{}",
        out.dump()
    );
    let out = run(&[]);
    out.assert_code(0).assert_no_secret(&r.password);
    assert!(out.stderr.contains("deleted 3 key(s)"), "{}", out.dump());
    assert_eq!(r.cli(&["DBSIZE"]).trim(), "1", "the other namespace stays");
}

/// A redis-server in Sentinel mode, killed on drop.
struct Sentinel {
    port: u16,
    child: std::process::Child,
}

impl Sentinel {
    fn start(dir: &Dir, masters: &[&RedisServer]) -> Sentinel {
        let port = free_port();
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\nrequirepass {}\ndir {}\n",
            masters[0].password,
            dir.path().display()
        );
        for (i, m) in masters.iter().enumerate() {
            conf.push_str(&format!(
                "sentinel monitor m{i} 127.0.0.1 {} 1\nsentinel auth-pass m{i} {}\n",
                m.port, m.password
            ));
        }
        let path = dir.write(&format!("sentinel-{port}.conf"), &conf);
        let child = std::process::Command::new("redis-server")
            .arg(&path)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let s = Sentinel { port, child };
        crate::wait::eventually(LIMIT, "the sentinel", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        s
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_sentinel_leads_to_its_one_master() {
    let dir = Dir::new("sentinel");
    let master = RedisServer::start(&dir);
    let sentinel = Sentinel::start(&dir, &[&master]);
    let out = dir
        .rayhead()
        .env("RAY_REDIS_ADDRESS", format!("127.0.0.1:{}", sentinel.port))
        .env("REDIS_PASSWORD", &master.password)
        .args(["redis-check", "--json"])
        .run(LIMIT);
    out.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["sentinel_master"],
        format!("127.0.0.1:{}", master.port),
        "{}",
        out.dump()
    );
    assert_eq!(v["role"], "master");

    let second = RedisServer::start(&dir);
    let two = Sentinel::start(&dir, &[&master, &second]);
    let out = dir
        .rayhead()
        .env("RAY_REDIS_ADDRESS", format!("127.0.0.1:{}", two.port))
        .env("REDIS_PASSWORD", &master.password)
        .args(["redis-check"])
        .run(LIMIT);
    out.assert_code(1);
    assert!(
        out.stdout
            .contains("monitors 2 masters; Ray requires exactly one"),
        "{}",
        out.dump()
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate,
/// made with openssl in the test's dir.
fn make_certs(dir: &Dir) {
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.crt");
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        sh(&format!(
            "openssl req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {name}.key -out {name}.csr && \
             printf '{ext}\\n' > {name}.ext && \
             openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile {name}.ext -out {name}.crt"
        ));
    }
}

struct TlsRedis {
    port: u16,
    child: std::process::Child,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_redis(dir: &Dir, client_auth: bool) -> TlsRedis {
    let port = free_port();
    let d = dir.path().display().to_string();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &format!("{d}/server.crt"),
            "--tls-key-file",
            &format!("{d}/server.key"),
        ])
        .args(["--tls-ca-cert-file", &format!("{d}/ca.crt")])
        .args(["--tls-auth-clients", if client_auth { "yes" } else { "no" }])
        .args([
            "--requirepass",
            "tls-pw",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            &d,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server with TLS");
    // The guard first: a server that never listens is still killed.
    let server = TlsRedis { port, child };
    crate::wait::eventually(LIMIT, "the TLS redis", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    server
}

#[test]
fn tls_with_and_without_a_client_certificate() {
    let dir = Dir::new("tls");
    make_certs(&dir);
    let d = dir.path().display().to_string();
    let check = |port: u16, client: bool| {
        let mut cmd = dir
            .rayhead()
            .env("RAY_REDIS_ADDRESS", format!("rediss://127.0.0.1:{port}"))
            .env("REDIS_PASSWORD", "tls-pw")
            .env("RAY_REDIS_CA_CERT", format!("{d}/ca.crt"));
        if client {
            cmd = cmd
                .env("RAY_REDIS_CLIENT_CERT", format!("{d}/client.crt"))
                .env("RAY_REDIS_CLIENT_KEY", format!("{d}/client.key"));
        }
        cmd.args(["redis-check"]).run(LIMIT)
    };
    let plain = tls_redis(&dir, false);
    let out = check(plain.port, false);
    out.assert_code(0);
    assert!(out.stdout.contains("rediss://127.0.0.1"), "{}", out.dump());

    let mutual = tls_redis(&dir, true);
    let out = check(mutual.port, false);
    out.assert_code(1);
    assert!(
        out.stdout.contains("CertificateRequired"),
        "the server's reason: no client certificate\n{}",
        out.dump()
    );
    check(mutual.port, true).assert_code(0);

    // An untrusted server: no CA given, so the system's roots reject it.
    let out = dir
        .rayhead()
        .env(
            "RAY_REDIS_ADDRESS",
            format!("rediss://127.0.0.1:{}", plain.port),
        )
        .env("REDIS_PASSWORD", "tls-pw")
        .args(["redis-check"])
        .run(LIMIT);
    out.assert_code(1);
    assert!(
        out.stdout
            .contains("invalid peer certificate: UnknownIssuer"),
        "the client's reason: an untrusted server\n{}",
        out.dump()
    );
    out.assert_no_secret("tls-pw");

    // A missing file names its key.
    let out = dir
        .rayhead()
        .env(
            "RAY_REDIS_ADDRESS",
            format!("rediss://127.0.0.1:{}", plain.port),
        )
        .env("RAY_REDIS_CA_CERT", "/nonexistent/ca.crt")
        .args(["redis-check"])
        .run(LIMIT);
    out.assert_code(64);
    assert!(
        out.stderr.contains("RAY_REDIS_CA_CERT") && out.stderr.contains("/nonexistent/ca.crt"),
        "{}",
        out.dump()
    );
}
