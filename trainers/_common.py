"""Pieces shared by the proxy trainer and the full retrain (SPEC §5).

* device-side augmentation of uint8 batches (pad-and-crop, flip, AutoAugment
  in sub-batches) and on-the-fly normalisation;
* a training epoch with no per-step host synchronisation: loss, accuracy and
  the first non-finite step are accumulated on the device and read with one
  sync every ``nan_check_every`` steps;
* :func:`evaluate`, learning-rate schedules, RNG state capture, CUDA-event
  phase timing, atomic checkpoint writes, provenance helpers.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Keys every hyperparameter dict (proxy defaults, retrain protocols) uses.
# Units are in the comments of trainers.proxy.DEFAULT_HPARAMS.
HPARAM_KEYS = (
    "epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "decay_1d",
    "label_smoothing", "schedule", "warmup_frac", "final_lr_frac", "milestones", "gamma",
    "crop_pad", "flip", "autoaugment", "autoaugment_chunk", "bf16", "channels_last",
    "drop_last", "eval_batch_size", "nan_check_every",
)


def _merge_hparams(defaults: dict, overrides: dict | None) -> dict:
    """``defaults`` updated with ``overrides``; unknown keys raise ValueError naming known ones."""
    hp = dict(defaults)
    for k, v in (overrides or {}).items():
        if k not in hp:
            raise ValueError(f"unknown hyperparameter {k!r}; known: {', '.join(sorted(hp))}")
        hp[k] = v
    return hp


# ----------------------------------------------------------------------------- device, seeds
def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys, e.g. (seed, epoch, stream)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's legacy global RNG and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    """All global RNG states, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tupleize(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tupleize(x):
    return tuple(_tupleize(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- augmentation
def _crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Batched random crop with ``pad`` zero pixels each side, then random horizontal flip.

    Equivalent to torchvision ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip()``
    per image, done for the whole uint8 batch with one gather on the batch's device.
    """
    n, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))                       # zero fill, like torchvision
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]   # (n,1,h,1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]   # (n,1,1,w)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


_AUTOAUGMENT: dict = {}


def _autoaugment(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """torchvision v2 AutoAugment (CIFAR-10 policy) on a uint8 batch, on its device.

    v2 transforms accept batched tensors but draw ONE sub-policy per call, so
    the batch is cut into sub-batches of ``chunk`` images that each share one
    sampled sub-policy (and magnitude sign) - the usual trade-off of GPU
    augmentation pipelines; with 64-image chunks a 128-image batch still mixes
    two policies and over an epoch every policy is drawn ~hundreds of times.
    Randomness comes from torch's global CPU RNG (as in torchvision), which
    the trainers reseed per epoch from (seed, epoch).
    """
    if "t" not in _AUTOAUGMENT:
        from torchvision.transforms import v2
        _AUTOAUGMENT["t"] = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    aa = _AUTOAUGMENT["t"]
    return torch.cat([aa(part) for part in x.split(chunk)])


def _normalizer(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) so that ``x_uint8 * scale + shift`` = ``(x / 255 - mean) / std``."""
    mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def _prepare(x: torch.Tensor, norm: tuple, channels_last: bool) -> torch.Tensor:
    x = torch.addcmul(norm[1], x.float(), norm[0])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- optimiser, schedule
def _make_optimizer(model: nn.Module, hp: dict) -> torch.optim.SGD:
    """SGD; weight decay on all parameters, or (``decay_1d`` false) only on those with ndim >= 2."""
    params = [p for p in model.parameters() if p.requires_grad]
    if hp["decay_1d"]:
        groups = [{"params": params, "weight_decay": hp["weight_decay"]}]
    else:
        groups = [{"params": [p for p in params if p.ndim >= 2],
                   "weight_decay": hp["weight_decay"]},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    fused = bool(params) and params[0].is_cuda          # one fused kernel per step on CUDA
    return torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], nesterov=hp["nesterov"],
                           fused=fused or None)


def _lr_factor(step: int, hp: dict, steps_per_epoch: int, total_steps: int) -> float:
    """LR multiplier at optimiser step ``step`` (0-based), stepped once per optimiser step.

    ``onecycle``: linear warmup from ~0 to 1 over ``warmup_frac`` of the steps,
    then linear decay to ``final_lr_frac`` at the end (large-batch recipe).
    ``multistep``: ``gamma ** (number of milestones <= epoch)``, i.e. torch's
    MultiStepLR stepped per epoch, with epochs counted 0-based.
    """
    if hp["schedule"] == "onecycle":
        warm = max(1, round(hp["warmup_frac"] * total_steps))
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, total_steps - warm)
        return 1.0 + (hp["final_lr_frac"] - 1.0) * min(1.0, frac)
    if hp["schedule"] == "multistep":
        epoch = step // steps_per_epoch
        return hp["gamma"] ** sum(epoch >= m for m in hp["milestones"])
    raise ValueError(f"unknown schedule {hp['schedule']!r}; known: onecycle, multistep")


def _make_scheduler(optimizer, hp: dict, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = steps_per_epoch * hp["epochs"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, hp, steps_per_epoch, total))


def _steps_per_epoch(n: int, hp: dict) -> int:
    b = hp["batch_size"]
    return n // b if hp["drop_last"] and n >= b else math.ceil(n / b)


def _model_and_optimizer(make_model, hp: dict, n_train: int, device: torch.device, channels_last: bool):
    """The seeded model on the device in its memory format, its optimiser and
    per-step schedule: the set-up the proxy and the retrain share."""
    model = make_model().to(device, memory_format=torch.channels_last if channels_last
                            else torch.contiguous_format)
    optimizer = _make_optimizer(model, hp)
    steps_per_epoch = _steps_per_epoch(n_train, hp)
    scheduler = _make_scheduler(optimizer, hp, steps_per_epoch)
    return model, optimizer, scheduler, steps_per_epoch


# ----------------------------------------------------------------------------- training epoch
class _Diverged(Exception):
    def __init__(self, epoch: int, step: int, global_step: int, loss: float):
        self.epoch, self.step, self.global_step, self.loss = epoch, step, global_step, loss
        super().__init__(self.reason())

    def reason(self) -> str:
        return (f"diverged at epoch {self.epoch}, step {self.step} "
                f"(global step {self.global_step}): loss={self.loss}")


class _LossWatch:
    """On-device loss/accuracy sums and the first non-finite step; ``first_bad`` syncs once."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros((), dtype=torch.float32, device=device)

    def add(self, loss: torch.Tensor, correct: torch.Tensor, step: int) -> None:
        loss = loss.detach().float()
        new_bad = (~torch.isfinite(loss)) & (self.bad_step < 0)
        self.bad_step = torch.where(new_bad, step, self.bad_step)
        self.bad_loss = torch.where(new_bad, loss, self.bad_loss)
        self.loss_sum += loss
        self.correct += correct

    def first_bad(self) -> tuple[int, float] | None:
        step = int(self.bad_step.item())                               # the one host sync
        return None if step < 0 else (step, float(self.bad_loss.item()))


@dataclass
class _EpochStats:
    loss: float          # mean training loss over the epoch's steps (incl. label smoothing)
    accuracy: float      # training accuracy on augmented batches, fraction
    images: int          # images trained on
    steps: int


def _train_epoch(model: nn.Module, optimizer, scheduler, images: torch.Tensor,
                 labels: torch.Tensor, hp: dict, *, epoch: int, seed: int, norm: tuple,
                 device: torch.device, pbar=None) -> _EpochStats:
    """One epoch over ``images``/``labels`` (uint8, already on ``device``).

    Data order, crops and flips come from a generator seeded with
    ``(seed, epoch)``; torch's global RNG (AutoAugment, dropout, stochastic
    depth) is reseeded from ``(seed, epoch)`` too, so an epoch is reproducible
    after a resume. ``epoch`` is 0-based here; reasons print it 1-based.
    Raises :class:`_Diverged` at the first non-finite loss, checked with one
    sync every ``hp["nan_check_every"]`` steps and at the end of the epoch.
    """
    model.train()
    torch.manual_seed(_derive_seed(seed, epoch, 1))
    gen = torch.Generator(device=device).manual_seed(_derive_seed(seed, epoch, 2))
    n, b = labels.shape[0], hp["batch_size"]
    steps = _steps_per_epoch(n, hp)
    perm = torch.randperm(n, generator=gen, device=device)
    watch = _LossWatch(device)
    check_every = max(1, int(hp["nan_check_every"]))
    channels_last = hp["channels_last"] and device.type == "cuda"
    trained = 0
    for step in range(steps):
        idx = perm[step * b:(step + 1) * b]
        x, y = images[idx], labels[idx]
        x = _crop_flip(x, gen, hp["crop_pad"], hp["flip"])
        if hp["autoaugment"]:
            x = _autoaugment(x, hp["autoaugment_chunk"])
        x = _prepare(x, norm, channels_last)
        with _autocast(device, hp["bf16"]):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=hp["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        watch.add(loss, (out.detach().argmax(1) == y).sum(), step)
        trained += y.shape[0]
        if pbar is not None:
            pbar.update(1)
        if (step + 1) % check_every == 0 or step + 1 == steps:
            bad = watch.first_bad()
            if bad is not None:
                s, value = bad
                raise _Diverged(epoch + 1, s + 1, epoch * steps + s + 1, value)
    return _EpochStats(loss=float(watch.loss_sum.item()) / max(1, steps),
                       accuracy=int(watch.correct.item()) / max(1, trained),
                       images=trained, steps=steps)


# ----------------------------------------------------------------------------- evaluation
class Evaluation(NamedTuple):
    accuracy: float      # top-1, fraction in [0, 1]
    loss: float          # mean cross-entropy (no label smoothing)
    n: int               # images evaluated


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             device: str | torch.device | None = None, *, mean, std, batch_size: int = 1024,
             bf16: bool = True, channels_last: bool = True) -> Evaluation:
    """Top-1 accuracy and mean loss of ``model`` on uint8 ``images`` (N, 3, H, W).

    Images are normalised with ``mean``/``std`` (per channel, [0, 1] units, as
    in :class:`trainers.Dataset`); bf16 autocast and channels_last apply on
    CUDA only. Accumulates on the device and syncs once at the end. The
    model's train/eval mode is restored afterwards.
    """
    device = _resolve_device(device)
    norm = _normalizer(mean, std, device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    cl = channels_last and device.type == "cuda"
    try:
        for i in range(0, labels.shape[0], batch_size):
            x = images[i:i + batch_size].to(device, non_blocking=True)
            y = labels[i:i + batch_size].to(device, non_blocking=True)
            with _autocast(device, bf16):
                out = model(_prepare(x, norm, cl))
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
    finally:
        model.train(was_training)
    n = int(labels.shape[0])
    return Evaluation(int(correct.item()) / max(1, n), float(loss_sum.item()) / max(1, n), n)


# ----------------------------------------------------------------------------- timing, memory
class _PhaseClock:
    """Seconds per named phase: CUDA events on CUDA (read with one sync), else perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._events: dict[str, list] = defaultdict(list)
        self._cpu: dict[str, float] = defaultdict(float)
        self._cpu_laps: dict[str, list] = defaultdict(list)

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events[name].append((start, end))
        else:
            t = time.perf_counter()
            try:
                yield
            finally:
                self._cpu[name] += time.perf_counter() - t
                self._cpu_laps[name].append(time.perf_counter() - t)

    def laps(self, name: str) -> list[float]:
        """Seconds of each use of phase ``name`` (CUDA: syncs once)."""
        if not self.cuda:
            return list(self._cpu_laps.get(name, []))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in self._events.get(name, [])]

    def seconds(self, *names: str) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out = {}
        for name in names:
            if self.cuda:
                out[name] = sum(s.elapsed_time(e) for s, e in self._events.get(name, [])) / 1e3
            else:
                out[name] = self._cpu.get(name, 0.0)
        return out


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _oom_reason(e: BaseException, device: torch.device, phase: str) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    total = ""
    if device.type == "cuda":
        gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        total = f" (device has {gib:.1f} GiB)"
    return f"out of memory during {phase}{total}: {first[:300]}"


def _failure(e: BaseException, device: torch.device, phase: str) -> tuple[str, str]:
    """``(status, reason)`` for a run that diverged or ran out of memory during
    ``phase``; any other exception is re-raised."""
    if isinstance(e, _Diverged):
        return "diverged", e.reason()
    if _is_oom(e):
        return "oom", _oom_reason(e, device, phase)
    raise e


def _release_memory(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cuda_peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


# ----------------------------------------------------------------------------- files, provenance
def _atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A kill at any moment leaves either the old checkpoint or the new one, never
    a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _git_commit() -> str | None:
    """HEAD of the repository holding this file, or None (not a checkout, no git, no commits)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (np.generic,)):
        return x.item()
    return x


class _RunResult:
    """What the proxy and retrain results share: ``ok`` and a JSON-able
    ``to_dict`` that leaves the weights (``state_dict``) out."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("state_dict")
        return _jsonable(d)
