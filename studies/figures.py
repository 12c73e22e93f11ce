"""The dashboard's plotly figures, one encoding for all of them.

Every marker says four things, each on its own channel:

* **colour** - the network's dominant scheme family (:func:`dominant_family`),
  from Paul Tol's "muted" palette (colour-blind safe, 9 colours); a family keeps
  its colour in every study, whatever else the study holds;
* **symbol** - what the accuracy is: circle = proxy validation accuracy, star =
  one of the papers' presets (proxy), diamond = test accuracy after the full
  retrain;
* **outline** - black on the Pareto front; dominated points are faded;
* **number inside** - the epochs behind that accuracy (the proxy rung the trial
  reached, or the retrain's epochs): the front compares each trial at the
  highest rung it reached, so a promoted trial's number is larger.

The full scheme combination, every rung's accuracy and the duplicates a network
absorbed are in the hover. Legends are drawn by legend-only traces, so an entry
looks like the channel it explains (plotly would draw a data trace's entry with
its points' mean opacity).
"""
from __future__ import annotations

import html
import math
from collections import Counter

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from models import stage_summaries
from models.schemes import TABLEAUX
from models.spec import RKCNN_SCHEMES, scheme_names

__all__ = ["FAMILY_COLOURS", "cost_figure", "dominant_family", "history_figure", "pareto_figure", "retrain_figure",
           "scheme_family"]

# Paul Tol's "muted" qualitative scheme, in his order (neighbours stay apart): colour-blind safe
_PALETTE = ["#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499"]
UNKNOWN = "other"                   # a scheme this project does not know (a study made by other means)
_UNKNOWN_COLOUR = "#BBBBBB"
_FADED = 0.35                       # opacity of dominated points
_FRONT_OUTLINE = 2.0                # px, black, around points on the Pareto front
_SIZE = {"circle": 19, "star": 24, "diamond": 19}   # px; large enough to hold a two-digit epoch count
_SYMBOL_NAMES = {"circle": "proxy: validation accuracy", "star": "paper's preset (proxy)",
                 "diamond": "retrained: test accuracy"}


def _family_of_scheme() -> dict[str, str]:
    """Scheme -> family, from the registries: Runge-Kutta tableaux by order, LM, RKCNN."""
    by_order: dict[int, list[str]] = {}
    for name, t in TABLEAUX.items():
        by_order.setdefault(t.order, []).append(name)
    out = {}
    for order, names in sorted(by_order.items()):
        for n in names:
            out[n] = f"RK order {order} ({', '.join(names)})"
    for n in scheme_names():
        if n == "lm":
            out[n] = "LM, linear multi-step"
        elif n in RKCNN_SCHEMES:
            out[n] = f"RKCNN ({', '.join(RKCNN_SCHEMES)})"
    return out


_FAMILY = _family_of_scheme()
# one colour per family, fixed by the registries' order (not by what a study holds)
FAMILY_COLOURS = {f: _PALETTE[i] if i < len(_PALETTE) else _UNKNOWN_COLOUR
                  for i, f in enumerate(dict.fromkeys(_FAMILY.values()))}
FAMILY_COLOURS[UNKNOWN] = _UNKNOWN_COLOUR


def scheme_family(scheme: str) -> str:
    """The family of a stage scheme (``rk4`` -> ``RK order 4 (rk4, rk38)``); labels like
    ``rk4(paper)-nested`` are read by their scheme name."""
    base = str(scheme).split("(")[0].removesuffix("-nested")
    return _FAMILY.get(base, UNKNOWN)


