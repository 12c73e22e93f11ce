"""One trial: trial -> spec -> budget -> build -> measure -> proxy -> two objectives (SPEC §3-§4).

The study's settings live in its user attributes (:class:`StudyConfig`), so
every worker on every machine evaluates trials the same way.

Outcomes of :func:`evaluate`:

* returns ``(val_accuracy, memory)``: the trial is COMPLETE;
* raises :class:`Infeasible`: no widths meet the budget (or the sampled spec
  is invalid); the worker marks the trial **PRUNED** before any training,
  with ``fail_reason`` and a positive ``budget`` constraint
  (``trial.set_constraint``), so the TPE sampler learns to avoid the region;
* a network already evaluated in the study (TPE re-proposes some) is not
  trained again: its twin's results are copied, with ``duplicate_of``;
* raises :class:`TrialFailed`: the proxy diverged (NaN/inf loss) or ran out
  of memory; the worker marks the trial **FAIL** with ``fail_reason`` and the
  study goes on.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = ["CONFIG_FORMAT", "Infeasible", "Job", "StudyConfig", "TrialFailed", "WorkerContext", "evaluate",
           "load_data", "promote", "spec_for_trial", "worker_name"]

CONFIG_FORMAT = 1
SYNTHETIC_DEFAULT = dict(n_train=1024, n_val=256, n_test=256, image_size=32, seed=0)


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


@dataclass
class StudyConfig:
    """Settings fixed when a study is created, stored as flat study user attrs."""

    budget: int                          # parameters
    tolerance: float = 0.02              # relative distance to the budget allowed
    memory: str = "inference"            # memory objective: "inference" | "training" bytes per image
    proxy_epochs: int = 8                # epochs of rung 0
    rungs: int = 1                       # fidelities: proxy_epochs * eta**k, k < rungs
    eta: int = 3                         # promotion keeps the best 1/eta of a rung
    data: dict = field(default_factory=lambda: {"kind": "cifar10", "root": "data"})
    proxy_hparams: dict = field(default_factory=dict)   # overrides of trainers.DEFAULT_HPARAMS
    heartbeat_interval: int = 60         # seconds; grace period = 3 beats
    max_retry: int = 3                   # retries of a trial whose worker died
    uid: str = ""                        # names this study's claims
    format: int = CONFIG_FORMAT

    def epochs(self, rung: int) -> int:
        return int(self.proxy_epochs * self.eta ** rung)

    @property
    def fidelities(self) -> list[int]:
        return [self.epochs(k) for k in range(self.rungs)]

    @property
    def memory_key(self) -> str:
        return f"{self.memory}_bytes_per_image"

    def save(self, study) -> None:
        for f in dataclasses.fields(self):
            study.set_user_attr(f.name, getattr(self, f.name))

    @classmethod
    def load(cls, study) -> "StudyConfig | None":
        a = study.user_attrs
        if "uid" not in a or "budget" not in a:
            return None
        kw = {f.name: a[f.name] for f in dataclasses.fields(cls) if f.name in a}
        return cls(**kw)

    @staticmethod
    def new_uid() -> str:
        return uuid.uuid4().hex[:12]


@dataclass
class WorkerContext:
    """What one worker process needs to evaluate trials."""

    study_name: str
    config: StudyConfig
    device: str
    progress: bool = True
    worker: str = ""
    data_root: str | None = None     # overrides config.data["root"] (CIFAR-10 on this machine)
    _data: object = None

    @property
    def data(self):
        if self._data is None:
            self._data = load_data(self.config.data, self.data_root)
        return self._data

    @property
    def image_size(self) -> int:
        return int(self.config.data.get("image_size", 32))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def load_data(data: dict, root: str | None = None):
    """The study's dataset: ``{"kind": "synthetic", n_train, n_val, n_test, image_size, seed}``
    or ``{"kind": "cifar10", "root": DIR}`` (torchvision downloads it when missing)."""
    import trainers

    if data.get("kind") == "synthetic":
        kw = {k: data[k] for k in SYNTHETIC_DEFAULT if k in data}
        return trainers.synthetic(**kw)
    return trainers.load_cifar10(root or data.get("root") or "data", download=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stage_scheme(s) -> str:
    return s.scheme + ("(paper)" if s.form == "paper" else "") + ("-nested" if s.depth else "")


def _scheme_label(spec) -> str:
    seen: list[str] = []
    for s in spec.stages:
        if _stage_scheme(s) not in seen:
            seen.append(_stage_scheme(s))
    return "+".join(seen)


def _test_sleep(number: int) -> None:
    """Test hook: ``STACKNAS_TEST_SLEEP=SECONDS`` or ``N1,N2:SECONDS`` sleeps at the
    start of those trials, after sampling (so a test can kill a worker mid-trial)."""
    spec = os.environ.get("STACKNAS_TEST_SLEEP")
    if not spec:
        return
    numbers, _, secs = spec.rpartition(":")
    if not numbers or number in {int(n) for n in numbers.split(",") if n.strip()}:
        time.sleep(float(secs))


def spec_for_trial(trial, ctx: WorkerContext):
    """The trial's network: a preset's spec (``user_attrs['preset']``, not width-solved)
    or a sampled spec with widths solved to the budget. Raises :class:`Infeasible`."""
    from models import presets
    from models import SpecError
    from search_space import BudgetError, sample_spec, solve_widths

    cfg = ctx.config
    preset = trial.user_attrs.get("preset")
    if preset:
        spec = presets.get(preset)
        _test_sleep(trial.number)
        return dataclasses.replace(spec, image_size=ctx.image_size).validate(require_widths=True)
    spec = sample_spec(trial)
    _test_sleep(trial.number)            # test hook: after sampling, so a retry has the same parameters
    spec = dataclasses.replace(spec, name=f"{ctx.study_name}-trial{trial.number}", image_size=ctx.image_size)
    try:
        return solve_widths(spec, cfg.budget, cfg.tolerance)
    except BudgetError as e:
        near = [v for v in (e.below, e.above) if v is not None]
        gap = min(abs(v - cfg.budget) for v in near) / cfg.budget if near else 1.0
        nearest = " / ".join(f"{v:,}" for v in near) or "none"
        reason = (f"budget: no widths (multiples of 8) within {cfg.tolerance:.0%} of {cfg.budget:,} params; "
                  f"nearest achievable {nearest}")
        raise Infeasible(reason, max(gap - cfg.tolerance, 1e-6)) from None
    except SpecError as e:
        raise Infeasible(f"invalid spec: {e}", 1.0) from None


def _set_attrs(trial, attrs: dict) -> None:
    for k, v in attrs.items():
        trial.set_user_attr(k, v)


def _proxy(spec, ctx: WorkerContext, epochs: int):
    import models
    import trainers

    return trainers.train_proxy(lambda: models.build(spec), ctx.data, epochs=epochs, device=ctx.device,
                                seed=0, hparams=ctx.config.proxy_hparams or None, progress=ctx.progress)


_OWN_ATTRS = {"worker", "ticket", "preset", "duplicate_of", "fail_reason", "traceback"}


def spec_key(spec_json: str) -> str:
    """A spec's identity: its JSON without the name."""
    d = json.loads(spec_json)
    d.pop("name", None)
    return json.dumps(d, sort_keys=True)


