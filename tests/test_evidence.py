"""benchmarks/evidence.py: the one evidence command, run end to end on the CPU (``--smoke``).

The chain runs the way a lent GPU runs it, in parts: a first call whose time is spent
(``--call-minutes 0``) after the bench, so the presets and study stages stop before they
start (``partial``); a second that resumes them with a study of 3 trials, too few for the
retrain (``error``); a third that asks for the smoke's 6 trials, so the study grows and
the retrain and report after it are redone; a fourth that finds every stage done. The
checks read what the command wrote: the status of each stage, every figure the report
names against the study database, and the files a remote machine would send back.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

import studies

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from evidence_plan import DEFAULT, ROW_2M, SMOKE, estimate  # noqa: E402
from evidence_report import STAGES, figures  # noqa: E402

FILES = {"evidence.json", "study.db", "report.md", "dashboard.html", "dashboard.png"}


def call(out: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "evidence.py"), "--smoke", "--out", str(out),
           "--work", str(work), "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


def stages(out: Path) -> dict:
    return json.loads((out / "evidence.json").read_text())["stages"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("evidence"), tmp_path_factory.mktemp("evidence-work")
    runs, after = [], []
    for extra in (["--trials", "3", "--stages", "bench", "presets", "study", "--call-minutes", "0"],
                  ["--trials", "3"], [], []):
        runs.append(call(out, work, *extra))
        after.append(stages(out))
    return {"out": out, "work": work, "runs": runs, "after": after}


def test_stopped_stages_are_partial_then_resumed(chain):
    runs, after = chain["runs"], chain["after"]
    assert runs[0].returncode == 1, runs[0].stdout[-3000:] + runs[0].stderr[-3000:]
    assert set(after[0]) == {"bench", "presets", "study"} and after[0]["bench"]["status"] == "ok"
    assert after[0]["presets"]["status"] == after[0]["study"]["status"] == "partial"
    assert after[0]["presets"]["reason"] == "0 of 6 presets done; stopped at --stage-minutes 2 or --call-minutes 0"
    assert after[0]["study"]["reason"].startswith("the study was not created; stopped at")
    assert runs[1].returncode == 1, runs[1].stdout[-3000:] + runs[1].stderr[-3000:]
    assert "[bench] ok since" in runs[1].stdout
    assert [after[1][s]["status"] for s in STAGES] == ["ok", "ok", "ok", "error", "ok"]
    assert after[1]["presets"]["started"] == after[0]["presets"]["started"]      # resumed, not restarted
    assert after[1]["study"]["result"]["counts"]["trained"] == 3
    assert "the study holds 3 completed networks; the retrain needs 5" in after[1]["retrain"]["reason"]


def test_a_study_asked_for_more_trials_grows_and_what_follows_is_redone(chain):
    runs, after = chain["runs"], chain["after"]
    assert runs[2].returncode == 0, runs[2].stdout[-3000:] + runs[2].stderr[-3000:]
    assert "[presets] ok since" in runs[2].stdout
    assert f"[study] redone: it holds fewer than --trials {SMOKE.trials}" in runs[2].stdout
    assert "[report] redone: study, retrain finished after it" in runs[2].stdout
    assert [after[2][s]["status"] for s in STAGES] == ["ok"] * 5
    assert after[2]["study"]["result"]["counts"]["trained"] >= SMOKE.trials
    assert after[2]["bench"] == after[0]["bench"] and after[2]["presets"] == after[1]["presets"]


def test_a_last_call_skips_every_stage(chain):
    last = chain["runs"][3]
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert [f"[{s}] ok since" in last.stdout for s in STAGES] == [True] * 5
    assert chain["after"][3] == chain["after"][2]


def test_provenance_of_every_stage(chain):
    for name, s in stages(chain["out"]).items():
        p = s["provenance"]
        assert p["device"].startswith("cpu") and p["torch"] and p["optuna"] and p["argv"], name
        assert len(p["git_commit"] or "x" * 40) == 40 and (p["git_commit"] is None) == (p["git_dirty"] is None)
        assert s["seconds"] > 0 and s["plan"]["budget"] == SMOKE.budget


def test_every_figure_the_report_names_holds_a_measured_value(chain):
    out, ev = chain["out"], stages(chain["out"])
    report = (out / "report.md").read_text()
    named = [f for s in STAGES for f in figures(s, ev[s]["result"])]
    for f in named:
        assert f["value"] is not None and f["text"] != "missing", f
        cell = f["text"].replace("|", "\\|")                      # as a markdown table escapes it
        assert f"| {f['stage']} | {f['name']} | {cell} |" in report, f["name"]
    names = {f["name"] for f in named}
    assert {"proxy eager / naive loop, images/s", "proxy-trained trials per GPU-hour (CPU work included)",
            "seconds per trained trial: CPU work (sample, solve, build, measure)",
            "seconds per trained trial: proxy training and evaluation",
            "Kendall's tau, proxy vs retrained accuracy",
            "best searched - best preset, test accuracy (points)"} <= names
    for preset in ROW_2M:
        assert f"{preset}: validation accuracy (1 epochs)" in names
        assert f"{preset}: memory objective (inference_bytes_per_image)" in names


def test_presets_are_measured_not_filled_in(chain):
    rows = {r["preset"]: r for r in stages(chain["out"])["presets"]["result"]["rows"]}
    assert list(rows) == list(ROW_2M)
    # one row of 001 Table 3: equal parameters, equal MACs (28 sub-nets) ...
    assert all(abs(r["params"] - 2.07e6) < 0.01 * 2.07e6 for r in rows.values())
    assert len({r["macs"] for r in rows.values()}) == 1
    # ... but a 14-stage Verner block keeps its stage outputs alive: more memory than Euler's single one
    euler, verner = rows["ho-euler-x28"], rows["ho-verner8-x2"]
    assert verner["inference_bytes_per_image"] > 2 * euler["inference_bytes_per_image"]
    assert all(r["status"] == "ok" and r["images_per_second"] > 0 for r in rows.values())


def test_study_and_retrain_figures_agree_with_the_database(chain):
    out, ev = chain["out"], stages(chain["out"])
    study = studies.open_study("evidence", f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "duplicate_of" not in t.user_attrs]
    s = ev["study"]["result"]
    assert s["counts"]["trained"] == len(done) >= SMOKE.trials
    assert any(t.user_attrs.get("preset") for t in done)   # the near-budget presets were enqueued
    for t in s["trials"]:
        if t["state"] == "COMPLETE":
            assert t["cpu"] > 0 and t["gpu"] > 0 and t["taken_to_told"] >= t["gpu"]
    trained = [t for t in s["trials"] if t["state"] == "COMPLETE"]
    assert s["gpu_per_trained"] == pytest.approx(sum(t["gpu"] for t in trained) / len(trained))
    assert s["wall_per_trained"] * len(trained) == pytest.approx(s["launch_seconds"])
    assert s["trials_per_gpu_hour"] == pytest.approx(3600 / s["wall_per_trained"])
    assert 0 < s["gpu_fraction"] < 1 and s["idle_per_trained"] > 0
    r = ev["retrain"]["result"]
    assert SMOKE.retrain_min <= len(r["rows"]) <= SMOKE.retrain_max
    stored = {v["number"]: v["test_accuracy"] for k, v in study.user_attrs.items() if k.startswith("retrain:")}
    assert {x["number"]: x["test_accuracy"] for x in r["rows"]} == stored
    assert any(x["preset"] for x in r["rows"]) and any(not x["preset"] for x in r["rows"])
    assert r["kendall_tau"] == pytest.approx(studies.kendall_tau([x["proxy_val_accuracy"] for x in r["rows"]],
                                                                 [x["test_accuracy"] for x in r["rows"]]))
    assert r["searched_minus_preset"] == pytest.approx(r["best_searched"]["test_accuracy"]
                                                       - r["best_preset"]["test_accuracy"])


def test_out_holds_what_a_remote_machine_can_send_back(chain):
    out, work = chain["out"], chain["work"]
    files = {f.name: f.stat().st_size for f in out.iterdir()}
    assert set(files) == FILES and all(0 < b <= 16 * 2**20 for b in files.values())
    png = (out / "dashboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 100_000       # plots, not a blank page
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1400, 2400)
    assert 'id="pareto-plot"' in (out / "dashboard.html").read_text()
    assert list(work.glob("runs/evidence/trial_*/*/weights.pt"))       # retrain weights stay out of --out


def test_default_plan_fits_one_h100_session():
    e = estimate(DEFAULT, samples=12)
    assert set(e["seconds"]) == set(STAGES)
    assert max(e["seconds"].values()) <= 9 * 60 and e["total_seconds"] <= 25 * 60, e["seconds"]
    assert e["inputs"]["study_trials"]["presets"] >= 5          # the near-budget presets are among the trials
