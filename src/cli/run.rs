//! `rayhead run`: the probe server wired to whichever supervisor runs (a
//! plain command under the init, or a Ray head), the exit report, and the
//! panic hook that keeps a bug from orphaning the tree.

use tokio_util::sync::CancellationToken;

use super::{Cli, RunArgs};
use crate::config::{Config, ProcessEnv};
use crate::exit::{self, Exit};
use crate::state::{Snapshot, State};

pub(super) fn run(cli: &Cli, args: &RunArgs) -> u8 {
    let cfg = match cli.load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            let exit = Exit::Config(e.to_string().trim_end().to_string());
            crate::logging::err(&format!("rayhead: {exit}\n"));
            return exit.code();
        }
    };
    crate::logging::init(&cfg.log.level, cfg.log.format);
    install_panic_hook(cfg.init.termination_log.clone());
    crate::init::spawn::close_inherited_fds();
    let exit = match what_to_run(&cfg, &args.command) {
        Err(exit) => exit,
        Ok(job) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                let exit = rt.block_on(supervise(&cfg, job));
                // A blocking task stuck in the kernel (a hung volume) must
                // not keep rayhead from exiting with its reason.
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
                exit
            }
            Err(e) => Exit::Internal(format!("cannot start the async runtime: {e}")),
        },
    };
    finish(&cfg, &exit);
    exit.code()
}

/// Serves the probes on `probe.listen` from the state that whichever
/// supervisor runs keeps, for as long as it runs.
async fn supervise(cfg: &Config, job: Job) -> Exit {
    #[cfg(debug_assertions)]
    debug_panic_trigger();
    let state = match &job {
        Job::Command(_) => State::new(Snapshot::command()),
        Job::Ray(plan) => plan.initial_state(),
    };
    // Bound first: a taken port is a configuration problem, and the kubelet
    // should see `starting` while Redis and Ray come up.
    let listener = match tokio::net::TcpListener::bind(cfg.probe.listen).await {
        Ok(l) => l,
        Err(e) => return Exit::Config(format!("probe.listen {}: {e}", cfg.probe.listen)),
    };
    tracing::info!(listen = %cfg.probe.listen, "probe server listening");
    let mut listeners = vec![crate::probe::Listener::Tcp(listener)];
    // The exec probe's socket is a second way in, not a requirement: on a
    // read-only /tmp the TCP server still serves, and `rayhead probe` falls
    // back to it.
    let mut socket = None;
    if let Some(place) = crate::probe::socket::SocketPlace::of(&cfg.probe.socket) {
        match crate::probe::bind_socket(&place) {
            Ok((l, bound)) => {
                tracing::info!(socket = %place.path.display(), "probe socket listening");
                listeners.push(crate::probe::Listener::Unix(l));
                socket = Some(bound);
            }
            // rayhead probe believes nothing in a refused directory of its
            // own; anywhere else, an unserved socket sends it to the port.
            Err(e)
                if place.own_dir.is_some() && e.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                tracing::error!(socket = %place.path.display(), error = %e, "cannot serve probe.socket; rayhead probe fails until the directory is removed or probe.socket is set elsewhere")
            }
            Err(e) => {
                tracing::warn!(socket = %place.path.display(), error = %e, "cannot serve probe.socket; the exec probe will use probe.listen")
            }
        }
    }
    let stop_probes = CancellationToken::new();
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(crate::probe::serve(
                l,
                state.subscribe(),
                cfg.probe.stall_after,
                stop_probes.clone(),
            ))
        })
        .collect();
    let exit = match job {
        Job::Command(argv) => crate::init::run(&cfg.init, &argv, &state).await,
        Job::Ray(plan) => crate::ray::run(cfg, *plan, state).await,
    };
    stop_probes.cancel();
    for s in servers {
        let _ = s.await;
    }
    // Ours only: a socket put there since is left alone.
    if let Some(bound) = socket {
        bound.remove();
    }
    exit
}

