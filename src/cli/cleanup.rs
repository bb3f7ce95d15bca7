//! `rayhead redis-cleanup`: a drop-in for KubeRay's cleanup Job, which
//! refuses to run without a namespace of its own.

use clap::Args;

use super::{redis_command, Cli, ConfigArgs, DevStateArgs};
use crate::exit;
use crate::redis::Redis;

#[derive(Debug, Args)]
pub(super) struct RedisCleanupArgs {
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

/// The namespace is checked before anything is deleted, and the outcome
/// goes to stderr, so that a dry run's stdout is the key list alone.
pub(super) fn redis_cleanup(cli: &Cli, args: &RedisCleanupArgs) -> u8 {
    redis_command(cli, &args.config, &args.dev, |redis, cfg| {
        clean(redis, cfg.redis.namespace, args)
    })
}

async fn clean(redis: Redis, namespace: Option<String>, args: &RedisCleanupArgs) -> u8 {
    let ns = match crate::redis::cleanup::check_namespace(namespace.as_deref()) {
        Ok(ns) => ns.to_string(),
        Err(e) => {
            crate::logging::err(&format!("rayhead: redis-cleanup: {e}\n"));
            return exit::CONFIG;
        }
    };
    let deadline = crate::time::after(tokio::time::Instant::now(), args.deadline);
    let result = crate::redis::cleanup::cleanup(&redis, &ns, args.dry_run, deadline, |k| {
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
}
