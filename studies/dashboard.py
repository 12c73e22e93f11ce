"""A self-contained HTML dashboard of a study (``search.py dashboard``).

One HTML file, plotly.js inlined (works offline, mailable), built from any
study in any Optuna storage, finished or still running:

* ``#pareto-plot``  accuracy vs memory: proxy points (circles) coloured by
  scheme, dominated ones faded, the Pareto front as a staircase, retrained
  test accuracies (diamonds) and the papers' presets enqueued in the study
  (stars, labelled with the preset's name);
* ``#cost-plot``    accuracy vs parameters and vs MACs;
* ``#retrain-plot`` proxy accuracy vs retrained test accuracy, Kendall's tau
  in the title (how well the proxy ranks the networks);
* ``#history-plot`` proxy accuracy per trial and the best so far;
* ``#trials-table`` every trial; click a header to sort (``#sort=KEY:desc``
  in the URL sorts on load).

Each plot's wrapper carries ``data-points`` (the number of markers plotly
draws there) and ``<script id="dashboard-data" type="application/json">``
holds the counts, so a test can compare them with the rendered SVG.
"""
from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import models

from .objective import scheme_label
from .results import kendall_tau, pareto_mask, spec_of, trials_table, trials_with_results
from .storage import data_home, open_existing, redact_url

__all__ = ["build_dashboard", "dashboard", "trials_frame", "write_dashboard"]

# a qualitative palette (plotly's "Plotly" + "D3" sets): schemes keep their colour across plots
_PALETTE = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880",
            "#FF97FF", "#FECB52", "#1F77B4", "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF"]
_FADED = 0.25
_MIB = 2 ** 20


# --------------------------------------------------------------------------
# reading a study (studies.table does the work; this shapes it for plotting)
# --------------------------------------------------------------------------

