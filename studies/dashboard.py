"""A self-contained HTML dashboard of a study (``search.py dashboard``): the data and the page.

One HTML file, plotly.js inlined (opens offline, mailable), built from any study in any
Optuna storage, finished or still running. Top to bottom:

* the header: counts, front, hypervolume, Kendall's tau (:func:`studies.results.summary`'s,
  the figures ``show`` prints), the time of the data, and the one legend of every plot
  (:func:`studies.figures.legend_html`);
* ``#pareto-plot`` accuracy vs memory, each network at the highest proxy rung it reached, the
  front a staircase labelled ``#N``, beside ``#front-table`` (the front, most accurate first);
* ``#network``: the drawing of one network (:func:`models.drawing.network_svg`): the front's
  most accurate at first, then whichever trial a click on a marker or a row (or a hover on the
  front table) chooses;
* ``#params-plot`` / ``#macs-plot``, ``#retrain-plot`` (proxy vs retrained, Kendall's tau),
  ``#history-plot`` / ``#hypervolume-plot`` in the order the scores were measured (a promoted
  score when its longer proxy finished, replacing the first);
* the space explored: ``#importance-plot`` (Optuna's PED-ANOVA) and ``#parallel-plot``
  (:mod:`studies.space_plots`);
* ``#trials-table``: every trial, sortable, filterable by state, family and front, and its CSV.

A trial that repeated an earlier network (``duplicate_of``) is one network with its twin: it
is drawn nowhere (the twin's hover names it) and its row is marked, its copied numbers left
out. Each plot's wrapper carries ``data-points`` (the markers plotly draws there) and
``#dashboard-data`` holds the summary, so a test can compare them with the rendered SVG.
``dashboard(..., watch=S)`` rewrites the page every S seconds while the study runs, and that
page reloads itself as often.
"""
from __future__ import annotations

import html
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

import models
from models.naming import scheme_label

from . import figures
from .page_script import PAGE_CSS, PAGE_JS, STATE_JS
from .page_sections import Plots, as_json, network_panel, retrain_hint, rungs_text
from .retrain_protocol import describe_retrain
from .results import (TARGET_ATTR, Snapshot, budget_text, counts_text, fidelity_results, finite, first_line,
                      hypervolume_history, lineage_counts, plural, scored, snapshot, spec_of, summary, trials_table,
                      trials_with_results)
from .sortable_table import TABLE_CSS, TABLE_JS, csv_link, filters_html, front_table_html, table_html
from .storage import data_home, open_existing, redact_url, resolve_url, storage_errors

__all__ = ["build_dashboard", "dashboard", "measurements", "trials_frame", "write_dashboard"]

_MIB = 2 ** 20

FRONT_RULE = ("The front compares each network at the <b>highest proxy rung it reached</b> (the number in a "
              "circle: its epochs), the convention of asynchronous successive halving: a promoted network's "
              "longer proxy replaces its first score, so promoted networks were trained longer than the rest. "
              "<code>search.py retrain</code> and <code>export --best</code> use this front. Optuna's own "
              "dashboard ranks on the first-rung accuracy Optuna stored (a finished trial cannot change), so it "
              "can show another Pareto set.")


# --------------------------------------------------------------------------
# reading a study (studies.results does the work; this shapes it for the page)
# --------------------------------------------------------------------------

