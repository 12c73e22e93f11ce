"""The data set as a stored choice of the study: a study on a folder of images end to end
(run, resume, retrain under 004's SVHN protocol, export), the refusals before anything is
created, the proxy data subset, the CPU batch cap, the spec's RKCNN dropout.

CPU only: three classes of 10x10 PNGs read at 8x8, a 60k-parameter budget.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import write_cifar100, write_image_folder
from torch import nn

import models
import search
import studies
import trainers
from models import ArchSpec, SpecError, StageSpec, presets
from studies.config import RunOptions, StudySettings
from studies.objective import network_spec, proxy_data
from studies.retrain import run_dir
from studies.session import Session

PRESET = "rkcnn-i-2_2_2-k26_28_28"
TINY = ["--budget", "60k", "--tolerance", "0.1", "--proxy-hparams", '{"batch_size": 8}', "--device", "cpu",
        "--no-progress", "--rungs", "1", "--proxy-epochs", "1"]


def cli(*argv: str) -> tuple[int, str, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = search.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def folder_study(home):
    root = write_image_folder(home / "imgs", classes=("emu", "cat", "dog"), per_class=12, size=(10, 10))
    rc, out, err = cli("run", "--study", "imgs", "--trials", "3", "--dataset", str(root), "--image-size", "8",
                       "--proxy-images", "16", "--enqueue-presets", PRESET, *TINY)
    assert rc == 0, err
    return studies.open_study("imgs"), root


def test_the_study_stores_its_data_and_every_spec_follows_it(folder_study):
    study, root = folder_study
    cfg = StudySettings.load(study)
    assert cfg.data == {"kind": "folder", "root": str(root.resolve()), "image_size": 8,
                        "classes": ["cat", "dog", "emu"]}
    assert cfg.proxy_images == 16 and cfg.num_classes == 3
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(done) >= 2
    for t in done:
        spec = ArchSpec.from_json(t.user_attrs["spec"])
        assert (spec.num_classes, spec.image_size) == (3, 8)
        assert t.user_attrs["params"] == models.measure.count_params(models.build(spec, device="meta"))
    preset = next(t for t in done if t.user_attrs.get("preset") == PRESET)
    assert preset.user_attrs["paper_params"] is None and preset.user_attrs["paper_accuracy"] is None


def test_proxies_train_on_the_seeded_subset_and_score_on_the_whole_validation_split(folder_study):
    study, _ = folder_study
    cfg = StudySettings.load(study)
    full = studies.objective.load_data(cfg.data)
    data = proxy_data(Session("imgs", studies.resolve_url("imgs", None), cfg, "cpu", dict(cfg.data)))
    assert len(data.train) == 16 < len(full.train)
    assert data.val is full.val and data.test is full.test


@pytest.mark.parametrize("extra, fragment", [
    (["--dataset", "cifar100"], "was created on the folder"),
    (["--image-size", "16"], "was created with --image-size 8"),
    (["--proxy-images", "20"], "was created with --proxy-images 16"),
    (["--synthetic"], "was created on the folder"),
])
def test_a_resume_refuses_other_data(folder_study, extra, fragment):
    line = one_line_error(*cli("run", "--study", "imgs", "--trials", "4", "--device", "cpu", "--no-progress",
                               *extra)[::2])
    assert fragment in line
    assert len(studies.open_study("imgs").get_trials()) == 3


def test_retrain_under_the_svhn_protocol_and_export_need_no_data_flag(folder_study, tmp_path):
    study, root = folder_study
    number = next(t.number for t in study.get_trials() if t.user_attrs.get("preset") == PRESET)
    [entry] = studies.retrain("imgs", protocol="rkcnn-svhn", epochs=1, numbers=[number], progress=False,
                              device="cpu", say=lambda m: None)
    assert entry["status"] == "ok", entry
    trained = ArchSpec.from_json(entry["spec"])
    assert trained.dropout == 0.2 and dataclasses.replace(trained, dropout=0.0) == ArchSpec.from_json(
        study.trials[number].user_attrs["spec"])
    assert json.loads((run_dir("imgs", number, "rkcnn-svhn-1ep") / "spec.json").read_text())[
        "dropout"] == 0.2
    out = tmp_path / "winner"
    rc, _, err = cli("export", "--study", "imgs", "--trial", str(number), "--out", str(out))
    assert rc == 0, err
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["classes"] == ["cat", "dog", "emu"] and pre["image_size"] == [8, 8] and pre["num_classes"] == 3
    assert json.loads((out / "spec.json").read_text())["dropout"] == 0.2
    card = (out / "model_card.md").read_text()
    assert f"the folder {root.resolve()} (3 classes: 0 cat, 1 dog, 2 emu; 8x8 RGB inputs)" in card
    # the card's example prints the class name from preprocess.json, at this study's input size
    # (tests/test_export.py runs it as written)
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert '["classes"]' in code and ".resize((8, 8))" in code


def test_the_python_api_takes_the_same_keyword(folder_study):
    with pytest.raises(ValueError, match="was created on the folder .*; --dataset svhn cannot change that"):
        studies.run("imgs", 4, dataset="svhn", device="cpu", progress=False)


def test_run_help_names_the_data_choices():
    rc, out, _ = cli("run", "--help")
    text = " ".join(out.split())
    assert rc == 0
    for needle in ("--dataset NAME_OR_DIR", "cifar10, cifar100, svhn (its train split; extra is not used)",
                   "20% of each class is held out as test", "--image-size PIXELS", "--proxy-images N"):
        assert needle in text, needle


# ----------------------------------------------------------------------------- refusals
def _unreadable(root):
    write_image_folder(root, classes=("a",))
    (root / "b").mkdir()
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")


@pytest.mark.parametrize("name, make, extra, fragment", [
    ("missing", None, ["--dataset", "./no/such/folder"], "--dataset ./no/such/folder: does not exist"),
    ("unknown", None, ["--dataset", "cifar1000"], "unknown data set; allowed: cifar10, cifar100, svhn, or a folder"),
    ("one", lambda r: write_image_folder(r, classes=("a",)), [], "at least two classes"),
    ("broken", _unreadable, [], "has no image Pillow can read (first unreadable file: "),
    ("subset", lambda r: write_image_folder(r, per_class=4), ["--proxy-images", "500"],
     "--proxy-images 500: more than the"),
    ("size", None, ["--dataset", "cifar100", "--image-size", "64"], "--image-size applies to a folder of images"),
    ("both", None, ["--synthetic", "--dataset", "svhn"], "--synthetic and --dataset svhn exclude each other"),
])
def test_bad_data_is_refused_in_one_line_before_anything_is_created(home, name, make, extra, fragment):
    root = home / f"bad-{name}"
    if make is not None:
        make(root)
        extra = ["--dataset", str(root), *extra]
    line = one_line_error(*cli("run", "--study", f"bad-{name}", "--trials", "1", *extra, *TINY)[::2])
    assert fragment in line
    if name == "broken":
        assert str(root / "b" / "broken.png") in line
    assert not (home / f"bad-{name}.db").exists()


def test_data_too_big_for_the_machine_is_refused_before_the_study(home, monkeypatch):
    write_cifar100(home / "c100")
    monkeypatch.setattr(trainers.data, "available_memory", lambda device=None: 100 * 2**20)
    line = one_line_error(*cli("run", "--study", "big", "--trials", "1", "--dataset", "cifar100", "--data",
                               str(home / "c100"), *TINY)[::2])
    assert "CIFAR-100: 60,000 images of 32x32 take 175.8 MiB as uint8" in line and "100.0 MiB available" in line
    assert not (home / "big.db").exists()


# ----------------------------------------------------------------------------- settings
def test_on_a_cpu_the_proxy_batch_is_capped_and_svhn_is_not_flipped():
    data = trainers.synthetic(n_train=2000, n_val=64, n_test=64, image_size=8)
    opts = RunOptions.from_user(study="x", trials=1, dataset="svhn")
    cpu = StudySettings.from_options(opts, "cpu", data).proxy_hparams
    assert cpu == {"batch_size": 32, "lr": 0.025, "eval_batch_size": 64, "flip": False}
    assert StudySettings.from_options(opts, "cuda", data).proxy_hparams == {"flip": False}   # 512, as today
    given = RunOptions.from_user(study="x", trials=1, proxy_hparams={"batch_size": 64})
    assert StudySettings.from_options(given, "cpu", data).proxy_hparams["lr"] == 0.05   # scaled with the batch
    sub = RunOptions.from_user(study="x", trials=1, proxy_images=256)
    assert StudySettings.from_options(sub, "cuda", data).proxy_hparams == {"batch_size": 32, "lr": 0.025}


def test_the_svhn_protocol_is_004s():
    hp = trainers.protocol_hparams("rkcnn-svhn")
    assert {k: hp[k] for k in ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "milestones",
                               "gamma", "crop_pad", "flip", "autoaugment", "dropout", "schedule")} == {
        "epochs": 40, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
        "milestones": [20, 30], "gamma": 0.1, "crop_pad": 0, "flip": False, "autoaugment": False, "dropout": 0.2,
        "schedule": "multistep"}


def test_the_paper_protocol_of_an_rkcnn_on_svhn_is_004s_svhn_protocol():
    from studies.retrain_protocol import paper_protocol
    rkcnn = presets.get("rkcnn-r-2_2_2-k26_28_28")
    assert paper_protocol(rkcnn, "svhn") == "rkcnn-svhn" and paper_protocol(rkcnn, "cifar100") == "rkcnn"
    assert paper_protocol(presets.get("lm-resnet-56"), "svhn") == "lm-resnet"      # no SVHN protocol in 002


def test_rkcnn_dropout_follows_every_convolution_and_is_saved():
    spec = dataclasses.replace(presets.get("rkcnn-r-2_2_2-k26_28_28"), dropout=0.2)
    assert ArchSpec.from_json(spec.to_json()).dropout == 0.2
    net = models.build(spec)
    units = [m for m in net.modules() if isinstance(m, models._rkcnn.BottleneckUnit)]
    transitions = [m for m in net.modules() if isinstance(m, models._rkcnn.RKCNNTransition)]
    assert len(units) == 3 * 2 * 2 and len(transitions) == 2          # 3 periods of s=2, phases I and II
    for unit in units:
        layers = list(unit)
        convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
        assert len(convs) == 2 and all(isinstance(layers[i + 1], nn.Dropout) and layers[i + 1].p == 0.2
                                       for i in convs)
    assert all(isinstance(t.dropout, nn.Dropout) and t.dropout.p == 0.2 for t in transitions)
    # same parameters with and without: the rate changes no count
    assert models.measure.count_params(net) == models.measure.count_params(models.build(presets.get(
        "rkcnn-r-2_2_2-k26_28_28")))
    resnet = ArchSpec(stages=(StageSpec(width=8),))
    with pytest.raises(SpecError, match="dropout: applies to RKCNN periods and transitions"):
        dataclasses.replace(resnet, dropout=0.2).validate()
    with pytest.raises(SpecError, match=r"dropout: must be a number in \[0, 0.9\]"):
        dataclasses.replace(spec, dropout=1.5).validate()
    assert network_spec(resnet, {"dropout": 0.2}) is resnet               # a ResNet trains without
    assert network_spec(presets.get("rkcnn-r-2_2_2-k26_28_28"), {"dropout": 0.2}).dropout == 0.2
