//! The registry of every configuration key.
//!
//! One table drives everything a key needs: its kind, its default, the
//! environment variables that set it, and its documentation. From it come
//! the unknown-key check for files and `--set`, the layering of sources, the
//! effective-config listing of `rayhead config check`, and the test that keeps
//! `config/rayhead.toml` in step with the code.

/// What a key holds, and so how its text is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A humantime duration: `"25s"`, `"1m30s"`.
    Duration,
    /// A non-negative whole number no larger than `max`.
    Count { min: u64, max: u64 },
    /// Free text.
    Text,
    /// Free text that is a secret: never printed.
    Secret,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// A list of signal names (`SIGTERM`, `TERM`), comma-separated in text.
    Signals,
    /// A command as an argv list; in text, split like a shell would (quotes,
    /// backslashes), without any expansion.
    Argv,
    /// A socket address, `host:port`.
    Listen,
    /// A memory high-water mark: `off`, a size, or a share of the
    /// container's limit ([`crate::memory::Mark`]).
    Mark,
}

/// How an environment variable spells a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvUnit {
    /// The same text a file or flag would use.
    Plain,
    /// A whole number of seconds (Ray's `*_timeout_s` variables).
    Seconds,
    /// A whole number of milliseconds (Ray's `*_milliseconds` variables).
    Milliseconds,
}

/// An environment variable that sets a key, beside the derived `RAYHEAD_*` name.
#[derive(Debug, Clone, Copy)]
pub struct EnvAlias {
    pub name: &'static str,
    pub unit: EnvUnit,
    /// An empty value counts as unset. KubeRay sets some variables empty
    /// (`REDIS_USERNAME` without a username), and that means "none".
    pub empty_is_unset: bool,
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// `section.key`, as written in the file and in `--set`.
    pub name: &'static str,
    pub kind: Kind,
    /// The default, in the text form an env var would use; `None`: unset.
    pub default: Option<&'static str>,
    /// Other variables that set it, after `RAYHEAD_<SECTION>_<KEY>`, in order.
    pub aliases: &'static [EnvAlias],
    pub doc: &'static str,
}

impl Key {
    /// The section, the part before the dot.
    pub fn section(&self) -> &'static str {
        self.name.split_once('.').map_or("", |(s, _)| s)
    }

    /// The key within its section, the part after the dot.
    pub fn leaf(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(_, k)| k)
    }

    /// `RAYHEAD_<SECTION>_<KEY>`: every key has one, derived from its name.
    pub fn env_name(&self) -> String {
        let mut s = String::from("RAYHEAD_");
        for c in self.name.chars() {
            s.push(match c {
                '.' | '-' => '_',
                c => c.to_ascii_uppercase(),
            });
        }
        s
    }
}

const fn alias(name: &'static str) -> EnvAlias {
    EnvAlias {
        name,
        unit: EnvUnit::Plain,
        empty_is_unset: true,
    }
}

/// The signals a container runtime or a user sends to PID 1 and that the
/// child should see too (the set tini and dumb-init forward).
pub const DEFAULT_FORWARD_SIGNALS: &str = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2,SIGWINCH";

pub static INIT_FORWARD_SIGNALS: Key = Key {
    name: "init.forward-signals",
    kind: Kind::Signals,
    default: Some(DEFAULT_FORWARD_SIGNALS),
    aliases: &[],
    doc: "Signals forwarded to the child's process group. SIGTERM and SIGINT also start a graceful stop.",
};

pub static INIT_STOP_GRACE: Key = Key {
    name: "init.stop-grace",
    kind: Kind::Duration,
    default: Some("25s"),
    aliases: &[],
    doc: "How long a graceful stop waits before it SIGKILLs what remains. Keep it under the pod's terminationGracePeriodSeconds (30 s by default).",
};

pub static INIT_STOP_COMMAND: Key = Key {
    name: "init.stop-command",
    kind: Kind::Argv,
    default: None,
    aliases: &[],
    doc: "A command run first in a graceful stop, before any signal (the Ray supervisor uses `ray stop`).",
};

pub static INIT_STOP_COMMAND_TIMEOUT: Key = Key {
    name: "init.stop-command-timeout",
    kind: Kind::Duration,
    default: Some("10s"),
    aliases: &[],
    doc: "How long the stop command may run before it is killed and the stop goes on.",
};

