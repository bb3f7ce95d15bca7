#!/usr/bin/env python3
"""Probe benchmark: rayhead's probe server and exec probe, and its idle cost.

With a real Ray head supervised by rayhead (Redis with a password, loopback):
  1. /readyz latency, p50 and p99, at a paced 2,000 requests/s from this second
     process over 8 keep-alive connections for 10 s;
  2. `rayhead probe ready` wall time, against KubeRay's default exec probe pair
     (wget to the dashboard agent and the dashboard, through bash) and against
     `ray health-check`, in the same run;
  3. rayhead's RSS and CPU while it idle-supervises the head for 60 s.
Figures only; no assertions. Usage: .venv/bin/python bench/probe.py
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from common import PASSWORD, RAYHEAD, VENV_BIN, env_for, free_port, stop_head, wait_serving  # noqa: E402


# Long enough for the 10 ms CPU ticks to resolve 0.02 % of a core.
IDLE = 60


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def load(port, rate=2000, seconds=10, conns=8):
    lat, errors = [], [0]
    per = rate / conns
    req = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"

    def worker():
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        n = 0
        while True:
            due = start + n / per
            now = time.perf_counter()
            if due - start > seconds:
                break
            if due > now:
                time.sleep(due - now)
            t = time.perf_counter()
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(4096)
            head, _, body = buf.partition(b"\r\n\r\n")
            length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
            while len(body) < length:
                body += s.recv(4096)
            lat.append(time.perf_counter() - t)
            if not head.startswith(b"HTTP/1.1 200"):
                errors[0] += 1
            n += 1
            # A connection lives at most 60 s on the server: reconnect if closed.
        s.close()

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    return lat, errors[0], len(lat) / took


def wall(cmd, n, env):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ts.append(time.perf_counter() - t)
        if r.returncode != 0:
            return ts, r.returncode
    return ts, 0


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def main():
    tmp = tempfile.mkdtemp(prefix="rayhead-bench-probe-")
    redis_port, gcs, dash, agent, probe = (free_port() for _ in range(5))
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--requirepass", PASSWORD, "--appendonly", "yes", "--save", "", "--dir", tmp],
                             stdout=subprocess.DEVNULL, start_new_session=True)
    env = env_for(redis_port, "bench-probe")
    env["KUBERAY_GEN_RAY_START_CMD"] = (
        f"ray start --head --block --port={gcs} --num-cpus=0 --node-ip-address=127.0.0.1 "
        f"--temp-dir={tmp}/head --dashboard-host=127.0.0.1 --dashboard-port={dash} "
        f"--dashboard-agent-listen-port={agent} --ray-client-server-port={free_port()} "
        f"--metrics-export-port={free_port()} --disable-usage-stats --redis-password=$REDIS_PASSWORD")
    env["RAYHEAD_PROBE_LISTEN"] = f"127.0.0.1:{probe}"
    head = subprocess.Popen([RAYHEAD, "run"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "rayhead.log"), "w"), start_new_session=True)
    try:
        wait_serving(gcs, 180)
        url = f"http://127.0.0.1:{probe}"
        deadline = time.time() + 60
        while subprocess.run([RAYHEAD, "probe", "ready", "--url", url], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL).returncode != 0:
            if time.time() > deadline:
                raise SystemExit("rayhead never became ready")
            time.sleep(0.2)
        time.sleep(5)  # let the dashboard settle

        lat, errors, rate = load(probe)
        kuberay = ["bash", "-c",
                   f"wget --tries 1 -T 2 -q -O- http://localhost:{agent}/api/local_raylet_healthz | grep success && "
                   f"wget --tries 1 -T 10 -q -O- http://localhost:{dash}/api/gcs_healthz | grep success"]
        probe_t, probe_rc = wall([RAYHEAD, "probe", "ready", "--url", url], 50, env)
        kuberay_t, kuberay_rc = wall(kuberay, 20, env)
        health_t, health_rc = wall([os.path.join(VENV_BIN, "ray"), "health-check", "--address", f"127.0.0.1:{gcs}"], 5, env)

        pid = head.pid
        c0, t0 = cpu_ticks(pid), time.time()
        time.sleep(IDLE)
        c1, t1 = cpu_ticks(pid), time.time()
        hz = os.sysconf("SC_CLK_TCK")
        cpu = (c1 - c0) / hz / (t1 - t0) * 100
        rss = rss_kib(pid)
    finally:
        stop_head(head, redis, tmp)

    ms = lambda x: f"{x * 1000:.2f} ms"
    print(f"\n/readyz under load: {len(lat)} requests at {rate:.0f}/s over 8 connections, {errors} non-200")
    print(f"  p50 {ms(statistics.median(lat))}   p99 {ms(pct(lat, 99))}   max {ms(max(lat))}")
    print("\nexec probe wall time (median)")
    print(f"  rayhead probe ready        {ms(statistics.median(probe_t))}  (n={len(probe_t)}, exit {probe_rc})")
    print(f"  KubeRay wget pair (bash)   {ms(statistics.median(kuberay_t))}  (n={len(kuberay_t)}, exit {kuberay_rc})")
    print(f"  ray health-check           {ms(statistics.median(health_t))}  (n={len(health_t)}, exit {health_rc})")
    print(f"\nrayhead idle-supervising a real head for {IDLE} s: RSS {rss / 1024:.1f} MiB, CPU {cpu:.3f} % of a core")


if __name__ == "__main__":
    main()
