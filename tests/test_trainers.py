"""trainers/: data, proxy trainer, full retrain. CPU, tiny nets, synthetic data."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import trainers
from trainers import augment, checkpoint
from trainers.data import train_val_indices
from trainers.train import _lr_factor


def tiny_net(dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Dropout(dropout),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


class NaNAfter(nn.Module):
    """Tiny net whose loss turns nan (or inf) from its ``bad_call``-th training forward."""

    def __init__(self, bad_call: int, value: float = float("nan")):
        super().__init__()
        self.net = tiny_net()
        self.calls, self.bad_call, self.value = 0, bad_call, value

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.bad_call:
                if self.value == float("inf"):   # finite logits whose loss overflows to +inf
                    extreme = torch.full_like(out, -3e38)
                    extreme[:, 0] = 3e38
                    out = out * 0 + extreme
                else:
                    out = out * self.value
        return out


class OOMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny nets gain nothing from intra-op threads, and threads stall badly on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    return trainers.synthetic(n_train=512, n_val=256, n_test=256, image_size=16, seed=0)


SMALL = {"batch_size": 64}


# ----------------------------------------------------------------------------- data
def test_synthetic_is_deterministic_and_well_formed(data):
    again = trainers.synthetic(n_train=512, n_val=256, n_test=256, image_size=16, seed=0)
    other = trainers.synthetic(n_train=512, n_val=256, n_test=256, image_size=16, seed=1)
    assert torch.equal(data.train.images, again.train.images)
    assert not torch.equal(data.train.images, other.train.images)
    assert data.train.images.shape == (512, 3, 16, 16) and data.train.images.dtype == torch.uint8
    assert data.val.labels.dtype == torch.int64 and len(data.test) == 256
    assert set(data.train.labels.tolist()) == set(range(10))
    assert data.num_classes == 10 and len(data.mean) == len(data.std) == 3


def _write_fake_cifar(root: Path, per_batch: int = 20, n_test: int = 10) -> np.ndarray:
    """The official pickle format with tiny batches; returns all training rows (N, 3072)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        rows.append(x)
        batch = {b"batch_label": b"x", b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 b"data": x, b"filenames": [b""] * per_batch}     # bytes keys, as the original
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"labels": list(range(n_test)),
                     "data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(trainers.CIFAR10_CLASSES)}, f)
    return np.concatenate(rows)


