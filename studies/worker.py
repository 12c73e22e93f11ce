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

import contextlib
import math
import multiprocessing as mp
import os
import sys
import time
import traceback
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from . import objective
from .config import RunOptions, StudySettings
from .objective import Infeasible, TrialFailed, WorkerContext, worker_name
from .promotion import Job, find_promotion, pending_promotions, run_promotion
from .results import lineage_counts
from .storage import (DEFAULT_GRACE_FACTOR, Beating, Store, is_storage_failure, open_store, resolve_url,
                      storage_errors)

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


def _mib(b) -> str:
    """Bytes per image in MiB, as ``show`` and the page print them."""
    return "-" if b is None or not math.isfinite(b) else f"{b / 2 ** 20:.3f} MiB"


class _Taken:
    """A trial this worker has taken and not yet told: its heartbeat beats until :meth:`close`.

    Its evaluation has two parts, :meth:`prepare` (CPU: spec, widths, measurements) and
    :meth:`train` (the proxy on the device), so that a worker on a GPU can prepare the
    next trial while the device trains this one. Either part may end the trial (pruned,
    failed); ``state`` then holds the final state's name.
    """

    def __init__(self, study: optuna.Study, store: Store, trial_id: int, ctx: WorkerContext):
        self.study, self.ctx = study, ctx
        interval = store.storage.get_heartbeat_interval()
        self.beat = Beating(lambda: store.storage.record_heartbeat(trial_id), interval) if interval else None
        if self.beat:
            self.beat.__enter__()
        self.trial = optuna.Trial(study, trial_id)
        self.trial.set_user_attr("worker", ctx.worker)
        if self.trial.user_attrs.get("fail_reason"):
            self.trial.set_user_attr("fail_reason", None)     # a retry starts clean
        preset = self.trial.user_attrs.get("preset")
        self.label = f"trial {self.trial.number}" + (f" [{preset}]" if preset else "")
        self.prepared: objective.Prepared | None = None
        self.state: str | None = None

    def prepare(self, say) -> None:
        self._guarded(lambda: setattr(self, "prepared", objective.prepare(self.trial, self.ctx)), say)

    def train(self, say) -> None:
        if self.state is None:
            self._guarded(lambda: self._tell(objective.train(self.prepared, self.ctx), say), say)

    def _tell(self, values: tuple[float, float], say) -> None:
        self.study.tell(self.trial, list(values))
        a = self.trial.user_attrs
        if "duplicate_of" in a:
            say(f"{self.label}: the same network as trial {a['duplicate_of']}; not trained again, counted once")
        else:
            say(f"{self.label}: acc {values[0]:.3f}  {self.ctx.settings.memory} mem {_mib(values[1])}/image  "
                f"{a.get('params', 0):,} params  {a.get('architecture', '')}  ({a.get('proxy_seconds', 0):.1f}s)")
        self.state = "COMPLETE"

    def _guarded(self, part, say) -> None:
        """Run one part; an outcome other than success becomes the trial's final state."""
        trial, study = self.trial, self.study
        try:
            part()
        except optuna.exceptions.UpdateFinishedTrialError:
            # our heartbeat was late (overloaded machine) and another worker failed the trial
            # as stale and re-queued it: the retry stands for it
            say(f"{self.label}: failed by the heartbeat check meanwhile; its retry will run it")
            self.state = "FAIL"
        except Infeasible as e:
            trial.set_user_attr("status", "infeasible")
            trial.set_user_attr("fail_reason", e.reason)
            trial.set_constraint("budget", float(e.violation))
            study.tell(trial, state=TrialState.PRUNED)
            say(f"{self.label}: pruned: {e.reason}")
            self.state = "PRUNED"
        except TrialFailed as e:
            trial.set_user_attr("status", e.status)
            trial.set_user_attr("fail_reason", e.reason)
            study.tell(trial, state=TrialState.FAIL)
            say(f"{self.label}: FAIL: {e.reason}")
            self.state = "FAIL"
        except KeyboardInterrupt:
            self.interrupt()
            raise
        except Exception as e:  # noqa: BLE001 - a bug in one architecture must not stop the study
            if is_storage_failure(e):
                # the database itself refuses (full disk, read-only): mark the trial failed if it
                # still takes that one write, then stop this worker with one line, writing nothing more
                with contextlib.suppress(Exception):
                    study.tell(trial, state=TrialState.FAIL)
                self.state = "FAIL"
                raise
            reason = f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            trial.set_user_attr("status", "error")
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            study.tell(trial, state=TrialState.FAIL)
            say(f"{self.label}: FAIL: {reason}")
            self.state = "FAIL"

    def interrupt(self) -> None:
        """Ctrl-C: fail the trial as interrupted and re-queue it with the same parameters."""
        if self.state is not None:
            return
        self.trial.set_user_attr("status", "interrupted")
        self.trial.set_user_attr("fail_reason", "interrupted (worker stopped); re-queued")
        self.study.tell(self.trial, state=TrialState.FAIL)
        _retry(self.study, self.trial.number, self.ctx.settings.max_retry)
        self.state = "FAIL"

    def close(self) -> None:
        if self.beat:
            self.beat.__exit__(None, None, None)
            self.beat = None


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------

