"""The trainer: one function, read top to bottom, for the proxy and the full retrain.

``train(make_model, data, protocol=...)`` does, in order:

1. resolves the hyperparameters: :data:`trainers.protocols.HPARAMS` with the
   protocol's overrides, then the caller's (one dict, units in its comments);
2. moves the training and scored splits to the device once, as uint8;
3. builds the seeded model (``make_model`` is called after seeding), SGD and a
   per-step learning-rate schedule, and with ``checkpoint_path`` and
   ``resume`` continues from a checkpoint of the same run;
4. trains epoch by epoch: each batch is cropped/flipped (and with
   ``autoaugment`` augmented) on the device and normalised on the fly, under
   bf16 autocast on CUDA and channels_last; the loss is summed on the device
   and checked for nan/inf with one host sync every ``nan_check_every`` steps;
   after each epoch a checkpoint is written atomically (when a path is given);
5. scores top-1 accuracy on ``score_on``: the validation split for the proxy,
   the test split for a retrain (the only place the test split is touched).

A diverging run ends with ``status="diverged"`` and a reason naming the epoch
and step; out-of-memory ends with ``status="oom"``. Neither raises: a study
records the failure and goes on. Other exceptions (bugs) propagate.

Reproducibility: data order, crops and flips come from a generator seeded
with ``(seed, epoch)``, and torch's global RNG (AutoAugment, dropout,
stochastic depth) is reseeded from ``(seed, epoch)`` too, so an epoch is the
same after a resume; on CUDA also pass ``deterministic=True`` for
bitwise-equal resumes (cuDNN autotuning and atomics change the last bits).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint
from ._runtime import (Diverged, PhaseClock, classify_failure, cuda_peak, derive_seed, device_name, git_commit,
                       jsonable, release_memory, resolve_device, rng_state, seed_everything, set_rng_state)
from .augment import Normalizer, autoaugment, crop_flip
from .data import Dataset, Split
from .protocols import protocol_hparams

__all__ = ["Evaluation", "TrainResult", "evaluate", "train"]


@dataclass
class TrainResult:
    """Outcome of one run; :meth:`to_dict` is JSON-able and leaves out ``state_dict``."""

    status: str                          # "ok" | "diverged" | "oom"
    reason: str                          # "" when ok, else e.g. "diverged at epoch 2, step 7 ..."
    protocol: str
    score_on: str                        # "val" or "test": the split ``accuracy`` was measured on
    accuracy: float | None               # top-1 on that split, fraction 0-1; None if the run failed
    loss: float | None                   # mean cross-entropy on that split (no label smoothing)
    train_loss: float | None             # mean training loss of the last completed epoch
    epochs: int                          # completed epochs (across resumes)
    epochs_planned: int
    steps: int                           # optimiser steps of the completed epochs
    images_trained: int                  # images seen by the completed epochs
    seconds: dict[str, float]            # this call's wall seconds: total, setup, compile, train, eval
    images_per_second: float | None      # images trained in this call / its training seconds
    cuda_peak_bytes: int | None          # torch.cuda.max_memory_allocated in this call; None off CUDA
    device: str                          # e.g. "NVIDIA H100 80GB HBM3"
    torch_version: str
    git_commit: str | None
    seed: int
    hparams: dict
    compiled: bool                       # whether torch.compile was used
    resumed_from_epoch: int | None       # completed epochs found in the checkpoint, None if fresh
    checkpoint_path: str | None
    notes: list[str] = field(default_factory=list)   # what the run had to do on its own (a checkpoint set aside)
    # per epoch: epoch, train_loss, train_accuracy, lr (at its start), images, steps, seconds[, val_accuracy]
    # [, <score_on>_accuracy, <score_on>_loss with score_every_epoch]
    history: list[dict] = field(default_factory=list)
    state_dict: dict | None = field(default=None, repr=False, compare=False)  # CPU tensors, when ok

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def val_accuracy(self) -> float | None:
        return self.accuracy if self.score_on == "val" else None

    @property
    def test_accuracy(self) -> float | None:
        return self.accuracy if self.score_on == "test" else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("state_dict")
        d.update(val_accuracy=self.val_accuracy, test_accuracy=self.test_accuracy)
        return jsonable(d)


def train(make_model: Callable[[], nn.Module], data: Dataset, *, protocol: str = "proxy",
          epochs: int | None = None, hparams: dict | None = None, seed: int = 0,
          device: str | torch.device | None = None, checkpoint_path: str | Path | None = None,
          resume: bool = False, compile: bool = False, deterministic: bool = False, progress: bool = True,
          score_every_epoch: bool = False, on_epoch_end: Callable[[int, dict], None] | None = None,
          say: Callable[[str], None] = print) -> TrainResult:
    """Train ``make_model()`` under ``protocol`` (see :mod:`trainers.protocols`) and score it.

    ``epochs`` and ``hparams`` override the protocol's (unknown keys raise
    ValueError). ``checkpoint_path``: write a checkpoint there after every
    epoch; with ``resume`` continue from it (it must come from the same
    protocol, hyperparameters and seed, else ValueError), a finished one is
    only scored. ``compile`` wraps the model in ``torch.compile`` and compiles
    the train and eval graphs before training, timed apart as
    ``seconds["compile"]`` (off by default: every trial is a different
    architecture, and compiling a deep multi-stage network takes tens of
    seconds, comparable with the proxy it would speed up). Under stochastic
    depth it helps little: the drop decision is a graph break, each block is
    recompiled for its dropped and kept variants, and a deep network reaches
    dynamo's recompile limit and runs those blocks eagerly.
    An unreadable checkpoint is set aside (renamed beside it) and the run
    starts from scratch, saying so through ``say`` and in ``notes``.
    ``score_every_epoch`` scores the ``score_on`` split after every epoch too,
    into the history as ``<split>_accuracy`` / ``<split>_loss`` (an accuracy
    curve: epochs to reach an accuracy, 001 Table 4); it reads the model in
    eval mode and draws no random numbers, so the weights are the same.
    ``on_epoch_end(epoch, entry)`` runs after each epoch's checkpoint is on
    disk (``epoch`` 1-based); an exception from it propagates (tests simulate
    a kill so). ``device`` defaults to CUDA when available.
    """
    t_start = time.perf_counter()
    hp = protocol_hparams(protocol, epochs=epochs, hparams=hparams)
    device = resolve_device(device)
    cuda = device.type == "cuda"
    channels_last = hp["channels_last"]
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    clock = PhaseClock(device)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if cuda:
        torch.backends.cudnn.benchmark = not deterministic     # fixed batch shape: autotuning pays off
        torch.backends.cudnn.deterministic = deterministic
    identity = {"protocol": protocol, "seed": seed, "hparams": jsonable(hp)}

    status, reason, phase = "ok", "", "setup"
    notes: list[str] = []
    history: list[dict] = []
    resumed_from = None
    evaluation = None
    images_now = 0
    model = net = optimizer = scheduler = train_split = scored = None
    try:
        # -- setup: uint8 data on the device, the seeded model, SGD and its schedule
        with clock.phase("setup"):
            seed_everything(seed)
            train_split = _training_split(data, hp["train_on"]).to(device)
            scored = (data.val if hp["score_on"] == "val" else data.test).to(device)
            if cuda:
                # after the data reached the device: the peak is the run's own (model, optimiser,
                # activations), not the ~150 MB of uint8 images every run holds
                torch.cuda.reset_peak_memory_stats(device)
            norm = Normalizer(data.mean, data.std, device)
            model = make_model().to(device, memory_format=torch.channels_last if channels_last
                                    else torch.contiguous_format)
            optimizer = _make_optimizer(model, hp)
            steps_per_epoch = _steps_per_epoch(len(train_split), hp)
            scheduler = _make_scheduler(optimizer, hp, steps_per_epoch)
            start_epoch = 0
            state = None
            if resume and checkpoint_path is not None and checkpoint_path.exists():
                state, note = checkpoint.load_or_set_aside(checkpoint_path, device)
                if note:
                    notes.append(note)
                    say(note)
            if state is not None:
                checkpoint.check_compatible(state, identity, checkpoint_path)
                try:
                    model.load_state_dict(state["model"])
                except RuntimeError as e:     # the network changed since (README: upgrading)
                    first = str(e).strip().splitlines()[0]
                    raise ValueError(f"{checkpoint_path} holds the weights of another network ({first[:160]}); "
                                     "delete it to train this one from the start") from None
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                set_rng_state(state["rng"])
                start_epoch = resumed_from = int(state["epoch"])
                history = list(state["history"])
        net = model

        # -- optional torch.compile, compiled up front so the training time is clean
        if compile:
            phase = "compile"
            with clock.phase("compile"):
                net = torch.compile(model, dynamic=False)
                _warm_up_compile(net, model, train_split, scored, hp, norm, device, channels_last)

        # -- train, epoch by epoch, checkpointing after each
        phase = "training"
        with tqdm(total=steps_per_epoch * hp["epochs"], initial=steps_per_epoch * start_epoch,
                  desc=protocol, unit="step", disable=not progress, leave=protocol != "proxy") as pbar:
            for epoch in range(start_epoch, hp["epochs"]):
                lr_start = float(optimizer.param_groups[0]["lr"])
                with clock.phase("train"):
                    stats = _train_epoch(net, optimizer, scheduler, train_split, hp, epoch=epoch, seed=seed,
                                         norm=norm, device=device, pbar=pbar)
                images_now += stats.images
                entry = {"epoch": epoch + 1, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
                         "lr": lr_start, "images": stats.images, "steps": stats.steps,
                         "seconds": clock.laps("train")[-1]}
                if hp["train_on"] == "train" and hp["score_on"] == "test":
                    # a retrain that holds the validation split out: its accuracy per epoch
                    entry["val_accuracy"] = evaluate(net, data.val.images, data.val.labels, device,
                                                     mean=data.mean, std=data.std,
                                                     batch_size=hp["eval_batch_size"], bf16=hp["bf16"],
                                                     channels_last=hp["channels_last"]).accuracy
                if score_every_epoch:
                    with clock.phase("eval"):
                        evaluation = evaluate(net, scored.images, scored.labels, device, mean=data.mean,
                                              std=data.std, batch_size=hp["eval_batch_size"], bf16=hp["bf16"],
                                              channels_last=hp["channels_last"])
                    entry[f"{hp['score_on']}_accuracy"] = evaluation.accuracy
                    entry[f"{hp['score_on']}_loss"] = evaluation.loss
                history.append(entry)
                if checkpoint_path is not None:
                    checkpoint.atomic_save({"format": checkpoint.FORMAT, **identity, "epoch": epoch + 1,
                                            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                            "scheduler": scheduler.state_dict(), "rng": rng_state(),
                                            "history": history}, checkpoint_path)
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, entry)

        # -- score on the validation (proxy) or test (retrain) split, unless the last epoch just did
        phase = "evaluation"
        if evaluation is None:
            with clock.phase("eval"):
                evaluation = evaluate(net, scored.images, scored.labels, device, mean=data.mean, std=data.std,
                                      batch_size=hp["eval_batch_size"], bf16=hp["bf16"],
                                      channels_last=hp["channels_last"])
    except Exception as e:  # noqa: BLE001 - divergence and OOM become a status; anything else re-raises
        status, reason = classify_failure(e, device, phase)

    seconds = {"setup": 0.0, "compile": 0.0, "train": 0.0, "eval": 0.0}
    seconds.update(clock.seconds(*seconds))
    state_dict = None
    if status == "ok":
        state_dict = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    peak = cuda_peak(device)
    del model, net, optimizer, scheduler, train_split, scored
    release_memory(device)
    seconds["total"] = time.perf_counter() - t_start
    ok = status == "ok" and evaluation is not None
    return TrainResult(
        status=status, reason=reason, protocol=protocol, score_on=hp["score_on"],
        accuracy=evaluation.accuracy if ok else None, loss=evaluation.loss if ok else None,
        train_loss=history[-1]["train_loss"] if history else None,
        epochs=len(history), epochs_planned=hp["epochs"],
        steps=sum(h.get("steps", 0) for h in history), images_trained=sum(h.get("images", 0) for h in history),
        seconds=seconds, images_per_second=images_now / seconds["train"] if seconds["train"] > 0 else None,
        cuda_peak_bytes=peak, device=device_name(device), torch_version=torch.__version__,
        git_commit=git_commit(), seed=seed, hparams=hp, compiled=compile, resumed_from_epoch=resumed_from,
        checkpoint_path=str(checkpoint_path) if checkpoint_path is not None else None,
        notes=notes, history=history, state_dict=state_dict)


def _training_split(data: Dataset, train_on: str) -> Split:
    if train_on == "train":
        return data.train
    return Split(torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels]))


# ----------------------------------------------------------------------------- optimiser, schedule
def _make_optimizer(model: nn.Module, hp: dict, fused: bool | None = None) -> torch.optim.SGD:
    """SGD; weight decay on all parameters, or (``decay_1d`` false) only on those with ndim >= 2.

    ``fused`` (default: when the parameters live on CUDA) runs one fused kernel per step.
    torch's fused SGD needs a momentum buffer for all of the parameters it updates or for
    none, and a block that stochastic depth dropped on the first step has no gradient, so no
    buffer, when a later step reaches it ("expected Tensor as element N ... got NoneType").
    Every parameter therefore gets a zero buffer up front: with dampening 0 the first update
    ``buf = momentum * 0 + g`` is SGD's own ``buf = g``, so the steps are plain SGD's. A
    parameter without a gradient is still skipped (no decay, no momentum), as in plain SGD.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if hp["decay_1d"]:
        groups = [{"params": params, "weight_decay": hp["weight_decay"]}]
    else:
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": hp["weight_decay"]},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    if fused is None:
        fused = bool(params) and params[0].is_cuda
    optimizer = torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], nesterov=hp["nesterov"],
                                fused=fused or None)
    if hp["momentum"]:
        for p in params:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer


