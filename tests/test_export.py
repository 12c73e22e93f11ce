"""studies/export.py: spec, weights, torch.export program and model card.

Nothing is trained: a tiny network's perturbed initial weights stand in for
the trained ones. ``model.pt2`` is loaded in a fresh, isolated Python that
cannot import this project and must give the project's logits.
"""
from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
import torch

import models
import search
from models import ArchSpec, StageSpec
from studies.export import FILES, select_trial

SPEC = ArchSpec(stages=(StageSpec(scheme="euler", blocks=1, width=8),), name="tiny")
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
    s.set_user_attr("retrain:0:fast", {  # as studies.retrain stores a finished retrain
        "number": 0, "protocol": "fast", "label": "fast", "status": "ok", "reason": "", "test_accuracy": 0.55,
        "epochs": 40, "weights_path": str(weights), "finished_at": "2026-01-01T00:00:00+00:00"})
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
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))  # batch 3: not the export's 2
    with torch.no_grad():
        expected = net(x)
    assert not torch.allclose(expected, models.build(spec).eval()(x))  # the weights are not the init ones

    # models.build(spec) + weights.pt
    rebuilt = models.build(ArchSpec.from_json((out / "spec.json").read_text())).eval()
    rebuilt.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), expected, atol=1e-5, rtol=0)

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
    assert "highest retrained test accuracy" in card and "55.00%" in card and "40.00%" in card
    assert "torch.export.load(\"model.pt2\").module()" in card and "models.build(spec)" in card
    assert f"| parameters | {models.measure.count_params(models.build(SPEC)):,} |" in card
    assert "on the accuracy-vs-memory Pareto front" in card

    # no front trial retrained: the most accurate front trial is chosen, and it has no weights
    s = optuna.load_study(study_name="exp", storage=storage)
    s.add_trial(optuna.trial.create_trial(values=[0.9, 10.0], user_attrs={**attrs(SPEC, 0.9),
                                                                        "inference_bytes_per_image": 10}))
    trial, rule = select_trial(s)
    assert trial.number == 4 and "highest proxy" in rule


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
    storage, tmp = study
    out = tmp / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = cli("export", "--study", "exp", "--storage", storage, "--trial", "0", "--out", str(out))
    assert rc == 2 and "exists; pass --force" in err and err.count("\n") == 1
    assert not (out / "model.pt2").exists()
    assert cli("export", "--study", "exp", "--storage", storage, "--trial", "0", "--out", str(out), "--force")[0] == 0
    assert (out / "model.pt2").is_file() and (out / "keep.txt").read_text() == "mine"


def test_default_storage_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path / "studies"))
    (tmp_path / "studies").mkdir()
    rc, _, err = cli("export", "--study", "ghost", "--out", str(tmp_path / "x"))
    assert rc == 2 and "unknown study 'ghost'" in err and err.count("\n") == 1
    assert not list((tmp_path / "studies").iterdir())  # reading never creates a database
