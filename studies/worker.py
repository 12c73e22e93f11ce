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
  ``fail_stale_trials``; on a storage without Optuna's heartbeats, a journal or the gRPC
  proxy, the same through the study's claims: :mod:`studies.plain_store`) and re-queued with
  the same parameters, so a SIGKILLed worker's trial is retried and finished. A trial whose
  worker was a process of this machine that no longer exists is re-queued at once, without
  waiting out the beats. Ctrl-C or SIGTERM fails the trial as "interrupted" and re-queues it
  the same way (:mod:`studies.signals`); spawned workers stop with their launcher.
* **Promotions first** (:mod:`studies.promotion`), then trials; a worker leaves
  when nothing is waiting, running or being promoted anywhere in the study
  and the target is reached.
* **The session.** A worker takes the :class:`~studies.session.Session` that
  ``run`` resolved (in its own process, or pickled to a spawned one): the study
  is loaded once per process and its trials read incrementally, a new trial is
  created RUNNING with its ticket and worker in one write, and the stale-trial
  check runs at most once per heartbeat interval (a trial is stale only after
  three).
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import sys
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import optuna
import torch
from optuna.trial import TrialState, create_trial

from . import objective, signals
from .claims import Beating, local_process
from .config import RunOptions
from .objective import Infeasible, TrialFailed
from .promotion import Job, find_promotion, pending_promotions, run_promotion
from .results import TARGET_ATTR, lineage_counts
from .session import Session
from .storage import DEFAULT_GRACE_FACTOR, StorageError, is_storage_failure, quiet_optuna, storage_errors

__all__ = ["STORAGE_FAILED", "TARGET_ATTR", "fail_stale_trials", "make_sampler", "quiet_optuna", "run_workers",
           "work"]

STORAGE_FAILED = 2           # exit code of a worker process the storage failed under (it printed why)


