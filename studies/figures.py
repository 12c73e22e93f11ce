"""The dashboard's plotly figures and their one legend.

Every marker says four things, each on its own channel, the same in every plot:

* **colour** - the network's dominant scheme family (:func:`dominant_family`), from Paul
  Tol's "muted" palette (colour-blind safe); a family keeps its colour in every study;
* **symbol** - what the y value is: circle = proxy validation accuracy, star = one of the
  papers' presets (proxy), diamond = test accuracy after a retrain;
* **fill** - filled with a black outline = on the Pareto front; hollow (white, ringed in its
  colour) = not on it: dominated, or (history) a score later replaced by a longer proxy;
* **number inside** - the epochs behind the y value: the proxy rung for a proxy accuracy,
  the retrain's epochs for a test accuracy.

Front networks are labelled ``#N`` (the trial number, the key of ``show``, ``export --trial``
and the page's front table). The plots carry no titles or legends of their own: the page
puts each title in an HTML heading (which wraps in a narrow window) and draws
:func:`legend_html` once. Each point's ``customdata`` is its trial number (a click on it
draws that network).
"""
from __future__ import annotations

import html
import math
from collections import Counter

import pandas as pd
import plotly.graph_objects as go

from models import scheme_name, stage_summaries
from models.schemes import TABLEAUX
from models.spec import RKCNN_SCHEMES, scheme_names

from .results import plural

__all__ = ["FAMILY_COLOURS", "PROXY_AXIS", "TEST_AXIS", "cost_figures", "dominant_family", "history_figures",
           "legend_html", "pareto_figure", "retrain_figure", "retrain_text", "scheme_family"]

# Paul Tol's "muted" qualitative scheme, in his order (neighbours stay apart): colour-blind safe
_PALETTE = ["#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499"]
UNKNOWN = "other"                   # a scheme this project does not know (a study made by other means)
_UNKNOWN_COLOUR = "#BBBBBB"
_LINE = "#222222"                   # lines that are no family's: the front, best so far, hypervolume
_OUTLINE = 2.0                      # px, black, around a filled (front) marker
_RING = 2.5                         # px, the family colour around a hollow marker
_SIZE = {"circle": 19, "star": 24, "diamond": 23}   # px; large enough to hold a two-digit epoch count
SYMBOLS = {"circle": "proxy: validation accuracy", "star": "one of the papers' presets (proxy)",
           "diamond": "retrained: test accuracy"}
PROXY_AXIS = "val. accuracy, proxy (%)"
TEST_AXIS = "test accuracy, retrained (%)"


def _families() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Scheme -> family, and family -> its schemes, from the registries: Runge-Kutta tableaux
    by order, LM, RKCNN. A family's name uses the papers' scheme names (``RK3/8``)."""
    by_order: dict[int, list[str]] = {}
    for name, t in TABLEAUX.items():
        by_order.setdefault(t.order, []).append(name)
    of, members = {}, {}
    for order, names in sorted(by_order.items()):
        fam = f"RK order {order}: {', '.join(scheme_name(n) for n in names)}"
        members[fam] = names
        of.update({n: fam for n in names})
    for n in scheme_names():
        if n == "lm":
            of[n] = "LM: linear multi-step"
            members[of[n]] = [n]
        elif n in RKCNN_SCHEMES:
            of[n] = f"RKCNN: {', '.join(scheme_name(s) for s in RKCNN_SCHEMES)}"
            members[of[n]] = list(RKCNN_SCHEMES)
    return of, members


_FAMILY, FAMILY_SCHEMES = _families()
# one colour per family, fixed by the registries' order (not by what a study holds)
FAMILY_COLOURS = {f: _PALETTE[i] if i < len(_PALETTE) else _UNKNOWN_COLOUR
                  for i, f in enumerate(dict.fromkeys(_FAMILY.values()))}
FAMILY_COLOURS[UNKNOWN] = _UNKNOWN_COLOUR


def scheme_family(scheme: str) -> str:
    """The family of a stage scheme (``rk4`` -> ``RK order 4: RK4, RK3/8``); labels like
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
    return v is not None and v is not pd.NA and not (isinstance(v, float) and math.isnan(v))


def _num(v, spec: str = ".2f", suffix: str = "") -> str:
    return f"{v:{spec}}{suffix}" if _ok(v) else "–"


def _count(v) -> str:
    """A count (parameters, MACs) as an integer with thousands separators."""
    return f"{int(round(float(v))):,}" if _ok(v) else "–"


