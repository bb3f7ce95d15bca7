//! The dev cluster's pods as commands: what KubeRay would run in each
//! container, with the env it would give it, on loopback.

use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::Secret;
use crate::private_dir;
use crate::redis::address::RedisAddress;

use super::state_dir::{Saved, StateDir};

/// Where the Redis that the GCS uses lives.
pub enum RedisSource {
    /// `redis-server`, started by the runner, with its data in the state
    /// dir.
    Embedded { server: PathBuf },
    /// `--redis-url`: the user's own.
    External(RedisAddress),
}

/// The head's command line after the binary and its env, which
/// [`HeadSpec::check`] validates as the head itself would.
pub struct HeadSpec {
    pub args: Vec<String>,
    /// Set (a value, kept as a secret: one is the Redis password) or
    /// removed; later entries win.
    pub env: Vec<(String, Option<Secret>)>,
}

impl HeadSpec {
    /// Loads the configuration and the plan the head would, so that a
    /// value the head would refuse (a --head-timeout shorter than the
    /// recovery margin, say) is an error now, not a head in a crash loop.
    pub fn check(&self) -> Result<(), String> {
        let flags = self
            .args
            .windows(2)
            .filter(|w| w[0] == "--set")
            .map(|w| crate::config::FlagValue::parse_set(&w[1]))
            .collect::<Result<Vec<_>, _>>()?;
        let inputs = crate::config::Inputs { file: None, flags };
        let env = HeadEnv(&self.env);
        let cfg = crate::config::Config::load(&inputs, &env)
            .and_then(|c| crate::ray::daemons::check_ready_requires(&c).map(|()| c))
            .map_err(|e| e.to_string().trim_end().to_string())?;
        let text = cfg.ray.start_command.clone().unwrap_or_default();
        crate::ray::Plan::new(&cfg, crate::ray::StartFrom::Text(&text), &env).map(|_| ())
    }
}

/// The runner's env with the head's entries over it.
struct HeadEnv<'a>(&'a [(String, Option<Secret>)]);

impl crate::config::Env for HeadEnv<'_> {
    fn var(&self, name: &str) -> Result<Option<String>, crate::config::env::NotUnicode> {
        match self.0.iter().rev().find(|(k, _)| k == name) {
            Some((_, v)) => Ok(v.as_ref().map(|s| s.expose().to_string())),
            None => crate::config::Env::var(&crate::config::ProcessEnv, name),
        }
    }
}

/// Everything a pod's command needs.
pub struct Cluster {
    pub saved: Saved,
    pub root: PathBuf,
    /// Ray's temp dirs live under it: the state dir, or a short path in
    /// /tmp when the state dir's is too long for Ray's Unix sockets.
    pub ray_root: PathBuf,
    pub ray: PathBuf,
    /// The GCS's Redis; `None`: the GCS stores in RocksDB, in `gcs/`.
    pub redis: Option<RedisSource>,
    /// `--head-timeout`: the head's RAY_gcs_rpc_server_reconnect_timeout_s.
    pub head_timeout: Option<Duration>,
    pub workers: u32,
}

/// Ray puts sockets at `<temp-dir>/session_<date>_<pid>/sockets/plasma_store`,
/// about 65 characters below the temp dir, and a Unix socket path has at
/// most 107.
const RAY_TEMP_DIR_MAX: usize = 40;

/// What a worker gets, as KubeRay gives its worker pods.
pub const WORKER_RECONNECT_TIMEOUT_S: &str = "600";
/// The manifests' client check interval (`ray.client-check-interval`).
const CLIENT_CHECK_MS: &str = "100";

/// Ray's temp dir for the state dir `root` (absolute): in it when the
/// path is short enough for Ray's sockets, else a predictable one in /tmp,
/// named after a hash of `root`.
pub fn ray_temp_root(root: &std::path::Path) -> PathBuf {
    let in_state = root.join("ray");
    if in_state.join("worker-00").as_os_str().len() <= RAY_TEMP_DIR_MAX {
        return in_state;
    }
    let hash = root
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    PathBuf::from(format!("/tmp/rayhead-dev-{:08x}", hash as u32))
}

