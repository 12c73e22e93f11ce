#!/usr/bin/env python
"""Per-trial CPU work: sample, width solve, build, measure, storage.

For ``--n`` sampled specs (seeded) at ``--budget`` / ``--tolerance`` it times,
in one process and on the same specs:

* **sample**: ``search_space.sample_spec`` given the budget, as a study calls it,
  on a trial of an Optuna study in a temporary SQLite file (a seeded
  ``RandomSampler``; each suggestion is a storage write, as in a study), or on a
  seeded stand-in with ``--no-storage``;
* **solve**: today's solver (``search_space/budget.py`` as it is at
  ``--old-commit``, loaded from git into a throwaway module, so no old code
  stays in the package; a relative import in it takes the current package's
  module) next to the current one, both with their caches emptied before each
  spec ("cold": every part of the spec probed afresh); then the
  current one again over all specs with its caches kept from spec to spec, as
  a worker keeps them ("worker"); and whether the two solvers chose the same
  widths;
* **build**: ``models.build(spec)`` on the CPU, weights initialised;
* **measure**: ``models.measure.measure`` next to ``models/measure.py`` as it
  is at ``--old-commit``, and whether their figures are identical;
* **storage**: ``ask``, a handful of ``set_user_attr``, a read of the finished
  trials (the duplicate check a worker makes) and ``tell``.

It prints the median and maximum seconds of each part, the ratios of today's
to the current medians and maxima, and the CPU work of a whole trial (sample +
cold solve + build + measure + storage), and writes
``benchmarks/results/bench_overhead-<budget>-tol<tolerance>-<UTC time>.json`` with
provenance (git commit and whether the tree had changes, versions, CPU,
arguments).

    python benchmarks/bench_overhead.py --budget 1.0M --tolerance 0.02
    python benchmarks/bench_overhead.py --budget 1.0M --old-commit 6f52b9f   # against the solver before issue 21
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from models import measure as measure_now  # noqa: E402
from search_space import budget as budget_now  # noqa: E402
from search_space import param_count  # noqa: E402
from search_space import RandomTrial, parse_budget, sample_spec  # noqa: E402

OLD_COMMIT = "b9013d4"  # issue 10's "today": a quadratic fit per width signature from meta builds
PARTS = ("sample", "solve", "build", "measure", "storage")  # a trial's CPU work, in order


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode:
        raise SystemExit(f"error: git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _load_old(commit: str, path: str) -> types.ModuleType:
    """``path`` as it is at ``commit``, as a module of its own; a relative import in it
    (a later solver's ``from .param_count import ...``) takes today's module of its package."""
    name = f"_bench_old_{Path(path).stem}"
    mod = types.ModuleType(name)
    mod.__file__ = f"<{commit}:{path}>"
    mod.__package__ = str(Path(path).parent).replace("/", ".")
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(_git("show", f"{commit}:{path}"), mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - our own history
    return mod


def _timed(fn, *args):
    """``(result, seconds)``; a refused budget (either solver's ``BudgetError``) is a result."""
    t = time.perf_counter()
    try:
        out = fn(*args)
    except Exception as e:
        if type(e).__name__ != "BudgetError":
            raise
        out = e
    return out, time.perf_counter() - t


def _widths(result):
    return None if isinstance(result, Exception) else list(result.widths)


def _clear_solver_caches(old_budget=None) -> None:
    for cached in (param_count._part, param_count._head, param_count._polynomial, budget_now._candidates,
                   getattr(old_budget, "_candidates", None)):
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def _study(seed: int):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = tempfile.mkdtemp(prefix="bench_overhead-")
    return optuna.create_study(storage=f"sqlite:///{folder}/study.db", study_name="bench",
                               directions=["maximize", "minimize"],
                               sampler=optuna.samplers.RandomSampler(seed=seed))


def _store(study, trial, row: dict, spec_json: str) -> float:
    """A worker's writes and read for one trial; returns seconds."""
    from optuna.trial import TrialState
    t = time.perf_counter()
    attrs = {"spec": spec_json, "architecture": row["architecture"], "widths": row["widths"],
             **row.get("measure", {})}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if row["widths"] is None:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, [0.0, float(row["measure"]["inference_bytes_per_image"])])
    return time.perf_counter() - t


def run(args) -> list[dict]:
    budget = parse_budget(args.budget)
    old_budget = None if args.no_old else _load_old(args.old_commit, "search_space/budget.py")
    old_measure = None if args.no_old else _load_old(args.old_commit, "models/measure.py")
    study = None if args.no_storage else _study(args.seed)
    warm = models.build(models.presets.get("resnet-20"))  # first-call costs (imports, kernels) out of the way
    for m in (measure_now, old_measure):
        if m is not None:
            m.measure(warm)
    rows, specs = [], []
    for i in range(args.n):
        row: dict = {"index": i}
        if study is not None:
            t = time.perf_counter()
            trial = study.ask()
            ask_s = time.perf_counter() - t
            spec, row["sample_s"] = _timed(lambda t: sample_spec(t, budget=budget, tolerance=args.tolerance), trial)
        else:
            spec, row["sample_s"] = _timed(lambda t: sample_spec(t, budget=budget, tolerance=args.tolerance),
                                           RandomTrial(args.seed + i))
        specs.append(spec)
        row["architecture"] = models.describe(spec)
        _clear_solver_caches()
        solved, row["solve_s"] = _timed(budget_now.solve_widths, spec, budget, args.tolerance)
        row["widths"] = _widths(solved)
        if old_budget is not None:
            _clear_solver_caches(old_budget)  # a solver on today's probe counter starts cold too
            old, row["solve_old_s"] = _timed(old_budget.solve_widths, spec, budget, args.tolerance)
            row["widths_old"] = _widths(old)
            row["same_widths"] = row["widths_old"] == row["widths"]
        if row["widths"] is not None:
            net, row["build_s"] = _timed(models.build, solved)
            m, row["measure_s"] = _timed(measure_now.measure, net)
            row["measure"] = {k: v for k, v in m.items() if v is not None}
            if old_measure is not None:
                m_old, row["measure_old_s"] = _timed(old_measure.measure, net)
                row["same_measure"] = m_old == m
            del net
        if study is not None:
            row["storage_s"] = ask_s + _store(study, trial, row, (solved if row["widths"] else spec).to_json())
        row["trial_s"] = sum(row.get(f"{p}_s", 0.0) for p in PARTS)
        rows.append(row)
        print(f"[{i + 1}/{args.n}] solve {row['solve_s'] * 1e3:6.1f} ms"
              + (f" (today {row['solve_old_s']:5.2f} s)" if "solve_old_s" in row else "")
              + f"  trial {row['trial_s']:5.2f} s  widths {row['widths']}  {row['architecture']}", flush=True)
    _clear_solver_caches()  # the same specs again, caches kept from one spec to the next
    for spec, row in zip(specs, rows):
        _, row["solve_worker_s"] = _timed(budget_now.solve_widths, spec, budget, args.tolerance)
    return rows


def _stats(rows, key):
    v = [r[key] for r in rows if key in r]
    return {"n": len(v), "median_s": statistics.median(v), "max_s": max(v)} if v else None


def summarize(rows: list[dict]) -> dict:
    keys = [f"{p}_s" for p in PARTS] + ["solve_old_s", "solve_worker_s", "measure_old_s", "trial_s"]
    out = {k.removesuffix("_s"): s for k in keys if (s := _stats(rows, k))}
    for part in ("solve", "measure"):
        if f"{part}_old" in out:
            now, old = out[part], out[f"{part}_old"]
            out[f"{part}_ratio"] = {"median": old["median_s"] / now["median_s"], "max": old["max_s"] / now["max_s"]}
    compared = [r["same_widths"] for r in rows if "same_widths" in r]
    if compared:
        out["same_widths"] = f"{sum(compared)}/{len(compared)}"
    compared = [r["same_measure"] for r in rows if "same_measure" in r]
    if compared:
        out["same_measure"] = f"{sum(compared)}/{len(compared)}"
    out["infeasible"] = sum(r["widths"] is None for r in rows)
    return out


def _report(summary: dict) -> str:
    lines = [f"{'part':<14}{'median s':>10}{'max s':>10}{'n':>4}"]
    for name, s in summary.items():
        if isinstance(s, dict) and "median_s" in s:
            lines.append(f"{name:<14}{s['median_s']:>10.4f}{s['max_s']:>10.4f}{s['n']:>4}")
    for part in ("solve", "measure"):
        if f"{part}_ratio" in summary:
            r = summary[f"{part}_ratio"]
            lines.append(f"{part}: today / now = {r['median']:.1f}x at the median, {r['max']:.1f}x at the max")
    for k in ("same_widths", "same_measure", "infeasible"):
        if k in summary:
            lines.append(f"{k}: {summary[k]}")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(args) -> dict:
    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD").strip(),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no").strip()),
        "old_commit": None if args.no_old else _git("rev-parse", args.old_commit).strip(),
        "python": platform.python_version(), "torch": torch.__version__, "numpy": __import__("numpy").__version__,
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(), "argv": sys.argv[1:], "args": vars(args),
    }


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="sampled specs (default 20)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--budget", default="1.0M", help="parameter budget, e.g. 1.0M or 100k (default 1.0M)")
    p.add_argument("--tolerance", type=float, default=0.02, help="relative tolerance (default 0.02)")
    p.add_argument("--old-commit", default=OLD_COMMIT, help=f"today's code (default {OLD_COMMIT})")
    p.add_argument("--no-old", action="store_true", help="skip today's solver and measure")
    p.add_argument("--no-storage", action="store_true", help="no Optuna study: sample from a seeded stand-in")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n: must be at least 1, got {args.n}")
    try:
        parse_budget(args.budget)
    except ValueError as e:
        p.error(str(e))  # "budget: ... is not a parameter count; use e.g. ..."
    if not 0 < args.tolerance < 1:
        p.error(f"--tolerance: must lie in (0, 1), got {args.tolerance}")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    prov = provenance(args)
    rows = run(args)
    prov["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None  # others' work skews it
    summary = summarize(rows)
    print(_report(summary))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = prov["time_utc"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = out / f"bench_overhead-{args.budget}-tol{args.tolerance:g}-{stamp}.json"
    path.write_text(json.dumps({"provenance": prov, "summary": summary, "rows": rows}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
