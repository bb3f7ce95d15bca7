//! From resolved values to the typed [`Config`], with the checks that span
//! keys (a margin shorter than the window, and so on).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::keys::*;
use super::*;

/// Typed access to the resolved values, by key handle ([`keys`]' statics):
/// a misspelt key is a compile error, not a silent default. It notes what
/// was read, and any read of the wrong kind (a Count read as a Duration
/// would be 0s): a test requires every key read, and no wrong kind, so a
/// key registered but never built, or built by the wrong reader, fails.
struct Values<'a> {
    resolved: &'a [Resolved],
    read: std::cell::RefCell<Reads>,
}

/// What building the configuration read of it.
#[derive(Debug, Default)]
pub(super) struct Reads {
    pub keys: std::collections::BTreeSet<&'static str>,
    pub wrong_kind: Vec<&'static str>,
}

impl Values<'_> {
    fn resolved(&self, key: &'static Key) -> Option<&Resolved> {
        self.resolved.iter().find(|r| std::ptr::eq(r.key, key))
    }
    fn get(&self, key: &'static Key) -> Option<&Value> {
        self.read.borrow_mut().keys.insert(key.name);
        self.resolved(key).and_then(|r| r.value.as_ref())
    }
    /// [`Self::get`], noting a reader of the wrong kind.
    fn get_as(&self, key: &'static Key, right_kind: bool) -> Option<&Value> {
        if !right_kind {
            self.read.borrow_mut().wrong_kind.push(key.name);
        }
        self.get(key)
    }
    fn source(&self, key: &'static Key) -> Source {
        self.resolved(key)
            .map_or(Source::Default, |r| r.source.clone())
    }
    fn duration(&self, key: &'static Key) -> Duration {
        match self.get_as(key, matches!(key.kind, Kind::Duration)) {
            Some(Value::Duration(d)) => *d,
            _ => Duration::ZERO,
        }
    }
    fn mark(&self, key: &'static Key) -> crate::memory::Mark {
        match self.get_as(key, matches!(key.kind, Kind::Mark)) {
            Some(Value::Mark(m)) => *m,
            _ => crate::memory::Mark::Off,
        }
    }
    fn count(&self, key: &'static Key) -> u64 {
        match self.get_as(key, matches!(key.kind, Kind::Count { .. })) {
            Some(Value::Count(n)) => *n,
            _ => 0,
        }
    }
    fn text(&self, key: &'static Key) -> Option<String> {
        let right = matches!(key.kind, Kind::Text | Kind::Secret | Kind::Choice(_));
        match self.get_as(key, right) {
            Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        }
    }
    fn argv(&self, key: &'static Key) -> Option<Vec<String>> {
        match self.get_as(key, matches!(key.kind, Kind::Argv)) {
            Some(Value::Argv(a)) => Some(a.clone()),
            _ => None,
        }
    }
    /// A path key's value; an empty one means "none", as an unset one.
    fn path(&self, key: &'static Key) -> Option<PathBuf> {
        self.text(key).filter(|s| !s.is_empty()).map(PathBuf::from)
    }
    /// A choice key's word as its enum. The word was validated against the
    /// same enum's WORDS, so `None` means the value is missing.
    fn choice<T>(&self, key: &'static Key, from_word: fn(&str) -> Option<T>) -> Option<T> {
        self.text(key).as_deref().and_then(from_word)
    }
}

/// The problems the sections find, each with the key it is about; reported
/// in the registry's order, whichever section found it first.
struct Found<'a> {
    values: &'a Values<'a>,
    problems: Vec<(&'static Key, Problem)>,
}

impl Found<'_> {
    fn problem(&mut self, key: &'static Key, message: String) {
        self.problems.push((
            key,
            Problem {
                key: key.name.to_string(),
                source: Some(self.values.source(key)),
                message,
            },
        ))
    }

    /// Whether a duration is at least the `floor` it needs to work; when
    /// it is not, the problem names the value, the floor and `why`.
    fn require_at_least(
        &mut self,
        key: &'static Key,
        value: Duration,
        floor: Duration,
        why: &str,
    ) -> bool {
        if value >= floor {
            return true;
        }
        self.problem(
            key,
            format!(
                "{}: expected at least {}, {why}",
                humantime::format_duration(value),
                humantime::format_duration(floor)
            ),
        );
        false
    }

    /// The problems in the registry's order (stable: one key's problems
    /// keep the order they were found in).
    fn into_sorted(mut self) -> impl Iterator<Item = Problem> {
        self.problems
            .sort_by_key(|(key, _)| KEYS.iter().position(|k| std::ptr::eq(*k, *key)));
        self.problems.into_iter().map(|(_, p)| p)
    }
}