def _twin(trial, spec):
    """An earlier COMPLETE trial (not itself a duplicate) with the same network, or None."""
    from optuna.trial import TrialState

    key = spec_key(spec.to_json())
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != trial.number and t.user_attrs.get("spec") and "duplicate_of" not in t.user_attrs \
                and spec_key(t.user_attrs["spec"]) == key:
            return t
    return None


def evaluate(trial, ctx: WorkerContext) -> tuple[float, float]:
    """Evaluate one trial at the first fidelity; store everything on ``trial.user_attrs``."""
    import models
    from models.measure import measure
    from search_space import within_budget

    cfg = ctx.config
    spec = spec_for_trial(trial, ctx)
    preset = trial.user_attrs.get("preset")
    twin = None if preset else _twin(trial, spec)      # a preset is always evaluated as itself
    if twin is not None:
        # the sampler proposed a network already evaluated: reuse its result, train nothing
        trial.set_constraint("budget", 0.0)
        _set_attrs(trial, {k: v for k, v in twin.user_attrs.items() if k not in _OWN_ATTRS})
        trial.set_user_attr("duplicate_of", twin.number)
        return float(twin.values[0]), float(twin.values[1])
    net = models.build(spec, device=ctx.device)
    m = measure(net, (spec.in_channels, spec.image_size, spec.image_size))
    del net
    if not preset and not within_budget(m["params"], cfg.budget, cfg.tolerance):
        raise Infeasible(f"solved widths give {m['params']:,} params, outside {cfg.tolerance:.0%} of "
                         f"{cfg.budget:,}", abs(m["params"] - cfg.budget) / cfg.budget - cfg.tolerance)
    trial.set_constraint("budget", 0.0)
    attrs = {
        "spec": spec.to_json(), "architecture": models.describe(spec), "scheme": _scheme_label(spec),
        "family": "rkcnn" if spec.stages[0].is_rkcnn else "resnet",
        "params": int(m["params"]), "macs": int(m["macs"]),
        "budget_error": (m["params"] - cfg.budget) / cfg.budget,
        "inference_bytes_per_image": int(m["inference_bytes_per_image"]),
        "training_bytes_per_image": int(m["training_bytes_per_image"]),
        "cuda_peak_bytes": m["cuda_peak_bytes"],
    }
    if preset:
        from models import presets
        info = presets.info(preset)
        attrs.update(preset_source=info.source, paper_params=info.paper_params,
                     paper_accuracy=info.paper_accuracy)
    _set_attrs(trial, attrs)
    e0 = cfg.epochs(0)
    r = _proxy(spec, ctx, e0)
    _set_attrs(trial, {
        "proxy_epochs": e0, "proxy_seconds": round(r.seconds["total"], 3), "device": r.device,
        "proxy_cuda_peak_bytes": r.cuda_peak_bytes, "proxy_train_loss": r.train_loss,
        "proxy_images_per_second": r.images_per_second,
        f"val_accuracy@{e0}": r.val_accuracy, "val_accuracy": r.val_accuracy, "status": r.status,
    })
    if r.status != "ok":
        reason = r.reason if r.reason.startswith(r.status) else f"{r.status}: {r.reason}"
        raise TrialFailed(reason, r.status)
    memory = float(attrs[cfg.memory_key])
    if not math.isfinite(r.val_accuracy):
        raise TrialFailed("diverged: validation accuracy is not finite", "diverged")
    return float(r.val_accuracy), memory


@dataclass
class Job:
    """A claimed promotion: retrain trial ``number``'s network at ``epochs``."""

    number: int
    epochs: int
    key: str


def promote(record, epochs: int, ctx: WorkerContext) -> dict:
    """Train a finished trial's network at a longer fidelity; the result dict is stored
    as study user attr ``fidelity:N:E``."""
    from models import ArchSpec

    t0 = time.perf_counter()
    spec = ArchSpec.from_json(record.user_attrs["spec"])
    r = _proxy(spec, ctx, epochs)
    return {"number": record.number, "epochs": epochs, "status": r.status, "reason": r.reason,
            "val_accuracy": r.val_accuracy, "seconds": round(time.perf_counter() - t0, 3),
            "device": r.device, "cuda_peak_bytes": r.cuda_peak_bytes, "worker": ctx.worker,
            "finished_at": _now()}
