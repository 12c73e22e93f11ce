"""`search.py show` in a terminal, and one set of statistics for every command.

The studies are built directly with optuna (no training), their trials' user
attrs as ``studies.objective`` writes them: long multi-stage architectures, a
pruned trial with the width solver's full reason, a trial that repeated an
earlier network (``duplicate_of``), and retrain results whose weights exist, so
``search.py retrain`` finds every network done and only reports.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import optuna
import pytest

import models
import search
import studies
from models import ArchSpec, StageSpec
from studies.config import StudySettings
from studies.objective import scheme_label
from studies.results import hypervolume_history, summary, trials_table

ROOT = Path(__file__).resolve().parents[1]
PRUNED_REASON = ("budget: no widths (multiples of 8) within 10% of 100,000 params; "
                 "nearest achievable 71,370 / 167,962")
# (stage schemes, proxy accuracy, inference bytes/image, retrained test accuracy or None)
NETWORKS = [
    (("rk4", "euler", "lm"), 0.60, 1.0e6, 0.90),
    (("midpoint", "verner8", "euler"), 0.65, 2.0e6, 0.80),
    (("kutta3", "lm", "dopri5"), 0.70, 3.0e6, 0.85),
    (("euler", "rk38", "heun"), 0.75, 4.0e6, 0.95),
    (("ralston", "ssprk3", "rk4"), 0.55, 5.0e6, None),     # dominated: not retrained
]
TWIN = 0            # the duplicate repeats network 0 (retrained, on the front)


def spec_of(schemes) -> ArchSpec:
    return ArchSpec(stages=tuple(StageSpec(scheme=s, blocks=3, width=16 * 2 ** i, downsample=i > 0)
                                 for i, s in enumerate(schemes)))


def attrs(spec: ArchSpec, acc: float, mem: float) -> dict:
    return {"spec": spec.to_json(), "architecture": models.describe(spec), "scheme": scheme_label(spec),
            "params": 100_000, "macs": 12_000_000, "inference_bytes_per_image": mem,
            "training_bytes_per_image": 4 * mem, "proxy_epochs": 1, "proxy_seconds": 30.0, "status": "ok",
            "val_accuracy@1": acc, "val_accuracy": acc}


def make_study(storage: str, name: str, weights_dir: Path | None = None) -> optuna.Study:
    """The networks above, the duplicate, a pruned trial; with ``weights_dir`` the front retrained
    (``fast``, weights files present) and the study's settings stored, as ``run`` leaves them."""
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    if weights_dir is not None:
        StudySettings(budget=100_000, tolerance=0.1, memory="inference", proxy_epochs=1, rungs=2, eta=3,
                      data={"kind": "synthetic", "n_train": 64, "n_val": 64, "n_test": 64, "image_size": 8,
                            "seed": 0},
                      proxy_hparams={}, heartbeat_interval=60, max_retry=3, uid="test").save(study)
    ct = optuna.trial.create_trial
    for schemes, acc, mem, _ in NETWORKS:
        study.add_trial(ct(values=[acc, mem], user_attrs=attrs(spec_of(schemes), acc, mem)))
    twin = study.trials[TWIN]
    study.add_trial(ct(values=twin.values, user_attrs={**twin.user_attrs, "duplicate_of": TWIN}))
    study.add_trial(ct(state=optuna.trial.TrialState.PRUNED, values=None,
                       user_attrs={"status": "infeasible", "fail_reason": PRUNED_REASON}))
    if weights_dir is not None:
        for n, (_, _, _, test_acc) in enumerate(NETWORKS):
            if test_acc is None:
                continue
            w = weights_dir / f"trial_{n}.pt"
            w.write_bytes(b"weights")
            study.set_user_attr(f"retrain:{n}:fast", {
                "number": n, "protocol": "fast", "label": "fast", "status": "ok", "reason": "",
                "test_accuracy": test_acc, "epochs": 2, "weights_path": str(w),
                "finished_at": "2026-01-01T00:00:00+00:00"})
    return study


