"""A folder of the user's own images, one sub-folder per class (torchvision's ``ImageFolder`` layout).

Layouts, decided by what the folder holds:

* ``ROOT/train/<class>/...`` and ``ROOT/test/<class>/...``: the two are used as the
  training and test splits as they are (the test split's classes must be among the
  training split's);
* otherwise ``ROOT/<class>/...``: a fixed seeded :data:`TEST_FRACTION` of each class
  (at least one image of a class with two or more) is held out as the test split.

Then, as for every data set, a seeded validation split is held out of the training
images: :data:`VAL_FRACTION` of them. Class names are the sub-folders' names, sorted
(as ``ImageFolder`` orders them); images are every file under a class folder (sub-folders
included, hidden files left out) that Pillow reads: PNG, JPEG, BMP, GIF, TIFF, WebP...
Each is converted to RGB (grayscale, RGBA, palette, CMYK: said once) and resized to
``image_size`` x ``image_size`` once, at load (squashed: the aspect ratio is not kept,
as ``torchvision.transforms.Resize((s, s))`` does; bilinear with Pillow's antialiasing).
Files Pillow cannot read are skipped and said once; a class with no readable image is
refused, naming its first unreadable file. Decoding runs in threads (Pillow releases the
GIL while it decodes); a JPEG is decoded at a reduced scale first when it is much larger.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import DataError, Dataset, Split, _channel_stats, train_val_indices

__all__ = ["TEST_FRACTION", "VAL_FRACTION", "FolderScan", "load_image_folder", "scan_folder"]

TEST_FRACTION = 0.2     # of each class, held out as the test split when there is no train/ + test/ pair
VAL_FRACTION = 0.1      # of the training images, held out for validation (proxies score on it)
SPLIT_SEED = 0          # the seed of both hold-outs: the same folder always gives the same splits


@dataclass(frozen=True)
class FolderScan:
    """A folder's layout before any image is read: class names and candidate files."""

    root: Path
    layout: str                              # "train+test" or "classes"
    classes: tuple[str, ...]
    train: tuple[tuple[Path, int], ...]      # (file, class index); with "classes", every file
    test: tuple[tuple[Path, int], ...]       # with "classes", empty (held out at load)

    @property
    def n_test(self) -> int:
        if self.layout == "train+test":
            return len(self.test)
        counts = np.bincount([c for _, c in self.train], minlength=len(self.classes))
        return int(sum(_n_held_out(int(n)) for n in counts))

    @property
    def n_train(self) -> int:
        return len(self.train) + len(self.test) - self.n_test


def _n_held_out(n: int) -> int:
    """Test images taken from a class of ``n`` (layout "classes"): TEST_FRACTION, at least one
    of a class with two or more, never its last image."""
    return 0 if n < 2 else min(n - 1, max(1, round(TEST_FRACTION * n)))


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _files(folder: Path) -> list[Path]:
    out = []
    for base, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(base, n) for n in sorted(names) if not n.startswith(".")]
    return out


def _classes(folder: Path, what: str) -> list[Path]:
    found = _subfolders(folder)
    if len(found) < 2:
        loose = sum(1 for p in folder.iterdir() if p.is_file() and _visible(p))
        has = f"{len(found)} class sub-folder{'s' if len(found) != 1 else ''}" + (
            f" ({found[0].name})" if found else "") + (f" and {loose} loose file(s)" if loose else "")
        raise DataError(f"{what} has {has}; a data set needs at least two classes, one sub-folder of images "
                        f"per class (torchvision's ImageFolder layout)")
    return found


