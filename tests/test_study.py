"""studies/: the objective, budget pruning, resume, divergence, promotions, retrain, show,
storage errors, and the Pareto / Kendall / hypervolume arithmetic.

CPU only: a 60k-parameter budget, 64 synthetic 8x8 images, 1-epoch proxies. Most of the
time goes to solving widths (a few seconds per sampled spec).
"""
from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import search
import studies
from studies import lineage_counts

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--budget", "60k", "--tolerance", "0.1", "--synthetic", "--synthetic-images", "64",
        "--synthetic-image-size", "8", "--proxy-hparams", '{"batch_size": 32}', "--device", "cpu", "--no-progress"]


def cli(*argv: str) -> tuple[int, str, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = search.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def load(name: str, url: str | None = None):
    return studies.open_study(name, url)


@pytest.fixture(scope="module")
def small_study(home):
    """A 4-trial study run through the CLI (in-process), then resumed to 5 trials."""
    rc, out, err = cli("run", "--study", "small", "--trials", "4", "--rungs", "2", "--eta", "2", "--seed", "3",
                       *TINY)
    assert rc == 0, err
    first = {t.number: t.datetime_start for t in load("small").get_trials()}
    rc, out2, err = cli("run", "--study", "small", "--trials", "5", "--device", "cpu", "--no-progress")
    assert rc == 0, err
    return load("small"), first, out + out2


def test_run_prints_where_the_study_is(small_study, home):
    _, _, out = small_study
    assert f"storage: sqlite:///{home / 'small.db'}" in out
    assert "python search.py show --study small" in out
    assert (home / "results" / "small" / "trials.csv").exists()
    # a trial's line prints memory in MiB per image, as show and the page do; on synthetic data the
    # retrain hint is the 2-epoch check, not the default protocol's long run
    assert re.search(r"inference mem \d+\.\d{3} MiB/image", out) and "KiB" not in out
    assert "python search.py retrain --study small --epochs 2" in out


def test_sampled_specs_meet_the_budget_or_are_pruned_with_a_reason(small_study):
    from models import ArchSpec

    study, _, _ = small_study
    trials = study.get_trials()
    assert any(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        a = t.user_attrs
        if t.state.name == "COMPLETE":
            assert abs(a["params"] - 60_000) <= 0.1 * 60_000, (t.number, a["params"])
            spec = ArchSpec.from_json(a["spec"])
            assert all(8 <= w <= 512 for w in spec.widths)
            for key in ("architecture", "macs", "inference_bytes_per_image", "training_bytes_per_image",
                        "proxy_seconds", "device", "val_accuracy@1", "scheme"):
                assert a.get(key) is not None, key
            assert "cuda_peak_bytes" in a
            assert t.values[1] == a["inference_bytes_per_image"]
            assert 0.0 <= t.values[0] <= 1.0 and a["proxy_epochs"] == 1
            assert t.constraints == {"budget": 0.0}
        else:
            assert t.state.name == "PRUNED", (t.number, t.state, a.get("fail_reason"))
            assert a["status"] == "infeasible" and "budget" in a["fail_reason"]
            assert t.constraints["budget"] > 0


def test_resume_continues_the_same_study(small_study):
    study, first, _ = small_study
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(5))
    assert {t.number: t.datetime_start for t in trials if t.number < 4} == first   # untouched
    assert lineage_counts(trials)["finished"] == 5
    assert study.user_attrs["budget"] == 60_000 and study.user_attrs["rungs"] == 2


def test_promotions_follow_successive_halving(small_study):
    study, _, _ = small_study
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    promoted = studies.fidelity_results(study.user_attrs)
    assert len(promoted) == len(complete) // 2          # eta = 2, two rungs: 1 and 2 epochs
    assert all(set(v) == {2} for v in promoted.values())
    df = studies.trials_table(study)
    for n, r in promoted.items():
        assert r[2]["status"] == "ok"
        assert df.loc[n, "proxy_epochs"] == 2 and df.loc[n, "val_accuracy@1"] is not None
        assert df.loc[n, "val_accuracy"] == pytest.approx(r[2]["val_accuracy"])


def test_rerun_with_a_different_budget_is_refused(small_study):
    rc, _, err = cli("run", "--study", "small", "--budget", "1M", "--trials", "5", "--no-progress")
    assert rc == 2 and "budget" in err and len(err.strip().splitlines()) == 1


def test_show_table_and_pareto_csv(small_study, tmp_path):
    study, _, _ = small_study
    rc, out, err = cli("show", "--study", "small")
    assert rc == 0, err
    assert "val acc %" in out and "study 'small': 5 trials" in out
    csv = tmp_path / "front.csv"
    rc, out, err = cli("show", "--study", "small", "--pareto", "--csv", str(csv))
    assert rc == 0, err
    import pandas as pd
    front = pd.read_csv(csv, index_col="number")
    df = studies.trials_table(study)
    done = df[df["state"] == "COMPLETE"]
    expect = done.index[studies.pareto_mask(done["val_accuracy"], done["memory"])]
    assert sorted(front.index) == sorted(expect)
    for col in ("state", "val_accuracy", "memory", "params", "macs", "architecture", "proxy_epochs",
                "retrain_test_accuracy", "preset", "fail_reason"):
        assert col in front.columns


def test_unknown_study_lists_the_existing_ones(small_study):
    rc, out, err = cli("show", "--study", "nope")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "unknown study 'nope'" in err and "small" in err


def test_retrain_pareto_set_resumable(small_study, home):
    study, _, _ = small_study
    rc, out, err = cli("retrain", "--study", "small", "--epochs", "1", "--no-progress")
    assert rc == 0, err
    assert "Kendall's tau" in out or len(studies.pareto_set(study)) < 2
    hint = out.split("next:", 1)[1]         # after a retrain: the page and the export, not retrain again
    assert "dashboard --study small" in hint and "export --study small --best" in hint and "retrain" not in hint
    front = studies.pareto_set(load("small"))
    assert len(front) and front["retrain_test_accuracy"].notna().all()
    for n, row in front.iterrows():
        w = Path(row["weights_path"])
        assert w == home / "runs" / "small" / f"trial_{n}" / "fast-1ep" / "weights.pt" and w.exists()
        assert (w.parent / "checkpoint.pt").exists() and (w.parent / "spec.json").exists()
    rc, out, err = cli("retrain", "--study", "small", "--epochs", "1", "--no-progress")
    assert rc == 0 and out.count("done before") == len(front)


def test_diverging_trial_fails_with_its_reason(home):
    name = "div-" + uuid.uuid4().hex[:6]
    rc, out, err = cli("run", "--study", name, "--budget", "60k", "--trials", "1", "--synthetic",
                       "--synthetic-images", "64", "--synthetic-image-size", "8", "--device", "cpu",
                       "--enqueue-presets", "resnet-20",
                       # the highest lr allowed with weight decay 1: each step scales the weights by -999,
                       # so they overflow within the epoch's 12 steps
                       "--proxy-hparams", '{"lr": 1000, "weight_decay": 1.0, "warmup_frac": 0, "batch_size": 4}',
                       "--no-progress")
    assert rc == 0, err
    (t,) = load(name).get_trials()
    assert t.state.name == "FAIL" and t.user_attrs["preset"] == "resnet-20"
    assert t.user_attrs["status"] == "diverged" and t.user_attrs["fail_reason"].startswith("diverged at epoch")
    assert t.user_attrs["params"] == 269_722        # the preset is not width-solved


@pytest.mark.parametrize("url, fragment", [
    ("not a url", "not a database URL"),
    ("postgresql://nobody@127.0.0.1:9/none", "cannot connect"),
    ("sqlite:////no/such/folder/x.db", "does not exist"),
])
def test_bad_storage_is_a_one_line_error(url, fragment, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "search.py"), "run", "--study", "x", "--storage", url,
                        "--trials", "1", "--synthetic", "--device", "cpu"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "STACKNAS_HOME": str(tmp_path)})
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], p.stderr