def _epochs(v) -> str:
    return str(int(v)) if _ok(v) else "?"


def retrain_text(protocol, epochs) -> str:
    """How a retrained accuracy was made, in words: ``fast, 2 epochs``."""
    parts = [str(protocol)] if _ok(protocol) and protocol else []
    if _ok(epochs):
        parts.append(plural(int(epochs), "epoch"))
    return ", ".join(parts) or "retrained"


def hover(r) -> str:
    """The hover text of one network (a row of :func:`studies.dashboard.trials_frame`)."""
    lines = [f"<b>trial {r.number}</b>" + (f" · preset <b>{html.escape(r.preset)}</b>" if r.preset else ""),
             html.escape(r.architecture or "(no spec)"),
             f"val. accuracy, proxy: <b>{_num(r.accuracy, '.2f', '%')}</b> after "
             f"{plural(int(r.proxy_epochs), 'epoch') if _ok(r.proxy_epochs) else '? epochs'}"
             + (f" (rungs: {html.escape(r.rungs)})" if r.rungs and "," in r.rungs else "")]
    if _ok(r.retrain_accuracy):
        lines.append(f"test accuracy, retrained ({html.escape(getattr(r, 'retrain_how', None) or retrain_text(r.retrain_protocol, r.retrain_epochs))}): "
                     f"<b>{_num(r.retrain_accuracy, '.2f', '%')}</b>")
    lines += [f"memory: {_num(r.memory_mib, '.3f')} MiB per image",
              f"params: {_count(r.params)} · MACs: {_count(r.macs)}",
              f"colour: {html.escape(r.family)}" + (" · <b>on the Pareto front</b>" if r.pareto else "")]
    if r.duplicates:
        lines.append(f"also proposed as trial {r.duplicates} (same network, not trained again)")
    lines.append("<i>click: draw this network</i>")
    return "<br>".join(lines)


def _points(fig, g: pd.DataFrame, x, y, symbol, numbers, filled=None, hovers=None) -> None:
    """Add the rows ``g`` of one family at (``x``, ``y``): colour, symbol, fill (filled with a
    black outline where ``filled``, default: on the front; hollow otherwise), the epochs inside.

    Hollow and filled points are two traces, the filled drawn last (on top), so that every
    colour and outline of a trace is one value: plotly validates a per-point colour list point
    by point, which took most of a page's 11 s at 5,000 networks."""
    colour = FAMILY_COLOURS.get(g["family"].iloc[0], _UNKNOWN_COLOUR)
    symbols = list(symbol) if not isinstance(symbol, str) else [symbol] * len(g)
    filled = list(g["pareto"]) if filled is None else list(filled)
    hovers = [hover(r) for r in g.itertuples()] if hovers is None else list(hovers)
    columns = dict(x=list(x), y=list(y), text=[_epochs(e) for e in numbers], symbol=symbols, hover=hovers,
                   number=list(g["number"]))
    for solid in (False, True):
        keep = [i for i, f in enumerate(filled) if bool(f) == solid]
        if not keep:
            continue
        c = {k: [v[i] for i in keep] for k, v in columns.items()}
        fig.add_trace(go.Scatter(
            x=c["x"], y=c["y"], name=g["family"].iloc[0], mode="markers+text", text=c["text"],
            textposition="middle center", textfont=dict(size=10, color=_text_colour(colour) if solid else "#222"),
            marker=dict(symbol=c["symbol"], size=[_SIZE[s] for s in c["symbol"]], color=colour if solid else "#fff",
                        line=dict(width=_OUTLINE if solid else _RING, color="#000" if solid else colour)),
            hovertext=c["hover"], hoverinfo="text", customdata=c["number"], showlegend=False, cliponaxis=False))


def _symbols(g: pd.DataFrame, other: str = "circle") -> list[str]:
    return ["star" if p else other for p in g["is_preset"]]


def _label(fig, x, y, text: str) -> None:
    """A label beside a marker (up and right of it by its radius: it never covers the epochs inside)."""
    fig.add_annotation(x=x, y=y, text=html.escape(text), showarrow=False, xanchor="left", yanchor="bottom",
                       xshift=8, yshift=8, font=dict(size=11, color="#111"), bgcolor="rgba(255,255,255,0.6)",
                       borderpad=0, name="front-label")


def _layout(fig, height: int, **axes) -> go.Figure:
    fig.update_layout(template="plotly_white", height=height, showlegend=False, hoverlabel=dict(align="left"),
                      margin=dict(t=12, r=12, b=50, l=60), **axes)
    return fig


