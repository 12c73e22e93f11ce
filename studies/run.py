"""``search.py run``: create or resume a study and run it to N trials with K workers (SPEC §6).

How the pieces fit (details in ``studies/README.md``):

* **Tickets.** ``--trials N`` means N trial *lineages* reaching a final state
  (COMPLETE, PRUNED or FAIL; a trial failed by heartbeat and re-queued is
  replaced by its retry). The launching process tops the study up to N
  lineages by enqueuing WAITING trials with no fixed parameters ("tickets";
  presets are tickets with ``user_attrs['preset']``), under a claim lock so two
  launches cannot both top up. Workers only ever *pop* a WAITING trial
  (atomic ``set_trial_state_values(RUNNING)``), never create one, so K
  workers on any number of machines finish exactly N. A popped ticket is
  sampled by the TPE sampler exactly like a fresh ``study.ask()`` trial.
* **Heartbeats.** A worker beats for its running trial; a trial silent for
  the grace period is failed by the next worker that looks
  (``optuna.storages.fail_stale_trials``) and re-queued with the same
  parameters by ``RetryHeartbeatStaleTrialCallback``; idle workers wait for
  running trials, so a SIGKILLed worker's trial is retried and finished.
* **Multi-fidelity.** Asynchronous successive halving (ASHA) over rungs
  ``proxy_epochs * eta**k``: when a worker is free it first looks for a
  promotion - a trial in the top ``floor(n_k / eta)`` of the ``n_k`` trials
  evaluated at rung k, by non-dominated sorting with crowding distance -
  claims it atomically (``stacknas_claims``) and trains it at rung k+1. The
  result goes to study user attr ``fidelity:N:E`` (Optuna cannot change a
  finished trial); readers merge it (:func:`studies.table.trials_with_results`).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from .objective import (SYNTHETIC_DEFAULT, Infeasible, Job, StudyConfig, TrialFailed, WorkerContext,
                        evaluate, load_data, promote, worker_name)
from .storage import (DEFAULT_GRACE_FACTOR, DEFAULT_HEARTBEAT, DEFAULT_MAX_RETRY, Claims, StorageError,
                      open_storage, redact_url, resolve_url, studies_dir)
from .table import fidelity_results, pareto_set, rank_for_promotion, trials_table

__all__ = ["RunOptions", "lineage_counts", "make_sampler", "prepare_study", "run_command", "run_study",
           "work", "write_results"]

DIRECTIONS = ["maximize", "minimize"]


def _quiet() -> None:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")


@dataclass
class RunOptions:
    """Everything ``run`` needs; picklable, so spawned workers get a copy."""

    study: str
    trials: int
    storage: str | None = None
    budget: str | int = "1.0M"
    tolerance: float = 0.02
    memory: str = "inference"
    proxy_epochs: int | None = None
    rungs: int | None = None
    eta: int | None = None
    data: str | None = None
    synthetic: bool = False
    synthetic_images: int | None = None
    synthetic_image_size: int | None = None
    proxy_hparams: dict | None = None
    device: str | None = None
    workers: int = 1
    enqueue_presets: list[str] | None = None
    seed: int = 0
    progress: bool = True
    heartbeat: int | None = None
    max_retry: int | None = None
    poll: float = 1.0
    explicit: tuple = ()        # option names the user gave (conflict checks on resume)
    worker_index: int = 0

    @property
    def url(self) -> str:
        return resolve_url(self.study, self.storage)


# --------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------

def _superseded(trials) -> set[int]:
    """Numbers of trials failed by heartbeat (or interrupted) and replaced by a retry."""
    out: set[int] = set()
    for t in trials:
        out.update(int(n) for n in t.system_attrs.get("retry_history", []))
    return out


def lineage_counts(trials) -> dict:
    """Counts over trial lineages (a retried trial is replaced by its retry):
    total, finished (COMPLETE + PRUNED + FAIL), and per state."""
    gone = _superseded(trials)
    live = [t for t in trials if t.number not in gone]
    by = {}
    for t in live:
        by[t.state.name] = by.get(t.state.name, 0) + 1
    finished = sum(by.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL"))
    return {"total": len(live), "finished": finished, "retried": len(gone), **by}


# --------------------------------------------------------------------------
# study set-up
# --------------------------------------------------------------------------

def make_sampler(seed: int, worker_index: int = 0, existing: int = 0):
    """Multi-objective TPE, seeded per (seed, worker, trials already in the study):
    multivariate + group (the space is conditional: family -> stages -> per-stage
    choices), constant liar (workers see each other's running trials)."""
    import numpy as np
    import optuna

    s = int(np.random.SeedSequence([int(seed), int(worker_index), int(existing)]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=s, multivariate=True, group=True, constant_liar=True)


def _default_epochs(opts: RunOptions, device: str) -> int:
    if opts.synthetic:
        return 1
    return 8 if device.startswith("cuda") else 2


def _new_config(opts: RunOptions, device: str) -> StudyConfig:
    from search_space import parse_budget

    if opts.synthetic:
        data = dict(kind="synthetic", **SYNTHETIC_DEFAULT)
        if opts.synthetic_images:
            n = int(opts.synthetic_images)
            data.update(n_train=n, n_val=max(64, n // 4), n_test=max(64, n // 4))
        if opts.synthetic_image_size:
            data["image_size"] = int(opts.synthetic_image_size)
    else:
        data = dict(kind="cifar10", root=os.path.abspath(opts.data or "data"))
    hp = dict(opts.proxy_hparams or {})
    if opts.synthetic:
        # a small set: smaller batches, the learning rate scaled with them (0.1 per 128 images)
        n = data["n_train"]
        b = int(hp.get("batch_size", min(128, max(16, n // 8))))
        hp.setdefault("batch_size", b)
        hp.setdefault("lr", 0.1 * b / 128)
    if opts.tolerance is None or not 0 < opts.tolerance < 1:
        raise ValueError(f"--tolerance: must lie in (0, 1), got {opts.tolerance}")
    for name, v, lo in (("--proxy-epochs", opts.proxy_epochs, 1), ("--rungs", opts.rungs, 1), ("--eta", opts.eta, 2)):
        if v is not None and v < lo:
            raise ValueError(f"{name}: must be at least {lo}, got {v}")
    return StudyConfig(
        budget=parse_budget(opts.budget), tolerance=float(opts.tolerance), memory=opts.memory,
        proxy_epochs=int(opts.proxy_epochs or _default_epochs(opts, device)),
        rungs=int(opts.rungs or (2 if opts.synthetic else 3)), eta=int(opts.eta or 3), data=data,
        proxy_hparams=hp, heartbeat_interval=int(opts.heartbeat or DEFAULT_HEARTBEAT),
        max_retry=DEFAULT_MAX_RETRY if opts.max_retry is None else int(opts.max_retry),
        uid=StudyConfig.new_uid())


def _check_resume(cfg: StudyConfig, opts: RunOptions, name: str) -> StudyConfig:
    """A resumed study keeps its settings; an explicit option that disagrees is an error."""
    from search_space import parse_budget

    given = set(opts.explicit)
    checks = {
        "budget": ("--budget", lambda: parse_budget(opts.budget), cfg.budget),
        "tolerance": ("--tolerance", lambda: float(opts.tolerance), cfg.tolerance),
        "memory": ("--memory", lambda: opts.memory, cfg.memory),
        "proxy_epochs": ("--proxy-epochs", lambda: opts.proxy_epochs, cfg.proxy_epochs),
        "eta": ("--eta", lambda: opts.eta, cfg.eta),
    }
    for key, (flag, new, old) in checks.items():
        if key in given and new() != old:
            raise ValueError(f"study {name!r} was created with {flag} {old}; it cannot change "
                             f"(got {new()}): use another --study name")
    if "synthetic" in given and cfg.data.get("kind") != "synthetic":
        raise ValueError(f"study {name!r} trains on CIFAR-10; --synthetic cannot change that")
    if "data" in given and cfg.data.get("kind") == "synthetic":
        raise ValueError(f"study {name!r} trains on synthetic data; --data cannot change that")
    return cfg


def _preset_names(requested: list[str] | None, cfg: StudyConfig) -> list[str]:
    """Presets to enqueue: the names given, or (empty list) those within 10% of the budget."""
    from models import presets

    if requested is None:
        return []
    if requested:
        for n in requested:
            presets.info(n)       # ValueError naming the unknown preset
        return list(dict.fromkeys(requested))
    from search_space import count_params
    near = []
    for n in presets.names():
        if abs(count_params(presets.get(n)) - cfg.budget) <= 0.10 * cfg.budget:
            near.append(n)
    return near


def _setup_locked(opts: RunOptions, device: str, storage, url: str, log):
    import optuna

    study = optuna.create_study(study_name=opts.study, storage=storage, directions=DIRECTIONS,
                                load_if_exists=True)
    if [d.name.lower() for d in study.directions] != DIRECTIONS:
        raise ValueError(f"study {opts.study!r} in {redact_url(url)} is not a stacknas study "
                         f"(directions {[d.name for d in study.directions]})")
    cfg = StudyConfig.load(study)
    if cfg is None:
        if study.trials:
            raise ValueError(f"study {opts.study!r} in {redact_url(url)} has trials but no stacknas settings")
        cfg = _new_config(opts, device)
        cfg.save(study)
        study.set_metric_names(["val_accuracy", cfg.memory_key])
    else:
        cfg = _check_resume(cfg, opts, opts.study)
        if opts.rungs and opts.rungs > cfg.rungs:
            study.set_user_attr("rungs", int(opts.rungs))
            cfg.rungs = int(opts.rungs)
        for key, v in (("heartbeat_interval", opts.heartbeat), ("max_retry", opts.max_retry)):
            if v is not None and v != getattr(cfg, key):
                study.set_user_attr(key, int(v))
                setattr(cfg, key, int(v))
    presets_wanted = _preset_names(opts.enqueue_presets, cfg)
    if opts.enqueue_presets is not None and not opts.enqueue_presets and not presets_wanted:
        log(f"no preset within 10% of the budget ({cfg.budget:,} params); none enqueued")
    trials = study.get_trials(deepcopy=False)
    counts = lineage_counts(trials)
    missing = max(0, int(opts.trials) - counts["total"])
    have = {t.user_attrs.get("preset") for t in trials}
    new_presets = [p for p in presets_wanted if p not in have]
    if len(new_presets) > missing:
        log(f"only {missing} of {len(new_presets)} presets fit in --trials {opts.trials}: "
            f"enqueued {', '.join(new_presets[:missing]) or 'none'}")
        new_presets = new_presets[:missing]
    for p in new_presets:
        study.enqueue_trial({}, user_attrs={"preset": p})
    for _ in range(missing - len(new_presets)):
        study.enqueue_trial({}, user_attrs={"ticket": True})
    return study, cfg


def prepare_study(opts: RunOptions, device: str, log=print):
    """Create or load the study, check its settings, enqueue presets and top it up to
    ``opts.trials`` lineages. Returns (study, config)."""
    _quiet()
    url = opts.url
    if opts.storage is None:
        studies_dir().mkdir(parents=True, exist_ok=True)
    storage = open_storage(url, create=True)
    claims = Claims(url, worker_name())
    try:
        # one launcher at a time sets up the study: settings (and their uid) and tickets
        with claims.lock(f"setup:{opts.study}"):
            study, cfg = _setup_locked(opts, device, storage, url, log)
    finally:
        claims.close()
    return study, cfg


# --------------------------------------------------------------------------
# a worker
# --------------------------------------------------------------------------

def _pop_waiting(study, claims: Claims, uid: str, grace: float) -> int | None:
    """Claim a WAITING trial and make it RUNNING; its id, or None.

    Optuna's own pop (read the state, then write RUNNING) is not atomic on SQLite:
    the read happens outside the write transaction, so two processes can both pop
    the same trial. A row in ``stacknas_claims`` (primary key) decides first."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        key = f"{uid}:pop:{t._trial_id}"
        if not claims.try_claim(key, grace):      # a claimer that died before RUNNING is taken over
            continue
        try:
            ok = storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING)
        except optuna.exceptions.UpdateFinishedTrialError:
            ok = False
        claims.finish(key)
        if ok:
            return t._trial_id
    return None


def _retry(study, number: int, max_retry: int) -> None:
    import optuna
    t = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, t)


def _fmt_bytes(b) -> str:
    if b is None or not math.isfinite(b):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def run_trial(study, trial_id: int, ctx: WorkerContext, say) -> str:
    """Evaluate one popped trial and tell the study; returns the final state name."""
    import optuna

    from .storage import _Beating

    storage = study._storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    beat = _Beating(lambda: storage.record_heartbeat(trial_id), interval) if interval else None
    if beat:
        beat.__enter__()
    try:
        return _run_trial(study, trial_id, ctx, say)
    except optuna.exceptions.UpdateFinishedTrialError:
        # our heartbeat was late (overloaded machine) and another worker failed the trial
        # as stale and re-queued it: the retry stands for it
        say(f"trial id {trial_id}: failed by the heartbeat check meanwhile; its retry will run it")
        return "FAIL"
    finally:
        if beat:
            beat.__exit__(None, None, None)


def _run_trial(study, trial_id: int, ctx: WorkerContext, say) -> str:
    import optuna
    from optuna.trial import TrialState

    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr("worker", ctx.worker)
    if trial.user_attrs.get("fail_reason"):
        trial.set_user_attr("fail_reason", None)     # a retry starts clean
    label = f"trial {trial.number}" + (f" [{trial.user_attrs['preset']}]" if trial.user_attrs.get("preset") else "")
    try:
        values = evaluate(trial, ctx)
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
        _retry(study, trial.number, ctx.config.max_retry)
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
        label += f" (same network as trial {a['duplicate_of']}, not retrained)"
    say(f"{label}: acc {values[0]:.3f}  {ctx.config.memory} mem {_fmt_bytes(values[1])}/img  "
        f"{a.get('params', 0):,} params  {a.get('architecture', '')}  ({a.get('proxy_seconds', 0):.1f}s)")
    return "COMPLETE"


def _rung_accuracies(trials, fid: dict, cfg: StudyConfig, rung: int) -> dict[int, float]:
    """{trial number: accuracy at rung k} (duplicates are represented by their twin)."""
    e = cfg.epochs(rung)
    out = {}
    for t in trials:
        if "duplicate_of" in t.user_attrs:
            continue
        if rung == 0:
            acc = t.values[0] if t.values else None
        else:
            r = fid.get(t.number, {}).get(e)
            acc = r.get("val_accuracy") if r and r.get("status") == "ok" else None
        if acc is not None and math.isfinite(acc):
            out[t.number] = float(acc)
    return out


def find_promotion(study, cfg: StudyConfig, claims: Claims, stale_after: float) -> Job | None:
    """Claim the next promotion (ASHA, top rung first), or None."""
    from optuna.trial import TrialState

    if cfg.rungs < 2:
        return None
    with claims.lock(f"{cfg.uid}:promote-lock"):
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not trials:
            return None
        fid = fidelity_results(study.user_attrs)
        memory = {t.number: float(t.values[1]) for t in trials}
        rows = {r["key"]: r for r in claims.rows(f"{cfg.uid}:promote:")}
        now = time.time()
        for k in reversed(range(cfg.rungs - 1)):
            e_next = cfg.epochs(k + 1)
            prefix = f"{cfg.uid}:promote:{e_next}:"
            mine = {key: r for key, r in rows.items() if key.startswith(prefix)}
            for key, r in sorted(mine.items()):           # a dead worker's promotion
                if not r["done"] and r["heartbeat"] < now - stale_after and claims.try_claim(key, stale_after):
                    return Job(int(key.rsplit(":", 1)[1]), e_next, key)
            acc = _rung_accuracies(trials, fid, cfg, k)
            quota = len(acc) // cfg.eta
            if len(mine) >= quota:
                continue
            numbers = list(acc)
            order = rank_for_promotion([acc[n] for n in numbers], [memory[n] for n in numbers])
            claimed = {int(key.rsplit(":", 1)[1]) for key in mine}
            for i in order[:quota]:
                n = numbers[i]
                if n not in claimed and claims.try_claim(prefix + str(n), stale_after):
                    return Job(n, e_next, prefix + str(n))
    return None


def run_promotion(study, job: Job, ctx: WorkerContext, claims: Claims, say) -> None:
    """Train a claimed promotion and store it as study user attr ``fidelity:N:E``."""
    record = next(t for t in study.get_trials(deepcopy=False) if t.number == job.number)
    with claims.held(job.key, ctx.config.heartbeat_interval):
        try:
            result = promote(record, job.epochs, ctx)
        except KeyboardInterrupt:
            claims.release(job.key)          # another worker may take it at once
            raise
        except Exception as e:  # noqa: BLE001 - record it, do not retry a bug forever
            result = {"number": job.number, "epochs": job.epochs, "status": "error",
                      "reason": f"{type(e).__name__}: {e}".splitlines()[0], "val_accuracy": None,
                      "worker": ctx.worker}
        study.set_user_attr(f"fidelity:{job.number}:{job.epochs}", result)
        claims.finish(job.key)
    if result.get("status") == "ok":
        say(f"trial {job.number} promoted to {job.epochs} epochs: acc {result['val_accuracy']:.3f} "
            f"({result['seconds']:.1f}s)")
    else:
        say(f"trial {job.number} at {job.epochs} epochs: {result.get('status')}: {result.get('reason')}")


def _pending_promotions(claims: Claims, cfg: StudyConfig) -> int:
    return sum(1 for r in claims.rows(f"{cfg.uid}:promote:") if not r["done"])


def work(opts: RunOptions, say=print, bar=None) -> dict:
    """The worker loop: promotions first (ASHA), then WAITING tickets; leaves when
    nothing is waiting, running or being promoted anywhere in the study."""
    import optuna
    from optuna.trial import TrialState

    _quiet()
    url = opts.url
    probe = optuna.load_study(study_name=opts.study, storage=open_storage(url, create=False))
    cfg = StudyConfig.load(probe)
    storage = open_storage(url, heartbeat=cfg.heartbeat_interval, max_retry=cfg.max_retry, create=False)
    grace = DEFAULT_GRACE_FACTOR * cfg.heartbeat_interval
    sampler = make_sampler(opts.seed, opts.worker_index, len(probe.get_trials(deepcopy=False)))
    study = optuna.load_study(study_name=opts.study, storage=storage, sampler=sampler)
    device = opts.device or _default_device()
    ctx = WorkerContext(opts.study, cfg, device, progress=opts.progress, worker=worker_name(),
                        data_root=opts.data)
    claims = Claims(url, ctx.worker)
    done = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "promotions": 0}
    try:
        while True:
            with claims.lock(f"{cfg.uid}:stale-lock"):
                # one process at a time: on SQLite two could both fail (and re-queue) one trial
                optuna.storages.fail_stale_trials(study)
            job = find_promotion(study, cfg, claims, grace)
            if job is not None:
                run_promotion(study, job, ctx, claims, say)
                done["promotions"] += 1
                _update_bar(bar, study)
                continue
            tid = _pop_waiting(study, claims, cfg.uid, grace)
            if tid is not None:
                state = run_trial(study, tid, ctx, say)
                done[state] += 1
                _update_bar(bar, study)
                continue
            trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
            if not trials and not _pending_promotions(claims, cfg):
                break
            _update_bar(bar, study, waiting=True)
            time.sleep(opts.poll)
    finally:
        claims.close()
    return done


def _update_bar(bar, study, waiting: bool = False) -> None:
    if bar is None or bar.disable:
        return
    c = lineage_counts(study.get_trials(deepcopy=False))
    bar.total, bar.n = max(bar.total or 0, c["total"]), c["finished"]
    post = {"running": c.get("RUNNING", 0)}
    if c.get("FAIL"):
        post["failed"] = c["FAIL"]
    if waiting:
        post["waiting for"] = "other workers"
    bar.set_postfix(post, refresh=False)
    bar.refresh()


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _worker_main(opts: RunOptions, env: dict) -> None:
    """Entry point of a spawned worker process."""
    os.environ.update(env)
    threads = env.get("STACKNAS_TORCH_THREADS")
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    try:
        work(opts, say=lambda m: print(f"[w{opts.worker_index}] {m}", flush=True))
    except KeyboardInterrupt:
        sys.exit(130)


# --------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------

def _spawn_workers(opts: RunOptions, device: str, bar, say) -> list[int]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    n_gpu = 0
    if device.startswith("cuda"):
        import torch
        n_gpu = torch.cuda.device_count()
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
    import optuna
    study = optuna.load_study(study_name=opts.study, storage=open_storage(opts.url, create=False))
    try:
        while any(p.is_alive() for p in procs):
            _update_bar(bar, study)
            for p in procs:
                p.join(timeout=1.0 / len(procs))
    except KeyboardInterrupt:
        for p in procs:                      # they got SIGINT too; give them time to re-queue
            p.join(timeout=30)
        raise
    _update_bar(bar, study)
    return [p.exitcode for p in procs]


def write_results(study, name: str) -> Path:
    """``studies/results/NAME/trials.csv`` (the show table) and ``summary.json``."""
    from .table import hypervolume, kendall_tau

    out = studies_dir() / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    df = trials_table(study)
    df.to_csv(out / "trials.csv")
    front = df[df["pareto"].astype(bool)]
    done = df[(df["state"] == "COMPLETE") & df["val_accuracy"].notna()]
    retrained = df[df["retrain_test_accuracy"].notna() & df["duplicate_of"].isna()]
    summary = {
        "study": name, "settings": {k: v for k, v in study.user_attrs.items()
                                    if not k.startswith(("fidelity:", "retrain:"))},
        "trials": lineage_counts(study.get_trials(deepcopy=False)),
        "pareto": [int(n) for n in front.index],
        "hypervolume_normalized": (hypervolume(done["val_accuracy"], done["memory"], normalize=True)
                                   if len(done) else 0.0),
        "kendall_tau_proxy_vs_retrain": (kendall_tau(retrained["val_accuracy"], retrained["retrain_test_accuracy"])
                                         if len(retrained) >= 2 else None),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return out


def _stored_config(url: str, name: str) -> StudyConfig | None:
    import optuna
    try:
        return StudyConfig.load(optuna.load_study(study_name=name, storage=open_storage(url, create=False)))
    except (KeyError, StorageError):
        return None


def _check_data(opts: RunOptions) -> None:
    """Load CIFAR-10 once (downloading it if missing) before the study is touched, so a
    missing dataset is a clear error and K workers do not download it K times."""
    if opts.synthetic:
        return
    cfg = _stored_config(opts.url, opts.study)
    if cfg is None or cfg.data.get("kind") != "synthetic":
        root = opts.data or (cfg.data.get("root") if cfg else None) or "data"
        load_data({"kind": "cifar10", "root": root})


def run_study(opts: RunOptions, say=None) -> dict:
    """Create or resume ``opts.study`` and run it until it holds ``opts.trials``
    finished trial lineages (and every due promotion is done). Returns the counts."""
    import optuna
    from tqdm.auto import tqdm

    if opts.trials < 1:
        raise ValueError(f"--trials: must be at least 1, got {opts.trials}")
    if opts.workers < 1:
        raise ValueError(f"--workers: must be at least 1, got {opts.workers}")
    device = opts.device or _default_device()
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    _check_data(opts)
    study, cfg = prepare_study(opts, device, log=say or print)
    counts = lineage_counts(study.get_trials(deepcopy=False))
    bar = tqdm(total=counts["total"], initial=counts["finished"], desc=f"study {opts.study}", unit="trial",
               disable=not opts.progress, dynamic_ncols=True)
    echo = say or (lambda m: tqdm.write(m) if opts.progress else print(m, flush=True))
    try:
        if opts.workers == 1:
            work(opts, say=echo, bar=bar)
        else:
            codes = _spawn_workers(opts, device, bar, echo)
            bad = [f"worker {i} exited with {c}" for i, c in enumerate(codes) if c]
            if bad:
                echo("; ".join(bad))
    finally:
        bar.close()
    study = optuna.load_study(study_name=opts.study, storage=open_storage(opts.url, create=False))
    counts = lineage_counts(study.get_trials(deepcopy=False))
    counts["results"] = str(write_results(study, opts.study))
    counts["pareto"] = len(pareto_set(study))
    return counts


def _explicit(args, parser_defaults: dict) -> tuple:
    return tuple(k for k, v in parser_defaults.items() if getattr(args, k, v) != v)


_RUN_DEFAULTS = dict(budget="1.0M", tolerance=0.02, memory="inference", proxy_epochs=None, rungs=None, eta=None,
                     data=None, synthetic=False)


def options_from_args(args) -> RunOptions:
    hp = getattr(args, "proxy_hparams", None)
    if isinstance(hp, str):
        try:
            hp = json.loads(hp)
        except json.JSONDecodeError as e:
            raise ValueError(f"--proxy-hparams: not JSON ({e.msg}); e.g. '{{\"lr\": 0.2}}'") from None
        if not isinstance(hp, dict):
            raise ValueError("--proxy-hparams: expected a JSON object, e.g. '{\"lr\": 0.2}'")
        import trainers
        unknown = sorted(set(hp) - set(trainers.DEFAULT_HPARAMS))
        if unknown:
            raise ValueError(f"--proxy-hparams: unknown {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(trainers.DEFAULT_HPARAMS))}")
    return RunOptions(
        study=args.study, trials=args.trials, storage=args.storage, budget=args.budget,
        tolerance=args.tolerance, memory=args.memory, proxy_epochs=args.proxy_epochs, rungs=args.rungs,
        eta=getattr(args, "eta", None), data=args.data, synthetic=args.synthetic,
        synthetic_images=getattr(args, "synthetic_images", None),
        synthetic_image_size=getattr(args, "synthetic_image_size", None), proxy_hparams=hp,
        device=args.device, workers=args.workers, enqueue_presets=args.enqueue_presets, seed=args.seed,
        progress=not args.no_progress, heartbeat=getattr(args, "heartbeat", None),
        max_retry=getattr(args, "max_retry", None), explicit=_explicit(args, _RUN_DEFAULTS))


def where_lines(name: str, storage: str | None, url: str, results=None) -> list[str]:
    flag = f" --storage {redact_url(storage)}" if storage else ""
    lines = [f"storage: {redact_url(url)}"]
    if results:
        lines.append(f"results: {results}")
    lines += [f"next:    python search.py show --study {name}{flag} --pareto",
              f"         python search.py retrain --study {name}{flag}",
              f"         python search.py dashboard --study {name}{flag}"]
    return lines


def run_command(args) -> None:
    opts = options_from_args(args)
    counts = run_study(opts)
    states = ", ".join(f"{counts.get(s, 0)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if counts.get(s))
    print(f"study {opts.study!r}: {counts['finished']}/{counts['total']} trials finished ({states or 'none'}); "
          f"Pareto set: {counts['pareto']} trial(s)")
    for line in where_lines(opts.study, opts.storage, opts.url, counts["results"]):
        print(line)
