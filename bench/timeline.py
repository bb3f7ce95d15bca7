#!/usr/bin/env python3
"""Draws one SIGKILL incident of bench/gcs_recovery.py as a timeline PNG.

Reads bench/recovery.csv and bench/serve.csv (run 1, SIGKILL, by default),
and draws, for (a) rayhead and (b) the restart loop, one row each on a time
axis from the kill: the events (detection, restart, SERVING, rayhead's
gcs_recovered, /readyz 503 and 200, the dashboard's gcs_healthz 200, the
driver's round) as labelled lines, and every Serve request as a point at its
start, its height the latency, failures marked in red. Writes
bench/timeline.png and prints a Markdown line that links it.
Usage: .venv/bin/python bench/timeline.py [--run 1] [--signal SIGKILL]
"""
import argparse
import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
LABELS = {
    "detected": "detected",
    "restarted": "restart",
    "serving": "GCS SERVING",
    "recovered": "rayhead: recovered",
    "readyz_503": "/readyz 503",
    "readyz_200": "/readyz 200",
    "healthz": "gcs_healthz 200",
    "driver": "driver round done",
    "serve_back": "Serve answers again",
}
NAMES = {"a": "(a) rayhead, defaults", "b": "(b) ray start --block, restarted at once"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="1")
    ap.add_argument("--signal", default="SIGKILL")
    args = ap.parse_args()
    events = {"a": {}, "b": {}}
    for r in csv.DictReader(open(os.path.join(BENCH, "recovery.csv"))):
        if r["run"] == args.run and r["signal"] == args.signal and r["measure"] in LABELS:
            events[r["who"]][r["measure"]] = float(r["value"])
    requests = {"a": [], "b": []}
    for r in csv.DictReader(open(os.path.join(BENCH, "serve.csv"))):
        if r["run"] == args.run and r["signal"] == args.signal:
            requests[r["who"]].append((float(r["start"]) - float(r["kill"]),
                                       float(r["latency"]) * 1000, r["ok"] == "1"))
    fig, axes = plt.subplots(2, 1, figsize=(12, 7))
    for ax, who in zip(axes, ("a", "b")):
        ev = events[who]
        end = max(list(ev.values()) + [0.5]) * 1.15
        ok = [(t, l) for t, l, good in requests[who] if good and -0.5 <= t <= end]
        bad = [(t, l) for t, l, good in requests[who] if not good and -0.5 <= t <= end]
        if ok:
            ax.scatter(*zip(*ok), s=8, color="tab:green", label="Serve request (ok)")
        if bad:
            ax.scatter(*zip(*bad), s=12, color="tab:red", marker="x", label="Serve request (failed)")
        ax.axvline(0, color="black", linewidth=2)
        ax.text(0, 1.01, "kill", transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
        for i, (m, t) in enumerate(sorted(ev.items(), key=lambda kv: kv[1])):
            ax.axvline(t, color=f"C{i % 10}", linestyle="--", linewidth=1)
            ax.text(t, 0.97 - 0.09 * (i % 8), f" {LABELS[m]} {t:.3f}s", color=f"C{i % 10}",
                    transform=ax.get_xaxis_transform(), fontsize=8, va="top")
        ax.set_xlim(-0.5, end)
        ax.set_ylabel("Serve latency (ms)")
        ax.set_title(NAMES[who], loc="left", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel(f"seconds from the {args.signal} of gcs_server (run {args.run}); "
                        "each row has its own scale")
    fig.tight_layout()
    out = os.path.join(BENCH, "timeline.png")
    fig.savefig(out, dpi=90)
    print(f"![One {args.signal} incident, (a) against (b)](bench/timeline.png)\n\n"
          f"`bench/timeline.png`: run {args.run}'s {args.signal} incident from `bench/recovery.csv` "
          f"and `bench/serve.csv`.")


if __name__ == "__main__":
    main()
