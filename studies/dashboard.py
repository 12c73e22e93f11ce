"""A self-contained HTML dashboard of a study (``search.py dashboard``): the data and the page.

One HTML file, plotly.js inlined (works offline, mailable), built from any
study in any Optuna storage, finished or still running. The figures are
drawn by :mod:`studies.figures` (one encoding: colour = dominant scheme
family, symbol = proxy / preset / retrained, black outline = on the Pareto
front, the number inside = epochs behind the accuracy):

* ``#pareto-plot``  accuracy vs memory, each network at the highest proxy rung
  it reached (asynchronous successive halving's convention, the front that
  ``retrain`` and ``export --best`` use), the front as a staircase;
* ``#cost-plot``    accuracy vs parameters (the budget ± tolerance shaded) and MACs;
* ``#retrain-plot`` proxy vs retrained accuracy, Kendall's tau in the title
  (a short note instead while nothing is retrained);
* ``#history-plot`` accuracy per trial, the best so far, and the hypervolume so far;
* ``#trials-table`` every trial; click a header to sort (``#sort=KEY:desc``
  in the URL sorts on load).

A trial that repeated an earlier network (``duplicate_of``) is one network
with its twin: it is not plotted again (the twin's hover names it) and its row
in the table is marked, its copied numbers left out. The counts, hypervolume
and Kendall's tau are :func:`studies.results.summary`'s, the same ``show`` and
``retrain`` print. Each plot's wrapper carries ``data-points`` (the markers
plotly draws there) and ``<script id="dashboard-data" type="application/json">``
holds the summary, so a test can compare them with the rendered SVG.
"""
from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

import models

from . import figures
from .objective import scheme_label
from .results import (budget_text, counts_text, finite, first_line, hypervolume_history, scored, spec_of, summary,
                      trials_table, trials_with_results)
from .sortable_table import SORTER_JS, TABLE_CSS, table_html
from .storage import data_home, default_url, open_existing, redact_url, resolve_url, storage_errors

__all__ = ["build_dashboard", "dashboard", "trials_frame", "write_dashboard"]

_MIB = 2 ** 20

