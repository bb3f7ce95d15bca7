//! Redis, as the GCS uses it: reachability, the start gate before `ray start`
//! and the restart gate before each in-place GCS restart.

pub mod address;
pub mod cleanup;
pub mod findings;

use std::time::Duration;

use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use tokio::time::{sleep, Instant};

use crate::config::RedisConfig;
pub use address::RedisAddress;

/// Why a PING failed, in the words an operator needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("connection refused")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Other(String),
}

impl PingError {
    /// An error that waiting will not fix.
    pub fn is_permanent(&self) -> bool {
        matches!(self, PingError::Auth(_))
    }
}

/// A Redis endpoint with its credentials and timeouts.
#[derive(Clone)]
pub struct Redis {
    pub address: RedisAddress,
    info: redis::ConnectionInfo,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// The connection kept between PINGs; clones share it.
    conn: Arc<Mutex<Option<MultiplexedConnection>>>,
    /// The master behind a Sentinel, once found.
    master: Arc<Mutex<Option<String>>>,
    /// For rediss://: the CA and client certificates.
    tls: Option<redis::TlsCertificates>,
    /// Checks the probe skips (redis.skip-checks).
    pub(crate) skip: Vec<String>,
}

impl Redis {
    /// From the configuration; `Ok(None)` when no Redis is configured. The
    /// config's username and password beat those in the address.
    pub fn from_config(cfg: &RedisConfig) -> Result<Option<Redis>, String> {
        let Some(text) = &cfg.address else {
            return Ok(None);
        };
        let mut address = address::parse(text).map_err(|e| format!("redis.address: {e}"))?;
        if cfg.username.is_some() {
            address.username = cfg.username.clone();
        }
        if cfg.password.is_some() {
            address.password = cfg.password.clone();
        }
        let tls = if address.tls {
            Some(tls_certificates(cfg)?)
        } else {
            None
        };
        if let Some(name) = &cfg.tls_server_name {
            if *name != address.host {
                tracing::warn!(server_name = %name, host = %address.host, "RAY_REDIS_SERVER_NAME differs from the address's host; rayhead verifies the host");
            }
        }
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(u) = &address.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &address.password {
            settings = settings.set_password(p.expose());
        }
        let info = connection_addr(&address.host, address.port, address.tls)
            .into_connection_info()
            .map_err(|e| format!("redis.address: {e}"))?
            .set_redis_settings(settings);
        Ok(Some(Redis {
            address,
            info,
            connect_timeout: cfg.connect_timeout,
            command_timeout: cfg.command_timeout,
            conn: Arc::default(),
            master: Arc::default(),
            tls,
            skip: cfg.skip_checks.clone(),
        }))
    }

    /// PINGs over the kept connection, or over a new one (connect and
    /// authenticate) when there is none or the kept one fails; returns the
    /// round-trip time. Reusing the connection keeps the periodic probe cheap.
    pub async fn ping(&self) -> Result<Duration, PingError> {
        let start = Instant::now();
        let kept = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(mut conn) = kept {
            if self.ping_on(&mut conn).await.is_ok() {
                return Ok(start.elapsed());
            }
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let start = Instant::now();
        let mut conn = self.connect().await?;
        self.ping_on(&mut conn).await?;
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        Ok(start.elapsed())
    }

    /// The kept connection after a successful PING, for further commands.
    pub(crate) fn kept(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Connects to the configured address; when that is a Sentinel (it
    /// answers `INFO sentinel`), asks it for its masters, requires exactly
    /// one as Ray does, and connects to that master with the same
    /// credentials. Every reconnect asks again, so a failover is followed.
    async fn connect(&self) -> Result<MultiplexedConnection, PingError> {
        let mut conn = self.connect_to(self.info.clone()).await?;
        if let Some((host, port)) = self.sentinel_master(&mut conn).await? {
            let addr = connection_addr(&host, port, self.tls.is_some());
            let info = self.info.clone().set_addr(addr);
            conn = self.connect_to(info).await?;
            *self.master.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(address::host_port(&host, port));
        }
        Ok(conn)
    }

    /// The master a Sentinel names, or `None` when the address is a plain
    /// Redis (or forbids INFO, which a Sentinel does not).
    async fn sentinel_master(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Option<(String, u16)>, PingError> {
        let mut info = redis::cmd("INFO");
        info.arg("sentinel");
        let text = match tokio::time::timeout(
            self.command_timeout,
            info.query_async::<String>(conn),
        )
        .await
        {
            Ok(Ok(t)) => t,
            _ => return Ok(None),
        };
        if !text.contains("sentinel_masters:") {
            return Ok(None);
        }
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("MASTERS");
        let masters: Vec<Vec<String>> =
            match tokio::time::timeout(self.command_timeout, cmd.query_async(conn)).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(classify(&e)),
                Err(_) => return Err(PingError::Timeout),
            };
        if masters.len() != 1 {
            return Err(PingError::Other(format!(
                "the Sentinel at {} monitors {} masters; Ray requires exactly one",
                self.address,
                masters.len()
            )));
        }
        let fields: std::collections::HashMap<&str, &str> = masters[0]
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?.as_str(), kv.get(1)?.as_str())))
            .collect();
        let host = fields.get("ip").copied().unwrap_or_default().to_string();
        let port = fields.get("port").and_then(|p| p.parse().ok());
        match port {
            Some(port) if !host.is_empty() => Ok(Some((host, port))),
            _ => Err(PingError::Other(format!(
                "the Sentinel at {} named no usable master",
                self.address
            ))),
        }
    }

