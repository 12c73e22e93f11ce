"""studies/export.py: spec, weights, torch.export program and model card.

Nothing is trained: a tiny network's perturbed initial weights stand in for
the trained ones. ``model.pt2`` is loaded in a fresh, isolated Python that
cannot import this project and must give the project's logits.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import optuna
import pytest
import torch

import models
import search
from models import ArchSpec, StageSpec
from studies.export import FILES, select_trial

SPEC = ArchSpec(stages=(StageSpec(scheme="euler", blocks=1, width=8),), name="tiny")
ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("models", "search_space", "trainers", "studies", "search")


def trained_weights(spec: ArchSpec) -> dict:
    """Initial weights moved away from their init (and BN statistics set), as training would."""
    net = models.build(spec)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=gen) * 0.1
                t.copy_(t.abs() + 0.5 if name.endswith("running_var") else t + noise)
    return {k: v.clone() for k, v in net.state_dict().items()}


def attrs(spec: ArchSpec, acc: float, **extra) -> dict:
    """A completed trial's user attrs as ``studies.objective.prepare`` and ``train`` write them."""
    net = models.build(spec)
    return {"spec": spec.to_json(), "architecture": models.describe(spec), "scheme": spec.stages[0].scheme,
            "params": models.measure.count_params(net), "macs": 123_456, "inference_bytes_per_image": 65_536,
            "training_bytes_per_image": 300_000, "proxy_epochs": 2, "proxy_seconds": 1.5, "device": "cpu",
            "status": "ok", "val_accuracy@2": acc, "val_accuracy": acc, **extra}


DATA = {"name": "cifar10", "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}


def retrain_entry(number: int, test_accuracy: float, weights: Path, epochs: int = 40, data=DATA) -> dict:
    """A finished retrain as ``studies.retrain`` stores it (study user attr ``retrain:N:LABEL``)."""
    return {"number": number, "protocol": "fast", "label": "fast", "status": "ok", "reason": "",
            "test_accuracy": test_accuracy, "epochs": epochs, "weights_path": str(weights),
            "finished_at": "2026-01-01T00:00:00+00:00", "data": data}


def normalised(x: torch.Tensor, data=DATA) -> torch.Tensor:
    return (x - torch.tensor(data["mean"]).view(1, 3, 1, 1)) / torch.tensor(data["std"]).view(1, 3, 1, 1)


@pytest.fixture()
def study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'exp.db'}"
    s = optuna.create_study(study_name="exp", storage=storage, directions=["maximize", "minimize"])
    s.set_user_attr("memory", "inference")
    weights = tmp_path / "runs" / "trial-0.pt"
    weights.parent.mkdir()
    torch.save(trained_weights(SPEC), weights)
    ct = optuna.trial.create_trial
    # 0: on the front, retrained, weights   1: on the front (more accurate, more memory), no weights
    s.add_trial(ct(values=[0.40, 65_536], user_attrs=attrs(SPEC, 0.40)))
    s.set_user_attr("retrain:0:fast", retrain_entry(0, 0.55, weights))
    wide = ArchSpec(stages=(StageSpec(scheme="rk4", blocks=1, width=8),))
    s.add_trial(ct(values=[0.60, 90_000], user_attrs={**attrs(wide, 0.60), "inference_bytes_per_image": 90_000}))
    s.add_trial(ct(state=optuna.trial.TrialState.FAIL, values=None,
                   user_attrs=dict(fail_reason="diverged: loss nan at epoch 1 step 3\nmore detail")))
    s.add_trial(ct(state=optuna.trial.TrialState.PRUNED, values=None,
                   user_attrs=dict(fail_reason="cannot meet the budget within 2%")))
    return storage, tmp_path


def cli(*argv: str) -> tuple[int, str, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = search.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


ISOLATED = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):   # the project must not be needed, however it is installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked}:
            raise ImportError(f"{{name}} blocked: the export must load with torch alone")
sys.meta_path.insert(0, Block())
try:
    import models
except ImportError:
    pass
else:
    sys.exit("the project is importable in the isolated interpreter")
