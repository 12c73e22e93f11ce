"""Every training hyperparameter, in one dict with units, and the named protocols.

:data:`HPARAMS` is the one list of knobs the trainer reads, with its default
and unit; a *protocol* is a named set of overrides of it. The short proxy that
scores a trial is one protocol among the others: it trains on the 45k training
split and scores on the 5k validation split, where a full retrain trains on
all 50k images and scores on the test split.

* ``"proxy"`` - a few fast epochs that rank architectures (in the spirit of
  airbench): large batch, Nesterov SGD with linear warmup and linear decay per
  step, label smoothing, bf16 on CUDA, channels_last.
* ``"fast"`` - what a user can afford for a Pareto set: 40 epochs of the
  proxy's recipe.
* ``"ho-resnet"`` - the HO-ResNet papers (000 §4.1-4.2, 001 §3.1-3.2): SGD lr
  0.1, momentum 0.9, weight decay 1e-4, batch 128, lr x0.1 at epochs
  100/150/200/230, 260 epochs, AutoAugment's CIFAR-10 policy plus crop and flip.
* ``"lm-resnet"`` - LM-ResNet (002 §4, CIFAR-10): as above without
  AutoAugment, lr x0.1 at 80 and 120, 160 epochs.
* ``"lm-resnet-sd"`` - LM-ResNet with stochastic depth (002 §3): as
  ``lm-resnet``, lr x0.1 after epochs 250 and 375, 500 epochs.
* ``"rkcnn"`` - RKCNN on CIFAR (004 §4.1.2): batch 32, Nesterov SGD lr 0.1,
  momentum 0.9, weight decay 1e-4, lr x0.1 at 50% and 75% of 300 epochs,
  crop and flip.
* ``"rkcnn-svhn"`` - RKCNN on SVHN (004 §4.1.2): "On SVHN, we use all the training
  samples without augmentation [...] We add a dropout layer [...] with a dropout rate
  of 0.2 after each convolution layer [...] The models are trained for 40 epochs using
  the MGD with a mini-batch size of 128", with what 004 shares between SVHN and CIFAR:
  "A weight decay of 10^-4 and Nesterov momentum of 0.9 are used. The learning rate is
  set to 0.1 initially and divided by 10 at 50% and 75% of the training procedure."
  Two differences: 004 divides pixels by 255 only, we normalise with the training
  split's mean/std as everywhere; and "all the training samples" includes SVHN's
  ``extra`` images for CliqueNet, which this project does not load.

Which protocol a network's paper used is a property of the network, not of
the trainer: ``studies.retrain(..., protocol="paper")`` chooses per network
(:func:`studies.retrain_protocol.paper_protocol`).

Paper protocols run in fp32, as published (PyTorch uses TF32 convolutions on
Ampere and newer GPUs by default); ``hparams={"bf16": True}`` trades exactness
for speed.
"""
from __future__ import annotations

__all__ = ["HPARAMS", "PROTOCOLS", "merge_hparams", "protocol_hparams"]