pub static INIT_TERMINATION_LOG: Key = Key {
    name: "init.termination-log",
    kind: Kind::Text,
    default: Some("/dev/termination-log"),
    aliases: &[],
    doc: "File that receives the exit reason (Kubernetes shows it in `kubectl describe pod`). Skipped when not writable; \"\" turns it off.",
};

pub static LOG_LEVEL: Key = Key {
    name: "log.level",
    kind: Kind::Text,
    default: Some("info"),
    aliases: &[alias("RAYHEAD_LOG")],
    doc: "A tracing filter: a level (error, warn, info, debug, trace) or directives such as `rayhead=debug`.",
};

pub static LOG_FORMAT: Key = Key {
    name: "log.format",
    kind: Kind::Choice(super::LogFormat::WORDS),
    default: Some("text"),
    aliases: &[],
    doc: "Human text, or one JSON object a line for log pipelines.",
};

pub static RAY_START_COMMAND: Key = Key {
    name: "ray.start-command",
    kind: Kind::Text,
    default: None,
    aliases: &[alias("KUBERAY_GEN_RAY_START_CMD")],
    doc: "The `ray start ...` command line. `$VAR` and `${VAR}` are expanded from the environment, as KubeRay's bash would.",
};

pub static RAY_MODE: Key = Key {
    name: "ray.mode",
    kind: Kind::Choice(super::RayMode::WORDS),
    default: Some("direct"),
    aliases: &[],
    doc: "direct: run `ray start` without --block and supervise the daemons (recovers the GCS in place). block: run it as given.",
};

pub static RAY_GCS_PORT: Key = Key {
    name: "ray.gcs-port",
    kind: Kind::Count { min: 1, max: 65535 },
    default: Some("6379"),
    aliases: &[alias("RAY_PORT")],
    doc: "The GCS port, when the start command has no --port.",
};

pub static RAY_RECONNECT_TIMEOUT: Key = Key {
    name: "ray.reconnect-timeout",
    kind: Kind::Duration,
    default: Some("60s"),
    aliases: &[EnvAlias {
        name: "RAY_gcs_rpc_server_reconnect_timeout_s",
        unit: EnvUnit::Seconds,
        empty_is_unset: true,
    }],
    doc: "The head's GCS reconnect timeout: the raylet exits after this long without a GCS.",
};

pub static RAY_CLIENT_CHECK_INTERVAL: Key = Key {
    name: "ray.client-check-interval",
    kind: Kind::Duration,
    default: Some("100ms"),
    aliases: &[EnvAlias {
        name: "RAY_grpc_client_check_connection_status_interval_milliseconds",
        unit: EnvUnit::Milliseconds,
        empty_is_unset: true,
    }],
    doc: "How often every Ray process that `ray start` spawns re-checks a failing GCS channel. Exported to Ray as RAY_grpc_client_check_connection_status_interval_milliseconds; Ray's own default of 1s makes drivers see a GCS restart about 1 s late.",
};

pub static RAY_ON_DAEMON_EXIT: Key = Key {
    name: "ray.on-daemon-exit",
    kind: Kind::Choice(super::DaemonExitPolicy::WORDS),
    default: Some("restart"),
    aliases: &[],
    doc: "What the exit, or a hang past ray.daemon-unhealthy-after, of the dashboard, log monitor, autoscaler monitor or client server does: restart it in place, exit (84), or ignore it.",
};

pub static RAY_HEALTH_INTERVAL: Key = Key {
    name: "ray.health-interval",
    kind: Kind::Duration,
    default: Some("2s"),
    aliases: &[],
    doc: "How often each daemon but the GCS is checked: the raylet's grpc.health.v1 Check, the dashboard's /api/version, and every daemon's /proc state.",
};

pub static RAY_HEALTH_TIMEOUT: Key = Key {
    name: "ray.health-timeout",
    kind: Kind::Duration,
    default: Some("1s"),
    aliases: &[],
    doc: "The timeout of one daemon health check.",
};

pub static RAY_RAYLET_UNHEALTHY_AFTER: Key = Key {
    name: "ray.raylet-unhealthy-after",
    kind: Kind::Duration,
    default: Some("10s"),
    aliases: &[],
    doc: "/readyz fails once the head raylet has failed its checks for this long (KubeRay's default readiness probe takes about 50 s).",
};

pub static RAY_RAYLET_HUNG_AFTER: Key = Key {
    name: "ray.raylet-hung-after",
    kind: Kind::Duration,
    default: Some("2m"),
    aliases: &[],
    doc: "A head raylet that has failed its checks for this long is SIGKILLed and rayhead exits 83: a new raylet would be a new node, so it cannot be replaced in place. A shorter hang costs readiness only.",
};

