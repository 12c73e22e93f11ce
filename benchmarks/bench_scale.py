#!/usr/bin/env python
"""How the study's commands scale with its number of trials.

Builds studies of N trials cheaply from a real small one and times, at each N, on SQLite
and (when ``STACKNAS_PG_URL`` is set) on PostgreSQL:

* ``show`` and ``dashboard``: wall seconds of ``python search.py ...`` in a fresh process,
  imports included;
* ``run`` resumed with nothing left to do: wall seconds in a fresh process, and the same
  less the imports of ``run``'s code (``python -c "import search, studies.launch"``);
* the steady per-trial overhead inside a running worker: ``studies.run`` adds
  ``--overhead-trials`` trials to the study in a fresh process whose width solve,
  measurement and proxy training are replaced by stand-ins that return a real trial's
  figures at once, so what is left is the study's own work per trial (sampling, taking
  the trial, promotions, the duplicate check, database reads and writes). Reported: the
  median and mean seconds between two trials' ``tell``, the sampler's part of it (TPE),
  and the database write transactions per trial (Optuna's own per-parameter writes and
  heartbeats counted apart).

**The studies.** A real study of ``--template-trials`` trials is run on the CPU with the
project's own ``run`` on synthetic data (or ``--template DB`` reuses one); its trials are
cloned round-robin with ``optuna.trial.create_trial`` (accuracy and memory jittered, so
that the clones are distinct points), and the promotions the clones call for are claimed
with the project's own ``find_promotion`` and stored as its ``run_promotion`` stores them.
Optuna's ``study.add_trials`` takes 0.2-0.5 s a trial on a loaded 2-core machine, so the
clones are written in one transaction through Optuna's table definitions
(:func:`_bulk_add`); a read-back checks that Optuna sees exactly the trials made.

**The code timed.** ``--code LABEL=DIR`` (repeatable; default ``after=`` this checkout)
names checkouts whose ``search.py`` and packages are timed on the same studies, one after
the other at each N: e.g. the code before a change, unpacked with
``git archive main | tar -x -C /tmp/before``. The studies are built with this
checkout's code; their format is Optuna's and the ``stacknas_claims`` table, the same
for both.

Writes ``benchmarks/results/bench_scale-<UTC time>.json`` (or ``--json FILE``) with the
load average beside every figure (a shared 2-core machine is noisy) and provenance::

    python benchmarks/bench_scale.py --trials 50 1000 5000 \\
        --code before=/tmp/before --code after=.

``--report FILE`` prints a saved result as a table against the targets (at the largest N:
``dashboard`` under 10 s and ``show`` under 3 s wall, imports included; a ``run`` with
nothing to do under 3 s above its imports; every command at most 6x from the second largest
N to the largest; the per-trial overhead flat from the smallest N to the largest).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_OPTIONS = dict(budget="60k", tolerance=0.1, synthetic=True, synthetic_images=64, synthetic_image_size=8,
                        proxy_hparams={"batch_size": 32}, device="cpu", rungs=2, eta=3, seed=0, progress=False)
DIRECTIONS = ["maximize", "minimize"]


def _git(*args: str) -> str | None:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------
# building studies (this checkout's code)
# --------------------------------------------------------------------------

def _bulk_add(storage, study_id: int, trials: list) -> None:
    """Append ``trials`` (``FrozenTrial`` from ``create_trial``) to study ``study_id`` in one
    transaction, numbered after the existing ones, through Optuna's RDB table definitions.

    Private Optuna API, used by this benchmark only: ``study.add_trials`` writes each trial
    in its own transaction with a query per parameter and attribute (0.2-0.5 s a trial on a
    loaded 2-core machine), which would make a 5,000-trial study take most of an hour."""
    import datetime as _datetime

    import sqlalchemy as sa
    from optuna import distributions
    from optuna.storages._rdb import models

    def utc(d):
        return None if d is None else d.astimezone(_datetime.timezone.utc).replace(tzinfo=None)

    T = models.TrialModel.__table__
    with storage.engine.begin() as conn:
        start = conn.execute(sa.select(sa.func.count()).select_from(T).where(T.c.study_id == study_id)).scalar()
        rows = [dict(number=start + i, study_id=study_id, state=t.state, datetime_start=utc(t.datetime_start),
                     datetime_complete=utc(t.datetime_complete)) for i, t in enumerate(trials)]
        ids = conn.execute(T.insert().returning(T.c.trial_id, sort_by_parameter_order=True), rows).scalars().all()
        params, values, user, system = [], [], [], []
        for trial_id, t in zip(ids, trials):
            for name, v in t.params.items():
                d = t.distributions[name]
                params.append(dict(trial_id=trial_id, param_name=name, param_value=d.to_internal_repr(v),
                                   distribution_json=distributions.distribution_to_json(d)))
            for k, v in enumerate(t.values or []):
                stored, kind = models.TrialValueModel.value_to_stored_repr(v)
                values.append(dict(trial_id=trial_id, objective=k, value=stored, value_type=kind))
            user += [dict(trial_id=trial_id, key=k, value_json=json.dumps(v)) for k, v in t.user_attrs.items()]
            system += [dict(trial_id=trial_id, key=k, value_json=json.dumps(v)) for k, v in t.system_attrs.items()]
        for model, rows in ((models.TrialParamModel, params), (models.TrialValueModel, values),
                            (models.TrialUserAttributeModel, user), (models.TrialSystemAttributeModel, system)):
            if rows:
                conn.execute(model.__table__.insert(), rows)


def _template(work: Path, given: str | None, n: int) -> str:
    """The URL of the real small study (made with ``studies.run`` unless ``given``)."""
    import studies
    if given:
        return f"sqlite:///{Path(given).resolve()}"
    db = work / "template.db"
    url = f"sqlite:///{db}"
    if not db.exists():
        print(f"running a real {n}-trial study on the CPU for the template (a few minutes) ...", flush=True)
        studies.run("template", n, storage=url, say=lambda m: None, **TEMPLATE_OPTIONS)
    return url


def _clone(t, number: int, block: int, size: int, rng: random.Random):
    """Template trial ``t`` as trial ``number`` of block ``block`` (references to other trials
    moved to the same block), accuracy and memory jittered alike in values and attributes."""
    import optuna
    ua, sa_ = dict(t.user_attrs), dict(t.system_attrs)
    values = None
    if t.values is not None:
        acc = min(1.0, t.values[0] * (1 + 0.1 * rng.random()))
        mem = t.values[1] * (1 + 0.5 * rng.random())
        values = [acc, mem]
        ua.update({k: acc for k in ua if k == "val_accuracy" or k.startswith("val_accuracy@")})
        ua.update({k: mem for k in ("inference_bytes_per_image",) if k in ua})
    if "duplicate_of" in ua:
        ua["duplicate_of"] = block * size + int(ua["duplicate_of"])
    for key in ("failed_trial",):
        if key in sa_:
            sa_[key] = block * size + int(sa_[key])
    if "retry_history" in sa_:
        sa_["retry_history"] = [block * size + int(n) for n in sa_["retry_history"]]
    ua.pop("worker", None)
    return optuna.trial.create_trial(state=t.state, values=values, params=t.params, distributions=t.distributions,
                                     user_attrs=ua, system_attrs=sa_)


def grow(url: str, name: str, n: int, template_url: str, rng: random.Random) -> dict:
    """Grow study ``name`` at ``url`` to ``n`` trials cloned from the template, its target
    raised to ``n`` and every promotion it calls for done; returns what was added."""
    import optuna

    import studies
    from studies.claims import worker_name
    from studies.config import StudySettings
    from studies.promotion import find_promotion
    from studies.session import Session
    from studies.storage import DEFAULT_GRACE_FACTOR, open_store
    studies.storage.quiet_optuna()
    src = studies.open_study("template", template_url)
    tmpl = sorted(src.get_trials(deepcopy=False), key=lambda t: t.number)
    t0 = time.perf_counter()
    store = open_store(name, url, create=True, owner=worker_name())
    try:
        if not store.exists():
            study = store.create_study(DIRECTIONS)
            settings = StudySettings.from_attrs(src.user_attrs)
            settings.uid = uuid.uuid4().hex[:12]
            settings.save(study)
            study.set_metric_names(["val_accuracy", settings.memory_key])
        study = store.study()
        have = len(study.get_trials(deepcopy=False))
        new = [_clone(tmpl[i % len(tmpl)], i, i // len(tmpl), len(tmpl), rng) for i in range(have, n)]
        _bulk_add(store.storage, store.study_id, new)
        study.set_user_attr("trials", max(n, int(study.user_attrs.get("trials", 0))))
        check = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
        assert len(check) == n and all(a.params == b.params and a.user_attrs == b.user_attrs and a.values == b.values
                                       and a.state == b.state for a, b in zip(check[have:], new)), "bulk add"
        built = time.perf_counter() - t0
        settings = StudySettings.from_attrs(study.user_attrs)
        session = Session.resolve(store, settings, "cpu", progress=False)
        promoted, t1 = 0, time.perf_counter()
        while (job := find_promotion(session, DEFAULT_GRACE_FACTOR * settings.heartbeat_interval)) is not None:
            base = next(t for t in study.get_trials(deepcopy=False) if t.number == job.number)
            acc = min(1.0, float(base.values[0]) * (1 + 0.3 * rng.random()))
            study.set_user_attr(f"fidelity:{job.number}:{job.epochs}", {
                "number": job.number, "epochs": job.epochs, "status": "ok", "reason": "", "val_accuracy": acc,
                "seconds": 1.0, "device": "cpu", "cuda_peak_bytes": None, "worker": session.owner,
                "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
            store.claims.finish(job.key)
            promoted += 1
        return {"trials": n, "added": len(new), "promotions_added": promoted, "build_seconds": round(built, 2),
                "promotion_seconds": round(time.perf_counter() - t1, 2)}
    finally:
        store.close()


# --------------------------------------------------------------------------
# timing a checkout's commands
# --------------------------------------------------------------------------

def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(argv: list[str], code: Path, timeout: float, cwd: Path, env: dict | None = None) -> dict:
    """Wall seconds of ``python argv`` with ``code`` first on the path, the CPU seconds it used
    (user + system: what a loaded machine stretches least) and the load average beside."""
    env = {**os.environ, "PYTHONPATH": str(code), "COLUMNS": "160", "STACKNAS_HOME": str(cwd), **(env or {})}
    before = _load()
    cpu = _cpu()
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "timed_out_after": timeout, "load_before": before, "load_after": _load()}
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu
    if p.returncode:
        raise SystemExit(f"error: {' '.join(argv)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "load_before": before, "load_after": _load(),
            "stdout": p.stdout}


def _median_run(argv, code, timeout, cwd, repeat: int) -> dict:
    runs = [_timed(argv, code, timeout, cwd) for _ in range(repeat)]
    done = [r for r in runs if r["seconds"] is not None]
    out = {"seconds": round(statistics.median(r["seconds"] for r in done), 2) if done else None,
           "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in done), 2) if done else None,
           "runs": [r["seconds"] for r in runs], "load": runs[-1]["load_after"]}
    if any(r["seconds"] is None for r in runs):
        out["timed_out_after"] = timeout
    return out


OVERHEAD_DRIVER = r'''
import dataclasses, itertools, json, random, statistics, sys, time, types
import optuna, sqlalchemy as sa
from sqlalchemy.engine import Engine
import models, studies
import studies.objective as objective
from models import ArchSpec

name, url, extra, template = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
optuna.logging.set_verbosity(optuna.logging.WARNING)
base = ArchSpec.from_json(template["spec"])
have = studies.lineage_counts(optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False))["total"]
# a new network for every trial, in every run on the study: none is a duplicate of an earlier one
seeds = itertools.count(1_000_000 + 1000 * have)
rng = random.Random(have)
# stand-ins for the network's CPU work and the proxy: a real trial's figures, at once
objective.solve_widths = lambda spec, budget, tol: dataclasses.replace(base, name=spec.name, seed=next(seeds))
objective.measure = lambda net, shape: dict(template["measure"])
objective.models = types.SimpleNamespace(build=lambda *a, **k: None, describe=models.describe)
objective._proxy = lambda spec, ctx, epochs: types.SimpleNamespace(
    status="ok", reason="", val_accuracy=rng.uniform(0.05, 0.25), seconds={"total": 0.01}, device="cpu",
    cuda_peak_bytes=None, train_loss=2.0, images_per_second=1000.0)

count = {"statements": 0, "write_tx": 0, "param_writes": 0, "heartbeat_writes": 0}
dirty = set()

@sa.event.listens_for(Engine, "before_cursor_execute")
def _statement(conn, cursor, statement, params, context, executemany):
    count["statements"] += 1
    verb = statement.lstrip().split(None, 1)[0].upper()
    if verb in ("INSERT", "UPDATE", "DELETE"):
        dirty.add(id(conn.connection.dbapi_connection))
        if "trial_params" in statement.split("(")[0]:
            count["param_writes"] += 1
        if "trial_heartbeats" in statement.split("(")[0]:
            count["heartbeat_writes"] += 1

@sa.event.listens_for(Engine, "commit")
def _commit(conn):
    key = id(conn.connection.dbapi_connection)
    if key in dirty:
        dirty.discard(key)
        count["write_tx"] += 1

sampler_seconds = [0.0, 0.0]           # wall, CPU (this thread)
def timed(f):
    def g(*a, **k):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return f(*a, **k)
        finally:
            sampler_seconds[0] += time.perf_counter() - t
            sampler_seconds[1] += time.thread_time() - c
    return g
for m in ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial"):
    setattr(optuna.samplers.TPESampler, m, timed(getattr(optuna.samplers.TPESampler, m)))

tells = []
tell = optuna.Study.tell
def logged(self, *a, **k):
    r = tell(self, *a, **k)
    tells.append((time.perf_counter(), sampler_seconds[0], dict(count), time.process_time(), sampler_seconds[1]))
    return r
optuna.Study.tell = logged

t0 = time.perf_counter()
studies.run(name, have + extra, storage=url, device="cpu", progress=False, say=lambda m: None)
total = time.perf_counter() - t0
steady = tells[2:]
gaps = [b[0] - a[0] for a, b in zip(steady, steady[1:])]
sampler = [b[1] - a[1] for a, b in zip(steady, steady[1:])]
cpu = [b[3] - a[3] for a, b in zip(steady, steady[1:])]
sampler_cpu = [b[4] - a[4] for a, b in zip(steady, steady[1:])]
per = {k: (steady[-1][2][k] - steady[0][2][k]) / max(1, len(gaps)) for k in count}
dups = sum("duplicate_of" in t.user_attrs for t in optuna.load_study(study_name=name, storage=url).trials[have:])
print(json.dumps({"trials_added": len(tells), "duplicates": dups, "run_seconds": round(total, 2),
                  "median_seconds": round(statistics.median(gaps), 4), "mean_seconds": round(statistics.mean(gaps), 4),
                  "sampler_median_seconds": round(statistics.median(sampler), 4),
                  "sampler_mean_seconds": round(statistics.mean(sampler), 4),
                  "cpu_median_seconds": round(statistics.median(cpu), 4),
                  "sampler_cpu_median_seconds": round(statistics.median(sampler_cpu), 4),
                  "rest_cpu_median_seconds": round(statistics.median(c - s for c, s in zip(cpu, sampler_cpu)), 4),
                  "per_trial": {k: round(v, 1) for k, v in per.items()}}))
'''


def _template_figures(template_url: str) -> dict:
    """A real trial's spec and measurements, for the overhead stand-ins."""
    import studies
    t = next(t for t in studies.open_study("template", template_url).get_trials(deepcopy=False)
             if t.state.name == "COMPLETE" and "spec" in t.user_attrs)
    keys = ("params", "macs", "inference_bytes_per_image", "training_bytes_per_image")
    return {"spec": t.user_attrs["spec"], "measure": {k: t.user_attrs[k] for k in keys}}


