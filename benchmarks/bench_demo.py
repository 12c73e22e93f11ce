#!/usr/bin/env python
"""Time and peak memory of the README's CPU demo, as a user runs it.

Runs, each in a fresh process with a fresh data home, the README's main command and the
retrain after it::

    python search.py run --study demo --budget 100k --trials 12 --synthetic --device cpu
    python search.py retrain --study demo --epochs 2

and records each one's wall seconds and peak resident memory (the child's ``ru_maxrss``,
what ``/usr/bin/time -v`` reports). Writes ``benchmarks/results/bench_demo-<UTC time>.json``
with provenance. The README quotes these figures::

    python benchmarks/bench_demo.py
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "run": ["run", "--study", "demo", "--budget", "100k", "--trials", "12", "--synthetic",
            "--device", "cpu", "--no-progress"],
    "retrain": ["retrain", "--study", "demo", "--epochs", "2", "--no-progress"],
}


def _git(*args: str) -> str | None:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None


def _measured(argv: list[str], home: Path) -> dict:
    """Wall seconds and peak resident MiB of ``search.py argv`` in its own process."""
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: run each command from a fresh
    # parent so that the figure is this command's own
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "rc = subprocess.run(sys.argv[1:]).returncode; "
             "print(rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    env = {**os.environ, "STACKNAS_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, str(ROOT / "search.py"), *argv], cwd=home,
                         env=env, capture_output=True, text=True, timeout=3600)
    rc, seconds, maxrss_kib = out.stdout.strip().splitlines()[-1].split()
    if int(rc):
        raise SystemExit(f"error: search.py {' '.join(argv)} exited {rc}:\n{out.stderr[-2000:]}")
    summary = [line.strip() for line in out.stdout.splitlines() if re.search(r"\b\d+ trials?: ", line)]
    return {"argv": ["python", "search.py", *argv], "seconds": round(float(seconds), 2),
            "peak_resident_mib": round(int(maxrss_kib) / 1024, 1), "summary": summary[-1] if summary else None}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    load = list(os.getloadavg())  # other work on the machine slows the demo: recorded before and after
    with tempfile.TemporaryDirectory(prefix="stacknas-demo-") as tmp:
        runs = {name: _measured(cmd, Path(tmp)) for name, cmd in COMMANDS.items()}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"provenance": {"time_utc": stamp, "git_commit": _git("rev-parse", "HEAD"),
                             "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                             "python": platform.python_version(), "cpu_count": os.cpu_count(),
                             "load_average_start": load, "load_average": list(os.getloadavg()),
                             "platform": platform.platform()},
              "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_demo-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for name, r in runs.items():
        print(f"{name:8s} {r['seconds']:7.1f} s  {r['peak_resident_mib']:7.1f} MiB peak resident  {' '.join(r['argv'])}"
              + (f"\n         {r['summary']}" if r["summary"] else ""))
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
