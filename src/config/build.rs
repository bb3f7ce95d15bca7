//! From resolved values to the typed [`Config`], with the checks that span
//! keys (a margin shorter than the window, and so on).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// Typed access to the resolved values, for [`build`].
struct Values<'a>(&'a [Resolved]);

impl Values<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|r| r.key.name == name)
            .and_then(|r| r.value.as_ref())
    }
    fn source(&self, name: &str) -> Source {
        self.0
            .iter()
            .find(|r| r.key.name == name)
            .map_or(Source::Default, |r| r.source.clone())
    }
    fn duration(&self, name: &str) -> Duration {
        match self.get(name) {
            Some(Value::Duration(d)) => *d,
            _ => Duration::ZERO,
        }
    }
    fn count(&self, name: &str) -> u64 {
        match self.get(name) {
            Some(Value::Count(n)) => *n,
            _ => 0,
        }
    }
    fn text(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Builds the typed configuration and runs the checks that span keys.
pub(super) fn build(
    resolved: Vec<Resolved>,
    file: Option<PathBuf>,
    problems: &mut Vec<Problem>,
) -> Config {
    let v = Values(&resolved);
    let mut problem = |key: &str, message: String| {
        problems.push(Problem {
            key: key.to_string(),
            source: Some(v.source(key)),
            message,
        })
    };

    let forward_signals = match v.get("init.forward-signals") {
        Some(Value::Signals(s)) => s.clone(),
        _ => Vec::new(),
    };
    let stop_command = match v.get("init.stop-command") {
        Some(Value::Argv(a)) => Some(a.clone()),
        _ => None,
    };
    let termination_log = v
        .text("init.termination-log")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    let init = InitConfig {
        forward_signals,
        stop_grace: v.duration("init.stop-grace"),
        stop_command,
        stop_command_timeout: v.duration("init.stop-command-timeout"),
        termination_log,
    };
    if init.stop_grace.is_zero() {
        problem("init.stop-grace", "must be longer than 0s".into());
    }

    let level = v.text("log.level").unwrap_or_default();
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        problem("log.level", format!("{level:?}: {e}"));
    }
    let log = LogConfig {
        level,
        format: if v.text("log.format").as_deref() == Some("json") {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
    };

    let start_command = v.text("ray.start-command").filter(|s| !s.trim().is_empty());
    let ray = RayConfig {
        start_command,
        mode: if v.text("ray.mode").as_deref() == Some("block") {
            RayMode::Block
        } else {
            RayMode::Direct
        },
        gcs_port: u16::try_from(v.count("ray.gcs-port")).unwrap_or(6379),
        reconnect_timeout: v.duration("ray.reconnect-timeout"),
        on_daemon_exit: if v.text("ray.on-daemon-exit").as_deref() == Some("ignore") {
            DaemonExitPolicy::Ignore
        } else {
            DaemonExitPolicy::Exit
        },
        open_files: v.count("ray.open-files"),
    };

    let gcs = GcsConfig {
        health_interval: v.duration("gcs.health-interval"),
        health_timeout: v.duration("gcs.health-timeout"),
        unhealthy_after: v.duration("gcs.unhealthy-after"),
        deadline_margin: v.duration("gcs.deadline-margin"),
        max_restarts: u32::try_from(v.count("gcs.max-restarts")).unwrap_or(u32::MAX),
        restart_window: v.duration("gcs.restart-window"),
    };
    for key in [
        "gcs.health-interval",
        "gcs.health-timeout",
        "gcs.restart-window",
    ] {
        if v.duration(key).is_zero() {
            problem(key, "must be longer than 0s".into());
        }
    }
    if gcs.unhealthy_after < gcs.health_interval {
        problem(
            "gcs.unhealthy-after",
            format!(
                "{} is shorter than gcs.health-interval ({}); expected at least one health check",
                humantime::format_duration(gcs.unhealthy_after),
                humantime::format_duration(gcs.health_interval)
            ),
        );
    }
    if gcs.deadline_margin >= ray.reconnect_timeout {
        problem(
            "gcs.deadline-margin",
            format!(
                "{} leaves no time to recover within ray.reconnect-timeout ({}); expected less",
                humantime::format_duration(gcs.deadline_margin),
                humantime::format_duration(ray.reconnect_timeout)
            ),
        );
    }

    let password = match v.get("redis.password") {
        Some(Value::Secret(s)) => Some(s.clone()),
        _ => None,
    };
    let redis = RedisConfig {
        address: v.text("redis.address").filter(|s| !s.trim().is_empty()),
        username: v.text("redis.username").filter(|s| !s.is_empty()),
        password,
        namespace: v.text("redis.namespace").filter(|s| !s.is_empty()),
        tls_ca_cert: v
            .text("redis.tls-ca-cert")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        tls_ca_path: v
            .text("redis.tls-ca-path")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        tls_client_cert: v
            .text("redis.tls-client-cert")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        tls_client_key: v
            .text("redis.tls-client-key")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        tls_server_name: v.text("redis.tls-server-name").filter(|s| !s.is_empty()),
        skip_checks: match v.get("redis.skip-checks") {
            Some(Value::Argv(a)) => a.iter().map(|s| s.to_ascii_lowercase()).collect(),
            _ => Vec::new(),
        },
        probe_interval: v.duration("redis.probe-interval"),
        startup_timeout: v.duration("redis.startup-timeout"),
        connect_timeout: v.duration("redis.connect-timeout"),
        command_timeout: v.duration("redis.command-timeout"),
    };
    for c in &redis.skip_checks {
        if !["info", "config", "tables"].contains(&c.as_str()) {
            problem(
                "redis.skip-checks",
                format!("{c:?}: expected any of info, config, tables"),
            );
        }
    }
    if redis.tls_client_cert.is_some() != redis.tls_client_key.is_some() {
        problem(
            "redis.tls-client-cert",
            "a client certificate and a client key go together (RAY_REDIS_CLIENT_CERT and RAY_REDIS_CLIENT_KEY)".into(),
        );
    }
    if let Some(ns) = &redis.namespace {
        if ns.contains('@') {
            problem(
                "redis.namespace",
                format!("{ns:?}: must not contain '@', which separates Ray's namespace from its table names"),
            );
        }
    }
    for key in [
        "redis.probe-interval",
        "redis.connect-timeout",
        "redis.command-timeout",
    ] {
        if v.duration(key).is_zero() {
            problem(key, "must be longer than 0s".into());
        }
    }

    let probe = ProbeConfig {
        listen: match v.get("probe.listen") {
            Some(Value::Listen(a)) => *a,
            _ => SocketAddr::from(([0, 0, 0, 0], 8099)),
        },
        stall_after: v.duration("probe.stall-after"),
    };
    if probe.stall_after.is_zero() {
        problem("probe.stall-after", "must be longer than 0s".into());
    }

    Config {
        init,
        log,
        ray,
        gcs,
        redis,
        probe,
        file,
        resolved,
    }
}
