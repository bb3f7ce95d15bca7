//! `rayhead dev`: its flags, in Kubernetes' words where it emulates
//! Kubernetes, and the runtime the local cluster runs on.

use std::path::PathBuf;

use clap::Args;

use super::{run, Cli, ConfigArgs};
use crate::dev::kubelet::RestartPolicy;
use crate::exit::{self, Exit};

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

/// `rayhead dev --storage`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StorageArg {
    Redis,
    Rocksdb,
}

#[derive(Debug, Args)]
pub(super) struct DevArgs {
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

/// Runs the local cluster on a runtime of its own, and reports its exit
/// the way `rayhead run` does (stderr and the last words).
pub(super) fn dev(cli: &Cli, args: &DevArgs) -> u8 {
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
