#!/usr/bin/env python3
"""GCS recovery as applications see it: rayhead against a restarted head.

Two clusters run side by side, on loopback, against one real redis-server
(password, AOF), with Ray from the project's .venv, each with a worker node,
the KubeRay guide's detached counter and a Ray Serve app behind the head's
proxy, every process with the env of the shipped manifest
(config/ray-cluster.rayhead.yaml):
  (a) rayhead with its defaults supervising the head;
  (b) `ray start --head --block` restarted at once by a shell loop that stands
      in for the kubelet (its best case: no back-off).
For each run and each signal (SIGKILL, SIGTERM, SIGSTOP of gcs_server) it
kills (a)'s GCS, then (b)'s, interleaved, each only once its head is fully up
((a): /readyz 200; (b): `ray start` wrote ray_current_cluster). It records,
from the kill: the GCS answering SERVING (polled every 5 ms), the dashboard's
/api/gcs_healthz answering 200 again, a driver's next GCS-dependent round
(get_actor + a call + an internal-KV read; (a)'s driver stays connected, (b)'s
dies with its head and a fresh one is started at the kill), and, for (a),
rayhead's gcs_lost event and /readyz turning 503 and 200; Serve requests sent
and failed around each incident, with their latencies.

Writes bench/recovery.csv (one row per incident and measure), bench/serve.csv
(every Serve request), and prints a Markdown section for BENCHMARKS.md.
Usage: .venv/bin/python bench/gcs_recovery.py [--runs 5] [--signals KILL,TERM,STOP] [--env N=V]
"""
import argparse
import csv
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PASSWORD, PY, RAYHEAD, ROOT, TESTS_PY, VENV_BIN, GcsHealth, free_port,  # noqa: E402
                    http_ok, manifest_env, procs_with, serving, wait_for)

# How long an incident may take before the benchmark records "never".
LIMIT = 200.0
# (b) does not see a stopped GCS for minutes (482 s in one run here): after
# this long the benchmark SIGKILLs it, so that the run goes on, and records
# the incident as longer than this.
STOP_LIMIT = 90.0


def log(*a):
    print(*a, file=sys.stderr, flush=True)




class Poller(threading.Thread):
    """Polls `check` every `every` s; keeps (time, ok) at every change."""

    def __init__(self, check, every):
        super().__init__(daemon=True)
        self.check, self.every = check, every
        self.changes, self.oks, self.stopped = [], [], threading.Event()

    def run(self):
        last = None
        while not self.stopped.is_set():
            ok = self.check()
            now = time.time()
            if ok != last:
                self.changes.append((now, ok))
                last = ok
            if ok:
                self.oks.append(now)
            time.sleep(self.every)

    def down_after(self, t):
        """The first failure seen after t, or None."""
        return next((c for c, ok in self.changes if c >= t and not ok), None)

    def back_after(self, t):
        """The first success after the first failure after t (or after t
        when no failure was seen, e.g. the outage fell between two polls)."""
        start = self.down_after(t) or t
        return next((c for c in self.oks if c >= start), None)




