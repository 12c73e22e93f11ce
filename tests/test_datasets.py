"""trainers/datasets.py and image_folder.py: CIFAR-100, SVHN and a folder of images, each read
from its on-disk layout written here (nothing is downloaded); the checks before loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_cifar100, write_image_folder, write_svhn
from PIL import Image

import trainers
from trainers import DataError, DataNotFoundError, load_dataset, parse_dataset, train_val_indices
from trainers import data as data_module
from trainers.image_folder import TEST_FRACTION, VAL_FRACTION


# ----------------------------------------------------------------------------- named sets
def test_cifar100_reads_the_fine_labels_and_their_names(tmp_path):
    rows, fine, names = write_cifar100(tmp_path, n_train=40, n_test=10)
    d = load_dataset("cifar100", tmp_path, val_size=8, download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (32, 8, 10)
    assert d.num_classes == 100 and d.classes == tuple(names) and d.name == "cifar100"
    tr, va = train_val_indices(40, 8, 0)
    assert np.array_equal(d.train.images.numpy().reshape(32, -1), rows[tr])      # CHW rows, as in CIFAR-10
    assert np.array_equal(d.val.labels.numpy(), fine[va])                         # fine, not coarse labels
    # mean/std of the training split, in [0, 1] units
    assert d.mean[0] == pytest.approx(rows[tr].reshape(32, 3, -1)[:, 0].mean() / 255, abs=1e-5)


def test_svhn_reads_the_mat_files_and_maps_ten_to_zero(tmp_path):
    x, y = write_svhn(tmp_path, n_train=30, n_test=12)
    d = load_dataset("svhn", tmp_path, val_size=5, download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (25, 5, 12)
    assert d.classes == tuple("0123456789") and d.image_size == 32
    tr, va = train_val_indices(30, 5, 0)
    labels = np.where(y[:, 0] == 10, 0, y[:, 0])
    assert np.array_equal(d.train.labels.numpy(), labels[tr]) and d.train.labels.max() <= 9
    # X is (H, W, C, N): image tr[0], channel 2, row 3, column 7
    assert int(d.train.images[0, 2, 3, 7]) == int(x[3, 7, 2, tr[0]])
    assert trainers.DATA_HPARAMS["svhn"] == {"flip": False}                      # digits are not flipped


@pytest.mark.parametrize("kind, cls, layout", [
    ("cifar100", "CIFAR100", "cifar-100-python/{train,test,meta}"),
    ("svhn", "SVHN", "{train_32x32.mat,test_32x32.mat}"),
])
def test_offline_download_names_the_layout_and_leaves_nothing(tmp_path, monkeypatch, kind, cls, layout):
    import torchvision

    def offline(root, **kw):
        (tmp_path / "new").mkdir(exist_ok=True)
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(torchvision.datasets, cls, offline)
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(kind, tmp_path / "new" / "data", download=True)
    msg = str(info.value)
    assert "\n" not in msg and layout in msg and "torchvision" in msg and "download failed: <urlopen" in msg
    assert list(tmp_path.iterdir()) == []


def test_parse_dataset(tmp_path):
    assert parse_dataset("cifar100") == ("cifar100", None)
    (tmp_path / "imgs").mkdir()
    assert parse_dataset(str(tmp_path / "imgs")) == ("folder", str((tmp_path / "imgs").resolve()))
    with pytest.raises(DataError, match=r"unknown data set; allowed: cifar10, cifar100, svhn, or a folder"):
        parse_dataset("cifar1000")
    with pytest.raises(DataError, match="does not exist"):
        parse_dataset(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- a folder of images
def test_folder_without_a_split_holds_out_a_seeded_test_fraction_of_each_class(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("zebra", "ant", "moth"), per_class=10, size=(20, 14))
    said = []
    d = load_dataset("folder", root, image_size=12, say=said.append)
    assert d.classes == ("ant", "moth", "zebra")              # sorted sub-folder names, as ImageFolder
    assert d.train.images.shape[1:] == (3, 12, 12) and d.image_size == 12
    per_class_test = round(TEST_FRACTION * 10)
    assert len(d.test) == 3 * per_class_test and torch.bincount(d.test.labels).tolist() == [per_class_test] * 3
    n_train = 30 - len(d.test)
    assert len(d.val) == round(VAL_FRACTION * n_train) and len(d.train) + len(d.val) == n_train
    assert said == []                                         # nothing converted, nothing skipped
    again = load_dataset("folder", root, image_size=12)
    assert torch.equal(again.test.images, d.test.images) and torch.equal(again.val.labels, d.val.labels)
    # a class's colour survives the resize: "ant" (written as class 1) is class 0 here
    red = d.train.images[d.train.labels == 0].float().mean((0, 2, 3))
    assert red.tolist() == pytest.approx([100, 210, 180], abs=12)


def test_folder_with_train_and_test_uses_them_as_given(tmp_path):
    write_image_folder(tmp_path / "imgs" / "train", per_class=6)
    write_image_folder(tmp_path / "imgs" / "test", classes=("cat", "emu"), per_class=2, seed=1)
    d = load_dataset("folder", tmp_path / "imgs", image_size=8)
    assert d.classes == ("cat", "dog", "emu")
    assert len(d.test) == 4 and sorted(d.test.labels.tolist()) == [0, 0, 2, 2]
    assert len(d.train) + len(d.val) == 18


def test_grayscale_rgba_and_palette_are_converted_and_said_once(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=4)
    Image.new("L", (10, 10), 128).save(root / "a" / "gray.png")
    Image.new("RGBA", (10, 10), (10, 20, 30, 0)).save(root / "b" / "alpha.png")
    Image.new("P", (10, 10), 3).save(root / "b" / "palette.gif")
    (root / "b" / "notes.txt").write_text("not an image")
    said = []
    d = load_dataset("folder", root, image_size=8, say=said.append)
    assert len(d.train) + len(d.val) + len(d.test) == 11
    converted = [s for s in said if s.startswith("converted")]
    assert len(converted) == 1 and "3 image(s)" in converted[0] and "L" in converted[0] and "RGBA" in converted[0]
    skipped = [s for s in said if s.startswith("skipped")]
    assert len(skipped) == 1 and "notes.txt" in skipped[0]


@pytest.mark.parametrize("make, fragment", [
    (lambda r: None, "does not exist"),
    (lambda r: write_image_folder(r, classes=("only",)), "has 1 class sub-folder (only); a data set needs at least "
                                                        "two classes"),
    (lambda r: (write_image_folder(r, classes=("a",)), (r / "b").mkdir(), (r / "b" / "x.jpg").write_text("no")),
     "has no image Pillow can read (first unreadable file: "),
    (lambda r: (write_image_folder(r, classes=("a",)), (r / "b").mkdir()), "holds no files"),
    (lambda r: (write_image_folder(r / "train", classes=("a", "b")), write_image_folder(r / "test", classes=("c",))),
     "test classes must be training classes"),
])
def test_bad_folders_are_one_line_errors(tmp_path, make, fragment):
    root = tmp_path / "imgs"
    make(root)
    with pytest.raises(DataError) as info:
        load_dataset("folder", root)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    if "first unreadable" in fragment:
        assert str(root / "b" / "x.jpg") in str(info.value)


# ----------------------------------------------------------------------------- size and subsets
def test_a_data_set_that_would_not_fit_is_refused_before_reading(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", per_class=3)
    monkeypatch.setattr(data_module, "available_memory", lambda device=None: 1_000_000)
    read = []
    monkeypatch.setattr("trainers.image_folder._read", lambda *a: read.append(a))
    with pytest.raises(DataError) as info:
        load_dataset("folder", root, image_size=256)
    msg = str(info.value)
    # 9 images x 3 x 256 x 256 = 1,769,472 bytes, loading about three copies, against 1 MB available
    assert "9 images of 256x256 take 1.7 MiB as uint8 and loading them needs about 5.1 MiB" in msg
    assert "this machine has 1.0 MiB available" in msg
    assert "--image-size" in msg and read == []
    with pytest.raises(DataError, match="CIFAR-100: 60,000 images of 32x32"):
        load_dataset("cifar100", tmp_path)


def test_proxy_subset_is_seeded_and_keeps_validation(tmp_path):
    d = trainers.synthetic(n_train=200, n_val=50, n_test=50, image_size=8)
    a, b = d.proxy_subset(64), d.proxy_subset(64)
    assert len(a.train) == 64 and torch.equal(a.train.images, b.train.images)
    assert a.val is d.val and a.test is d.test and a.mean == d.mean
    kept = {tuple(x.flatten().tolist()) for x in a.train.images}
    assert kept <= {tuple(x.flatten().tolist()) for x in d.train.images}
    with pytest.raises(DataError, match=r"--proxy-images: must lie in \[1, 200\]"):
        d.proxy_subset(201)