def _missing(v) -> bool:
    try:
        return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def trials_frame(study, merged=None, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per trial (any state) for the page, from :func:`studies.trials_table`
    (promotion and retrain results folded in): accuracies in percent, memory in MiB per
    image, ``scheme`` (the stage schemes), ``family`` (the dominant one, which colours
    it), ``rungs`` (every rung's accuracy), ``duplicate_of`` and ``duplicates`` (trials
    that repeated this network), ``is_preset``, ``has_weights``, ``pareto``, ``spec``.
    ``merged``/``table``: the records and table when the caller has them.
    """
    merged = trials_with_results(study) if merged is None else merged
    by_number = {t.number: t for t in merged}
    table = trials_table(study, merged) if table is None else table
    table = table.reset_index()
    fid_cols = sorted((c for c in table.columns if c.startswith("val_accuracy@")), key=lambda c: int(c.split("@")[1]))
    twins: dict[int, list[int]] = {}
    for n, d in zip(table["number"], table["duplicate_of"]):
        if not _missing(d):
            twins.setdefault(int(d), []).append(int(n))
    rows = []
    for r in table.to_dict("records"):
        r = {k: (None if _missing(v) else v) for k, v in r.items()}
        t = by_number[int(r["number"])]
        scheme, arch = r.get("scheme"), r.get("architecture")
        try:
            spec = spec_of(t)
        except Exception:  # noqa: BLE001 - the table must still show the trial
            spec = None
        if spec is not None:
            scheme = scheme or scheme_label(spec)
            arch = arch or models.describe(spec)
        inf_b, tr_b, mem = (finite(r.get(k)) for k in ("inference_bytes_per_image", "training_bytes_per_image",
                                                       "memory"))
        rungs = ", ".join(f"{c.split('@')[1]} ep {100 * r[c]:.2f}%" for c in fid_cols if r.get(c) is not None)
        rows.append(dict(
            number=int(r["number"]), state=r["state"], scheme=scheme or "", architecture=arch or "",
            family=figures.dominant_family(spec, scheme or ""),
            preset=r.get("preset") or "", is_preset=bool(r.get("preset")),
            accuracy=finite(r.get("val_accuracy")), retrain_accuracy=finite(r.get("retrain_test_accuracy")),
            retrain_protocol=r.get("retrain_protocol"), retrain_epochs=finite(t.user_attrs.get("retrain_epochs")),
            # the retrain in words, done over planned epochs and overrides: "fast 2/40ep"
            retrain_how=(describe_retrain(t.user_attrs["retrain_record"], short=True)
                         if t.user_attrs.get("retrain_record") else
                         figures.retrain_text(r.get("retrain_protocol"), t.user_attrs.get("retrain_epochs"))
                         if finite(r.get("retrain_test_accuracy")) is not None else None),
            memory_bytes=mem, memory_mib=None if mem is None else mem / _MIB,
            inference_mib=None if inf_b is None else inf_b / _MIB,
            training_mib=None if tr_b is None else tr_b / _MIB,
            params=finite(r.get("params")), macs=finite(r.get("macs")),
            proxy_epochs=finite(r.get("proxy_epochs")), proxy_seconds=finite(r.get("proxy_seconds")), rungs=rungs,
            device=r.get("device"), has_weights=bool(r.get("weights_path")), weights_path=r.get("weights_path"),
            pareto=bool(r.get("pareto")),
            duplicate_of=None if r.get("duplicate_of") is None else int(r["duplicate_of"]),
            duplicates=", ".join(str(n) for n in twins.get(int(r["number"]), [])),
            fail_reason=first_line(r.get("fail_reason") or t.user_attrs.get("retrain_reason") or ""),
            spec=spec,
        ))
    cols = ["number", "state", "scheme", "architecture", "family", "preset", "is_preset", "accuracy",
            "retrain_accuracy", "retrain_protocol", "retrain_epochs", "retrain_how", "memory_bytes", "memory_mib", "inference_mib",
            "training_mib", "params", "macs", "proxy_epochs", "proxy_seconds", "rungs", "device", "has_weights",
            "weights_path", "pareto", "duplicate_of", "duplicates", "fail_reason", "spec"]
    frame = pd.DataFrame(rows, columns=cols)
    for col in ("accuracy", "retrain_accuracy", "retrain_epochs", "memory_bytes", "memory_mib", "inference_mib",
                "training_mib", "params", "macs", "proxy_epochs", "proxy_seconds"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame["pareto"] = frame["pareto"].astype(bool)
    frame["duplicate_of"] = frame["duplicate_of"].astype("Int64")
    for col in ("accuracy", "retrain_accuracy"):  # the project stores fractions; the page shows percent
        known = frame[col].dropna()
        if len(known) and known.abs().max() <= 1.0:
            frame[col] = frame[col] * 100.0
    return frame


def _utc(v) -> datetime | None:
    """A trial's time (Optuna's naive local datetime) or a result's ISO string, in UTC."""
    if _missing(v) or v in ("", None):
        return None
    try:
        t = datetime.fromisoformat(v) if isinstance(v, str) else pd.Timestamp(v).to_pydatetime()
    except (TypeError, ValueError):
        return None
    return t.astimezone(timezone.utc)     # a naive time is the local time Optuna wrote