import torch
x = torch.load("input.pt")
expected = torch.load("expected.pt")
program = torch.export.load("{pt2}")
got = program.module()(x)
torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
print("same logits", tuple(got.shape))
"""


def test_export_loads_with_torch_alone(study):
    storage, tmp = study
    out = tmp / "export"
    rc, stdout, err = cli("export", "--study", "exp", "--storage", storage, "--out", str(out))
    assert rc == 0, err
    assert "trial 0" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)

    # the project's network: spec from the export, the "trained" weights of the study
    spec = ArchSpec.from_json((out / "spec.json").read_text())
    assert spec == SPEC
    net = models.build(spec).eval()
    net.load_state_dict(trained_weights(SPEC))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))  # batch 3: not the export's 2
    with torch.no_grad():
        expected = net(normalised(x))               # model.pt2 takes [0, 1] images and normalises inside
    assert not torch.allclose(expected, models.build(spec).eval()(normalised(x)))  # not the init weights

    # models.build(spec) + weights.pt, on normalised images
    rebuilt = models.build(ArchSpec.from_json((out / "spec.json").read_text())).eval()
    rebuilt.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(normalised(x)), expected, atol=1e-5, rtol=0)
    pre = json.loads((out / "preprocess.json").read_text())
    assert (pre["mean"], pre["std"], pre["classes"]) == (DATA["mean"], DATA["std"], DATA["classes"])
    assert pre["input_range"] == [0.0, 1.0] and pre["layout"] == "NCHW" and pre["image_size"] == [32, 32]

    # model.pt2 in a fresh, isolated interpreter that cannot import the project
    work = tmp / "fresh"
    work.mkdir()
    torch.save(x, work / "input.pt")
    torch.save(expected, work / "expected.pt")
    script = work / "check.py"
    script.write_text(ISOLATED.format(blocked=repr(set(PROJECT_PACKAGES)), pt2=(out / "model.pt2").as_posix()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    res = subprocess.run([sys.executable, "-I", str(script)], cwd=work, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "same logits (3, 10)" in res.stdout


def test_model_card_and_best_rule(study):
    storage, tmp = study
    out = tmp / "best"
    assert cli("export", "--study", "exp", "--storage", storage, "--best", "--out", str(out))[0] == 0
    card = (out / "model_card.md").read_text()
    assert card.startswith("# Euler x1 / 8ch")
    assert "highest validation accuracy" in card and "test accuracy is never used to choose" in card
    assert "55.00%" in card and "40.00%" in card
    assert "torch.export.load(\"model.pt2\").module()" in card and "models.build(spec)" in card
    assert "logits" in card and "exactly 32x32" in card and "resize" in card
    assert "40 epochs" in card and "Trained on CIFAR-10 (10 classes: 0 airplane, 1 automobile," in card and "synthetic" not in card
    assert f"| parameters | {models.measure.count_params(models.build(SPEC)):,} |" in card
    assert "on the accuracy-vs-memory Pareto front" in card
    # the network drawn from its spec, beside the card that shows it
    assert "](network.svg)" in card
    drawing = ET.fromstring((out / "network.svg").read_text())
    assert [int(e.get("data-width")) for e in drawing.iter() if e.get("data-part") == "stage"] == list(SPEC.widths)

    # no front trial retrained: the most accurate front trial is chosen, and it has no weights
    s = optuna.load_study(study_name="exp", storage=storage)
    s.add_trial(optuna.trial.create_trial(values=[0.9, 10.0], user_attrs={**attrs(SPEC, 0.9),
                                                                        "inference_bytes_per_image": 10}))
    trial, rule = select_trial(s)
    assert trial.number == 4 and "highest validation accuracy" in rule and "none of its" in rule


def test_card_names_the_protocol_and_never_calls_a_short_run_full(study):
    """A 2-epoch retrain of the 40-epoch `fast` protocol is a short run, and the card says so."""
    storage, tmp = study
    s = optuna.load_study(study_name="exp", storage=storage)
    entry = retrain_entry(0, 0.55, Path(s.user_attrs["retrain:0:fast"]["weights_path"]), epochs=2)
    s.set_user_attr("retrain:0:fast-2ep", {**entry, "label": "fast-2ep", "epochs_planned": 2, "protocol_epochs": 40,
                                           "finished_at": "2026-01-02T00:00:00+00:00"})
    out = tmp / "short"
    assert cli("export", "--study", "exp", "--storage", storage, "--trial", "0", "--out", str(out))[0] == 0
    card = (out / "model_card.md").read_text()
    assert "retrained with the `fast` protocol, 2 of the protocol's 40 epochs: a short run" in card
    assert "55.00% (`fast` protocol, 2 of the protocol's 40 epochs: a short run)" in card
    assert "full" not in card.lower()


def test_best_is_chosen_by_validation_never_by_test(study):
    """Two retrained front trials: the one with the better test accuracy but the worse validation
    accuracy must not win (choosing on the test set biases the reported figure upward)."""
    storage, tmp = study
    s = optuna.load_study(study_name="exp", storage=storage)
    weights = tmp / "runs" / "trial-1.pt"
    wide = ArchSpec(stages=(StageSpec(scheme="rk4", blocks=1, width=8),))
    torch.save(trained_weights(wide), weights)
    s.set_user_attr("retrain:1:fast", retrain_entry(1, 0.50, weights))       # val 0.60, test 0.50
    trial, rule = select_trial(s)                                           # trial 0: val 0.40, test 0.55
    assert trial.number == 1 and "validation" in rule
    out = tmp / "best"
    rc, stdout, err = cli("export", "--study", "exp", "--storage", storage, "--out", str(out))
    assert rc == 0 and "trial 1" in stdout, err
    card = (out / "model_card.md").read_text()
    assert "50.00%" in card and "55.00%" not in card                          # only the chosen one's test figure
    help_text = subprocess.run([sys.executable, str(ROOT / "search.py"), "export", "--help"],
                               capture_output=True, text=True, timeout=120).stdout
    assert "validation accuracy" in " ".join(help_text.split()) and "never used to choose" in help_text


def _card_snippet(card: str) -> str:
    """The python block of the card's "Using it" section, as a user would copy it."""
    section = card.split("## Using it", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_card_example_classifies_a_png_with_torch_alone(study):
    """The card's five lines, run as written in an isolated interpreter that cannot import the
    project, on a PNG from disk: the class printed is the network's on the normalised image."""
    from PIL import Image
    storage, tmp = study
    out = tmp / "export"
    assert cli("export", "--study", "exp", "--storage", storage, "--out", str(out))[0] == 0
    snippet = _card_snippet((out / "model_card.md").read_text())
    assert len(snippet.strip().splitlines()) == 5
    rng = torch.Generator().manual_seed(3)
    pixels = (torch.rand(32, 32, 3, generator=rng) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(out / "image.png")
    script = out / "use.py"
    blocker = ISOLATED.split("import torch\n")[0].format(blocked=repr(set(PROJECT_PACKAGES)), pt2="")
    script.write_text(blocker + snippet)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    res = subprocess.run([sys.executable, "-I", str(script)], cwd=out, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "not writable" not in res.stderr and "Warning" not in res.stderr     # the lines run clean
    net = models.build(SPEC).eval()
    net.load_state_dict(trained_weights(SPEC))
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        expected = DATA["classes"][int(net(normalised(x)).argmax(1))]
    assert res.stdout.strip() == expected

    # the input size is fixed: another size fails, as the card says
    program = torch.export.load(out / "model.pt2").module()
    with pytest.raises(Exception):
        program(torch.rand(1, 3, 64, 64))


def test_card_of_a_synthetic_study_says_so_at_the_top(study):
    storage, tmp = study
    s = optuna.load_study(study_name="exp", storage=storage)
    synthetic = {**DATA, "name": "synthetic", "classes": [f"class{i}" for i in range(10)]}
    s.set_user_attr("retrain:0:fast", retrain_entry(0, 0.55, Path(s.user_attrs["retrain:0:fast"]["weights_path"]),
                                                    epochs=1, data=synthetic))
    out = tmp / "syn"
    assert cli("export", "--study", "exp", "--storage", storage, "--trial", "0", "--out", str(out))[0] == 0
    card = (out / "model_card.md").read_text()
    head = "\n".join(card.splitlines()[:4])
    assert "synthetic data" in head and "not a CIFAR-10 model" in head
    assert "1 of the protocol's 40 epochs: a short run" in card and "1 epochs" not in card


@pytest.mark.parametrize("argv, message", [
    (["--study", "nope"], "unknown study 'nope'"),
    (["--trial", "99"], "has no trial 99"),
    (["--trial", "2"], "failed (diverged: loss nan at epoch 1 step 3)"),
    (["--trial", "3"], "was pruned (cannot meet the budget"),
    (["--trial", "1"], "run `search.py retrain`"),
])
def test_bad_input_is_one_line_error(study, argv, message):
    storage, tmp = study
    args = ["export", "--study", "exp", "--storage", storage, "--out", str(tmp / "o"), *argv]
    if argv[0] == "--study":
        args[2] = argv[1]
        args = args[:-2]
    rc, _, err = cli(*args)
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp / "o").exists()  # nothing half-written


def test_existing_folder_needs_force(study):
    """A previous export is replaced only with --force; a folder holding anything else never."""
    storage, tmp = study
    out = tmp / "o"
    base = ["export", "--study", "exp", "--storage", storage, "--trial", "0", "--out", str(out)]
    assert cli(*base)[0] == 0
    first = (out / "model_card.md").read_text()
    rc, _, err = cli(*base)
    assert rc == 2 and "exists (a previous export); pass --force" in err and err.count("\n") == 1
    assert cli(*base, "--force")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".o.")] == []        # the previous one removed
    assert (out / "model_card.md").read_text().splitlines()[0] == first.splitlines()[0]
    (out / "keep.txt").write_text("mine")
    for force in ([], ["--force"]):
        rc, _, err = cli(*base, *force)
        assert rc == 2 and "holds files an export does not write (keep.txt)" in err and err.count("\n") == 1
    assert (out / "keep.txt").read_text() == "mine"