ACCURACY_LABEL = "top-1 on the held-out validation split, at the longest proxy fidelity trained"


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def trials_frame(study) -> pd.DataFrame:
    """One row per trial (any state) for the page, from :func:`studies.trials_table`
    (promotion and retrain results folded in): accuracies in percent, memory in
    MiB per image, ``scheme``, ``is_preset``, ``has_weights``, ``pareto``.

    A study made by other means (no user attrs) still plots: accuracy and
    memory then come from the trial's two objective values.
    """
    merged = {t.number: t for t in trials_with_results(study)}
    table = trials_table(study, list(merged.values())).reset_index()
    rows = []
    for r in table.to_dict("records"):
        r = {k: (None if _missing(v) else v) for k, v in r.items()}
        t = merged[int(r["number"])]
        values = t.values or []
        acc, mem = _num(r.get("val_accuracy")), _num(r.get("memory"))
        if t.state.name == "COMPLETE" and acc is None and values:
            acc = _num(values[0])
        if t.state.name == "COMPLETE" and mem is None and len(values) > 1:
            mem = _num(values[1])
        scheme = r.get("scheme")
        arch = r.get("architecture")
        if not scheme or not arch:
            try:
                spec = spec_of(t)
            except Exception:  # noqa: BLE001 - the table must still show the trial
                spec = None
            if spec is not None:
                scheme = scheme or scheme_label(spec)
                if not arch:
                    arch = models.describe(spec)
        inf_b, tr_b = _num(r.get("inference_bytes_per_image")), _num(r.get("training_bytes_per_image"))
        rows.append(dict(
            number=int(r["number"]), state=r["state"], scheme=scheme or "", architecture=arch or "",
            preset=r.get("preset") or "", is_preset=bool(r.get("preset")),
            accuracy=acc, retrain_accuracy=_num(r.get("retrain_test_accuracy")),
            retrain_protocol=r.get("retrain_protocol"),
            memory_bytes=mem, memory_mib=None if mem is None else mem / _MIB,
            inference_mib=None if inf_b is None else inf_b / _MIB,
            training_mib=None if tr_b is None else tr_b / _MIB,
            params=_num(r.get("params")), macs=_num(r.get("macs")),
            proxy_epochs=_num(r.get("proxy_epochs")), proxy_seconds=_num(r.get("proxy_seconds")),
            device=r.get("device"), has_weights=bool(r.get("weights_path")), weights_path=r.get("weights_path"),
            pareto=bool(r.get("pareto")),
            fail_reason=_first_line(r.get("fail_reason") or t.user_attrs.get("retrain_reason") or ""),
        ))
    cols = ["number", "state", "scheme", "architecture", "preset", "is_preset", "accuracy", "retrain_accuracy",
            "retrain_protocol", "memory_bytes", "memory_mib", "inference_mib", "training_mib", "params", "macs",
            "proxy_epochs", "proxy_seconds", "device", "has_weights", "weights_path", "pareto", "fail_reason"]
    frame = pd.DataFrame(rows, columns=cols)
    for col in ("accuracy", "retrain_accuracy", "memory_bytes", "memory_mib", "inference_mib", "training_mib",
                "params", "macs", "proxy_epochs", "proxy_seconds"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame["pareto"] = frame["pareto"].astype(bool)
    done = (frame["state"] == "COMPLETE") & frame["accuracy"].notna() & frame["memory_bytes"].notna()
    if done.any() and not frame.loc[done, "pareto"].any():  # a foreign study: objectives only
        frame.loc[done, "pareto"] = pareto_mask(frame.loc[done, "accuracy"], frame.loc[done, "memory_bytes"])
    for col in ("accuracy", "retrain_accuracy"):  # the project stores fractions; the page shows percent
        known = frame[col].dropna()
        if len(known) and known.abs().max() <= 1.0:
            frame[col] = frame[col] * 100.0
    return frame


def _missing(v) -> bool:
    try:
        return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def _first_line(text) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def _tau(x, y) -> float | None:
    tau = kendall_tau(x, y)
    return None if tau is None or not math.isfinite(tau) else float(tau)


# --------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------

def _colours(frame: pd.DataFrame) -> dict[str, str]:
    schemes = sorted(frame["scheme"].dropna().unique())
    return {s: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(schemes)}


def _fmt(v, spec: str = ",", suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:{spec}}{suffix}"


def _hover(r) -> str:
    lines = [f"<b>trial {r.number}</b>" + (f" · preset <b>{html.escape(r.preset)}</b>" if r.preset else ""),
             html.escape(r.architecture or "(no spec)"),
             f"val. accuracy (proxy{', %d ep' % r.proxy_epochs if _ok(r.proxy_epochs) else ''}): "
             f"{_fmt(r.accuracy, '.2f', '%')}"]
    if _ok(r.retrain_accuracy):
        proto = f", {html.escape(str(r.retrain_protocol))}" if r.retrain_protocol else ""
        lines.append(f"test accuracy (retrained{proto}): {_fmt(r.retrain_accuracy, '.2f', '%')}")
    lines += [f"memory: {_fmt(r.memory_mib, '.3f')} MiB/image",
              f"params: {_fmt(r.params)} · MACs: {_fmt(r.macs)}",
              f"scheme: {html.escape(r.scheme)}" + (" · <b>Pareto</b>" if r.pareto else "")]
    return "<br>".join(lines)


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _pareto_figure(done: pd.DataFrame, colours: dict, memory_label: str):
    fig = go.Figure()
    # front points first in each trace: plotly draws a trace's legend entry like its first point
    plain = done[~done["is_preset"]].sort_values(["pareto", "number"], ascending=[False, True])
    for scheme, g in plain.groupby("scheme", sort=True):
        fig.add_trace(go.Scatter(
            x=g["memory_mib"], y=g["accuracy"], mode="markers", name=scheme, legendgroup=scheme,
            marker=dict(symbol="circle", size=10, color=colours[scheme],
                        opacity=[1.0 if p else _FADED for p in g["pareto"]],
                        line=dict(width=[1.5 if p else 0 for p in g["pareto"]], color="#222")),
            hovertext=[_hover(r) for r in g.itertuples()], hoverinfo="text"))
    presets = done[done["is_preset"]]
    if len(presets):
        fig.add_trace(go.Scatter(
            x=presets["memory_mib"], y=presets["accuracy"], mode="markers+text", name="papers' presets",
            text=list(presets["preset"]), textposition="top center", textfont=dict(size=10),
            marker=dict(symbol="star", size=15, color=[colours[s] for s in presets["scheme"]],
                        opacity=[1.0 if p else 0.55 for p in presets["pareto"]],
                        line=dict(width=1, color="#222")),
            hovertext=[_hover(r) for r in presets.itertuples()], hoverinfo="text"))
    front = done[done["pareto"]].sort_values("memory_mib")
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front["memory_mib"], y=front["accuracy"], mode="lines", line_shape="hv",
                                 name="Pareto front (proxy)", hoverinfo="skip",
                                 line=dict(color="#444", width=1, dash="dot")))
    rt = done[done["retrain_accuracy"].notna()]
    if len(rt):
        # a faint segment from each proxy point to its retrained result (lines only: no markers)
        xs, ys = [], []
        for r in rt.itertuples():
            xs += [r.memory_mib, r.memory_mib, None]
            ys += [r.accuracy, r.retrain_accuracy, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#999", width=1, dash="dot"),
                                 hoverinfo="skip", showlegend=False, connectgaps=False))
        fig.add_trace(go.Scatter(
            x=rt["memory_mib"], y=rt["retrain_accuracy"], mode="markers", name="retrained (test acc.)",
            marker=dict(symbol="diamond", size=12, color=[colours[s] for s in rt["scheme"]],
                        line=dict(width=1.5, color="#000")),
            hovertext=[_hover(r) for r in rt.itertuples()], hoverinfo="text"))
    fig.update_layout(title="Accuracy vs memory: circles proxy (faded: dominated), diamonds retrained, "
                            "stars the papers' presets",
                      xaxis_title=memory_label, yaxis_title="accuracy (%)", height=560,
                      legend=dict(title="scheme"), margin=dict(t=60, r=20))
    return fig