FRONT_RULE = ("The front compares each network at the <b>highest proxy rung it reached</b> (the number in a "
              "marker: its epochs), the convention of asynchronous successive halving: a promoted network's "
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
    that repeated this network), ``is_preset``, ``has_weights``, ``pareto``.
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
        ))
    cols = ["number", "state", "scheme", "architecture", "family", "preset", "is_preset", "accuracy",
            "retrain_accuracy", "retrain_protocol", "retrain_epochs", "memory_bytes", "memory_mib", "inference_mib",
            "training_mib", "params", "macs", "proxy_epochs", "proxy_seconds", "rungs", "device", "has_weights",
            "weights_path", "pareto", "duplicate_of", "duplicates", "fail_reason"]
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


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
.meta { color: #555; font-size: 0.92em; margin: 0.3em 0; }
.counts { font-size: 1.02em; margin: 0.5em 0; }
.rule { background: #f4f6fb; border-left: 4px solid #332288; padding: 0.5em 0.9em; font-size: 0.92em; max-width: 70em; }
.notice { background: #fff4ce; border: 1px solid #e0c35c; padding: 0.8em 1em; margin: 1em 0; font-size: 1.1em; }
.plot { margin: 1em 0 2em; border-top: 1px solid #ddd; }
.plot.empty { color: #555; padding: 0.4em 0; }
.plot.empty h3 { margin: 0.6em 0 0.2em; font-size: 1.05em; color: #333; }
.table-wrap { overflow-x: auto; }
"""


# --------------------------------------------------------------------------
# page
# --------------------------------------------------------------------------

def _points(fig) -> int:
    """Markers plotly draws for a figure (NaN coordinates draw nothing)."""
    n = 0
    for t in fig.data:
        if "markers" not in (t.mode or ""):
            continue
        xs = list(t.x) if t.x is not None else []
        ys = list(t.y) if t.y is not None else []
        n += sum(1 for x, y in zip(xs, ys) if finite(x) is not None and finite(y) is not None)
    return n


def _rungs_text(attrs: dict) -> str | None:
    try:
        e0, k, eta = int(attrs["proxy_epochs"]), int(attrs["rungs"]), int(attrs["eta"])
    except (KeyError, TypeError, ValueError):
        return None
    return (f"proxy rungs {', '.join(str(e0 * eta ** i) for i in range(k))} epochs "
            f"(the best 1/{eta} of a rung is promoted)")


def _retrain_hint(study, storage_url: str | None) -> str:
    name = study.study_name
    flag = ""
    if storage_url and storage_url != default_url(name):
        flag = f" --storage {redact_url(storage_url)}"
    return (f'<section class="plot empty" data-plot="retrain-plot" data-points="0"><h3>Proxy vs retrained accuracy'
            f'</h3><p>No network retrained yet: <code>python search.py retrain --study {html.escape(name)}'
            f'{html.escape(flag)}</code> retrains the Pareto front and the papers\' presets; Kendall\'s τ here then '
            f'says how well the proxy ranks the networks.</p></section>')


def build_dashboard(study, storage_url: str | None = None) -> tuple[str, dict]:
    """The dashboard page of ``study`` and a summary of what it shows.

    The summary (also embedded in the page as ``#dashboard-data``) is
    :func:`studies.results.summary` (counts over distinct networks, front,
    hypervolume, Kendall's tau) plus ``states`` (trials by state), ``complete``
    (networks plotted), ``pareto``/``retrained``/``presets`` counts,
    ``kendall_tau``, ``hypervolume``, ``memory_objective`` and ``plots``: markers
    per plot div id. ``message`` is set (and shown in the page) when the study has
    no completed trials.
    """
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
        "message": None,
    }
    running = states.get("RUNNING", 0) + states.get("WAITING", 0)
    notices = []
    if not len(done):
        info["message"] = (f"Study '{study.study_name}' has no completed trials yet "
                           f"({len(frame)} trial{'s' if len(frame) != 1 else ''}"
                           + (": " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items()))
                              if states else "") + "); nothing to plot.")
        notices.append(f'<div id="no-trials" class="notice">{html.escape(info["message"])}</div>')
    if running:
        notices.append(f'<div id="running" class="notice">{running} trial{"s" if running != 1 else ""} still '
                       f'running or waiting: the study is in progress; re-run the dashboard for newer results.</div>')

    sections = []
    if len(done):
        mem_label = f"{mem_kind} memory (MiB per image)"
        figs = {
            "pareto-plot": figures.pareto_figure(done, mem_label),
            "cost-plot": figures.cost_figure(done, budget, tolerance, budget_text(budget, tolerance) if budget else ""),
            "retrain-plot": figures.retrain_figure(both, tau) if len(both) else None,
            "history-plot": figures.history_figure(done, hypervolume_history(table)),
        }
        first = True
        for div_id, fig in figs.items():
            if fig is None:
                sections.append(_retrain_hint(study, storage_url))
                continue
            n = _points(fig)
            info["plots"][div_id] = n
            fig.update_layout(template="plotly_white")
            body = fig.to_html(full_html=False, include_plotlyjs=first, div_id=div_id,
                               config={"displaylogo": False, "responsive": True})
            first = False
            sections.append(f'<section class="plot" data-plot="{div_id}" data-points="{n}">{body}</section>')

    rungs = _rungs_text(attrs)
    meta = [f"storage <code>{html.escape(redact_url(storage_url))}</code>" if storage_url else None,
            f"budget {html.escape(budget_text(budget, tolerance))}" if budget else None,
            f"memory objective: {html.escape(mem_kind)} peak bytes of live tensors per image",
            html.escape(rungs) if rungs else None,
            "directions: " + ", ".join(d.name.lower() for d in study.directions),
            f"generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"]
    counts = [html.escape(counts_text(stats)) if len(frame) else "no trials yet"]
    if len(done):
        counts.append(f"Pareto front: {info['pareto']} network{'s' if info['pareto'] != 1 else ''}")
        counts.append(f"hypervolume {stats['hypervolume_normalized']:.4f}")
        if tau is not None:
            counts.append(f"Kendall's τ {tau:+.3f} over {info['retrained']} retrained networks")
    title = f"Study {study.study_name}: stacking-scheme search"
    data_blob = json.dumps(info, default=str).replace("</", "<\\/")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_CSS}{TABLE_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{' · '.join(m for m in meta if m)}</p>
<p class="counts" id="counts">{' · '.join(counts)}</p>
<p class="rule" id="front-rule">{FRONT_RULE} A trial that proposed a network already evaluated is that network
again, drawn once and counted once. Accuracy: top-1 on the held-out validation split (proxy); test accuracy
only after the full retrain (<code>search.py retrain</code>).</p>
{''.join(notices)}
{''.join(sections)}
<h2>Trials</h2>
<p class="meta">Click a column header to sort (again to reverse). * the study's memory objective. Grey italic rows:
duplicates of an earlier network.</p>
<div class="table-wrap">{table_html(frame, mem_kind)}</div>
<script type="application/json" id="dashboard-data">{data_blob}</script>
<script>{SORTER_JS}</script>
</body></html>
"""
    return page, info


def write_dashboard(study, out: str | Path, storage_url: str | None = None) -> dict:
    """Write the dashboard of ``study`` to ``out`` (folders created); return the summary."""
    page, info = build_dashboard(study, storage_url)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    info["path"] = str(out)
    return info


def dashboard(study: str, storage: str | None = None, out: str | Path | None = None) -> dict:
    """Write the dashboard of ``study`` (default ``<data home>/NAME.html``); return its summary
    (counts, Kendall's tau, markers per plot, ``path``)."""
    out = Path(out) if out else data_home() / f"{study}.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {str(out)!r}: expected an .html file")
    with storage_errors(resolve_url(study, storage)):
        store = open_existing(study, storage)
        try:
            return write_dashboard(store.study(), out, store.url)
        finally:
            store.close()