def measurements(table: pd.DataFrame, study_attrs: dict) -> pd.DataFrame:
    """Every score of every scored network, in the order it was measured: one row per rung
    (``number``, ``epochs``, ``accuracy`` fraction, ``memory`` bytes, ``at`` UTC or None,
    ``current`` = the network's score on the front, not replaced by a longer proxy). A first
    rung is measured when its trial completed, a promotion when its result was stored
    (``finished_at``); a score without a time goes last."""
    done = scored(table)
    fid = fidelity_results(study_attrs)
    cols = [c for c in done.columns if c.startswith("val_accuracy@")]
    rows = []
    for n, r in zip(done.index, done.to_dict("records")):      # not iterrows: a Series per row
        accs = {int(c.split("@")[1]): float(r[c]) for c in cols if finite(r[c]) is not None}
        if not accs:   # a study made by other means: its one score
            accs = {int(r["proxy_epochs"]) if finite(r["proxy_epochs"]) is not None else 0: float(r["val_accuracy"])}
        first, last = min(accs), max(accs)
        for e, a in sorted(accs.items()):
            at = _utc(r["datetime_complete"]) if e == first else _utc(fid.get(int(n), {}).get(e, {}).get("finished_at"))
            rows.append(dict(number=int(n), epochs=e, accuracy=a, memory=float(r["memory"]), at=at,
                             current=e == last))
    if not rows:
        return pd.DataFrame(columns=["number", "epochs", "accuracy", "memory", "at", "current"])
    never = datetime.max.replace(tzinfo=timezone.utc)
    rows.sort(key=lambda d: (d["at"] is None, d["at"] or never, d["epochs"], d["number"]))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------
# page
# --------------------------------------------------------------------------

def _in_progress(study, states: dict) -> bool:
    target = finite(study.user_attrs.get(TARGET_ATTR))
    finished = lineage_counts(study.get_trials(deepcopy=False))["finished"]
    return bool(states.get("RUNNING", 0) + states.get("WAITING", 0)) or (target is not None and finished < target)


