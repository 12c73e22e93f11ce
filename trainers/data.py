"""The data a trainer takes, as uint8 tensors, and a synthetic stand-in.

A :class:`Dataset` is a frozen dataclass of three :class:`Split` s (``train``,
``val``, ``test``), each holding ``uint8`` images of shape ``(N, 3, H, W)`` and
``int64`` labels, plus the per-channel ``mean``/``std`` used to normalise on
the fly (fractions of 255, computed on the training split) and the class names.
The data sets on disk (CIFAR-10/100, SVHN, a folder of images) are read by
:mod:`trainers.datasets`.

* :func:`synthetic` builds a small learnable 10-class set (class-dependent
  colour and stripe orientation/frequency plus noise) for tests and CPU demos.
* :meth:`Dataset.proxy_subset` keeps a seeded subset of the training split (the
  data-subset fidelity of a proxy); validation and test are unchanged.
* :func:`check_fits` refuses, before anything is read, a data set that would not
  fit in memory or on the device.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = ["DataError", "DataNotFoundError", "Dataset", "Split", "check_fits", "synthetic",
           "train_val_indices"]

# Loading reads the files' arrays and then copies the splits out of them, so for a moment
# about three copies of the images are held in host memory (CIFAR-10: 3 x 184 MB).
LOAD_COPIES = 3
# Of the device's free memory the data may take at most half: the network, its activations
# and the optimiser need the rest (a 1M network's training batch of 512 takes gigabytes).
DEVICE_SHARE = 0.5


class DataError(ValueError):
    """The data given cannot be used (a bad folder, too big to hold); the message says what
    is wrong and what is allowed, in one line."""


class DataNotFoundError(FileNotFoundError):
    """A data set is neither on disk nor downloadable; the message says how to provide it."""


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 (N,) matching images, got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device) -> "Split":
        """The same split on ``device`` (no copy if already there)."""
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Dataset:
    """Train/val/test splits plus normalisation statistics (not a ``torch.utils.data.Dataset``).

    ``mean``/``std`` are per-channel (R, G, B) in units of the [0, 1] pixel
    range (pixel / 255), computed on ``train``.
    """

    train: Split
    val: Split
    test: Split
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...]
    name: str = "cifar10"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the images of all three splits (uint8)."""
        return sum(s.images.numel() for s in (self.train, self.val, self.test))

    def to(self, device) -> "Dataset":
        """The same data resident on ``device`` (uint8: CIFAR-10 is ~180 MB)."""
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def proxy_subset(self, n: int, seed: int = 0) -> "Dataset":
        """The same data with ``train`` cut to a fixed seeded subset of ``n`` images (the
        proxy's data-subset fidelity); ``val``, ``test``, mean/std and classes unchanged,
        so every proxy is still scored on the whole validation split."""
        if not 1 <= n <= len(self.train):
            raise DataError(f"--proxy-images: must lie in [1, {len(self.train):,}] (the training split of "
                            f"{self.name}), got {n:,}")
        keep = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(self.train))[:n]))
        return replace(self, train=Split(self.train.images[keep], self.train.labels[keep]))


def available_memory(device=None) -> int | None:
    """Bytes free for data on ``device``: the allocator's free memory on CUDA, else the host's
    available memory (``MemAvailable``); None when it cannot be told."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_fits(what: str, n_images: int, image_size: int, device=None) -> int:
    """Refuse (:class:`DataError`, one line) ``n_images`` RGB images of ``image_size`` pixels
    that would not fit: loading holds about ``LOAD_COPIES`` copies in host memory, and on a
    CUDA device the uint8 images may take at most ``DEVICE_SHARE`` of its free memory.
    Returns their size in bytes. Nothing is read."""
    nbytes = int(n_images) * 3 * int(image_size) ** 2
    hint = ("use a smaller --image-size, fewer images" if what.startswith("folder") else "use a smaller data set")
    host = available_memory("cpu")
    if host is not None and nbytes * LOAD_COPIES > host:
        raise DataError(f"{what}: {n_images:,} images of {image_size}x{image_size} take {_size(nbytes)} as uint8 "
                        f"and loading them needs about {_size(nbytes * LOAD_COPIES)} of memory, but this machine has "
                        f"{_size(host)} available; {hint}, or a machine with more memory")
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        free = available_memory(dev)
        if free is not None and nbytes > DEVICE_SHARE * free:
            raise DataError(f"{what}: {n_images:,} images of {image_size}x{image_size} take {_size(nbytes)} as uint8, "
                            f"more than {DEVICE_SHARE:.0%} of the {_size(free)} free on {dev} (the network needs the "
                            f"rest); {hint}, or --device cpu")
    return nbytes


def train_val_indices(n: int, val_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint split of ``range(n)`` into sorted (train, val) index arrays."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean/std of uint8 (N, 3, H, W) images, in [0, 1] units (chunked)."""
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].to(torch.float32) / 255.0              # pairwise sums: exact enough
        s += x.sum(dim=(0, 2, 3)).double()
        s2 += (x * x).sum(dim=(0, 2, 3)).double()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / count
    std = (s2 / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def synthetic(n_train: int = 2000, n_val: int = 500, n_test: int = 500, image_size: int = 32,
              seed: int = 0, num_classes: int = 10) -> Dataset:
    """A small learnable image set: class = colour + stripe orientation/frequency, plus noise.

    Each class has a base colour (RGB), a stripe orientation and a spatial
    frequency; every image adds a random stripe phase (so it is shift-robust
    under crop augmentation), a random brightness offset and Gaussian pixel
    noise (sigma = 40 grey levels). A tiny CNN beats chance within a few
    epochs. Deterministic in ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, generator=g) * 70 + 93             # grey levels
    angles = torch.arange(num_classes) * (math.pi / num_classes)          # radians
    freqs = 1.5 + (torch.arange(num_classes) % 3).float()                 # cycles per image
    yy, xx = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
    grid = torch.stack([xx, yy]).float() / image_size                     # (2, H, W), in [0, 1)

    def make(n: int) -> Split:
        y = torch.randint(0, num_classes, (n,), generator=g)
        phase = torch.rand(n, generator=g) * 2 * math.pi
        direction = torch.stack([angles[y].cos(), angles[y].sin()], 1)    # (n, 2)
        proj = torch.einsum("nk,khw->nhw", direction, grid)
        stripes = torch.sin(2 * math.pi * freqs[y, None, None] * proj + phase[:, None, None])
        img = colours[y][:, :, None, None] + 45 * stripes[:, None]
        img = img + torch.randn(n, 1, 1, 1, generator=g) * 15               # brightness jitter
        img = img + torch.randn(n, 3, image_size, image_size, generator=g) * 40
        return Split(img.round().clamp(0, 255).to(torch.uint8), y.to(torch.int64))

    train, val, test = make(n_train), make(n_val), make(n_test)
    mean, std = _channel_stats(train.images)
    classes = tuple(f"class{i}" for i in range(num_classes))
    return Dataset(train, val, test, mean, std, classes, "synthetic")
