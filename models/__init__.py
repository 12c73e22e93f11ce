"""Networks whose blocks are stacked as numerical ODE schemes (SPEC §1-§2).

Public surface: ``build(spec)``, ``describe(spec)``, ``schemes.TABLEAUX``,
``blocks.RKBlock``, ``presets.names()/get(name)``, ``measure``.
Nothing here imports optuna: any spec builds without a study.
"""
from . import blocks, measure, presets, schemes
from .networks import Network, build, describe, describe_stage, stage_summaries

__all__ = ["Network", "blocks", "build", "describe", "describe_stage", "measure", "presets", "schemes",
           "stage_summaries"]
