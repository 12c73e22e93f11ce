"""Full retrain under a named protocol, with per-epoch atomic checkpoints (SPEC §5 "Full retrain").

Protocols (:data:`PROTOCOLS`), all in the hyperparameter vocabulary of
:data:`trainers.proxy.DEFAULT_HPARAMS`:

* ``"ho-resnet"`` - HO-ResNet papers (Luo et al., 000 §4.1-4.2 / 001 §3.1-3.2):
  SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, step schedule at
  epochs [100, 150, 200, 230] x0.1, 260 epochs, AutoAugment CIFAR-10 policy
  plus the standard 4-pixel-pad crop and horizontal flip.
* ``"lm-resnet"`` - LM-ResNet (Lu et al., 002 §4, CIFAR-10): SGD lr 0.1,
  momentum 0.9, weight decay 1e-4, batch 128, lr / 10 at epochs 80 and 120,
  160 epochs, crop + flip.
* ``"fast"`` - what a user can afford for a Pareto set: 40 epochs, batch 512,
  Nesterov SGD with linear warmup + linear decay, label smoothing 0.1, bf16,
  crop + flip.

Paper protocols run in fp32 (as published; PyTorch uses TF32 convolutions on
Ampere and newer GPUs by default); pass ``hparams={"bf16": True}`` to trade
exactness for speed. The papers train on all 50k training images, so by
default the retrain uses train + val (``train_on="train+val"``) and reports
accuracy on the 10k test split, which only this module touches (SPEC §4).

AutoAugment runs on the device on uint8 sub-batches (see
``trainers._common._autoaugment``): 64 images share one sampled sub-policy,
the standard trade-off of GPU augmentation pipelines; there is no per-image
CPU DataLoader.

Reproducibility: data order, crops, flips and the global torch RNG
(AutoAugment, dropout, stochastic depth) are derived from ``(seed, epoch)``,
and each checkpoint also holds the model, optimiser, scheduler and all RNG
states, so kill-and-resume gives the same final weights as an uninterrupted
run on CPU (on CUDA also pass ``deterministic=True``; cuDNN autotuning and
atomics otherwise change the last bits).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ._common import (_RunResult, _PhaseClock, _atomic_save, _cuda_peak, _device_name, _failure,
                      _git_commit, _jsonable, _model_and_optimizer, _merge_hparams,
                      _normalizer, _release_memory, _resolve_device, _rng_state,
                      _seed_everything, _set_rng_state, _train_epoch, evaluate)
from .data import Dataset, Split
from .proxy import DEFAULT_HPARAMS

__all__ = ["PROTOCOLS", "RetrainResult", "retrain", "protocol_hparams"]

_CHECKPOINT_FORMAT = 1

_PAPER_COMMON = dict(
    batch_size=128,            # images per step
    lr=0.1,                    # initial learning rate
    momentum=0.9,
    nesterov=False,            # plain momentum, as in the papers
    weight_decay=1e-4,         # on all parameters (PyTorch default behaviour)
    decay_1d=True,
    label_smoothing=0.0,
    schedule="multistep",      # lr * gamma ** (milestones passed), stepped per epoch
    gamma=0.1,
    warmup_frac=0.0,
    final_lr_frac=0.0,
    crop_pad=4,                # pixels
    flip=True,
    autoaugment_chunk=64,      # images per sampled AutoAugment sub-policy
    bf16=False,                # fp32 as published
    channels_last=True,
    drop_last=False,           # every image every epoch, like a DataLoader
    eval_batch_size=1024,
    nan_check_every=100,       # steps between host syncs checking the loss
)

PROTOCOLS: dict[str, dict] = {
    # Luo et al. (HO-ResNet) 000 §4.1 / 001 §3.1; AutoAugment: 000 §4.2 / 001 §3.2.
    "ho-resnet": {**DEFAULT_HPARAMS, **_PAPER_COMMON,
                  "epochs": 260, "milestones": [100, 150, 200, 230], "autoaugment": True},
    # Lu et al. (LM-ResNet) 002 §4, CIFAR-10 row.
    "lm-resnet": {**DEFAULT_HPARAMS, **_PAPER_COMMON,
                  "epochs": 160, "milestones": [80, 120], "autoaugment": False},
    # Affordable default: ~40 epochs one-cycle at batch 512 in bf16.
    "fast": {**DEFAULT_HPARAMS,
             "epochs": 40, "batch_size": 512, "lr": 0.4, "momentum": 0.9, "nesterov": True,
             "weight_decay": 5e-4, "decay_1d": False, "label_smoothing": 0.1,
             "schedule": "onecycle", "warmup_frac": 0.15, "final_lr_frac": 0.0,
             "crop_pad": 4, "flip": True, "autoaugment": False, "bf16": True,
             "channels_last": True, "drop_last": True, "nan_check_every": 100},
}


def protocol_hparams(protocol: str, *, epochs: int | None = None,
                     hparams: dict | None = None) -> dict:
    """The hyperparameters of ``protocol``, with ``hparams`` and an ``epochs`` override applied.

    Overriding ``epochs`` of a multistep protocol scales its milestones
    proportionally (e.g. ``lm-resnet`` at 16 epochs steps at 8 and 12).
    Unknown protocol names raise ValueError naming the allowed ones.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[protocol]
    hp = _merge_hparams(base, hparams)
    hp["milestones"] = list(hp["milestones"])
    if epochs is not None and int(epochs) != base["epochs"]:
        hp["epochs"] = int(epochs)
        if hp["schedule"] == "multistep" and "milestones" not in (hparams or {}):
            scale = hp["epochs"] / base["epochs"]
            hp["milestones"] = [round(m * scale) for m in base["milestones"]]
    return hp


