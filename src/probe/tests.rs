use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::state::{ChildStatus, GcsHealth, Phase, Snapshot, State};

const STALL: Duration = Duration::from_secs(30);

struct Server {
    addr: std::net::SocketAddr,
    state: State,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(redis: bool) -> Server {
    serving(Snapshot::ray_head(
        "127.0.0.1:6379".into(),
        redis.then(|| "redis://redis:6379".to_string()),
    ))
    .await
}

/// A server on a port-0 listener, answering from `snap`.
async fn serving(snap: Snapshot) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = State::new(snap);
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(
        Listener::Tcp(listener),
        state.subscribe(),
        STALL,
        stop.clone(),
    ));
    Server {
        addr,
        state,
        stop,
        task,
    }
}

impl Server {
    async fn raw(&self, request: &[u8]) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn req(&self, method: &str, path: &str) -> (u16, String) {
        let text = self
            .raw(
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
        (code, body)
    }

    fn running(&self) {
        self.state
            .set_child("raylet", Some(10), ChildStatus::Running, None, true);
        self.state
            .set_child("gcs_server", Some(11), ChildStatus::Running, None, true);
        self.state
            .set_child("dashboard", Some(12), ChildStatus::Running, None, false);
        self.state
            .set_gcs_health(GcsHealth::Serving, Some(Duration::from_millis(2)));
        self.state.update(|s| {
            if let Some(r) = &mut s.redis {
                r.up = Some(true);
                r.ping_seconds = Some(0.001);
            }
        });
        self.state.set_phase(Phase::Running, "test");
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

#[tokio::test]
async fn readyz_follows_the_state() {
    let s = start(true).await;
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("phase is starting"), "{body}");
    assert!(body.contains("not probed yet"), "{body}");

    s.running();
    assert_eq!(s.req("GET", "/readyz").await, (200, "ok\n".into()));

    // Lost: 503 on the very next request.
    s.state.set_gcs_health(GcsHealth::Unreachable, None);
    s.state.set_phase(Phase::Recovering, "GCS lost");
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("phase is recovering") && body.contains("unreachable"),
        "{body}"
    );
    s.running();

    // Redis down.
    s.state.update(|st| {
        let r = st.redis.as_mut().unwrap();
        r.up = Some(false);
        r.last_error = Some("connection refused".into());
    });
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!(code, 503);
    assert_eq!(
        body,
        "Redis at redis://redis:6379 is down: connection refused\n"
    );

    let (code, body) = s.req("GET", "/readyz?verbose").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("[+] phase ok") && body.contains("[-] redis failed"),
        "{body}"
    );
    s.stop().await;
}

/// Readiness needs every process the supervisor marked required running,
/// and no other.
#[tokio::test]
async fn readyz_needs_the_required_processes_only() {
    let s = start(true).await;
    s.running();
    s.state.set_child(
        "dashboard",
        None,
        ChildStatus::Exited,
        Some("exited with code 1".into()),
        false,
    );
    assert_eq!(
        s.req("GET", "/readyz").await.0,
        200,
        "the dashboard is not required"
    );
    s.state.set_child(
        "raylet",
        None,
        ChildStatus::Exited,
        Some("was killed by SIGKILL".into()),
        true,
    );
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!((code, body.as_str()), (503, "raylet is exited\n"));
    s.state
        .set_child("raylet", Some(13), ChildStatus::Restarting, None, true);
    let (code, body) = s.req("GET", "/readyz?verbose").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("[-] raylet failed: raylet is restarting"),
        "{body}"
    );
    s.stop().await;
}

/// A required daemon failing its checks costs readiness only after its
/// threshold, with the reason; /status and /metrics show its health.
#[tokio::test]
async fn readiness_follows_daemon_health_past_its_threshold() {
    let s = start(true).await;
    s.running();
    let fail = |ago: Duration| {
        s.state.update(|st| {
            let d = st.daemons.get_mut("raylet").unwrap();
            d.healthy = Some(false);
            d.health = Some("stopped (SIGSTOP, or a debugger)".into());
            d.unhealthy_at = Some(Instant::now() - ago);
            d.unready_after = Duration::from_secs(10);
        })
    };
    fail(Duration::from_secs(3));
    assert_eq!(s.req("GET", "/readyz").await.0, 200, "within the threshold");
    fail(Duration::from_secs(12));
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.starts_with("raylet has failed its health checks for 12.")
            && body.contains("stopped (SIGSTOP"),
        "{body}"
    );
    let (_, v) = s.req("GET", "/status").await;
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["daemons"]["raylet"]["healthy"], false, "{v:#}");
    assert_eq!(v["ready"], false);
    let (_, m) = s.req("GET", "/metrics").await;
    assert!(
        m.contains("rayhead_daemon_healthy{daemon=\"raylet\"} 0"),
        "{m}"
    );
    s.stop().await;
}

