#!/usr/bin/env python
"""One resumable command that measures the whole mission and writes the evidence.

    python benchmarks/evidence.py --data DIR --out DIR [--stages ...] [--smoke]
    python benchmarks/evidence.py --estimate          # predicted minutes per stage on one H100

Stages, in this order (``--stages`` picks some):

1. **bench**: ``bench_proxy.py``'s measurement: the proxy trainer against a naive
   DataLoader loop on the same model (``ho-euler-x14``), eager and compiled (compile
   seconds apart), training TFLOP/s of each.
2. **presets**: 8-epoch proxies of 001's equal-parameter row at 2.07M (Table 3):
   validation accuracy, images/s, peak CUDA bytes, the memory objective.
3. **study**: a study at ``--budget`` (1.0M) with the near-budget presets enqueued,
   until ``--trials`` proxy-trained trials; per trial its CPU work (sample, width solve,
   build, measure) and its proxy training; the study's wall time per trial and the share
   of it spent training; trials per GPU-hour.
4. **retrain**: the ``fast`` protocol on the Pareto set plus the best presets (at least
   5 networks); Kendall's tau between proxy and retrained accuracy; the best searched
   network against the best preset at the same budget and protocol.
5. **report**: ``report.md`` (every figure in tables), ``dashboard.html`` of the study
   and its ``dashboard.png`` screenshot (headless Chromium; without a browser the
   stage is ``partial`` and says so).

Resuming: each stage's result, status (``ok``, ``partial``, ``error``), seconds and
provenance (device, versions, commit, plan) is a section of ``OUT/evidence.json``. A
stage already ``ok`` is skipped, unless a stage before it finished later (then it is
redone: a retrain after its study grew, the report); a larger ``--trials`` grows the
study; ``--force`` runs a stage again. A stage made with another plan (``--smoke``
against the default, another budget) is refused.
The presets, study and retrain stages stop at ``--stage-minutes`` as ``partial`` (a
running trial is re-queued, as on Ctrl-C); the next call resumes them.

``--out`` holds at most 8 files of at most 16 MiB: ``evidence.json``, ``study.db`` (the
Optuna study, SQLite), ``report.md``, ``dashboard.html``, ``dashboard.png``. Retrain
checkpoints and results tables go to ``--work`` (the data home), never to ``--out``.
``--smoke`` runs every stage on the CPU with synthetic 8x8 images and tiny sizes (the
CI test). Sizes: ``benchmarks/evidence_plan.py``; figures and the report:
``benchmarks/evidence_report.py``; the plan and its minutes: ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import bench_proxy  # noqa: E402
import models  # noqa: E402
import studies  # noqa: E402
import trainers  # noqa: E402
from evidence_plan import DEFAULT, ROW_2M, SMOKE, Plan, estimate, plan_key  # noqa: E402
from evidence_report import (STAGES, figures, retrain_figures, screenshot, study_figures, trial_counts,  # noqa: E402
                             write_report)
from models.measure import measure  # noqa: E402
from studies import signals  # noqa: E402
from trainers import _runtime  # noqa: E402

STUDY = "evidence"
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20      # what a remote machine may send back
MEMORY = studies.RunOptions.memory      # the study's default memory objective ("inference")


class Partial(Exception):
    """A stage stopped before its target; ``result`` holds what it has."""

    def __init__(self, reason: str, result: dict):
        super().__init__(reason)
        self.reason, self.result = reason, result


class TimeCap(KeyboardInterrupt):
    """Raised by the stage timer; a KeyboardInterrupt, so a running trial is re-queued."""


@contextlib.contextmanager
def time_cap(seconds: float, again: float = 10.0):
    """Raise :class:`TimeCap` in this (main) thread after ``seconds`` (at least 1), and every
    ``again`` seconds after that until the block is left: an exception raised while Python
    runs a finalizer (a database object being collected) is printed and dropped."""
    def fire(signum, frame):
        raise TimeCap()
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds), again)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- context
class Run:
    """What every stage shares: arguments, plan, device, data, storage, the evidence file."""

    def __init__(self, args, plan: Plan):
        self.args, self.plan = args, plan
        self.out = Path(args.out).resolve()
        self.device = _runtime.resolve_device(plan.device)
        self.url = f"sqlite:///{self.out / 'study.db'}"
        self.path = self.out / "evidence.json"
        self.evidence = json.loads(self.path.read_text()) if self.path.exists() else {"format": 1, "stages": {}}
        self._data = None
        self.started = time.monotonic()

    def cap(self):
        """The time cap of a resumable stage: ``stage_minutes`` from now, or the end of ``call_minutes``."""
        p, left = self.plan, 60 * self.plan.stage_minutes
        if p.call_minutes is not None:
            left = min(left, 60 * p.call_minutes - (time.monotonic() - self.started))
        if left <= 0:
            raise TimeCap()        # this call's time is spent: the stage does not start
        return time_cap(left)

    @property
    def cap_reason(self) -> str:
        p = self.plan
        return f"stopped at --stage-minutes {p.stage_minutes:g}" + (
            f" or --call-minutes {p.call_minutes:g}" if p.call_minutes is not None else "")

    @property
    def data(self) -> trainers.Dataset:
        if self._data is None:
            p = self.plan
            self._data = (trainers.synthetic(p.train_images, *(2 * [max(32, p.train_images // 4)]),
                                             image_size=p.image_size) if p.synthetic
                          else trainers.load_cifar10(self.args.data))
        return self._data

    def bar(self, desc: str, total: int):
        return tqdm(total=total, desc=desc, unit="step", disable=self.args.no_progress, dynamic_ncols=True)

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_runtime.jsonable(self.evidence), indent=2, default=str) + "\n")
        tmp.replace(self.path)


def provenance(device: torch.device) -> dict:
    """bench_proxy's provenance, Optuna's version, and whether tracked files differ from the
    commit (None where this is no git checkout)."""
    try:
        res = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        dirty = bool(res.stdout.strip()) if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {**bench_proxy._provenance(device), "optuna": optuna.__version__, "git_dirty": dirty}


# ----------------------------------------------------------------------------- stages
def stage_bench(run: Run) -> dict:
    p = run.plan
    argv = ["--preset", p.bench_preset, "--device", str(run.device), "--num-workers", str(p.baseline_workers)]
    argv += (["--synthetic", "--n-train", str(p.train_images), "--image-size", str(p.image_size)] if p.synthetic
             else ["--data", run.args.data])
    for flag, value in (("--epochs", p.bench_epochs), ("--batch-size", p.batch),
                        ("--baseline-batch-size", p.batch), ("--baseline-max-batches", p.baseline_batches)):
        if value:
            argv += [flag, str(value)]
    argv += ["--compile"] * p.compile + ["--no-progress"] * run.args.no_progress
    args = bench_proxy._parse(argv)
    with run.bar("bench", 2 + p.compile) as bar:
        result = {"argv": argv, **bench_proxy.bench(args, run.data, run.device, after=lambda name: bar.update(1))}
    _failed([(f"proxy {mode}", d) for mode, d in result["proxy"].items()], result)
    return result


def _failed(runs: list[tuple[str, dict]], result: dict) -> None:
    """Partial, naming each run whose status is not ok and why."""
    bad = [f"{name}: {d.get('status')}: {d.get('reason')}" for name, d in runs if d.get("status") != "ok"]
    if bad:
        raise Partial("; ".join(bad), result)


def stage_presets(run: Run) -> dict:
    before = (run.evidence["stages"].get("presets") or {}).get("result") or {}
    done = {r["preset"]: r for r in before.get("rows", []) if r["status"] == "ok"}   # a resumed stage keeps them
    rows = []
    shape = (3, run.data.image_size, run.data.image_size)
    result = {"epochs": run.plan.preset_epochs, "memory_objective": f"{MEMORY}_bytes_per_image",
              "cuda": run.device.type == "cuda", "rows": rows}
    with run.bar("presets", len(ROW_2M)) as bar:
        try:
            with run.cap():
                for name in ROW_2M:
                    rows.append(done.get(name) or _preset_row(run, name, shape))
                    bar.update(1)
        except TimeCap:
            raise Partial(f"{len(rows)} of {len(ROW_2M)} presets done; {run.cap_reason}", result) from None
    _failed([(r["preset"], r) for r in rows], result)
    return result


def _preset_row(run: Run, name: str, shape: tuple) -> dict:
    """One preset's proxy and measurements; an exception (a bug in one block) is its row's status."""
    spec = dataclasses.replace(models.presets.get(name), image_size=run.data.image_size)
    row = {"preset": name, "architecture": models.describe(spec),
           "paper_accuracy": models.presets.info(name).paper_accuracy, "status": "error", "reason": "",
           "val_accuracy": None, "images_per_second": None, "cuda_peak_bytes": None}
    try:
        m = measure(models.build(spec, device=run.device), shape)
        row.update({k: m[k] for k in ("params", "macs", "inference_bytes_per_image", "training_bytes_per_image")})
        r = trainers.train(lambda: models.build(spec), run.data, protocol="proxy", epochs=run.plan.preset_epochs,
                           device=run.device, seed=0, hparams=bench_proxy.proxy_hparams(run.plan.batch),
                           progress=not run.args.no_progress)
    except Exception as e:  # noqa: BLE001 - the other presets still run
        row["reason"] = f"{type(e).__name__}: {e}"[:500]
        return row
    row.update(status=r.status, reason=r.reason, val_accuracy=r.val_accuracy, images_per_second=r.images_per_second,
               cuda_peak_bytes=r.cuda_peak_bytes, seconds=r.seconds, epochs=r.epochs)
    return row


def stage_study(run: Run) -> dict:
    p = run.plan
    before = run.evidence["stages"].get("study") or {}
    launches = float((before.get("result") or {}).get("launch_seconds") or 0.0)   # earlier calls' share
    opts = dict(storage=run.url, budget=p.budget, tolerance=p.tolerance, proxy_epochs=p.study_epochs, rungs=1,
                enqueue_presets=[], device=str(run.device), seed=0, progress=not run.args.no_progress,
                prepare_ahead=p.prepare_ahead)
    opts.update(dict(synthetic=True, synthetic_images=p.train_images, synthetic_image_size=p.image_size)
                if p.synthetic else dict(data=run.args.data))
    say = tqdm.write                     # lines above the progress bars
    reason = ""
    if run.out.joinpath("study.db").exists():
        _requeue_orphans(studies.open_study(STUDY, run.url))
    try:
        with run.cap():
            for _ in range(20):          # each round adds as many lineages as trained trials are missing
                exists = run.out.joinpath("study.db").exists()
                have = trial_counts(studies.open_study(STUDY, run.url)) if exists else {"total": 0, "trained": 0}
                if have["trained"] >= p.trials:
                    break
                target = have["total"] + p.trials - have["trained"]
                t0 = time.perf_counter()
                try:
                    studies.run(STUDY, target, say=say, **opts)
                finally:
                    launches += time.perf_counter() - t0
    except TimeCap:
        reason = f"{run.cap_reason}; the running trial was re-queued"
    if not run.out.joinpath("study.db").exists():
        raise Partial(f"the study was not created; {reason}", {})
    study = studies.open_study(STUDY, run.url)
    result = {"launch_seconds": launches, **study_figures(study, launches)}
    if result["counts"]["trained"] < p.trials:
        raise Partial(f"{result['counts']['trained']} of {p.trials} trials trained; {reason or 'no progress'}; "
                      "run the stage again to resume", result)
    return result


def _requeue_orphans(study: optuna.Study) -> None:
    """Fail and re-queue the trials a previous call left RUNNING (its time cap struck between
    taking a trial and guarding it), as the heartbeat check would after three silent beats:
    only this command writes to this study, so no live worker owns them."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=studies.RunOptions.max_retry)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        retry(study, next(f for f in study.get_trials(deepcopy=False) if f.number == t.number))