def test_duplicate_network_is_not_trained_again(small_study):
    """Runs last on the small study: a trial proposing a network already evaluated copies its result."""
    study, _, _ = small_study
    twin = next(t for t in study.get_trials() if t.state.name == "COMPLETE")
    study.enqueue_trial(twin.params, user_attrs={"ticket": True})     # the same choices again
    rc, out, err = cli("run", "--study", "small", "--trials", "6", "--device", "cpu", "--no-progress")
    assert rc == 0, err
    t = load("small").get_trials()[-1]
    assert t.number == 5 and t.state.name == "COMPLETE" and t.user_attrs["duplicate_of"] == twin.number
    assert t.values == twin.values and t.user_attrs["spec"] == twin.user_attrs["spec"]
    assert f"same network as trial {twin.number}" in out
    from studies.retrain import retrain_targets
    assert 5 not in {r.number for r in retrain_targets(load("small"))}     # its twin stands for it
    table = studies.trials_table(load("small"))
    assert not table.loc[5, "pareto"] and pd.isna(table.loc[5, "rank"])   # one network, one point on the front


# --------------------------------------------------------------------------
# arithmetic
# --------------------------------------------------------------------------

def brute_ranks(acc, mem):
    pts, left, ranks, r = list(zip(acc, mem)), set(range(len(acc))), {}, 0
    while left:
        front = {i for i in left if not any(pts[j][0] >= pts[i][0] and pts[j][1] <= pts[i][1] and pts[j] != pts[i]
                                             for j in left)}
        for i in front:
            ranks[i] = r
        left -= front
        r += 1
    return [ranks[i] for i in range(len(acc))]