/// A plain command: ready while it runs and no stop is under way; no GCS
/// or Redis anywhere.
#[tokio::test]
async fn a_plain_command_is_ready_while_it_runs() {
    let s = serving(Snapshot::command()).await;
    assert_eq!(s.req("GET", "/readyz").await.0, 503);
    s.state
        .set_child("command", Some(5), ChildStatus::Running, None, true);
    s.state.set_phase(Phase::Running, "the command runs");
    assert_eq!(s.req("GET", "/readyz").await, (200, "ok\n".into()));
    let (_, body) = s.req("GET", "/status").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["supervising"], "command");
    assert!(v["gcs"].is_null() && v["redis"].is_null(), "{v:#}");
    let (_, metrics) = s.req("GET", "/metrics").await;
    assert!(!metrics.contains("rayhead_gcs_up"), "{metrics}");
    assert!(
        metrics.contains("rayhead_daemon_up{daemon=\"command\"} 1"),
        "{metrics}"
    );
    s.state.set_phase(Phase::Stopping, "received SIGTERM");
    assert_eq!(s.req("GET", "/readyz").await.0, 503);
    assert_eq!(s.req("GET", "/livez").await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn livez_ignores_the_gcs_but_not_an_exit() {
    let s = start(false).await;
    s.state.set_gcs_health(GcsHealth::Unreachable, None);
    s.state.set_phase(Phase::Recovering, "GCS lost");
    assert_eq!(
        s.req("GET", "/livez").await.0,
        200,
        "a GCS outage is rayhead's to fix"
    );
    s.state.update(|st| st.heartbeat -= Duration::from_secs(31));
    let (code, body) = s.req("GET", "/livez").await;
    assert_eq!(code, 503);
    assert!(body.contains("heartbeat"), "{body}");
    s.state.beat();
    s.state
        .set_phase(Phase::Exiting, "GCS not recovered in time");
    let (code, body) = s.req("GET", "/livez").await;
    assert_eq!(code, 503);
    assert!(body.contains("GCS not recovered in time"), "{body}");
    s.stop().await;
}

#[tokio::test]
async fn status_is_json_without_secrets() {
    let s = start(true).await;
    s.running();
    let (code, body) = s.req("GET", "/status").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["phase"], "running");
    assert_eq!(v["ready"], true);
    assert_eq!(v["daemons"]["raylet"]["pid"], 10);
    assert_eq!(v["gcs"]["health"], "serving");
    assert_eq!(v["redis"]["address"], "redis://redis:6379");
    assert!(v["uptime_seconds"].is_number());
    assert!(v["started_at"].as_str().unwrap().ends_with('Z'));
    s.stop().await;
}

#[tokio::test]
async fn metrics_cover_the_state() {
    let s = start(true).await;
    s.running();
    s.state.update(|st| {
        st.gcs.as_mut().unwrap().restarts = 2;
        st.recoveries = vec![0.08, 0.3];
    });
    let (code, body) = s.req("GET", "/metrics").await;
    assert_eq!(code, 200);
    for want in [
        "rayhead_gcs_up 1",
        "rayhead_gcs_restarts_total 2",
        "rayhead_gcs_recovery_seconds_count 2",
        "rayhead_gcs_health_check_seconds 0.002",
        "rayhead_redis_up 1",
        "rayhead_redis_ping_seconds 0.001",
        "rayhead_phase{phase=\"running\"} 1",
        "rayhead_phase{phase=\"recovering\"} 0",
        "rayhead_daemon_up{daemon=\"raylet\"} 1",
        "rayhead_build_info{version=",
    ] {
        assert!(body.contains(want), "missing {want}:\n{body}");
    }
    assert!(
        !body.contains("rayhead_daemon_restarts_total"),
        "no restarts yet:\n{body}"
    );
    // Down, and a daemon restarted twice: the zeroes and the counts.
    s.state.update(|st| {
        st.redis.as_mut().unwrap().up = Some(false);
        st.daemons.get_mut("dashboard").unwrap().restarts = 2;
    });
    s.state.set_gcs_health(GcsHealth::NotServing, None);
    let (_, body) = s.req("GET", "/metrics").await;
    for want in [
        "rayhead_gcs_up 0",
        "rayhead_redis_up 0",
        "rayhead_daemon_restarts_total{daemon=\"dashboard\"} 2",
    ] {
        assert!(body.contains(want), "missing {want}:\n{body}");
    }
    assert!(
        !body.contains("rayhead_daemon_restarts_total{daemon=\"raylet\"}"),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test]
async fn head_404_and_405() {
    let s = start(false).await;
    let text = s
        .raw(b"HEAD /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("content-length: 3"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text:?}");
    assert_eq!(s.req("GET", "/nope").await.0, 404);
    // Only the four paths: a near miss is not the metrics.
    for near in ["/metricsx", "/metrics/", "/readyz/x", "/"] {
        let (code, body) = s.req("GET", near).await;
        assert_eq!(code, 404, "{near}: {body}");
        assert!(
            body.contains("/readyz, /livez, /status, /metrics"),
            "{body}"
        );
    }
    let text = s
        .raw(b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.contains("allow: GET, HEAD"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn garbage_slow_and_oversized_clients_do_not_hurt() {
    let s = start(false).await;
    let text = s.raw(b"\x00\x01garbage garbage\r\n\r\n").await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text:?}"
    );

    let big = format!(
        "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let text = s.raw(big.as_bytes()).await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text:?}"
    );

    // A client that sends half a request and waits is cut off after the
    // header timeout, while others are answered meanwhile.
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHo").await.unwrap();
    assert_eq!(s.req("GET", "/livez").await.0, 200);
    let mut buf = Vec::new();
    let read = tokio::time::timeout(HEADER_TIMEOUT * 3, slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow client was never cut off");
    assert_eq!(s.req("GET", "/livez").await.0, 200);
    s.stop().await;
}