@dataclass
class RetrainResult(_RunResult):
    """Outcome of a retrain; :meth:`to_dict` is JSON-able and leaves out ``state_dict``."""

    status: str                        # "ok" | "diverged" | "oom"
    reason: str                        # "" when ok
    protocol: str
    test_accuracy: float | None        # top-1 on the 10k test split, fraction 0-1 (None if failed)
    test_loss: float | None            # mean cross-entropy on the test split
    final_train_loss: float | None     # mean training loss of the last completed epoch
    epochs: int                        # completed epochs (across resumes)
    epochs_planned: int
    # per epoch: epoch, train_loss, train_accuracy, lr (at its start), seconds[, val_accuracy]
    history: list[dict]
    seconds: dict[str, float]          # this call: total, setup, train, eval; train_all: all epochs
    images_per_second: float | None    # training throughput of this call
    cuda_peak_bytes: int | None        # torch.cuda.max_memory_allocated in this call; None on CPU
    device: str
    torch_version: str
    seed: int
    hparams: dict
    train_on: str                      # "train+val" (50k, as the papers) or "train" (45k)
    git_commit: str | None
    resumed_from_epoch: int | None     # completed epochs found in the checkpoint, None if fresh
    checkpoint_path: str
    state_dict: dict | None = field(default=None, repr=False, compare=False)  # CPU tensors, when ok


