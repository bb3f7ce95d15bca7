//! Configuration: defaults, a TOML file, the environment and flags, layered
//! in that order (a flag beats env, env beats the file, the file beats the
//! default).
//!
//! Every problem is collected before anything is reported, so a user fixes a
//! broken file in one round: `serde`'s `deny_unknown_fields` would stop at
//! the first unknown key, so the file is walked against the key registry
//! ([`keys::KEYS`]) instead.

mod build;
pub mod env;
pub mod keys;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

pub use env::{Env, ProcessEnv};
use keys::{EnvUnit, Key, Kind, KEYS};
pub use value::{Secret, Value};

/// Where the config file's path may come from, when `--config` is absent.
pub const ENV_CONFIG: &str = "RAYHEAD_CONFIG";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key (`init.stop-grace`), or the file or variable at fault.
    pub key: String,
    /// Where the bad value came from, when a value is at fault.
    pub source: Option<Source>,
    /// What is wrong and what is expected. Never contains a secret.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(src) => write!(f, "{} (from {}): {}", self.key, src, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found, at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid configuration: {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// A `--set key=value` flag, or a dedicated flag such as `--log-level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagValue {
    pub key: String,
    pub value: String,
    /// How the user spelled it, for the source column.
    pub flag: String,
}

impl FlagValue {
    /// Parses `key=value` as given to `--set`.
    pub fn parse_set(arg: &str) -> Result<FlagValue, String> {
        let (k, v) = arg.split_once('=').ok_or_else(|| {
            format!("--set {arg:?}: expected KEY=VALUE, such as init.stop-grace=10s")
        })?;
        Ok(FlagValue {
            key: k.trim().to_string(),
            value: v.to_string(),
            flag: format!("--set {}", k.trim()),
        })
    }
}

/// The inputs to [`Config::load`].
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// Flags, in command-line order (a later one wins).
    pub flags: Vec<FlagValue>,
}

/// A key's effective value and its source.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub key: &'static Key,
    pub value: Option<Value>,
    pub source: Source,
}

/// A key whose value is one of a fixed set of words, parsed into an enum.
/// The words live here, once: the key registry validates against
/// `WORDS`, and `from_word` turns the validated word into the variant.
macro_rules! choice {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            pub fn from_word(word: &str) -> Option<$name> {
                match word {
                    $($word => Some($name::$variant),)+
                    _ => None,
                }
            }

            pub fn word(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }
    };
}

choice! {
    /// What to do when the dashboard, log monitor, monitor or client server exits.
    DaemonExitPolicy {
        Restart = "restart",
        Exit = "exit",
        Ignore = "ignore",
    }
}

choice! {
    /// How `ray start` is run.
    RayMode {
        Direct = "direct",
        Block = "block",
    }
}

choice! {
    LogFormat {
        Text = "text",
        Json = "json",
    }
}