impl Cluster {
    pub fn new(
        dir: &StateDir,
        saved: Saved,
        ray: PathBuf,
        redis: Option<RedisSource>,
        head_timeout: Option<Duration>,
        workers: u32,
    ) -> Result<Cluster, String> {
        let ray_root = ray_temp_root(&dir.root);
        // Ray puts the session's sockets and logs there: a predictable
        // path in /tmp that another user made first would be theirs.
        private_dir::make(&ray_root, private_dir::my_uid()).map_err(|e| {
            format!(
                "Ray's temp dir for this state dir, {e}; remove it if it is an old one of yours, else give a shorter --state-dir (it then holds Ray's temp dir)"
            )
        })?;
        Ok(Cluster {
            saved,
            root: dir.root.clone(),
            ray_root,
            ray,
            redis,
            head_timeout,
            workers,
        })
    }

    pub fn gcs_address(&self) -> String {
        format!("127.0.0.1:{}", self.saved.ports.gcs)
    }

    pub fn probe_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.saved.ports.probe)
    }

    pub fn dashboard_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.saved.ports.dashboard)
    }

    pub fn log(&self, pod: super::kubelet::Pod) -> PathBuf {
        self.root.join("logs").join(format!("{pod}.log"))
    }

    pub fn termination_log(&self) -> PathBuf {
        self.root.join("head-termination.log")
    }

    /// RAY_gcs_storage_path with `--storage rocksdb`: in the state dir, so
    /// that the next run finds the database, as a restarted head pod finds
    /// its PVC.
    fn rocksdb_path(&self) -> PathBuf {
        self.root.join("gcs")
    }

    /// The GCS's store in words, for the banner.
    pub fn store_shown(&self) -> String {
        match &self.redis {
            None => format!("RocksDB in {}", self.rocksdb_path().display()),
            Some(RedisSource::Embedded { .. }) => format!(
                "Redis {} (embedded, AOF in {}), namespace {}",
                self.redis_shown(),
                self.root.join("redis").display(),
                self.saved.namespace
            ),
            Some(RedisSource::External(_)) => format!(
                "Redis {} (--redis-url), namespace {}",
                self.redis_shown(),
                self.saved.namespace
            ),
        }
    }

    /// The Redis as `RAY_REDIS_ADDRESS` (never with the password), its
    /// password and username; `None` with RocksDB.
    pub fn redis_address(&self) -> Option<(String, Option<Secret>, Option<String>)> {
        Some(match self.redis.as_ref()? {
            RedisSource::Embedded { .. } => (
                format!("127.0.0.1:{}", self.saved.ports.redis),
                Some(Secret::new(self.saved.redis_password.clone())),
                None,
            ),
            RedisSource::External(a) => {
                let host = crate::redis::address::host_port(&a.host, a.port);
                let addr = if a.tls {
                    format!("rediss://{host}")
                } else {
                    host
                };
                (addr, a.password.clone(), a.username.clone())
            }
        })
    }

    /// The Redis URL to show: the password out, as the redactor hides it.
    pub fn redis_shown(&self) -> String {
        let Some((addr, password, user)) = self.redis_address() else {
            return "none (RocksDB)".into();
        };
        let (scheme, hostport) = match addr.strip_prefix("rediss://") {
            Some(h) => ("rediss", h.to_string()),
            None => ("redis", addr),
        };
        let auth = match (user, password) {
            (Some(u), Some(_)) => format!("{u}:{}@", crate::redact::REDACTED),
            (Some(u), None) => format!("{u}@"),
            (None, Some(_)) => format!(":{}@", crate::redact::REDACTED),
            (None, None) => String::new(),
        };
        crate::redact::url(&format!("{scheme}://{auth}{hostport}"))
    }

    /// `redis.conf` for the embedded Redis: a file of mode 0600, so that
    /// the password is on no command line. AOF on and `noeviction`, as
    /// the GCS needs; data in the state dir.
    fn write_redis_conf(&self) -> Result<PathBuf, String> {
        let dir = self.root.join("redis");
        let conf = dir.join("redis.conf");
        // No logfile: Redis logs to stdout, which goes to logs/redis.log
        // beside the other pods' logs.
        let text = format!(
            "bind 127.0.0.1\nport {}\nrequirepass \"{}\"\nappendonly yes\nappendfsync everysec\n\
             maxmemory-policy noeviction\ndir \"{}\"\ndaemonize no\nsave \"\"\n",
            self.saved.ports.redis,
            self.saved.redis_password,
            dir.display(),
        );
        super::state_dir::write_private(&conf, text.as_bytes())?;
        Ok(conf)
    }

    /// The command of `pod`, its output appended to its log.
    pub fn command(&self, pod: super::kubelet::Pod) -> Result<Command, String> {
        use super::kubelet::Pod;
        let mut cmd = match pod {
            Pod::Redis => {
                let Some(RedisSource::Embedded { server }) = &self.redis else {
                    return Err("no embedded Redis with --redis-url or RocksDB".into());
                };
                let mut c = Command::new(server);
                c.arg(self.write_redis_conf()?);
                c
            }
            Pod::Head => self.head()?,
            Pod::Worker(n) => self.worker(n)?,
        };
        crate::init::spawn::prepare(&mut cmd);
        // A pod gets SIGTERM if the runner dies, even by SIGKILL, and so
        // never outlives it: the head's rayhead then stops its own tree, a
        // worker its node, Redis itself. (The runner spawns from its one
        // runtime thread, whose exit is the process's.)
        crate::sys::death::die_with_parent(&mut cmd, libc::SIGTERM);
        let log = self.log(pod);
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| format!("{}: {e}", log.display()))
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(open()?))
            .stderr(Stdio::from(open()?));
        Ok(cmd)
    }

    /// The head container: this very binary, `rayhead run`, with the env
    /// KubeRay gives a head with GCS fault tolerance.
    fn head(&self) -> Result<Command, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find rayhead itself: {e}"))?;
        // A head that died leaves this behind, and `ray start --head`
        // then refuses to start ("already running").
        let _ = std::fs::remove_file(self.ray_root.join("head/ray_current_cluster"));
        let spec = self.head_spec();
        let mut cmd = Command::new(exe);
        cmd.args(&spec.args);
        for (k, v) in &spec.env {
            match v {
                Some(v) => cmd.env(k, v.expose()),
                None => cmd.env_remove(k),
            };
        }
        Ok(cmd)
    }

    /// The head's arguments after the binary, and its env over the
    /// runner's (`None`: removed).
    pub fn head_spec(&self) -> HeadSpec {
        let mut start = self.head_start_command();
        let plain = |k: &str, v: String| (k.to_string(), Some(Secret::new(v)));
        let mut env = vec![
            plain("RAY_ADDRESS", self.gcs_address()),
            plain("RAY_PORT", self.saved.ports.gcs.to_string()),
            plain("RAY_DISABLE_USAGE_STATS", "1".into()),
            ("REDIS_PASSWORD".to_string(), None),
            ("REDIS_USERNAME".to_string(), None),
            // The runner's own env must not choose the head's store.
            ("RAY_REDIS_ADDRESS".to_string(), None),
            ("RAY_gcs_storage".to_string(), None),
            ("RAY_gcs_storage_path".to_string(), None),
        ];
        self.head_store(&mut start, &mut env);
        if let Some(t) = self.head_timeout {
            env.push(plain(
                "RAY_gcs_rpc_server_reconnect_timeout_s",
                t.as_secs().to_string(),
            ));
        }
        env.push(plain("KUBERAY_GEN_RAY_START_CMD", start));
        HeadSpec {
            args: self.head_args(),
            env,
        }
    }

    /// `ray start --head` on the saved ports, as KubeRay generates it.
    fn head_start_command(&self) -> String {
        let temp = self.ray_root.join("head");
        let p = &self.saved.ports;
        let mut start = format!(
            "{} start --head --block --port={} --node-ip-address=127.0.0.1 --temp-dir={} \
             --dashboard-host=127.0.0.1 --dashboard-port={} --dashboard-agent-listen-port={} \
             --ray-client-server-port={} --metrics-export-port={} --disable-usage-stats",
            quoted(&self.ray.display().to_string()),
            p.gcs,
            quoted(&temp.display().to_string()),
            p.dashboard,
            p.agent,
            p.client,
            p.metrics,
        );
        // Work goes to the workers, as on a RayCluster whose head has no
        // CPUs to offer; without workers the head runs it.
        if self.workers > 0 {
            start.push_str(" --num-cpus=0");
        }
        start
    }

    /// rayhead's own keys as flags: they beat any RAYHEAD_* of the user's
    /// env, and a wrong one would be refused, not ignored.
    fn head_args(&self) -> Vec<String> {
        vec![
            "run".to_string(),
            // A dev cluster's stop need not wait long: a SIGTERMed
            // gcs_server hangs until SIGKILL, and the GCS's state is in
            // Redis already.
            "--set".into(),
            "init.stop-grace=5s".into(),
            // `ray stop` stops every Ray process on the machine, the user's
            // other clusters included: the dev head stops its own tree only.
            "--set".into(),
            "init.stop-command=true".into(),
            "--set".into(),
            format!("probe.listen=127.0.0.1:{}", self.saved.ports.probe),
            "--set".into(),
            format!("init.termination-log={}", self.termination_log().display()),
        ]
    }

    /// The store's env (and Redis's credentials' flags, by reference), as
    /// KubeRay 1.7 gives a head with either backend.
    fn head_store(&self, start: &mut String, env: &mut Vec<(String, Option<Secret>)>) {
        let plain = |k: &str, v: String| (k.to_string(), Some(Secret::new(v)));
        match self.redis_address() {
            None => {
                env.push(plain("RAY_gcs_storage", "rocksdb".into()));
                env.push(plain(
                    "RAY_gcs_storage_path",
                    self.rocksdb_path().display().to_string(),
                ));
            }
            Some((addr, password, user)) => {
                env.push(plain("RAY_REDIS_ADDRESS", addr));
                env.push(plain(
                    "RAY_external_storage_namespace",
                    self.saved.namespace.clone(),
                ));
                if let Some(pw) = password {
                    start.push_str(" --redis-password=$REDIS_PASSWORD");
                    env.push(("REDIS_PASSWORD".into(), Some(pw)));
                }
                if let Some(u) = user {
                    start.push_str(" --redis-username=$REDIS_USERNAME");
                    env.push(plain("REDIS_USERNAME", u));
                }
            }
        }
    }

    /// A worker pod: `ray start --address ... --block`, with the reconnect
    /// timeout KubeRay gives workers and a temp dir of its own.
    fn worker(&self, n: u32) -> Result<Command, String> {
        let temp = self.ray_root.join(format!("worker-{n:02}"));
        let _ = std::fs::remove_file(temp.join("ray_current_cluster"));
        let free = || -> Result<u16, String> {
            std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("cannot find a free loopback port: {e}"))
        };
        let (agent, metrics) = (free()?, free()?);
        let mut cmd = Command::new(&self.ray);
        cmd.arg("start")
            .arg(format!("--address={}", self.gcs_address()))
            .args(["--block", "--node-ip-address=127.0.0.1"])
            .arg(format!("--temp-dir={}", temp.display()))
            .arg(format!("--dashboard-agent-listen-port={agent}"))
            .arg(format!("--metrics-export-port={metrics}"))
            .arg("--disable-usage-stats")
            .env(
                "RAY_gcs_rpc_server_reconnect_timeout_s",
                WORKER_RECONNECT_TIMEOUT_S,
            )
            .env(
                "RAY_grpc_client_check_connection_status_interval_milliseconds",
                CLIENT_CHECK_MS,
            )
            // A SIGTERMed worker otherwise drains for up to 30 s, waiting on
            // leases (the detached actor's) that a stopping cluster never
            // returns.
            .env("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
            .env("RAY_DISABLE_USAGE_STATS", "1");
        Ok(cmd)
    }
}

