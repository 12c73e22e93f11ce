"""Fixtures several test modules share."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch

from studies.plain_store import is_plain, optuna_storage

ROOT = Path(__file__).resolve().parents[1]


# a study that runs in seconds on a CPU: 60k parameters, 64 synthetic 8x8 images, one rung
TINY_RUN = ["--budget", "60k", "--tolerance", "0.1", "--synthetic", "--synthetic-images", "64",
            "--synthetic-image-size", "8", "--proxy-hparams", '{"batch_size": 32}', "--device", "cpu",
            "--no-progress", "--rungs", "1"]


def cli(*argv: str) -> tuple[int, str, str]:
    """``search.py ARGV`` in this process: (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    import search
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = search.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def refusal(*argv: str) -> str:
    """``search.py ARGV`` refused as every refusal is: exit code 2, one line on stderr (returned)."""
    rc, out, err = cli(*argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1, (rc, out, err)
    return err.strip()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A data home (STACKNAS_HOME) for the module: default databases, runs/ and results/ go there;
    torch on one thread meanwhile (tiny networks: one thread is faster than two fighting)."""
    d = tmp_path_factory.mktemp("home")
    old, threads = os.environ.get("STACKNAS_HOME"), torch.get_num_threads()
    os.environ["STACKNAS_HOME"] = str(d)
    torch.set_num_threads(1)
    yield d
    torch.set_num_threads(threads)
    if old is None:
        os.environ.pop("STACKNAS_HOME", None)
    else:
        os.environ["STACKNAS_HOME"] = old


# --------------------------------------------------------------------------
# the storages a study runs on: the tests of storage guarantees run on each
# --------------------------------------------------------------------------

def _pg_url() -> str:
    url = os.environ.get("STACKNAS_PG_URL")
    if not url:
        pytest.skip("STACKNAS_PG_URL is not set (a PostgreSQL database for the tests)")
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def grpc_proxy():
    """``search.py proxy`` on loopback in front of the tests' PostgreSQL: ``(port, database URL)``."""
    pg, port = _pg_url(), free_port()
    p = subprocess.Popen([sys.executable, str(ROOT / "search.py"), "proxy", "--storage", pg, "--host", "127.0.0.1",
                          "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    else:
        p.kill()
        pytest.fail(f"the gRPC proxy did not start:\n{p.communicate()[0]}")
    yield port, pg
    p.terminate()
    p.wait(timeout=30)


STORAGES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "journal",
            pytest.param("grpc", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORAGES)
def storage(request, tmp_path):
    """A storage URL of each kind a study runs on and a fresh study name: SQLite, PostgreSQL,
    a journal file, and the gRPC proxy in front of PostgreSQL. Database studies are deleted
    afterwards."""
    name = "w-" + uuid.uuid4().hex[:8]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'workers.db'}", name
        return
    if request.param == "journal":
        yield f"journal://{tmp_path / 'workers.log'}", name
        return
    if request.param == "postgres":
        url = db = _pg_url()
    else:
        port, db = request.getfixturevalue("grpc_proxy")
        url = f"grpc://127.0.0.1:{port}?claims={db}"
    yield url, name
    try:
        optuna.delete_study(study_name=name, storage=db)
    except KeyError:
        pass


def load_study(url: str, name: str) -> optuna.Study:
    """Study ``name`` of any of those storage URLs, through Optuna alone (as a user would)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=optuna_storage(url) if is_plain(url) else url)


# --------------------------------------------------------------------------
# tiny data sets in each on-disk layout (tests never download)
# --------------------------------------------------------------------------

def write_cifar100(root, n_train: int = 40, n_test: int = 10, seed: int = 0):
    """torchvision's ``cifar-100-python/{train,test,meta}`` with tiny splits; returns the
    training rows (N, 3072), their fine labels and the 100 fine label names."""
    import pickle
    from pathlib import Path

    import numpy as np
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"fine{i:02d}" for i in range(100)]
    rows = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    fine = rng.integers(0, 100, n_train)
    for split, x, y in (("train", rows, fine),
                        ("test", rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), rng.integers(0, 100, n_test))):
        with open(folder / split, "wb") as f:      # bytes keys, as the original archive
            pickle.dump({b"data": x, b"fine_labels": [int(v) for v in y],
                         b"coarse_labels": [int(v) // 5 for v in y], b"filenames": [b""] * len(y)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in names],
                     b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, f)
    return rows, fine, names


def write_svhn(root, n_train: int = 30, n_test: int = 12, seed: int = 0):
    """SVHN's ``train_32x32.mat`` / ``test_32x32.mat`` (X: 32x32x3xN uint8, y: Nx1 in 1..10,
    10 standing for the digit 0); returns the training X and y as written."""
    from pathlib import Path

    import numpy as np
    import scipy.io
    rng = np.random.default_rng(seed)
    out = None
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        Path(root).mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(Path(root) / f"{split}_32x32.mat"), {"X": x, "y": y})
        out = out or (x, y)
    return out


def write_image_folder(root, classes=("cat", "dog", "emu"), per_class: int = 10, size=(20, 14), mode: str = "RGB",
                       seed: int = 0):
    """A folder of PNGs, one sub-folder per class; each class a distinct colour plus noise."""
    from pathlib import Path

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = Path(root) / name
        d.mkdir(parents=True, exist_ok=True)
        base = np.array([(60 * c + 40) % 256, (90 * c + 120) % 256, (150 * c + 30) % 256])
        for i in range(per_class):
            px = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).convert(mode).save(d / f"{i:03d}.png")
    return Path(root)
