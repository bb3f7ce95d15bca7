//! `rayhead dev`: a whole GCS-fault-tolerant Ray cluster on one machine, run
//! the way KubeRay and the kubelet would run it: a Redis (or RocksDB in the
//! state dir, which needs no server), a head container
//! whose PID 1 is `rayhead run` (this very binary, so the supervision code
//! is the one a pod runs), and N worker nodes. Every pod is a child of the
//! runner, under its reaper, and is restarted per `--restart-policy` with
//! the kubelet's back-off ([`kubelet`]).
//!
//! ```text
//! rayhead dev ─┬─ redis-server            (embedded; or --redis-url)
//!              ├─ rayhead run ── ray start --head, gcs_server, raylet, ...
//!              └─ ray start --address ... --block   × N workers
//! ```

pub mod cluster;
pub mod kubelet;
mod one_off;
mod prepare;
pub mod state_dir;
mod status;
mod stop;

pub use one_off::DevRedis;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::config::Config;
use crate::exit::{Exit, StopReason};
use crate::init::reaper::ExitStatus;
use crate::init::Init;
use crate::sys::{pin, proctree};
use cluster::{Cluster, RedisSource};
use kubelet::{Decision, Kubelet, Pod, RestartPolicy};
use prepare::{prepare, redis_client};
use status::{HeadView, Line, Printer};

/// Where the dev cluster's GCS keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// A Redis: embedded `redis-server`, or `--redis-url`.
    Redis,
    /// RocksDB in the state dir's `gcs/`: no server to run.
    Rocksdb,
}

/// `rayhead dev`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: u32,
    /// `None`: Redis when `--redis-url` is given or `redis-server` is
    /// installed, else RocksDB.
    pub storage: Option<Storage>,
    pub redis_url: Option<String>,
    pub state_dir: PathBuf,
    pub restart_policy: RestartPolicy,
    pub head_timeout: Option<Duration>,
    pub clean: bool,
}

/// How long Redis may take to answer after it starts (an AOF to replay),
/// at most: `redis.startup-timeout` when that is shorter.
const REDIS_STARTUP: Duration = Duration::from_secs(30);
/// How often the head's `/status` is read for the status line.
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// Checks the tools and the state dir, then runs the cluster until a stop
/// signal, or until the head exits and the policy keeps it down.
pub async fn run(cfg: &Config, opts: Options) -> Exit {
    let (dir, cluster) = match prepare(&opts) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut init = match Init::start(&cfg.init) {
        Ok(i) => i,
        Err(e) => return Exit::Internal(format!("cannot set up the init: {e}")),
    };
    let redis = match cluster.redis.is_some().then(|| redis_client(cfg, &cluster)) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => return Exit::Config(e),
    };
    let redis_startup = cfg.redis.startup_timeout.min(REDIS_STARTUP);
    let exit = Runner::new(cluster, redis, opts.restart_policy, &mut init)
        .run(redis_startup)
        .await;
    init.shutdown().await;
    drop(dir);
    exit
}

enum Event {
    Exited(Pod, Pid, ExitStatus),
    RedisReady,
    RedisFailed(Exit),
    Status(HeadView),
}

struct Runner<'a> {
    cluster: Cluster,
    /// The runner's client of the cluster's Redis; `None` with RocksDB.
    redis: Option<crate::redis::Redis>,
    policy: RestartPolicy,
    init: &'a mut Init,
    kubelet: Kubelet,
    running: BTreeMap<Pod, Pid>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    printer: Printer,
    head: HeadView,
    workers_started: bool,
    /// The head's GCS restarts announced so far (a new head starts at 0).
    gcs_restarts_told: u64,
    /// The loss under way was announced.
    gcs_loss_told: bool,
    /// The workers' nodes have all joined the cluster once.
    cluster_ready: bool,
    /// Tells the poller to count the joined worker nodes too.
    want_nodes: std::sync::Arc<std::sync::atomic::AtomicBool>,
    polling: bool,
}

