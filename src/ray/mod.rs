//! Supervising a Ray head: launch `ray start`, know its daemons, watch the
//! GCS, recover it in place within the head's reconnect window, and stop
//! everything cleanly.

pub mod command;
pub mod daemons;
pub mod gcs;
pub mod health;
pub mod state;
mod supervisor;

use std::time::Duration;

use crate::config::{Config, Env};
use crate::exit::{self, Exit};
use crate::init::Init;
use crate::redis::Redis;
pub use command::{is_ray_start, StartCommand};
use state::{Snapshot, State};

/// Everything a Ray run needs, checked before anything starts.
pub struct Plan {
    pub start: StartCommand,
    pub redis: Option<Redis>,
    /// `ray stop`, with the same `ray` as the start command, unless
    /// `init.stop-command` says otherwise.
    pub stop_command: Vec<String>,
}

impl Plan {
    /// Builds the plan from the config and, if given, the command after `--`
    /// (which beats `ray.start-command`). Errors name the key at fault.
    pub fn new(cfg: &Config, argv: Option<&[String]>, env: &dyn Env) -> Result<Plan, String> {
        let argv = match argv {
            Some(a) => a.to_vec(),
            None => {
                let text = cfg.ray.start_command.as_deref().ok_or(
                    "nothing to run: give a command after `--`, or set ray.start-command (KUBERAY_GEN_RAY_START_CMD)",
                )?;
                let (argv, unset) = command::from_text(text, env)?;
                for name in unset {
                    tracing::warn!(variable = %name, "ray.start-command names an unset variable; it expands to nothing");
                }
                argv
            }
        };
        let start = command::prepare(argv, cfg.ray.mode, cfg.ray.gcs_port)?;
        let redis = Redis::from_config(&cfg.redis)?;
        let stop_command = match &cfg.init.stop_command {
            Some(c) => c.clone(),
            None => vec![start.argv[0].clone(), "stop".into()],
        };
        Ok(Plan {
            start,
            redis,
            stop_command,
        })
    }

    /// The state snapshot this plan starts from.
    pub fn initial_state(&self) -> State {
        State::new(Snapshot::new(
            format!("127.0.0.1:{}", self.start.gcs_port),
            self.redis.as_ref().map(|r| r.address.to_string()),
        ))
    }
}

/// Runs the Ray head under the init until it stops; returns why.
pub async fn run(cfg: &Config, plan: Plan, state: State) -> Exit {
    let mut init = match Init::start(&cfg.init) {
        Ok(i) => i,
        Err(e) => return Exit::new(exit::INTERNAL, format!("cannot set up the init: {e}")),
    };
    raise_open_files(cfg.ray.open_files);
    // The probe server first: a taken port is a configuration problem, and
    // the kubelet should see `starting` while Redis and Ray come up.
    let listener = match tokio::net::TcpListener::bind(cfg.probe.listen).await {
        Ok(l) => l,
        Err(e) => {
            init.shutdown().await;
            return Exit::new(
                exit::CONFIG,
                format!("probe.listen {}: {e}", cfg.probe.listen),
            );
        }
    };
    tracing::info!(listen = %cfg.probe.listen, "probe server listening");
    init.tracker.spawn(crate::probe::serve(
        listener,
        state.subscribe(),
        cfg.probe.stall_after,
        init.cancel.child_token(),
    ));
    if let Some(redis) = plan.redis.clone() {
        init.tracker.spawn(probe_redis(
            redis,
            cfg.redis.probe_interval,
            state.clone(),
            init.cancel.child_token(),
        ));
    }
    let exit = supervisor::Supervisor::new(cfg, plan, state.clone(), &mut init)
        .run()
        .await;
    state.set_phase(state::Phase::Exiting, &exit.reason);
    init.shutdown().await;
    exit
}

/// Pings Redis every `interval` and records the result in the state. A change
/// between up and down is logged once, not on every probe.
async fn probe_redis(
    redis: Redis,
    interval: Duration,
    state: State,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut last_up: Option<bool> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let result = tokio::select! {
            r = redis.ping() => r,
            _ = cancel.cancelled() => return,
        };
        let up = result.is_ok();
        match (&result, last_up) {
            (Ok(_), Some(false)) => tracing::info!(redis = %redis.address, "Redis answers again"),
            (Err(e), Some(true) | None) => {
                tracing::warn!(redis = %redis.address, error = %e, "Redis probe failed")
            }
            _ => {}
        }
        last_up = Some(up);
        state.update(|s| {
            if let Some(r) = &mut s.redis {
                r.up = Some(up);
                r.last_probe = Some(std::time::SystemTime::now());
                match &result {
                    Ok(rtt) => {
                        r.ping_seconds = Some(rtt.as_secs_f64());
                        r.last_error = None;
                    }
                    Err(e) => r.last_error = Some(e.to_string()),
                }
            }
        });
    }
}

/// Sets RLIMIT_NOFILE as KubeRay's `ulimit -n N` does, for rayhead and so
/// for everything it starts. Where the hard limit is lower and cannot be
/// raised, the soft limit goes as high as it allows.
fn raise_open_files(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if setrlimit(Resource::RLIMIT_NOFILE, n, n).is_ok() {
        return;
    }
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => {
            let soft = n.min(hard);
            let _ = setrlimit(Resource::RLIMIT_NOFILE, soft, hard);
            tracing::warn!(
                wanted = n,
                got = soft,
                "cannot raise the open-files limit that far"
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// Exponential back-off between failed GCS start attempts.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempt.min(5));
    Duration::from_millis(ms.min(2000))
}