def test_a_folder_left_by_a_killed_export_is_written_without_force(study):
    """Empty, or holding part of an export (what an export killed mid-way used to leave)."""
    storage, tmp = study
    for name, left in (("empty", []), ("part", ["spec.json"])):
        out = tmp / name
        out.mkdir()
        for f in left:
            (out / f).write_text("{}")
        rc, _, err = cli("export", "--study", "exp", "--storage", storage, "--trial", "0", "--out", str(out))
        assert rc == 0, err
        assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_a_stale_temporary_folder_is_cleared_and_a_foreign_one_kept(study):
    storage, tmp = study
    stale, foreign = tmp / ".o.k1ll3d", tmp / ".o.notours"
    for d in (stale, foreign):
        d.mkdir()
        (d / "spec.json").write_text("{}")
    (foreign / "thesis.tex").write_text("mine")
    for d in (stale, foreign):
        os.utime(d, (1e9, 1e9))                                  # from an export killed long ago
    assert cli("export", "--study", "exp", "--storage", storage, "--trial", "0", "--out", str(tmp / "o"))[0] == 0
    assert not stale.exists() and (foreign / "thesis.tex").read_text() == "mine"


KILL = r"""
import os, signal, sys
import search
import studies.export
ex = sys.modules["studies.export"]        # the module (studies.export, the attribute, is the function)
def kill(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "card":                 # while writing: after model.pt2, before the card
    ex.model_card = kill
else:                                     # at the final step: after the first file moved into place
    real, moved = os.replace, []
    def replace(a, b):
        moved.append(b)
        if len(moved) == 2 and str(b).startswith(sys.argv[-1]):
            kill()
        return real(a, b)
    os.replace = replace
search.main(sys.argv[2:])
"""