def cli(*argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = search.main(list(argv))
    assert rc == 0, err.getvalue()
    return out.getvalue()


def test_show_fits_a_100_column_terminal(tmp_path):
    storage = f"sqlite:///{tmp_path / 'narrow.db'}"
    make_study(storage, "narrow")
    env = {**os.environ, "COLUMNS": "100"}
    res = subprocess.run([sys.executable, str(ROOT / "search.py"), "show", "--study", "narrow", "--storage", storage],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(x) for x in lines) <= 100, "\n".join(x for x in lines if len(x) > 100)
    header = lines[0]
    assert "val acc %" in header and "MiB/image" in header
    assert "test acc" not in header and "preset" not in header        # nothing retrained, no preset: no column
    # accuracy in percent, as on the page; memory in MiB per image
    assert re.search(r"^\s*3\s+complete\s+75\.00\s", res.stdout, re.M)
    # architectures whole, stage by stage (wrapped between stages, never cut inside one)
    stages = [models.describe_stage(s) for s in spec_of(NETWORKS[1][0]).stages]
    assert all(st in res.stdout for st in stages)
    # the pruned trial's reason keeps its useful part (wrapped, not cut)
    assert "71,370" in res.stdout and "167,962" in res.stdout
    # the duplicate: marked, its copied numbers left out, not counted as a network
    dup = next(x for x in lines if re.match(rf"^\s*{len(NETWORKS)}\s", x))
    assert f"dup of {TWIN}" in dup and f"{100 * NETWORKS[TWIN][1]:.2f}" not in dup
    assert f"{len(NETWORKS)} networks scored" in res.stdout and "1 duplicate" in res.stdout


def _numbers(text: str) -> dict:
    """Hypervolume, Kendall's tau and its number of networks from the summary lines."""
    text = " ".join(text.split())
    hv = re.search(r"hypervolume (\d\.\d{4})", text)
    tau = re.search(r"Kendall's tau ([+-]\d\.\d{3}) \(proxy vs retrained accuracy, (\d+) networks\)", text)
    front = re.search(r"Pareto front: (\d+) networks", text)
    return {"hypervolume": float(hv.group(1)), "tau": float(tau.group(1)), "n": int(tau.group(2)),
            "front": int(front.group(1))}


def test_statistics_agree_across_commands(tmp_path, monkeypatch):
    """show, retrain, summary.json and the dashboard report the same counts, front, hypervolume
    and Kendall's tau, all over distinct networks (the duplicate is not a fourth retrained point)."""
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path / "home"))
    storage = f"sqlite:///{tmp_path / 'agree.db'}"
    study = make_study(storage, "agree", weights_dir=tmp_path)
    nets = [(acc, t) for _, acc, _, t in NETWORKS if t is not None]
    want_tau = studies.kendall_tau(*zip(*nets))
    with_duplicate = studies.kendall_tau(*zip(*(nets + [nets[TWIN]])))
    assert round(want_tau, 3) != round(with_duplicate, 3)          # the duplicate would change it

    shown = _numbers(cli("show", "--study", "agree", "--storage", storage))
    retrained_out = cli("retrain", "--study", "agree", "--storage", storage, "--no-progress")
    assert retrained_out.count("done before") == len(nets)          # nothing trained
    retrained = _numbers(retrained_out)
    saved = json.loads((tmp_path / "home" / "results" / "agree" / "summary.json").read_text())
    page = tmp_path / "agree.html"
    cli("dashboard", "--study", "agree", "--storage", storage, "--out", str(page))
    embedded = json.loads(re.search(r'id="dashboard-data">(.*?)</script>', page.read_text(), re.S).group(1))

    assert shown == retrained == {"hypervolume": round(saved["hypervolume_normalized"], 4),
                                  "tau": round(want_tau, 3), "n": len(nets), "front": len(saved["pareto"])}
    assert saved["kendall_tau_proxy_vs_retrain"] == pytest.approx(want_tau)
    assert embedded["kendall_tau"] == pytest.approx(want_tau) and embedded["retrained"] == len(nets)
    assert embedded["hypervolume"] == pytest.approx(saved["hypervolume_normalized"])
    assert embedded["pareto_trials"] == saved["pareto"] and TWIN in saved["pareto"]
    assert saved["networks"] == embedded["complete"] == len(NETWORKS)
    assert saved["duplicates"] == embedded["duplicates"] == [len(NETWORKS)]
    # the retrain table lists each network once: the duplicate's row is folded into its twin's
    rows = [x for x in retrained_out.splitlines() if re.match(r"^\s*\d+\s+complete\s", x)]
    assert len(rows) == len(nets)
    # the dashboard's hypervolume-over-trials curve ends at the same figure
    assert hypervolume_history(trials_table(study))[-1][1] == pytest.approx(summary(study)["hypervolume_normalized"])