def make_sampler(seed: int, worker_index: int = 0, existing: int = 0) -> optuna.samplers.TPESampler:
    """Multi-objective TPE, seeded per (seed, worker, trials already in the study), so a
    resumed run does not replay the same random start-up samples: multivariate + group
    (the space is conditional: family -> stages -> per-stage choices), constant liar
    (workers see each other's running trials)."""
    s = int(np.random.SeedSequence([int(seed), int(worker_index), int(existing)]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=s, multivariate=True, group=True, constant_liar=True)


def fresh_history(study: optuna.Study) -> None:
    """Let the sampler see every trial finished so far.

    Optuna's samplers read the trials through a per-thread list on the study that
    ``Study.ask()`` and ``Study.tell()`` empty, on the thread that calls them. A worker takes
    its trials under its own lock (see :func:`_take_trial`), not through ``ask()``, and on a
    GPU it samples the next trial on its "prepare" thread while the main thread tells: there
    nothing emptied the list, and TPE kept the history of that thread's first trial for good
    (its start-up count too). So the list is emptied before each trial, on its thread."""
    study._thread_local.cached_all_trials = None


def fail_stale_trials(session: Session) -> None:
    """Optuna's stale-trial check (a RUNNING trial whose heartbeat has been silent for the grace
    period is failed and retried), except that the worker is asked first where it is a process
    of this machine. A live one is still running its trial: its heartbeat is renewed (on an
    overloaded machine a heartbeat thread can go seconds without the CPU; Ctrl-C fails the
    trial itself). A dead one (killed, or stopped by a database that failed under it) will
    never beat again: its trial is failed and retried now, not three heartbeats later. A
    process elsewhere is judged by its heartbeat alone."""
    store, study = session.store, session.study
    alive = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        local = local_process(t.user_attrs.get("worker") or "")
        if local:
            alive.add(t.number)
        elif local is False:
            store.requeue(study, t.number, session.settings.max_retry)
    store.fail_stale_trials(study, spare=alive)


# --------------------------------------------------------------------------
# taking a trial
# --------------------------------------------------------------------------

def _take_trial(session: Session) -> tuple[int, bool] | None:
    """Under the study's ticket lock: a WAITING trial, or a new one while the study holds fewer
    lineages than its target, made RUNNING. Its storage id and whether it came from the
    queue (a preset or a retry), or None.

    A new trial is created RUNNING with its ``ticket`` and ``worker`` attributes in one write
    (what ``enqueue_trial`` and then popping it would take three for)."""
    store, study, cfg = session.store, session.study, session.settings
    with store.claims.lock(f"{cfg.uid}:ticket-lock"):
        trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if waiting:
            number = min(t.number for t in waiting)
            trial_id = store.trial_id(number)
            # its worker named before it runs: a retry carries its dead predecessor's worker,
            # which the stale check would take for this trial's (see fail_stale_trials)
            store.write_trial(number, {"worker": session.owner})
            store.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
            return trial_id, True
        if lineage_counts(trials)["total"] >= int(store.attrs().get(TARGET_ATTR, 0)):
            return None
        trial_id = store.storage.create_new_trial(store.study_id, create_trial(
            state=TrialState.RUNNING, user_attrs={"ticket": True, "worker": session.owner}))
    # read once more, so that this process's trial cache knows the new trial: Optuna's cache
    # takes a parameter only for a trial it has read (a sampler that reads nothing first, or a
    # fixed parameter, would meet a KeyError)
    study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return trial_id, False


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

    def __init__(self, session: Session, trial_id: int, queued: bool):
        self.session = session
        self.study = study = session.study
        store = session.store
        fresh_history(study)
        self.trial = optuna.Trial(study, trial_id)
        number, interval = self.trial.number, store.heartbeat_interval()
        self.beat = Beating(lambda: store.record_heartbeat(number), interval) if interval else None
        if self.beat:
            self.beat.__enter__()
        a = self.trial.user_attrs
        if queued and a.get("fail_reason"):  # a retry starts clean (its worker is named already)
            store.write_trial(self.trial.number, {"fail_reason": None})
        preset = a.get("preset")
        self.label = f"trial {self.trial.number}" + (f" [{preset}]" if preset else "")
        self.prepared: objective.Prepared | None = None
        self.state: str | None = None

    def prepare(self, say) -> None:
        self._guarded(lambda: setattr(self, "prepared", objective.prepare(self.trial, self.session)), say)

    def train(self, say) -> None:
        if self.state is None:
            self._guarded(lambda: self._tell(objective.train(self.prepared, self.session), say), say)

    def _tell(self, values: tuple[float, float], say) -> None:
        self.study.tell(self.trial, list(values))
        a = self.prepared.attrs if self.prepared is not None else {}
        if "duplicate_of" in a:
            say(f"{self.label}: the same network as trial {a['duplicate_of']}; not trained again, counted once")
        else:
            say(f"{self.label}: acc {values[0]:.3f}  {self.session.settings.memory} mem {_mib(values[1])}/image  "
                f"{a.get('params', 0):,} params  {a.get('architecture', '')}  ({a.get('proxy_seconds', 0):.1f}s)")
        self.state = "COMPLETE"

    def _end(self, state: TrialState, attrs: dict) -> None:
        """The trial's outcome attributes in one write, then its final state."""
        self.session.store.write_trial(self.trial.number, attrs)
        self.study.tell(self.trial, state=state)

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
            trial.set_constraint("budget", float(e.violation))
            self._end(TrialState.PRUNED, {"status": "infeasible", "fail_reason": e.reason})
            say(f"{self.label}: pruned: {e.reason}")
            self.state = "PRUNED"
        except TrialFailed as e:
            self._end(TrialState.FAIL, {"status": e.status, "fail_reason": e.reason})
            say(f"{self.label}: FAIL: {e.reason}")
            self.state = "FAIL"
        except KeyboardInterrupt:
            self.interrupt()
            raise
        except Exception as e:  # noqa: BLE001 - a bug in one architecture must not stop the study
            if is_storage_failure(e):
                # the database itself refuses (full disk, read-only, server gone): fail and re-queue
                # the trial if it still takes those writes, then stop this worker with one line. If
                # not, the trial stays RUNNING under this process, which is about to be gone: the
                # next run here re-queues it at once (fail_stale_trials), one elsewhere after the
                # heartbeat's grace period
                with contextlib.suppress(Exception):
                    self._end(TrialState.FAIL, {"status": "error", "fail_reason": "the storage failed; re-queued"})
                    self.session.store.retry(study, trial.number, self.session.settings.max_retry)
                self.state = "FAIL"
                raise
            reason = f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            self._end(TrialState.FAIL, {"status": "error", "fail_reason": reason,
                                        "traceback": traceback.format_exc()[-4000:]})
            say(f"{self.label}: FAIL: {reason}")
            self.state = "FAIL"

    def interrupt(self) -> None:
        """Ctrl-C: fail the trial as interrupted and re-queue it with the same parameters."""
        if self.state is not None:
            return
        self._end(TrialState.FAIL, {"status": "interrupted", "fail_reason": "interrupted (worker stopped); re-queued"})
        self.session.store.retry(self.study, self.trial.number, self.session.settings.max_retry)
        self.state = "FAIL"

    def close(self) -> None:
        if self.beat:
            self.beat.__exit__(None, None, None)
            self.beat = None
            self.session.store.end_heartbeat(self.trial.number)


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------

def work(session: Session, opts: RunOptions, say=print, bar=None) -> dict:
    """The worker loop over ``session``'s study: promotions first, then trials; returns what
    this worker did. ``opts`` gives the worker's own options (seed, index, poll, prepare_ahead)."""
    quiet_optuna()
    with storage_errors(session.url):
        return _work(session, opts, say, bar)


def _work(session: Session, opts: RunOptions, say, bar) -> dict:
    store, cfg = session.store, session.settings
    study = session.study
    study.sampler = make_sampler(opts.seed, opts.worker_index, len(study.get_trials(deepcopy=False)))
    grace = DEFAULT_GRACE_FACTOR * cfg.heartbeat_interval
    done = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "promotions": 0}

    def next_work() -> Job | _Taken | None:
        """Promotions first, then a trial, taken and prepared (its CPU part); None when idle."""
        job = find_promotion(session, grace)
        if job is not None:
            return job
        taken = _take_trial(session)
        if taken is None:
            return None
        taken = _Taken(session, *taken)
        try:
            taken.prepare(say)
        except BaseException:
            taken.close()            # a storage failure or Ctrl-C while preparing: its heartbeat stops too
            raise
        return taken

    # On a GPU the next trial is sampled, width-solved, built and measured in a thread while
    # the device trains the current one, so the device does not wait for the CPU; on the CPU
    # both would compete for the same cores, so the parts run one after the other.
    overlap = session.device.startswith("cuda") if opts.prepare_ahead is None else opts.prepare_ahead
    ahead = ThreadPoolExecutor(1, thread_name_prefix="prepare") if overlap else None
    pending: Future | None = None
    checked = -math.inf          # monotonic time of the last stale-trial check
    try:
        while True:
            if time.monotonic() - checked >= cfg.heartbeat_interval:
                with store.claims.lock(f"{cfg.uid}:stale-lock"):
                    # one process at a time: on SQLite two could both fail (and re-queue) one trial
                    fail_stale_trials(session)
                checked = time.monotonic()
            item = pending.result() if pending is not None else next_work()
            pending = None
            if item is None:
                active = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
                if not active and not pending_promotions(session):
                    break
                update_bar(bar, session, waiting=True)
                time.sleep(opts.poll)
                continue
            if ahead is not None and (isinstance(item, Job) or item.state is None):
                pending = ahead.submit(next_work)
            if isinstance(item, Job):
                run_promotion(session, item, say)
                done["promotions"] += 1
            else:
                try:
                    item.train(say)
                finally:
                    item.close()
                done[item.state] += 1
            update_bar(bar, session)
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
    return done


