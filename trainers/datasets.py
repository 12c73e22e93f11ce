"""The data sets a study can search on: CIFAR-10, CIFAR-100, SVHN and a folder of images.

:func:`load_dataset` reads one as a :class:`trainers.Dataset` (uint8 images, int64
labels, class names, mean/std of the training split). The named sets are read
from torchvision's on-disk layout directly (pickle / ``scipy.io.loadmat`` +
numpy, without insisting on torchvision's md5 sums, so any copy in that layout
loads); when their files are missing and ``download`` is true, torchvision
downloads them, and when that fails the error names the layout to place by hand:

* ``cifar10``: ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``,
  50,000 training and 10,000 test images, 10 classes;
* ``cifar100``: ``ROOT/cifar-100-python/{train,test,meta}``, 50,000 / 10,000, the 100 fine
  labels (not the 20 coarse ones);
* ``svhn``: ``ROOT/train_32x32.mat`` and ``ROOT/test_32x32.mat``, 73,257 / 26,032, the
  digits 0-9 (SVHN's label 10 is the digit 0).

SVHN's 531,131 ``extra`` images are not used: they would make the data eight
times larger (1.6 GB as uint8) and every proxy epoch eight times longer, and
what a study ranks is architectures, not the last tenth of a percent. SVHN is
trained without horizontal flips (a flipped digit is another glyph):
:data:`DATA_HPARAMS` holds what a data set changes in every protocol.

Any other name is a folder of the user's images (:mod:`trainers.image_folder`).
From every named set's training images a validation split of 5,000 is held out
with a fixed seed: proxies score on it, the test split is for the full retrain.
"""
from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import DataError, DataNotFoundError, Dataset, Split, _channel_stats, check_fits, train_val_indices
from .image_folder import load_image_folder, scan_folder

__all__ = ["CIFAR10_CLASSES", "DATASETS", "DATA_HPARAMS", "VAL_SIZE", "data_size", "load_cifar10", "load_dataset",
           "parse_dataset"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
VAL_SIZE = 5000            # images held out of a named set's training images for validation
# What a data set changes in every protocol (proxy and retrain): no flips on digits.
DATA_HPARAMS: dict[str, dict] = {"svhn": {"flip": False}}
SVHN_CLASSES = tuple(str(d) for d in range(10))  # SVHN's label 10 is the digit 0, read as 0


@dataclass(frozen=True)
class _Named:
    title: str                        # as papers print it
    folder: str                       # under ROOT ("" = ROOT itself)
    files: str                        # what lies there, as the error message names it
    required: tuple[str, ...]         # the files that must exist there
    n_train: int
    n_test: int
    n_classes: int
    read: Callable[[Path], tuple]     # folder -> (train_x, train_y, test_x, test_y, classes)
    download: Callable[[Path], None]  # torchvision's download into ROOT

    def layout(self, root: Path) -> str:
        where = root / self.folder if self.folder else root
        return f"{where}/{{{self.files}}}"


# --------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------

def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _names(values) -> tuple[str, ...]:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in values)


