//! The command line: clap's parser and the small subcommands; `rayhead run`
//! lives in [`run`].

mod install;
mod run;
mod storage;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, FlagValue, Inputs, ProcessEnv};
use crate::dev::kubelet::RestartPolicy;
use crate::exit::{self, Exit};
use crate::probe::routes::Endpoint;

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
    Probe(ProbeArgs),
    /// Check Redis as the GCS uses it; exit 0 healthy, 1 unhealthy, 2 healthy with warnings.
    RedisCheck(RedisCheckArgs),
    /// Check the GCS's storage as the head resolves it (RAY_gcs_storage, --system-config, RAY_REDIS_ADDRESS): RocksDB's path (exists, writable, free space, size), or Redis as redis-check does.
    StorageCheck(storage::StorageCheckArgs),
    /// Delete the namespace's GCS keys (RAY<ns>@*): a drop-in for KubeRay's cleanup Job.
    RedisCleanup(RedisCleanupArgs),
    /// Run a GCS-fault-tolerant Ray cluster on this machine, as KubeRay would: Redis, a head under `rayhead run`, N workers; Ctrl-C stops it all.
    Dev(DevArgs),
    /// Copy this binary to DEST: the init container's install into an emptyDir (a FROM scratch image has no cp).
    Install {
        /// Where the copy goes, e.g. /rayhead/rayhead.
        dest: PathBuf,
    },
}

/// `rayhead dev --restart-policy`: Kubernetes' words.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RestartPolicyArg {
    /// Start it again after any exit (the default of a RayCluster's pods).
    #[value(name = "Always")]
    Always,
    /// Start it again after an exit other than 0.
    #[value(name = "OnFailure")]
    OnFailure,
    /// Never start it again (KubeRay's head with autoscaler v2).
    #[value(name = "Never")]
    Never,
}

impl From<RestartPolicyArg> for RestartPolicy {
    fn from(a: RestartPolicyArg) -> RestartPolicy {
        match a {
            RestartPolicyArg::Always => RestartPolicy::Always,
            RestartPolicyArg::OnFailure => RestartPolicy::OnFailure,
            RestartPolicyArg::Never => RestartPolicy::Never,
        }
    }
}

/// `rayhead probe WHAT`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EndpointArg {
    /// GET /readyz
    Ready,
    /// GET /livez
    Live,
    /// GET /status
    Status,
    /// GET /metrics
    Metrics,
}

impl From<EndpointArg> for Endpoint {
    fn from(a: EndpointArg) -> Endpoint {
        match a {
            EndpointArg::Ready => Endpoint::Ready,
            EndpointArg::Live => Endpoint::Live,
            EndpointArg::Status => Endpoint::Status,
            EndpointArg::Metrics => Endpoint::Metrics,
        }
    }
}

/// `rayhead dev --storage`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StorageArg {
    Redis,
    Rocksdb,
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Worker nodes, each `ray start --address ... --block` (the guide has one).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    workers: u32,
    /// Where the GCS keeps its state: redis (embedded redis-server, or --redis-url) or rocksdb (in the state dir; no server needed). Default: redis when --redis-url is given or redis-server is installed, else rocksdb.
    #[arg(long, value_enum, value_name = "BACKEND")]
    storage: Option<StorageArg>,
    /// Use this Redis, redis://[[USER]:PASSWORD@]HOST:PORT or rediss://..., instead of an embedded redis-server (no password in the URL: REDIS_PASSWORD's).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Where the cluster's state (namespace, Redis data, logs) lives from run to run.
    #[arg(long, value_name = "DIR", default_value = ".rayhead-dev")]
    state_dir: PathBuf,
    /// What the emulated kubelet does when a pod exits (10 s back-off doubling to 300 s).
    #[arg(long, value_enum, value_name = "POLICY", default_value = "Always")]
    restart_policy: RestartPolicyArg,
    /// The head's RAY_gcs_rpc_server_reconnect_timeout_s, e.g. 60 or 60s (Ray's default: 60).
    #[arg(long, value_name = "DURATION", value_parser = parse_head_timeout)]
    head_timeout: Option<std::time::Duration>,
    /// Start afresh: a new namespace, no Redis data, no RocksDB, no logs.
    #[arg(long)]
    clean: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Whole seconds, as Ray reads the variable: `60` or `60s`, 1 s to 7 days.
fn parse_head_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
        text.parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|e| e.to_string())?
    } else {
        humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?
    };
    if d.subsec_nanos() != 0 || d.is_zero() || d > crate::config::value::MAX_DURATION {
        return Err(format!(
            "{text:?}: must be whole seconds, from 1s to 7 days"
        ));
    }
    Ok(d)
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

#[derive(Debug, Args)]
struct RedisCleanupArgs {
    /// List the keys that would go; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Give up after this long, retrying through dropped connections until then (the Job's activeDeadlineSeconds is 300).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    deadline: std::time::Duration,
    #[command(flatten)]
    dev: DevStateArgs,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Args)]