def _pick(table, lo: int, hi: int) -> list[int]:
    """The Pareto set (most accurate first, at most hi - 2), the two best presets, then the
    next fronts by accuracy until there are lo networks."""
    done = table[(table["state"] == "COMPLETE") & table["val_accuracy"].notna() & table["duplicate_of"].isna()]
    done = done.sort_values("val_accuracy", ascending=False)
    picked = list(done[done["pareto"].astype(bool)].index[: hi - 2])
    picked += [n for n in done[done["preset"].notna()].index[:2] if n not in picked]
    for n in done.sort_values(["rank", "val_accuracy"], ascending=[True, False]).index:
        if len(picked) >= lo:
            break
        if n not in picked:
            picked.append(n)
    return [int(n) for n in picked]


def stage_retrain(run: Run) -> dict:
    p = run.plan
    if not (run.out / "study.db").exists():
        raise RuntimeError("no study.db in --out: run the study stage first")
    study = studies.open_study(STUDY, run.url)
    table = studies.trials_table(study)
    numbers = _pick(table, p.retrain_min, p.retrain_max)
    if len(numbers) < p.retrain_min:
        raise RuntimeError(f"the study holds {len(numbers)} completed networks; the retrain needs {p.retrain_min}")
    # epochs: as many as the networks' measured proxy speed lets fit the stage's time (setup aside: 15%)
    images = len(run.data.train) + len(run.data.val)            # the fast protocol trains on train+val
    per_epoch = sum(images / _ips(study, n) for n in numbers)
    fit = int(0.85 * 60 * p.stage_minutes / per_epoch) if per_epoch else p.retrain_epochs
    epochs = max(1, min(p.retrain_epochs, fit))
    reason = ""
    with run.bar("retrain", len(numbers)) as bar:
        def say(line: str) -> None:
            m = re.match(r"\[(\d+)/\d+\]", line)
            if m:
                bar.n = int(m.group(1)) - 1
                bar.refresh()
            bar.write(line)
        try:
            with run.cap():
                studies.retrain(STUDY, run.url, protocol="fast", epochs=epochs, device=str(run.device),
                                synthetic=p.synthetic, data=None if p.synthetic else run.args.data,
                                numbers=numbers, progress=not run.args.no_progress, say=say)
            bar.n = len(numbers)
        except TimeCap:
            reason = run.cap_reason
    result = retrain_figures(studies.open_study(STUDY, run.url), numbers)
    result.update(epochs=epochs, epochs_asked=p.retrain_epochs, predicted_seconds_per_epoch=per_epoch)
    if reason or len(result["rows"]) < len(numbers):
        raise Partial(f"{len(result['rows'])} of {len(numbers)} networks retrained; {reason or 'some failed'}", result)
    return result