def dominant_family(spec=None, scheme_label: str = "") -> str:
    """The family holding most of a network: stages weighted by sub-networks x width^2
    (the 3x3 convolutions that hold most of a stage's parameters); without a spec, the
    first scheme of its label (``rk4+euler``)."""
    if spec is None:
        return scheme_family(scheme_label.split("+")[0]) if scheme_label else UNKNOWN
    weight: Counter = Counter()
    for st in stage_summaries(spec):
        subnets = st["rk_stages"] * st["rk_steps"] if "rk_stages" in st else st["blocks"] * st["subnets_per_block"]
        weight[scheme_family(st["scheme"])] += subnets * (st["width"] or 1) ** 2
    return max(weight, key=weight.get) if weight else UNKNOWN   # ties: the first stage's


def _text_colour(hex_colour: str) -> str:
    """Black or white, whichever contrasts more with the marker (WCAG luminance)."""
    def lin(c):
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    lum = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    return "#000" if (lum + 0.05) / 0.05 > 1.05 / (lum + 0.05) else "#fff"


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _fmt(v, spec: str = ",", suffix: str = "") -> str:
    return f"{v:{spec}}{suffix}" if _ok(v) else "–"


def _epochs(v) -> str:
    return str(int(v)) if _ok(v) else "?"


def hover(r) -> str:
    """The hover text of one network (a row of :func:`studies.dashboard.trials_frame`)."""
    lines = [f"<b>trial {r.number}</b>" + (f" · preset <b>{html.escape(r.preset)}</b>" if r.preset else ""),
             html.escape(r.architecture or "(no spec)"),
             f"val. accuracy, proxy: <b>{_fmt(r.accuracy, '.2f', '%')}</b> at {_epochs(r.proxy_epochs)} epochs"
             + (f" (rungs: {html.escape(r.rungs)})" if r.rungs and "," in r.rungs else "")]
    if _ok(r.retrain_accuracy):
        proto = f"{html.escape(str(r.retrain_protocol))}, " if r.retrain_protocol else ""
        lines.append(f"test accuracy, retrained ({proto}{_epochs(r.retrain_epochs)} epochs): "
                     f"<b>{_fmt(r.retrain_accuracy, '.2f', '%')}</b>")
    lines += [f"memory: {_fmt(r.memory_mib, '.3f')} MiB per image",
              f"params: {_fmt(r.params)} · MACs: {_fmt(r.macs)}",
              f"schemes: {html.escape(r.scheme)} · colour: {html.escape(r.family)}"
              + (" · <b>on the Pareto front</b>" if r.pareto else "")]
    if r.duplicates:
        lines.append(f"also proposed as trial {r.duplicates} (same network, not trained again)")
    return "<br>".join(lines)


def _markers(g: pd.DataFrame, symbol, numbers, *, fade: bool = True) -> dict:
    """Scatter keywords for the rows ``g`` of one family: colour, symbol, front outline,
    fading, and the epoch count written inside each marker."""
    colour = FAMILY_COLOURS.get(g["family"].iloc[0], _UNKNOWN_COLOUR)
    symbols = list(symbol) if not isinstance(symbol, str) else [symbol] * len(g)
    front = list(g["pareto"]) if fade else [True] * len(g)
    solid = _text_colour(colour)
    return dict(
        mode="markers+text", text=[_epochs(e) for e in numbers], textposition="middle center",
        textfont=dict(size=10, color=[solid if p else "#444" for p in front]),
        marker=dict(symbol=symbols, size=[_SIZE[s] for s in symbols], color=colour,
                    opacity=[1.0 if p else _FADED for p in front],
                    line=dict(width=[_FRONT_OUTLINE if p else 0 for p in g["pareto"]], color="#000")),
        hovertext=[hover(r) for r in g.itertuples()], hoverinfo="text", showlegend=False,
        legendgroup=g["family"].iloc[0], cliponaxis=False)


