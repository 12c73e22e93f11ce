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
import importlib

from . import drawing, naming, schemes
from .naming import describe, describe_stage, scheme_name, stage_summaries
from .spec import ArchSpec, SpecError, StageSpec, StepSpec

__all__ = ["ArchSpec", "Network", "SpecError", "StageSpec", "StepSpec", "blocks", "build", "describe",
           "describe_stage", "drawing", "measure", "presets", "scheme_name", "schemes", "stage_summaries"]

# what imports torch is loaded on first use: the readers of a study (show, the dashboard) name
# and draw its networks from their specs and never need PyTorch (2-3 s of their start)
_LAZY = {"blocks": None, "measure": None, "networks": None, "presets": None, "_rkcnn": None, "_tracking": None,
         "Network": "networks", "build": "networks"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    value = module if _LAZY[name] is None else getattr(module, name)
    globals()[name] = value
    return value
