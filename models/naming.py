"""A network in the papers' words: scheme names, one line per stage, a summary per stage.

Kept apart from :mod:`models.networks` and free of torch, so that the readers of a study
(``show``, the dashboard) name its networks without importing PyTorch (2-3 s of a page).
"""
from __future__ import annotations

from .schemes import TABLEAUX
from .spec import ArchSpec, StageSpec

__all__ = ["describe", "describe_stage", "scheme_label", "scheme_name", "stage_scheme", "stage_summaries"]

_NAMES = {"euler": "Euler", "midpoint": "Midpoint", "rk4": "RK4", "verner8": "RK8", "lm": "LM",
          "heun": "Heun", "ralston": "Ralston", "kutta3": "Kutta3", "ssprk3": "SSPRK3", "rk38": "RK3/8",
          "dopri5": "DOPRI5"}


def scheme_name(scheme: str) -> str:
    """A scheme in the papers' naming, as :func:`describe` writes it: ``rk38`` -> ``RK3/8``,
    ``rkcnn-i`` -> ``RKCNN-I``."""
    return scheme.upper() if scheme.startswith("rkcnn") else _NAMES.get(scheme, scheme)


def describe_stage(stage: StageSpec) -> str:
    """A stage in the papers' naming: ``RK4 x7 / 64ch``, ``Nest-Midpoint x4 once``,
    ``RK8 x2 Adaptive``, ``RK8 x1 Adaptive from 2`` (a learnable step not started at 1),
    ``RKCNN-I s2 r1 / k120``."""
    width = f" / {stage.width}ch" if stage.width else ""
    if stage.is_rkcnn:
        k = f" / k{stage.width}" if stage.width else ""
        return f"RKCNN-{stage.scheme[-1].upper()} s{stage.rk_stages} r{stage.rk_steps}{k}"
    name = _NAMES.get(stage.scheme, stage.scheme)
    if stage.form == "paper":
        name += "(paper)"
    if stage.depth:
        name = "Nest-" + name
    text = f"{name} x{stage.blocks}"
    if stage.depth:
        text += " " + {1: "once", 2: "twice"}.get(stage.depth, f"{stage.depth} times")
    if stage.step.mode == "learnable":
        text += " Adaptive" + (f" from {stage.step.value:g}" if stage.step.value != 1.0 else "")
    elif stage.step.value != 1.0:
        text += f" F={stage.step.value:g}"
    if stage.stochastic_depth:
        text += " SD"
    return text + width


def describe(spec: ArchSpec) -> str:
    """The whole architecture in the papers' naming, stages joined by `` | ``."""
    return " | ".join(describe_stage(s) for s in spec.stages)


def stage_summaries(spec: ArchSpec) -> list[dict]:
    """One dict per stage for reports: scheme, form, blocks, depth, step, width,
    leaf sub-nets per block, downsample."""
    out = []
    for s in spec.stages:
        leaves = 1 if s.scheme == "lm" or s.is_rkcnn else TABLEAUX[s.scheme].stages ** (s.depth + 1)
        d = dict(name=describe_stage(s), scheme=s.scheme, form=s.form, blocks=s.blocks, depth=s.depth,
                 step=dict(mode=s.step.mode, value=s.step.value), width=s.width,
                 subnets_per_block=leaves, stochastic_depth=s.stochastic_depth, downsample=s.downsample)
        if s.is_rkcnn:
            d.update(rk_stages=s.rk_stages, rk_steps=s.rk_steps)
        out.append(d)
    return out


def stage_scheme(stage: StageSpec) -> str:
    """A stage's scheme as tables and colours name it: ``rk4(paper)``, ``midpoint-nested``."""
    return stage.scheme + ("(paper)" if stage.form == "paper" else "") + ("-nested" if stage.depth else "")


def scheme_label(spec: ArchSpec) -> str:
    """The distinct stage schemes of a network, in order, joined by ``+``."""
    return "+".join(dict.fromkeys(stage_scheme(s) for s in spec.stages))
