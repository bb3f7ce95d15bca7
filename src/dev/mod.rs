//! `rayhead dev`: a whole GCS-fault-tolerant Ray cluster on one machine, run
//! the way KubeRay and the kubelet would run it: a Redis, a head container
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
pub mod state_dir;
mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::config::{Config, Secret};
use crate::exit::Exit;
use crate::init::reaper::ExitStatus;
use crate::init::stop::{self, StopPlan};
use crate::init::{proctree, Init};
use cluster::{Cluster, RedisSource};
use kubelet::{Decision, Kubelet, Pod, RestartPolicy};
use state_dir::StateDir;
use status::{HeadView, Line, Printer};

/// `rayhead dev`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: u32,
    pub redis_url: Option<String>,
    pub state_dir: PathBuf,
    pub restart_policy: RestartPolicy,
    pub head_timeout: Option<Duration>,
    pub clean: bool,
}

/// How long Redis may take to answer after it starts (an AOF to replay),
/// at most: `redis.startup-timeout` when that is shorter.
const REDIS_STARTUP: Duration = Duration::from_secs(30);
/// How long the head and the workers get to stop before SIGKILL: more
/// than the head's own grace (5 s), so that its tree goes its own way.
const RAY_GRACE: Duration = Duration::from_secs(10);
const REDIS_GRACE: Duration = Duration::from_secs(10);
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
    let redis = match redis_client(cfg, &cluster) {
        Ok(r) => r,
        Err(e) => return Exit::Config(e),
    };
    let redis_startup = cfg.redis.startup_timeout.min(REDIS_STARTUP);
    let exit = Runner::new(cluster, redis, opts.restart_policy, &mut init)
        .run(redis_startup)
        .await;
    init.shutdown().await;
    drop(dir);
    exit
}

/// Everything that can be refused before a process starts.
fn prepare(opts: &Options) -> Result<(StateDir, Cluster), Exit> {
    let missing = |tool: &str| {
        Exit::ToolMissing(format!(
            "`{tool}` was not found on PATH.\n{}",
            cluster::install_hint(tool)
        ))
    };
    let ray = cluster::which("ray").ok_or_else(|| missing("ray"))?;
    let redis = match &opts.redis_url {
        Some(url) => RedisSource::External(
            crate::redis::address::parse(url)
                .map_err(|e| Exit::Config(format!("--redis-url {e}")))?,
        ),
        None => RedisSource::Embedded {
            server: cluster::which("redis-server").ok_or_else(|| missing("redis-server"))?,
        },
    };
    let dir = StateDir::open(&opts.state_dir, opts.clean).map_err(Exit::Config)?;
    let saved = dir.cluster().map_err(Exit::Config)?;
    let cluster = Cluster::new(&dir, saved, ray, redis, opts.head_timeout, opts.workers);
    Ok((dir, cluster))
}

/// The runner's own client of the cluster's Redis, to know it answers
/// before the head starts.
fn redis_client(cfg: &Config, cluster: &Cluster) -> Result<crate::redis::Redis, String> {
    let (address, password, username) = cluster.redis_address();
    let mut rc = cfg.redis.clone();
    rc.address = Some(address);
    rc.password = password;
    rc.username = username;
    rc.namespace = Some(cluster.saved.namespace.clone());
    match crate::redis::Redis::from_config(&rc) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err("no Redis address".into()),
        Err(e) => Err(format!("--redis-url: {e}")),
    }
}

enum Event {
    Exited(Pod, Pid, ExitStatus),
    RedisReady,
    RedisFailed(Exit),
    Status(HeadView),
}

/// Why the runner stops.
enum End {
    Signal(Signal),
    /// The head is down for good, or Redis never answered.
    Exit(Exit),
}

struct Runner<'a> {
    cluster: Cluster,
    redis: crate::redis::Redis,
    policy: RestartPolicy,
    init: &'a mut Init,
    kubelet: Kubelet,
    running: BTreeMap<Pod, Pid>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    printer: Printer,
    head: HeadView,
    workers_started: bool,
    polling: bool,
}