def measure(code: Path, url: str, name: str, work: Path, args, figures: dict) -> dict:
    """Every timing of one checkout on one study."""
    storage = ["--study", name, "--storage", url]
    out = {}
    search = str(code / "search.py")
    out["imports_run"] = _median_run(["-c", "import search, studies.launch"], code, args.timeout, work, args.repeat)
    out["show"] = _median_run([search, "show", *storage], code, args.timeout, work, args.repeat)
    out["dashboard"] = _median_run([search, "dashboard", *storage, "--out", str(work / f"{name}.html")], code,
                                   args.timeout, work, args.repeat)
    run = _median_run([search, "run", *storage, "--trials", "1", "--device", "cpu", "--no-progress"], code,
                      args.timeout, work, args.repeat)
    if run["seconds"] is not None and out["imports_run"]["seconds"] is not None:
        run["above_imports"] = round(run["seconds"] - out["imports_run"]["seconds"], 2)
        run["cpu_above_imports"] = round(run["cpu_seconds"] - out["imports_run"]["cpu_seconds"], 2)
    out["run_nothing_to_do"] = run
    if args.overhead_trials:
        r = _timed(["-c", OVERHEAD_DRIVER, name, url, str(args.overhead_trials), json.dumps(figures)], code,
                   args.timeout, work)
        out["per_trial"] = ({"timed_out_after": args.timeout} if r["seconds"] is None else
                            {**json.loads(r["stdout"].strip().splitlines()[-1]), "load": r["load_after"]})
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


