//! Supervising a Ray head: launch `ray start`, know its daemons, watch the
//! GCS, recover it in place within the head's reconnect window, and stop
//! everything cleanly.

pub mod capture;
pub mod command;
pub mod daemon_health;
pub mod daemons;
pub mod health;
mod memory;
pub mod shell;
#[cfg(test)]
mod shell_oracle;
mod supervisor;

use std::time::Duration;

use crate::config::{Config, Env};
use crate::exit::Exit;
use crate::init::Init;
use crate::redis::Redis;
use crate::state::{Phase, Snapshot, State};
pub use command::{is_ray_start, StartCommand};

/// Everything a Ray run needs, checked before anything starts.
pub struct Plan {
    pub start: StartCommand,
    pub redis: Option<Redis>,
    /// `ray stop`, with the same `ray` as the start command, unless
    /// `init.stop-command` says otherwise.
    pub stop_command: Vec<String>,
}

/// Where the start command comes from.
pub enum StartFrom<'a> {
    /// The argv after `--`.
    Argv(&'a [String]),
    /// `ray.start-command` (KUBERAY_GEN_RAY_START_CMD), expanded like bash.
    Text(&'a str),
}

impl Plan {
    /// Builds the plan. Errors name the key at fault.
    pub fn new(cfg: &Config, from: StartFrom<'_>, env: &dyn Env) -> Result<Plan, String> {
        let argv = match from {
            StartFrom::Argv(a) => a.to_vec(),
            StartFrom::Text(text) => {
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
        State::new(Snapshot::ray_head(
            format!("127.0.0.1:{}", self.start.gcs_port),
            self.redis.as_ref().map(|r| r.address.to_string()),
        ))
    }
}

/// Runs the Ray head under the init until it stops; returns why. The probe
/// server is already serving `state`.
pub async fn run(cfg: &Config, plan: Plan, state: State) -> Exit {
    let mut init = match Init::start(&cfg.init) {
        Ok(i) => i,
        Err(e) => return Exit::Internal(format!("cannot set up the init: {e}")),
    };
    raise_open_files(cfg.ray.open_files);
    if let Some(redis) = plan.redis.clone() {
        init.tracker.spawn(probe_redis(
            redis,
            cfg.redis.namespace.clone(),
            cfg.redis.probe_interval,
            state.clone(),
            init.cancel.child_token(),
        ));
    }
    let exit = supervisor::Supervisor::new(cfg, plan, state.clone(), &mut init)
        .run()
        .await;
    state.set_phase(Phase::Exiting, &exit.reason());
    init.shutdown().await;
    exit
}

/// Probes Redis every `interval` (PING, role, eviction, persistence, memory,
/// the namespace's tables) into the state. A change between up and down, and
/// each warning as it appears or clears, is logged once, not on every probe.
async fn probe_redis(
    redis: Redis,
    namespace: Option<String>,
    interval: Duration,
    state: State,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut last_up: Option<bool> = None;
    let mut last_warnings: Vec<String> = Vec::new();
    let mut last_notes: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let f = tokio::select! {
            f = redis.findings(namespace.as_deref()) => f,
            _ = cancel.cancelled() => return,
        };
        match (f.up, last_up) {
            (true, Some(false)) => tracing::info!(redis = %redis.address, "Redis answers again"),
            (false, Some(true) | None) => {
                tracing::warn!(redis = %redis.address, error = f.error.as_deref().unwrap_or(""), "Redis probe failed")
            }
            _ => {}
        }
        if f.up {
            if let Some(p) = f.problem() {
                if last_up != Some(true) || state.get().redis.and_then(|r| r.role) != f.role {
                    tracing::warn!(redis = %redis.address, problem = %p, "Redis is not usable by the GCS");
                }
            }
            for w in f.warnings.iter().filter(|w| !last_warnings.contains(w)) {
                tracing::warn!(redis = %redis.address, warning = %w, "Redis setting can lose GCS state");
            }
            for w in last_warnings.iter().filter(|w| !f.warnings.contains(w)) {
                tracing::info!(redis = %redis.address, cleared = %w, "Redis warning cleared");
            }
            for n in f.notes.iter().filter(|n| !last_notes.contains(n)) {
                tracing::info!(redis = %redis.address, note = %n, "Redis check skipped");
            }
            last_warnings = f.warnings.clone();
            last_notes = f.notes.clone();
        }
        last_up = Some(f.up);
        state.update(|s| {
            if let Some(r) = &mut s.redis {
                r.up = Some(f.up);
                r.last_probe = Some(std::time::SystemTime::now());
                r.last_error = f.error.clone();
                if f.up {
                    r.ping_seconds = f.ping_seconds;
                    r.role = f.role.clone();
                    r.tables = f.tables.clone();
                    r.warnings = f.warnings.clone();
                    r.notes = f.notes.clone();
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