def scan_folder(root: str | Path) -> FolderScan:
    """The folder's layout and files, from names alone (nothing is decoded); one-line
    :class:`DataError` when it is not a folder or has fewer than two classes or a class
    folder holds no file."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"--dataset {root}: {'is not a folder' if root.exists() else 'does not exist'}; give a "
                        f"folder with one sub-folder of images per class")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    class_dirs = _classes(root / "train" if split else root, str(root / "train") if split else str(root))
    names = tuple(p.name for p in class_dirs)
    index = {n: i for i, n in enumerate(names)}

    def listed(dirs: list[Path]) -> tuple[tuple[Path, int], ...]:
        out = []
        for d in dirs:
            files = _files(d)
            if not files:
                raise DataError(f"class folder {d} holds no files; put its images there or remove it")
            out += [(f, index[d.name]) for f in files]
        return tuple(out)

    train = listed(class_dirs)
    test: tuple = ()
    if split:
        test_dirs = _subfolders(root / "test")
        stray = [d.name for d in test_dirs if d.name not in index]
        if stray:
            raise DataError(f"{root / 'test' / stray[0]}: no class of that name in {root / 'train'} (classes: "
                            f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); test classes must be "
                            f"training classes")
        if not test_dirs:
            raise DataError(f"{root / 'test'} has no class sub-folder; it needs the same one sub-folder per "
                            f"class as {root / 'train'}")
        test = listed(test_dirs)
    return FolderScan(root, "train+test" if split else "classes", names, train, test)


def _decode(path: Path, size: int) -> tuple[np.ndarray | None, str]:
    """``(CHW uint8 array, the file's colour mode)`` or ``(None, why it could not be read)``."""
    # late: Pillow comes with torchvision; only a folder of images needs it
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # palette-with-transparency notes, large-image warnings
            with Image.open(path) as im:
                mode = im.mode
                im.draft("RGB", (size, size))     # JPEG: decode at a reduced scale, never below size
                rgb = im.convert("RGB")
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1), mode
    except Exception as e:  # noqa: BLE001 - not an image, truncated, too large...
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, text


def _read(files: tuple[tuple[Path, int], ...], size: int) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Every file decoded into one uint8 array: ``(images, ok mask, [(path, why)] unreadable,
    [(path, mode)] converted)``."""
    images = np.zeros((len(files), 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    bad, converted = [], []

    def one(i: int):
        return i, _decode(files[i][0], size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, (array, info) in pool.map(one, range(len(files)), chunksize=64):
            if array is None:
                bad.append((files[i][0], info))
            else:
                images[i], ok[i] = array, True
                if info != "RGB":
                    converted.append((files[i][0], info))
    return images, ok, bad, converted


def load_image_folder(root: str | Path | FolderScan, image_size: int = 32, *, val_size: int | None = None,
                      split_seed: int = SPLIT_SEED, say=None) -> Dataset:
    """Read the folder (see the module docstring; or its :func:`scan_folder`) as a
    :class:`trainers.Dataset`; ``val_size`` overrides :data:`VAL_FRACTION` of the training
    images. ``say`` gets one line for the images converted to RGB and one for the files
    skipped, if any."""
    scan = root if isinstance(root, FolderScan) else scan_folder(root)
    size = int(image_size)
    files = scan.train + scan.test
    images, ok, bad, converted = _read(files, size)
    labels = np.array([c for _, c in files], dtype=np.int64)
    is_test = np.arange(len(files)) >= len(scan.train)
    for c, name in enumerate(scan.classes):                 # every class needs a training image
        mine = (labels == c) & ~is_test
        if not ok[mine].any():
            first = next((p, why) for p, why in bad if p.parent.is_relative_to(_class_dir(scan, name)))
            raise DataError(f"class folder {_class_dir(scan, name)} has no image Pillow can read (first "
                            f"unreadable file: {first[0]}: {first[1]})")
    if say is not None and converted:
        modes = ", ".join(sorted({m for _, m in converted}))
        say(f"converted {len(converted):,} image(s) to RGB (modes {modes}; first: {converted[0][0]})")
    if say is not None and bad:
        say(f"skipped {len(bad):,} file(s) Pillow cannot read (first: {bad[0][0]}: {bad[0][1]})")
    images, labels, is_test = images[ok], labels[ok], is_test[ok]
    if scan.layout == "classes":
        is_test = _hold_out_test(labels, len(scan.classes), split_seed)
    if not is_test.any():
        raise DataError(f"{scan.root / 'test'} has no image Pillow can read; the test split needs at least one")
    train_x, train_y = images[~is_test], labels[~is_test]
    n_val = max(1, round(VAL_FRACTION * len(train_y))) if val_size is None else int(val_size)
    tr, va = train_val_indices(len(train_y), n_val, split_seed)
    train = Split(torch.from_numpy(train_x[tr]), torch.from_numpy(train_y[tr]))
    val = Split(torch.from_numpy(train_x[va]), torch.from_numpy(train_y[va]))
    test = Split(torch.from_numpy(np.ascontiguousarray(images[is_test])), torch.from_numpy(labels[is_test]))
    mean, std = _channel_stats(train.images)
    return Dataset(train, val, test, mean, std, scan.classes, "folder")


def _class_dir(scan: FolderScan, name: str) -> Path:
    return (scan.root / "train" / name) if scan.layout == "train+test" else scan.root / name


def _hold_out_test(labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """A seeded :data:`TEST_FRACTION` of each class, as a mask (:func:`_n_held_out` per class)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        mask[rng.permutation(idx)[:_n_held_out(len(idx))]] = True
    return mask
