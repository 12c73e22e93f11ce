"""One trial: its network, its costs, its proxy score.

A trial is evaluated in two parts, so that a worker can do the first for the
next trial while the device trains the current one:

* :func:`prepare` (CPU): the spec - a paper preset, or sampled by the
  sampler and its widths solved to the budget - then build, count and
  measure; everything is stored on ``trial.user_attrs`` in one write. Raises
  :class:`Infeasible` when no widths meet the budget (the worker marks the
  trial PRUNED before any training, with the reason and a positive
  ``budget`` constraint, so the TPE sampler learns to avoid the region). A
  network already evaluated in the study (TPE re-proposes some) is not
  trained again: its twin's results are copied, with ``duplicate_of``.
* :func:`train` (device): the proxy, its figures stored in one write; returns
  ``(val_accuracy, memory)`` or raises :class:`TrialFailed` when it diverged or
  ran out of memory (the trial is FAIL with the reason and the study goes on).

Both take the :class:`~studies.session.Session` (settings, device, data, the open
storage). A trial's own writes, in order: the spec and measurements (and its budget
constraint), then the proxy's figures, then the worker's ``tell`` with the values. Each
is one transaction and the state comes last, so a worker that dies between two of them
leaves a RUNNING trial that the heartbeat check fails and retries: no COMPLETE trial
ever lacks what a reader needs.

:func:`promote` trains a finished trial's network at a longer fidelity.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import optuna
from optuna.trial import TrialState

import models
import trainers
from models import ArchSpec, SpecError, presets
from models.measure import measure
from models.naming import scheme_label
from search_space import BudgetError, sample_spec, solve_widths, within_budget

from .session import Session

__all__ = ["Infeasible", "Prepared", "TrialFailed", "forget_data", "load_data", "network_spec", "prepare", "promote",
           "proxy_data", "spec_key", "train"]


class Infeasible(Exception):
    """The trial cannot meet the budget (pruned before training)."""

    def __init__(self, reason: str, violation: float):
        super().__init__(reason)
        self.reason, self.violation = reason, violation


class TrialFailed(Exception):
    """Training failed (diverged / out of memory); the trial is FAIL with the reason."""

    def __init__(self, reason: str, status: str):
        super().__init__(reason)
        self.reason, self.status = reason, status


_LOADED: dict[str, trainers.Dataset] = {}   # the last data set this process read (one entry)


def load_data(data: dict, root: str | None = None, *, device: str | None = None, say=None) -> trainers.Dataset:
    """The study's dataset: ``{"kind": "synthetic", n_train, n_val, n_test, image_size, seed}``,
    ``{"kind": "cifar10" | "cifar100" | "svhn", "root": DIR}`` (torchvision downloads a named
    set when missing) or ``{"kind": "folder", "root": DIR, "image_size": PIXELS}``; ``root``
    overrides the stored folder (where it is on this machine). Its size is checked against
    ``device`` first. The last one read is kept, so a launch's check, its worker and a retrain
    in the same process read a folder of images once."""
    where = os.path.abspath(root or data.get("root") or "data")
    key = json.dumps([{k: v for k, v in data.items() if k not in ("classes", "root")}, where], sort_keys=True)
    if key in _LOADED:
        return _LOADED[key]
    _LOADED.clear()
    if data.get("kind") == "synthetic":
        keys = ("n_train", "n_val", "n_test", "image_size", "seed")
        dataset = trainers.synthetic(**{k: data[k] for k in keys if k in data})
    else:
        dataset = trainers.load_dataset(data.get("kind", "cifar10"), where,
                                        image_size=int(data.get("image_size", 32)), download=True, device=device,
                                        say=say)
    _LOADED[key] = dataset
    return dataset


def forget_data() -> None:
    """Drop the data set kept by :func:`load_data` (a launcher whose workers are other processes)."""
    _LOADED.clear()


def network_spec(spec: ArchSpec, hparams: dict | None) -> ArchSpec:
    """The spec a run trains: with the protocol's ``dropout`` (004's SVHN protocol: 0.2) where
    the network takes one (RKCNN periods and transitions); unchanged otherwise."""
    rate = float((hparams or {}).get("dropout") or 0.0)
    if rate == spec.dropout or models.networks.family(spec) != "rkcnn":
        return spec
    return dataclasses.replace(spec, dropout=rate)


def proxy_data(session: Session) -> trainers.Dataset:
    """The proxy's data, loaded once per process: the study's, its training split cut to
    ``proxy_images`` if set."""
    def load() -> trainers.Dataset:
        data = load_data(session.data)
        n = session.settings.proxy_images
        return data.proxy_subset(n) if n else data
    return session.memo("dataset", load)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def spec_for_trial(trial: optuna.Trial, session: Session) -> ArchSpec:
    """The trial's network: a preset's spec (``user_attrs['preset']``, not width-solved)
    or a sampled spec with widths solved to the budget. Raises :class:`Infeasible`."""
    budget, tol = session.settings.budget, session.settings.tolerance
    preset = trial.user_attrs.get("preset")
    if preset:
        return dataclasses.replace(presets.get(preset), image_size=session.image_size,
                                   num_classes=session.num_classes).validate(require_widths=True)
    # the data set's classes and input size: the budget is met on the real head
    spec = dataclasses.replace(sample_spec(trial, budget=budget, tolerance=tol, paper_forms=session.settings.paper_forms,
                                           num_classes=session.num_classes),
                               name=f"{session.name}-trial{trial.number}", image_size=session.image_size)
    session.store.write_trial(trial.number)     # the sampled parameters, in one write: a retry reuses them
    try:
        return solve_widths(spec, budget, tol)
    except BudgetError as e:
        near = [v for v in (e.below, e.above) if v is not None]
        gap = min(abs(v - budget) for v in near) / budget if near else 1.0
        nearest = " / ".join(f"{v:,}" for v in near) or "none"
        reason = f"budget: no widths within {tol:.0%} of {budget:,} params; nearest achievable {nearest}"
        raise Infeasible(reason, max(gap - tol, 1e-6)) from None
    except SpecError as e:
        raise Infeasible(f"invalid spec: {e}", 1.0) from None


def spec_key(spec_json: str) -> str:
    """A spec's identity: its JSON without the name."""
    d = json.loads(spec_json)
    d.pop("name", None)
    return json.dumps(d, sort_keys=True)