@pytest.mark.parametrize("when", ["card", "final"])
def test_an_export_killed_mid_way_leaves_nothing_half_done(study, when):
    storage, tmp = study
    out = tmp / "killed"
    argv = ["export", "--study", "exp", "--storage", storage, "--trial", "0", "--out", str(out)]
    p = subprocess.run([sys.executable, "-c", KILL, when, *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == -9 if when == "card" else p.returncode in (-9, 0), p.stderr
    # the folder is absent or holds a whole export, never part of one
    assert not out.exists() or sorted(x.name for x in out.iterdir()) == sorted(FILES)
    rc, _, err = cli(*argv, *(["--force"] if out.exists() else []))
    assert rc == 0, err
    assert sorted(x.name for x in out.iterdir()) == sorted(FILES)
    assert [x.name for x in tmp.iterdir() if x.name.startswith(".killed.")] == []      # no temporary left


def test_out_is_refused_at_the_root_the_home_folder_and_the_data_home(study, tmp_path, monkeypatch):
    from studies.export import check_out
    with pytest.raises(ValueError, match="is the root folder"):
        check_out("/", force=True)                                # checked without writing anything to /
    storage, tmp = study
    home, data = tmp_path / "user", tmp_path / "data-home"
    home.mkdir()
    (home / ".bashrc").write_text("# mine")
    data.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("STACKNAS_HOME", str(data))
    for out, what in ((home, "your home folder"), (data, "the data home")):
        rc, _, err = cli("export", "--study", "exp", "--storage", storage, "--trial", "0", "--out", str(out), "--force")
        assert rc == 2 and f"is {what}" in err and err.count("\n") == 1, err
        assert not (out / "model.pt2").exists()
    assert sorted(p.name for p in home.iterdir()) == [".bashrc"] and list(data.iterdir()) == []


def test_default_storage_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path / "studies"))
    (tmp_path / "studies").mkdir()
    rc, _, err = cli("export", "--study", "ghost", "--out", str(tmp_path / "x"))
    assert rc == 2 and "unknown study 'ghost'" in err and err.count("\n") == 1
    assert not list((tmp_path / "studies").iterdir())  # reading never creates a database
