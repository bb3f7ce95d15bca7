#!/usr/bin/env python3
"""Soak: a real head under rayhead's defaults takes N kills of gcs_server.

On loopback, with a real redis-server (password, AOF) and Ray from the
project's .venv: rayhead (release build, default configuration) supervises
the head, a worker node holds the KubeRay guide's detached counter, and one
driver stays connected throughout. Every 3 to 8 s (at random) gcs_server is
SIGKILLed or SIGTERMed (at random); after each kill the driver increments the
counter, which must rise by exactly one. Records every recovery time
(rayhead's gcs_recovered event), every kill-to-counter time, rayhead's RSS and
open fds at the start and the end, and the log lines it dropped. Figures
only; it fails (exit 1) only if rayhead exits or an increment is lost.

Usage: .venv/bin/python bench/soak.py [--kills 200] [--csv bench/soak.csv]
"""
import argparse
import csv
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PASSWORD, RAYHEAD, VENV_BIN, env_for, free_port, head_cmd,  # noqa: E402
                    procs_with, start_worker, wait_serving)

DRIVER = r"""
import sys, time, ray
ray.init(address=sys.argv[1], namespace="default_namespace", logging_level="ERROR")
@ray.remote(num_cpus=1)
class Counter:
    def __init__(self): self.value = 0
    def increment(self):
        self.value += 1
        return self.value
c = Counter.options(name="counter_actor", lifetime="detached", get_if_exists=True).remote()
print(ray.get(c.increment.remote()), flush=True)
for line in sys.stdin:
    t = time.time()
    while True:
        try:
            # list_named_actors asks the GCS (get_actor may be answered from
            # the driver's cache): this is the path that needs it back.
            assert "counter_actor" in ray.util.list_named_actors()
            v = ray.get(ray.get_actor("counter_actor").increment.remote(), timeout=60)
            break
        except Exception:
            time.sleep(0.01)
    print("RESULT", v, time.time(), flush=True)
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(url, name):
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return None


def recoveries(log):
    out = []
    for line in open(log):
        if '"gcs_recovered"' in line:
            out.append(json.loads(line)["seconds"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not os.path.exists(RAYHEAD):
        raise SystemExit("build first: cargo build --release")
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="rayhead-soak-")
    redis_port = free_port()
    procs = []
    failed = False
    try:
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                  "--requirepass", PASSWORD, "--appendonly", "yes", "--save", "",
                                  "--dir", tmp], stdout=subprocess.DEVNULL, start_new_session=True)
        procs.append(redis)
        time.sleep(0.5)
        gcs_port, probe_port = free_port(), free_port()
        env = env_for(redis_port, "soak")
        env["KUBERAY_GEN_RAY_START_CMD"] = head_cmd(tmp, "head", gcs_port)
        env["RAYHEAD_PROBE_LISTEN"] = f"127.0.0.1:{probe_port}"
        env["RAYHEAD_PROBE_SOCKET"] = f"{tmp}/probe.sock"
        url = f"http://127.0.0.1:{probe_port}"
        log = os.path.join(tmp, "rayhead.log")
        # rayhead's defaults: no crash-loop guard lifted, nothing tuned.
        head = subprocess.Popen([RAYHEAD, "--log-format", "json", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
        procs.append(head)
        wait_serving(gcs_port, 180)
        procs.append(start_worker(tmp, "worker", gcs_port, env))
        driver = subprocess.Popen([os.path.join(VENV_BIN, "python"), "-c", DRIVER, f"127.0.0.1:{gcs_port}"],
                                  env=dict(env, RAY_SCHEDULER_EVENTS="0"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  start_new_session=True)
        procs.append(driver)
        value = None
        while value is None:
            line = driver.stdout.readline()
            if not line:
                raise SystemExit("the driver failed to start")
            if line.strip().isdigit():
                value = int(line)
        start = {"rss_kib": rss_kib(head.pid), "fds": fds(head.pid)}
        rows, lost = [], 0
        for i in range(args.kills):
            time.sleep(rng.uniform(3, 8))
            if head.poll() is not None:
                print(f"rayhead exited {head.returncode} after {i} kills", file=sys.stderr)
                failed = True
                break
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
            gcs = procs_with(f"{tmp}/head", "gcs_server")
            if len(gcs) != 1:
                print(f"kill {i + 1}: expected one gcs_server, found {gcs}", file=sys.stderr)
                failed = True
                break
            t0 = time.time()
            os.kill(gcs[0], sig)
            driver.stdin.write("go\n")
            driver.stdin.flush()
            line = driver.stdout.readline()
            while line and not line.startswith("RESULT "):
                line = driver.stdout.readline()
            if not line:
                print(f"kill {i + 1}: the driver died", file=sys.stderr)
                failed = True
                break
            _, v, t2 = line.split()
            v = int(v)
            if v != value + 1:
                lost += v - value - 1
            value = v
            rows.append({"kill": i + 1, "signal": signal.Signals(sig).name,
                         "kill_to_counter_s": round(float(t2) - t0, 4), "counter": v})
            if (i + 1) % 10 == 0:
                print(f"  {i + 1} kills, counter {v}, rss {rss_kib(head.pid)} KiB", file=sys.stderr, flush=True)
        end = {"rss_kib": rss_kib(head.pid), "fds": fds(head.pid)} if head.poll() is None else {}
        dropped = metric(url, "rayhead_log_lines_dropped_total") if head.poll() is None else None
        restarts = metric(url, "rayhead_gcs_restarts_total") if head.poll() is None else None
        rec = recoveries(log)
        for r, s in zip(rows, rec):
            r["recovery_s"] = s
        if args.csv:
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["kill", "signal", "recovery_s", "kill_to_counter_s", "counter"])
                w.writeheader()
                w.writerows(rows)
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")
        k2c = [r["kill_to_counter_s"] for r in rows]
        print(f"\nSoak: {len(rows)} of {args.kills} kills survived "
              f"({sum(r['signal'] == 'SIGKILL' for r in rows)} SIGKILL, "
              f"{sum(r['signal'] == 'SIGTERM' for r in rows)} SIGTERM); rayhead "
              f"{'running' if head.poll() is None else 'EXITED ' + str(head.returncode)}")
        print(f"counter: {value} after {len(rows)} kills, increments lost: {lost}")
        print(f"recovery (kill event -> SERVING, rayhead's measure): median {med(rec):.3f}s, "
              f"p99 {q(rec, 0.99):.3f}s, max {max(rec) if rec else float('nan'):.3f}s, n={len(rec)}")
        print(f"kill -> next counter increment: median {med(k2c):.3f}s, p99 {q(k2c, 0.99):.3f}s, "
              f"max {max(k2c) if k2c else float('nan'):.3f}s")
        print(f"rayhead RSS: {start['rss_kib']} KiB at the start, {end.get('rss_kib')} KiB at the end; "
              f"open fds: {start['fds']} -> {end.get('fds')}")
        print(f"gcs restarts counted: {restarts}; log lines dropped: {dropped}")
        failed = failed or lost > 0 or head.poll() is not None
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM if p is procs[1] else signal.SIGKILL)
            except (ProcessLookupError, IndexError):
                pass
        time.sleep(3)
        subprocess.run(["pkill", "-9", "-f", tmp])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
