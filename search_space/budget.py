"""The parameter budget: widths are solved, not sampled (001 compares schemes at
equal parameters, 001 Table 3; 004 Table 3 does the same for RKCNN).

The solver scores every candidate width vector near the nominal pattern at
once with the exact count of :class:`search_space.param_count.ParamCounter`
(read off probe builds of the network itself, milliseconds per spec) and picks
the one closest to the pattern that meets the budget.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

import models
from models.measure import count_params as _count_module_params
from models.spec import ArchSpec, SpecError

from .param_count import ParamCounter

WIDTH_MULTIPLE = 8        # channels: widths snap to multiples of 8 (tensor-core friendly)
MAX_WIDTH = 512           # channels
DEFAULT_TOLERANCE = 0.02  # relative distance to the budget that counts as meeting it
_DEVIATION = 3            # candidate widths: nominal pattern +- 3 steps of WIDTH_MULTIPLE per stage


class BudgetError(SpecError):
    """No widths bring the spec within tolerance of the budget."""

    def __init__(self, message: str, below: int | None = None, above: int | None = None):
        super().__init__(message)
        self.below, self.above = below, above


def count_params(spec: ArchSpec) -> int:
    """Parameters of the network ``spec`` describes (built on the meta device)."""
    return _count_module_params(models.build(spec, device="meta"))


# --------------------------------------------------------------------------
# the solver
# --------------------------------------------------------------------------

def _nominal_ratios(spec: ArchSpec) -> np.ndarray:
    """The usual width pattern: doubling at each downsampling for ResNet-style
    stages (002), a constant growth rate for RKCNN periods (004)."""
    r, out = 1.0, []
    for i, s in enumerate(spec.stages):
        if i and s.downsample and not s.is_rkcnn:
            r *= 2
        out.append(r)
    return np.array(out)


@functools.lru_cache(maxsize=64)
def _candidates(ratios: tuple[float, ...], max_width: int) -> np.ndarray:
    """Width vectors (channels) near the nominal pattern at every scale: each
    stage within ``_DEVIATION`` steps of ``base * ratio``, no duplicates."""
    steps = max_width // WIDTH_MULTIPLE
    base = np.round(np.arange(1, steps + 1)[:, None] * np.array(ratios)[None, :]).astype(np.int64)
    dev = np.array(list(itertools.product(range(-_DEVIATION, _DEVIATION + 1), repeat=len(ratios))))
    cand = (base[:, None, :] + dev[None, :, :]).reshape(-1, len(ratios))
    cand = cand[(cand >= 1).all(1) & (cand <= steps).all(1)]
    key = cand @ (steps + 1) ** np.arange(len(ratios))[::-1]   # rows as numbers: unique in 1-D
    out = cand[np.unique(key, return_index=True)[1]] * WIDTH_MULTIPLE
    out.setflags(write=False)
    return out


def solve_widths(spec: ArchSpec, budget: int, tolerance: float = DEFAULT_TOLERANCE,
                 max_width: int = MAX_WIDTH) -> ArchSpec:
    """Stage widths (multiples of 8, at most ``max_width``) that bring the
    parameter count within ``tolerance`` of ``budget``.

    Among the widths that meet the budget, the one closest (in log-width) to
    the nominal pattern (x2 per downsampling; constant for RKCNN) wins, ties
    going to the count closest to the budget. Raises :class:`BudgetError`
    naming the nearest achievable counts when no widths meet it.
    """
    if budget <= 0:
        raise SpecError(f"budget: must be a positive number of parameters, got {budget}")
    if not 0 < tolerance < 1:
        raise SpecError(f"tolerance: must lie in (0, 1), got {tolerance}")
    spec = spec.validate()
    ratios = _nominal_ratios(spec)
    cand = _candidates(tuple(ratios.tolist()), max_width)
    counts = ParamCounter(spec)(cand)
    rel = np.abs(counts - budget) / budget
    ok = rel <= tolerance
    if not ok.any():
        below = counts[counts < budget]
        above = counts[counts > budget]
        lo = int(below.max()) if below.size else None
        hi = int(above.min()) if above.size else None
        near = ", ".join(f"{v:,}" for v in (lo, hi) if v is not None)
        raise BudgetError(f"cannot meet budget {budget:,} params within {tolerance:.0%} for {spec.name!r} "
                          f"with widths that are multiples of {WIDTH_MULTIPLE} up to {max_width}; "
                          f"nearest achievable: {near}", lo, hi)
    c = cand[ok]
    # log-distance to the nominal pattern, scale-free: fit the best base per candidate
    logs = np.log(c) - np.log(ratios)[None, :]
    shape = np.abs(logs - logs.mean(1, keepdims=True)).sum(1)
    best = np.lexsort((rel[ok], np.round(shape, 6)))[0]
    return spec.with_widths([int(x) for x in c[best]])


def within_budget(params: int, budget: int, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    return math.isfinite(params) and abs(params - budget) <= tolerance * budget


def parse_budget(text: str | int | float) -> int:
    """'1.0M', '250k', '2e6' or a number -> parameters."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        t = text.strip().lower().replace("_", "")
        mult = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1.0)
        try:
            value = float(t[:-1] if t[-1:] in "kmg" else t) * mult
        except ValueError:
            raise SpecError(f"budget: {text!r} is not a parameter count; use e.g. 1.0M, 250k or 2000000") from None
    if not math.isfinite(value) or value <= 0:
        raise SpecError(f"budget: must be a positive, finite number of parameters, got {text!r}")
    return int(round(value))
