//! Supervising a Ray head: launch `ray start`, know its daemons, monitor the
//! GCS, recover it in place within the head's reconnect window, and stop
//! everything cleanly.

pub mod capture;
pub mod command;
pub mod daemon_health;
pub mod daemons;
pub mod health;
mod memory;
mod report;
pub mod shell;
#[cfg(test)]
mod shell_oracle;
mod supervisor;

use crate::config::{Config, Env};
use crate::exit::Exit;
use crate::init::Init;
use crate::state::{Phase, State};
use crate::storage::Store;
pub use command::{is_ray_start, StartCommand};

/// Everything a Ray run needs, checked before anything starts.
pub struct Plan {
    pub start: StartCommand,
    /// The GCS's fault-tolerant storage; `None`: in memory, none.
    pub store: Option<Store>,
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
        let store = crate::storage::resolve(cfg, start.system_config.as_deref(), env)?;
        let stop_command = match &cfg.init.stop_command {
            Some(c) => c.clone(),
            None => vec![start.argv[0].clone(), "stop".into()],
        };
        Ok(Plan {
            start,
            store,
            stop_command,
        })
    }

    /// The state snapshot this plan starts from.
    pub fn initial_state(&self) -> State {
        State::new(Store::snapshot(
            self.store.as_ref(),
            format!("127.0.0.1:{}", self.start.gcs_port),
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
    if let Some(store) = plan.store.clone() {
        init.tracker
            .spawn(store.monitor(cfg.clone(), state.clone(), init.cancel.child_token()));
    }
    let exit = supervisor::Supervisor::new(cfg, plan, state.clone(), &mut init)
        .run()
        .await;
    state.set_phase(Phase::Exiting, &exit.reason());
    init.shutdown().await;
    exit
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