def _ips(study: optuna.Study, number: int) -> float:
    t = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return float(t.user_attrs.get("proxy_images_per_second") or 1.0)


def stage_report(run: Run) -> dict:
    if not (run.out / "study.db").exists():
        raise RuntimeError("no study.db in --out: run the study stage first")
    html, png = run.out / "dashboard.html", run.out / "dashboard.png"
    with run.bar("report", 3) as bar:
        dash = studies.dashboard(STUDY, run.url, out=html)
        bar.update(1)
        png.unlink(missing_ok=True)
        missing = screenshot(html, png, Path(run.args.work) / "chromium-profile")
        bar.update(1)
        result = {"dashboard": {k: dash.get(k) for k in ("trials", "complete", "pareto", "retrained", "kendall_tau")},
                  "screenshot": None if missing else png.name, "screenshot_missing": missing or None, "files": {}}
        # a first report.md, so that its size counts; run_stage rewrites it with this stage's status
        own = {"status": "ok", "reason": "", "seconds": 0.0, "provenance": provenance(run.device),
               "finished": _now(), "result": result}
        write_report({**run.evidence, "stages": {**run.evidence["stages"], "report": own}}, run.out / "report.md")
        bar.update(1)
    result["files"] = {f.name: f.stat().st_size for f in sorted(run.out.iterdir()) if f.is_file()}
    big = [n for n, b in result["files"].items() if b > MAX_FILE_BYTES]
    problems = ([missing] if missing else []) + ([f"larger than 16 MiB: {', '.join(big)}"] if big else []) + (
        [f"{len(result['files'])} files in --out (at most {MAX_FILES})"] if len(result["files"]) > MAX_FILES else [])
    if problems:
        raise Partial("; ".join(problems), result)
    return result


