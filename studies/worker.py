"""A worker: takes trials and promotions from the study until nothing is left, and
the processes that run several workers on one machine.

* **Trials on demand.** ``run --trials N`` stores the study's target N (a
  study never shrinks). A free worker takes, under a lock in
  ``stacknas_claims``, a WAITING trial (a paper preset, or the retry of a dead
  worker's trial) or - while the study holds fewer than N trial lineages -
  a new one, and makes it RUNNING. Only one process takes a trial at a time,
  so K workers on any number of machines finish exactly N. (Optuna's own pop
  reads the state and then writes RUNNING outside one transaction; on SQLite
  two processes could both pop one trial.) A taken trial is sampled by the
  TPE sampler like any ``study.ask()`` trial.
* **Heartbeats.** A worker beats for its running trial; a trial silent for
  three beats is failed by the next worker that looks (Optuna's
  ``fail_stale_trials``) and re-queued with the same parameters, so a
  SIGKILLed worker's trial is retried and finished; Ctrl-C fails the trial as
  "interrupted" and re-queues it the same way.
* **Promotions first** (:mod:`studies.promotion`), then trials; a worker leaves
  when nothing is waiting, running or being promoted anywhere in the study
  and the target is reached.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from . import objective
from .config import RunOptions, StudySettings
from .objective import Infeasible, TrialFailed, WorkerContext, worker_name
from .promotion import find_promotion, pending_promotions, run_promotion
from .results import lineage_counts
from .storage import DEFAULT_GRACE_FACTOR, Beating, Store, open_store

__all__ = ["TARGET_ATTR", "make_sampler", "quiet_optuna", "run_workers", "work"]

TARGET_ATTR = "trials"       # study user attr: the number of trial lineages the study should hold


def quiet_optuna() -> None:
    """Optuna's per-trial logging and experimental-feature warnings would bury our own lines."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")
    warnings.filterwarnings("ignore", message=".*constraint value is ignored.*")


def make_sampler(seed: int, worker_index: int = 0, existing: int = 0) -> optuna.samplers.TPESampler:
    """Multi-objective TPE, seeded per (seed, worker, trials already in the study), so a
    resumed run does not replay the same random start-up samples: multivariate + group
    (the space is conditional: family -> stages -> per-stage choices), constant liar
    (workers see each other's running trials)."""
    s = int(np.random.SeedSequence([int(seed), int(worker_index), int(existing)]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=s, multivariate=True, group=True, constant_liar=True)


# --------------------------------------------------------------------------
# taking a trial
# --------------------------------------------------------------------------

def _take_trial(study: optuna.Study, store: Store, cfg: StudySettings) -> int | None:
    """Under the study's ticket lock: a WAITING trial, or a new one while the study holds fewer
    lineages than its target; made RUNNING. Its storage id, or None."""
    with store.claims.lock(f"{cfg.uid}:ticket-lock"):
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            target = int(study.user_attrs.get(TARGET_ATTR, 0))
            if lineage_counts(study.get_trials(deepcopy=False))["total"] >= target:
                return None
            study.enqueue_trial({}, user_attrs={"ticket": True})
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        trial_id = store.trial_id(min(t.number for t in waiting))
        store.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
        return trial_id


def _retry(study: optuna.Study, number: int, max_retry: int) -> None:
    t = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, t)


def _fmt_bytes(b) -> str:
    if b is None or not math.isfinite(b):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def run_trial(study: optuna.Study, store: Store, trial_id: int, ctx: WorkerContext, say) -> str:
    """Evaluate one taken trial, with its heartbeat, and tell the study; the final state's name."""
    interval = store.storage.get_heartbeat_interval()
    beat = Beating(lambda: store.storage.record_heartbeat(trial_id), interval) if interval else None
    if beat:
        beat.__enter__()
    try:
        return _evaluate_and_tell(study, trial_id, ctx, say)
    except optuna.exceptions.UpdateFinishedTrialError:
        # our heartbeat was late (overloaded machine) and another worker failed the trial
        # as stale and re-queued it: the retry stands for it
        say(f"trial id {trial_id}: failed by the heartbeat check meanwhile; its retry will run it")
        return "FAIL"
    finally:
        if beat:
            beat.__exit__(None, None, None)