def update_bar(bar, session: Session, waiting: bool = False) -> None:
    """The launch's progress bar: finished over target lineages, running and failed counts."""
    if bar is None or bar.disable:
        return
    c = lineage_counts(session.study.get_trials(deepcopy=False))
    bar.total = max(bar.total or 0, c["total"], int(session.store.attrs().get(TARGET_ATTR, 0)))
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

def _worker_main(session: Session, opts: RunOptions, env: dict, launcher: int) -> None:
    """Entry point of a spawned worker process of process ``launcher``: the session pickled, the
    storage opened here. SIGTERM and the launcher's death stop it as Ctrl-C does
    (:func:`studies.signals.worker_process`); a storage failure is one line, exit 2."""
    signals.worker_process(launcher)
    os.environ.update(env)
    threads = env.get("STACKNAS_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    try:
        work(session, opts, say=lambda m: print(f"[w{opts.worker_index}] {m}", flush=True))
    except KeyboardInterrupt as e:
        sys.exit(signals.exit_code(e))
    except StorageError as e:
        print(f"[w{opts.worker_index}] error: {e}", file=sys.stderr, flush=True)
        sys.exit(STORAGE_FAILED)
    finally:
        session.close()


def run_workers(session: Session, opts: RunOptions, bar, say) -> list[int]:
    """Start ``opts.workers`` worker processes (one GPU each where there are several, the CPU
    threads shared out otherwise), follow them on ``bar``; their exit codes."""
    ctx = mp.get_context("spawn")
    n_gpu = torch.cuda.device_count() if session.device.startswith("cuda") else 0
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
        w = replace(opts, worker_index=i, progress=False)
        p = ctx.Process(target=_worker_main, args=(replace(session, progress=False), w, env, os.getpid()),
                        name=f"stacknas-worker-{i}")
        p.start()
        procs.append(p)
    try:
        while any(p.is_alive() for p in procs):
            update_bar(bar, session)
            for p in procs:
                p.join(timeout=1.0 / len(procs))
    except KeyboardInterrupt as e:
        # Ctrl-C reached the workers too (one process group); SIGTERM is sent to this process
        # alone (kill, timeout, Kubernetes): pass it on. Then give them time to re-queue.
        if isinstance(e, signals.Terminated):
            for p in procs:
                if p.is_alive():
                    p.terminate()
        for p in procs:
            p.join(timeout=30)
        raise
    update_bar(bar, session)
    return [p.exitcode for p in procs]