pub static RAY_DAEMON_UNHEALTHY_AFTER: Key = Key {
    name: "ray.daemon-unhealthy-after",
    kind: Kind::Duration,
    default: Some("10s"),
    aliases: &[],
    doc: "/readyz fails once a required dashboard has failed its checks for this long; then a hung dashboard, log monitor, autoscaler monitor or client server meets ray.on-daemon-exit (restarted in place, by default).",
};

pub static RAY_READY_REQUIRES: Key = Key {
    name: "ray.ready-requires",
    kind: Kind::Argv,
    default: Some("raylet dashboard"),
    aliases: &[],
    doc: "The daemons /readyz needs running and healthy, beside the GCS: any of raylet, dashboard, log_monitor, monitor, client_server. One that the head does not run (--include-dashboard=false) is not waited for.",
};

pub static RAY_OPEN_FILES: Key = Key {
    name: "ray.open-files",
    kind: Kind::Count {
        min: 1,
        max: 1 << 30,
    },
    default: Some("65536"),
    aliases: &[alias("RAY_START_ULIMIT_OPEN_FILES")],
    doc: "The open-files limit (RLIMIT_NOFILE) set for `ray start`, as KubeRay's `ulimit -n`.",
};

pub static GCS_HEALTH_INTERVAL: Key = Key {
    name: "gcs.health-interval",
    kind: Kind::Duration,
    default: Some("1s"),
    aliases: &[],
    doc: "How often grpc.health.v1.Health/Check is polled, beside the Watch stream.",
};

pub static GCS_HEALTH_TIMEOUT: Key = Key {
    name: "gcs.health-timeout",
    kind: Kind::Duration,
    default: Some("1s"),
    aliases: &[],
    doc: "The timeout of one health check.",
};

pub static GCS_UNHEALTHY_AFTER: Key = Key {
    name: "gcs.unhealthy-after",
    kind: Kind::Duration,
    default: Some("10s"),
    aliases: &[],
    doc: "A live gcs_server that is not SERVING for this long is declared lost.",
};

pub static GCS_DEADLINE_MARGIN: Key = Key {
    name: "gcs.deadline-margin",
    kind: Kind::Duration,
    default: Some("5s"),
    aliases: &[],
    doc: "Recovery must finish this long before the head's reconnect timeout.",
};

pub static GCS_MAX_RESTARTS: Key = Key {
    name: "gcs.max-restarts",
    kind: Kind::Count { min: 1, max: 1000 },
    default: Some("5"),
    aliases: &[],
    doc: "Consecutive failed in-place GCS restarts before rayhead gives up (exit 82). A restart fails when the new GCS never answers SERVING, or is lost again within gcs.stable-after.",
};

pub static GCS_STABLE_AFTER: Key = Key {
    name: "gcs.stable-after",
    kind: Kind::Duration,
    default: Some("2s"),
    aliases: &[],
    doc: "A restarted GCS lost again within this long of answering SERVING counts as a failed restart.",
};

pub static GCS_STORAGE_MIN_FREE: Key = Key {
    name: "gcs.storage-min-free",
    kind: Kind::Mark,
    default: Some("64MiB"),
    aliases: &[],
    doc: "With the GCS on RocksDB (RAY_gcs_storage=rocksdb): the free space the storage path must have before ray start and before each in-place restart. RocksDB needs room for its write-ahead logs (about 13 MiB each, preallocated) and compactions. A size (\"64MiB\"), a share of the volume (\"5%\"; less than 100%), or \"off\" (then only a disk with nothing left counts as full). A mark as large as the volume can never be met: exit 64.",
};

pub static GCS_STORAGE_STARTUP_TIMEOUT: Key = Key {
    name: "gcs.storage-startup-timeout",
    kind: Kind::Duration,
    default: Some("5m"),
    aliases: &[],
    doc: "With the GCS on RocksDB: how long the start gate waits for a full storage path to have gcs.storage-min-free before rayhead gives up (exit 90). A missing, read-only or unwritable path fails at once (exit 89). At least 1s.",
};

pub static GCS_STORAGE_CHECK_INTERVAL: Key = Key {
    name: "gcs.storage-check-interval",
    kind: Kind::Duration,
    default: Some("5s"),
    aliases: &[],
    doc: "With the GCS on RocksDB: how often the storage path's free space and the database's size are read for /status and the metrics. At least 100ms.",
};