/// Builds the typed configuration and runs the checks that span keys.
pub(super) fn build(
    resolved: Vec<Resolved>,
    file: Option<PathBuf>,
    problems: &mut Vec<Problem>,
) -> Config {
    build_noting_reads(resolved, file, problems).0
}

/// [`build`], and what it read.
pub(super) fn build_noting_reads(
    resolved: Vec<Resolved>,
    file: Option<PathBuf>,
    problems: &mut Vec<Problem>,
) -> (Config, Reads) {
    let v = Values {
        resolved: &resolved,
        read: Default::default(),
    };
    let mut found = Found {
        values: &v,
        problems: Vec::new(),
    };
    let init = init_section(&v);
    let log = log_section(&v, &mut found);
    let ray = ray_section(&v, &mut found);
    let gcs = gcs_section(&v, &ray, &mut found);
    let redis = redis_section(&v, &mut found);
    let probe = probe_section(&v);
    let memory = memory_section(&v);
    check_nonzero_durations(&v, &mut found);
    problems.extend(found.into_sorted());
    let reads = v.read.into_inner();
    let config = Config {
        init,
        log,
        ray,
        gcs,
        redis,
        probe,
        memory,
        file,
        resolved,
    };
    (config, reads)
}

/// `[init]`: how the tree is stopped; its keys need no cross-checks.
fn init_section(v: &Values) -> InitConfig {
    InitConfig {
        forward_signals: match v.get(&INIT_FORWARD_SIGNALS) {
            Some(Value::Signals(s)) => s.clone(),
            _ => Vec::new(),
        },
        stop_grace: v.duration(&INIT_STOP_GRACE),
        stop_command: v.argv(&INIT_STOP_COMMAND),
        stop_command_timeout: v.duration(&INIT_STOP_COMMAND_TIMEOUT),
        termination_log: v.path(&INIT_TERMINATION_LOG),
    }
}

/// `[log]`: the level is a tracing filter, which only tracing itself can
/// validate, so it is parsed here rather than by its key's type.
fn log_section(v: &Values, found: &mut Found) -> LogConfig {
    let level = v.text(&LOG_LEVEL).unwrap_or_default();
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        found.problem(&LOG_LEVEL, format!("{level:?}: {e}"));
    }
    LogConfig {
        level,
        format: v
            .choice(&LOG_FORMAT, LogFormat::from_word)
            .unwrap_or(LogFormat::Text),
    }
}

/// `[ray]`: `ray start` and the daemons' health, with the checks between
/// its own durations (the GCS section checks its keys against this one).
fn ray_section(v: &Values, found: &mut Found) -> RayConfig {
    let ray = RayConfig {
        start_command: v.text(&RAY_START_COMMAND).filter(|s| !s.trim().is_empty()),
        mode: v
            .choice(&RAY_MODE, RayMode::from_word)
            .unwrap_or(RayMode::Direct),
        gcs_port: u16::try_from(v.count(&RAY_GCS_PORT)).unwrap_or(6379),
        reconnect_timeout: v.duration(&RAY_RECONNECT_TIMEOUT),
        client_check_interval: v.duration(&RAY_CLIENT_CHECK_INTERVAL),
        on_daemon_exit: v
            .choice(&RAY_ON_DAEMON_EXIT, DaemonExitPolicy::from_word)
            .unwrap_or(DaemonExitPolicy::Restart),
        health_interval: v.duration(&RAY_HEALTH_INTERVAL),
        health_timeout: v.duration(&RAY_HEALTH_TIMEOUT),
        raylet_unhealthy_after: v.duration(&RAY_RAYLET_UNHEALTHY_AFTER),
        raylet_hung_after: v.duration(&RAY_RAYLET_HUNG_AFTER),
        daemon_unhealthy_after: v.duration(&RAY_DAEMON_UNHEALTHY_AFTER),
        ready_requires: v.argv(&RAY_READY_REQUIRES).unwrap_or_default(),
        open_files: v.count(&RAY_OPEN_FILES),
    };
    // Ray reads whole milliseconds; 0 would make every client spin.
    let floor_met = found.require_at_least(
        &RAY_CLIENT_CHECK_INTERVAL,
        ray.client_check_interval,
        Duration::from_millis(1),
        "as Ray counts it in whole milliseconds",
    );
    if floor_met && ray.client_check_interval > ray.reconnect_timeout {
        found.problem(
            &RAY_CLIENT_CHECK_INTERVAL,
            format!(
                "{} is longer than ray.reconnect-timeout ({}): clients would not re-check within the window",
                humantime::format_duration(ray.client_check_interval),
                humantime::format_duration(ray.reconnect_timeout)
            ),
        );
    }
    if ray.raylet_hung_after < ray.raylet_unhealthy_after {
        found.problem(
            &RAY_RAYLET_HUNG_AFTER,
            shorter(
                ray.raylet_hung_after,
                &RAY_RAYLET_UNHEALTHY_AFTER,
                ray.raylet_unhealthy_after,
                "a hang would end the head before it costs readiness",
            ),
        );
    }
    ray
}

