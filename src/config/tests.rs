use std::io::Write;

use super::*;

fn load(file: Option<&str>, env: &dyn Env, flags: &[&str]) -> Result<Config, ConfigError> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let path = file.map(|text| {
        let mut f = std::fs::File::create(tmp.path()).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        tmp.path().to_path_buf()
    });
    let inputs = Inputs {
        file: path,
        flags: flags
            .iter()
            .map(|s| FlagValue::parse_set(s).unwrap())
            .collect(),
    };
    Config::load(&inputs, env)
}

fn source_of(cfg: &Config, key: &str) -> Source {
    cfg.resolved
        .iter()
        .find(|r| r.key.name == key)
        .unwrap()
        .source
        .clone()
}

const NO_ENV: [(&str, &str); 0] = [];

#[test]
fn defaults_are_valid_and_documented() {
    let cfg = load(None, &NO_ENV, &[]).unwrap();
    assert_eq!(cfg.init.stop_grace, Duration::from_secs(25));
    assert_eq!(cfg.init.forward_signals.len(), 7);
    assert_eq!(cfg.ray.mode, RayMode::Direct);
    assert_eq!(cfg.ray.reconnect_timeout, Duration::from_secs(60));
    assert_eq!(cfg.ray.client_check_interval, Duration::from_millis(100));
    assert_eq!(cfg.gcs.max_restarts, 5);
    assert_eq!(cfg.probe.listen.port(), 8099);
    assert_eq!(cfg.redis.address, None);
    assert!(cfg.resolved.iter().all(|r| r.source == Source::Default));
}

#[test]
fn precedence_is_flag_env_file_default() {
    let file =
        "[init]\nstop-grace = \"7s\"\nstop-command-timeout = \"3s\"\n[gcs]\nmax-restarts = 2\n";
    let env = [
        ("RAYHEAD_INIT_STOP_GRACE", "8s"),
        ("RAYHEAD_GCS_MAX_RESTARTS", "3"),
    ];
    let cfg = load(Some(file), &env, &["gcs.max-restarts=4"]).unwrap();
    // flag beats env
    assert_eq!(cfg.gcs.max_restarts, 4);
    assert!(matches!(
        source_of(&cfg, "gcs.max-restarts"),
        Source::Flag(_)
    ));
    // env beats file
    assert_eq!(cfg.init.stop_grace, Duration::from_secs(8));
    assert_eq!(
        source_of(&cfg, "init.stop-grace"),
        Source::Env("RAYHEAD_INIT_STOP_GRACE".into())
    );
    // file beats default
    assert_eq!(cfg.init.stop_command_timeout, Duration::from_secs(3));
    assert!(matches!(
        source_of(&cfg, "init.stop-command-timeout"),
        Source::File(_)
    ));
    assert_eq!(source_of(&cfg, "log.level"), Source::Default);
}

#[test]
fn the_last_flag_wins() {
    let cfg = load(None, &NO_ENV, &["init.stop-grace=1s", "init.stop-grace=2s"]).unwrap();
    assert_eq!(cfg.init.stop_grace, Duration::from_secs(2));
}