def work(opts: RunOptions, say=print, bar=None) -> dict:
    """The worker loop: promotions first, then trials; returns what this worker did."""
    quiet_optuna()
    with storage_errors(resolve_url(opts.study, opts.storage)):
        return _work(opts, say, bar)


def _work(opts: RunOptions, say, bar) -> dict:
    # The heartbeat interval is a stored setting, so the storage is opened twice: once to
    # read the settings, once with heartbeats for the running trials.
    probe = open_store(opts.study, opts.storage)
    stored = probe.study()
    cfg, existing = StudySettings.load(stored), len(stored.get_trials(deepcopy=False))
    probe.close()
    store = open_store(opts.study, opts.storage, heartbeat=cfg.heartbeat_interval, max_retry=cfg.max_retry,
                       owner=worker_name())
    grace = DEFAULT_GRACE_FACTOR * cfg.heartbeat_interval
    study = store.study(make_sampler(opts.seed, opts.worker_index, existing))
    ctx = WorkerContext(opts.study, cfg, opts.device or default_device(), progress=opts.progress,
                        worker=store.claims.owner, data_root=opts.data)
    done = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "promotions": 0}

    def next_work() -> Job | _Taken | None:
        """Promotions first, then a trial, taken and prepared (its CPU part); None when idle."""
        job = find_promotion(study, cfg, store, grace)
        if job is not None:
            return job
        trial_id = _take_trial(study, store, cfg)
        if trial_id is None:
            return None
        taken = _Taken(study, store, trial_id, ctx)
        taken.prepare(say)
        return taken

    # On a GPU the next trial is sampled, width-solved, built and measured in a thread while
    # the device trains the current one, so the device does not wait for the CPU; on the CPU
    # both would compete for the same cores, so the parts run one after the other.
    overlap = ctx.device.startswith("cuda") if opts.prepare_ahead is None else opts.prepare_ahead
    ahead = ThreadPoolExecutor(1, thread_name_prefix="prepare") if overlap else None
    pending: Future | None = None
    try:
        while True:
            with store.claims.lock(f"{cfg.uid}:stale-lock"):
                # one process at a time: on SQLite two could both fail (and re-queue) one trial
                optuna.storages.fail_stale_trials(study)
            item = pending.result() if pending is not None else next_work()
            pending = None
            if item is None:
                active = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
                if not active and not pending_promotions(store, cfg):
                    break
                update_bar(bar, study, waiting=True)
                time.sleep(opts.poll)
                continue
            if ahead is not None and (isinstance(item, Job) or item.state is None):
                pending = ahead.submit(next_work)
            if isinstance(item, Job):
                run_promotion(study, item, ctx, store, say)
                done["promotions"] += 1
            else:
                try:
                    item.train(say)
                finally:
                    item.close()
                done[item.state] += 1
            update_bar(bar, study)
    except KeyboardInterrupt:
        if pending is not None:              # the trial prepared ahead is re-queued too
            item = pending.result()
            if isinstance(item, _Taken):
                item.interrupt()
                item.close()
            elif isinstance(item, Job):
                store.claims.release(item.key)
        raise
    finally:
        if ahead is not None:
            ahead.shutdown(wait=True)
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
