#!/usr/bin/env python3
"""The static (musl) binary of `make dist` against the host build (glibc), on
what a build could move: GCS recovery, the probe's latency, and rayhead's memory.

Each round starts Redis and a real Ray head under one of the two binaries,
alternating A B A B on the same machine, then:
  1. SIGKILLs gcs_server KILLS times: kill -> SERVING again (GCS health check);
  2. loads /readyz at 2,000 requests/s over 8 keep-alive connections for 10 s:
     p50 and p99;
  3. runs that build's `rayhead probe ready` 50 times (the exec probe, over
     the Unix socket): wall time;
  4. reads rayhead's RSS (VmRSS) and peak (VmHWM) after all that.
Figures only; no assertions.
Usage: .venv/bin/python bench/static_build.py [ROUNDS]
"""
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from common import PASSWORD, RAYHEAD, env_for, free_port, procs_with, stop_head, wait_serving  # noqa: E402
from probe import load, pct, wall  # noqa: E402

STATIC = os.path.join(ROOT, "target", "x86_64-unknown-linux-musl", "release", "rayhead")
BUILDS = [("static (musl)", STATIC), ("host (glibc)", RAYHEAD)]
KILLS = 5


def status_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])


def round_for(binary, tmp):
    redis_port, gcs, probe = free_port(), free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--requirepass", PASSWORD, "--appendonly", "yes", "--save", "",
                              "--dir", tmp], stdout=subprocess.DEVNULL, start_new_session=True)
    env = env_for(redis_port, "bench-static")
    env["KUBERAY_GEN_RAY_START_CMD"] = (
        f"ray start --head --block --port={gcs} --num-cpus=0 --node-ip-address=127.0.0.1 "
        f"--temp-dir={tmp}/head --dashboard-host=127.0.0.1 --dashboard-port={free_port()} "
        f"--dashboard-agent-listen-port={free_port()} --ray-client-server-port={free_port()} "
        f"--metrics-export-port={free_port()} --disable-usage-stats --redis-password=$REDIS_PASSWORD")
    env["RAYHEAD_PROBE_LISTEN"] = f"127.0.0.1:{probe}"
    env["RAYHEAD_PROBE_SOCKET"] = os.path.join(tmp, "probe.sock")
    head = subprocess.Popen([binary, "run"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "rayhead.log"), "w"), start_new_session=True)
    try:
        wait_serving(gcs, 180)
        deadline = time.time() + 60
        while subprocess.run([binary, "probe", "ready"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL).returncode != 0:
            if time.time() > deadline:
                raise SystemExit("rayhead never became ready")
            time.sleep(0.2)
        recoveries = []
        for _ in range(KILLS):
            time.sleep(2)
            pids = procs_with(tmp, "gcs_server")
            t = time.time()
            for p in pids:
                os.kill(p, signal.SIGKILL)
            # The old port refuses at once; SERVING again means the new one.
            time.sleep(0.01)
            recoveries.append(wait_serving(gcs, 60) - t)
        time.sleep(2)
        lat, errors, _ = load(probe)
        exec_t, rc = wall([binary, "probe", "ready"], 50, env)
        rss, hwm = status_kib(head.pid, "VmRSS"), status_kib(head.pid, "VmHWM")
        return recoveries, lat, errors, exec_t, rc, rss, hwm
    finally:
        stop_head(head, redis, tmp)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    for _, b in BUILDS:
        if not os.path.exists(b):
            raise SystemExit(f"{b} is missing: run `make dist` and `make setup`")
    results = {name: [] for name, _ in BUILDS}
    for r in range(rounds):
        for name, binary in BUILDS:
            tmp = tempfile.mkdtemp(prefix="rayhead-bench-static-")
            results[name].append(round_for(binary, tmp))
            print(f"round {r + 1}: {name} done", file=sys.stderr)

    ms = lambda x: f"{x * 1000:.1f} ms"
    print(f"\n{rounds} rounds per build, interleaved; {KILLS} GCS SIGKILLs per round\n")
    print("| | static (musl) | host (glibc) |")
    print("|---|---|---|")
    rows = {}
    for name, _ in BUILDS:
        rs = results[name]
        rec = [x for r in rs for x in r[0]]
        lat = [x for r in rs for x in r[1]]
        ex = [x for r in rs for x in r[3]]
        rows.setdefault("GCS SIGKILL -> SERVING, median (min-max)", []).append(
            f"{ms(statistics.median(rec))} ({ms(min(rec))}-{ms(max(rec))})")
        rows.setdefault("/readyz under 2,000 req/s: p50 / p99", []).append(
            f"{ms(statistics.median(lat))} / {ms(pct(lat, 99))} ({sum(r[2] for r in rs)} non-200)")
        rows.setdefault("`rayhead probe ready` (exec, socket), median", []).append(
            f"{ms(statistics.median(ex))} (exit {max(r[4] for r in rs)})")
        rows.setdefault("rayhead RSS after the load (VmRSS), median", []).append(
            f"{statistics.median(r[5] for r in rs) / 1024:.1f} MiB")
        rows.setdefault("rayhead peak RSS (VmHWM), max", []).append(
            f"{max(r[6] for r in rs) / 1024:.1f} MiB")
    for k, v in rows.items():
        print(f"| {k} | {v[0]} | {v[1]} |")


if __name__ == "__main__":
    main()
