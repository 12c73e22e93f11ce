"""``run``: check what the user typed, create or resume the study, run its workers.

:func:`run` is the Python form of ``search.py run``. In order of cost it
checks the options, the storage URL, the device and the data, then creates the
study (or resumes it: a resumed study keeps its settings), enqueues the
papers' presets that were asked for and raises the study's target to ``trials``.
What that settled is one :class:`~studies.session.Session` (the storage opened
once, the study, its settings, the device, the data), handed to one worker in
this process or pickled to ``workers`` spawned processes (:mod:`studies.worker`).
At the end the results files are rewritten from one more (incremental) read.
"""
from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm

from models import presets
from search_space import count_params, format_count, param_range, parse_budget

from .claims import worker_name
from .config import RunOptions, StudySettings, check_resume, data_source
from .objective import forget_data, load_data
from .results import TARGET_ATTR, Snapshot, lineage_counts, write_results
from .session import Session
from .storage import (Store, StorageError, check_url, data_home, open_store, redact_url, resolve_url, storage_errors,
                      storage_file)
from .worker import STORAGE_FAILED, default_device, quiet_optuna, run_workers, update_bar, work

__all__ = ["DIRECTIONS", "run"]

DIRECTIONS = ["maximize", "minimize"]   # validation accuracy, memory per image
PRESET_SPAN = 0.10                      # --enqueue-presets without names: presets within 10% of the budget


def _check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device: {device!r} is not a device; use cuda, cuda:N or cpu") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"--device: {device!r} is not supported; use cuda, cuda:N or cpu")
    return device


def _check_reach(budget: int, tol: float) -> None:
    """Refuse a budget outside the space's reach (some of its network shapes could meet
    no width there), with the range it reaches."""
    lo, hi = param_range()
    if budget * (1 + tol) < lo or budget * (1 - tol) > hi:
        raise ValueError(f"--budget {format_count(budget)}: outside the search space's reach; every network shape "
                         f"it samples meets budgets from {lo:,} to {hi:,} parameters")


def _preset_names(requested: list[str] | None, settings: StudySettings, say) -> list[str]:
    """Presets to enqueue: the names given, or (empty list) those near the budget."""
    if requested is None:
        return []
    if requested:
        for n in requested:
            presets.info(n)       # ValueError naming the unknown preset
        return list(dict.fromkeys(requested))
    near = [n for n in presets.names()
            if abs(count_params(dataclasses.replace(presets.get(n), num_classes=settings.num_classes))
                   - settings.budget) <= PRESET_SPAN * settings.budget]
    if not near:
        say(f"no preset within {PRESET_SPAN:.0%} of the budget ({settings.budget:,} params); none enqueued")
    return near


def _create_or_resume(opts: RunOptions, store: Store, device: str, say, dataset=None) -> StudySettings:
    """Under the study's set-up lock: create it with new settings or check a resume; enqueue
    the presets asked for; raise the target to ``opts.trials`` (a study never shrinks)."""
    study = store.create_study(DIRECTIONS)
    if [d.name.lower() for d in study.directions] != DIRECTIONS:
        raise ValueError(f"study {opts.study!r} in {redact_url(store.url)} is not a stacking-nas study "
                         f"(directions {[d.name for d in study.directions]})")
    attrs = study.user_attrs
    settings = StudySettings.from_attrs(attrs)
    trials = study.get_trials(deepcopy=False)
    if settings is None:
        if trials:
            raise ValueError(f"study {opts.study!r} in {redact_url(store.url)} has trials but no settings")
        settings = StudySettings.from_options(opts, device, dataset)
        settings.save(study)
        study.set_metric_names(["val_accuracy", settings.memory_key])
    else:
        for key, value in check_resume(settings, opts):
            say(f"study {opts.study!r}: {key} {getattr(settings, key)} -> {value}, stored for the whole study")
            study.set_user_attr(key, value)
            setattr(settings, key, value)
    target = max(int(opts.trials), int(attrs.get(TARGET_ATTR, 0)))
    room = target - lineage_counts(trials)["total"]
    have = {t.user_attrs.get("preset") for t in trials}
    wanted = [p for p in _preset_names(opts.enqueue_presets, settings, say) if p not in have]
    if len(wanted) > room:
        say(f"only {max(room, 0)} of {len(wanted)} presets fit in --trials {target}: "
            f"enqueued {', '.join(wanted[:max(room, 0)]) or 'none'}")
        wanted = wanted[:max(room, 0)]
    for p in wanted:
        study.enqueue_trial({}, user_attrs={"preset": p})
    if target != attrs.get(TARGET_ATTR):
        study.set_user_attr(TARGET_ATTR, target)
    return settings


