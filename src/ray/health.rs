//! The GCS's gRPC health service, watched and polled.
//!
//! A `grpc.health.v1.Health/Watch` stream held open is the event-driven loss
//! signal: on SIGTERM the GCS sends NOT_SERVING within a millisecond, and a
//! SIGKILL breaks the stream at once. `Health/Check`, polled every interval,
//! is the backstop for a GCS that hangs without closing anything.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::report::Report;

/// What the GCS said, or why it said nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Serving,
    NotServing,
    /// Nothing listens on the port.
    Refused,
    /// Anything else: a timeout, a broken stream.
    Failed(String),
}

/// One observation, tagged with the generation it was made for (see
/// [`Mode`]).
#[derive(Debug, Clone)]
pub struct Observation {
    pub generation: u64,
    pub health: Health,
    /// From the Watch stream (event-driven) or a Check (polled).
    pub via: &'static str,
    pub at: Instant,
    /// The round trip of a Check.
    pub latency: Option<Duration>,
}

/// How the monitor works, set by the supervisor. A new generation drops the
/// current connection: observations of a GCS that was declared lost must not
/// count for its replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub generation: u64,
    /// How often to check (and to reconnect after a failure).
    pub interval: Duration,
}

/// How often to try while a GCS is starting: recovery waits on this.
pub const FAST_INTERVAL: Duration = Duration::from_millis(20);

/// Runs until `cancel`, reporting on `report`.
pub(crate) async fn monitor(
    port: u16,
    check_timeout: Duration,
    mut mode: watch::Receiver<Mode>,
    report: Report<Observation>,
    cancel: CancellationToken,
) {
    let endpoint = match Endpoint::from_shared(format!("http://127.0.0.1:{port}")) {
        Ok(e) => e.connect_timeout(check_timeout).tcp_nodelay(true),
        Err(e) => {
            tracing::error!(error = %e, "bad GCS health endpoint");
            return;
        }
    };
    loop {
        let m = *mode.borrow_and_update();
        let send = |health: Health, via: &'static str, latency: Option<Duration>| {
            let _ = report.send(Observation {
                generation: m.generation,
                health,
                via,
                at: Instant::now(),
                latency,
            });
        };
        let channel = tokio::select! {
            c = endpoint.connect() => c,
            _ = cancel.cancelled() => return,
        };
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                send(connect_failure(&e), "connect", None);
                tokio::select! {
                    _ = sleep(m.interval) => continue,
                    _ = mode.changed() => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        session(channel, check_timeout, m, &mut mode, &send, &cancel).await;
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// One connection: a Watch stream plus periodic Checks, until either fails,
/// the mode changes, or `cancel`.
async fn session(
    channel: Channel,
    check_timeout: Duration,
    m: Mode,
    mode: &mut watch::Receiver<Mode>,
    send: &impl Fn(Health, &'static str, Option<Duration>),
    cancel: &CancellationToken,
) {
    let mut client = HealthClient::new(channel);
    let request = || HealthCheckRequest {
        service: String::new(),
    };
    let mut watcher = client.clone();
    let stream = tokio::select! {
        s = watcher.watch(request()) => s,
        _ = cancel.cancelled() => return,
    };
    let mut stream = match stream {
        Ok(s) => s.into_inner(),
        Err(status) => {
            send(
                Health::Failed(format!("watch: {}", status.message())),
                "watch",
                None,
            );
            tokio::select! {
                _ = sleep(m.interval) => {}
                _ = cancel.cancelled() => {}
                _ = mode.changed() => {}
            }
            return;
        }
    };
    let mut tick = tokio::time::interval(m.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(r)) => send(status_of(r.status), "watch", None),
                Ok(None) => {
                    send(Health::Failed("the watch stream ended".into()), "watch", None);
                    return;
                }
                Err(s) => {
                    send(Health::Failed(format!("the watch stream broke: {}", s.message())), "watch", None);
                    return;
                }
            },
            _ = tick.tick() => {
                let start = Instant::now();
                match timeout(check_timeout, client.check(request())).await {
                    Ok(Ok(r)) => send(status_of(r.into_inner().status), "check", Some(start.elapsed())),
                    Ok(Err(s)) => send(Health::Failed(format!("check: {}", s.message())), "check", Some(start.elapsed())),
                    Err(_) => send(Health::Failed(format!("check timed out after {check_timeout:?}")), "check", Some(start.elapsed())),
                }
            }
            _ = mode.changed() => return,
            _ = cancel.cancelled() => return,
        }
    }
}

fn status_of(code: i32) -> Health {
    if code == ServingStatus::Serving as i32 {
        Health::Serving
    } else {
        Health::NotServing
    }
}

/// A refused connection is its own verdict: nothing listens.
fn connect_failure(e: &tonic::transport::Error) -> Health {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Health::Refused;
            }
        }
        source = s.source();
    }
    Health::Failed(format!("connect: {e}"))
}