# --------------------------------------------------------------------------
# the legend, once for the page
# --------------------------------------------------------------------------

def _swatch(symbol: str, fill: str, ring: str, width: float = 1.5) -> str:
    shape = {"circle": '<circle cx="9" cy="9" r="6.5"',
             "star": '<polygon points="9,1.5 11.2,6.6 16.8,6.9 12.5,10.4 13.9,15.9 9,12.9 4.1,15.9 5.5,10.4 1.2,6.9 '
                     '6.8,6.6"',
             "diamond": '<polygon points="9,1.5 16.5,9 9,16.5 1.5,9"'}[symbol]
    return (f'<svg width="18" height="18" viewBox="0 0 18 18" aria-hidden="true">{shape} fill="{fill}" '
            f'stroke="{ring}" stroke-width="{width}"/></svg>')


def legend_html(families, symbols) -> str:
    """The page's one legend (``#legend``): a colour per family present (the schemes it holds,
    with the names the code and the spec use), the symbols present, fill and the number inside."""
    fams = [f for f in FAMILY_COLOURS if f in set(families)]
    items = []
    for f in fams:
        code = ", ".join(FAMILY_SCHEMES.get(f, []))
        items.append(f'<span class="lg" data-family="{html.escape(f, quote=True)}" data-colour="{FAMILY_COLOURS[f]}"'
                     f' title="{html.escape(f"in spec.json and --csv: {code}" if code else "", quote=True)}">'
                     f'{_swatch("circle", FAMILY_COLOURS[f], "#000", 1)}{html.escape(f)}</span>')
    kinds = [f'<span class="lg">{_swatch(s, "#fff", "#555")}{html.escape(SYMBOLS[s])}</span>'
             for s in SYMBOLS if s in symbols]
    fill = [f'<span class="lg">{_swatch("circle", "#888", "#000", _OUTLINE)}filled: on the Pareto front, '
            f'labelled #trial</span>',
            f'<span class="lg">{_swatch("circle", "#fff", "#888", _RING)}hollow: not on it (dominated, or a score '
            f'replaced by a longer proxy)</span>',
            '<span class="lg"><b class="num">3</b>number inside: the epochs behind the y value</span>']
    return ('<div id="legend" class="legend"><div><b>colour: dominant scheme family</b> ' + "".join(items)
            + '</div><div><b>symbol</b> ' + "".join(kinds) + ' <b>fill</b> ' + "".join(fill) + "</div></div>")


# --------------------------------------------------------------------------
# the plots
# --------------------------------------------------------------------------

def pareto_figure(done: pd.DataFrame, memory_label: str):
    """Accuracy vs memory: every network at the highest rung it reached, the front as a
    staircase and labelled ``#N``, the papers' presets named, each retrained result an arrow
    from its proxy circle to its diamond."""
    fig = go.Figure()
    front = done[done["pareto"]].sort_values("memory_mib")
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front["memory_mib"], y=front["accuracy"], mode="lines", line_shape="hv",
                                 hoverinfo="skip", showlegend=False, line=dict(color=_LINE, width=1.5)))
    rt = done[done["retrain_accuracy"].notna()]
    for fam, g in rt.groupby("family", sort=True):     # under the circles: a circle on its diamond shows both
        _points(fig, g, g["memory_mib"], g["retrain_accuracy"], "diamond", g["retrain_epochs"])
    for fam, g in done.groupby("family", sort=True):
        _points(fig, g, g["memory_mib"], g["accuracy"], _symbols(g), g["proxy_epochs"])
    for r in rt.itertuples():
        fig.add_annotation(x=r.memory_mib, y=r.retrain_accuracy, ax=r.memory_mib, ay=r.accuracy, xref="x", yref="y",
                           axref="x", ayref="y", showarrow=True, arrowhead=3, arrowsize=1, arrowwidth=1.3,
                           standoff=12, startstandoff=10, opacity=0.7,
                           arrowcolor=FAMILY_COLOURS.get(r.family, _UNKNOWN_COLOUR), text="")
    for r in done[done["pareto"] | done["is_preset"]].itertuples():
        _label(fig, r.memory_mib, r.accuracy, " ".join(x for x in (f"#{r.number}" if r.pareto else "", r.preset) if x))
    y_title = f"{PROXY_AXIS}; ◆ {TEST_AXIS}" if len(rt) else PROXY_AXIS
    return _layout(fig, 520, xaxis_title=memory_label, yaxis_title=y_title)