def test_nondominated_ranks_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        acc = rng.integers(0, 6, n) / 5          # ties on purpose
        mem = rng.integers(0, 6, n) * 1000.0
        assert list(studies.nondominated_ranks(acc, mem)) == brute_ranks(acc, mem)


def test_crowding_and_promotion_order():
    acc = [0.9, 0.8, 0.7, 0.5, 0.6]
    mem = [10.0, 5.0, 3.0, 1.0, 9.0]              # the last is dominated by (0.8, 5)
    ranks = studies.nondominated_ranks(acc, mem)
    assert list(ranks) == [0, 0, 0, 0, 1]
    d = studies.crowding_distance(acc, mem, ranks)
    assert math.isinf(d[0]) and math.isinf(d[3]) and d[1] > 0 and d[2] > 0
    order = list(studies.rank_for_promotion(acc, mem))
    assert order[-1] == 4 and set(order[:2]) == {0, 3}


def kendall_reference(x, y):
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx and sy:
            c, d = c + (sx == sy), d + (sx != sy)
        elif sx:
            tx += 1
        elif sy:
            ty += 1
    return (c - d) / math.sqrt((c + d + tx) * (c + d + ty))


def test_kendall_tau():
    assert studies.kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert studies.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert studies.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    assert math.isnan(studies.kendall_tau([1], [2])) and math.isnan(studies.kendall_tau([1, 1], [1, 2]))
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 25), rng.integers(0, 5, 25)     # ties: tau-b
    assert studies.kendall_tau(x, y) == pytest.approx(kendall_reference(x, y))
    assert studies.kendall_tau([1, 2, float("nan"), 3], [1, 2, 5, 3]) == pytest.approx(1.0)


def test_hypervolume():
    # two points: (acc 0.5, mem 1) and (acc 1.0, mem 2), reference memory 4
    assert studies.hypervolume([0.5, 1.0], [1.0, 2.0], ref_mem=4.0) == pytest.approx(0.5 * 1 + 1.0 * 2)
    assert studies.hypervolume([0.5, 1.0, 0.4], [1.0, 2.0, 3.0], ref_mem=4.0) == pytest.approx(2.5)  # dominated
    assert studies.hypervolume([0.5, 1.0], [1.0, 2.0], ref_mem=4.0, normalize=True) == pytest.approx(2.5 / 4)
    assert studies.hypervolume([], []) == 0.0


def test_storage_url_resolution(home):
    assert studies.resolve_url("demo", None) == f"sqlite:///{home / 'demo.db'}"
    assert studies.resolve_url("demo", "postgresql://u:pw@h/db") == "postgresql://u:pw@h/db"
    assert studies.redact_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    with pytest.raises(ValueError, match="study name"):
        studies.resolve_url("../evil", None)


def test_preparing_the_next_trial_ahead_keeps_the_count_exact(home):
    """The overlap a worker on a GPU uses (the next trial prepared in a thread while this one
    trains), forced on the CPU: exactly N trials, each prepared before its proxy started."""
    name = "ahead-" + uuid.uuid4().hex[:6]
    counts = studies.run(name, 4, budget="60k", tolerance=0.1, synthetic=True, synthetic_images=64,
                         synthetic_image_size=8, proxy_hparams={"batch_size": 32}, device="cpu", rungs=1,
                         progress=False, prepare_ahead=True, say=lambda m: None)
    assert counts["finished"] == counts["total"] == 4
    trials = load(name).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    complete = [t for t in trials if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    assert complete and all(t.user_attrs["proxy_started_at"] <= t.user_attrs["proxy_finished_at"] for t in complete)
