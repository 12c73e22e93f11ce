"""`retrain`: each network its paper's protocol, hyperparameter overrides, the accuracy after
every epoch, and records that name their protocol and epochs.

The study is built directly with optuna (no search): four tiny networks, one per paper
family, on 8x8 synthetic images; every retrain runs one epoch on the CPU.
"""
from __future__ import annotations

import io
import json
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import optuna
import pytest

import models
import search
import studies
import trainers
from models import ArchSpec, StageSpec, presets
from studies.config import StudySettings
from studies.retrain import epochs_to_reach, run_dir
from studies.retrain_protocol import check_overrides, describe_retrain, paper_protocol, retrain_label

# one tiny network per family: (spec, the paper protocol it must get)
NETWORKS = [
    (ArchSpec(stages=(StageSpec("rk4", blocks=1, width=8),), image_size=8), "ho-resnet"),
    (ArchSpec(stages=(StageSpec("euler", blocks=1, width=8), StageSpec("lm", blocks=2, width=16, downsample=True)),
              image_size=8), "lm-resnet"),
    (ArchSpec(stages=(StageSpec("midpoint", blocks=1, width=8),
                      StageSpec("lm", blocks=2, width=16, downsample=True, stochastic_depth=True)),
              image_size=8), "lm-resnet-sd"),
    (ArchSpec(stages=(StageSpec("rkcnn-e", width=8, rk_stages=2), StageSpec("rkcnn-e", width=8, rk_stages=2,
                                                                             downsample=True)),
              transition="conv", head="multiscale", image_size=8), "rkcnn"),
]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = search.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def study(home):
    """A study as ``run`` leaves it (settings stored), the four networks as completed trials."""
    s = optuna.create_study(study_name="paper", storage=f"sqlite:///{home / 'paper.db'}",
                            directions=["maximize", "minimize"])
    StudySettings(budget=10_000, tolerance=0.5, memory="inference", proxy_epochs=1, rungs=1, eta=3,
                  data={"kind": "synthetic", "n_train": 64, "n_val": 64, "n_test": 64, "image_size": 8, "seed": 0},
                  proxy_hparams={}, heartbeat_interval=60, max_retry=3, uid="paper").save(s)
    for i, (spec, _) in enumerate(NETWORKS):
        s.add_trial(optuna.trial.create_trial(values=[0.1 * (i + 1), 1000.0 * (i + 1)], user_attrs={
            "spec": spec.to_json(), "architecture": models.describe(spec), "val_accuracy": 0.1 * (i + 1)}))
    return s


# ----------------------------------------------------------------------------- the paper rule
@pytest.mark.parametrize("name", presets.names())
def test_every_preset_gets_its_papers_protocol(name):
    """RKCNN -> 004's, LM-ResNet with stochastic depth -> 002 §3's, the CIFAR ResNets and
    LM-ResNets -> 002 §4's (one protocol for both, as 002 compares them), HO-ResNet -> 000/001's."""
    want = ("rkcnn" if name.startswith("rkcnn-") else "lm-resnet-sd" if name.endswith("-sd") else
            "lm-resnet" if "resnet-" in name else "ho-resnet" if name.startswith("ho-") else None)
    assert want and paper_protocol(presets.get(name)) == want


def test_a_searched_network_mixing_families_takes_its_macro_networks_protocol():
    """The macro network decides (as it decides the initialisation), not the schemes inside:
    one resolution of RK4 then LM is HO-ResNet; RK8 stages over downsampling are 002's CIFAR
    network; stochastic depth anywhere outside RKCNN is 002 §3's; an RKCNN period anywhere is 004's."""
    rk4_lm = ArchSpec(stages=(StageSpec("rk4", blocks=2), StageSpec("lm", blocks=3)))
    assert paper_protocol(rk4_lm) == "ho-resnet"
    down = ArchSpec(stages=(StageSpec("verner8"), StageSpec("lm", blocks=3, downsample=True)))
    assert paper_protocol(down) == "lm-resnet"
    sd = ArchSpec(stages=(StageSpec("rk4", stochastic_depth=True),))
    assert paper_protocol(sd) == "lm-resnet-sd"
    mixed = ArchSpec(stages=(StageSpec("rk4"), StageSpec("rkcnn-i", rk_stages=3, downsample=True)))
    assert paper_protocol(mixed) == "rkcnn"