def cost_figures(done: pd.DataFrame, budget: float | None = None, tolerance: float | None = None,
                 budget_label: str = ""):
    """Accuracy vs parameters (the budget ± tolerance shaded), and accuracy vs MACs per image."""
    figs = {}
    for key, title in (("params", "parameters"), ("macs", "MACs per image")):
        fig = go.Figure()
        for fam, g in done.groupby("family", sort=True):
            _points(fig, g, g[key], g["accuracy"], _symbols(g), g["proxy_epochs"])
        if key == "params" and budget:
            lo, hi = (budget * (1 - tolerance), budget * (1 + tolerance)) if tolerance else (budget, budget)
            fig.add_vrect(x0=lo, x1=hi, fillcolor="#888", opacity=0.10, layer="below",
                          line=dict(color="#999", width=1, dash="dot"))
            fig.add_vline(x=budget, line=dict(color="#666", width=1, dash="dash"),
                          annotation_text=f"budget {budget_label}", annotation_position="bottom right",
                          annotation_font=dict(size=10, color="#444"))
            # show the band's edges: the axis spans the band and every network, with a margin
            left, right = min(lo, done["params"].min()), max(hi, done["params"].max())
            pad = 0.08 * (right - left or budget)
            fig.update_xaxes(range=[left - pad, right + pad])
        figs[key] = _layout(fig, 400, xaxis_title=title, yaxis_title=PROXY_AXIS)
    return figs["params"], figs["macs"]


def retrain_figure(both: pd.DataFrame):
    """Proxy vs retrained accuracy of the distinct retrained networks (Kendall's tau goes in the
    page's heading); the number inside: the retrain's epochs (the y value's)."""
    fig = go.Figure()
    for fam, g in both.groupby("family", sort=True):
        _points(fig, g, g["accuracy"], g["retrain_accuracy"], _symbols(g, "diamond"), g["retrain_epochs"])
    for r in both.itertuples():
        _label(fig, r.accuracy, r.retrain_accuracy, f"#{r.number}")
    return _layout(fig, 420, xaxis_title=f"{PROXY_AXIS}, at the highest rung each reached", yaxis_title=TEST_AXIS)


def history_figures(done: pd.DataFrame, events: pd.DataFrame, hv: list[float]):
    """In the order the scores were measured (a promoted score when its longer proxy finished):
    each score and the best current score, and the hypervolume of the front as it stood.

    ``events``: one row per measured score (``number``, ``epochs``, ``accuracy`` in percent,
    ``at``, ``current`` = not replaced later by a longer proxy), in order; ``hv``: the
    normalised hypervolume after each."""
    fig = go.Figure()
    x = list(range(1, len(events) + 1))
    best, current = [], {}
    for n, a in zip(events["number"], events["accuracy"]):
        current[n] = a
        best.append(max(current.values()))
    fig.add_trace(go.Scatter(x=x, y=best, mode="lines", line_shape="hv", line=dict(color=_LINE, width=2),
                             hovertemplate="best current score: %{y:.2f}%<extra></extra>", showlegend=False))
    ev = events.assign(k=x).merge(done.drop(columns=["accuracy", "proxy_epochs"]), on="number", how="inner")
    for fam, g in ev.groupby("family", sort=True):
        filled = [bool(p and c) for p, c in zip(g["pareto"], g["current"])]
        hovers = [f"<b>trial {r.number}</b>: {r.accuracy:.2f}% after {plural(int(r.epochs), 'epoch')}"
                  f"<br>measured {html.escape(str(r.at))}" + ("" if r.current else "<br>replaced later by its longer proxy")
                  + f"<br>{html.escape(r.architecture or '')}" for r in g.itertuples()]
        _points(fig, g, g["k"], g["accuracy"], _symbols(g), g["epochs"], filled=filled, hovers=hovers)
    acc = _layout(fig, 400, xaxis_title="scores in the order measured", yaxis_title=PROXY_AXIS)
    hvf = go.Figure(go.Scatter(x=x, y=hv, mode="lines", line_shape="hv", line=dict(color=_LINE, width=2),
                               customdata=list(events["number"]),
                               hovertemplate="after score %{x} (trial %{customdata}): %{y:.4f}<extra></extra>"))
    _layout(hvf, 400, xaxis_title="scores in the order measured", yaxis_title="hypervolume (accuracy × memory)")
    hvf.update_yaxes(rangemode="tozero")
    return acc, hvf
