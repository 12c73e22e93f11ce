"""The space a study explored: which sampled choices mattered, and every network's choices.

* **Parameter importance** is Optuna's (:func:`optuna.importance.get_param_importances`) with
  its PED-ANOVA evaluator (Watanabe et al., IJCAI 2023; conditional parameters as in its KDD 2026
  extension), which needs no scikit-learn and handles the conditional space (a stage's
  parameters exist only where the stage does). It is computed per objective over the trials
  *at their first proxy rung*: the values Optuna stores and the sampler learns from (a
  promoted trial's longer score is not in Optuna). Duplicates and the papers' presets (enqueued,
  not sampled) are left out.
* **Parallel coordinates** are plotly's (``go.Parcoords``): one line per network, the most
  important choices and both objectives (accuracy at the highest rung each reached, as on the
  rest of the page), coloured by scheme family as every other plot.
"""
from __future__ import annotations

import math
import re
import warnings

import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.distributions import CategoricalDistribution
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import TrialState

from models import scheme_name

from .figures import FAMILY_COLOURS

__all__ = ["finite_share", "importance", "importance_figure", "parallel_figure", "param_label", "sampled_trials"]

MIN_TRIALS = 4          # below this the importances are noise; the page says so instead
SHOWN = 12              # parameters in the importance chart (the rest are listed as less important)
AXES = 8                # parameters in the parallel coordinates, the most important first
_DISCRETE = 12          # an integer parameter with at most this many values gets one tick per value
_BAR = {"accuracy": "#222222", "memory": "#AAAAAA"}   # no family's colour


def param_label(name: str, sep: str = " ") -> str:
    """``s0.scheme`` -> ``stage 1 scheme``: the stage numbers the drawing and the table use
    (``sep="<br>"``: on two lines, for an axis among many)."""
    m = re.fullmatch(r"s(\d+)\.(.+)", name)
    return f"stage {int(m.group(1)) + 1}{sep}{m.group(2).replace('_', ' ')}" if m else name.replace("_", " ")


def _value_label(name: str, v) -> str:
    if isinstance(v, str) and name.endswith(("scheme", "variant")):
        return scheme_name(v)
    return str(v)


def sampled_trials(study, frame: pd.DataFrame) -> list:
    """Optuna's own COMPLETE trials (first-rung values) that were sampled: not a preset, not a
    duplicate, with parameters, and scored on the page (``frame``: :func:`studies.dashboard.trials_frame`)."""
    keep = set(frame.loc[frame["duplicate_of"].isna() & ~frame["is_preset"] & frame["accuracy"].notna(), "number"])
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.number in keep and t.params and t.values and len(t.values) == 2]


def importance(study, trials: list) -> dict[str, dict[str, float]] | None:
    """``{"accuracy": {param: importance}, "memory": {...}}`` by PED-ANOVA over ``trials``, or
    None below :data:`MIN_TRIALS`. PED-ANOVA ranks for low values, so accuracy enters negated.

    It runs on the study itself (a :class:`~studies.results.Snapshot`'s live study): a trial outside ``trials`` gets a NaN target, which Optuna's
    evaluators leave out (``optuna.importance``: only trials with a finite target are used). A
    study copied into memory first would deep-copy every trial (3.5 s of a 13 s page at 5,000)."""
    if len(trials) < MIN_TRIALS:
        return None
    keep = {t.number for t in trials}
    live = getattr(study, "study", study)    # a Snapshot's live study: Optuna's evaluators ask it
    params = sorted({p for t in trials for p in t.distributions})
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # PED-ANOVA's reminder that it ranks for low targets
        for key, sign, k in (("accuracy", -1.0, 0), ("memory", 1.0, 1)):
            out[key] = optuna.importance.get_param_importances(
                live, evaluator=PedAnovaImportanceEvaluator(), params=params,
                target=lambda t, s=sign, k=k: s * t.values[k] if t.number in keep else math.nan)
    return out


def importance_figure(imp: dict[str, dict[str, float]]):
    """Horizontal bars, the parameters most important to either objective on top."""
    order = sorted(set(imp["accuracy"]) | set(imp["memory"]),
                   key=lambda p: -max(imp["accuracy"].get(p, 0.0), imp["memory"].get(p, 0.0)))[:SHOWN]
    order = order[::-1]                          # plotly draws the first category at the bottom
    fig = go.Figure()
    for key, what in (("accuracy", "for val. accuracy"), ("memory", "for memory")):
        fig.add_trace(go.Bar(y=[param_label(p) for p in order], x=[imp[key].get(p, 0.0) for p in order],
                             orientation="h", name=what, marker_color=_BAR[key],
                             hovertemplate="%{y}: %{x:.3f} " + what + "<extra></extra>"))
    fig.update_layout(template="plotly_white", barmode="group", height=max(260, 46 * len(order) + 80),
                      margin=dict(t=10, r=12, b=40, l=10), xaxis_title="importance (PED-ANOVA, sums to 1)",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0), yaxis=dict(automargin=True))
    return fig