def _rows(d: dict, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(d["data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32), np.asarray(d[label_key], dtype=np.int64)


def _read_cifar10(folder: Path):
    parts = [_rows(_unpickle(folder / f"data_batch_{i}"), "labels") for i in range(1, 6)]
    test_x, test_y = _rows(_unpickle(folder / "test_batch"), "labels")
    classes = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        classes = _names(_unpickle(folder / "batches.meta").get("label_names") or classes)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), test_x, test_y, classes)


def _read_cifar100(folder: Path):
    train_x, train_y = _rows(_unpickle(folder / "train"), "fine_labels")
    test_x, test_y = _rows(_unpickle(folder / "test"), "fine_labels")
    return train_x, train_y, test_x, test_y, _names(_unpickle(folder / "meta")["fine_label_names"])


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # late: scipy is needed for SVHN's MATLAB files only
    import scipy.io
    m = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    x = np.ascontiguousarray(np.transpose(m["X"], (3, 2, 0, 1)), dtype=np.uint8)   # (H, W, C, N) -> NCHW
    y = np.asarray(m["y"], dtype=np.int64).reshape(-1)
    return x, np.where(y == 10, 0, y)                                             # "10" is the digit 0


def _read_svhn(folder: Path):
    return (*_read_svhn_mat(folder / "train_32x32.mat"), *_read_svhn_mat(folder / "test_32x32.mat"), SVHN_CLASSES)


def _tv_download(cls_name: str, **kw) -> Callable[[Path], None]:
    def fetch(root: Path) -> None:
        # late: torchvision costs ~170 MB resident and only a download needs it here
        import torchvision
        cls = getattr(torchvision.datasets, cls_name)
        for args in kw.get("calls", [{}]):
            cls(str(root), download=True, **args)
    return fetch


_NAMED: dict[str, _Named] = {
    "cifar10": _Named("CIFAR-10", "cifar-10-batches-py", "data_batch_1..5,test_batch,batches.meta",
                      (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"), 50_000, 10_000, 10, _read_cifar10,
                      _tv_download("CIFAR10", calls=[{"train": True}])),
    "cifar100": _Named("CIFAR-100", "cifar-100-python", "train,test,meta", ("train", "test", "meta"),
                       50_000, 10_000, 100, _read_cifar100, _tv_download("CIFAR100", calls=[{"train": True}])),
    "svhn": _Named("SVHN", "", "train_32x32.mat,test_32x32.mat", ("train_32x32.mat", "test_32x32.mat"),
                   73_257, 26_032, 10, _read_svhn, _tv_download("SVHN", calls=[{"split": "train"}, {"split": "test"}])),
}
DATASETS = tuple(_NAMED)


def _find(named: _Named, root: Path) -> Path | None:
    """The folder holding ``named``'s files: ``root/<folder>``, or ``root`` itself."""
    for cand in dict.fromkeys((root / named.folder, root)):
        if all((cand / f).is_file() for f in named.required):
            return cand
    return None


def _missing(named: _Named, root: Path, why: str) -> str:
    place = f"copy an existing {named.folder} folder there" if named.folder else "copy those files there"
    return (f"{named.title} not found ({why}): expected {named.layout(root)} (torchvision's layout); torchvision "
            f"downloads it there when this machine is online, or {place}")


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------

def parse_dataset(text: str) -> tuple[str, str | None]:
    """``--dataset NAME_OR_DIR`` as ``(kind, folder)``: a name of :data:`DATASETS` (folder
    None) or ``("folder", absolute path)``. A name wins over a folder of the same name
    (write ``./svhn`` for the folder). One-line :class:`DataError` for an unknown name or a
    path that does not exist."""
    text = str(text).strip()
    if text in _NAMED:
        return text, None
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder", str(path.resolve())
    looks_like_path = any(c in text for c in "/\\~.") or path.exists()
    if looks_like_path:
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"--dataset {text}: {what}; give a folder with one sub-folder of images per class")
    raise DataError(f"--dataset {text!r}: unknown data set; allowed: {', '.join(DATASETS)}, or a folder with one "
                    f"sub-folder of images per class")


def data_size(kind: str, root: str | Path = "data", image_size: int = 32) -> dict:
    """What loading ``kind`` will hold, before reading any image: ``n_train`` (the whole
    training split, validation included), ``n_test``, ``n_images``, ``image_size``,
    ``num_classes``. A folder is scanned (file names only, so its counts are of files, some of
    which may turn out unreadable; :class:`DataError` when its layout is wrong)."""
    if kind in _NAMED:
        n = _NAMED[kind]
        return dict(n_train=n.n_train, n_test=n.n_test, n_images=n.n_train + n.n_test, image_size=32,
                    num_classes=n.n_classes)
    scan = scan_folder(root)
    return dict(n_train=scan.n_train, n_test=scan.n_test, n_images=scan.n_train + scan.n_test,
                image_size=int(image_size), num_classes=len(scan.classes))


def load_dataset(kind: str, root: str | Path = "data", *, image_size: int = 32, download: bool = True,
                 val_size: int | None = None, split_seed: int = 0, device=None, say=None) -> Dataset:
    """Load ``kind`` (``cifar10``, ``cifar100``, ``svhn``, or ``folder`` with ``root`` the
    folder) as a :class:`trainers.Dataset`. Its size is checked first
    (:func:`trainers.data.check_fits` on ``device``), so a set that would not fit is refused
    before anything is read. ``val_size`` images of the training split are held out for
    validation with ``split_seed`` (default 5,000 for a named set; a folder holds out a
    fraction, see :mod:`trainers.image_folder`). ``image_size`` applies to a folder only.
    ``say`` receives what a folder's loading had to do (conversions, skipped files)."""
    if kind == "folder":
        scan = scan_folder(root)
        check_fits(f"folder {root}", len(scan.train) + len(scan.test), image_size, device)
        return load_image_folder(scan, image_size, val_size=val_size, split_seed=split_seed, say=say)
    if kind not in _NAMED:
        raise DataError(f"unknown data set {kind!r}; allowed: {', '.join(DATASETS)}, or a folder")
    named = _NAMED[kind]
    check_fits(named.title, named.n_train + named.n_test, 32, device)
    root = Path(root).expanduser()
    folder = _find(named, root)
    if folder is None and download:
        created = [p for p in (root, *root.parents) if not p.exists()]
        try:
            named.download(root)
        except Exception as e:  # noqa: BLE001 - no network, disk full, bad checksum...
            for p in created:    # leave nothing behind: a failed download made these folders
                shutil.rmtree(p, ignore_errors=True)
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataNotFoundError(_missing(named, root, f"download failed: {why}")) from None
        folder = _find(named, root)
    if folder is None:
        raise DataNotFoundError(_missing(named, root, "no such files"))
    try:
        train_x, train_y, test_x, test_y, classes = named.read(folder)
    except Exception as e:
        raise DataNotFoundError(_missing(named, root, f"unreadable {folder}: {e}")) from e
    val = VAL_SIZE if val_size is None else int(val_size)
    return _assemble(kind, train_x, train_y, test_x, test_y, classes, val, split_seed)


def _assemble(name: str, train_x, train_y, test_x, test_y, classes, val_size: int, split_seed: int) -> Dataset:
    """Hold ``val_size`` seeded images out of the training arrays; mean/std on the rest."""
    tr, va = train_val_indices(len(train_y), val_size, split_seed)
    train = Split(torch.from_numpy(train_x[tr]), torch.from_numpy(train_y[tr]))
    val = Split(torch.from_numpy(train_x[va]), torch.from_numpy(train_y[va]))
    test = Split(torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(np.asarray(test_y)))
    mean, std = _channel_stats(train.images)
    return Dataset(train, val, test, mean, std, tuple(classes), name)


def load_cifar10(root: str | Path = "data", *, download: bool = False, val_size: int = VAL_SIZE,
                 split_seed: int = 0) -> Dataset:
    """CIFAR-10 from ``root`` (the parent of ``cifar-10-batches-py`` or that folder itself):
    ``load_dataset("cifar10", ...)``, 45k/5k/10k with the default ``val_size``."""
    return load_dataset("cifar10", root, download=download, val_size=val_size, split_seed=split_seed)