def wait_for_head_init(marker):
    """The host pid of (b)'s current `ray start`, PID 1 of its namespace."""
    deadline = time.time() + LIMIT
    while time.time() < deadline:
        for pid in procs_with(marker, "ray"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
                with open(f"/proc/{ppid}/comm") as f:
                    if f.read().strip() == "unshare":
                        return pid
            except OSError:
                pass
        time.sleep(0.01)
    raise SystemExit("(b) no ray start running")


class Cluster:
    """A head (under rayhead, or the restart loop), a worker, the counter,
    a Serve app and the pollers."""

    def __init__(self, who, tmp, redis_port, head_env, worker_env):
        self.who, self.tmp = who, tmp
        self.procs = []
        self.gcs_port, self.dash_port, self.serve_port = free_port(), free_port(), free_port()
        self.probe_port = free_port()
        self.marker = os.path.join(tmp, f"{who}-head")
        self.addr = f"127.0.0.1:{self.gcs_port}"
        env = dict(os.environ)
        env.update({
            "PATH": VENV_BIN + ":" + env.get("PATH", ""),
            "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}",
            "REDIS_PASSWORD": PASSWORD,
            "RAY_external_storage_namespace": f"bench-{who}",
            "RAY_DISABLE_USAGE_STATS": "1",
        })
        self.env = dict(env, **head_env)
        self.worker_env = dict(env, **worker_env, RAY_gcs_rpc_server_reconnect_timeout_s="600")
        cmd = (f"ray start --head --block --port={self.gcs_port} --num-cpus=0 "
               f"--node-ip-address=127.0.0.1 --temp-dir={self.marker} --dashboard-host=127.0.0.1 "
               f"--dashboard-port={self.dash_port} --dashboard-agent-listen-port={free_port()} "
               f"--ray-client-server-port={free_port()} --metrics-export-port={free_port()} "
               f"--disable-usage-stats --redis-password=$REDIS_PASSWORD")
        self.log = os.path.join(tmp, f"{who}.log")
        if who == "a":
            env = dict(self.env, KUBERAY_GEN_RAY_START_CMD=cmd,
                       RAYHEAD_PROBE_LISTEN=f"127.0.0.1:{self.probe_port}",
                       RAYHEAD_PROBE_SOCKET=os.path.join(tmp, "a-probe.sock"))
            self.head = self.spawn([RAYHEAD, "--log-format", "json", "run"], env, self.log)
        else:
            # The loop stamps each exit and start of `ray start`: the head's
            # teardown and restart on the timeline. ray_current_cluster is
            # written once `ray start` has finished starting: removed here, it
            # tells when the new head is fully up.
            # Each head runs in a PID namespace of its own, as in a container:
            # when `ray start` ends, the kernel kills every process left in
            # it (agents, workers, the Serve proxy), as the kubelet does with
            # a container's cgroup. Without it, the old head's orphans hold
            # its ports, and the new head raylet dies waiting for its agent.
            cur = os.path.join(self.marker, "ray_current_cluster")
            loop = (f"while :; do rm -f {cur}; echo \"START $(date +%s.%N)\"; "
                    f"unshare --pid --fork --mount-proc --kill-child {VENV_BIN}/{cmd} "
                    f">>{tmp}/b-ray-start.log 2>&1; "
                    f"echo \"EXIT $? $(date +%s.%N)\"; done")
            self.head = self.spawn(["bash", "-c", loop], self.env, self.log)
        wait_for(f"({who}) SERVING", lambda: serving(self.gcs_port), 180)
        self.wait_up()
        self.spawn([os.path.join(VENV_BIN, "ray"), "start", "--block", f"--address={self.addr}",
                    "--num-cpus=1", "--node-ip-address=127.0.0.1", f"--temp-dir={tmp}/{who}-worker",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--metrics-export-port={free_port()}", "--disable-usage-stats"],
                   self.worker_env, os.devnull)
        subprocess.run([PY, os.path.join(ROOT, "examples", "detached_actor.py")],
                       env=dict(self.env, RAY_ADDRESS=self.addr),
                       check=True, capture_output=True, timeout=180)
        subprocess.run([PY, os.path.join(TESTS_PY, "serve_app.py"), self.addr, str(self.serve_port)],
                       env=self.env, check=True, capture_output=True, timeout=300)
        # The first driver writes the internal-KV key that every round reads.
        # (a)'s stays connected; (b)'s would die with its head anyway.
        self.driver = self.start_driver([])
        for line in self.driver.stdout:  # its warm-up round, then READY
            if line.startswith("READY"):
                break
        else:
            raise SystemExit(f"({who}) the driver failed")
        if who == "b":
            self.driver.kill()

    def spawn(self, argv, env, out):
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=open(out, "a"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def start_driver(self, extra):
        argv = [PY, os.path.join(TESTS_PY, "driver.py"), self.addr, self.tmp] + extra
        if self.who == "b":
            # A driver on the head pod lives in the head's PID namespace (as
            # with kubectl exec): the raylet checks its clients' pids there.
            init = wait_for_head_init(self.marker)
            argv = ["nsenter", "--target", str(init), "--pid", "--mount", "--"] + argv
        d = subprocess.Popen(argv,
                             env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=open(os.path.join(self.tmp, f"{self.who}-driver.err"), "a"),
                             text=True, start_new_session=True)
        self.procs.append(d)
        return d

    def wait_up(self):
        """Until the head is fully up, so that a kill hits a running head."""
        if self.who == "a":
            wait_for("(a) /readyz", lambda: http_ok(f"http://127.0.0.1:{self.probe_port}/readyz"), LIMIT)
        else:
            cur = os.path.join(self.marker, "ray_current_cluster")
            wait_for("(b) ray start to finish", lambda: os.path.exists(cur) and serving(self.gcs_port), LIMIT)
        wait_for(f"({self.who}) gcs_healthz", lambda: http_ok(
            f"http://127.0.0.1:{self.dash_port}/api/gcs_healthz"), LIMIT)

    def driver_round(self, t_kill):
        """Kill -> the end of the next driver round. (a)'s driver is asked at
        the kill; (b)'s died with the head, so a fresh one starts at the kill
        and is restarted until a round succeeds."""
        if self.who == "a":
            self.driver.stdin.write("go\n")
            self.driver.stdin.flush()
            drivers = [self.driver]
        else:
            drivers = []
        while time.time() - t_kill < LIMIT:
            if not drivers:
                drivers.append(self.start_driver(["--now"]))
            line = drivers[-1].stdout.readline()
            if line.startswith("CALL "):
                if self.who == "b":
                    drivers[-1].kill()
                log(f"    driver: {line.strip()}")
                return float(line.split()[3])
            if not line:  # it died: the head was not back yet
                drivers.pop().wait()
        return None

    def events(self, name):
        """Times of rayhead's JSON events named `name`."""
        out = []
        for line in open(self.log):
            if f'"{name}"' in line:
                ts = json.loads(line)["timestamp"]
                out.append(datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
        return out

    def loop_marks(self, word):
        return [float(l.split()[-1]) for l in open(self.log) if l.startswith(word + " ")]

    def incident(self, sig, serve_csv):
        """One kill; returns {measure: seconds from the kill, or None}. The
        pollers and the Serve load run only around this cluster's own
        incidents, so that the idle cluster costs the measured one little CPU."""
        self.wait_up()
        self.gcs = Poller(GcsHealth(self.gcs_port), 0.005)
        self.healthz = Poller(lambda: http_ok(f"http://127.0.0.1:{self.dash_port}/api/gcs_healthz"), 0.02)
        self.readyz = Poller(lambda: http_ok(f"http://127.0.0.1:{self.probe_port}/readyz"), 0.02)
        pollers = [self.gcs, self.healthz] + ([self.readyz] if self.who == "a" else [])
        for p in pollers:
            p.start()
        load = subprocess.Popen(
            [PY, os.path.join(TESTS_PY, "serve_load.py"), f"http://127.0.0.1:{self.serve_port}/hello",
             serve_csv, "0.02"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            start_new_session=True)
        time.sleep(1)
        gcs = procs_with(self.marker, "gcs_server")
        if len(gcs) != 1:
            raise SystemExit(f"({self.who}) expected one gcs_server, found {gcs}")
        t0 = time.time()
        os.kill(gcs[0], sig)
        gave_up = []
        if self.who == "b" and sig == signal.SIGSTOP:
            def give_up():
                if not [t for t in self.loop_marks("START") if t >= t0]:
                    gave_up.append(time.time())
                    os.kill(gcs[0], signal.SIGKILL)
            timer = threading.Timer(STOP_LIMIT, give_up)
            timer.start()
        t_driver = self.driver_round(t0)
        if gave_up:
            t_driver = None
        wait_for(f"({self.who}) SERVING", lambda: self.gcs.back_after(t0) is not None, LIMIT)
        self.wait_up()
        for p in pollers:  # each has seen the outage end
            try:
                wait_for("a poller", lambda: p.back_after(t0) is not None, 30)
            except RuntimeError:
                pass
        if sig == signal.SIGSTOP:  # (b) never kills it itself; PDEATHSIG does
            try:
                os.kill(gcs[0], signal.SIGKILL)
            except ProcessLookupError:
                pass
        rel = lambda t: None if t is None else t - t0
        first = lambda ts: next((t for t in ts if t >= t0), None)
        row = {
            "serving": rel(self.gcs.back_after(t0)),
            "healthz": rel(self.healthz.back_after(t0)),
            "driver": rel(t_driver),
        }
        if gave_up:  # nothing after the benchmark's own kill is (b)'s doing
            row = {m: None for m in row}
            row["gave_up"] = STOP_LIMIT
        elif self.who == "a":
            row["detected"] = rel(first(self.events("gcs_lost")))
            row["restarted"] = rel(first(self.events("daemon_started")))
            row["recovered"] = rel(first(self.events("gcs_recovered")))
            row["readyz_503"] = rel(self.readyz.down_after(t0))
            row["readyz_200"] = rel(self.readyz.back_after(t0))
        else:
            row["detected"] = rel(first(self.loop_marks("EXIT")))
            row["restarted"] = rel(first(self.loop_marks("START")))
        back = self.serve_back(serve_csv, t0)
        row["serve_back"] = None if gave_up else rel(back)
        time.sleep(2)  # Serve's window reaches past the recovery
        row["window_end"] = time.time() - t0
        row["kill"] = t0
        load.stdin.close()
        load.wait(30)
        for p in pollers:
            p.stopped.set()
        return row

    def serve_back(self, path, t0):
        """Waits until Serve has answered 20 requests in a row since its last
        failure; returns the start of the first of them (None: it never
        failed, or it did not come back within LIMIT)."""
        deadline = time.time() + LIMIT
        while time.time() < deadline:
            rows = [r for r in csv.DictReader(open(path)) if float(r["start"]) >= t0]
            fails = [i for i, r in enumerate(rows) if r["ok"] != "1"]
            if not fails:
                if len(rows) >= 20:
                    return None
            elif len(rows) - fails[-1] - 1 >= 20:
                return float(rows[fails[-1] + 1]["start"])
            time.sleep(0.2)
        return None

    def stop(self):
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM if p is self.head else signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.head.pid, signal.SIGKILL)


def serve_window(path, t0, t1):
    rows = [r for r in csv.DictReader(open(path)) if t0 <= float(r["start"]) <= t1]
    lat = sorted(float(r["latency"]) for r in rows)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
    return {"serve_sent": len(rows), "serve_failed": sum(r["ok"] != "1" for r in rows),
            "serve_p50": q(0.5), "serve_p99": q(0.99), "serve_max": lat[-1] if lat else None}


MEASURES = ["detected", "restarted", "serving", "recovered", "readyz_503", "readyz_200", "healthz",
            "driver", "serve_back", "gave_up", "serve_sent", "serve_failed", "serve_p50", "serve_p99", "serve_max"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--signals", default="KILL,TERM,STOP")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench"))
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="an extra variable for every Ray process and driver (for experiments)")
    args = ap.parse_args()
    sigs = [getattr(signal, "SIG" + s.strip()) for s in args.signals.split(",")]
    if not os.path.exists(RAYHEAD):
        raise SystemExit("build first: cargo build --release")
    head_env, worker_env = manifest_env()
    for kv in args.env:
        name, _, value = kv.partition("=")
        head_env[name] = worker_env[name] = value
    tmp = tempfile.mkdtemp(prefix="rayhead-bench-")
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--requirepass", PASSWORD, "--appendonly", "yes", "--save", "",
                              "--dir", tmp], stdout=subprocess.DEVNULL, start_new_session=True)
    clusters, rows = [], []
    try:
        time.sleep(0.5)
        for who in ("a", "b"):
            log(f"starting ({who})")
            clusters.append(Cluster(who, tmp, redis_port, head_env, worker_env))
        for run in range(1, args.runs + 1):
            for sig in sigs:
                for c in clusters:
                    name = signal.Signals(sig).name
                    serve_csv = os.path.join(tmp, f"serve-{c.who}-{name}-{run}.csv")
                    r = c.incident(sig, serve_csv)
                    r.update(serve_window(serve_csv, r["kill"], r["kill"] + r["window_end"]))
                    r.update(who=c.who, signal=name, run=run, serve_csv=serve_csv)
                    rows.append(r)
                    log(f"  ({c.who}) {r['signal']} #{run}: " + ", ".join(
                        f"{k} {r[k]:.3f}" for k in ("detected", "serving", "healthz", "driver")
                        if r.get(k) is not None) + f", serve failed {r['serve_failed']}/{r['serve_sent']}")
    finally:
        for c in clusters:
            c.stop()
        os.killpg(redis.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", tmp])
    with open(os.path.join(args.out, "recovery.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["who", "signal", "run", "kill", "measure", "value"])
        for r in rows:
            for m in MEASURES:
                if r.get(m) is not None:
                    w.writerow([r["who"], r["signal"], r["run"], f"{r['kill']:.6f}", m, r[m]])
    with open(os.path.join(args.out, "serve.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["who", "signal", "run", "kill", "start", "latency", "ok", "status"])
        for row in rows:
            for r in csv.DictReader(open(row["serve_csv"])):
                w.writerow([row["who"], row["signal"], row["run"], f"{row['kill']:.6f}", r["start"],
                            r["latency"], r["ok"], r["status"]])
    report(rows, args.runs, sigs)


def stats(xs, gave_up=0):
    xs = [x for x in xs if x is not None]
    if gave_up:
        return f"> {STOP_LIMIT:.0f} s in {gave_up} of {gave_up + len(xs)} runs"
    if not xs:
        return "-"
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def report(rows, runs, sigs):
    name = {"a": "(a) rayhead", "b": "(b) restart loop"}
    print(f"Median (min-max) over {runs} runs, seconds from the kill of gcs_server.\n")
    print("| case | detected | SERVING | driver round | gcs_healthz 200 | /readyz 503 | /readyz 200 |")
    print("|---|---|---|---|---|---|---|")
    for sig in sigs:
        s = signal.Signals(sig).name
        for who in ("a", "b"):
            rs = [r for r in rows if r["who"] == who and r["signal"] == s]
            col = lambda m: stats([r.get(m) for r in rs], sum(1 for r in rs if r.get("gave_up")))
            print(f"| {name[who]} {s} | {col('detected')} | {col('serving')} | {col('driver')} | "
                  f"{col('healthz')} | {col('readyz_503')} | {col('readyz_200')} |")
    print("\nRatios (b)/(a), pair by pair (run i of (a) against run i of (b)), median (min-max):\n")
    print("| signal | SERVING | driver round | gcs_healthz 200 |")
    print("|---|---|---|---|")
    for sig in sigs:
        s = signal.Signals(sig).name
        a = {r["run"]: r for r in rows if r["who"] == "a" and r["signal"] == s}
        b = {r["run"]: r for r in rows if r["who"] == "b" and r["signal"] == s}

        def ratio(m):
            xs = [b[i][m] / a[i][m] for i in a if i in b and a[i].get(m) and b[i].get(m)]
            if not xs:
                return "-"
            return f"{statistics.median(xs):.0f}x ({min(xs):.0f}x-{max(xs):.0f}x)"
        print(f"| {s} | {ratio('serving')} | {ratio('driver')} | {ratio('healthz')} |")
    print("\nRay Serve through the head's proxy, a request every 20 ms (each on a new connection), from"
          " each kill until 2 s after the head and Serve were both back:\n")
    print("| case | sent | failed | Serve back after | p50 | p99 | max |")
    print("|---|---|---|---|---|---|---|")
    for sig in sigs:
        s = signal.Signals(sig).name
        for who in ("a", "b"):
            rs = [r for r in rows if r["who"] == who and r["signal"] == s]
            sent = sum(r["serve_sent"] for r in rs)
            failed = sum(r["serve_failed"] for r in rs)
            ms = lambda m: f"{max((r[m] or 0) for r in rs) * 1000:.0f} ms" if rs else "-"
            p50 = statistics.median([r["serve_p50"] for r in rs if r["serve_p50"] is not None] or [0])
            back = stats([r.get("serve_back") for r in rs]) if failed else "never down"
            print(f"| {name[who]} {s} | {sent} | {failed} | {back} | {p50 * 1000:.0f} ms | "
                  f"{ms('serve_p99')} | {ms('serve_max')} |")
    print("\np50 is the median of the incidents' medians; p99 and max are the worst incident's;"
          " a failed request's latency is the time it took to fail. Where (b) gave up on a stopped GCS,"
          f" the benchmark SIGKILLed it after {STOP_LIMIT:.0f} s: its failures are a lower bound.")


if __name__ == "__main__":
    main()
