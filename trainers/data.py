"""CIFAR-10 and a synthetic stand-in, as uint8 tensors.

A :class:`Dataset` is a frozen dataclass of three :class:`Split` s (``train``,
``val``, ``test``), each holding ``uint8`` images of shape ``(N, 3, H, W)`` and
``int64`` labels, plus the per-channel ``mean``/``std`` used to normalise on
the fly (fractions of 255, computed on the training split).

* :func:`load_cifar10` reads torchvision's on-disk layout
  (``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``)
  directly with pickle + numpy, without insisting on torchvision's md5 sums, so
  any copy in that layout loads. The 50k training images are split 45k/5k into
  ``train``/``val`` with a fixed seed: proxies score on ``val``; ``test`` (10k)
  is for the full retrain only.
* :func:`synthetic` builds a small learnable 10-class set (class-dependent
  colour and stripe orientation/frequency plus noise) for tests and CPU demos.
"""
from __future__ import annotations

import math
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DataNotFoundError", "Dataset", "Split", "load_cifar10", "synthetic",
           "train_val_indices", "CIFAR10_CLASSES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_FOLDER = "cifar-10-batches-py"
_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_FILE = "test_batch"
_META_FILE = "batches.meta"


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is neither on disk nor downloadable; the message says how to provide it."""


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

    def to(self, device) -> "Dataset":
        """The same data resident on ``device`` (uint8: CIFAR-10 is ~180 MB)."""
        return Dataset(self.train.to(device), self.val.to(device), self.test.to(device),
                       self.mean, self.std, self.classes, self.name)


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


def _missing_message(root: Path, why: str) -> str:
    return (f"CIFAR-10 not found ({why}): expected {root / _FOLDER}/"
            f"{{data_batch_1..5,test_batch,batches.meta}} (torchvision's layout); torchvision downloads "
            f"it there when this machine is online, or copy an existing {_FOLDER} folder there")


def _find_folder(root: Path) -> Path | None:
    """``root/cifar-10-batches-py`` if complete; ``root`` itself if it is that folder."""
    for cand in (root / _FOLDER, root):
        if all((cand / f).is_file() for f in (*_TRAIN_FILES, _TEST_FILE)):
            return cand
    return None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def _read_folder(folder: Path):
    """Arrays of the official pickle format: uint8 NCHW images, int64 labels, class names."""
    parts = [_read_batch(folder / f) for f in _TRAIN_FILES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / _TEST_FILE)
    classes = CIFAR10_CLASSES
    meta = folder / _META_FILE
    if meta.is_file():
        with open(meta, "rb") as f:
            m = pickle.load(f, encoding="bytes")
        names = m.get("label_names", m.get(b"label_names"))
        if names:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return train_x, train_y, test_x, test_y, classes


def load_cifar10(root: str | Path = "data", *, download: bool = False, val_size: int = 5000,
                 split_seed: int = 0) -> Dataset:
    """Load CIFAR-10 from ``root`` (torchvision layout) as a :class:`Dataset`.

    ``root`` may be the parent of ``cifar-10-batches-py`` or that folder itself.
    If the folder is absent and ``download`` is true, torchvision downloads it
    first. Otherwise (or if the download fails) :class:`DataNotFoundError` says
    how to provide it. The 50k training images are split into ``train``
    (``50000 - val_size``) and ``val`` (``val_size``, default 5k) with
    ``split_seed`` (a fixed seed, so every trial is scored on the same images); ``test`` is the official 10k set.
    """
    root = Path(root).expanduser()
    folder = _find_folder(root)
    if folder is None and download:
        created = [p for p in (root, *root.parents) if not p.exists()]
        try:
            # late: torchvision costs ~170 MB resident and only the download needs it here
            import torchvision
            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        except Exception as e:  # noqa: BLE001 - no network, disk full, bad checksum...
            for p in created:    # leave nothing behind: a failed download made these folders
                shutil.rmtree(p, ignore_errors=True)
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataNotFoundError(_missing_message(root, f"download failed: {why}")) from None
        folder = _find_folder(root)
    if folder is None:
        raise DataNotFoundError(_missing_message(root, "no such files"))
    try:
        train_x, train_y, test_x, test_y, classes = _read_folder(folder)
    except Exception as e:
        raise DataNotFoundError(_missing_message(root, f"unreadable {folder}: {e}")) from e
    tr, va = train_val_indices(len(train_y), val_size, split_seed)
    train = Split(torch.from_numpy(train_x[tr]), torch.from_numpy(train_y[tr]))
    val = Split(torch.from_numpy(train_x[va]), torch.from_numpy(train_y[va]))
    test = Split(torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(test_y))
    mean, std = _channel_stats(train.images)
    return Dataset(train, val, test, mean, std, classes, "cifar10")


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
