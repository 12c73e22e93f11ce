"""Networks whose blocks are stacked as numerical ODE schemes.

Holds the architecture spec (``ArchSpec``, the one frozen description of a
network), the tableaux, the block engine, the networks, the papers' presets
and the cost measurements.

Public surface: ``ArchSpec`` / ``StageSpec`` / ``StepSpec`` / ``SpecError``,
``build(spec)``, ``describe(spec)``, ``drawing.network_svg(spec)``, ``schemes.TABLEAUX``, ``blocks.RKBlock``,
``presets.names()/get(name)``, ``measure``.

May import: torch, numpy. Never optuna, ``trainers``, ``search_space`` or
``studies``: any spec builds without a study.
"""
from . import blocks, drawing, measure, presets, schemes
from .networks import Network, build, describe, describe_stage, scheme_name, stage_summaries
from .spec import ArchSpec, SpecError, StageSpec, StepSpec

__all__ = ["ArchSpec", "Network", "SpecError", "StageSpec", "StepSpec", "blocks", "build", "describe",
           "describe_stage", "drawing", "measure", "presets", "scheme_name", "schemes", "stage_summaries"]