def _legend(fig, families, symbols, *, front: bool = True) -> None:
    """Legend-only entries (no points): a colour per family present, a symbol per kind
    of accuracy present, the outline and fading of the front."""
    first = True
    for fam in sorted(families, key=list(FAMILY_COLOURS).index):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=fam, legendgroup=fam,
                                 legendgrouptitle_text="colour: dominant scheme family" if first else None,
                                 marker=dict(symbol="circle", size=12, color=FAMILY_COLOURS[fam]),
                                 hoverinfo="skip"))
        first = False
    for i, s in enumerate(s for s in _SYMBOL_NAMES if s in symbols):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=_SYMBOL_NAMES[s], legendgroup="symbol",
                                 legendgrouptitle_text="symbol; number inside: epochs" if i == 0 else None,
                                 marker=dict(symbol=s, size=12, color="#fff", line=dict(width=1, color="#555")),
                                 hoverinfo="skip"))
    if front:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="black outline: on the Pareto front",
                                 legendgroup="front", legendgrouptitle_text="outline",
                                 marker=dict(symbol="circle", size=12, color="#999",
                                             line=dict(width=_FRONT_OUTLINE, color="#000")), hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="faded: dominated", legendgroup="front",
                                 marker=dict(symbol="circle", size=12, color="#999", opacity=_FADED),
                                 hoverinfo="skip"))
    fig.update_layout(legend=dict(tracegroupgap=6))


def _symbols(g: pd.DataFrame, other: str = "circle") -> list[str]:
    return ["star" if p else other for p in g["is_preset"]]


PROXY_AXIS = "val. accuracy, proxy (%)"
TEST_AXIS = "test accuracy, retrained (%)"


def pareto_figure(done: pd.DataFrame, memory_label: str):
    """Accuracy vs memory: every network at the highest rung it reached, the front as
    a staircase, the papers' presets named, retrained results joined to their proxy."""
    fig = go.Figure()
    front = done[done["pareto"]].sort_values("memory_mib")
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front["memory_mib"], y=front["accuracy"], mode="lines", line_shape="hv",
                                 name="Pareto front", hoverinfo="skip", showlegend=False,
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
    for fam, g in done.groupby("family", sort=True):
        fig.add_trace(go.Scatter(x=g["memory_mib"], y=g["accuracy"], name=fam,
                                 **_markers(g, _symbols(g), g["proxy_epochs"])))
    for fam, g in rt.groupby("family", sort=True):
        fig.add_trace(go.Scatter(x=g["memory_mib"], y=g["retrain_accuracy"], name=fam,
                                 **_markers(g, "diamond", g["retrain_epochs"], fade=False)))
    presets = done[done["is_preset"]]
    if len(presets):
        fig.add_trace(go.Scatter(x=presets["memory_mib"], y=presets["accuracy"], mode="text",
                                 text=list(presets["preset"]), textposition="top center", textfont=dict(size=10),
                                 hoverinfo="skip", showlegend=False))
    kinds = {"circle"} if (~done["is_preset"]).any() else set()
    kinds |= {"star"} if len(presets) else set()
    kinds |= {"diamond"} if len(rt) else set()
    _legend(fig, set(done["family"]), kinds)
    fig.update_layout(title="Accuracy vs memory: each network at the highest proxy rung it reached",
                      xaxis_title=memory_label,
                      yaxis_title=f"{PROXY_AXIS}; ◆ {TEST_AXIS}" if len(rt) else PROXY_AXIS,
                      height=560, margin=dict(t=60, r=20))
    return fig


