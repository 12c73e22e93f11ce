"""The figures of an evidence run and the report that shows them (``benchmarks/evidence.py``).

:func:`study_figures` and :func:`retrain_figures` read them from the study database;
:func:`figures` names every figure a stage's result gives, formatted as the report
prints it; :func:`write_report` writes ``report.md`` (the stages with their device and
commit, every figure against its target, then the presets, the study's per-trial time
split and the retrained networks); :func:`screenshot` renders the dashboard in a
headless Chromium.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

import studies

__all__ = ["CHROMIUMS", "TARGETS", "figures", "retrain_figures", "screenshot", "study_figures", "trial_counts",
           "write_report"]

STAGES = ("bench", "presets", "study", "retrain", "report")
# what the figures are held to (the GPU evidence issue)
TARGETS = {"speedup": 4.0,                 # proxy images/s over the naive loop's, same model
           "trials_per_gpu_hour": 200.0,   # proxy-trained trials at a 1.0M budget, CPU work included
           "kendall_tau": 0.6,             # proxy vs fast retrain, on the retrained set
           "searched_minus_preset": 0.0}   # test accuracy, best searched minus best preset (fraction)
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _pct(v):
    return f"{100 * v:.2f}%"


def _mib(v):
    """Bytes in MiB, or KiB below 1 MiB (the smoke's 8x8 images need far less)."""
    return f"{v / 2**20:.1f} MiB" if v >= 2**20 else f"{v / 2**10:.1f} KiB"


def _fmt(spec):
    return lambda v: format(v, spec)


def _ordering(rows: list[dict], key: str) -> str | None:
    """Presets best first by ``key``, equal values joined by '='."""
    rows = sorted((r for r in rows if r.get(key) is not None), key=lambda r: -r[key])
    if not rows:
        return None
    text = rows[0]["preset"]
    for prev, r in zip(rows, rows[1:], strict=False):
        text += (" = " if r[key] == prev[key] else " > ") + r["preset"]
    return text


def figures(stage: str, r: dict) -> list[dict]:
    """The figures a stage's result gives, as the report names them; a value that should be
    there and is not reads ``missing`` (the stage is then partial). Figures that do not
    exist on the device (peak CUDA bytes on a CPU, a compiled run not asked for) are not named."""
    out = []
    if not r:
        return out              # a stage stopped before it had anything

    def add(name, value, fmt, target=None, goal=None):
        ok = value is not None and not (isinstance(value, float) and not math.isfinite(value))
        out.append({"stage": stage, "name": name, "value": value if ok else None,
                    "text": fmt(value) if ok else "missing",
                    "target": goal, "met": (ok and value >= target) if target is not None else None})

    if stage == "bench":
        add("model", f"{r['preset']}, {r['params'] / 1e6:.2f}M params, {r['train_flops_per_image'] / 1e9:.2f} "
                     "GFLOP per training image", str)
        for mode, d in r["proxy"].items():      # a run that failed has only its status and reason
            add(f"proxy {mode}: training images/s", d["images_per_second"], _fmt(",.0f"))
            add(f"proxy {mode}: training TFLOP/s", d["tflops"], _fmt(".3g"))
            add(f"proxy {mode}: validation accuracy", d.get("val_accuracy"), _pct)
            if mode == "compiled":
                add(f"proxy {mode}: compile seconds", (d.get("seconds") or {}).get("compile"), _fmt(".1f"))
        b = r.get("baseline") or {}
        add("naive loop: training images/s", b.get("images_per_second"), _fmt(",.0f"))
        add("naive loop: training TFLOP/s", b.get("tflops"), _fmt(".3g"))
        for mode in r["proxy"]:
            add(f"proxy {mode} / naive loop, images/s", r.get(f"speedup_{mode}_vs_baseline"), _fmt(".2f"),
                TARGETS["speedup"], f">= {TARGETS['speedup']:g}")
    elif stage == "presets":
        for row in r["rows"]:
            n = row["preset"]
            add(f"{n}: validation accuracy ({r['epochs']} epochs)", row["val_accuracy"], _pct)
            add(f"{n}: training images/s", row["images_per_second"], _fmt(",.0f"))
            if r.get("cuda"):
                add(f"{n}: peak CUDA memory", row["cuda_peak_bytes"], _mib)
            add(f"{n}: memory objective ({r['memory_objective']})", row.get(r["memory_objective"]), _mib)
        add(f"scheme ordering, {r['epochs']}-epoch proxy (best first)", _ordering(r["rows"], "val_accuracy"), str)
        add("scheme ordering, 001 Table 3 (best first)", _ordering(r["rows"], "paper_accuracy"), str)
    elif stage == "study":
        c = r["counts"]
        add("budget (parameters)", r["budget"], _fmt(","))
        add("proxy epochs per trial", r["proxy_epochs"], str)
        add("trials proxy-trained", c["trained"], str)
        add("trials pruned (budget infeasible)", c.get("PRUNED", 0), str)
        add("trials failed", c.get("FAIL", 0), str)
        add("proxy-trained trials per GPU-hour (CPU work included)", r["trials_per_gpu_hour"], _fmt(".0f"),
            TARGETS["trials_per_gpu_hour"], f">= {TARGETS['trials_per_gpu_hour']:g}")
        add("finished trials (pruned included) per GPU-hour", r["lineages_per_gpu_hour"], _fmt(".0f"))
        for key, what in (("cpu", "CPU work (sample, solve, build, measure)"),
                          ("gpu", "proxy training and evaluation"),
                          ("wall", "study wall time"),
                          ("idle", "study wall time not training (storage, sampler, data, CPU work not overlapped)")):
            add(f"seconds per trained trial: {what}", r[f"{key}_per_trained"], _fmt(".2f"))
        add("share of the study's wall time in proxy training", r["gpu_fraction"], _pct)
        add("Pareto set size", len(r["pareto"]), str)
        add("best proxy validation accuracy", r["best_val_accuracy"], _pct)
    elif stage == "retrain":
        add("networks retrained (fast protocol)", len(r["rows"]), str)
        add("retrain epochs", r["epochs"], str)
        add("Kendall's tau, proxy vs retrained accuracy", r["kendall_tau"], _fmt(".3f"), TARGETS["kendall_tau"],
            f">= {TARGETS['kendall_tau']:g}")
        for who in ("searched", "preset"):
            b = r[f"best_{who}"] or {}
            add(f"best {who}: network", b.get("architecture") and f"trial {b['number']}: {b['architecture']}", str)
            add(f"best {who}: test accuracy", b.get("test_accuracy"), _pct)
            add(f"best {who}: memory objective", b.get("memory"), _mib)
            add(f"best {who}: parameters", b.get("params"), _fmt(","))
        add("best searched - best preset, test accuracy (points)", r["searched_minus_preset"],
            lambda v: f"{100 * v:+.2f}", TARGETS["searched_minus_preset"], "> 0")
    elif stage == "report":
        add("dashboard: trials shown", r["dashboard"]["trials"], str)
        add("dashboard: retrained points", r["dashboard"]["retrained"], str)
        add("files in --out", len(r["files"]), str)
    return out


# ----------------------------------------------------------------------------- from the study
def trial_counts(study: optuna.Study) -> dict:
    """Lineage counts, with ``trained`` (COMPLETE, not a copy of a twin) and ``duplicates``."""
    c = studies.lineage_counts(study.get_trials(deepcopy=False))
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    c["trained"] = sum("duplicate_of" not in t.user_attrs for t in done)
    c["duplicates"] = len(done) - c["trained"]
    return c


def study_figures(study: optuna.Study, launch_seconds: float) -> dict:
    """Per trial its CPU work and proxy seconds (from the stored trials); for the study, the
    wall seconds of its launches per trained trial and the share of them spent training.
    (On a GPU the next trial's CPU work runs while the current one trains, so a trial's own
    taken-to-told seconds may include waiting for the device.)"""
    rows = []
    for t in studies.trials_with_results(study):
        a = t.user_attrs
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or "duplicate_of" in a:
            continue            # failed or interrupted trials and copies of a twin: no time of their own
        rows.append({"number": t.number, "state": t.state.name, "preset": a.get("preset"),
                     "cpu": a.get("cpu_seconds"), "gpu": a.get("proxy_seconds"),
                     "taken_to_told": (t.datetime_complete - t.datetime_start).total_seconds()})
    trained = [r for r in rows if r["state"] == "COMPLETE"]
    counts = trial_counts(study)
    k, gpu = counts["trained"], sum(r["gpu"] or 0.0 for r in trained)
    table = studies.trials_table(study)
    front = table[table["pareto"].astype(bool)]
    return {"counts": counts, "budget": study.user_attrs.get("budget"),
            "proxy_epochs": study.user_attrs.get("proxy_epochs"),
            "cpu_per_trained": sum(r["cpu"] or 0.0 for r in trained) / k if k else None,
            "gpu_per_trained": gpu / k if k else None,
            "wall_per_trained": launch_seconds / k if k else None,
            "idle_per_trained": (launch_seconds - gpu) / k if k else None,
            "trials_per_gpu_hour": 3600 * k / launch_seconds if launch_seconds else None,
            "lineages_per_gpu_hour": 3600 * counts["finished"] / launch_seconds if launch_seconds else None,
            "gpu_fraction": gpu / launch_seconds if launch_seconds else None,
            "pareto": [int(n) for n in front.index], "best_val_accuracy": float(table["val_accuracy"].max()),
            "trials": rows}


def retrain_figures(study: optuna.Study, numbers: list[int]) -> dict:
    table = studies.trials_table(study)
    rows = []
    for n in numbers:
        r = table.loc[n]
        if pd.isna(r["retrain_test_accuracy"]):
            continue
        rows.append({"number": n, "architecture": r["architecture"],
                     "preset": None if pd.isna(r["preset"]) else r["preset"],
                     "pareto": bool(r["pareto"]), "params": int(r["params"]), "memory": float(r["memory"]),
                     "proxy_val_accuracy": float(r["val_accuracy"]),
                     "test_accuracy": float(r["retrain_test_accuracy"]), "protocol": r["retrain_protocol"]})
    searched = [r for r in rows if not r["preset"]]
    preset = [r for r in rows if r["preset"]]
    best = {k: max(v, key=lambda r: r["test_accuracy"]) if v else None
            for k, v in (("searched", searched), ("preset", preset))}
    tau = studies.kendall_tau([r["proxy_val_accuracy"] for r in rows], [r["test_accuracy"] for r in rows])
    gap = (best["searched"]["test_accuracy"] - best["preset"]["test_accuracy"]
           if best["searched"] and best["preset"] else None)
    return {"rows": rows, "kendall_tau": tau, "best_searched": best["searched"], "best_preset": best["preset"],
            "searched_minus_preset": gap}


def screenshot(html: Path, png: Path, profile: Path) -> str:
    """Render ``html`` to ``png`` in headless Chromium; '' when done, else why not."""
    browser = next((p for p in map(shutil.which, CHROMIUMS) if p), None)
    if browser is None:
        return f"no browser found on PATH (looked for {', '.join(CHROMIUMS)}): dashboard.png not made"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--hide-scrollbars",
           "--window-size=1400,2400", f"--screenshot={png}", html.resolve().as_uri()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return f"{browser} did not finish the screenshot in 180 s: dashboard.png not made"
    if res.returncode != 0 or not png.exists() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        return f"{browser} failed (exit {res.returncode}): {res.stderr.strip()[-300:]}"
    return ""


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def write_report(evidence: dict, path: Path) -> None:
    """``report.md`` from the evidence: stages, every figure against its target, detail tables."""
    stages = evidence["stages"]
    lines = ["# Evidence", "", f"Command: `{evidence.get('command')}`", ""]
    lines += _table(["stage", "status", "seconds", "device", "commit", "finished"], [
        [n, s["status"] + (f" ({s['reason']})" if s.get("reason") else ""), f"{s['seconds']:.0f}",
         s["provenance"]["device"], _commit(s["provenance"]), s["finished"]] for n, s in stages.items()])
    lines += ["", "## Figures", ""]
    lines += _table(["stage", "figure", "value", "target", "met"], [
        [f["stage"], f["name"], f["text"], f["target"] or "", {True: "yes", False: "**no**", None: ""}[f["met"]]]
        for n in STAGES if (stages.get(n) or {}).get("status") in ("ok", "partial")
        for f in figures(n, stages[n]["result"])])
    if (p := _result(stages, "presets")):
        lines += ["", f"## 001 Table 3, the 2.07M row: {p['epochs']}-epoch proxies", ""]
        lines += _table(["preset", "001 test acc.", "val. acc.", "images/s", "peak CUDA", "memory objective",
                         "MACs/image"], [
            [r["preset"], f"{r['paper_accuracy']}%" if r["paper_accuracy"] else "-",
             _pct(r["val_accuracy"]) if r["val_accuracy"] is not None else r["status"],
             f"{r['images_per_second']:,.0f}" if r["images_per_second"] else "-",
             _mib(r["cuda_peak_bytes"]) if r["cuda_peak_bytes"] else "-",
             _mib(r[p["memory_objective"]]) if r.get(p["memory_objective"]) else "-",
             f"{r['macs'] / 1e9:.2f} G" if r.get("macs") else "-"] for r in p["rows"]])
    if (s := _result(stages, "study")):
        lines += ["", "## Study: seconds per trial", "",
                  "CPU work: sample, width solve, build, measure; proxy: training and evaluation on the device; "
                  "taken to told: from the trial's start to its result in the study (on a GPU the next trial "
                  "is prepared while the current one trains, so this includes waiting for the device).", ""]
        lines += _table(["trial", "state", "preset", "CPU work", "proxy", "taken to told"], [
            [t["number"], t["state"], t["preset"] or "",
             *("-" if t[k] is None else f"{t[k]:.2f}" for k in ("cpu", "gpu", "taken_to_told"))]
            for t in s["trials"]])
    if (r := _result(stages, "retrain")):
        lines += ["", f"## Retrained networks (fast protocol, {r['epochs']} epochs)", ""]
        lines += _table(["trial", "architecture", "preset", "Pareto", "params", "memory", "proxy val.",
                         "retrained test"], [
            [x["number"], x["architecture"], x["preset"] or "", "yes" if x["pareto"] else "", f"{x['params']:,}",
             _mib(x["memory"]), _pct(x["proxy_val_accuracy"]), _pct(x["test_accuracy"])] for x in r["rows"]])
    path.write_text("\n".join(lines) + "\n")


def _commit(p: dict) -> str:
    return (p["git_commit"] or "-")[:10] + (" (uncommitted changes)" if p["git_dirty"] else "")


def _result(stages: dict, name: str) -> dict | None:
    s = stages.get(name) or {}
    return s.get("result") if s.get("status") in ("ok", "partial") else None