    /// The master found through a Sentinel, if the address is one.
    pub fn sentinel_master_address(&self) -> Option<String> {
        self.master
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn connect_to(
        &self,
        info: redis::ConnectionInfo,
    ) -> Result<MultiplexedConnection, PingError> {
        let client = match &self.tls {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
            None => redis::Client::open(info),
        }
        .map_err(|e| classify(&e))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.connect_timeout + self.command_timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(PingError::Timeout),
        }
    }

    async fn ping_on(&self, conn: &mut MultiplexedConnection) -> Result<(), PingError> {
        let cmd = redis::cmd("PING");
        let pong = cmd.query_async::<String>(conn);
        match tokio::time::timeout(self.command_timeout, pong).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(PingError::Timeout),
        }
    }

    /// Waits until Redis answers an authenticated PING, or `until`. Logs what
    /// fails every few seconds. Returns at once on a wrong password.
    pub async fn wait_ready(&self, until: Instant, purpose: &str) -> Result<Duration, PingError> {
        let backoff =
            crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut failures = 0;
        let mut last_log: Option<Instant> = None;
        loop {
            match self.ping().await {
                Ok(rtt) => return Ok(rtt),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(3)) {
                        tracing::warn!(redis = %self.address, error = %e, purpose, "Redis is not answering yet");
                        last_log = Some(Instant::now());
                    }
                    failures += 1;
                    let pause = backoff.delay(failures);
                    if until.saturating_duration_since(Instant::now()) <= pause {
                        return Err(e);
                    }
                    sleep(pause).await;
                }
            }
        }
    }
}

/// Where to connect: `host:port`, over TLS (the host verified, never
/// `insecure`) when `tls`. The configured address and a Sentinel's master
/// alike.
fn connection_addr(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    }
}

/// Ray's TLS settings, read now so that a missing file is an error that
/// names its key: the CA file and the CA directory's PEM files become the
/// trusted roots (else the system's), the client pair enables client
/// authentication.
fn tls_certificates(cfg: &RedisConfig) -> Result<redis::TlsCertificates, String> {
    let read = |key: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("{key} {}: {e}", p.display()))
    };
    let mut roots = Vec::new();
    if let Some(p) = &cfg.tls_ca_cert {
        roots.extend(read("redis.tls-ca-cert (RAY_REDIS_CA_CERT)", p)?);
        roots.push(b'\n');
    }
    if let Some(dir) = &cfg.tls_ca_path {
        let key = "redis.tls-ca-path (RAY_REDIS_CA_PATH)";
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("{key} {}: {e}", dir.display()))?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let text = read(key, &f)?;
            if text.windows(11).any(|w| w == b"BEGIN CERTI") {
                roots.extend(text);
                roots.push(b'\n');
            }
        }
    }
    let client_tls = match (&cfg.tls_client_cert, &cfg.tls_client_key) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.tls-client-cert (RAY_REDIS_CLIENT_CERT)", c)?,
            client_key: read("redis.tls-client-key (RAY_REDIS_CLIENT_KEY)", k)?,
        }),
        _ => None,
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert: (!roots.is_empty()).then_some(roots),
    })
}

pub(crate) fn classify(e: &redis::RedisError) -> PingError {
    // The server's error code (the reply's first word) is protocol, not prose.
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
    {
        return PingError::Auth(e.code().unwrap_or("rejected").to_string());
    }
    if e.is_connection_refusal() {
        return PingError::Refused;
    }
    if e.is_timeout() {
        return PingError::Timeout;
    }
    PingError::Other(crate::redact::url(&e.to_string()))
}