def cost_figure(done: pd.DataFrame, budget: float | None = None, tolerance: float | None = None,
                budget_label: str = ""):
    """Accuracy vs parameters (the budget ± tolerance shaded) and vs MACs per image."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("accuracy vs parameters", "accuracy vs MACs per image"))
    for fam, g in done.groupby("family", sort=True):
        for col, key in ((1, "params"), (2, "macs")):
            fig.add_trace(go.Scatter(x=g[key], y=g["accuracy"], name=fam,
                                     **_markers(g, _symbols(g), g["proxy_epochs"])), row=1, col=col)
    if budget:
        lo, hi = (budget * (1 - tolerance), budget * (1 + tolerance)) if tolerance else (budget, budget)
        fig.add_vrect(x0=lo, x1=hi, row=1, col=1, fillcolor="#888", opacity=0.10, layer="below",
                      line=dict(color="#999", width=1, dash="dot"))
        fig.add_vline(x=budget, row=1, col=1, line=dict(color="#666", width=1, dash="dash"),
                      annotation_text=f"budget {budget_label}", annotation_position="bottom right",
                      annotation_font=dict(size=10, color="#444"))
        # show the band's edges: the axis spans the band and every network, with a margin
        left, right = min(lo, done["params"].min()), max(hi, done["params"].max())
        pad = 0.08 * (right - left or budget)
        fig.update_xaxes(range=[left - pad, right + pad], row=1, col=1)
    kinds = {"circle"} | ({"star"} if done["is_preset"].any() else set())
    _legend(fig, set(done["family"]), kinds)
    fig.update_xaxes(title_text="parameters", row=1, col=1)
    fig.update_xaxes(title_text="MACs per image", row=1, col=2)
    fig.update_yaxes(title_text=PROXY_AXIS, row=1, col=1)
    fig.update_layout(height=460, margin=dict(t=60, r=20))
    return fig


def retrain_figure(both: pd.DataFrame, tau: float | None):
    """Proxy vs retrained accuracy of the distinct retrained networks; Kendall's tau in the title."""
    fig = go.Figure()
    for fam, g in both.groupby("family", sort=True):
        fig.add_trace(go.Scatter(x=g["accuracy"], y=g["retrain_accuracy"], name=fam,
                                 **_markers(g, _symbols(g, "diamond"), g["proxy_epochs"], fade=False)))
    kinds = {"diamond"} | ({"star"} if both["is_preset"].any() else set())
    _legend(fig, set(both["family"]), kinds, front=False)
    n = len(both)
    what = (f"Kendall's τ = {tau:.3f} (n = {n} networks)" if tau is not None
            else f"Kendall's τ needs ≥ 2 retrained networks (n = {n})")
    fig.update_layout(title=f"Proxy vs retrained accuracy: {what}; number inside: proxy epochs",
                      xaxis_title=PROXY_AXIS, yaxis_title=TEST_AXIS, height=460, margin=dict(t=60, r=20))
    return fig


def history_figure(done: pd.DataFrame, hv: list[tuple[int, float]]):
    """Left: proxy accuracy per network and the best so far; right: the hypervolume of
    the networks so far (a two-objective study's progress)."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, column_widths=[0.6, 0.4],
                        subplot_titles=("val. accuracy per trial and the best so far",
                                        "hypervolume of the front so far (normalised)"))
    d = done.sort_values("number")
    fig.add_trace(go.Scatter(x=d["number"], y=d["accuracy"].cummax(), mode="lines", line_shape="hv",
                             name="best so far", line=dict(color="#d62728", width=2), hoverinfo="y"), row=1, col=1)
    for fam, g in d.groupby("family", sort=True):
        fig.add_trace(go.Scatter(x=g["number"], y=g["accuracy"], name=fam,
                                 **_markers(g, _symbols(g), g["proxy_epochs"], fade=False)), row=1, col=1)
    if hv:
        fig.add_trace(go.Scatter(x=[n for n, _ in hv], y=[v for _, v in hv], mode="lines", line_shape="hv",
                                 name="hypervolume", line=dict(color="#332288", width=2),
                                 hovertemplate="after trial %{x}: %{y:.4f}<extra></extra>"), row=1, col=2)
    _legend(fig, set(d["family"]), set(), front=False)
    fig.update_xaxes(title_text="trial number")
    fig.update_yaxes(title_text=PROXY_AXIS, row=1, col=1)
    fig.update_yaxes(title_text="hypervolume (accuracy × memory)", rangemode="tozero", row=1, col=2)
    fig.update_layout(title="Optimisation history (each network at the highest rung it reached)", height=420,
                      margin=dict(t=80, r=20))
    return fig