class _Networks:
    """The networks of a study's COMPLETE trials that are not duplicates, by spec key:
    {key: smallest trial number}. Finished trials never change, so each is parsed once
    per process; a lookup reads only the trials finished since the last one."""

    def __init__(self):
        self.first: dict[str, int] = {}
        self.seen: set[int] = set()

    def twin(self, study: optuna.Study, spec: ArchSpec, number: int):
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number not in self.seen:
                self.seen.add(t.number)
                if t.user_attrs.get("spec") and "duplicate_of" not in t.user_attrs:
                    k = spec_key(t.user_attrs["spec"])
                    self.first[k] = min(self.first.get(k, t.number), t.number)
        n = self.first.get(spec_key(spec.to_json()))
        if n is None or n == number:
            return None
        return next(t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number == n)


def _twin(trial: optuna.Trial, spec: ArchSpec, session: Session):
    """An earlier COMPLETE trial (not itself a duplicate) with the same network, or None."""
    return session.memo("networks", _Networks).twin(trial.study, spec, trial.number)


_OWN_ATTRS = {"worker", "ticket", "preset", "duplicate_of", "fail_reason", "traceback"}


@dataclass
class Prepared:
    """A trial whose CPU work is done: its spec and measurements are on the trial (and in
    ``attrs``); ``values`` is set when it needs no training (a duplicate of an earlier
    network)."""

    trial: optuna.Trial
    spec: ArchSpec
    memory: float                         # the study's memory objective, bytes per image
    values: tuple[float, float] | None = None
    seconds: float = 0.0                  # wall seconds of the CPU work
    attrs: dict = field(default_factory=dict)   # the user attrs this evaluation wrote