# ----------------------------------------------------------------------------- main
RUNNERS = {"bench": stage_bench, "presets": stage_presets, "study": stage_study, "retrain": stage_retrain,
           "report": stage_report}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_stage(run: Run, name: str) -> bool:
    """Run one stage unless it is done; record its status, seconds, provenance and result."""
    prev = run.evidence["stages"].get(name) or {}
    if prev and plan_key(Plan(**prev["plan"])) != plan_key(run.plan) and not run.args.force:
        diff = [k for k, v in plan_key(run.plan).items() if prev["plan"].get(k) != v]
        print(f"[{name}] refused: --out holds this stage made with another plan (differs in {', '.join(diff)}); "
              "use another --out, or --force to run it again")
        return False
    # a stage is redone when one before it finished later (the retrain of a study grown since, the report)
    newer = [n for n in STAGES[:STAGES.index(name)]
             if (run.evidence["stages"].get(n) or {}).get("finished", "") > prev.get("finished", "")]
    # a study asked to hold more trials than it does grows (as `search.py run` with a larger --trials)
    short = name == "study" and prev.get("status") == "ok" and prev["result"]["counts"]["trained"] < run.plan.trials
    if prev.get("status") == "ok" and not newer and not short and not run.args.force:
        print(f"[{name}] ok since {prev.get('finished')}: skipped (--force runs it again)")
        return True
    if prev.get("status") == "ok" and (newer or short):
        print(f"[{name}] redone: " + (f"{', '.join(newer)} finished after it" if newer else
                                      f"it holds fewer than --trials {run.plan.trials}"))
    print(f"[{name}] running on {_runtime.device_name(run.device)}", flush=True)
    started, t0 = _now(), time.perf_counter()
    status, reason = "ok", ""
    try:
        result = RUNNERS[name](run)
    except Partial as e:
        status, reason, result = "partial", e.reason, e.result
    except Exception as e:  # noqa: BLE001 - one stage's failure is recorded; the next stages still run
        status, reason = "error", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        result = {"traceback": traceback.format_exc()[-4000:]}
    named = figures(name, result) if status != "error" else []
    missing = [f["name"] for f in named if f["text"] == "missing"]
    if status == "ok" and missing:
        status, reason = "partial", f"figures missing: {'; '.join(missing)}"
    resumed = prev.get("status") == "partial"          # a resumed stage adds this call's seconds to its own
    seconds = time.perf_counter() - t0 + (prev.get("seconds", 0.0) if resumed else 0.0)
    run.evidence["stages"][name] = {"status": status, "reason": reason, "seconds": round(seconds, 1),
                                    "started": prev["started"] if resumed else started, "finished": _now(),
                                    "provenance": provenance(run.device), "plan": dataclasses.asdict(run.plan),
                                    "result": result}
    run.save()
    print(f"[{name}] {status} in {seconds:.0f} s" + (f": {reason}" if reason else ""))
    for f in named:
        print(f"    {f['name']}: {f['text']}" + (f"  (target {f['target']})" if f["target"] else ""))
    if name == "report" and status != "error":
        write_report(run.evidence, run.out / "report.md")
    return status == "ok"