#[test]
fn kuberay_variables_are_read() {
    let env = [
        ("RAY_REDIS_ADDRESS", "redis:6379"),
        ("REDIS_PASSWORD", "s3cret"),
        ("REDIS_USERNAME", ""),
        ("RAY_external_storage_namespace", "uid-123"),
        ("RAY_gcs_rpc_server_reconnect_timeout_s", "120"),
        (
            "KUBERAY_GEN_RAY_START_CMD",
            "ray start --head --redis-password=$REDIS_PASSWORD",
        ),
        ("RAY_PORT", "6380"),
        ("RAY_START_ULIMIT_OPEN_FILES", "1024"),
    ];
    let cfg = load(None, &env, &[]).unwrap();
    assert_eq!(cfg.redis.address.as_deref(), Some("redis:6379"));
    assert_eq!(cfg.redis.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(
        cfg.redis.username, None,
        "an empty REDIS_USERNAME means none"
    );
    assert_eq!(cfg.redis.namespace.as_deref(), Some("uid-123"));
    assert_eq!(cfg.ray.reconnect_timeout, Duration::from_secs(120));
    assert!(cfg
        .ray
        .start_command
        .as_deref()
        .unwrap()
        .contains("$REDIS_PASSWORD"));
    assert_eq!(cfg.ray.gcs_port, 6380);
    assert_eq!(cfg.ray.open_files, 1024);
    assert!(cfg.redis.address.is_some());
}

#[test]
fn rayhead_variables_beat_kuberay_ones() {
    let env = [("RAY_PORT", "6380"), ("RAYHEAD_RAY_GCS_PORT", "7000")];
    let cfg = load(None, &env, &[]).unwrap();
    assert_eq!(cfg.ray.gcs_port, 7000);
    let env = [("RAY_PORT", "6380"), ("RAYHEAD_LOG", "debug")];
    let cfg = load(None, &env, &[]).unwrap();
    assert_eq!(cfg.log.level, "debug");
}

#[test]
fn every_problem_is_reported_at_once() {
    let file = "[init]\nstop-grase = \"7s\"\nstop-grace = 25\n[gcs]\nhealth-intervall = \"1s\"\n[nope]\nx = 1\n";
    let env = [("RAY_PORT", "http"), ("RAYHEAD_LOG_FORMAT", "xml")];
    let err = load(Some(file), &env, &["ray.mood=direct"]).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "init.stop-grase",
        "init.stop-grace",
        "gcs.health-intervall",
        "[nope]",
        "ray.gcs-port",
        "log.format",
        "ray.mood",
    ] {
        assert!(keys.contains(&want), "{want} missing from {err}");
    }
    let text = err.to_string();
    assert!(text.contains("7 problems"), "{text}");
    assert!(text.contains("\"http\""), "the bad value is shown: {text}");
    assert!(text.contains("one of text, json"), "{text}");
    assert!(
        text.contains("[init] has"),
        "known keys are suggested: {text}"
    );
}

#[test]
fn secrets_never_appear_in_errors_or_output() {
    let env = [("REDIS_PASSWORD", "hunter2")];
    let cfg = load(None, &env, &[]).unwrap();
    let shown = format!("{}\n{:?}", cfg.render(), cfg);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"));
    let err = load(Some("[redis]\npassword = 12345\n"), &NO_ENV, &[]).unwrap_err();
    assert!(!err.to_string().contains("12345"), "{err}");
}

#[test]
fn cross_key_checks() {
    let err = load(
        None,
        &NO_ENV,
        &[
            "gcs.deadline-margin=60s",
            "gcs.unhealthy-after=100ms",
            "init.stop-grace=0s",
            "redis.namespace=a@b",
        ],
    )
    .unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "init.stop-grace",
            "gcs.unhealthy-after",
            "gcs.deadline-margin",
            "redis.namespace"
        ],
        "{err}"
    );
}

#[test]
fn file_errors_name_the_file() {
    let err = load(Some("[init\n"), &NO_ENV, &[]).unwrap_err();
    assert!(err.to_string().contains("not valid TOML"), "{err}");
    let inputs = Inputs {
        file: Some("/nonexistent/rayhead.toml".into()),
        flags: vec![],
    };
    let err = Config::load(&inputs, &NO_ENV).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/rayhead.toml"),
        "{err}"
    );
    let err = load(Some("init = 5\n"), &NO_ENV, &[]).unwrap_err();
    assert!(err.to_string().contains("expected a table [init]"), "{err}");
}

#[test]
fn empty_values_are_errors_not_defaults() {
    let err = load(None, &[("RAYHEAD_INIT_STOP_GRACE", "")], &[]).unwrap_err();
    assert!(err.to_string().contains("init.stop-grace"), "{err}");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn config_env_names_the_file() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), "[gcs]\nmax-restarts = 9\n").unwrap();
    let p = tmp.path().to_str().unwrap();
    let cfg = Config::load(&Inputs::default(), &[(ENV_CONFIG, p)]).unwrap();
    assert_eq!(cfg.gcs.max_restarts, 9);
}

#[test]
fn stop_command_takes_a_list_or_a_string() {
    let cfg = load(
        Some("[init]\nstop-command = [\"ray\", \"stop\", \"--force\"]\n"),
        &NO_ENV,
        &[],
    )
    .unwrap();
    assert_eq!(
        cfg.init.stop_command.unwrap(),
        vec!["ray", "stop", "--force"]
    );
    let cfg = load(None, &NO_ENV, &["init.stop-command=ray stop 'a b'"]).unwrap();
    assert_eq!(cfg.init.stop_command.unwrap(), vec!["ray", "stop", "a b"]);
}

#[test]
fn termination_log_can_be_turned_off() {
    let cfg = load(None, &NO_ENV, &["init.termination-log="]).unwrap();
    assert_eq!(cfg.init.termination_log, None);
}

