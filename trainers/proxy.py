"""Proxy trainer: a few fast epochs that score one architecture (SPEC §4 accuracy, §5 "Proxy").

In the spirit of airbench (Keller Jordan's fast CIFAR-10 trainers), and meant
to be read top to bottom:

1. hyperparameters live in ONE dict, :data:`DEFAULT_HPARAMS`, units in comments;
2. the training/validation splits are moved to the device once, as uint8;
3. every batch is cropped/flipped on the device and normalised on the fly;
4. SGD with Nesterov momentum, linear warmup then linear decay per step
   (a one-cycle shape that suits the large batch), label smoothing;
5. bf16 autocast and channels_last on CUDA, fp32 on CPU;
6. no per-step host synchronisation: loss is summed on the device and checked
   for nan/inf with one sync every ``nan_check_every`` steps and per epoch;
7. top-1 accuracy on the validation split (never the test split, SPEC §4).

A diverging run ends with ``status="diverged"`` and a reason naming the epoch
and step; CUDA out-of-memory ends with ``status="oom"``. Neither raises: a
study records the failure and goes on (SPEC §5).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ._common import (_RunResult, _PhaseClock, _cuda_peak, _device_name, _failure,
                      _model_and_optimizer, _merge_hparams, _normalizer,
                      _prepare, _autocast, _release_memory, _resolve_device, _seed_everything,
                      _train_epoch, evaluate)
from .data import Dataset

__all__ = ["DEFAULT_HPARAMS", "ProxyResult", "train_proxy"]

DEFAULT_HPARAMS: dict = {
    "epochs": 5,               # passes over the training split (45k images for CIFAR-10)
    "batch_size": 512,         # images per optimiser step
    "lr": 0.4,                 # peak learning rate per step (0.1 per 128 images, linearly scaled)
    "momentum": 0.9,           # SGD momentum coefficient
    "nesterov": True,          # Nesterov momentum
    "weight_decay": 5e-4,      # L2 coefficient, added to the gradient (PyTorch SGD convention)
    "decay_1d": False,         # False: no decay on 1-d/scalar params (BN, biases, learnable steps)
    "label_smoothing": 0.2,    # fraction of target mass spread uniformly over classes
    "schedule": "onecycle",    # "onecycle" (warmup + linear decay, per step) or "multistep"
    "warmup_frac": 0.2,        # fraction of all steps spent in linear warmup from ~0 to lr
    "final_lr_frac": 0.0,      # learning rate at the last step, as a fraction of lr
    "milestones": [],          # epochs where "multistep" multiplies lr by gamma (unused here)
    "gamma": 0.1,              # "multistep" factor (unused here)
    "crop_pad": 4,             # pixels of zero padding on each side before the random crop
    "flip": True,              # random horizontal flip with probability 1/2
    "autoaugment": False,      # torchvision AutoAugment CIFAR-10 policy (off for proxies)
    "autoaugment_chunk": 64,   # images sharing one sampled AutoAugment sub-policy
    "bf16": True,              # bf16 autocast on CUDA (CPU always runs fp32)
    "channels_last": True,     # NHWC memory format on CUDA (ignored on CPU)
    "drop_last": True,         # drop the last partial batch: one batch shape per epoch
    "eval_batch_size": 1024,   # images per evaluation forward pass
    "nan_check_every": 50,     # optimiser steps between host syncs that look for nan/inf loss
}


@dataclass
class ProxyResult(_RunResult):
    """Outcome of one proxy run; :meth:`to_dict` is JSON-able and leaves out ``state_dict``."""

    status: str                          # "ok" | "diverged" | "oom"
    reason: str                          # "" when ok, else e.g. "diverged at epoch 2, step 7 ..."
    val_accuracy: float | None           # top-1 on the val split, fraction 0-1; None if failed
    val_loss: float | None               # mean cross-entropy on the validation split
    train_loss: float | None             # mean training loss of the last completed epoch
    epochs: int                          # completed epochs
    epochs_planned: int
    steps: int                           # optimiser steps taken in completed epochs
    images_trained: int                  # images seen by completed epochs
    seconds: dict[str, float]            # wall seconds: total, setup, compile, train, eval
    images_per_second: float | None      # images_trained / seconds["train"]
    cuda_peak_bytes: int | None          # torch.cuda.max_memory_allocated over the run; None on CPU
    device: str                          # device name, e.g. "NVIDIA H100 80GB HBM3"
    torch_version: str
    hparams: dict
    seed: int
    compiled: bool                       # whether torch.compile was used
    # per epoch: epoch, train_loss, train_accuracy, images, steps, seconds
    history: list[dict] = field(default_factory=list)
    state_dict: dict | None = field(default=None, repr=False, compare=False)  # CPU tensors, when ok


def train_proxy(make_model: Callable[[], nn.Module], data: Dataset, *, epochs: int | None = None,
                device: str | torch.device | None = None, seed: int = 0,
                hparams: dict | None = None, compile: bool = False,
                progress: bool = True) -> ProxyResult:
    """Train ``make_model()`` briefly on ``data.train`` and score it on ``data.val``.

    ``make_model`` is called once, after seeding torch with ``seed``, so the
    same seed gives the same initial weights. ``epochs`` overrides
    ``hparams["epochs"]``; ``hparams`` overrides entries of
    :data:`DEFAULT_HPARAMS` (unknown keys raise ValueError). ``device`` defaults
    to CUDA when available. On CPU the same seed gives the same result; on
    CUDA cuDNN autotuning (enabled here) may change the last bits.

    ``compile=True`` wraps the model in ``torch.compile`` and triggers the
    compilation of the training (forward + backward) and evaluation graphs
    before training, timed as ``seconds["compile"]`` (the model state is
    restored afterwards). It is off by default: every trial is a different
    architecture, so nothing is reused between trials, and compiling a deep
    multi-stage network (e.g. Verner blocks: 14 sub-networks per block) takes
    tens of seconds, comparable with the few-epoch proxy it would speed up.
    ``benchmarks/bench_proxy.py --compile`` measures both sides.

    Never raises for divergence (``status="diverged"``) or out-of-memory
    (``status="oom"``); other exceptions (bugs) propagate.
    """
    t_start = time.perf_counter()
    hp = _merge_hparams(DEFAULT_HPARAMS, hparams)
    if epochs is not None:
        hp["epochs"] = int(epochs)
    device = _resolve_device(device)
    cuda = device.type == "cuda"
    channels_last = hp["channels_last"] and cuda
    clock = _PhaseClock(device)
    if cuda:
        torch.backends.cudnn.benchmark = True        # fixed batch shape: autotuning pays off
        torch.cuda.reset_peak_memory_stats(device)

    status, reason, phase = "ok", "", "setup"
    history: list[dict] = []
    evaluation = None
    model = net = optimizer = scheduler = train = val = None
    try:
        # -- setup: data to the device as uint8, seeded model, optimiser, schedule
        with clock.phase("setup"):
            _seed_everything(seed)
            train, val = data.train.to(device), data.val.to(device)
            norm = _normalizer(data.mean, data.std, device)
            model, optimizer, scheduler, steps_per_epoch = _model_and_optimizer(
                make_model, hp, len(train), device, channels_last)
        net = model

        # -- optional torch.compile, compiled up front so training time is clean
        if compile:
            phase = "compile"
            with clock.phase("compile"):
                net = torch.compile(model, dynamic=False)
                _warm_up_compile(net, model, train, val, hp, norm, device, channels_last)

        # -- train: one generator per epoch seeded by (seed, epoch)
        phase = "training"
        from tqdm.auto import tqdm
        with tqdm(total=steps_per_epoch * hp["epochs"], desc="proxy", unit="step",
                  disable=not progress, leave=False) as pbar:
            for epoch in range(hp["epochs"]):
                with clock.phase("train"):
                    stats = _train_epoch(net, optimizer, scheduler, train.images, train.labels,
                                         hp, epoch=epoch, seed=seed, norm=norm, device=device,
                                         pbar=pbar)
                history.append({"epoch": epoch + 1, "train_loss": stats.loss,
                                "train_accuracy": stats.accuracy, "images": stats.images,
                                "steps": stats.steps})
                pbar.set_postfix(loss=f"{stats.loss:.3f}", acc=f"{stats.accuracy:.3f}")

        # -- evaluate on the validation split
        phase = "evaluation"
        with clock.phase("eval"):
            evaluation = evaluate(net, val.images, val.labels, device, mean=data.mean,
                                  std=data.std, batch_size=hp["eval_batch_size"],
                                  bf16=hp["bf16"], channels_last=hp["channels_last"])
    except Exception as e:
        status, reason = _failure(e, device, phase)

    seconds = {"setup": 0.0, "compile": 0.0, "train": 0.0, "eval": 0.0}
    seconds.update(clock.seconds(*seconds))
    for h, s in zip(history, clock.laps("train")):
        h["seconds"] = s
    state = None
    if status == "ok":
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    peak = _cuda_peak(device)
    del model, net, optimizer, scheduler, train, val
    if status == "oom":
        _release_memory(device)
    images = sum(h["images"] for h in history)
    train_s = sum(h.get("seconds", 0.0) for h in history)
    seconds["total"] = time.perf_counter() - t_start
    return ProxyResult(
        status=status, reason=reason,
        val_accuracy=evaluation.accuracy if evaluation and status == "ok" else None,
        val_loss=evaluation.loss if evaluation and status == "ok" else None,
        train_loss=history[-1]["train_loss"] if history else None,
        epochs=len(history), epochs_planned=hp["epochs"],
        steps=sum(h["steps"] for h in history), images_trained=images,
        seconds=seconds, images_per_second=images / train_s if train_s > 0 else None,
        cuda_peak_bytes=peak, device=_device_name(device), torch_version=torch.__version__,
        hparams=hp, seed=seed, compiled=compile, history=history, state_dict=state)


def _warm_up_compile(net, model, train, val, hp, norm, device, channels_last) -> None:
    """Compile the train graph (forward + backward) and the eval graphs, then restore the model.

    One forward/backward on a training-sized batch (no optimiser step), then
    eval-mode forwards at the evaluation batch sizes; BN statistics are put back
    and gradients cleared, so training starts from the seeded initial state.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = min(hp["batch_size"], len(train))
    x = _prepare(train.images[:b], norm, channels_last)
    model.train()
    with _autocast(device, hp["bf16"]):
        out = net(x)
    torch.nn.functional.cross_entropy(out.float(), train.labels[:b]).backward()
    model.zero_grad(set_to_none=True)
    eb = hp["eval_batch_size"]
    sizes = {min(eb, len(val))} | ({len(val) % eb} if len(val) > eb and len(val) % eb else set())
    model.eval()
    with torch.no_grad(), _autocast(device, hp["bf16"]):
        for size in sizes:
            net(_prepare(val.images[:size], norm, channels_last))
    model.load_state_dict(saved)
    model.train()