# (key, label, what is compared, target at the largest N in seconds or None)
_ROWS = [("show", "show, wall s incl. imports", "seconds", 3.0),
         ("dashboard", "dashboard, wall s incl. imports", "seconds", 10.0),
         ("run_nothing_to_do", "run, nothing to do: s above imports", "above_imports", 3.0),
         ("per_trial", "per-trial overhead, median s", "median_seconds", None),
         ("per_trial", "  of it TPE sampling, median s", "sampler_median_seconds", None),
         ("per_trial", "  the rest, median CPU s", "rest_cpu_median_seconds", None)]
GROWTH_LIMIT = 6.0           # largest N over the second largest, every command
FLAT_LIMIT = 1.5             # per-trial overhead, largest N over the smallest: "flat"


def report(path: str) -> str:
    """A saved result as a markdown table per storage: each figure before and after at every N,
    the growth between the two largest N, the target and whether the after figure meets it."""
    record = json.loads(Path(path).read_text())
    res = record["results"]
    out = [f"`{path}`: commit {record['provenance'].get('git_commit')}, load average "
           f"{record['provenance'].get('load_average_start')} at the start, "
           f"{record['provenance'].get('load_average_end')} at the end"]
    for kind in dict.fromkeys(r["storage"] for r in res):
        rows = [r for r in res if r["storage"] == kind]
        sizes = sorted({r["trials"] for r in rows})
        codes = list(dict.fromkeys(r["code"] for r in rows))
        fig = {(r["code"], r["trials"]): r for r in rows}

        def value(code, n, key, field):
            return (fig.get((code, n), {}).get(key) or {}).get(field)

        head = ["", *(f"{c} {n:,}" for c in codes for n in sizes)]
        if len(sizes) > 1:
            head += [f"{c} {sizes[-2]:,}→{sizes[-1]:,}" for c in codes]
        head += ["target", "met (after)"]
        out += ["", f"**{kind}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, label, field, limit in _ROWS:
            cells = [label, *(_fmt(value(c, n, key, field)) for c in codes for n in sizes)]
            growth = {}
            for c in codes:
                if len(sizes) < 2:          # one size: nothing grew
                    growth[c] = None
                    continue
                a, b = value(c, sizes[-2], key, field), value(c, sizes[-1], key, field)
                growth[c] = b / a if a and b is not None else None
                cells.append("-" if growth[c] is None else f"{growth[c]:.1f}x")
            after = codes[-1]
            last = value(after, sizes[-1], key, field)
            if limit is not None:
                ok = last is not None and last < limit and (growth[after] or 0) <= GROWTH_LIMIT
                cells += [f"< {limit:g} s, ≤ {GROWTH_LIMIT:g}x", "yes" if ok else "**no**"]
            elif field == "median_seconds" and value(after, sizes[-1], key, field) is None:
                cells += ["", "not measured"]
            elif field == "median_seconds":
                first = value(after, sizes[0], key, field)
                flat = last / first if first and last is not None else None
                ok = flat is not None and flat <= FLAT_LIMIT and (growth[after] or 0) <= GROWTH_LIMIT
                cells += [f"flat {sizes[0]:,}→{sizes[-1]:,} (here {'-' if flat is None else f'{flat:.1f}x'}), "
                          f"≤ {GROWTH_LIMIT:g}x", "yes" if ok else "**no**"]
            else:
                cells += ["", ""]
            out.append("| " + " | ".join(cells) + " |")
        loads = ", ".join(f"{c} {n:,}: {(fig.get((c, n), {}).get('dashboard') or {}).get('load')}"
                          for c in codes for n in sizes)
        out.append(f"\nload average (1, 5, 15 min) after each dashboard: {loads}")
        writes = ", ".join(f"{c} {n:,}: {(fig.get((c, n), {}).get('per_trial') or {}).get('per_trial', {}).get('write_tx')}"
                           for c in codes for n in sizes)
        out.append(f"\nwrite transactions per trial in the overhead run (trials, claims, promotions): {writes}")
    return "\n".join(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, nargs="+", default=[50, 1000, 5000], metavar="N",
                   help="study sizes, ascending (one study grows through them)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="where to write the results (default: benchmarks/results/bench_scale-<UTC time>.json)")
    p.add_argument("--code", action="append", default=None, metavar="LABEL=DIR",
                   help="a checkout to time (repeatable; default after=<this checkout>)")
    p.add_argument("--storages", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    p.add_argument("--template", default=None, metavar="DB", help="a SQLite file holding study 'template' to clone")
    p.add_argument("--template-trials", type=int, default=30, help="trials of the real template study")
    p.add_argument("--overhead-trials", type=int, default=20, help="trials a worker adds to time (0: skip)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each command (the median is kept)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a command is given up")
    p.add_argument("--work", default=None, help="folder for the databases (default: a temporary one, removed)")
    p.add_argument("--report", default=None, metavar="FILE", help="print a saved result as a table and stop")
    args = p.parse_args(argv)
    if args.report:
        print(report(args.report))
        return {}
    codes = {}
    for item in args.code or [f"after={ROOT}"]:
        label, _, path = item.partition("=")
        codes[label] = Path(path).resolve()
    sys.path.insert(0, str(ROOT))
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="stacknas-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["STACKNAS_HOME"] = str(work)
    storages = {}
    if "sqlite" in args.storages:
        storages["sqlite"] = f"sqlite:///{work / 'scale.db'}"
    if "postgres" in args.storages and os.environ.get("STACKNAS_PG_URL"):
        storages["postgres"] = os.environ["STACKNAS_PG_URL"]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"provenance": {"time_utc": stamp, "git_commit": _git("rev-parse", "HEAD"),
                             "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                             "python": platform.python_version(), "cpu_count": os.cpu_count(),
                             "platform": platform.platform(), "load_average_start": _load(),
                             "code": {k: str(v) for k, v in codes.items()}, "arguments": vars(args)},
              "results": []}
    made = not args.template and not (work / "template.db").exists()
    template = _template(work, args.template, args.template_trials)
    figures = _template_figures(template)
    import studies
    t_trials = studies.open_study("template", template).get_trials(deepcopy=False)
    record["provenance"]["template"] = {
        "url": template, "made_by_this_run": made, "trials": len(t_trials),
        "states": {s: sum(t.state.name == s for t in t_trials) for s in {t.state.name for t in t_trials}}}
    rng = random.Random(0)
    names = {}
    try:
        for kind, url in storages.items():
            names[kind] = name = f"scale-{uuid.uuid4().hex[:8]}"
            for n in sorted(args.trials):
                built = grow(url, name, n, template, rng)
                print(f"[{kind}] {n} trials: built in {built['build_seconds']} s, {built['promotions_added']} "
                      f"promotions in {built['promotion_seconds']} s (load {_load()})", flush=True)
                for label, code in codes.items():
                    m = measure(code, url, name, work, args, figures)
                    record["results"].append({"storage": kind, "trials": n, "code": label, "study": built, **m})
                    pt = m.get("per_trial", {})
                    show, dash, run = m["show"], m["dashboard"], m["run_nothing_to_do"]
                    print(f"[{kind}] {n:>5} {label:>7}: show {_fmt(show['seconds'])} s ({_fmt(show['cpu_seconds'])} "
                          f"cpu)  dashboard {_fmt(dash['seconds'])} s ({_fmt(dash['cpu_seconds'])} cpu)  run "
                          f"{_fmt(run['seconds'])} s ({_fmt(run.get('above_imports'))} above imports "
                          f"{_fmt(m['imports_run']['seconds'])}; cpu {_fmt(run.get('cpu_above_imports'))} above "
                          f"{_fmt(m['imports_run']['cpu_seconds'])})  per trial {_fmt(pt.get('median_seconds'))} s "
                          f"(sampler {_fmt(pt.get('sampler_median_seconds'))}; cpu {_fmt(pt.get('cpu_median_seconds'))}, "
                          f"sampler {_fmt(pt.get('sampler_cpu_median_seconds'))}, rest "
                          f"{_fmt(pt.get('rest_cpu_median_seconds'))}; "
                          f"{pt.get('per_trial', {}).get('write_tx', '-')} write transactions)  "
                          f"load {m['dashboard']['load']}", flush=True)
                    out = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"bench_scale-{stamp}.json"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    record["provenance"]["load_average_end"] = _load()
                    out.write_text(json.dumps(record, indent=1) + "\n")       # after each step: a partial run keeps
    finally:
        if "postgres" in names:
            import optuna
            try:
                optuna.delete_study(study_name=names["postgres"], storage=storages["postgres"])
            except Exception:  # noqa: BLE001 - best effort: a benchmark study left behind is harmless
                pass
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