HPARAMS: dict = {
    # -- data
    "train_on": "train",       # "train" (45k images) or "train+val" (all 50k, as the papers)
    "score_on": "val",         # split scored at the end: "val" (5k held out) or "test" (10k)
    # -- schedule
    "epochs": 5,               # passes over the training images
    "batch_size": 512,         # images per optimiser step
    "lr": 0.4,                 # peak learning rate per step (0.1 per 128 images, linearly scaled)
    "schedule": "onecycle",    # "onecycle" (per-step warmup + linear decay) or "multistep" (per epoch)
    "warmup_frac": 0.2,        # onecycle: fraction of all steps in linear warmup from ~0 to lr
    "final_lr_frac": 0.0,      # onecycle: learning rate at the last step, as a fraction of lr
    "milestones": [],          # multistep: epochs where lr is multiplied by gamma
    "gamma": 0.1,              # multistep: factor per milestone
    # -- optimiser (SGD)
    "momentum": 0.9,           # SGD momentum coefficient
    "nesterov": True,          # Nesterov momentum
    "weight_decay": 5e-4,      # L2 coefficient added to the gradient (PyTorch SGD convention)
    "decay_1d": False,         # False: no decay on 1-d/scalar parameters (BN, biases, learnable steps)
    "label_smoothing": 0.2,    # fraction of the target mass spread uniformly over the classes
    # -- augmentation (on the device, uint8)
    "crop_pad": 4,             # pixels of zero padding on each side before the random crop
    "flip": True,              # random horizontal flip with probability 1/2
    "autoaugment": False,      # torchvision AutoAugment, CIFAR-10 policy
    "autoaugment_chunk": 64,   # images sharing one sampled AutoAugment sub-policy
    # -- numerics and throughput
    "bf16": True,              # bf16 autocast on CUDA (the CPU always runs fp32)
    "channels_last": True,     # NHWC memory format, on CUDA and on the CPU (where oneDNN's convolutions
                               # train a 100k network 10-30% faster per image in it than in NCHW)
    "drop_last": True,         # drop the last partial batch: one batch shape per epoch
    "eval_batch_size": 1024,   # images per evaluation forward pass
    "nan_check_every": 50,     # optimiser steps between host syncs that look for a nan/inf loss
    # -- the network (the trainer never builds one: the caller applies it to the spec, e.g. studies/retrain.py)
    "dropout": 0.0,            # rate of dropout after each convolution of an RKCNN (ArchSpec.dropout); 0 = none
}

# What the papers' protocols share (000 §4.1 / 001 §3.1; 002 §3-4; 004 §4.1.2 but for its batch and Nesterov).
_PAPER = {
    "train_on": "train+val", "score_on": "test",
    "batch_size": 128, "lr": 0.1, "nesterov": False, "weight_decay": 1e-4, "decay_1d": True,
    "label_smoothing": 0.0, "schedule": "multistep", "gamma": 0.1, "warmup_frac": 0.0,
    "bf16": False,             # fp32 as published
    "drop_last": False,        # every image every epoch, like a DataLoader
    "nan_check_every": 100,
}

PROTOCOLS: dict[str, dict] = {
    "proxy": {**HPARAMS},
    "fast": {**HPARAMS, "train_on": "train+val", "score_on": "test",
             "epochs": 40, "label_smoothing": 0.1, "warmup_frac": 0.15, "nan_check_every": 100},
    # 001 §3.2: "The models were trained with a batch size of 128, starting with an initial learning
    # rate of 0.1, step scheduler with [100, 150, 200, 230], factor 0.1, and 260 epochs trained."
    "ho-resnet": {**HPARAMS, **_PAPER, "epochs": 260, "milestones": [100, 150, 200, 230], "autoaugment": True},
    # 002 §4: "For LM-ResNet on CIFAR10 (CIFAR100), we start with the learning rate of 0.1, divide it
    # by 10 at 80 (150) and 120 (225) epochs and terminate training at 160 (300) epochs."
    "lm-resnet": {**HPARAMS, **_PAPER, "epochs": 160, "milestones": [80, 120]},
    # 002 §3 (stochastic depth): "During training with SGD, the initial learning rate is 0.1, and is
    # divided by a factor of 10 after epoch 250 and 375, and terminated at 500 epochs. In addition, we
    # use a weight decay of 0.0001 and a momentum of 0.9." (multistep epochs count from 0: milestone
    # 250 is the 251st epoch, the first one after epoch 250)
    "lm-resnet-sd": {**HPARAMS, **_PAPER, "epochs": 500, "milestones": [250, 375]},
    # 004 §4.1.2: "A weight decay of 10^-4 and Nesterov momentum of 0.9 are used. The learning rate is
    # set to 0.1 initially and divided by 10 at 50% and 75% of the training procedure." and "On CIFAR,
    # a standard data augmentation scheme is adopted following He et al (2016a). The models are trained
    # for 300 epochs using the MGD with a mini-batch size of 32." (crop and flip; the authors' code
    # decays every parameter and keeps the last partial batch, as _PAPER does)
    "rkcnn": {**HPARAMS, **_PAPER, "epochs": 300, "batch_size": 32, "nesterov": True, "milestones": [150, 225]},
    # 004 §4.1.2: "On SVHN, we use all the training samples without augmentation [...] We add a dropout
    # layer [...] with a dropout rate of 0.2 after each convolution layer [...] The models are trained for
    # 40 epochs using the MGD with a mini-batch size of 128." (50% and 75%: epochs 20 and 30)
    "rkcnn-svhn": {**HPARAMS, **_PAPER, "epochs": 40, "milestones": [20, 30], "nesterov": True,
                   "crop_pad": 0, "flip": False, "dropout": 0.2},
}