def _cost_figure(done: pd.DataFrame, colours: dict):
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("accuracy vs parameters", "accuracy vs MACs per image"))
    for scheme, g in done.groupby("scheme", sort=True):
        hover = [_hover(r) for r in g.itertuples()]
        marker = dict(size=9, color=colours[scheme], symbol=["star" if p else "circle" for p in g["is_preset"]],
                      opacity=[1.0 if p else 0.6 for p in g["pareto"]])
        for col, key in ((1, "params"), (2, "macs")):
            fig.add_trace(go.Scatter(x=g[key], y=g["accuracy"], mode="markers", name=scheme, legendgroup=scheme,
                                     showlegend=col == 1, marker=marker, hovertext=hover, hoverinfo="text"),
                          row=1, col=col)
    fig.update_xaxes(title_text="parameters", row=1, col=1)
    fig.update_xaxes(title_text="MACs / image", row=1, col=2)
    fig.update_yaxes(title_text="val. accuracy, proxy (%)", row=1, col=1)
    fig.update_layout(height=460, margin=dict(t=60, r=20), legend=dict(title="scheme"))
    return fig


def _retrain_figure(done: pd.DataFrame, colours: dict, tau: float | None, n: int):
    both = done[done["retrain_accuracy"].notna() & done["accuracy"].notna()]
    fig = go.Figure()
    for scheme, g in both.groupby("scheme", sort=True):
        fig.add_trace(go.Scatter(
            x=g["accuracy"], y=g["retrain_accuracy"], mode="markers", name=scheme,
            marker=dict(size=11, color=colours[scheme], symbol=["star" if p else "diamond" for p in g["is_preset"]],
                        line=dict(width=1, color="#000")),
            hovertext=[_hover(r) for r in g.itertuples()], hoverinfo="text"))
    if not len(both):
        fig.add_annotation(text="No retrained trials yet: search.py retrain --study NAME retrains the Pareto set", x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                           font=dict(size=15, color="#666"))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    if tau is None:
        title = f"Proxy vs retrained accuracy: Kendall's τ needs ≥ 2 retrained trials (n = {n})"
    else:
        title = f"Proxy vs retrained accuracy: Kendall's τ = {tau:.3f} (n = {n})"
    fig.update_layout(title=title, xaxis_title="val. accuracy, proxy (%)",
                      yaxis_title="test accuracy, retrained (%)", height=460, margin=dict(t=60, r=20),
                      legend=dict(title="scheme"))
    return fig