def _lr_factor(step: int, hp: dict, steps_per_epoch: int, total_steps: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based).

    ``onecycle``: linear warmup from ~0 to 1 over ``warmup_frac`` of the steps,
    then linear decay to ``final_lr_frac`` at the end (the large-batch recipe).
    ``multistep``: ``gamma ** (milestones <= epoch)``, torch's MultiStepLR
    stepped per epoch, epochs counted 0-based.
    """
    if hp["schedule"] == "onecycle":
        warm = max(1, round(hp["warmup_frac"] * total_steps))
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, total_steps - warm)
        return 1.0 + (hp["final_lr_frac"] - 1.0) * min(1.0, frac)
    epoch = step // steps_per_epoch
    return hp["gamma"] ** sum(epoch >= m for m in hp["milestones"])


def _make_scheduler(optimizer, hp: dict, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = steps_per_epoch * hp["epochs"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, hp, steps_per_epoch, total))


def _steps_per_epoch(n: int, hp: dict) -> int:
    b = hp["batch_size"]
    return n // b if hp["drop_last"] and n >= b else math.ceil(n / b)


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- one epoch
class _LossWatch:
    """On-device loss/accuracy sums and the first non-finite step; reading them syncs once."""

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


class _EpochStats(NamedTuple):
    loss: float          # mean training loss over the epoch's steps (label smoothing included)
    accuracy: float      # training accuracy on the augmented batches, fraction
    images: int          # images trained on
    steps: int


def _train_epoch(model: nn.Module, optimizer, scheduler, split: Split, hp: dict, *, epoch: int, seed: int,
                 norm: Normalizer, device: torch.device, pbar) -> _EpochStats:
    """One epoch over ``split`` (uint8, on ``device``); ``epoch`` is 0-based here and
    1-based in the :class:`Diverged` reason. The progress bar shows the running loss and
    images/s at every host sync (every step on the CPU, where a sync costs nothing)."""
    model.train()
    torch.manual_seed(derive_seed(seed, epoch, 1))
    gen = torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, 2))
    n, b = len(split), hp["batch_size"]
    steps = _steps_per_epoch(n, hp)
    perm = torch.randperm(n, generator=gen, device=device)
    watch = _LossWatch(device)
    sync_every = 1 if device.type == "cpu" else max(1, int(hp["nan_check_every"]))
    channels_last = hp["channels_last"]
    trained, t0 = 0, time.perf_counter()
    for step in range(steps):
        idx = perm[step * b:(step + 1) * b]
        x, y = split.images[idx], split.labels[idx]
        x = crop_flip(x, gen, hp["crop_pad"], hp["flip"])
        if hp["autoaugment"]:
            x = autoaugment(x, hp["autoaugment_chunk"])
        x = norm(x, channels_last)
        with _autocast(device, hp["bf16"]):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=hp["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        watch.add(loss, (out.detach().argmax(1) == y).sum(), step)
        trained += y.shape[0]
        pbar.update(1)
        if (step + 1) % sync_every == 0 or step + 1 == steps:
            bad = watch.first_bad()
            if bad is not None:
                s, value = bad
                raise Diverged(epoch + 1, s + 1, epoch * steps + s + 1, value)
            pbar.set_postfix(epoch=epoch + 1, loss=f"{float(watch.loss_sum.item()) / (step + 1):.3f}",
                             img_s=f"{trained / max(1e-9, time.perf_counter() - t0):.0f}", refresh=False)
    return _EpochStats(loss=float(watch.loss_sum.item()) / max(1, steps),
                       accuracy=int(watch.correct.item()) / max(1, trained), images=trained, steps=steps)


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
    in :class:`trainers.Dataset`); bf16 autocast applies on CUDA only. Accumulates
    on the device and syncs once at the end; the model's train/eval mode is restored
    afterwards.
    """
    device = resolve_device(device)
    norm = Normalizer(mean, std, device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for i in range(0, labels.shape[0], batch_size):
            x = images[i:i + batch_size].to(device, non_blocking=True)
            y = labels[i:i + batch_size].to(device, non_blocking=True)
            with _autocast(device, bf16):
                out = model(norm(x, channels_last))
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
    finally:
        model.train(was_training)
    n = int(labels.shape[0])
    return Evaluation(int(correct.item()) / max(1, n), float(loss_sum.item()) / max(1, n), n)


def _warm_up_compile(net, model, train_split, scored, hp, norm, device, channels_last) -> None:
    """Compile the train graph (forward + backward) and the eval graphs, then restore the model.

    One forward/backward on a training-sized batch (no optimiser step), then
    eval-mode forwards at the evaluation batch sizes; BN statistics are put
    back and gradients cleared, so training starts from the seeded state.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = min(hp["batch_size"], len(train_split))
    x = norm(train_split.images[:b], channels_last)
    model.train()
    with _autocast(device, hp["bf16"]):
        out = net(x)
    F.cross_entropy(out.float(), train_split.labels[:b]).backward()
    model.zero_grad(set_to_none=True)
    eb = hp["eval_batch_size"]
    sizes = {min(eb, len(scored))} | ({len(scored) % eb} if len(scored) > eb and len(scored) % eb else set())
    model.eval()
    with torch.no_grad(), _autocast(device, hp["bf16"]):
        for size in sizes:
            net(norm(scored.images[:size], channels_last))
    model.load_state_dict(saved)
    model.train()
