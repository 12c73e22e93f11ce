"""The dashboard's sections: each plot under its heading, the network panel, the space explored,
and the small texts around them (:mod:`studies.dashboard` puts the page together)."""
from __future__ import annotations

import html
import json

import pandas as pd

from models.drawing import network_svg, shared_defs

from . import figures, space_plots
from .results import finite, plural
from .storage import default_url, redact_url

__all__ = ["Plots", "as_json", "network_panel", "points", "retrain_hint", "rungs_text"]


def points(fig) -> int:
    """Markers plotly draws for a figure (NaN coordinates draw nothing)."""
    n = 0
    for t in fig.data:
        if "markers" not in (getattr(t, "mode", None) or ""):
            continue
        xs = list(t.x) if t.x is not None else []
        ys = list(t.y) if t.y is not None else []
        n += sum(1 for x, y in zip(xs, ys) if finite(x) is not None and finite(y) is not None)
    return n


def rungs_text(attrs: dict) -> str | None:
    try:
        e0, k, eta = int(attrs["proxy_epochs"]), int(attrs["rungs"]), int(attrs["eta"])
    except (KeyError, TypeError, ValueError):
        return None
    return (f"proxy rungs {', '.join(str(e0 * eta ** i) for i in range(k))} epochs "
            f"(the best 1/{eta} of a rung is promoted)")


def retrain_hint(study, storage_url: str | None) -> str:
    name = study.study_name
    flag = ""
    if storage_url and storage_url != default_url(name):
        flag = f" --storage {redact_url(storage_url)}"
    return (f'<section class="plot empty" data-plot="retrain-plot" data-points="0"><h3>Proxy vs retrained accuracy'
            f'</h3><p>No network retrained yet: <code>python search.py retrain --study {html.escape(name)}'
            f'{html.escape(flag)}</code> retrains the Pareto front and the papers\' presets; Kendall\'s τ here then '
            f'says how well the proxy ranks the networks.</p></section>')


def network_panel(frame: pd.DataFrame, first: int | None) -> tuple[dict, str, str]:
    """The embedded drawings (one SVG per distinct spec, each distinct block drawn once in the
    returned defs) with each trial's key and caption, and the first one drawn inline."""
    svg, by_spec, trial, meta, shared = {}, {}, {}, {}, {}
    colour = lambda st: figures.FAMILY_COLOURS.get(figures.scheme_family(st.scheme))  # noqa: E731
    for r in frame.itertuples():
        if r.spec is None:
            continue
        key = r.spec             # a frozen dataclass: equal specs are equal keys, without writing JSON
        if key not in by_spec:
            try:
                svg[str(len(by_spec))] = network_svg(r.spec, fill=colour, shared=shared)
            except Exception:  # noqa: BLE001 - a spec the drawing cannot take (no widths yet) has none
                by_spec[key] = None
                continue
            by_spec[key] = str(len(by_spec))
        if by_spec[key] is None:
            continue
        trial[str(r.number)] = by_spec[key]
        acc = f"val. accuracy {r.accuracy:.2f}% after {plural(int(r.proxy_epochs), 'epoch')}" \
            if finite(r.accuracy) is not None and finite(r.proxy_epochs) is not None else r.state.lower()
        mem = f"{r.memory_mib:.3f} MiB per image" if finite(r.memory_mib) is not None else ""
        params = f"{int(r.params):,} params" if finite(r.params) is not None else ""
        meta[str(r.number)] = " · ".join(x for x in (r.architecture, acc, mem, params) if x)
    inline = ""
    if first is not None and str(first) in trial:
        inline = (f'<h2 id="network-title">Network of trial {first}</h2><p class="meta" id="network-meta">'
                  f'{html.escape(meta[str(first)])}</p><div id="network-drawing" class="drawing" '
                  f'data-trial="{first}" title="click: full size / fit">{svg[trial[str(first)]]}</div>')
    return {"svg": svg, "trial": trial, "meta": meta}, inline, shared_defs(shared) if shared else ""


def as_json(obj) -> str:
    return json.dumps(obj, default=str).replace("</", "<\\/")


class Plots:
    """The page's plots, each a section with its heading: the first carries plotly.js (inlined
    once), and ``info["plots"]`` records the markers plotly draws in each."""

    def __init__(self, info: dict):
        self.info, self.first = info, True

    def section(self, div_id: str, title: str, fig, note: str = "") -> str:
        n = points(fig)
        self.info["plots"][div_id] = n
        body = fig.to_html(full_html=False, include_plotlyjs=self.first, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})
        self.first = False
        note = f'<p class="meta">{note}</p>' if note else ""
        return f'<section class="plot" data-plot="{div_id}" data-points="{n}"><h3>{title}</h3>{note}{body}</section>'

    def space(self, study, frame: pd.DataFrame, memory_label: str) -> str:
        """Parameter importance, then the parallel coordinates (each the page's width: beside each
        other they would crowd the axes)."""
        trials = space_plots.sampled_trials(study, frame)
        imp = space_plots.importance(study, trials)
        out = []
        if imp and space_plots.finite_share(imp):
            out.append(self.section("importance-plot", "Which choices mattered: parameter importance for each objective",
                                    space_plots.importance_figure(imp),
                                    f"Optuna's <code>get_param_importances</code> (PED-ANOVA) over {len(trials)} "
                                    f"sampled trials <b>at their first proxy rung</b> (the scores Optuna stores; "
                                    f"presets and duplicates left out)."))
        else:
            out.append(f'<section class="plot empty" data-plot="importance-plot" data-points="0"><h3>Parameter '
                       f'importance</h3><p>Needs at least {space_plots.MIN_TRIALS} sampled, scored trials with '
                       f'varied choices ({len(trials)} so far).</p></section>')
        fig = space_plots.parallel_figure(trials, frame, imp, memory_label)
        if fig is not None:
            out.append(self.section("parallel-plot", "The choices of every sampled network: parallel coordinates",
                                    fig, "One line per network, coloured by scheme family; drag along an axis to "
                                         "select a range. Accuracy at the highest rung each reached."))
        return "".join(out)