def _plan_comments() -> dict[str, str]:
    """Each :class:`Plan` field's comment, its help on the command line (one home for both)."""
    helps, last = {}, None
    for line in inspect.getsource(Plan).splitlines():
        if m := re.match(r"\s+(\w+): [^#]*#\s*(.*)", line):
            last, helps[m.group(1)] = m.group(1), m.group(2)
        elif last and (m := re.match(r"\s+#\s*(.*)", line)):
            helps[last] += " " + m.group(1)
    return {k: v.replace("%", "%%") for k, v in helps.items()}


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", help="folder for evidence.json, study.db and the report (created)")
    p.add_argument("--data", default="data", help="folder holding cifar-10-batches-py (not with --smoke)")
    p.add_argument("--work", default=None, help="data home for retrain checkpoints and results tables "
                                                "(default: a folder in the system's temporary directory)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run (in order)")
    p.add_argument("--smoke", action="store_true", help="CPU, synthetic 8x8 data, tiny sizes (the CI check)")
    p.add_argument("--force", action="store_true", help="run the chosen stages even when done before")
    p.add_argument("--estimate", action="store_true", help="print the plan's predicted minutes per stage on "
                                                           "one H100 and exit (nothing is trained)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    helps = _plan_comments()
    for f in dataclasses.fields(Plan):          # every size of the plan can be overridden
        kind = next(k for k in (bool, float, str, int) if k.__name__ in f.type)   # "int | None" -> int
        flag, text = "--" + f.name.replace("_", "-"), helps.get(f.name, "")
        text += f" (default {getattr(DEFAULT, f.name)}; --smoke: {getattr(SMOKE, f.name)})"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(flag, type=kind, default=None, metavar=kind.__name__.upper(), help=text)
    args = p.parse_args(argv)
    if not args.out and not args.estimate:
        p.error("--out DIR is required (or --estimate)")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Plan) if getattr(args, f.name) is not None}
    plan = dataclasses.replace(SMOKE if args.smoke else DEFAULT, **given)
    if args.out:
        args.work = args.work or str(Path(tempfile.gettempdir()) / (
            "stacknas-evidence-" + hashlib.sha1(str(Path(args.out).resolve()).encode()).hexdigest()[:10]))
    return args, plan