struct ProbeArgs {
    what: EndpointArg,
    /// The server's base URL; default from probe.listen.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
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
        Command::Config(ConfigCommand::Check(args)) => match cli.load(args) {
            Ok(cfg) => {
                crate::logging::out(&cfg.render());
                0
            }
            Err(e) => {
                crate::logging::err(&format!("rayhead: {e}"));
                exit::CONFIG
            }
        },
        Command::Run(args) => run::run(&cli, args),
        Command::Probe(args) => probe(&cli, args),
        Command::Dev(args) => dev(&cli, args),
        Command::Install { dest } => match install::install(dest) {
            Ok(()) => 0,
            Err(e) => {
                crate::logging::err(&format!("rayhead install: {}: {e}\n", dest.display()));
                1
            }
        },
        Command::StorageCheck(args) => storage::check(&cli, args),
        Command::RedisCheck(args) => redis_command(&cli, &args.config, &args.dev, |redis, cfg| {
            storage::redis_report(redis, cfg, args.json, args.pings)
        }),
        Command::RedisCleanup(args) => {
            redis_command(&cli, &args.config, &args.dev, |redis, cfg| async move {
                let ns =
                    match crate::redis::cleanup::check_namespace(cfg.redis.namespace.as_deref()) {
                        Ok(ns) => ns.to_string(),
                        Err(e) => {
                            crate::logging::err(&format!("rayhead: redis-cleanup: {e}\n"));
                            return exit::CONFIG;
                        }
                    };
                let deadline = crate::time::after(tokio::time::Instant::now(), args.deadline);
                let result =
                    crate::redis::cleanup::cleanup(&redis, &ns, args.dry_run, deadline, |k| {
                        crate::logging::out(&format!("{}\n", crate::redis::cleanup::show_key(k)))
                    })
                    .await;
                match result {
                    Ok(r) if args.dry_run => {
                        crate::logging::err(&format!(
                            "dry run: {} key(s) of namespace {ns:?} would be deleted from {}\n",
                            r.keys, redis.address
                        ));
                        0
                    }
                    Ok(r) => {
                        crate::logging::err(&format!(
                            "deleted {} key(s) of namespace {ns:?} from {}\n",
                            r.deleted, redis.address
                        ));
                        0
                    }
                    Err(e) => {
                        crate::logging::err(&format!(
                            "rayhead: redis-cleanup of namespace {ns:?} at {} failed: {e}\n",
                            redis.address
                        ));
                        1
                    }
                }
            })
        }
    }
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

/// `--url` asks that server; otherwise the Unix socket (`probe.socket`),
/// which no network flood can crowd out, when it answers, else
/// `probe.listen`.
fn probe(cli: &Cli, args: &ProbeArgs) -> u8 {
    use crate::probe::client;
    let path = Endpoint::from(args.what).path();
    let (ok, text) = match &args.url {
        Some(u) => client::query(u, path),
        None => match cli.load(&args.config) {
            Ok(cfg) => {
                let place = crate::probe::socket::SocketPlace::of(&cfg.probe.socket);
                place
                    .and_then(|p| client::query_socket(&p, path))
                    .unwrap_or_else(|| client::query(&client::base_url(cfg.probe.listen), path))
            }
            Err(e) => {
                crate::logging::err(&format!("rayhead: {e}"));
                return exit::CONFIG;
            }
        },
    };
    let text = text.trim_end();
    if ok {
        crate::logging::out(&format!("{text}\n"));
        0
    } else {
        crate::logging::err(&format!("{text}\n"));
        1
    }
}

/// Copies the running binary to `dest`, whole or not at all: written
/// beside it, made executable, then renamed over it.
fn dev(cli: &Cli, args: &DevArgs) -> u8 {
    let cfg = match cli.load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::err(&format!("rayhead dev: {}\n", e.to_string().trim_end()));
            return exit::CONFIG;
        }
    };
    crate::logging::init(&cfg.log.level, cfg.log.format);
    run::install_panic_hook(None);
    crate::init::spawn::close_inherited_fds();
    let opts = crate::dev::Options {
        workers: args.workers,
        storage: args.storage.map(|s| match s {
            StorageArg::Redis => crate::dev::Storage::Redis,
            StorageArg::Rocksdb => crate::dev::Storage::Rocksdb,
        }),
        redis_url: args.redis_url.clone(),
        state_dir: args.state_dir.clone(),
        restart_policy: args.restart_policy.into(),
        head_timeout: args.head_timeout,
        clean: args.clean,
    };
    let exit = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let exit = rt.block_on(crate::dev::run(&cfg, opts));
            // A /status query in flight (a blocking thread) must not hold
            // the exit up.
            rt.shutdown_background();
            exit
        }
        Err(e) => Exit::Internal(format!("cannot start the async runtime: {e}")),
    };
    let line = format!("rayhead dev: exiting {}: {exit}", exit.code());
    crate::logging::to_stderr(format!("{line}\n").into_bytes());
    crate::logging::last_words(&line, run::LAST_WORDS);
    exit.code()
}