/// `[gcs]`: health, recovery and storage of the GCS. Its margin is checked
/// against ray.reconnect-timeout, the window a recovery must fit in.
fn gcs_section(v: &Values, ray: &RayConfig, found: &mut Found) -> GcsConfig {
    let gcs = GcsConfig {
        health_interval: v.duration(&GCS_HEALTH_INTERVAL),
        health_timeout: v.duration(&GCS_HEALTH_TIMEOUT),
        unhealthy_after: v.duration(&GCS_UNHEALTHY_AFTER),
        deadline_margin: v.duration(&GCS_DEADLINE_MARGIN),
        max_restarts: u32::try_from(v.count(&GCS_MAX_RESTARTS)).unwrap_or(u32::MAX),
        stable_after: v.duration(&GCS_STABLE_AFTER),
        storage_min_free: v.mark(&GCS_STORAGE_MIN_FREE),
        storage_startup_timeout: v.duration(&GCS_STORAGE_STARTUP_TIMEOUT),
        storage_check_interval: v.duration(&GCS_STORAGE_CHECK_INTERVAL),
    };
    if gcs.unhealthy_after < gcs.health_interval {
        found.problem(
            &GCS_UNHEALTHY_AFTER,
            shorter(
                gcs.unhealthy_after,
                &GCS_HEALTH_INTERVAL,
                gcs.health_interval,
                "expected at least one health check",
            ),
        );
    }
    // Each look at RocksDB's volume may walk the database and takes a
    // thread: back to back, they would keep a core busy.
    found.require_at_least(
        &GCS_STORAGE_CHECK_INTERVAL,
        gcs.storage_check_interval,
        Duration::from_millis(100),
        "as each check reads the volume and sizes the database",
    );
    // Shorter than one check of a healthy volume may take, the gate would
    // fail a disk it never finished looking at.
    found.require_at_least(
        &GCS_STORAGE_STARTUP_TIMEOUT,
        gcs.storage_startup_timeout,
        Duration::from_secs(1),
        "as the start gate needs that long to check the volume once",
    );
    if gcs.deadline_margin >= ray.reconnect_timeout {
        found.problem(
            &GCS_DEADLINE_MARGIN,
            format!(
                "{} leaves no time to recover within ray.reconnect-timeout ({}); expected less",
                humantime::format_duration(gcs.deadline_margin),
                humantime::format_duration(ray.reconnect_timeout)
            ),
        );
    }
    gcs
}