def _axis(name: str, values: list, dist) -> dict:
    """One parcoords dimension: a categorical or small-integer parameter gets one tick per value
    (and "n/a" where a trial does not have it), a wider integer or float its range."""
    present = [v for v in values if v is not None]
    na = any(v is None for v in values)
    if isinstance(dist, CategoricalDistribution) or len(set(present)) <= _DISCRETE:
        choices = list(dist.choices) if isinstance(dist, CategoricalDistribution) else sorted(set(present))
        choices = [c for c in choices if c in set(present)] or choices
        code = {c: i for i, c in enumerate(choices)}
        ticks = [_value_label(name, c) for c in choices] + (["n/a"] if na else [])
        vals = [code[v] if v is not None else len(choices) for v in values]
        return dict(label=param_label(name, "<br>"), values=vals, tickvals=list(range(len(ticks))), ticktext=ticks,
                    range=[-0.3, len(ticks) - 0.7])
    below = min(present) - 0.15 * ((max(present) - min(present)) or 1)
    return dict(label=param_label(name, "<br>"), values=[below if v is None else v for v in values],
                **_ticks(present, ["n/a"] if na else [], [below] if na else []))


def _ticks(values: list, extra_text=(), extra_vals=()) -> dict:
    """Five ticks over the range of ``values``, written out: an axis with its own ticks shows no
    range figures at its ends, which would run into a two-line title."""
    lo, hi = min(values), max(values)
    ticks = [lo + (hi - lo) * i / 4 for i in range(5)] if hi > lo else [lo]
    return dict(tickvals=[*extra_vals, *ticks], ticktext=[*extra_text, *(f"{t:.3g}" for t in ticks)])


def parallel_figure(trials: list, frame: pd.DataFrame, imp: dict | None, memory_label: str = "memory"):
    """Plotly's parallel coordinates of the sampled networks: the :data:`AXES` most important
    parameters, then accuracy (highest rung) and memory; one colour per scheme family."""
    rows = frame.set_index("number")
    by = {t.number: t for t in trials}
    numbers = [n for n in by if n in rows.index]
    if not numbers:
        return None
    names = sorted({p for t in trials for p in t.params})
    if imp:
        rank = {p: max(imp["accuracy"].get(p, 0.0), imp["memory"].get(p, 0.0)) for p in names}
        names = sorted(names, key=lambda p: -rank[p])
    names = [p for p in names if len({by[n].params.get(p) for n in numbers}) > 1][:AXES]
    dists = {}
    for t in trials:
        for p, d in t.distributions.items():
            dists.setdefault(p, d)
    dims = [_axis(p, [by[n].params.get(p) for n in numbers], dists.get(p)) for p in names]
    for label, col in (("val. acc.<br>proxy (%)", "accuracy"), (f"{memory_label}<br>MiB/image", "memory_mib")):
        vals = [float(rows.at[n, col]) for n in numbers]
        dims.append(dict(label=label, values=vals, **_ticks(vals)))
    fams = [f for f in FAMILY_COLOURS if f in set(rows.loc[numbers, "family"])]
    k = len(fams)
    scale = [[i / k if j == 0 else (i + 1) / k, FAMILY_COLOURS[f]] for i, f in enumerate(fams) for j in (0, 1)]
    colour = [fams.index(rows.at[n, "family"]) + 0.5 for n in numbers]
    fig = go.Figure(go.Parcoords(dimensions=dims, line=dict(color=colour, colorscale=scale, cmin=0, cmax=k),
                                 labelside="top", labelfont=dict(size=11),
                                 tickfont=dict(size=10)))
    fig.update_layout(template="plotly_white", height=440, margin=dict(t=70, r=50, b=30, l=60))
    return fig


def finite_share(imp: dict | None) -> bool:
    """True when the importances are numbers (PED-ANOVA returns NaN where a target is constant)."""
    return bool(imp) and all(math.isfinite(v) for d in imp.values() for v in d.values())
