"""Networks whose blocks are stacked as numerical ODE schemes.

Holds the architecture spec (``ArchSpec``, the one frozen description of a
network), the tableaux, the block engine, the networks, the papers' presets
and the cost measurements.

Public surface: ``ArchSpec`` / ``StageSpec`` / ``StepSpec`` / ``SpecError``,
``build(spec)``, ``describe(spec)``, ``schemes.TABLEAUX``, ``blocks.RKBlock``,
``presets.names()/get(name)``, ``measure``.

May import: torch, numpy. Never optuna, ``trainers``, ``search_space`` or
``studies``: any spec builds without a study.
"""
from . import blocks, measure, presets, schemes
from .networks import Network, build, describe, describe_stage, stage_summaries
from .spec import ArchSpec, SpecError, StageSpec, StepSpec

__all__ = ["ArchSpec", "Network", "SpecError", "StageSpec", "StepSpec", "blocks", "build", "describe",
           "describe_stage", "measure", "presets", "schemes", "stage_summaries"]