pub static REDIS_ADDRESS: Key = Key {
    name: "redis.address",
    kind: Kind::Text,
    default: None,
    aliases: &[alias("RAY_REDIS_ADDRESS")],
    doc: "The external Redis of GCS fault tolerance: host:port, redis://, rediss://. Unset: no fault tolerance.",
};

pub static REDIS_USERNAME: Key = Key {
    name: "redis.username",
    kind: Kind::Text,
    default: None,
    aliases: &[alias("REDIS_USERNAME")],
    doc: "The Redis ACL user.",
};

pub static REDIS_PASSWORD: Key = Key {
    name: "redis.password",
    kind: Kind::Secret,
    default: None,
    aliases: &[alias("REDIS_PASSWORD")],
    doc: "The Redis password. Never logged or shown.",
};

pub static REDIS_TLS_CA_CERT: Key = Key {
    name: "redis.tls-ca-cert",
    kind: Kind::Text,
    default: None,
    aliases: &[alias("RAY_REDIS_CA_CERT")],
    doc: "For rediss://: a PEM file of CA certificates to trust (else the system's).",
};

pub static REDIS_TLS_CA_PATH: Key = Key {
    name: "redis.tls-ca-path",
    kind: Kind::Text,
    default: None,
    aliases: &[alias("RAY_REDIS_CA_PATH")],
    doc: "For rediss://: a directory of PEM CA certificates to trust, added to tls-ca-cert.",
};

pub static REDIS_TLS_CLIENT_CERT: Key = Key {
    name: "redis.tls-client-cert",
    kind: Kind::Text,
    default: None,
    aliases: &[alias("RAY_REDIS_CLIENT_CERT")],
    doc: "For rediss:// with client authentication: the client certificate (PEM).",
};

pub static REDIS_TLS_CLIENT_KEY: Key = Key {
    name: "redis.tls-client-key",
    kind: Kind::Text,
    default: None,
    aliases: &[alias("RAY_REDIS_CLIENT_KEY")],
    doc: "For rediss:// with client authentication: the client key (PEM).",
};

pub static REDIS_TLS_SERVER_NAME: Key = Key {
    name: "redis.tls-server-name",
    kind: Kind::Text,
    default: None,
    aliases: &[alias("RAY_REDIS_SERVER_NAME")],
    doc: "For rediss://: the name to verify. rayhead verifies the address's host; a different name is logged and not used yet.",
};

pub static REDIS_NAMESPACE: Key = Key {
    name: "redis.namespace",
    kind: Kind::Text,
    default: None,
    aliases: &[alias("RAY_external_storage_namespace")],
    doc: "Ray's external storage namespace: the keys are RAY<namespace>@<TABLE>.",
};

pub static REDIS_SKIP_CHECKS: Key = Key {
    name: "redis.skip-checks",
    kind: Kind::Argv,
    default: None,
    aliases: &[],
    doc: "Checks the probe must not run, for a managed Redis that forbids their commands: info, config, tables.",
};

pub static REDIS_PROBE_INTERVAL: Key = Key {
    name: "redis.probe-interval",
    kind: Kind::Duration,
    default: Some("2s"),
    aliases: &[],
    doc: "How often Redis is probed while supervising.",
};

pub static REDIS_STARTUP_TIMEOUT: Key = Key {
    name: "redis.startup-timeout",
    kind: Kind::Duration,
    default: Some("5m"),
    aliases: &[],
    doc: "How long the start gate waits for Redis before rayhead gives up.",
};

pub static REDIS_CONNECT_TIMEOUT: Key = Key {
    name: "redis.connect-timeout",
    kind: Kind::Duration,
    default: Some("2s"),
    aliases: &[],
    doc: "The timeout of one connection attempt to Redis.",
};

pub static REDIS_COMMAND_TIMEOUT: Key = Key {
    name: "redis.command-timeout",
    kind: Kind::Duration,
    default: Some("1s"),
    aliases: &[],
    doc: "The timeout of one Redis command.",
};

pub static PROBE_LISTEN: Key = Key {
    name: "probe.listen",
    kind: Kind::Listen,
    default: Some("0.0.0.0:8099"),
    aliases: &[],
    doc: "Where the HTTP probe server listens (/readyz, /livez, /status, /metrics).",
};