def retrain(make_model: Callable[[], nn.Module], data: Dataset, *, protocol: str = "fast",
            checkpoint_path: str | Path, resume: bool = False,
            device: str | torch.device | None = None, seed: int = 0, epochs: int | None = None,
            hparams: dict | None = None, train_on: str = "train+val",
            deterministic: bool = False, progress: bool = True,
            on_epoch_end: Callable[[int, dict], None] | None = None) -> RetrainResult:
    """Train ``make_model()`` under ``protocol`` and report test accuracy.

    A checkpoint is written atomically to ``checkpoint_path`` after every
    epoch (model, optimiser, scheduler, RNG states, epoch, history). With
    ``resume=True`` and an existing checkpoint, training continues from it
    (the checkpoint must come from the same protocol, hyperparameters, seed
    and ``train_on``, else ValueError); without one it starts fresh. A
    checkpoint of a finished run is just evaluated. ``resume=False`` starts
    fresh and overwrites the checkpoint after the first epoch. ``on_epoch_end(epoch,
    entry)`` is called after each epoch's checkpoint is on disk (``epoch``
    1-based); an exception from it propagates, which is how tests simulate a
    kill. ``deterministic=True`` asks PyTorch for deterministic kernels
    (bitwise-reproducible resumes on CUDA, slower).

    Divergence and out-of-memory end with ``status`` "diverged" / "oom" and a
    reason; they do not raise.
    """
    t_start = time.perf_counter()
    hp = protocol_hparams(protocol, epochs=epochs, hparams=hparams)
    if train_on not in ("train+val", "train"):
        raise ValueError(f"train_on must be 'train+val' or 'train', got {train_on!r}")
    device = _resolve_device(device)
    cuda = device.type == "cuda"
    channels_last = hp["channels_last"] and cuda
    checkpoint_path = Path(checkpoint_path)
    clock = _PhaseClock(device)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if cuda:
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.cuda.reset_peak_memory_stats(device)
    identity = {"protocol": protocol, "seed": seed, "train_on": train_on,
                "hparams": _jsonable(hp)}

    status, reason, phase = "ok", "", "setup"
    history: list[dict] = []
    resumed_from = None
    evaluation = None
    images_now = 0
    model = optimizer = scheduler = train = None
    try:
        with clock.phase("setup"):
            _seed_everything(seed)
            train = _training_split(data, train_on).to(device)
            norm = _normalizer(data.mean, data.std, device)
            model, optimizer, scheduler, steps_per_epoch = _model_and_optimizer(
                make_model, hp, len(train), device, channels_last)
            start_epoch = 0
            if resume and checkpoint_path.exists():
                state = torch.load(checkpoint_path, map_location=device, weights_only=True)
                _check_compatible(state, identity, checkpoint_path)
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                _set_rng_state(state["rng"])
                start_epoch = resumed_from = int(state["epoch"])
                history = list(state["history"])

        phase = "training"
        from tqdm.auto import tqdm
        with tqdm(total=steps_per_epoch * hp["epochs"], initial=steps_per_epoch * start_epoch,
                  desc=f"retrain {protocol}", unit="step", disable=not progress) as pbar:
            for epoch in range(start_epoch, hp["epochs"]):
                lr_start = float(optimizer.param_groups[0]["lr"])
                with clock.phase("train"):
                    stats = _train_epoch(model, optimizer, scheduler, train.images, train.labels,
                                         hp, epoch=epoch, seed=seed, norm=norm, device=device,
                                         pbar=pbar)
                images_now += stats.images
                entry = {"epoch": epoch + 1, "train_loss": stats.loss,
                         "train_accuracy": stats.accuracy,
                         "lr": lr_start,
                         "seconds": clock.laps("train")[-1]}
                if train_on == "train":
                    entry["val_accuracy"] = evaluate(
                        model, data.val.images, data.val.labels, device, mean=data.mean,
                        std=data.std, batch_size=hp["eval_batch_size"], bf16=hp["bf16"],
                        channels_last=hp["channels_last"]).accuracy
                history.append(entry)
                _atomic_save({"format": _CHECKPOINT_FORMAT, **identity, "epoch": epoch + 1,
                              "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                              "history": history}, checkpoint_path)
                pbar.set_postfix(loss=f"{stats.loss:.3f}", acc=f"{stats.accuracy:.3f}")
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, entry)

        phase = "evaluation"
        with clock.phase("eval"):
            evaluation = evaluate(model, data.test.images, data.test.labels, device,
                                  mean=data.mean, std=data.std, batch_size=hp["eval_batch_size"],
                                  bf16=hp["bf16"], channels_last=hp["channels_last"])
    except Exception as e:
        status, reason = _failure(e, device, phase)

    seconds = clock.seconds("setup", "train", "eval")
    seconds["train_all"] = sum(h.get("seconds", 0.0) for h in history)
    state_dict = None
    if status == "ok":
        state_dict = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    peak = _cuda_peak(device)
    del model, optimizer, scheduler, train
    if status == "oom":
        _release_memory(device)
    seconds["total"] = time.perf_counter() - t_start
    ok = status == "ok" and evaluation is not None
    return RetrainResult(
        status=status, reason=reason, protocol=protocol,
        test_accuracy=evaluation.accuracy if ok else None,
        test_loss=evaluation.loss if ok else None,
        final_train_loss=history[-1]["train_loss"] if history else None,
        epochs=len(history), epochs_planned=hp["epochs"], history=history, seconds=seconds,
        images_per_second=images_now / seconds["train"] if seconds["train"] > 0 else None,
        cuda_peak_bytes=peak, device=_device_name(device),
        torch_version=torch.__version__, seed=seed, hparams=hp, train_on=train_on,
        git_commit=_git_commit(), resumed_from_epoch=resumed_from,
        checkpoint_path=str(checkpoint_path), state_dict=state_dict)


def _training_split(data: Dataset, train_on: str) -> Split:
    if train_on == "train":
        return data.train
    return Split(torch.cat([data.train.images, data.val.images]),
                 torch.cat([data.train.labels, data.val.labels]))


def _check_compatible(state: dict, identity: dict, path: Path) -> None:
    if state.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format')!r}")
    diff = [k for k in identity if state.get(k) != identity[k]]
    if diff:
        mine = {k: identity[k] for k in diff if k != "hparams"}
        theirs = {k: state.get(k) for k in diff if k != "hparams"}
        if "hparams" in diff:
            keys = sorted(k for k in identity["hparams"]
                          if state["hparams"].get(k) != identity["hparams"][k])
            mine["hparams"] = {k: identity["hparams"][k] for k in keys}
            theirs["hparams"] = {k: state["hparams"].get(k) for k in keys}
        raise ValueError(f"{path} was written by a different run ({theirs}); this call has "
                         f"{mine}: use resume=False or another checkpoint_path")