def _history_figure(done: pd.DataFrame, colours: dict):
    d = done.sort_values("number")
    best = d["accuracy"].cummax()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=d["number"], y=d["accuracy"], mode="markers", name="trial (proxy)",
                             marker=dict(size=8, color=[colours[s] for s in d["scheme"]], opacity=0.8),
                             hovertext=[_hover(r) for r in d.itertuples()], hoverinfo="text"))
    fig.add_trace(go.Scatter(x=d["number"], y=best, mode="lines", line_shape="hv", name="best so far",
                             line=dict(color="#d62728", width=2), hoverinfo="y"))
    fig.update_layout(title="Optimisation history: proxy accuracy per completed trial and the best so far",
                      xaxis_title="trial number", yaxis_title="val. accuracy, proxy (%)", height=420,
                      margin=dict(t=60, r=20))
    return fig


# --------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------

# (key, header, frame column, format)
_COLUMNS = [
    ("number", "#", "number", "d"),
    ("state", "state", "state", None),
    ("scheme", "scheme", "scheme", None),
    ("architecture", "architecture", "architecture", None),
    ("preset", "preset", "preset", None),
    ("accuracy", "val. acc. % (proxy)", "accuracy", ".2f"),
    ("retrain", "test acc. % (retrained)", "retrain_accuracy", ".2f"),
    ("inference", "inference MiB/img", "inference_mib", ".3f"),
    ("training", "training MiB/img", "training_mib", ".3f"),
    ("params", "params", "params", ","),
    ("macs", "MACs", "macs", ","),
    ("epochs", "proxy epochs", "proxy_epochs", "g"),
    ("seconds", "proxy s", "proxy_seconds", ".1f"),
    ("pareto", "Pareto", "pareto", None),
    ("weights", "weights", "has_weights", None),
    ("reason", "note", "fail_reason", None),
]