pub static PROBE_SOCKET: Key = Key {
    name: "probe.socket",
    kind: Kind::Text,
    default: Some("auto"),
    aliases: &[],
    doc: "A Unix socket serving the same routes, for `rayhead probe`: no network peer can reach it, so no flood can crowd the exec probe out. \"auto\" is probe-<probe.listen's port>.sock (two rayheads on one machine never share one) in a directory of rayhead's own, created 0700: $XDG_RUNTIME_DIR/rayhead when set, else /tmp/rayhead-<uid>; one owned by another user or open to others is refused. A path given is never unlinked unless it is a socket of this user's. \"\" turns it off.",
};

pub static PROBE_STALL_AFTER: Key = Key {
    name: "probe.stall-after",
    kind: Kind::Duration,
    default: Some("30s"),
    aliases: &[],
    doc: "/livez fails when the supervisor's heartbeat is older than this.",
};

/// Every key, in the order `config check` prints them.
pub static MEMORY_GCS_HIGH_WATER: Key = Key {
    name: "memory.gcs-high-water",
    kind: Kind::Mark,
    default: Some("50%"),
    aliases: &[],
    doc: "Restart gcs_server in place, through the recovery path, once its RSS stays over this mark for memory.sustain: before it takes the whole head container over its limit and the OOM killer takes every process with it. A size (\"2GiB\"), a share of the container's memory limit (\"50%\": no limit, no mark), or \"off\". A restart drops the task events the GCS keeps in memory only.",
};

pub static MEMORY_SUSTAIN: Key = Key {
    name: "memory.sustain",
    kind: Kind::Duration,
    default: Some("10s"),
    aliases: &[],
    doc: "How long gcs_server's RSS must stay over memory.gcs-high-water, sample after sample (every ray.health-interval), before it is restarted: a spike is not a trend.",
};

pub static MEMORY_MIN_INTERVAL: Key = Key {
    name: "memory.min-interval",
    kind: Kind::Duration,
    default: Some("10m"),
    aliases: &[],
    doc: "At most one memory restart of gcs_server per this interval.",
};

pub static KEYS: &[&Key] = &[
    &INIT_FORWARD_SIGNALS,
    &INIT_STOP_GRACE,
    &INIT_STOP_COMMAND,
    &INIT_STOP_COMMAND_TIMEOUT,
    &INIT_TERMINATION_LOG,
    &LOG_LEVEL,
    &LOG_FORMAT,
    &RAY_START_COMMAND,
    &RAY_MODE,
    &RAY_GCS_PORT,
    &RAY_RECONNECT_TIMEOUT,
    &RAY_CLIENT_CHECK_INTERVAL,
    &RAY_ON_DAEMON_EXIT,
    &RAY_HEALTH_INTERVAL,
    &RAY_HEALTH_TIMEOUT,
    &RAY_RAYLET_UNHEALTHY_AFTER,
    &RAY_RAYLET_HUNG_AFTER,
    &RAY_DAEMON_UNHEALTHY_AFTER,
    &RAY_READY_REQUIRES,
    &RAY_OPEN_FILES,
    &GCS_HEALTH_INTERVAL,
    &GCS_HEALTH_TIMEOUT,
    &GCS_UNHEALTHY_AFTER,
    &GCS_DEADLINE_MARGIN,
    &GCS_MAX_RESTARTS,
    &GCS_STABLE_AFTER,
    &GCS_STORAGE_MIN_FREE,
    &GCS_STORAGE_STARTUP_TIMEOUT,
    &GCS_STORAGE_CHECK_INTERVAL,
    &REDIS_ADDRESS,
    &REDIS_USERNAME,
    &REDIS_PASSWORD,
    &REDIS_TLS_CA_CERT,
    &REDIS_TLS_CA_PATH,
    &REDIS_TLS_CLIENT_CERT,
    &REDIS_TLS_CLIENT_KEY,
    &REDIS_TLS_SERVER_NAME,
    &REDIS_NAMESPACE,
    &REDIS_SKIP_CHECKS,
    &REDIS_PROBE_INTERVAL,
    &REDIS_STARTUP_TIMEOUT,
    &REDIS_CONNECT_TIMEOUT,
    &REDIS_COMMAND_TIMEOUT,
    &PROBE_LISTEN,
    &PROBE_SOCKET,
    &PROBE_STALL_AFTER,
    &MEMORY_GCS_HIGH_WATER,
    &MEMORY_SUSTAIN,
    &MEMORY_MIN_INTERVAL,
];

/// The key of that name.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().copied().find(|k| k.name == name)
}

/// The sections, in order.
pub fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KEYS {
        if !out.contains(&k.section()) {
            out.push(k.section());
        }
    }
    out
}