impl<'a> Runner<'a> {
    fn new(
        cluster: Cluster,
        redis: Option<crate::redis::Redis>,
        policy: RestartPolicy,
        init: &'a mut Init,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Runner {
            cluster,
            redis,
            policy,
            init,
            kubelet: Kubelet::new(policy),
            running: BTreeMap::new(),
            tx,
            rx,
            printer: Printer::new(),
            head: HeadView::default(),
            workers_started: false,
            gcs_restarts_told: 0,
            gcs_loss_told: false,
            cluster_ready: false,
            want_nodes: Default::default(),
            polling: false,
        }
    }

    async fn run(mut self, redis_startup: Duration) -> Exit {
        self.banner();
        if matches!(self.cluster.redis, Some(RedisSource::Embedded { .. })) {
            self.start(Pod::Redis);
        }
        self.gate_redis(redis_startup);
        let end = loop {
            let due = self.kubelet.next_due();
            let wake = async {
                match due {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(sig) = self.init.signals.recv() => {
                    if is_stop(sig) {
                        break StopReason::Signal(sig);
                    }
                }
                Some(event) = self.rx.recv() => {
                    if let Some(end) = self.handle(event) {
                        break end;
                    }
                }
                _ = wake => {
                    for pod in self.kubelet.take_due(Instant::now()) {
                        self.start(pod);
                    }
                }
            }
        };
        self.stop(end).await
    }

    fn banner(&mut self) {
        let c = &self.cluster;
        let text = format!(
            "a Ray cluster with GCS fault tolerance: 1 head, {} worker(s), --restart-policy {:?}\n\
             \x20 export RAY_ADDRESS={}\n\
             \x20 dashboard  {}\n\
             \x20 readiness  {}/readyz   liveness {}/livez\n\
             \x20 status     {}/status   (or: rayhead probe status --url {})\n\
             \x20 GCS store  {}\n\
             \x20 state dir  {} (logs in {})",
            c.workers,
            self.policy,
            c.gcs_address(),
            c.dashboard_url(),
            c.probe_url(),
            c.probe_url(),
            c.probe_url(),
            c.probe_url(),
            c.store_shown(),
            shown_path(&c.root),
            shown_path(&c.root.join("logs")),
        );
        self.printer.say(&text);
    }

    /// Waits, in a task, for the cluster's Redis to answer: the head is
    /// started only then, as a KubeRay head needs its Redis.
    fn gate_redis(&self, limit: Duration) {
        let Some(redis) = self.redis.clone() else {
            // RocksDB: the head's own gate checks the storage path.
            let _ = self.tx.send(Event::RedisReady);
            return;
        };
        let tx = self.tx.clone();
        let cancel = self.init.cancel.child_token();
        let shown = self.cluster.redis_shown();
        let see = match self.cluster.redis {
            Some(RedisSource::Embedded { .. }) => {
                format!("; see {}", shown_path(&self.cluster.log(Pod::Redis)))
            }
            _ => String::new(),
        };
        let until = crate::time::after(Instant::now(), limit);
        self.init.tracker.spawn(async move {
            let gate = async {
                // A redis-server just started takes a moment to listen: that
                // is no news. wait_ready, which warns, takes over after 2 s.
                let quiet = crate::time::after(Instant::now(), Duration::from_secs(2));
                while Instant::now() < quiet && redis.ping().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                redis.wait_ready(until, "rayhead dev").await
            };
            let r = tokio::select! {
                r = gate => r,
                _ = cancel.cancelled() => return,
            };
            let _ = tx.send(match r {
                Ok(_) => Event::RedisReady,
                Err(e) if e.is_permanent() => Event::RedisFailed(Exit::RedisAuth(format!(
                    "Redis {shown} refused rayhead dev: {e}"
                ))),
                Err(e) => Event::RedisFailed(Exit::RedisUnreachable(format!(
                    "Redis {shown} did not answer within {}s: {e}{see}",
                    limit.as_secs()
                ))),
            });
        });
    }

    /// Reads the head's `/status` every [`STATUS_EVERY`], in a task.
    fn poll_status(&mut self) {
        if std::mem::replace(&mut self.polling, true) {
            return;
        }
        let tx = self.tx.clone();
        let url = self.cluster.probe_url();
        let dashboard = self.cluster.dashboard_url();
        let want_nodes = self.want_nodes.clone();
        // Nodes from before this run can still be listed ALIVE (the GCS has
        // not yet missed them): only those started since count.
        let since_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let cancel = self.init.cancel.child_token();
        self.init.tracker.spawn(async move {
            // Blocking clients on a thread: a slow answer must not hold the
            // runner's loop.
            let look = || {
                let (u, d) = (url.clone(), dashboard.clone());
                let nodes = want_nodes.load(std::sync::atomic::Ordering::Relaxed);
                tokio::task::spawn_blocking(move || {
                    let head = crate::probe::client::query(&u, "/status");
                    let dashboard = d.trim_start_matches("http://");
                    let nodes = nodes.then(|| {
                        crate::http_client::get_tcp(dashboard, status::NODES, "rayhead-dev")
                    });
                    (head, nodes)
                })
            };
            crate::time::every(STATUS_EVERY, &cancel, look, |answer| {
                let Ok((head, nodes)) = answer else {
                    return ControlFlow::Break(());
                };
                let mut view = match head {
                    (true, body) => HeadView::parse(&body),
                    _ => HeadView::default(),
                };
                if let Some(Ok((200, body))) = nodes {
                    view.workers_joined = status::workers_joined(&body, since_ms);
                }
                match tx.send(Event::Status(view)) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            })
            .await
        });
    }

    fn start(&mut self, pod: Pod) {
        if pod == Pod::Head {
            let _ = std::fs::remove_file(self.cluster.termination_log());
        }
        let spawned = self.cluster.command(pod).and_then(|mut cmd| {
            self.init
                .reaper
                .spawn(&mut cmd, &pod.to_string())
                .map_err(|e| format!("cannot start {pod}: {e}"))
        });
        let now = Instant::now();
        self.kubelet.started(pod, now);
        match spawned {
            Ok(s) => {
                tracing::debug!(pod = %pod, pid = s.pid.as_raw(), "started");
                self.running.insert(pod, s.pid);
                let tx = self.tx.clone();
                let cancel = self.init.cancel.child_token();
                let pid = s.pid;
                self.init.tracker.spawn(async move {
                    tokio::select! {
                        r = s.exit => if let Ok(status) = r {
                            let _ = tx.send(Event::Exited(pod, pid, status));
                        },
                        _ = cancel.cancelled() => {}
                    }
                });
            }
            Err(e) => {
                self.printer.say(&e);
                let decision = self.kubelet.exited(pod, now, false);
                self.say_decision(pod, decision);
            }
        }
        self.redraw();
    }

    fn handle(&mut self, event: Event) -> Option<StopReason> {
        match event {
            Event::RedisReady => {
                self.printer.say("Redis answers; starting the head");
                self.start(Pod::Head);
                self.poll_status();
            }
            Event::RedisFailed(e) => return Some(StopReason::Exit(e)),
            Event::Exited(pod, pid, status) => {
                if self.running.get(&pod) != Some(&pid) {
                    return None;
                }
                self.running.remove(&pod);
                self.sweep_orphans();
                return self.exited(pod, status);
            }
            Event::Status(view) => self.observe(view),
        }
        None
    }

    /// A pod's processes die with it, as a container's do: whatever of an
    /// exited pod's tree was re-parented to the runner (a head's rayhead
    /// SIGKILLed, say, leaves its gcs_server and raylet holding the ports
    /// the next head needs) is SIGKILLed.
    fn sweep_orphans(&self) {
        let me = nix::unistd::getpid();
        let snap = proctree::snapshot();
        let pods: Vec<Pid> = self.running.values().copied().collect();
        for orphan in snap
            .iter()
            .filter(|p| p.ppid == me && !pods.contains(&p.pid))
        {
            tracing::info!(pid = orphan.pid.as_raw(), comm = %orphan.comm, "SIGKILL: left behind by a pod that exited");
            // By identity: it may have exited since the snapshot.
            let root = pin::Pinned::pin(orphan.identity());
            pin::kill_tree(root.as_ref(), Vec::new());
        }
    }

    fn exited(&mut self, pod: Pod, status: ExitStatus) -> Option<StopReason> {
        let mut why = status.to_string();
        if pod == Pod::Head {
            self.head = HeadView::default();
            self.gcs_restarts_told = 0;
            self.gcs_loss_told = false;
            if let Ok(text) = std::fs::read_to_string(self.cluster.termination_log()) {
                let text = text.trim();
                if !text.is_empty() {
                    why = format!("{why}: {text}");
                }
            }
        }
        self.printer.say(&format!(
            "{pod} {why} (log: {})",
            shown_path(&self.cluster.log(pod))
        ));
        let decision = self.kubelet.exited(pod, Instant::now(), status.success());
        self.say_decision(pod, decision);
        self.redraw();
        match (pod, decision) {
            (Pod::Head, Decision::StaysDown) => Some(StopReason::Exit(Exit::Status {
                code: status.code(),
                reason: format!(
                    "the head {why}; --restart-policy {:?} keeps it down",
                    self.policy
                ),
            })),
            _ => None,
        }
    }

    fn say_decision(&mut self, pod: Pod, decision: Decision) {
        let text = match decision {
            Decision::Restart {
                after, restarts, ..
            } => format!(
                "restarting {pod} in {}s (restart {restarts}; back-off 10s doubling to 300s, as the kubelet)",
                after.as_secs()
            ),
            Decision::StaysDown => {
                format!("--restart-policy {:?}: {pod} is not restarted", self.policy)
            }
        };
        self.printer.say(&text);
    }

    /// A new look at the head: news of the GCS, and the workers once the
    /// head is first ready.
    fn observe(&mut self, view: HeadView) {
        if !self.running.contains_key(&Pod::Head) {
            return;
        }
        // A /status that did not answer says nothing of the GCS.
        if view.phase.is_none() {
            self.head.phase = None;
            self.redraw();
            return;
        }
        self.head = view;
        let new = &self.head;
        // A loss is news once; the recovery when the head runs again (the
        // restart count rises when the GCS is started, before it serves).
        if new.phase.as_deref() == Some("recovering") && !self.gcs_loss_told {
            self.gcs_loss_told = true;
            let why = new.last_loss_reason.clone().unwrap_or_default();
            self.printer
                .say(&format!("GCS lost ({why}); recovering it in place"));
        } else if new.running() && new.gcs_restarts > self.gcs_restarts_told {
            self.gcs_restarts_told = new.gcs_restarts;
            self.gcs_loss_told = false;
            let took = new
                .last_recovery_seconds
                .map(|s| format!(" {s:.3}s after it was lost"))
                .unwrap_or_default();
            let text = format!(
                "GCS restarted in place: SERVING again{took} (GCS restarts: {})",
                new.gcs_restarts
            );
            self.printer.say(&text);
        }
        if self.head.running() && !self.workers_started {
            self.workers_started = true;
            self.printer.say(&format!(
                "the head is ready; starting {} worker(s)",
                self.cluster.workers
            ));
            for n in 1..=self.cluster.workers {
                self.start(Pod::Worker(n));
            }
            self.want_nodes
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let workers = self.cluster.workers as usize;
        if self.workers_started
            && !self.cluster_ready
            && (workers == 0 || self.head.workers_joined >= Some(workers))
        {
            self.cluster_ready = true;
            self.want_nodes
                .store(false, std::sync::atomic::Ordering::Relaxed);
            self.printer.say(&format!(
                "the cluster is ready: {workers} worker node(s) joined; drivers can connect"
            ));
        }
        self.redraw();
    }

    fn redraw(&mut self) {
        let workers_up = self
            .running
            .keys()
            .filter(|p| matches!(p, Pod::Worker(_)))
            .count();
        let pod_restarts = [Pod::Redis, Pod::Head]
            .into_iter()
            .chain((1..=self.cluster.workers).map(Pod::Worker))
            .map(|p| self.kubelet.restarts(p))
            .sum();
        let line = Line {
            head: &self.head,
            head_up: self.running.contains_key(&Pod::Head),
            workers_up,
            workers: self.cluster.workers,
            pod_restarts,
        }
        .to_string();
        self.printer.status(line);
    }
}

/// A path as the user would type it: relative to the working directory
/// when it lies below it.
fn shown_path(p: &std::path::Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(|r| r.display().to_string()))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| p.display().to_string())
}

/// The signals that stop the runner: Ctrl-C, `kill`, and a closed
/// terminal.
fn is_stop(sig: Signal) -> bool {
    crate::init::stop::is_stop_signal(sig) || sig == Signal::SIGHUP
}