def _cell(value, fmt) -> tuple[str, str]:
    """(display text, sort key) of one table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "", ""
    if isinstance(value, bool):
        return ("✓" if value else ""), ("1" if value else "0")
    if fmt and isinstance(value, (int, float)):
        v = int(value) if fmt in ("d", ",") else value
        return format(v, fmt), repr(float(value))
    return str(value), str(value)


def _table_html(frame: pd.DataFrame, objective: str = "inference") -> str:
    head = "".join(f'<th data-key="{k}" data-type="{"num" if f else "text"}" title="click to sort">'
                   f'{html.escape(h)}{" *" if k == objective else ""}</th>' for k, h, _, f in _COLUMNS)
    rows = []
    for r in frame.sort_values("number").to_dict("records"):
        cells = []
        for k, _, col, fmt in _COLUMNS:
            text, key = _cell(r.get(col), fmt)
            tip = ""
            if k == "reason" and len(text) > 90:
                tip, text = f' title="{html.escape(text, quote=True)}"', text[:87] + "..."
            shown = html.escape(text).replace("+", "+<wbr>").replace(" | ", " |<wbr> ")
            cells.append(f'<td data-v="{html.escape(key, quote=True)}"{tip}>{shown}</td>')
        rows.append(f'<tr data-number="{r["number"]}" data-state="{r["state"]}">' + "".join(cells) + "</tr>")
    return (f'<table id="trials-table" class="trials"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


_SORTER_JS = r"""
(function () {
  var table = document.getElementById('trials-table');
  if (!table) return;
  var heads = table.tHead.rows[0].cells;
  function sortBy(key, desc) {
    var idx = -1, num = false;
    for (var i = 0; i < heads.length; i++) {
      heads[i].classList.remove('asc', 'desc');
      if (heads[i].dataset.key === key) { idx = i; num = heads[i].dataset.type === 'num'; }
    }
    if (idx < 0) return;
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[idx].dataset.v, y = b.cells[idx].dataset.v;
      if (x === '' && y === '') return 0;
      if (x === '') return 1;            // empty cells last, either direction
      if (y === '') return -1;
      var c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return desc ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    heads[idx].classList.add(desc ? 'desc' : 'asc');
    table.dataset.sortKey = key; table.dataset.sortDir = desc ? 'desc' : 'asc';
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener('click', function (e) {
      var key = e.currentTarget.dataset.key;
      var desc = table.dataset.sortKey === key ? table.dataset.sortDir !== 'desc'
                                               : e.currentTarget.dataset.type === 'num';
      sortBy(key, desc);
    });
  }
  var m = /sort=([\w-]+)(?::(asc|desc))?/.exec(location.hash);
  if (m) sortBy(m[1], m[2] === 'desc');
  window.sortTrialsTable = sortBy;
})();
"""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
.meta { color: #555; font-size: 0.92em; }
.notice { background: #fff4ce; border: 1px solid #e0c35c; padding: 0.8em 1em; margin: 1em 0; font-size: 1.1em; }
.plot { margin: 1em 0 2em; border-top: 1px solid #ddd; }
.table-wrap { overflow-x: auto; }
table.trials { border-collapse: collapse; font-size: 0.8em; width: 100%; }
table.trials th, table.trials td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
table.trials td { white-space: nowrap; }
table.trials td:nth-child(3) { white-space: normal; }
table.trials td:nth-child(4) { white-space: normal; min-width: 13em; }
table.trials td:last-child { white-space: normal; min-width: 11em; }
table.trials td:nth-child(2), table.trials td:nth-child(3), table.trials td:nth-child(4),
table.trials td:nth-child(5), table.trials td:last-child { text-align: left; }
table.trials th { background: #f3f3f3; cursor: pointer; position: sticky; top: 0; user-select: none; }
table.trials th.asc::after { content: " ▲"; } table.trials th.desc::after { content: " ▼"; }
table.trials tr[data-state="FAIL"] td { color: #a33; } table.trials tr[data-state="PRUNED"] td { color: #888; }
table.trials tr[data-state="RUNNING"] td { font-style: italic; }
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
        n += sum(1 for x, y in zip(xs, ys) if _ok(x) and _ok(y))
    return n


def build_dashboard(study, storage_url: str | None = None) -> tuple[str, dict]:
    """The dashboard page of ``study`` and a summary of what it shows.

    The summary (also embedded in the page as ``#dashboard-data``) has the
    trial counts by state, ``complete``/``pareto``/``retrained``/``presets``,
    ``kendall_tau`` and ``plots``: markers per plot div id. ``message`` is set
    (and shown in the page) when the study has no completed trials.
    """
    frame = trials_frame(study)
    states = frame["state"].value_counts().to_dict() if len(frame) else {}
    done = frame[frame["state"] == "COMPLETE"].copy()
    done = done[done["accuracy"].notna()]
    done["scheme"] = done["scheme"].replace("", "unknown")
    mem_kind = str(study.user_attrs.get("memory", "inference"))
    mem_label = f"{mem_kind} memory (MiB per image)"
    both = done[done["retrain_accuracy"].notna()]
    tau = _tau(both["accuracy"], both["retrain_accuracy"])
    summary = {
        "study": study.study_name,
        "trials": int(len(frame)),
        "states": {k: int(v) for k, v in states.items()},
        "complete": int(len(done)),
        "pareto": int(done["pareto"].sum()),
        "retrained": int(len(both)),
        "presets": int(done["is_preset"].sum()),
        "kendall_tau": tau,
        "memory_objective": mem_kind,
        "plots": {},
        "message": None,
    }
    running = states.get("RUNNING", 0) + states.get("WAITING", 0)
    notices = []
    if not len(done):
        summary["message"] = (f"Study '{study.study_name}' has no completed trials yet "
                              f"({len(frame)} trial{'s' if len(frame) != 1 else ''}"
                              + (": " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items()))
                                 if states else "") + "); nothing to plot.")
        notices.append(f'<div id="no-trials" class="notice">{html.escape(summary["message"])}</div>')
    if running:
        notices.append(f'<div id="running" class="notice">{running} trial{"s" if running != 1 else ""} still '
                       f'running or waiting: the study is in progress; re-run the dashboard for newer results.</div>')

    sections = []
    if len(done):
        colours = _colours(done)
        figs = {
            "pareto-plot": _pareto_figure(done, colours, mem_label),
            "cost-plot": _cost_figure(done, colours),
            "retrain-plot": _retrain_figure(done, colours, tau, len(both)),
            "history-plot": _history_figure(done, colours),
        }
        first = True
        for div_id, fig in figs.items():
            n = _points(fig)
            summary["plots"][div_id] = n
            fig.update_layout(template="plotly_white")
            body = fig.to_html(full_html=False, include_plotlyjs=first, div_id=div_id,
                               config={"displaylogo": False, "responsive": True})
            first = False
            sections.append(f'<section class="plot" data-plot="{div_id}" data-points="{n}">{body}</section>')

    attrs = study.user_attrs
    meta = [f"storage <code>{html.escape(redact_url(storage_url))}</code>" if storage_url else None,
            "directions: " + ", ".join(d.name.lower() for d in study.directions),
            *(f"{k}: {html.escape(str(attrs[k]))}" for k in ("budget", "tolerance", "memory") if k in attrs),
            "trials: " + (", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())) or "none"),
            f"generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"]
    title = f"Study {study.study_name}: stacking-scheme search"
    data_blob = json.dumps(summary).replace("</", "<\\/")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{' · '.join(m for m in meta if m)}</p>
<p class="meta">Accuracy: {ACCURACY_LABEL}. Memory: peak bytes of live tensors per image ({html.escape(mem_kind)}).
Retrained: test accuracy after the full retrain (<code>search.py retrain</code>).</p>
{''.join(notices)}
{''.join(sections)}
<h2>Trials</h2>
<p class="meta">Click a column header to sort (again to reverse). * the study's memory objective.</p>
<div class="table-wrap">{_table_html(frame, mem_kind)}</div>
<script type="application/json" id="dashboard-data">{data_blob}</script>
<script>{_SORTER_JS}</script>
</body></html>
"""
    return page, summary


def write_dashboard(study, out: str | Path, storage_url: str | None = None) -> dict:
    """Write the dashboard of ``study`` to ``out`` (folders created); return the summary."""
    page, summary = build_dashboard(study, storage_url)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    summary["path"] = str(out)
    return summary


def dashboard(study: str, storage: str | None = None, out: str | Path | None = None) -> dict:
    """Write the dashboard of ``study`` (default ``<data home>/NAME.html``); return its summary
    (counts, Kendall's tau, markers per plot, ``path``)."""
    out = Path(out) if out else data_home() / f"{study}.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {str(out)!r}: expected an .html file")
    store = open_existing(study, storage)
    try:
        return write_dashboard(store.study(), out, store.url)
    finally:
        store.close()