/// `text` as one word for the bash-like split of the start command.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Finds `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// How to get each tool the runner needs.
pub fn install_hint(tool: &str) -> &'static str {
    match tool {
        "ray" => {
            "Install Ray into a virtualenv and put it on PATH:\n\
             \x20   python3 -m venv .venv && .venv/bin/pip install 'ray[default]==2.60.0'\n\
             \x20   export PATH=\"$PWD/.venv/bin:$PATH\"\n\
             (in a rayhead checkout, `make dev` does both)"
        }
        _ => {
            "Install Redis (Debian/Ubuntu: `apt-get install -y redis-server`; macOS: \
             `brew install redis`), or use a Redis of your own with --redis-url redis://[:PASSWORD@]HOST:PORT"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Removes a temp root made in /tmp, even if the test fails.
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cluster(dir: &StateDir) -> Result<Cluster, String> {
        let saved = dir.cluster(None).unwrap();
        let redis = RedisSource::Embedded {
            server: PathBuf::new(),
        };
        Cluster::new(dir, saved, PathBuf::new(), Some(redis), None, 0)
    }

    /// With RocksDB the head gets what KubeRay 1.7 gives it, no Redis of
    /// the runner's env leaks in, and the head accepts the result.
    #[test]
    fn a_rocksdb_head_gets_the_storage_env_and_no_redis() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("s"), false).unwrap();
        let saved = dir.cluster(None).unwrap();
        let c = Cluster::new(&dir, saved, PathBuf::from("/bin/ray"), None, None, 0).unwrap();
        let spec = c.head_spec();
        let last = |k: &str| {
            spec.env
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.as_ref().map(|v| v.expose().to_string()))
        };
        assert_eq!(last("RAY_gcs_storage").as_deref(), Some("rocksdb"));
        assert_eq!(
            last("RAY_gcs_storage_path"),
            Some(c.rocksdb_path().display().to_string())
        );
        assert!(c.rocksdb_path().is_dir());
        assert_eq!(last("RAY_REDIS_ADDRESS"), None);
        assert_eq!(last("REDIS_PASSWORD"), None);
        let start = last("KUBERAY_GEN_RAY_START_CMD").unwrap();
        assert!(!start.contains("redis"), "{start}");
        spec.check().expect("the head accepts it");
        assert!(c.store_shown().starts_with("RocksDB in "));
    }

    /// A long state dir puts Ray's temp root at a predictable path in
    /// /tmp: made 0700 when it is not there; refused when another user
    /// made it first, or when it is ours but open to others.
    #[test]
    fn a_temp_root_in_tmp_must_be_ours_and_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let long = tmp.path().join("a-state-dir-with-a-long-name");
        let dir = StateDir::open(&long, false).unwrap();
        let first = cluster(&dir).unwrap();
        let _gone = Gone(first.ray_root.clone());
        let shown = first.ray_root.to_string_lossy().into_owned();
        assert!(shown.starts_with("/tmp/rayhead-dev-"), "{shown}");
        let meta = std::fs::symlink_metadata(&first.ray_root).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        // Again: ours and 0700, used as it is.
        cluster(&dir).unwrap();
        std::fs::set_permissions(&first.ray_root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = cluster(&dir).err().unwrap();
        assert!(e.contains("mode 0777") && e.contains("rayhead-dev-"), "{e}");
        if nix::unistd::geteuid().is_root() {
            std::fs::set_permissions(&first.ray_root, std::fs::Permissions::from_mode(0o700))
                .unwrap();
            std::os::unix::fs::chown(&first.ray_root, Some(65534), Some(65534)).unwrap();
            let e = cluster(&dir).err().unwrap();
            assert!(
                e.contains("owned by uid 65534") && e.contains("--state-dir"),
                "{e}"
            );
        }
        // A symlink planted there is not followed.
        std::fs::remove_dir_all(&first.ray_root).unwrap();
        std::os::unix::fs::symlink(tmp.path(), &first.ray_root).unwrap();
        let e = cluster(&dir).err().unwrap();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_file(&first.ray_root).unwrap();
    }

    /// A short state dir holds the temp root itself, 0700.
    #[test]
    fn a_temp_root_in_the_state_dir_is_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("s"), false).unwrap();
        let c = cluster(&dir).unwrap();
        assert!(c.ray_root.starts_with(tmp.path()), "{:?}", c.ray_root);
        let meta = std::fs::symlink_metadata(&c.ray_root).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }
}