def test_paper_rule_is_in_the_help():
    rc, out, _ = cli("retrain", "--help")
    text = " ".join(out.split())
    assert rc == 0 and "paper: each network its family's paper protocol" in text
    for name in ("rkcnn (300 epochs)", "lm-resnet-sd (500 epochs)", "ho-resnet (260 epochs)", "--hparams JSON"):
        assert name in text


# ----------------------------------------------------------------------------- retrain
def test_paper_retrain_trains_each_network_under_its_family_protocol(study, home):
    results = studies.retrain("paper", epochs=1, protocol="paper", device="cpu", progress=False,
                              say=lambda m: None)
    got = {r["number"]: r for r in results}
    assert sorted(got) == [0, 1, 2, 3]
    for n, (_, proto) in enumerate(NETWORKS):
        r = got[n]
        assert r["status"] == "ok", r["reason"]
        assert (r["protocol"], r["requested_protocol"], r["label"]) == (proto, "paper", f"{proto}-1ep")
        assert (r["epochs"], r["epochs_planned"]) == (1, 1)
        assert r["protocol_epochs"] == trainers.PROTOCOLS[proto]["epochs"]
        assert r["test_accuracy_per_epoch"] == [r["test_accuracy"]]
        assert (run_dir("paper", n, f"{proto}-1ep") / "weights.pt").exists()
        assert json.loads((run_dir("paper", n, f"{proto}-1ep") / "result.json").read_text())["history"][0][
            "test_accuracy"] == r["test_accuracy"]
        assert describe_retrain(r) == (f"{proto}, 1 of the protocol's {trainers.PROTOCOLS[proto]['epochs']} "
                                       "epochs: a short run")
    stored = studies.open_study("paper").user_attrs
    assert stored["retrain:3:rkcnn-1ep"]["protocol_epochs"] == 300


def test_overrides_are_stored_apart_and_never_collide(study, home):
    """The 2x learning-rate experiment (001 §3.3): the same network and protocol with lr 0.2
    is another run, under another label, folder and record; the first one is left alone."""
    kw = dict(numbers=[0], epochs=1, device="cpu", progress=False, say=lambda m: None)
    base = studies.retrain("paper", **kw)[0]
    twice = studies.retrain("paper", hparams={"lr": 0.2}, **kw)[0]
    assert (base["label"], twice["label"]) == ("fast-1ep", "fast-1ep+lr=0.2")
    assert base["lr"] == 0.1 * 16 / 128 and base["hparams"] == {}       # the study's small-data batch and lr
    assert twice["lr"] == 0.2 and twice["hparams"] == {"lr": 0.2}
    assert base["weights_path"] != twice["weights_path"]
    assert base["checkpoint_path"] != twice["checkpoint_path"]
    attrs = studies.open_study("paper").user_attrs
    assert attrs["retrain:0:fast-1ep"]["lr"] == base["lr"] and attrs["retrain:0:fast-1ep+lr=0.2"]["lr"] == 0.2
    said = []
    assert studies.retrain("paper", hparams={"lr": 0.2}, say=said.append, **{k: v for k, v in kw.items()
                                                                            if k != "say"}) == []
    assert any("done before" in m and "fast-1ep+lr=0.2" in m for m in said)
    rc, out, err = cli("show", "--study", "paper", "--retrains")
    assert rc == 0, err
    rows = [line for line in out.splitlines() if line.lstrip().startswith("0 ")]
    assert any("fast 1/40ep lr=0.2" in x for x in rows) and any("fast 1/40ep" in x and "lr=" not in x
                                                                 for x in rows)
    assert "to 80%" in out and "to 85%" in out and "full" not in out


def test_show_names_the_protocol_and_its_epochs(study, home):
    studies.retrain("paper", epochs=1, protocol="paper", device="cpu", progress=False, say=lambda m: None)
    rc, out, err = cli("show", "--study", "paper")
    assert rc == 0, err
    assert out.splitlines()[0].split()[:5] == ["#", "state", "val", "acc", "%"] and "retrain" in out.splitlines()[0]
    assert "full retrain" not in out and "rkcnn 1/300ep" in out
    table = studies.show("paper")
    assert table.loc[3, "retrain"] == "rkcnn 1/300ep" and table.loc[2, "retrain"] == "lm-resnet-sd 1/500ep"