#[test]
fn render_lists_every_key_with_its_source() {
    let cfg = load(None, &[("RAY_PORT", "6380")], &["init.stop-grace=3s"]).unwrap();
    let text = cfg.render();
    for k in KEYS {
        let mut section = "";
        let listed = text.lines().any(|l| {
            if let Some(s) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s;
            }
            section == k.section()
                && (l.starts_with(&format!("{} = ", k.leaf()))
                    || l.starts_with(&format!("# {} is unset", k.leaf())))
        });
        assert!(
            listed,
            "{} missing under [{}]:\n{text}",
            k.name,
            k.section()
        );
    }
    assert!(text.contains("env RAY_PORT"), "{text}");
    assert!(text.contains("flag --set init.stop-grace"), "{text}");
    // The listing is valid TOML that loads back to the same values.
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), &text).unwrap();
    let again = Config::load(
        &Inputs {
            file: Some(tmp.path().into()),
            flags: vec![],
        },
        &NO_ENV,
    )
    .unwrap();
    assert_eq!(again.ray.gcs_port, 6380);
    assert_eq!(again.init.stop_grace, Duration::from_secs(3));
}

/// `config/rayhead.toml` documents every key with its default.
#[test]
fn shipped_config_documents_every_key() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rayhead.toml");
    let text = std::fs::read_to_string(path).unwrap();
    for k in KEYS {
        let line = match k.default {
            Some(d) => format!(
                "# {} = {}",
                k.leaf(),
                value::parse_text(k.kind, EnvUnit::Plain, d)
                    .unwrap()
                    .render()
            ),
            None => format!("# {} =", k.leaf()),
        };
        assert!(
            text.contains(&line),
            "config/rayhead.toml lacks `{line}` for {}",
            k.name
        );
        assert!(text.contains(&format!("[{}]", k.section())));
    }
    // Uncommented, every `# key = value` line is a valid file that sets
    // every key with a default to that default.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if KEYS.iter().any(|k| {
                    k.default.is_some() && rest.starts_with(&format!("{} = ", k.leaf()))
                }) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), &uncommented).unwrap();
    let cfg = Config::load(
        &Inputs {
            file: Some(tmp.path().into()),
            flags: vec![],
        },
        &NO_ENV,
    )
    .unwrap_or_else(|e| panic!("the uncommented config/rayhead.toml fails: {e}"));
    for r in &cfg.resolved {
        if let Some(d) = r.key.default {
            assert!(
                matches!(r.source, Source::File(_)),
                "{} was not set by the uncommented file",
                r.key.name
            );
            let default = value::parse_text(r.key.kind, EnvUnit::Plain, d).unwrap();
            assert_eq!(r.value.as_ref(), Some(&default), "{}", r.key.name);
        }
    }
}