MAX_LR = 1000.0        # the highest learning rate a protocol or an override may ask for

_CHOICES = {"train_on": ("train", "train+val"), "score_on": ("val", "test"),
            "schedule": ("onecycle", "multistep")}
# (kind, lowest, highest) of every numeric knob: a value outside would make every run fail
_RANGES = {
    # lr: up to 1000 (10,000x the papers' 0.1), past where runs diverge (with weight decay 1 a test
    # forces one to); finite, so that 1e308 or Infinity is refused instead of failing every trial
    "epochs": (int, 1, 10_000), "batch_size": (int, 1, 65_536), "lr": (float, 1e-12, MAX_LR),
    "warmup_frac": (float, 0.0, 1.0), "final_lr_frac": (float, 0.0, 1.0), "gamma": (float, 0.0, 1.0),
    "momentum": (float, 0.0, 0.999), "weight_decay": (float, 0.0, 1.0), "label_smoothing": (float, 0.0, 0.99),
    "crop_pad": (int, 0, 64), "autoaugment_chunk": (int, 1, 65_536), "eval_batch_size": (int, 1, 65_536),
    "nan_check_every": (int, 1, 100_000), "dropout": (float, 0.0, 0.9),
}
_FLAGS = ("nesterov", "decay_1d", "flip", "autoaugment", "bf16", "channels_last", "drop_last")


def _check(key: str, value) -> None:
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"hyperparameter {key}: {value!r} is not allowed; allowed: {', '.join(_CHOICES[key])}")
    if key in _FLAGS and not isinstance(value, bool):
        raise ValueError(f"hyperparameter {key}: must be true or false, got {value!r}")
    if key in _RANGES:
        kind, lo, hi = _RANGES[key]
        ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)
        if not ok or not lo <= value <= hi or value != value:      # value != value: nan
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"hyperparameter {key}: must be {what} in [{lo:g}, {hi:g}], got {value!r}")
    if key == "milestones" and (not isinstance(value, (list, tuple))
                                or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in value)):
        raise ValueError(f"hyperparameter milestones: must be a list of epoch numbers, got {value!r}")


def merge_hparams(base: dict, overrides: dict | None) -> dict:
    """``base`` updated with ``overrides``; an unknown key or a value out of its range is a
    one-line ValueError naming what is allowed."""
    hp = dict(base)
    for k, v in (overrides or {}).items():
        if k not in hp:
            raise ValueError(f"unknown hyperparameter {k!r}; known: {', '.join(sorted(hp))}")
        _check(k, v)
        hp[k] = v
    return hp


def protocol_hparams(protocol: str, *, epochs: int | None = None, hparams: dict | None = None) -> dict:
    """The hyperparameters of ``protocol`` with ``hparams`` and an ``epochs`` override applied.

    Overriding ``epochs`` of a multistep protocol scales its milestones
    proportionally (``lm-resnet`` at 16 epochs steps at 8 and 12). An unknown
    protocol is a ValueError naming the allowed ones.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[protocol]
    hp = merge_hparams(base, hparams)
    hp["milestones"] = list(hp["milestones"])
    if epochs is not None and int(epochs) != base["epochs"]:
        hp["epochs"] = int(epochs)
        if hp["schedule"] == "multistep" and "milestones" not in (hparams or {}):
            scale = hp["epochs"] / base["epochs"]
            hp["milestones"] = [round(m * scale) for m in base["milestones"]]
    return hp
