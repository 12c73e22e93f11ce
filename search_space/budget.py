"""The parameter budget: widths are solved, not sampled (001 compares schemes at
equal parameters, 001 Table 3; 004 Table 3 does the same for RKCNN).

The solver scores every candidate width vector near the nominal pattern at
once with the exact count of :class:`search_space.param_count.ParamCounter`
(read off probe builds of the network itself, milliseconds per spec) and picks
the one closest to the pattern that meets the budget. It looks in three
places, each only when the one before holds no width vector within the
tolerance:

1. multiples of 8 within 3 steps of the pattern at every scale (tensor-core
   friendly; most networks stop here);
2. any width from :data:`MIN_WIDTH` within 3 channels of the pattern at scales
   near the budget's, preferring widths that are multiples of 8, then of 4,
   then of 2: a narrow stage moves the count by ``2/c`` of itself per channel,
   far less than per 8 channels;
3. for a network whose first stage opens with a scheme block (not an RKCNN
   period), a stem width from :data:`MIN_WIDTH` to twice the first stage's,
   absorbing the remainder: the first block then widens (zero-padded shortcut)
   or narrows (projection shortcut) from the stem, as a stage-changing block
   does, and each stem channel moves the count by about ``9c`` (``10c`` wider).

Which networks the sampler offers at a budget (so that at most a few in a
thousand reach none of the three) is :mod:`search_space.sampling`'s side.
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

WIDTH_MULTIPLE = 8        # channels: widths snap to multiples of 8 where the budget allows (tensor-core friendly)
MIN_WIDTH = 8             # channels: the narrowest a stage or the stem is made
MAX_WIDTH = 512           # channels
DEFAULT_TOLERANCE = 0.02  # relative distance to the budget that counts as meeting it
_DEVIATION = 3            # candidate widths: nominal pattern +- 3 steps (of 8, then of 1 channel) per stage
_SCALES = 0.1             # fine candidates: pattern scales within 10% of the one that meets the budget


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

def nominal_ratios(spec: ArchSpec) -> np.ndarray:
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
    out = _unique_rows(cand) * WIDTH_MULTIPLE
    out.setflags(write=False)
    return out


def _unique_rows(rows: np.ndarray) -> np.ndarray:
    if not len(rows):
        return rows
    key = rows @ (int(rows.max()) + 1) ** np.arange(rows.shape[1])[::-1]   # rows as numbers: unique in 1-D
    return rows[np.unique(key, return_index=True)[1]]


def _fine_candidates(counter: ParamCounter, ratios: np.ndarray, budget: int, max_width: int) -> np.ndarray:
    """Width vectors of any channel count in ``[MIN_WIDTH, max_width]`` near the
    pattern at the scales whose count lies near the budget: the pattern (clipped
    to the bounds, so that the narrowest network has every stage at
    :data:`MIN_WIDTH`) is scaled channel by channel, the scale meeting the
    budget found on that curve, then each stage moved by up to
    ``_DEVIATION`` channels at every scale within ``_SCALES`` of it."""
    def pattern(scales):
        return np.clip(np.round(np.asarray(scales, dtype=float)[:, None] * ratios[None, :]),
                       MIN_WIDTH, max_width).astype(np.int64)
    scales = np.arange(1, max_width + 1)
    counts = counter(pattern(scales))
    k = int(np.clip(np.searchsorted(counts, budget), 1, len(scales) - 1))
    lo, hi = counts[k - 1], counts[k]
    best = scales[k - 1] + (budget - lo) / max(hi - lo, 1)       # channels of the first stage, continuous
    around = np.arange(np.floor(best * (1 - _SCALES)) - 1, np.ceil(best * (1 + _SCALES)) + 2)
    base = pattern(around[(around >= 1) & (around <= max_width)])
    dev = np.array(list(itertools.product(range(-_DEVIATION, _DEVIATION + 1), repeat=len(ratios))))
    cand = (base[:, None, :] + dev[None, :, :]).reshape(-1, len(ratios))
    return _unique_rows(cand[(cand >= MIN_WIDTH).all(1) & (cand <= max_width).all(1)])


def _misalignment(widths: np.ndarray) -> np.ndarray:
    """Per row, how far its widths are from multiples of 8: per width 0 (a multiple
    of 8), 1 (of 4), 2 (of 2) or 3 (odd); summed over the row."""
    w = np.atleast_2d(widths)
    return ((w % 8 != 0).astype(int) + (w % 4 != 0) + (w % 2 != 0)).sum(1)


def _shape(widths: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """Log-distance of each row to the nominal pattern, scale-free (the best base per row)."""
    logs = np.log(widths) - np.log(ratios)[None, :]
    return np.round(np.abs(logs - logs.mean(1, keepdims=True)).sum(1), 6)


def _stem_absorbs(spec: ArchSpec, counter: ParamCounter, cand: np.ndarray, budget: int, tolerance: float):
    """``(widths, stem, counts)`` of candidates brought within the tolerance by a stem
    width other than the first stage's, from :data:`MIN_WIDTH` to twice the first
    stage's width, for networks whose first stage is a scheme stage. On each side
    of the first stage's width the count is affine in the stem width (the stem
    conv, the first sub-net's first conv and BatchNorm, and when the stem is wider
    the projection shortcut), so two counts per candidate and side give the stem
    width to try; the exact count decides."""
    if spec.stem_width is not None or spec.stages[0].is_rkcnn or spec.transition != "resblock" or not len(cand):
        return None
    first = cand[:, 0]
    found = []
    for lo, hi in ((np.full_like(first, MIN_WIDTH), first - 1), (first + 1, 2 * first)):
        rows = lo <= hi
        c, lo, hi = cand[rows], lo[rows], hi[rows]
        if not len(c):
            continue
        at_lo, at_hi = counter(c, stem=lo), counter(c, stem=hi)
        slope = (at_hi - at_lo) / np.maximum(hi - lo, 1)
        stem = np.round(lo + (budget - at_lo) / np.where(slope > 0, slope, 1)).astype(np.int64)
        stem = np.clip(stem, lo, hi)
        counts = counter(c, stem=stem)
        ok = np.abs(counts - budget) <= tolerance * budget
        found.append((c[ok], stem[ok], counts[ok]))
    if not found or not any(len(f[0]) for f in found):
        return None
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _refusal(spec: ArchSpec, budget: int, tolerance: float, max_width: int, counts) -> BudgetError:
    counts = np.concatenate([np.ravel(c) for c in counts])
    below, above = counts[counts < budget], counts[counts > budget]
    lo = int(below.max()) if below.size else None
    hi = int(above.min()) if above.size else None
    near = ", ".join(f"{v:,}" for v in (lo, hi) if v is not None)
    return BudgetError(f"cannot meet budget {budget:,} params within {tolerance:.0%} for {spec.name!r} "
                       f"with widths from {MIN_WIDTH} to {max_width} channels; nearest achievable: {near}",
                       lo, hi)


def solve_widths(spec: ArchSpec, budget: int, tolerance: float = DEFAULT_TOLERANCE,
                 max_width: int = MAX_WIDTH) -> ArchSpec:
    """Stage widths (at most ``max_width``; and, for a sampled spec whose first
    stage is a scheme stage, the stem width) that bring the parameter count within
    ``tolerance`` of ``budget``.

    Multiples of 8 are tried first; then any width from :data:`MIN_WIDTH`; then a
    free stem (see the module docstring). Among the widths that meet the
    budget at the first place that has any, the one closest (in log-width) to the
    nominal pattern (x2 per downsampling; constant for RKCNN) wins, widths nearer
    to multiples of 8 first, ties going to the count closest to the budget. Raises
    :class:`BudgetError` naming the nearest achievable counts when no widths meet it.
    """
    if budget <= 0:
        raise SpecError(f"budget: must be a positive number of parameters, got {budget}")
    if not 0 < tolerance < 1:
        raise SpecError(f"tolerance: must lie in (0, 1), got {tolerance}")
    spec = spec.validate()
    ratios = nominal_ratios(spec)
    counter = ParamCounter(spec)
    cand = _candidates(tuple(ratios.tolist()), max_width)
    counts = counter(cand)
    seen = [counts]
    ok = np.abs(counts - budget) <= tolerance * budget
    if not ok.any():
        cand = _fine_candidates(counter, ratios, budget, max_width)
        counts = counter(cand) if len(cand) else np.zeros(0, dtype=np.int64)
        seen.append(counts)
        ok = np.abs(counts - budget) <= tolerance * budget
    if ok.any():
        c, rel = cand[ok], np.abs(counts[ok] - budget) / budget
        best = np.lexsort((rel, _shape(c, ratios), _misalignment(c)))[0]
        return spec.with_widths([int(x) for x in c[best]])
    absorbed = _stem_absorbs(spec, counter, cand, budget, tolerance)
    if absorbed is None:
        raise _refusal(spec, budget, tolerance, max_width, seen)
    c, stem, counts = absorbed
    rel = np.abs(counts - budget) / budget
    best = np.lexsort((rel, _shape(c, ratios), np.abs(np.log(stem / c[:, 0])).round(6),
                       _misalignment(c) + _misalignment(stem[:, None])))[0]
    return spec.with_widths([int(x) for x in c[best]], stem_width=int(stem[best]))


def within_budget(params: int, budget: int, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    return math.isfinite(params) and abs(params - budget) <= tolerance * budget


MAX_PLAIN_COUNT = 10**15     # past this a count is printed in scientific notation (a typed 1e300 has 301 digits)


def format_count(n: int | float) -> str:
    """A parameter count for a message: ``1,000,000``, or ``1e+300`` past :data:`MAX_PLAIN_COUNT`."""
    return f"{n:,}" if abs(n) < MAX_PLAIN_COUNT else f"{float(n):.3g}"


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