/// What `rayhead run` supervises.
enum Job {
    /// A plain command, under the generic init.
    Command(Vec<String>),
    /// A Ray head: `ray start --head ...` after `--`, or ray.start-command.
    Ray(Box<crate::ray::Plan>),
}

fn what_to_run(cfg: &Config, command: &[String]) -> Result<Job, Exit> {
    use crate::ray::StartFrom;
    let from = match (command.is_empty(), cfg.ray.start_command.as_deref()) {
        (false, _) if !crate::ray::is_ray_start(command) => {
            return Ok(Job::Command(command.to_vec()))
        }
        (false, _) => StartFrom::Argv(command),
        (true, Some(text)) => StartFrom::Text(text),
        (true, None) => {
            return Err(Exit::Config(
                "no command to run: give one after `--`, or set ray.start-command (KUBERAY_GEN_RAY_START_CMD)".into(),
            ))
        }
    };
    crate::ray::Plan::new(cfg, from, &ProcessEnv)
        .map(|p| Job::Ray(Box::new(p)))
        .map_err(Exit::Config)
}

/// Reports the exit: a log line on stderr, and the termination message.
/// The termination message first (a file: it cannot block on a reader),
/// then the log line, then a bounded wait for stderr to take it.
fn finish(cfg: &Config, exit: &Exit) {
    if let Some(path) = &cfg.init.termination_log {
        if let Err(e) = exit::write_termination_message(path, &exit.reason()) {
            let is_default = path.as_os_str() == exit::DEFAULT_TERMINATION_LOG;
            if is_default && e.kind() == std::io::ErrorKind::NotFound {
                tracing::debug!("no /dev/termination-log: not on Kubernetes");
            } else {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the termination message");
            }
        }
    }
    if exit.code() == 0 {
        tracing::info!(code = exit.code(), reason = %exit, "rayhead exiting");
    } else {
        tracing::warn!(code = exit.code(), reason = %exit, "rayhead exiting");
    }
    crate::logging::last_words(
        &format!("rayhead: exiting {}: {exit}", exit.code()),
        LAST_WORDS,
    );
}

/// How long the exit waits for stderr to take the last lines.
pub(super) const LAST_WORDS: std::time::Duration = std::time::Duration::from_millis(500);

/// The last line of defence: a panic (a bug) must never leave Ray
/// processes orphaned, least of all in subreaper mode, where they would
/// outlive rayhead. The hook writes the reason to the termination log,
/// SIGKILLs every descendant, and exits 70 (release builds abort on panic;
/// the hook runs first).
pub(super) fn install_panic_hook(termination_log: Option<std::path::PathBuf>) {
    std::panic::set_hook(Box::new(move |info| {
        let reason = format!(
            "rayhead itself failed (a bug): {}; its process tree was SIGKILLed",
            crate::redact::line(&info.to_string().replace('\n', " "))
        );
        if let Some(p) = &termination_log {
            let _ = exit::write_termination_message(p, &reason);
        }
        for _ in 0..3 {
            let procs = crate::sys::proctree::live_descendants_of_self();
            if procs.is_empty() {
                break;
            }
            crate::sys::pin::signal_all(
                procs.iter().map(|p| p.identity()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        crate::logging::last_words(&format!("rayhead: {reason}"), LAST_WORDS);
        std::process::exit(i32::from(exit::INTERNAL));
    }));
}

/// Debug builds only: `RAYHEAD_DEBUG_PANIC_AFTER=1s` panics on purpose, so
/// that the tests can prove the panic hook. Release builds have no trigger.
#[cfg(debug_assertions)]
fn debug_panic_trigger() {
    let after = std::env::var("RAYHEAD_DEBUG_PANIC_AFTER")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok());
    if let Some(after) = after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            panic!("RAYHEAD_DEBUG_PANIC_AFTER: a panic on purpose");
        });
    }
}
