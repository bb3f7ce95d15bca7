#!/usr/bin/env python3
"""`make bench`: runs every benchmark and writes its figures into BENCHMARKS.md.

Each benchmark's standard output replaces the text between its two markers
in BENCHMARKS.md (`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`), with the
date and the command; the prose around the markers is kept. A benchmark that
fails leaves its section as it was and makes this exit 1 at the end.
Usage: .venv/bin/python bench/run.py [NAME...]   (default: all, in order)
"""
import datetime
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv", "bin", "python")
DOC = os.path.join(ROOT, "BENCHMARKS.md")

# name, argv, whether the output is Markdown already (else a code block).
BENCHES = [
    ("recovery", ["bench/gcs_recovery.py", "--runs", "5"], True),
    ("timeline", ["bench/timeline.py"], True),
    ("clientcheck", ["bench/client_check_cost.py", "--seconds", "30", "--settle", "15"], True),
    ("probe", ["bench/probe.py"], False),
    ("redis", ["bench/redis.py"], False),
    ("soak", ["bench/soak.py", "--kills", "50", "--csv", "bench/soak-bench.csv"], False),
    ("static", ["bench/static_build.py", "3"], True),
    ("storage", ["bench/storage.py", "--kills", "5"], True),
]


def replace_section(text, name, body):
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + f"\n\n{block}\n"


def main():
    wanted = sys.argv[1:] or [b[0] for b in BENCHES]
    failed = []
    for name, argv, markdown in BENCHES:
        if name not in wanted:
            continue
        cmd = " ".join(argv)
        print(f"[bench] {name}: {cmd}", file=sys.stderr, flush=True)
        r = subprocess.run([PY] + argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if r.returncode != 0:
            print(f"[bench] {name} failed with exit {r.returncode}", file=sys.stderr)
            failed.append(name)
            continue
        out = r.stdout.strip()
        if not markdown:
            out = f"```\n{out}\n```"
        stamp = datetime.date.today().isoformat()
        body = f"_`{cmd}`, {stamp}:_\n\n{out}"
        with open(DOC) as f:
            text = f.read()
        with open(DOC, "w") as f:
            f.write(replace_section(text, name, body))
    if failed:
        sys.exit(f"[bench] failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
