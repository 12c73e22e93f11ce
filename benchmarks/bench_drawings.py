#!/usr/bin/env python
"""What the network drawings add to a dashboard page, and how long they take to make.

Draws N networks sampled from the search space (``search_space.RandomTrial``, seeds 0..N-1,
every width 16: the drawing does not depend on the widths' values) as the dashboard does,
each distinct block once (``network_svg(..., shared=...)`` plus ``shared_defs``), and as
standalone SVGs (``describe --svg``, the model card), and records the bytes per page and the
seconds. Writes ``benchmarks/results/bench_drawings-<UTC time>.json`` with provenance::

    python benchmarks/bench_drawings.py --networks 500
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.drawing import network_svg, shared_defs  # noqa: E402
from search_space import RandomTrial, sample_spec  # noqa: E402


def _git(*args: str) -> str | None:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", type=int, default=500)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    specs = []
    for i in range(args.networks):
        spec = sample_spec(RandomTrial(i))
        specs.append(spec.with_widths([16] * len(spec.stages), 16))
    shared: dict[str, str] = {}
    t0 = time.perf_counter()
    page = sum(len(json.dumps(network_svg(s, shared=shared))) for s in specs) + len(shared_defs(shared))
    shared_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = sum(len(json.dumps(network_svg(s))) for s in specs)
    alone_s = time.perf_counter() - t0
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"provenance": {"time_utc": stamp, "git_commit": _git("rev-parse", "HEAD"),
                             "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                             "python": platform.python_version(), "cpu_count": os.cpu_count(),
                             "load_average": list(os.getloadavg()), "platform": platform.platform()},
              "networks": args.networks, "distinct_blocks": len(shared),
              "page_mib_shared_blocks": round(page / 2 ** 20, 2), "seconds_shared_blocks": round(shared_s, 2),
              "page_mib_standalone": round(alone / 2 ** 20, 2), "seconds_standalone": round(alone_s, 2)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_drawings-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.networks} networks, {len(shared)} distinct blocks: {record['page_mib_shared_blocks']} MiB of "
          f"drawings in the page ({shared_s:.1f} s); standalone {record['page_mib_standalone']} MiB ({alone_s:.1f} s)")
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