#[derive(Debug, Clone)]
pub struct InitConfig {
    pub forward_signals: Vec<Signal>,
    pub stop_grace: Duration,
    pub stop_command: Option<Vec<String>>,
    pub stop_command_timeout: Duration,
    /// `None`: turned off.
    pub termination_log: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct RayConfig {
    pub start_command: Option<String>,
    pub mode: RayMode,
    pub gcs_port: u16,
    pub reconnect_timeout: Duration,
    /// Exported to `ray start`: how often Ray's GCS clients re-check a
    /// failing channel, which bounds how late applications see a recovery.
    pub client_check_interval: Duration,
    pub on_daemon_exit: DaemonExitPolicy,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub raylet_unhealthy_after: Duration,
    pub raylet_hung_after: Duration,
    pub daemon_unhealthy_after: Duration,
    /// Daemon names (from the daemon table) that `/readyz` needs.
    pub ready_requires: Vec<String>,
    pub open_files: u64,
}

#[derive(Debug, Clone)]
pub struct GcsConfig {
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub unhealthy_after: Duration,
    pub deadline_margin: Duration,
    pub max_restarts: u32,
    pub stable_after: Duration,
    /// RocksDB only: the free space needed to start a GCS.
    pub storage_min_free: crate::memory::Mark,
    pub storage_startup_timeout: Duration,
    pub storage_check_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub address: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub namespace: Option<String>,
    pub tls_ca_cert: Option<PathBuf>,
    pub tls_ca_path: Option<PathBuf>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    /// Checks not to run: "info", "config", "tables".
    pub skip_checks: Vec<String>,
    pub probe_interval: Duration,
    pub startup_timeout: Duration,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

/// `probe.socket`: where the exec probe's Unix socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSetting {
    /// `""`: no socket; `rayhead probe` asks probe.listen.
    Off,
    /// `"auto"`: `probe-<port>.sock` (probe.listen's port, which two
    /// rayheads on one machine cannot share either) in rayhead's own 0700
    /// directory: see `probe::socket`.
    Auto { port: u16 },
    /// A path given: used as it is, but never unlinked unless it is a
    /// socket of this user's.
    At(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub listen: SocketAddr,
    pub socket: SocketSetting,
    pub stall_after: Duration,
}

/// When gcs_server is restarted in place for its memory.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub gcs_high_water: crate::memory::Mark,
    pub sustain: Duration,
    pub min_interval: Duration,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub init: InitConfig,
    pub log: LogConfig,
    pub ray: RayConfig,
    pub gcs: GcsConfig,
    pub redis: RedisConfig,
    pub probe: ProbeConfig,
    pub memory: MemoryConfig,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Every key with its value and source, in registry order.
    pub resolved: Vec<Resolved>,
}

impl Config {
    /// Layers defaults, the file, the environment and flags, then validates.
    pub fn load(inputs: &Inputs, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let file_path = match &inputs.file {
            Some(p) => Some(p.clone()),
            None => match env.var(ENV_CONFIG) {
                Ok(Some(p)) if !p.is_empty() => Some(PathBuf::from(p)),
                Ok(_) => None,
                Err(e) => {
                    problems.push(Problem {
                        key: ENV_CONFIG.into(),
                        source: None,
                        message: e.to_string(),
                    });
                    None
                }
            },
        };
        let file = match &file_path {
            Some(p) => read_file(p, &mut problems),
            None => BTreeMap::new(),
        };
        let resolved = resolve(
            &file,
            file_path.as_deref(),
            env,
            &inputs.flags,
            &mut problems,
        );
        let cfg = build::build(resolved, file_path, &mut problems);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The configuration as TOML, each value with its source, secrets
    /// redacted. `rayhead config check` prints this.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# rayhead effective configuration\n");
        match &self.file {
            Some(p) => out.push_str(&format!("# config file: {}\n", p.display())),
            None => out.push_str("# config file: none\n"),
        }
        let mut section = "";
        for r in &self.resolved {
            if r.key.section() != section {
                section = r.key.section();
                out.push_str(&format!("\n[{section}]\n"));
            }
            let line = match &r.value {
                Some(v) => format!("{} = {}", r.key.leaf(), v.render()),
                None => format!("# {} is unset", r.key.leaf()),
            };
            out.push_str(&format!("{line:<52} # {}\n", r.source));
        }
        out
    }
}

/// Reads the file into a flat `section.key -> value` map, reporting syntax
/// errors and keys that are not in the registry.
fn read_file(path: &Path, problems: &mut Vec<Problem>) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    let display = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem {
                key: display,
                source: None,
                message: format!("cannot read the config file: {e}"),
            });
            return out;
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            // toml's message names the line and column; it may quote the
            // line, which is why secrets belong in env vars (see the README).
            problems.push(Problem {
                key: display,
                source: None,
                message: format!("not valid TOML: {}", e.message()),
            });
            return out;
        }
    };
    let sections = keys::sections();
    for (section, v) in table {
        let toml::Value::Table(inner) = v else {
            let hint = if sections.contains(&section.as_str()) {
                format!("expected a table [{section}]")
            } else {
                format!("unknown section; expected one of {}", sections.join(", "))
            };
            problems.push(Problem {
                key: section,
                source: Some(Source::File(path.to_path_buf())),
                message: hint,
            });
            continue;
        };
        if !sections.contains(&section.as_str()) {
            problems.push(Problem {
                key: format!("[{section}]"),
                source: Some(Source::File(path.to_path_buf())),
                message: format!("unknown section; expected one of {}", sections.join(", ")),
            });
            continue;
        }
        for (leaf, value) in inner {
            let name = format!("{section}.{leaf}");
            if keys::find(&name).is_none() {
                problems.push(Problem {
                    message: unknown_key_message(&name),
                    key: name,
                    source: Some(Source::File(path.to_path_buf())),
                });
                continue;
            }
            out.insert(name, value);
        }
    }
    out
}