def prepare(trial: optuna.Trial, session: Session) -> Prepared:
    """Sample (or take the preset), solve widths, build, measure; store it all on the trial."""
    t0 = time.perf_counter()
    cfg = session.settings
    spec = spec_for_trial(trial, session)
    preset = trial.user_attrs.get("preset")
    twin = None if preset else _twin(trial, spec, session)      # a preset is always evaluated as itself
    if twin is not None:
        # the sampler proposed a network already evaluated: reuse its result, train nothing
        trial.set_constraint("budget", 0.0)
        attrs = {k: v for k, v in twin.user_attrs.items() if k not in _OWN_ATTRS}
        attrs["duplicate_of"] = twin.number
        session.store.write_trial(trial.number, attrs)
        values = (float(twin.values[0]), float(twin.values[1]))
        return Prepared(trial, spec, values[1], values, time.perf_counter() - t0, attrs)
    # on the meta device: the tracked figures are exact there and nothing is allocated, and a
    # worker on a GPU runs this while the device trains the previous trial (the allocator's
    # peak comes from the proxy itself)
    m = measure(models.build(spec, device="meta"), (spec.in_channels, spec.image_size, spec.image_size))
    if not preset and not within_budget(m["params"], cfg.budget, cfg.tolerance):
        raise Infeasible(f"solved widths give {m['params']:,} params, outside {cfg.tolerance:.0%} of "
                         f"{cfg.budget:,}", abs(m["params"] - cfg.budget) / cfg.budget - cfg.tolerance)
    trial.set_constraint("budget", 0.0)
    attrs = {
        "spec": spec.to_json(), "architecture": models.describe(spec), "scheme": scheme_label(spec),
        "family": "rkcnn" if spec.stages[0].is_rkcnn else "resnet",
        "params": int(m["params"]), "macs": int(m["macs"]),
        "budget_error": (m["params"] - cfg.budget) / cfg.budget,
        "inference_bytes_per_image": int(m["inference_bytes_per_image"]),
        "training_bytes_per_image": int(m["training_bytes_per_image"]),
    }
    if preset:
        info = presets.info(preset)
        kind = cfg.data.get("kind", "cifar10")       # the paper's figures on this study's data, if printed
        attrs.update(preset_source=info.source, paper_params=info.params_on(kind),
                     paper_accuracy=info.accuracy_on(kind))
    attrs["cpu_seconds"] = round(time.perf_counter() - t0, 3)
    session.store.write_trial(trial.number, attrs)
    return Prepared(trial, spec, float(attrs[cfg.memory_key]), None, attrs["cpu_seconds"], attrs)


def _proxy(spec: ArchSpec, session: Session, epochs: int) -> trainers.TrainResult:
    spec = network_spec(spec, session.settings.proxy_hparams)
    return trainers.train(lambda: models.build(spec), proxy_data(session), protocol="proxy", epochs=epochs,
                          device=session.device, seed=0, hparams=session.settings.proxy_hparams or None,
                          progress=session.progress)


def train(prep: Prepared, session: Session) -> tuple[float, float]:
    """The first-rung proxy of a prepared trial: ``(val_accuracy, memory)``; its figures
    are added to ``prep.attrs``."""
    if prep.values is not None:
        return prep.values
    e0 = session.settings.epochs(0)
    started = time.time()
    r = _proxy(prep.spec, session, e0)
    figures = {"proxy_epochs": e0, "proxy_seconds": round(r.seconds["total"], 3), "device": r.device,
               # unix times: the gap between one trial's end and the next one's start on a worker is
               # the time its device waited for the CPU
               "proxy_started_at": started, "proxy_finished_at": time.time(),
               "cuda_peak_bytes": r.cuda_peak_bytes, "proxy_train_loss": r.train_loss,
               "proxy_images_per_second": r.images_per_second, f"val_accuracy@{e0}": r.val_accuracy,
               "val_accuracy": r.val_accuracy, "status": r.status}
    session.store.write_trial(prep.trial.number, figures)
    prep.attrs.update(figures)
    if r.status != "ok":
        raise TrialFailed(r.reason if r.reason.startswith(r.status) else f"{r.status}: {r.reason}", r.status)
    if not math.isfinite(r.val_accuracy):
        raise TrialFailed("diverged: validation accuracy is not finite", "diverged")
    return float(r.val_accuracy), prep.memory


def promote(record, epochs: int, session: Session) -> dict:
    """Train a finished trial's network at a longer fidelity; the result dict is stored
    as study user attr ``fidelity:N:E``."""
    t0 = time.perf_counter()
    r = _proxy(ArchSpec.from_json(record.user_attrs["spec"]), session, epochs)
    return {"number": record.number, "epochs": epochs, "status": r.status, "reason": r.reason,
            "val_accuracy": r.val_accuracy, "seconds": round(time.perf_counter() - t0, 3),
            "device": r.device, "cuda_peak_bytes": r.cuda_peak_bytes, "worker": session.owner,
            "finished_at": _now()}