def print_estimate(plan: Plan) -> None:
    e = estimate(plan)
    print(json.dumps(e["inputs"], indent=1))
    for name, s in e["seconds"].items():
        print(f"{name:<8} {s / 60:5.1f} min")
    print(f"{'total':<8} {e['total_seconds'] / 60:5.1f} min (one H100, at {e['inputs']['tflops']:g} TFLOP/s)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, plan = _parse(argv)
    if args.estimate:
        print_estimate(plan)
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    os.environ["STACKNAS_HOME"] = str(Path(args.work).resolve())   # retrain runs and tables: not in --out
    studies.quiet_optuna()
    if plan.threads:
        torch.set_num_threads(plan.threads)
    run = Run(args, plan)
    run.evidence["command"] = " ".join(["python benchmarks/evidence.py", *argv])
    run.evidence.setdefault("invocations", []).append({"time_utc": _now(), "argv": argv})
    run.evidence["provenance"] = provenance(run.device)
    run.save()
    try:
        ok = [run_stage(run, name) for name in STAGES if name in args.stages]
    except KeyboardInterrupt as e:      # Ctrl-C or SIGTERM: the running trial was re-queued
        print(f"evidence: {signals.stopped_line(e)}", file=sys.stderr)
        return signals.exit_code(e)
    print(f"evidence: {run.path}" + ("" if all(ok) else "  (not every stage is ok: see its reason)"))
    return 0 if all(ok) else 1


if __name__ == "__main__":
    signals.handle_sigterm()           # a batch system's SIGTERM stops it as Ctrl-C does
    sys.exit(main())