impl<'a> Runner<'a> {
    fn new(
        cluster: Cluster,
        redis: crate::redis::Redis,
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
            polling: false,
        }
    }

    async fn run(mut self, redis_startup: Duration) -> Exit {
        self.banner();
        if matches!(self.cluster.redis, RedisSource::Embedded { .. }) {
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
                        break End::Signal(sig);
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
        let redis_kind = match &c.redis {
            RedisSource::Embedded { .. } => {
                format!("embedded, AOF in {}", c.root.join("redis").display())
            }
            RedisSource::External(_) => "--redis-url".into(),
        };
        let text = format!(
            "a Ray cluster with GCS fault tolerance: 1 head, {} worker(s), --restart-policy {:?}\n\
             \x20 export RAY_ADDRESS={}\n\
             \x20 dashboard  {}\n\
             \x20 readiness  {}/readyz   liveness {}/livez\n\
             \x20 status     {}/status   (or: rayhead probe status --url {})\n\
             \x20 Redis      {} ({redis_kind}), namespace {}\n\
             \x20 state dir  {} (logs in {})",
            c.workers,
            self.policy,
            c.gcs_address(),
            c.dashboard_url(),
            c.probe_url(),
            c.probe_url(),
            c.probe_url(),
            c.probe_url(),
            c.redis_shown(),
            c.saved.namespace,
            shown_path(&c.root),
            shown_path(&c.root.join("logs")),
        );
        self.printer.say(&text);
    }

    /// Waits, in a task, for the cluster's Redis to answer: the head is
    /// started only then, as a KubeRay head needs its Redis.
    fn gate_redis(&self, limit: Duration) {
        let redis = self.redis.clone();
        let tx = self.tx.clone();
        let cancel = self.init.cancel.child_token();
        let shown = self.cluster.redis_shown();
        let see = match self.cluster.redis {
            RedisSource::Embedded { .. } => format!(
                "; see {}",
                shown_path(&self.cluster.root.join("redis/redis.log"))
            ),
            RedisSource::External(_) => String::new(),
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
        let cancel = self.init.cancel.child_token();
        self.init.tracker.spawn(async move {
            let mut tick = tokio::time::interval(STATUS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = cancel.cancelled() => return,
                }
                let u = url.clone();
                let query =
                    tokio::task::spawn_blocking(move || crate::probe::client::query(&u, "/status"));
                let answer = tokio::select! {
                    a = query => a,
                    _ = cancel.cancelled() => return,
                };
                let view = match answer {
                    Ok((true, body)) => HeadView::parse(&body),
                    _ => HeadView::default(),
                };
                if tx.send(Event::Status(view)).is_err() {
                    return;
                }
            }
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

    fn handle(&mut self, event: Event) -> Option<End> {
        match event {
            Event::RedisReady => {
                self.printer.say("Redis answers; starting the head");
                self.start(Pod::Head);
                self.poll_status();
            }
            Event::RedisFailed(e) => return Some(End::Exit(e)),
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
            for d in proctree::descendants(&snap, orphan.pid) {
                let _ = kill(d.pid, Signal::SIGKILL);
            }
            let _ = kill(orphan.pid, Signal::SIGKILL);
        }
    }

    fn exited(&mut self, pod: Pod, status: ExitStatus) -> Option<End> {
        let mut why = status.to_string();
        if pod == Pod::Head {
            self.head = HeadView::default();
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
            (Pod::Head, Decision::StaysDown) => Some(End::Exit(Exit::Status {
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
        let old = std::mem::replace(&mut self.head, view);
        let new = &self.head;
        if new.gcs_restarts > old.gcs_restarts && old.phase.is_some() {
            let took = new
                .last_recovery_seconds
                .map(|s| format!(" {s:.3}s after it was lost"))
                .unwrap_or_default();
            let text = format!(
                "GCS restarted in place: SERVING again{took} (GCS restarts: {})",
                new.gcs_restarts
            );
            self.printer.say(&text);
        } else if new.phase.as_deref() == Some("recovering") && old.phase != new.phase {
            let why = new.last_loss_reason.clone().unwrap_or_default();
            self.printer
                .say(&format!("GCS lost ({why}); recovering it in place"));
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

    /// Stops every pod: Ray first, Redis last (the GCS writes to it until
    /// it stops), then whatever else of the tree is left. A second stop
    /// signal SIGKILLs at once.
    async fn stop(mut self, end: End) -> Exit {
        let began = Instant::now();
        match &end {
            End::Signal(sig) => self
                .printer
                .say(&format!("received {}: stopping the cluster", sig.as_str())),
            End::Exit(e) => self.printer.say(&format!("stopping the cluster: {e}")),
        }
        let ray: Vec<Pod> = self
            .running
            .keys()
            .copied()
            .filter(|p| *p != Pod::Redis)
            .collect();
        let mut hurry = self.stop_pods(&ray, RAY_GRACE, false).await;
        if self.running.contains_key(&Pod::Redis) {
            hurry = self.stop_pods(&[Pod::Redis], REDIS_GRACE, hurry).await;
        }
        // Anything left of the tree (orphans of a killed head): the init's
        // own stop, which returns only when nothing is left to reap.
        let plan = StopPlan {
            stop_command: None,
            stop_command_timeout: Duration::ZERO,
            grace: if hurry {
                Duration::ZERO
            } else {
                Duration::from_secs(2)
            },
            group: None,
            forward: Vec::new(),
        };
        stop::stop_tree(
            &self.init.reaper,
            &plan,
            &mut self.init.signals,
            &self.init.tracker,
            &self.init.cancel,
        )
        .await;
        let took = began.elapsed().as_secs_f64();
        let exit = match end {
            End::Signal(sig) => Exit::Status {
                code: 0,
                reason: format!(
                    "stopped on {}: the cluster was shut down in {took:.1}s",
                    sig.as_str()
                ),
            },
            End::Exit(e) => e,
        };
        self.printer.say(&format!("stopped in {took:.1}s"));
        self.printer.end();
        exit
    }

    /// SIGTERMs `pods`' process groups and waits for them for `grace`, or
    /// not at all when `hurry`; then SIGKILLs what is left of their trees.
    /// Returns whether a second stop signal asked to hurry.
    async fn stop_pods(&mut self, pods: &[Pod], grace: Duration, mut hurry: bool) -> bool {
        for pod in pods {
            if let Some(pid) = self.running.get(pod) {
                let _ = killpg(*pid, Signal::SIGTERM);
            }
        }
        let deadline = crate::time::after(Instant::now(), grace);
        while !hurry && pods.iter().any(|p| self.running.contains_key(p)) {
            tokio::select! {
                Some(event) = self.rx.recv() => {
                    if let Event::Exited(pod, pid, status) = event {
                        if self.running.get(&pod) == Some(&pid) {
                            self.running.remove(&pod);
                            tracing::debug!(pod = %pod, status = %status, "stopped");
                        }
                    }
                }
                Some(sig) = self.init.signals.recv() => {
                    if is_stop(sig) {
                        self.printer.say(&format!("received {} again: SIGKILL", sig.as_str()));
                        hurry = true;
                    }
                }
                _ = sleep_until(deadline) => break,
            }
        }
        for pod in pods {
            if let Some(pid) = self.running.remove(pod) {
                if !hurry {
                    self.printer.say(&format!(
                        "{pod} did not stop within {}s: SIGKILL",
                        grace.as_secs()
                    ));
                }
                let family = proctree::descendants(&proctree::snapshot(), pid);
                let _ = kill(pid, Signal::SIGKILL);
                for p in family {
                    let _ = kill(p.pid, Signal::SIGKILL);
                }
            }
        }
        hurry
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
    stop::is_stop_signal(sig) || sig == Signal::SIGHUP
}

/// A state dir's embedded Redis for a one-off command (`redis-cleanup
/// --dev-state`, `redis-check --dev-state`): the running one when a
/// `rayhead dev` holds the dir, else started from its data and stopped
/// when this is dropped.
pub struct DevRedis {
    child: Option<std::process::Child>,
    /// Held while the Redis it started runs: no runner starts meanwhile.
    _dir: Option<StateDir>,
    pub address: String,
    pub password: Secret,
    pub namespace: String,
}

impl DevRedis {
    pub fn open(root: &std::path::Path) -> Result<DevRedis, String> {
        let saved = StateDir::saved(root)?;
        let (saved, child, dir) = match StateDir::open(root, false) {
            // A runner holds it: its Redis is up.
            Err(e) if e.contains("another rayhead dev") => (saved, None, None),
            Err(e) => return Err(e),
            Ok(dir) => {
                let server = cluster::which("redis-server").ok_or_else(|| {
                    format!(
                        "`redis-server` was not found on PATH.\n{}",
                        cluster::install_hint("redis-server")
                    )
                })?;
                let saved = dir.cluster()?;
                let cluster = Cluster::new(
                    &dir,
                    saved.clone(),
                    PathBuf::new(),
                    RedisSource::Embedded { server },
                    None,
                    0,
                );
                let mut cmd = cluster.command(Pod::Redis)?;
                let child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start redis-server: {e}"))?;
                (saved, Some(child), Some(dir))
            }
        };
        let r = DevRedis {
            child,
            _dir: dir,
            address: format!("127.0.0.1:{}", saved.ports.redis),
            password: Secret::new(saved.redis_password.clone()),
            namespace: saved.namespace,
        };
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&r.address).is_err() {
            if std::time::Instant::now() > until {
                return Err(format!(
                    "the embedded Redis on {} did not open its port within 10s; see {}",
                    r.address,
                    root.join("redis/redis.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }
}

impl Drop for DevRedis {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}