def build_dashboard(study, storage_url: str | None = None, refresh: int | None = None) -> tuple[str, dict]:
    """The dashboard page of ``study`` and a summary of what it shows.

    The summary (also embedded in the page as ``#dashboard-data``) is
    :func:`studies.results.summary` (counts over distinct networks, front,
    hypervolume, Kendall's tau) plus ``states`` (trials by state), ``complete``
    (networks plotted), ``pareto``/``retrained``/``presets`` counts,
    ``kendall_tau``, ``hypervolume``, ``memory_objective``, ``plots`` (markers per plot
    div id), ``drawn`` (the trial whose network is drawn first), ``in_progress``,
    ``data_at`` (when the study was read, UTC) and ``latest_result``. ``message`` is set
    (and shown in the page) when the study has no completed trials. ``refresh``: seconds
    between the page's reloads while the study runs (``dashboard --watch``).
    """
    read_at = datetime.now(timezone.utc)
    study = snapshot(study)                # read once; every part below works from it
    merged = trials_with_results(study)
    table = trials_table(study, merged)
    stats = summary(study, table, merged)
    frame = trials_frame(study, merged, table)
    states = frame["state"].value_counts().to_dict() if len(frame) else {}
    done = frame[frame["number"].isin(scored(table).index)].copy()
    both = done[done["retrain_accuracy"].notna()]
    mem_kind = str(stats["memory"])
    attrs = study.user_attrs
    budget = finite(attrs.get("budget"))
    tolerance = finite(attrs.get("tolerance"))
    tau = stats["kendall_tau_proxy_vs_retrain"]
    events = measurements(table, attrs)
    latest = max((t for t in events["at"] if t is not None), default=None) if len(events) else None
    front = done[done["pareto"]].sort_values("accuracy", ascending=False)
    drawn = int(front["number"].iloc[0]) if len(front) else (int(done["number"].iloc[0]) if len(done) else None)
    info = {
        **stats,
        "trials": int(len(frame)),
        "lineages": stats["trials"],
        "states": {k: int(v) for k, v in states.items()},
        "complete": int(len(done)),
        "pareto": int(done["pareto"].sum()),
        "pareto_trials": stats["pareto"],
        "retrained": int(len(both)),
        "presets": int(done["is_preset"].sum()),
        "kendall_tau": tau,
        "hypervolume": stats["hypervolume_normalized"],
        "memory_objective": mem_kind,
        "plots": {},
        "drawn": drawn,
        "in_progress": _in_progress(study, states),
        "data_at": read_at.isoformat(timespec="seconds"),
        "latest_result": latest.isoformat(timespec="seconds") if latest else None,
        "message": None,
    }
    refresh = refresh if refresh and info["in_progress"] else None
    running = states.get("RUNNING", 0) + states.get("WAITING", 0)
    notices = []
    if not len(done):
        info["message"] = (f"Study '{study.study_name}' has no completed trials yet "
                           f"({len(frame)} trial{'s' if len(frame) != 1 else ''}"
                           + (": " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items()))
                              if states else "") + "); nothing to plot.")
        notices.append(f'<div id="no-trials" class="notice">{html.escape(info["message"])}</div>')
    if running:
        again = (f"this page reloads every {refresh} s while <code>dashboard --watch {refresh}</code> rewrites it"
                 if refresh else "<code>search.py dashboard --watch 60</code> keeps this page current")
        notices.append(f'<div id="running" class="notice">{running} trial{"s" if running != 1 else ""} still '
                       f'running or waiting: the study is in progress; {again}.</div>')

    drawings, inline, defs = network_panel(frame, drawn)
    sections, plots = [], Plots(info)
    if len(done):
        mem_label = f"{mem_kind} memory (MiB per image)"
        pareto = plots.section("pareto-plot", "Accuracy vs memory: each network at the highest proxy rung it reached",
                               figures.pareto_figure(done, mem_label))
        side = (f'<aside class="plot" id="front-side"><h3>The Pareto front: {plural(len(front), "network")}, most '
                f'accurate first</h3>{front_table_html(front)}<p class="meta">Hover or click a row (or a marker) '
                f'to draw its network below.</p></aside>')
        sections.append(f'<div class="grid front">{pareto}{side}</div>')
        if inline:
            sections.append(f'<section id="network" class="plot">{inline}</section>')
        band = budget_text(budget, tolerance) if budget else ""
        params_fig, macs_fig = figures.cost_figures(done, budget, tolerance, band)
        sections.append('<div class="grid two">'
                        + plots.section("params-plot", "Accuracy vs parameters"
                                        + (f" (the budget, {html.escape(band)}, shaded)" if budget else ""), params_fig)
                        + plots.section("macs-plot", "Accuracy vs MACs per image", macs_fig) + "</div>")
        if len(both):
            how = sorted(set(both["retrain_how"].dropna()))
            what = (f"Kendall's τ = {tau:.3f} (n = {len(both)} networks)" if tau is not None
                    else f"Kendall's τ needs ≥ 2 retrained networks (n = {len(both)})")
            made = html.escape(how[0] if len(how) == 1 else "different protocols or epochs: " + "; ".join(how))
            sections.append(plots.section("retrain-plot", f"Proxy vs retrained accuracy: {what}",
                                          figures.retrain_figure(both),
                                          f"Retrained with {made}; the number inside: the retrain's epochs."))
        else:
            sections.append(retrain_hint(study, storage_url))
        hv = [v for _, v in hypervolume_history(table, zip(events["number"], events["accuracy"]))]
        acc_fig, hv_fig = figures.history_figures(done, events.assign(accuracy=events["accuracy"] * 100.0), hv)
        sections.append('<div class="grid two">'
                        + plots.section("history-plot", "Every score in the order measured, and the best current score",
                                        acc_fig, "A promoted network appears again when its longer proxy finished; "
                                                 "its first score turns hollow.")
                        + plots.section("hypervolume-plot", "Hypervolume of the front as it stood (normalised)", hv_fig,
                                        "Reference: accuracy 0 and 1.1 × the largest memory; the last value is the "
                                        "header's.") + "</div>")
        sections.append("<h2>The space explored</h2>" + plots.space(study, frame, f"{mem_kind} memory"))

    rungs = rungs_text(attrs)
    meta = [f"storage <code>{html.escape(redact_url(storage_url))}</code>" if storage_url else None,
            f"budget {html.escape(budget_text(budget, tolerance))}" if budget else None,
            f"memory objective: {html.escape(mem_kind)} peak bytes of live tensors per image",
            html.escape(rungs) if rungs else None,
            "directions: " + ", ".join(d.name.lower() for d in study.directions)]
    when = (f'data read <time id="data-time" datetime="{info["data_at"]}">{read_at:%Y-%m-%d %H:%M:%S} UTC</time>'
            + (f" · latest result {latest:%Y-%m-%d %H:%M:%S} UTC" if latest else ""))
    if refresh:
        when += (f' · <label><input type="checkbox" id="auto-refresh" checked> reload every {refresh} s</label> '
                 f'(while <code>search.py dashboard --watch {refresh}</code> runs)')
    counts = [html.escape(counts_text(stats)) if len(frame) else "no trials yet"]
    if len(done):
        counts.append(f"Pareto front: {info['pareto']} network{'s' if info['pareto'] != 1 else ''}")
        counts.append(f"hypervolume {stats['hypervolume_normalized']:.4f}")
        if tau is not None:
            counts.append(f"Kendall's τ {tau:+.3f} over {info['retrained']} retrained networks")
    kinds = ({"circle"} if (~done["is_preset"]).any() else set()) | ({"star"} if done["is_preset"].any() else set()) \
        | ({"diamond"} if len(both) else set())
    legend = figures.legend_html(set(done["family"]), kinds) if len(done) else ""
    title = f"Study {study.study_name}: stacking-scheme search"
    csv = csv_link(table.to_csv(), f"{study.study_name}-trials.csv")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{PAGE_CSS}{TABLE_CSS}</style><script>{STATE_JS}</script></head>
