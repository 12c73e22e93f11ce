#!/usr/bin/env python
"""The search space at a parameter budget: what a study there samples, beside the
papers' networks at that budget, and how many sampled networks no widths fit.

For each ``--budget`` it samples ``--n`` specs (a seeded stand-in for the study's
sampler: every answer uniform, as a fresh study's first trials are), solves their widths
at ``--tolerance`` and, for those it can (``--pruned-only`` skips this), builds each
network on the meta device and measures it as a trial does: sub-nets per network,
narrowest stage width, MACs per image, inference memory per image (the default memory
objective) and family; likewise every paper preset whose shape is a point of the space
at that budget, its widths (and stem) solved to the budget. It prints, per budget, the
pruned share with the reasons, and a table of the distributions (10th, 50th, 90th
percentiles, range) beside the papers' networks, and writes
``benchmarks/results/bench_space-<budgets>-tol<tolerance>-<UTC time>.json`` with
provenance. ``docs/design.md`` §4 quotes the tables at 100k and 1.0M::

    python benchmarks/bench_space.py --budget 100k 1.0M --n 300
    python benchmarks/bench_space.py --pruned-only --budget 50k 100k 1.0M 2.07M 10M 30M --n 1000
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from models.measure import count_macs, peak_memory  # noqa: E402
from models.spec import subnets_per_block  # noqa: E402
from search_space import BudgetError, RandomTrial, parse_budget, sample_spec, solve_widths  # noqa: E402
from search_space.sampling import why_not_in_space  # noqa: E402

QUANTITIES = {  # key: (row label, unit divisor, format)
    "subnets": ("sub-nets per network", 1, "{:.0f}"),
    "narrowest": ("narrowest stage width (channels)", 1, "{:.0f}"),
    "macs": ("MACs per image (M)", 1e6, "{:.1f}"),
    "inference_kib": ("inference memory per image (KiB)", 1, "{:.0f}"),
}


def _subnets(spec) -> int:
    return sum(s.rk_stages * s.rk_steps * (1 if s.scheme == "rkcnn-e" else 2) if s.is_rkcnn
               else s.blocks * subnets_per_block(s.scheme, s.depth) for s in spec.stages)


def _row(spec) -> dict:
    """What a trial stores about a network, as this benchmark reports it."""
    net = models.build(spec, device="meta")
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    return {"architecture": models.describe(spec), "widths": list(spec.widths), "stem_width": spec.stem_width,
            "family": "rkcnn" if spec.stages[0].is_rkcnn else "resnet", "subnets": _subnets(spec),
            "narrowest": min(spec.widths), "macs": count_macs(net, (1, *shape)),
            "inference_kib": peak_memory(net, shape, 2, "inference") / 1024,
            "off_8": any(w % 8 for w in spec.widths) or bool(spec.stem_width and spec.stem_width % 8),
            "stem_freed": spec.stem_width is not None}


def sampled(budget: int, tolerance: float, n: int, seed: int, paper_forms: bool, measure: bool) -> dict:
    rows, pruned, seconds = [], [], {"sample": 0.0, "solve": 0.0}
    for i in range(n):
        t = time.perf_counter()
        spec = sample_spec(RandomTrial(seed + i), budget=budget, tolerance=tolerance, paper_forms=paper_forms)
        seconds["sample"] += time.perf_counter() - t
        t = time.perf_counter()
        try:
            solved = solve_widths(spec, budget, tolerance)
        except BudgetError as e:
            pruned.append({"seed": seed + i, "architecture": models.describe(spec), "reason": str(e)})
            continue
        finally:
            seconds["solve"] += time.perf_counter() - t
        rows.append(_row(solved) if measure else {"off_8": any(w % 8 for w in solved.widths),
                                                   "stem_freed": solved.stem_width is not None})
    return {"n": n, "pruned": pruned, "rows": rows, "seconds": seconds}


def papers(budget: int, tolerance: float) -> list[dict]:
    """Every preset whose shape is a point of the space at ``budget``, solved to it."""
    out = []
    for name in models.presets.names():
        spec = dataclasses.replace(models.presets.get(name), stem_width=None)
        if why_not_in_space(spec, budget=budget, tolerance=tolerance, paper_forms=True) is not None:
            continue
        try:
            row = _row(solve_widths(spec, budget, tolerance))
        except BudgetError:
            row = {"pruned": True}
        out.append({"preset": name, **row})
    return out


def _stats(values) -> dict | None:
    v = sorted(values)
    if not v:
        return None
    q = statistics.quantiles(v, n=10, method="inclusive") if len(v) > 1 else [v[0]] * 9
    return {"p10": q[0], "median": statistics.median(v), "p90": q[8], "min": v[0], "max": v[-1]}


def table(budget: int, tolerance: float, result: dict) -> str:
    rows, paper = result["rows"], [r for r in result["papers"] if not r.get("pruned")]
    n, pruned = result["n"], len(result["pruned"])
    head = (f"| at {budget:,} params (±{tolerance:.0%}) | sampled ({n - pruned} of {n}): p10 | median | p90 "
            f"| range | papers' networks ({len(paper)}): median | range |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for key, (label, div, fmt) in QUANTITIES.items():
        s, p = _stats([r[key] / div for r in rows]), _stats([r[key] / div for r in paper])
        f = fmt.format
        cells = [f(s["p10"]), f(s["median"]), f(s["p90"]), f"{f(s['min'])}-{f(s['max'])}"] if s else ["-"] * 4
        cells += [f(p["median"]), f"{f(p['min'])}-{f(p['max'])}"] if p else ["-", "-"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    fam = collections.Counter(r["family"] for r in rows)
    pfam = collections.Counter(r["family"] for r in paper)
    lines.append(f"| family: ResNet-style / RKCNN | {fam['resnet']} / {fam['rkcnn']} | | | | "
                 f"{pfam['resnet']} / {pfam['rkcnn']} | |")
    lines.append(f"| a width not a multiple of 8 / the stem freed | {sum(r['off_8'] for r in rows)} / "
                 f"{sum(r['stem_freed'] for r in rows)} | | | | {sum(r['off_8'] for r in paper)} / "
                 f"{sum(r['stem_freed'] for r in paper)} | |")
    lines.append(f"| pruned (no widths within {tolerance:.0%}) | {pruned} of {n} | | | | "
                 f"{len(result['papers']) - len(paper)} | |")
    return "\n".join(lines)


def _git(*args: str) -> str | None:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(args) -> dict:
    return {"time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()), "argv": sys.argv[1:], "args": vars(args)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", nargs="+", default=["100k", "1.0M"], help="budgets (default 100k 1.0M)")
    p.add_argument("--tolerance", type=float, default=0.02, help="relative tolerance (default 0.02)")
    p.add_argument("--n", type=int, default=300, help="sampled specs per budget (default 300)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--paper-forms", action="store_true", help="the space with the paper forms of midpoint/RK4")
    p.add_argument("--pruned-only", action="store_true", help="only the pruned share: solve, do not measure")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n: must be at least 1, got {args.n}")
    if not 0 < args.tolerance < 1:
        p.error(f"--tolerance: must lie in (0, 1), got {args.tolerance}")
    try:
        budgets = [parse_budget(b) for b in args.budget]
    except ValueError as e:
        p.error(str(e))
    record = {"provenance": provenance(args), "budgets": {}}
    for text, budget in zip(args.budget, budgets):
        t = time.perf_counter()
        result = sampled(budget, args.tolerance, args.n, args.seed, args.paper_forms, not args.pruned_only)
        if not args.pruned_only:
            result["papers"] = papers(budget, args.tolerance)
        result["wall_seconds"] = round(time.perf_counter() - t, 1)
        record["budgets"][text] = result
        k = len(result["pruned"])
        print(f"{text}: pruned {k} of {args.n} ({k / args.n:.1%}); widths off multiples of 8 in "
              f"{sum(r['off_8'] for r in result['rows'])}, stem freed in "
              f"{sum(r['stem_freed'] for r in result['rows'])}; {result['wall_seconds']} s", flush=True)
        for row in result["pruned"]:
            print(f"    seed {row['seed']}: {row['architecture']}: {row['reason']}")
        if not args.pruned_only:
            print(table(budget, args.tolerance, result) + "\n", flush=True)
    record["provenance"]["load_average_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = record["provenance"]["time_utc"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = out / f"bench_space-{'_'.join(args.budget)}-tol{args.tolerance:g}-{stamp}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