/// The empty-variable rules, each pinned: an empty KubeRay variable is
/// unset (whatever its key's kind); an empty RAYHEAD_* variable is an error
/// for a key that is not free text, and an empty value for one that is.
#[test]
fn empty_variables_follow_their_rules() {
    // KubeRay's names: unset, so the default stands.
    let cfg = load(None, &[("RAY_PORT", ""), ("REDIS_USERNAME", "")], &[]).unwrap();
    assert_eq!(cfg.ray.gcs_port, 6379);
    assert_eq!(cfg.redis.username, None);
    // RAYHEAD_* for a number: an error that says "empty".
    let err = load(None, &[("RAYHEAD_RAY_GCS_PORT", "")], &[]).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.0[0].message.starts_with("empty; expected"), "{err}");
    // RAYHEAD_* for free text and a secret: allowed, and empty.
    let cfg = load(
        None,
        &[
            ("RAYHEAD_REDIS_NAMESPACE", ""),
            ("RAYHEAD_REDIS_PASSWORD", ""),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(cfg.redis.namespace, None);
    let pw = cfg
        .resolved
        .iter()
        .find(|r| r.key.name == "redis.password")
        .unwrap();
    assert!(matches!(pw.source, Source::Env(ref n) if n == "RAYHEAD_REDIS_PASSWORD"));
}

/// `RAYHEAD_CONFIG=""` means no file, not a file named "".
#[test]
fn an_empty_config_variable_reads_no_file() {
    let cfg = load(None, &[("RAYHEAD_CONFIG", "")], &[]).unwrap();
    assert!(cfg.file.is_none());
}

/// An unknown key's hint lists its own section's keys, and only those.
#[test]
fn an_unknown_key_lists_its_sections_keys() {
    let err = load(Some("[init]\nstop-grase = \"1s\"\n"), &NO_ENV, &[]).unwrap_err();
    let msg = &err.0[0].message;
    assert!(
        msg.contains("[init] has forward-signals, stop-grace"),
        "{msg}"
    );
    assert!(!msg.contains("gcs-port"), "{msg}");
    let err = load(None, &NO_ENV, &["nosuch.key=1"]).unwrap_err();
    assert!(
        err.0[0]
            .message
            .contains("known keys are init.forward-signals"),
        "{err}"
    );
}

/// Each cross-key and list check, on both sides of its line.
#[test]
fn every_check_holds_on_both_sides() {
    let ok = |flags: &[&str]| load(None, &NO_ENV, flags).unwrap();
    let err_keys = |flags: &[&str]| -> Vec<String> {
        load(None, &NO_ENV, flags)
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| p.key)
            .collect()
    };
    // ray.ready-requires is a list of names; ray::daemons checks them.
    assert_eq!(
        ok(&["ray.ready-requires=raylet monitor"])
            .ray
            .ready_requires,
        ["raylet", "monitor"]
    );
    // A hang bound at the readiness threshold is fine; below it is not.
    ok(&[
        "ray.raylet-hung-after=10s",
        "ray.raylet-unhealthy-after=10s",
    ]);
    assert_eq!(
        err_keys(&["ray.raylet-hung-after=9s", "ray.raylet-unhealthy-after=10s"]),
        ["ray.raylet-hung-after"]
    );
    let err = load(None, &NO_ENV, &["ray.raylet-hung-after=9s"]).unwrap_err();
    assert_eq!(
        err.0[0].message,
        "9s is shorter than ray.raylet-unhealthy-after (10s): a hang would end the head before it costs readiness"
    );
    // The storage's checks: not back to back, and a gate with time to
    // look at least once.
    ok(&[
        "gcs.storage-check-interval=100ms",
        "gcs.storage-startup-timeout=1s",
    ]);
    assert_eq!(
        err_keys(&[
            "gcs.storage-check-interval=1ns",
            "gcs.storage-startup-timeout=999ms"
        ]),
        ["gcs.storage-startup-timeout", "gcs.storage-check-interval"]
    );
    let err = load(None, &NO_ENV, &["gcs.storage-check-interval=99ms"]).unwrap_err();
    assert_eq!(
        err.0[0].message,
        "99ms: expected at least 100ms, as each check reads the volume and sizes the database"
    );
    // Ray's client check interval: whole milliseconds from 1ms to the
    // reconnect window, and Ray's own variable (in milliseconds) wins.
    ok(&["ray.client-check-interval=1ms"]);
    ok(&["ray.client-check-interval=60s"]);
    let err = load(None, &NO_ENV, &["ray.client-check-interval=0s"]).unwrap_err();
    assert_eq!(
        err.0[0].message,
        "0s: expected at least 1ms, as Ray counts it in whole milliseconds"
    );
    let err = load(None, &NO_ENV, &["ray.client-check-interval=61s"]).unwrap_err();
    assert_eq!(
        err.0[0].message,
        "1m 1s is longer than ray.reconnect-timeout (1m): clients would not re-check within the window"
    );
    let var = "RAY_grpc_client_check_connection_status_interval_milliseconds";
    let cfg = load(None, &[(var, "250")], &[]).unwrap();
    assert_eq!(cfg.ray.client_check_interval, Duration::from_millis(250));
    let cfg = load(None, &[(var, "")], &[]).unwrap();
    assert_eq!(cfg.ray.client_check_interval, Duration::from_millis(100));
    let err = load(None, &[(var, "0.5s")], &[]).unwrap_err();
    assert_eq!(err.0[0].key, "ray.client-check-interval");
    assert!(
        err.0[0].message.contains("whole number of milliseconds"),
        "{}",
        err.0[0].message
    );
    // gcs.unhealthy-after may equal gcs.health-interval, not undercut it.
    ok(&["gcs.unhealthy-after=1s", "gcs.health-interval=1s"]);
    assert_eq!(
        err_keys(&["gcs.unhealthy-after=999ms", "gcs.health-interval=1s"]),
        ["gcs.unhealthy-after"]
    );
    // redis.skip-checks takes its three words only.
    assert_eq!(
        ok(&["redis.skip-checks=INFO config tables"])
            .redis
            .skip_checks,
        ["info", "config", "tables"]
    );
    assert_eq!(
        err_keys(&["redis.skip-checks=info bogus"]),
        ["redis.skip-checks"]
    );
    // A client certificate and key go together; the problem names the one set.
    assert_eq!(
        err_keys(&["redis.tls-client-cert=/c"]),
        ["redis.tls-client-cert"]
    );
    assert_eq!(
        err_keys(&["redis.tls-client-key=/k"]),
        ["redis.tls-client-key"]
    );
    let both = ok(&["redis.tls-client-cert=/c", "redis.tls-client-key=/k"]);
    assert!(both.redis.tls_client_cert.is_some() && both.redis.tls_client_key.is_some());
    // Empty text is no value; a value is kept.
    let cfg = ok(&["redis.username=", "redis.tls-server-name="]);
    assert_eq!(
        (cfg.redis.username, cfg.redis.tls_server_name),
        (None, None)
    );
    let cfg = ok(&["redis.username=alice", "redis.tls-server-name=redis.svc"]);
    assert_eq!(cfg.redis.username.as_deref(), Some("alice"));
    assert_eq!(cfg.redis.tls_server_name.as_deref(), Some("redis.svc"));
    // probe.listen is read, not defaulted; the socket follows its port.
    let cfg = ok(&["probe.listen=127.0.0.1:9"]);
    assert_eq!(cfg.probe.listen, "127.0.0.1:9".parse().unwrap());
    assert_eq!(cfg.probe.socket, SocketSetting::Auto { port: 9 });
    assert_eq!(ok(&[]).probe.socket, SocketSetting::Auto { port: 8099 });
    assert_eq!(ok(&["probe.socket="]).probe.socket, SocketSetting::Off);
    assert_eq!(
        ok(&["probe.socket=/run/x.sock"]).probe.socket,
        SocketSetting::At("/run/x.sock".into())
    );
}