fn unknown_key_message(name: &str) -> String {
    let section = name.split_once('.').map_or("", |(s, _)| s);
    let known: Vec<&str> = KEYS
        .iter()
        .filter(|k| k.section() == section)
        .map(|k| k.leaf())
        .collect();
    if known.is_empty() {
        let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        format!("unknown key; known keys are {}", names.join(", "))
    } else {
        format!("unknown key; [{section}] has {}", known.join(", "))
    }
}

/// Picks each key's value from the highest-precedence source that sets it.
fn resolve(
    file: &BTreeMap<String, toml::Value>,
    file_path: Option<&Path>,
    env: &dyn Env,
    flags: &[FlagValue],
    problems: &mut Vec<Problem>,
) -> Vec<Resolved> {
    for f in flags {
        if keys::find(&f.key).is_none() {
            problems.push(Problem {
                key: f.key.clone(),
                source: Some(Source::Flag(f.flag.clone())),
                message: unknown_key_message(&f.key),
            });
        }
    }
    let mut out = Vec::new();
    for &key in KEYS {
        let mut chosen: Option<(Result<Value, String>, Source)> = None;
        if let Some(f) = flags.iter().rev().find(|f| f.key == key.name) {
            chosen = Some((
                value::parse_text(key.kind, EnvUnit::Plain, &f.value),
                Source::Flag(f.flag.clone()),
            ));
        }
        if chosen.is_none() {
            chosen = from_env(key, env, problems);
        }
        if chosen.is_none() {
            if let (Some(v), Some(p)) = (file.get(key.name), file_path) {
                chosen = Some((
                    value::parse_toml(key.kind, v),
                    Source::File(p.to_path_buf()),
                ));
            }
        }
        let (value, source) = match chosen {
            Some((Ok(v), src)) => (Some(v), src),
            Some((Err(msg), src)) => {
                problems.push(Problem {
                    key: key.name.to_string(),
                    source: Some(src.clone()),
                    message: msg,
                });
                (default_value(key), Source::Default)
            }
            None => (default_value(key), Source::Default),
        };
        out.push(Resolved { key, value, source });
    }
    out
}

fn from_env(
    key: &'static Key,
    env: &dyn Env,
    problems: &mut Vec<Problem>,
) -> Option<(Result<Value, String>, Source)> {
    let own = key.env_name();
    let mut names: Vec<(String, EnvUnit, bool)> = vec![(own, EnvUnit::Plain, false)];
    names.extend(
        key.aliases
            .iter()
            .map(|a| (a.name.to_string(), a.unit, a.empty_is_unset)),
    );
    for (name, unit, empty_is_unset) in names {
        match env.var(&name) {
            Ok(None) => continue,
            Ok(Some(v)) if v.is_empty() && empty_is_unset => continue,
            Ok(Some(v)) if v.is_empty() && key.kind != Kind::Text && key.kind != Kind::Secret => {
                return Some((
                    Err(format!("empty; expected {}", value::expected(key.kind))),
                    Source::Env(name),
                ));
            }
            Ok(Some(v)) => return Some((value::parse_text(key.kind, unit, &v), Source::Env(name))),
            Err(e) => {
                problems.push(Problem {
                    key: key.name.to_string(),
                    source: Some(Source::Env(name)),
                    message: e.to_string(),
                });
                return None;
            }
        }
    }
    None
}

/// A key's built-in default. The unit tests load every default, so an
/// invalid one never ships; were it to, the key is unset, not a panic.
fn default_value(key: &Key) -> Option<Value> {
    key.default
        .and_then(|d| value::parse_text(key.kind, EnvUnit::Plain, d).ok())
}

#[cfg(test)]
mod tests;
