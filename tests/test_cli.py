"""search.py as a new user meets it: the hints it prints, its refusals and the network drawing.

No training: the commands here stop before a network is trained, or print what comes next.
"""
from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

import search
import trainers
from models import presets


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = search.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, flag, near", [
    (["run", "--study", "x", "--budget", "100k", "--n-trials", "4"], "--n-trials", "--trials"),
    (["retrain", "--study", "x", "--epoch", "2", "--protokol", "fast"], "--protokol", "--protocol"),
    (["dashboard", "--study", "x", "--wach", "30"], "--wach", "--watch"),
])
def test_unknown_flag_is_named_with_the_nearest_and_the_commands_help(argv, flag, near):
    """Not "--trials is required", not `search.py --help` (which lists no command's flags); an
    abbreviation argparse accepts (``--epoch`` for ``--epochs``) is not refused."""
    rc, _, err = run_cli(*argv)
    assert rc == 2
    line = err.strip()
    assert "\n" not in line and f"unknown option {flag} (did you mean {near}?)" in line
    assert f"see search.py {argv[0]} --help" in line and "required" not in line


@pytest.mark.parametrize("name, first", [("ho-rk4-x8", ["ho-rk4-x7", "ho-rk4-x10"]),
                                         ("HO-RK4-x7", ["ho-rk4-x7"]),
                                         ("resnet-100", ["resnet-110"])])
def test_describe_suggests_the_nearest_presets(name, first):
    rc, _, err = run_cli("describe", name)
    assert rc == 2
    assert f"did you mean {', '.join(first)}" in err and "`search.py presets`" in err
    assert "models.presets" not in err and "\n" not in err.strip()
    assert presets.similar(name)[:len(first)] == first


def test_describe_draws_the_network(tmp_path):
    svg = tmp_path / "net.svg"
    rc, out, err = run_cli("describe", "lm-resnet-20", "--svg", str(svg), "--compact")
    assert rc == 0, err
    described = json.loads(out)                       # still one JSON document
    assert described["svg"] == str(svg)
    root = ET.fromstring(svg.read_text())
    stages = [e for e in root.iter() if e.get("data-part") == "stage"]
    assert [int(e.get("data-width")) for e in stages] == [s["width"] for s in described["stages"]]
    assert len([e for e in root.iter() if e.get("data-edge") == "two-step"]) == 2
    assert run_cli("describe", "lm-resnet-20", "--svg", str(tmp_path / "net.png"))[0] == 2


def test_missing_cifar_suggests_synthetic(tmp_path, monkeypatch):
    def offline(root, **kw):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    import torchvision
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path / "home"))
    rc, _, err = run_cli("run", "--study", "c", "--budget", "100k", "--trials", "1", "--device", "cpu",
                         "--data", str(tmp_path / "nowhere"), "--no-progress")
    assert rc == 2
    assert "CIFAR-10 not found" in err and "--synthetic" in err and "\n" not in err.strip()
    assert not (tmp_path / "home" / "c.db").exists()      # nothing created


def _next(after: str, quick: bool = False) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        search._where("demo", None, "sqlite:///demo.db", after=after, quick=quick)
    return out.getvalue().split("next:", 1)[1]


def test_next_steps_after_run_and_retrain():
    """After a CPU or synthetic run, the retrain hint is the 2-epoch check (the default protocol's
    length said beside it); after a retrain: the page and the export, not retrain again."""
    fast = trainers.protocol_hparams("fast")["epochs"]
    quick = _next("run", quick=True)
    assert "retrain --study demo --epochs 2" in quick and f"'fast' protocol trains {fast} epochs" in quick
    assert "retrain --study demo\n" in _next("run") and "--epochs" not in _next("run")
    after = _next("retrain")
    assert "dashboard --study demo" in after and "export --study demo --best" in after
    assert "retrain" not in after


def test_show_names_the_columns_it_leaves_out(capsys, monkeypatch):
    import pandas as pd
    df = pd.DataFrame([dict(state="COMPLETE", val_accuracy=0.5, proxy_epochs=1, retrain_test_accuracy=None,
                            memory=2 ** 20, params=100_000, macs=12_000_000, pareto=True, preset=None,
                            architecture="Nest-SSPRK3 x1 once F=2 / 8ch | LM x33 / 8ch | Euler x38 F=3 / 8ch",
                            fail_reason="", duplicate_of=None)], index=pd.Index([3], name="number"))
    monkeypatch.setenv("COLUMNS", "60")
    search._print_table(df, "inference")
    out = capsys.readouterr().out
    assert "left out to fit 60 columns: MMACs" in out
    assert all(line.strip() != "|" for line in out.splitlines())
    assert max(len(x) for x in out.splitlines()) <= 60


@pytest.mark.parametrize("width", range(8, 40))
def test_an_architecture_never_wraps_a_lone_bar(width):
    arch = "Nest-SSPRK3 x1 once F=2 / 8ch | LM x33 / 8ch | Euler x38 F=3 / 8ch"
    lines = search._wrap(arch, width, " | ")
    assert all(x.strip() != "|" and len(x) <= width for x in lines)
    assert " ".join(lines).replace("| ", "|").split("|") == [p.strip() for p in arch.split("|")] or \
        "".join(lines).replace(" ", "") == arch.replace(" ", "")


def test_export_defaults_to_the_data_home(tmp_path, monkeypatch):
    import studies
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path))
    assert studies.export_dir("demo") == tmp_path / "exports" / "demo"
    assert search.build_parser().parse_args(["export", "--study", "demo", "--best"]).out is None   # --out optional
    assert Path(search.__file__).parent not in studies.export_dir("demo").parents