/// The process environment is read as it is; a map is read as it is.
#[test]
fn environments_answer_what_they_hold() {
    let path = ProcessEnv.var("PATH").unwrap();
    assert!(
        path.is_some_and(|p| p.contains('/')),
        "PATH is set in any test run"
    );
    assert_eq!(
        ProcessEnv.var("RAYHEAD_TEST_SURELY_UNSET_9F2C").unwrap(),
        None
    );
    let mut map = std::collections::HashMap::new();
    map.insert("A".to_string(), "1".to_string());
    assert_eq!(map.var("A").unwrap().as_deref(), Some("1"));
    assert_eq!(map.var("B").unwrap(), None);
}

/// A secret formats as `<redacted>` however it is printed; a value's Debug
/// is its TOML; errors say what was expected; a count takes its bounds.
#[test]
fn formats_and_bounds() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s}"), "<redacted>");
    assert_eq!(format!("{s:?}"), "<redacted>");
    assert_eq!(format!("{:?}", Value::Secret(s)), "\"<redacted>\"");
    assert_eq!(format!("{:?}", Value::Count(7)), "7");
    let err = load(None, &[("RAYHEAD_INIT_STOP_GRACE", "")], &[]).unwrap_err();
    assert!(
        err.0[0].message == "empty; expected a duration such as \"25s\" or \"1m30s\"",
        "{err}"
    );
    assert_eq!(
        load(None, &NO_ENV, &["ray.gcs-port=65535"])
            .unwrap()
            .ray
            .gcs_port,
        65535
    );
    assert_eq!(
        load(None, &NO_ENV, &["ray.gcs-port=1"])
            .unwrap()
            .ray
            .gcs_port,
        1
    );
    for bad in ["65536", "0"] {
        let err = load(None, &NO_ENV, &[&format!("ray.gcs-port={bad}")]).unwrap_err();
        assert!(err.0[0].message.contains("from 1 to 65535"), "{err}");
    }
}

/// Every registered key is read by the builder, each by a reader of its
/// kind: a key added to KEYS (and documented) but never built into
/// Config, or read as the wrong kind, fails here.
#[test]
fn every_key_is_read_by_its_kind() {
    let mut problems = Vec::new();
    let env: [(&str, &str); 0] = [];
    let resolved = resolve(&BTreeMap::new(), None, &env, &[], &mut problems);
    let (_, reads) = build::build_noting_reads(resolved, None, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let unread: Vec<&str> = KEYS
        .iter()
        .map(|k| k.name)
        .filter(|n| !reads.keys.contains(n))
        .collect();
    assert!(unread.is_empty(), "registered but never built: {unread:?}");
    assert!(
        reads.wrong_kind.is_empty(),
        "read as another kind: {:?}",
        reads.wrong_kind
    );
}