def test_fake_cifar_folder_is_read_and_split(tmp_path):
    rows = _write_fake_cifar(tmp_path)
    d = trainers.load_cifar10(tmp_path, val_size=30, split_seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (70, 30, 10)
    assert d.train.images.shape == (70, 3, 32, 32) and d.train.images.dtype == torch.uint8
    assert d.classes == trainers.CIFAR10_CLASSES
    tr, va = train_val_indices(100, 30, 0)
    assert not set(tr) & set(va) and len(set(tr) | set(va)) == 100
    # pixel layout: row i of the pickles is channel-major (CHW) image i
    assert np.array_equal(d.val.images.numpy().reshape(30, -1), rows[va])
    assert np.array_equal(d.train.images.numpy().reshape(70, -1), rows[tr])
    # the split is seeded: same seed same split, another seed another split
    again = trainers.load_cifar10(tmp_path / "cifar-10-batches-py", val_size=30, split_seed=0)
    assert torch.equal(again.val.images, d.val.images)
    # download=True with the folder present reads it without downloading
    other = trainers.load_cifar10(tmp_path, val_size=30, split_seed=1, download=True)
    assert not torch.equal(other.val.images, d.val.images)


def test_missing_data_says_how_to_provide_it(tmp_path):
    with pytest.raises(trainers.DataNotFoundError) as info:
        trainers.load_cifar10(tmp_path / "nowhere", download=False)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in ("cifar-10-batches-py", "data_batch_1..5", "torchvision"):
        assert needle in msg
    assert "shared" not in msg and "download=True" not in msg    # nothing a user of the project lacks
    assert isinstance(info.value, FileNotFoundError)


def test_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    def offline(root, **kw):
        Path(root, "cifar-10-batches-py").mkdir(parents=True)   # as torchvision does before fetching
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    import torchvision
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(trainers.DataNotFoundError, match="download failed: <urlopen error"):
        trainers.load_cifar10(tmp_path / "new" / "data", download=True)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- augmentation
def test_crop_flip_matches_padded_windows():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = augment.crop_flip(x, g, pad=2, flip=True)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert torch.equal(augment.crop_flip(x, g, pad=0, flip=False), x)


def test_autoaugment_runs_on_uint8_batches():
    x = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    out = augment.autoaugment(x, chunk=4)
    assert out.shape == x.shape and out.dtype == torch.uint8


# ----------------------------------------------------------------------------- proxy (protocol "proxy", the default)
def test_proxy_learns_and_is_reproducible(data):
    r = trainers.train(tiny_net, data, epochs=3, device="cpu", seed=0, hparams=SMALL,
                             progress=False)
    assert r.status == "ok" and r.reason == ""
    assert r.val_accuracy > 0.3                      # chance is 0.1
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.epochs == 3 and r.steps == 3 * (512 // 64) and r.images_trained == 3 * 512
    assert r.cuda_peak_bytes is None and r.images_per_second > 0
    assert set(r.seconds) == {"total", "setup", "compile", "train", "eval"}
    d = r.to_dict()
    assert "state_dict" not in d
    json.dumps(d)
    model = tiny_net()
    model.load_state_dict(r.state_dict)
    ev = trainers.evaluate(model, data.val.images, data.val.labels, "cpu",
                           mean=data.mean, std=data.std)
    assert ev.accuracy == pytest.approx(r.val_accuracy) and ev.n == 256
    again = trainers.train(tiny_net, data, epochs=3, device="cpu", seed=0, hparams=SMALL,
                                 progress=False)
    assert again.val_accuracy == r.val_accuracy
    assert all(torch.equal(r.state_dict[k], again.state_dict[k]) for k in r.state_dict)


@pytest.mark.parametrize("value,word", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_proxy_divergence_is_reported_with_epoch_and_step(data, value, word):
    # 8 steps per epoch; the 11th forward is epoch 2, step 3
    r = trainers.train(lambda: NaNAfter(11, value), data, epochs=3, device="cpu",
                             hparams={**SMALL, "nan_check_every": 4}, progress=False)
    assert r.status == "diverged"
    assert "epoch 2, step 3" in r.reason and "global step 11" in r.reason
    assert word in r.reason
    assert r.val_accuracy is None and r.epochs == 1 and r.state_dict is None


def test_proxy_out_of_memory_is_a_status_not_an_exception(data):
    r = trainers.train(OOMNet, data, epochs=1, device="cpu", hparams=SMALL, progress=False)
    assert r.status == "oom" and "out of memory during training" in r.reason
    assert r.val_accuracy is None


def test_unknown_hparam_is_rejected(data):
    with pytest.raises(ValueError, match="batch_size"):
        trainers.train(tiny_net, data, epochs=1, device="cpu", hparams={"batchsize": 8})


# ----------------------------------------------------------------------------- full retrain (checkpointed protocols)
def test_unknown_protocol_names_the_allowed_ones(data, tmp_path):
    with pytest.raises(ValueError) as info:
        trainers.train(tiny_net, data, protocol="imagenet", checkpoint_path=tmp_path / "c.pt")
    for name in ("ho-resnet", "lm-resnet", "fast"):
        assert name in str(info.value)


def test_paper_protocols():
    ho, lm = trainers.PROTOCOLS["ho-resnet"], trainers.PROTOCOLS["lm-resnet"]
    assert (ho["epochs"], ho["milestones"]) == (260, [100, 150, 200, 230])
    assert (ho["lr"], ho["batch_size"]) == (0.1, 128)
    assert ho["autoaugment"] and ho["weight_decay"] == 1e-4 and ho["momentum"] == 0.9
    assert (lm["epochs"], lm["milestones"], lm["autoaugment"]) == (160, [80, 120], False)
    assert trainers.protocol_hparams("lm-resnet", epochs=16)["milestones"] == [8, 12]


def test_rkcnn_protocol_is_004s():
    """004 §4.1.2 (CIFAR): 300 epochs, mini-batch 32, lr 0.1, Nesterov momentum 0.9, weight decay
    1e-4, lr divided by 10 at 50% and 75% of training; crop and flip, no AutoAugment."""
    rk = trainers.PROTOCOLS["rkcnn"]
    assert (rk["epochs"], rk["batch_size"], rk["lr"]) == (300, 32, 0.1)
    assert (rk["nesterov"], rk["momentum"], rk["weight_decay"]) == (True, 0.9, 1e-4)
    assert (rk["milestones"], rk["gamma"], rk["schedule"]) == ([150, 225], 0.1, "multistep")
    assert (rk["crop_pad"], rk["flip"], rk["autoaugment"], rk["label_smoothing"]) == (4, True, False, 0.0)
    assert (rk["train_on"], rk["score_on"]) == ("train+val", "test")
    steps = 1563                                      # 50,000 images / 32, the last batch kept
    lr = [_lr_factor(e * steps, rk, steps, 300 * steps) * rk["lr"] for e in (0, 149, 150, 224, 225, 299)]
    assert lr == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert trainers.protocol_hparams("rkcnn", epochs=4)["milestones"] == [2, 3]     # still 50% and 75%


def test_lm_resnet_stochastic_depth_protocol_is_002s():
    """002 §3: lr 0.1 "divided by a factor of 10 after epoch 250 and 375, and terminated at 500
    epochs", weight decay 1e-4, momentum 0.9 (batch 128 as 002 §4)."""
    sd = trainers.PROTOCOLS["lm-resnet-sd"]
    assert (sd["epochs"], sd["milestones"], sd["lr"], sd["gamma"]) == (500, [250, 375], 0.1, 0.1)
    assert (sd["weight_decay"], sd["momentum"], sd["nesterov"], sd["batch_size"]) == (1e-4, 0.9, False, 128)
    assert not sd["autoaugment"] and sd["score_on"] == "test"
    steps = 391
    lr = [_lr_factor(e * steps, sd, steps, 500 * steps) * sd["lr"] for e in (249, 250, 374, 375, 499)]
    assert lr == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001])      # epoch 251 (1-based) is the first after 250


def test_score_every_epoch_records_the_scored_split_and_changes_nothing(data, tmp_path):
    """A retrain records its test accuracy after every epoch (001 Table 4 counts epochs to an
    accuracy); scoring reads the model in eval mode only, so the weights are those of a run
    that does not score."""
    kw = dict(protocol="fast", epochs=2, device="cpu", seed=1, progress=False, hparams=SMALL)
    plain = trainers.train(tiny_net, data, **kw)
    scored = trainers.train(tiny_net, data, score_every_epoch=True, checkpoint_path=tmp_path / "c.pt", **kw)
    assert [sorted(set(h) - set(p)) for h, p in zip(scored.history, plain.history)] == [["test_accuracy",
                                                                                        "test_loss"]] * 2
    for k, v in plain.state_dict.items():
        assert torch.equal(v, scored.state_dict[k]), k
    assert scored.history[-1]["test_accuracy"] == scored.test_accuracy == plain.test_accuracy
    assert torch.load(tmp_path / "c.pt", weights_only=True)["history"][0]["test_accuracy"] == \
        scored.history[0]["test_accuracy"]


class Killed(Exception):
    pass


@pytest.mark.parametrize("protocol", ["fast", "ho-resnet"])   # ho-resnet: AutoAugment path
def test_kill_and_resume_gives_identical_weights(data, tmp_path, protocol):
    kw = dict(protocol=protocol, epochs=3, device="cpu", seed=3, progress=False, hparams=SMALL)
    make = lambda: tiny_net(dropout=0.2)                      # noqa: E731 - uses the RNG too
    full = trainers.train(make, data, checkpoint_path=tmp_path / "full.pt", **kw)
    assert full.status == "ok" and full.epochs == 3 and full.resumed_from_epoch is None

    def kill_after_two(epoch, entry):
        if epoch == 2:
            raise Killed
    with pytest.raises(Killed):
        trainers.train(make, data, checkpoint_path=tmp_path / "run.pt",
                         on_epoch_end=kill_after_two, **kw)
    resumed = trainers.train(make, data, checkpoint_path=tmp_path / "run.pt", resume=True, **kw)
    assert resumed.status == "ok" and resumed.resumed_from_epoch == 2
    for k, v in full.state_dict.items():
        assert torch.equal(v, resumed.state_dict[k]), k
    assert resumed.test_accuracy == full.test_accuracy
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.pt", "run.pt"]   # no temp files
    json.dumps(resumed.to_dict())


def test_resume_refuses_a_different_run(data, tmp_path):
    kw = dict(protocol="fast", epochs=1, device="cpu", progress=False, hparams=SMALL,
              checkpoint_path=tmp_path / "c.pt")
    trainers.train(tiny_net, data, seed=0, **kw)
    with pytest.raises(ValueError, match="seed"):
        trainers.train(tiny_net, data, seed=1, resume=True, **kw)


def test_checkpoint_of_another_network_is_a_one_line_error(data, tmp_path):
    """A checkpoint whose weights no longer fit the network (the network changed since it was
    written) is refused in one line saying what to do, not a traceback."""
    kw = dict(protocol="fast", epochs=2, device="cpu", progress=False, hparams=SMALL,
              checkpoint_path=tmp_path / "c.pt")
    with pytest.raises(Killed):
        trainers.train(tiny_net, data, on_epoch_end=_kill_at_1, **kw)
    with pytest.raises(ValueError, match=r"c\.pt holds the weights of another network .*delete it"):
        trainers.train(lambda: nn.Sequential(tiny_net(), nn.Linear(10, 10)), data, resume=True, **kw)


def _kill_at_1(epoch, entry):
    if epoch == 1:
        raise Killed


def test_retrain_divergence_keeps_the_last_good_checkpoint(data, tmp_path):
    ckpt = tmp_path / "c.pt"
    # train+val = 768 images, 12 steps per epoch; the 15th forward is epoch 2, step 3
    r = trainers.train(lambda: NaNAfter(15), data, protocol="fast", epochs=3, device="cpu", progress=False,
                         hparams=SMALL, checkpoint_path=ckpt)
    assert r.status == "diverged" and "epoch 2, step 3" in r.reason and r.test_accuracy is None
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.atomic_save({"epoch": 1}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_trainers_import_neither_optuna_nor_models():
    code = ("import sys, trainers; bad = [m for m in sys.modules "
            "if m.split('.')[0] in ('optuna', 'models')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_proxy_on_cuda_uses_bf16_and_reports_memory(data):
    r = trainers.train(tiny_net, data, epochs=2, device="cuda", hparams=SMALL,
                             progress=False)
    assert r.status == "ok" and r.cuda_peak_bytes > 0 and r.val_accuracy > 0.3
    r2 = trainers.train(tiny_net, data, epochs=1, device="cuda", compile=True,
                              hparams=SMALL, progress=False)
    assert r2.status == "ok" and r2.seconds["compile"] > 0