def test_labels():
    assert retrain_label("ho-resnet") == "ho-resnet" and retrain_label("fast", 2) == "fast-2ep"
    assert retrain_label("ho-resnet", None, {"lr": 0.4}) == "ho-resnet+lr=0.4"
    assert retrain_label("ho-resnet", None, {"lr": 0.1}) == "ho-resnet"          # the protocol's own value
    assert retrain_label("fast", 3, {"nesterov": False, "lr": 0.8}) == "fast-3ep+lr=0.8+nesterov=false"
    odd = retrain_label("fast", None, {"milestones": [3, 6]})
    assert odd.startswith("fast+h") and "/" not in odd and ":" not in odd
    assert odd != retrain_label("fast", None, {"milestones": [3, 7]})


def test_epochs_to_reach():
    assert epochs_to_reach([0.5, 0.79, 0.81, 0.9], 0.80) == 3
    assert epochs_to_reach([0.5, None, 0.84], 0.85) is None


@pytest.mark.parametrize("hparams, message", [
    ({"lr": -1}, "--hparams: hyperparameter lr: must be a number"),
    ({"learning_rate": 0.2}, "--hparams: unknown hyperparameter 'learning_rate'"),
    ({"epochs": 3}, "--hparams: epochs cannot be overridden here; use --epochs"),
    ({"score_on": "val"}, "--hparams: score_on cannot be overridden here"),
    ({"nesterov": "yes"}, "--hparams: hyperparameter nesterov: must be true or false"),
])
def test_bad_overrides_are_refused_as_run_refuses_them(hparams, message):
    with pytest.raises(ValueError) as e:
        check_overrides(hparams, "paper")
    assert str(e.value).startswith(message)
    rc, _, err = cli("retrain", "--study", "nope", "--hparams", json.dumps(hparams))
    assert rc == 2 and err.startswith("error: --hparams:") and len(err.strip().splitlines()) == 1


def test_bad_protocol_or_epochs_are_one_line_errors(study):
    rc, _, err = cli("retrain", "--study", "paper", "--protocol", "imagenet")
    assert rc == 2 and "paper" in err and "rkcnn" in err
    rc, _, err = cli("retrain", "--study", "paper", "--epochs", "0")
    assert rc == 2 and err.startswith("error: --epochs: must be an integer")


def test_describe_never_calls_a_short_run_full():
    assert describe_retrain({"protocol": "fast", "epochs": 40}) == "fast, 40 epochs, the protocol's full length"
    short = {"protocol": "fast", "label": "fast-2ep", "epochs": 2}              # a record from before this change
    assert describe_retrain(short) == "fast, 2 of the protocol's 40 epochs: a short run"
    assert describe_retrain(short, short=True) == "fast 2/40ep"
    cut = {"protocol": "ho-resnet", "epochs": 120, "epochs_planned": 260, "protocol_epochs": 260,
           "hparams": {"lr": 0.4}}
    assert describe_retrain(cut) == "ho-resnet, 120 of 260 planned epochs: unfinished; overrides lr=0.4"
    assert describe_retrain({"protocol": "rkcnn", "epochs": 300}, short=True) == "rkcnn 300ep"


def test_readme_experiment_commands_are_valid_commands():
    """The README's commands for 001 Table 4 and the 2x/4x learning rate parse, name registered
    presets, and their overrides pass the checks (the runs themselves need CIFAR-10 and a GPU)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## The papers' protocols and experiments", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line.split("#")[0].strip()) for line in block.splitlines()
                if line.startswith("python search.py")]
    assert len(commands) == 8
    parser = search.build_parser()
    lrs = set()
    for argv in commands:
        args = parser.parse_args(argv[2:])
        for name in getattr(args, "enqueue_presets", None) or []:
            presets.info(name)
        if args.command == "retrain":
            assert args.protocol == "paper"
            lrs.add(check_overrides(getattr(args, "hparams", None), "paper").get("lr", 0.1))
    assert lrs == {0.1, 0.2, 0.4}                                # 1x, 2x, 4x the papers' learning rate
    assert {"ho-euler-x28", "ho-verner8-adaptive-x2", "ho-verner8-x3"} <= set(block.split())