<body data-refresh="{refresh or 0}">{defs}
<h1>{html.escape(title)}</h1>
<p class="meta">{' · '.join(m for m in meta if m)}</p>
<p class="meta" id="data-when">{when}</p>
<p class="counts" id="counts">{' · '.join(counts)}</p>
{legend}
<p class="rule" id="front-rule">{FRONT_RULE} A trial that proposed a network already evaluated is that network
again, drawn once and counted once. Accuracy: top-1 on the held-out validation split (proxy); test accuracy
only after a retrain (<code>search.py retrain</code>; its protocol and epochs are in the tables).</p>
{''.join(notices)}
{''.join(sections)}
<h2>Trials</h2>
<p class="meta">Click a column header to sort (again to reverse), a row to draw its network. * the study's memory
objective. Grey italic rows: duplicates of an earlier network. {csv}</p>
{filters_html(frame)}
<div class="table-wrap">{table_html(frame, mem_kind)}</div>
<script type="application/json" id="dashboard-data">{as_json(info)}</script>
<script type="application/json" id="drawings">{as_json(drawings)}</script>
<script>{TABLE_JS}</script>
<script>{PAGE_JS}</script>
</body></html>
"""
    return page, info


def write_dashboard(study, out: str | Path, storage_url: str | None = None, refresh: int | None = None) -> dict:
    """Write the dashboard of ``study`` to ``out`` (folders created); return the summary."""
    page, info = build_dashboard(study, storage_url, refresh)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    info["path"] = str(out)
    return info


def dashboard(study: str, storage: str | None = None, out: str | Path | None = None, watch: int | None = None,
              say=None) -> dict:
    """Write the dashboard of ``study`` (default ``<data home>/NAME.html``); return its summary
    (counts, Kendall's tau, markers per plot, ``path``). With ``watch`` (seconds), rewrite it every
    ``watch`` seconds while the study is in progress (trials running or waiting, or fewer finished
    than its target), the page reloading itself as often; ``say(info)`` is called after each write."""
    out = Path(out) if out else data_home() / f"{study}.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {str(out)!r}: expected an .html file")
    if watch is not None and (isinstance(watch, bool) or not isinstance(watch, int) or watch < 5):
        raise ValueError(f"--watch {watch!r}: seconds between rewrites, an integer of at least 5")
    with storage_errors(resolve_url(study, storage)):
        store = open_existing(study, storage)
        try:
            while True:
                # read once per page, with the sampled parameters (the space explored); through
                # the process's cache of the trials, so that --watch reads only what changed
                info = write_dashboard(Snapshot(store.study()), out, store.url, refresh=watch)
                if say:
                    say(info)
                if not watch or not info["in_progress"]:
                    return info
                time.sleep(watch)
        finally:
            store.close()