/// `[redis]`: the client's address, credentials and TLS files, which must
/// come in pairs, and the checks the probe may skip.
fn redis_section(v: &Values, found: &mut Found) -> RedisConfig {
    let redis = RedisConfig {
        address: v.text(&REDIS_ADDRESS).filter(|s| !s.trim().is_empty()),
        username: v.text(&REDIS_USERNAME).filter(|s| !s.is_empty()),
        password: match v.get(&REDIS_PASSWORD) {
            Some(Value::Secret(s)) => Some(s.clone()),
            _ => None,
        },
        namespace: v.text(&REDIS_NAMESPACE).filter(|s| !s.is_empty()),
        tls_ca_cert: v.path(&REDIS_TLS_CA_CERT),
        tls_ca_path: v.path(&REDIS_TLS_CA_PATH),
        tls_client_cert: v.path(&REDIS_TLS_CLIENT_CERT),
        tls_client_key: v.path(&REDIS_TLS_CLIENT_KEY),
        tls_server_name: v.text(&REDIS_TLS_SERVER_NAME).filter(|s| !s.is_empty()),
        skip_checks: v
            .argv(&REDIS_SKIP_CHECKS)
            .unwrap_or_default()
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        probe_interval: v.duration(&REDIS_PROBE_INTERVAL),
        startup_timeout: v.duration(&REDIS_STARTUP_TIMEOUT),
        connect_timeout: v.duration(&REDIS_CONNECT_TIMEOUT),
        command_timeout: v.duration(&REDIS_COMMAND_TIMEOUT),
    };
    for c in &redis.skip_checks {
        if !["info", "config", "tables"].contains(&c.as_str()) {
            found.problem(
                &REDIS_SKIP_CHECKS,
                format!("{c:?}: expected any of info, config, tables"),
            );
        }
    }
    // The problem names the key that is set: the user set that one.
    match (&redis.tls_client_cert, &redis.tls_client_key) {
        (Some(_), None) => found.problem(
            &REDIS_TLS_CLIENT_CERT,
            "a client certificate needs its client key (redis.tls-client-key, RAY_REDIS_CLIENT_KEY)".into(),
        ),
        (None, Some(_)) => found.problem(
            &REDIS_TLS_CLIENT_KEY,
            "a client key needs its client certificate (redis.tls-client-cert, RAY_REDIS_CLIENT_CERT)".into(),
        ),
        _ => {}
    }
    if let Some(ns) = &redis.namespace {
        if ns.contains('@') {
            found.problem(
                &REDIS_NAMESPACE,
                format!("{ns:?}: must not contain '@', which separates Ray's namespace from its table names"),
            );
        }
    }
    redis
}

/// `[probe]`: "auto" puts the socket's name after the listen port, so the
/// two keys are read together.
fn probe_section(v: &Values) -> ProbeConfig {
    let listen = match v.get(&PROBE_LISTEN) {
        Some(Value::Listen(a)) => *a,
        _ => SocketAddr::from(([0, 0, 0, 0], 8099)),
    };
    ProbeConfig {
        listen,
        socket: match v.text(&PROBE_SOCKET).as_deref() {
            Some("auto") => SocketSetting::Auto {
                port: listen.port(),
            },
            _ => v
                .path(&PROBE_SOCKET)
                .map_or(SocketSetting::Off, SocketSetting::At),
        },
        stall_after: v.duration(&PROBE_STALL_AFTER),
    }
}

/// `[memory]`: the GCS's high-water mark; its keys need no cross-checks.
fn memory_section(v: &Values) -> MemoryConfig {
    MemoryConfig {
        gcs_high_water: v.mark(&MEMORY_GCS_HIGH_WATER),
        sustain: v.duration(&MEMORY_SUSTAIN),
        min_interval: v.duration(&MEMORY_MIN_INTERVAL),
    }
}

/// Durations that must not be zero, across sections: a zero interval
/// would spin, a zero grace or timeout would give up at once.
fn check_nonzero_durations(v: &Values, found: &mut Found) {
    for key in [
        &INIT_STOP_GRACE,
        &GCS_HEALTH_INTERVAL,
        &GCS_HEALTH_TIMEOUT,
        &RAY_HEALTH_INTERVAL,
        &RAY_HEALTH_TIMEOUT,
        &REDIS_PROBE_INTERVAL,
        &GCS_STORAGE_CHECK_INTERVAL,
        &GCS_STORAGE_STARTUP_TIMEOUT,
        &REDIS_CONNECT_TIMEOUT,
        &REDIS_COMMAND_TIMEOUT,
        &PROBE_STALL_AFTER,
    ] {
        // Looked at, not read: a key counts as read only where it is built.
        let value = v.resolved(key).and_then(|r| r.value.as_ref());
        if matches!(value, Some(Value::Duration(d)) if d.is_zero()) {
            found.problem(key, "must be longer than 0s".into());
        }
    }
}

/// "`d` is shorter than `other` (its value): why".
fn shorter(d: Duration, other: &Key, other_value: Duration, why: &str) -> String {
    format!(
        "{} is shorter than {} ({}): {why}",
        humantime::format_duration(d),
        other.name,
        humantime::format_duration(other_value)
    )
}