def run(study: str, trials: int, *, say=print, **options) -> dict:
    """Create or resume ``study`` and run it until it holds ``trials`` finished trial
    lineages and every due promotion is done; returns the lineage counts, ``summary``
    (:func:`studies.results.summary`: networks, front, hypervolume, tau), the storage URL
    and the results folder.

    ``options`` are the fields of :class:`studies.config.RunOptions` (``budget``,
    ``tolerance``, ``synthetic``, ``device``, ``workers``, ...), with the same
    defaults as the command line.
    """
    quiet_optuna()
    opts = RunOptions.from_user(study=study, trials=trials, **options).check()
    with storage_errors(resolve_url(opts.study, opts.storage)):
        return _run(opts, say)


def _run(opts: RunOptions, say) -> dict:
    # refusals in order of cost, before anything is created: storage, budget, device, data
    url = resolve_url(opts.study, opts.storage)
    if opts.storage is None:
        data_home().mkdir(parents=True, exist_ok=True)
    check_url(url, create=True)
    path = storage_file(url)
    # a study being resumed is opened now (its stored data decides what to load); a new SQLite
    # file or journal is created only once the data is there
    store = None if path is not None and not path.exists() else open_store(opts.study, opts.storage,
                                                                           owner=worker_name())
    try:
        stored = StudySettings.from_attrs(store.attrs()) if store is not None and store.exists() else None
        if stored is None:
            # a new study: a budget no network can meet is refused before anything is created (a
            # resumed one keeps the budget it was made with, and check_resume refuses another)
            _check_reach(parse_budget(opts.budget), float(opts.tolerance))
        device = _check_device(opts.device or default_device())
        if stored is not None:
            check_resume(stored, opts)     # an option contradicting the study is refused before any data is read
            data = stored.data
        else:
            data = None if opts.synthetic else {**data_source(opts), "image_size": opts.image_size}
        if stored is None and data is not None and data["kind"] != "folder" and "image_size" in opts.explicit \
                and opts.image_size != 32:
            raise ValueError(f"--image-size applies to a folder of images; {data['kind']} images are 32x32")
        dataset = None
        if data is not None and data.get("kind") != "synthetic":
            # once, before the study is touched: a clear error (missing, a bad folder, too big for the
            # device), and K workers do not download it K times
            dataset = load_data(data, opts.data if stored else None, device=device, say=say)
        n_train = len(dataset.train) if dataset is not None else opts.synthetic_images if opts.synthetic else None
        if stored is None and opts.proxy_images and n_train is not None and opts.proxy_images > n_train:
            raise ValueError(f"--proxy-images {opts.proxy_images:,}: more than the {n_train:,} training images "
                             f"of the data (validation held out); give at most {n_train:,}")
        if store is None:
            store = open_store(opts.study, opts.storage, create=True, owner=worker_name())
        with store.claims.lock(f"setup:{opts.study}"):
            # one launcher at a time sets the study up: settings (and their uid), presets, target
            settings = _create_or_resume(opts, store, device, say, dataset)
        session = Session.resolve(store, settings, device, data_root=opts.data, progress=opts.progress)
        study = session.study
        counts = lineage_counts(study.get_trials(deepcopy=False))
        bar = tqdm(total=int(store.attrs()[TARGET_ATTR]), initial=counts["finished"],
                   desc=f"study {opts.study}", unit="trial", disable=not opts.progress, dynamic_ncols=True)
        echo = say if say is not print or not opts.progress else tqdm.write
        try:
            if opts.workers == 1:
                work(session, opts, say=echo, bar=bar)
            else:
                forget_data()                # the workers read their own copies
                codes = run_workers(session, opts, bar, echo)
                bad = [f"worker {i} exited with {c}" for i, c in enumerate(codes) if c not in (0, STORAGE_FAILED)]
                if bad:
                    echo("; ".join(bad))
                if STORAGE_FAILED in codes:      # each said why in its line; the launcher exits as they did
                    raise StorageError(f"the storage failed under worker(s) "
                                       f"{', '.join(str(i) for i, c in enumerate(codes) if c == STORAGE_FAILED)} "
                                       f"(their lines above); re-run the same command once it is back")
            update_bar(bar, session)
        finally:
            bar.close()
        snapshot = Snapshot(study)
        counts = lineage_counts(snapshot.trials)
        out, stats = write_results(snapshot)
        counts.update(results=str(out), storage=store.url, summary=stats)
        return counts
    finally:
        if store is not None:
            store.close()