def _evaluate_and_tell(study: optuna.Study, trial_id: int, ctx: WorkerContext, say) -> str:
    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr("worker", ctx.worker)
    if trial.user_attrs.get("fail_reason"):
        trial.set_user_attr("fail_reason", None)     # a retry starts clean
    preset = trial.user_attrs.get("preset")
    label = f"trial {trial.number}" + (f" [{preset}]" if preset else "")
    try:
        prepared = objective.prepare(trial, ctx)
        values = objective.train(prepared, ctx)
    except Infeasible as e:
        trial.set_user_attr("status", "infeasible")
        trial.set_user_attr("fail_reason", e.reason)
        trial.set_constraint("budget", float(e.violation))
        study.tell(trial, state=TrialState.PRUNED)
        say(f"{label}: pruned: {e.reason}")
        return "PRUNED"
    except TrialFailed as e:
        trial.set_user_attr("status", e.status)
        trial.set_user_attr("fail_reason", e.reason)
        study.tell(trial, state=TrialState.FAIL)
        say(f"{label}: FAIL: {e.reason}")
        return "FAIL"
    except KeyboardInterrupt:
        trial.set_user_attr("status", "interrupted")
        trial.set_user_attr("fail_reason", "interrupted (worker stopped); re-queued")
        study.tell(trial, state=TrialState.FAIL)
        _retry(study, trial.number, ctx.settings.max_retry)
        raise
    except Exception as e:  # noqa: BLE001 - a bug in one architecture must not stop the study
        reason = f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        trial.set_user_attr("status", "error")
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        study.tell(trial, state=TrialState.FAIL)
        say(f"{label}: FAIL: {reason}")
        return "FAIL"
    study.tell(trial, list(values))
    a = trial.user_attrs
    if "duplicate_of" in a:
        label += f" (same network as trial {a['duplicate_of']}, not trained again)"
    say(f"{label}: acc {values[0]:.3f}  {ctx.settings.memory} mem {_fmt_bytes(values[1])}/img  "
        f"{a.get('params', 0):,} params  {a.get('architecture', '')}  ({a.get('proxy_seconds', 0):.1f}s)")
    return "COMPLETE"


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------

def work(opts: RunOptions, say=print, bar=None) -> dict:
    """The worker loop: promotions first, then trials; returns what this worker did."""
    quiet_optuna()
    # The heartbeat interval is a stored setting, so the storage is opened twice: once to
    # read the settings, once with heartbeats for the running trials.
    probe = open_store(opts.study, opts.storage)
    cfg = StudySettings.load(probe.study())
    existing = len(probe.study().get_trials(deepcopy=False))
    probe.close()
    store = open_store(opts.study, opts.storage, heartbeat=cfg.heartbeat_interval, max_retry=cfg.max_retry,
                       owner=worker_name())
    grace = DEFAULT_GRACE_FACTOR * cfg.heartbeat_interval
    study = store.study(make_sampler(opts.seed, opts.worker_index, existing))
    ctx = WorkerContext(opts.study, cfg, opts.device or default_device(), progress=opts.progress,
                        worker=store.claims.owner, data_root=opts.data)
    done = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "promotions": 0}
    try:
        while True:
            with store.claims.lock(f"{cfg.uid}:stale-lock"):
                # one process at a time: on SQLite two could both fail (and re-queue) one trial
                optuna.storages.fail_stale_trials(study)
            job = find_promotion(study, cfg, store, grace)
            if job is not None:
                run_promotion(study, job, ctx, store, say)
                done["promotions"] += 1
                update_bar(bar, study)
                continue
            trial_id = _take_trial(study, store, cfg)
            if trial_id is not None:
                done[run_trial(study, store, trial_id, ctx, say)] += 1
                update_bar(bar, study)
                continue
            active = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
            if not active and not pending_promotions(store, cfg):
                break
            update_bar(bar, study, waiting=True)
            time.sleep(opts.poll)
    finally:
        store.close()
    return done


def update_bar(bar, study: optuna.Study, waiting: bool = False) -> None:
    """The launch's progress bar: finished over target lineages, running and failed counts."""
    if bar is None or bar.disable:
        return
    c = lineage_counts(study.get_trials(deepcopy=False))
    bar.total = max(bar.total or 0, c["total"], int(study.user_attrs.get(TARGET_ATTR, 0)))
    bar.n = c["finished"]
    post = {"running": c.get("RUNNING", 0)}
    if c.get("FAIL"):
        post["failed"] = c["FAIL"]
    if waiting:
        post["waiting for"] = "other workers"
    bar.set_postfix(post, refresh=False)
    bar.refresh()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------
# several workers on one machine
# --------------------------------------------------------------------------

def _worker_main(opts: RunOptions, env: dict) -> None:
    """Entry point of a spawned worker process."""
    os.environ.update(env)
    threads = env.get("STACKNAS_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    try:
        work(opts, say=lambda m: print(f"[w{opts.worker_index}] {m}", flush=True))
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(opts: RunOptions, store: Store, device: str, bar, say) -> list[int]:
    """Start ``opts.workers`` worker processes (one GPU each where there are several, the CPU
    threads shared out otherwise), follow them on ``bar``; their exit codes."""
    ctx = mp.get_context("spawn")
    n_gpu = torch.cuda.device_count() if device.startswith("cuda") else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g for g in visible.split(",") if g.strip()] if visible else [str(i) for i in range(n_gpu)]
    if n_gpu and opts.workers > len(gpus):
        say(f"{opts.workers} workers share {len(gpus)} GPU(s)")
    procs = []
    for i in range(opts.workers):
        env = {}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        else:
            env["STACKNAS_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // opts.workers))
        w = RunOptions(**{**asdict(opts), "worker_index": i, "progress": False})
        p = ctx.Process(target=_worker_main, args=(w, env), name=f"stacknas-worker-{i}")
        p.start()
        procs.append(p)
    study = store.study()
    try:
        while any(p.is_alive() for p in procs):
            update_bar(bar, study)
            for p in procs:
                p.join(timeout=1.0 / len(procs))
    except KeyboardInterrupt:
        for p in procs:                      # they got SIGINT too; give them time to re-queue
            p.join(timeout=30)
        raise
    update_bar(bar, study)
    return [p.exitcode for p in procs]
