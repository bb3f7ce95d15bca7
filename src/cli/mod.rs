//! The command line: clap's parser, the configuration every subcommand
//! loads, and the dispatch; each subcommand lives in its own module
//! ([`run`], [`dev`], [`probe`], [`storage`], [`cleanup`], [`install`]),
//! the two one-screen ones (`config check`, `redis-check`) here.

mod cleanup;
mod dev;
mod install;
mod probe;
mod run;
mod storage;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, FlagValue, Inputs, ProcessEnv};
use crate::exit;

#[derive(Debug, Parser)]
#[command(
    name = "rayhead",
    version,
    about = "PID 1 for a Ray head on Kubernetes: a correct init that supervises `ray start`, recovers the GCS in place and serves probes.",
    propagate_version = true
)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace, or directives (also RAYHEAD_LOG).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run COMMAND as PID 1 (or as a subreaper): reap, forward signals, stop the tree, pass the exit code on.
    Run(RunArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Exec probe: ask the running rayhead's probe server; exit 0 or 1 and print why.
    Probe(probe::ProbeArgs),
    /// Check Redis as the GCS uses it; exit 0 healthy, 1 unhealthy, 2 healthy with warnings.
    RedisCheck(RedisCheckArgs),
    /// Check the GCS's storage as the head resolves it (RAY_gcs_storage, --system-config, RAY_REDIS_ADDRESS): RocksDB's path (exists, writable, free space, size), or Redis as redis-check does.
    StorageCheck(storage::StorageCheckArgs),
    /// Delete the namespace's GCS keys (RAY<ns>@*): a drop-in for KubeRay's cleanup Job.
    RedisCleanup(cleanup::RedisCleanupArgs),
    /// Run a GCS-fault-tolerant Ray cluster on this machine, as KubeRay would: Redis, a head under `rayhead run`, N workers; Ctrl-C stops it all.
    Dev(dev::DevArgs),
    /// Copy this binary to DEST: the init container's install into an emptyDir (a FROM scratch image has no cp).
    Install {
        /// Where the copy goes, e.g. /rayhead/rayhead.
        dest: PathBuf,
    },
}

/// The Redis of `rayhead dev --state-dir DIR`, for the Redis commands.
#[derive(Debug, Args)]
struct DevStateArgs {
    /// Use the embedded Redis and namespace of `rayhead dev --state-dir DIR` (started for the command if the runner is stopped).
    #[arg(long, value_name = "DIR")]
    dev_state: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RedisCheckArgs {
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also send this many PINGs over the kept connection and report the
    /// round trip's median and p99.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pings: u32,
    #[command(flatten)]
    dev: DevStateArgs,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values with their sources; exit 64 on any problem.
    Check(ConfigArgs),
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// The TOML config file (also RAYHEAD_CONFIG).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Set any key, e.g. --set init.stop-grace=10s. Beats env and file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The command to supervise.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

impl Cli {
    fn inputs(&self, args: &ConfigArgs) -> Result<Inputs, ConfigError> {
        let mut flags = Vec::new();
        let mut problems = Vec::new();
        if let Some(l) = &self.log_level {
            flags.push(FlagValue {
                key: "log.level".into(),
                value: l.clone(),
                flag: "--log-level".into(),
            });
        }
        if let Some(f) = &self.log_format {
            flags.push(FlagValue {
                key: "log.format".into(),
                value: f.clone(),
                flag: "--log-format".into(),
            });
        }
        for s in &args.set {
            match FlagValue::parse_set(s) {
                Ok(f) => flags.push(f),
                Err(message) => problems.push(crate::config::Problem {
                    key: "--set".into(),
                    source: None,
                    message,
                }),
            }
        }
        if problems.is_empty() {
            Ok(Inputs {
                file: args.config.clone(),
                flags,
            })
        } else {
            Err(ConfigError(problems))
        }
    }

    fn load(&self, args: &ConfigArgs) -> Result<Config, ConfigError> {
        let inputs = self.inputs(args)?;
        let cfg = Config::load(&inputs, &ProcessEnv)?;
        crate::ray::daemons::check_ready_requires(&cfg)?;
        Ok(cfg)
    }
}

/// Parses the command line, runs the subcommand, and returns the exit code.
pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => exit::CONFIG,
            };
        }
    };
    match &cli.command {
        Command::Config(ConfigCommand::Check(args)) => config_check(&cli, args),
        Command::Run(args) => run::run(&cli, args),
        Command::Probe(args) => probe::probe(&cli, args),
        Command::Dev(args) => dev::dev(&cli, args),
        Command::Install { dest } => install::command(dest),
        Command::StorageCheck(args) => storage::check(&cli, args),
        Command::RedisCheck(args) => redis_check(&cli, args),
        Command::RedisCleanup(args) => cleanup::redis_cleanup(&cli, args),
    }
}

/// `rayhead config check`: the effective values with their sources on
/// stdout, or every problem at once and exit 64.
fn config_check(cli: &Cli, args: &ConfigArgs) -> u8 {
    match cli.load(args) {
        Ok(cfg) => {
            crate::logging::out(&cfg.render());
            0
        }
        Err(e) => {
            crate::logging::err(&format!("rayhead: {e}"));
            exit::CONFIG
        }
    }
}

/// `rayhead redis-check`: the same report as `storage-check` gives for a
/// Redis, for a Redis named directly.
fn redis_check(cli: &Cli, args: &RedisCheckArgs) -> u8 {
    redis_command(cli, &args.config, &args.dev, |redis, cfg| {
        storage::redis_report(redis, cfg, args.json, args.pings)
    })
}

/// Loads the config, builds the Redis client (which must be configured), and
/// runs `f` on a small runtime.
fn redis_command<F, Fut>(cli: &Cli, args: &ConfigArgs, dev: &DevStateArgs, f: F) -> u8
where
    F: FnOnce(crate::redis::Redis, Config) -> Fut,
    Fut: std::future::Future<Output = u8>,
{
    let mut cfg = match cli.load(args) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::err(&format!("rayhead: {e}"));
            return exit::CONFIG;
        }
    };
    crate::logging::init(&cfg.log.level, cfg.log.format);
    // Held until the command is done: it may have started the Redis.
    let _dev_redis = match &dev.dev_state {
        None => None,
        Some(dir) => match crate::dev::DevRedis::open(dir) {
            Ok(r) => {
                cfg.redis.address = Some(r.address.clone());
                cfg.redis.password = Some(r.password.clone());
                cfg.redis.username = None;
                cfg.redis.namespace = Some(r.namespace.clone());
                Some(r)
            }
            Err(e) => {
                crate::logging::err(&format!("rayhead: --dev-state: {e}\n"));
                return exit::CONFIG;
            }
        },
    };
    let redis = match crate::redis::Redis::from_config(&cfg.redis) {
        Ok(Some(r)) => r,
        Ok(None) => {
            crate::logging::err("rayhead: redis.address is unset: set RAY_REDIS_ADDRESS\n");
            return exit::CONFIG;
        }
        Err(e) => {
            crate::logging::err(&format!("rayhead: {e}\n"));
            return exit::CONFIG;
        }
    };
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f(redis, cfg)),
        Err(e) => {
            crate::logging::err(&format!("rayhead: cannot start the async runtime: {e}\n"));
            exit::INTERNAL
        }
    }
}
