"""The parameter budget: widths are solved, not sampled (SPEC §3).

A network's parameter count is a polynomial of degree two in its stage
widths (convolutions are ``c_in * c_out * k^2``, BatchNorm and biases are
linear, a dense RKCNN unit's input is a multiple of k). We recover that
polynomial exactly from a handful of ``device="meta"`` builds, then score
every candidate width vector at once with numpy instead of building
thousands of networks.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

import models
from models.measure import count_params as _count_module_params
from models.spec import ArchSpec, SpecError

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


def _monomials(w: np.ndarray) -> np.ndarray:
    """Degree-<=2 monomials of the width vectors ``w`` (rows), columns fixed order."""
    n = w.shape[1]
    cols = [np.ones(len(w))] + [w[:, i] for i in range(n)]
    cols += [w[:, i] * w[:, j] for i in range(n) for j in range(i, n)]
    return np.stack(cols, axis=1)


@dataclass(frozen=True)
class ParamPolynomial:
    """Exact parameter count as a function of the stage widths, one quadratic
    per *signature*: whether each stage is wider, as wide or narrower than the
    one before decides which modules exist (a transition only where the shape
    changes, a projection shortcut only when narrowing), so the count is
    quadratic piece by piece."""

    spec: ArchSpec
    pieces: dict

    def __call__(self, widths: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(widths).astype(np.float64)
        sig = _signatures(self.spec, w)
        out = np.empty(len(w))
        for key in {tuple(r) for r in sig.tolist()}:
            rows = (sig == np.array(key)).all(1)
            if key not in self.pieces:
                self.pieces[key] = _fit_piece(self.spec, key)
            out[rows] = _monomials(w[rows]) @ self.pieces[key]
        return out


def _signatures(spec: ArchSpec, w: np.ndarray) -> np.ndarray:
    prev = np.full((len(w), 1), spec.stem_width) if spec.stem_width else w[:, :1]
    return np.sign(w - np.concatenate([prev, w[:, :-1]], axis=1)).astype(int)


def _points(spec: ArchSpec, key: tuple, count: int, rng) -> np.ndarray:
    """Random width vectors (multiples of 8) with the given signature."""
    narrowing = sum(1 for sgn in key if sgn < 0)
    pts = []
    for _ in range(1000 * count):
        if spec.stem_width:
            prev = spec.stem_width
        else:  # start wide enough that every narrowing step (at most 3 x 8) stays positive
            prev = int(rng.integers(12, 20) + 3 * narrowing) * WIDTH_MULTIPLE
        row = []
        for sgn in key:
            c = prev + sgn * int(rng.integers(1, 4)) * WIDTH_MULTIPLE
            if c < WIDTH_MULTIPLE:
                break
            row.append(c)
            prev = c
        else:
            pts.append(row)
            if len(pts) == count:
                return np.array(pts)
    raise RuntimeError(f"no widths of {spec.name!r} follow the width pattern {key} "
                       f"(stem width {spec.stem_width})")


def _fit_piece(spec: ArchSpec, key: tuple) -> np.ndarray:
    """Fit one quadratic from meta builds and check it on fresh points (exact
    integers), so a count that is not quadratic is caught rather than trusted."""
    n = len(spec.stages)
    m = 1 + n + n * (n + 1) // 2
    rng = np.random.default_rng(0)
    pts = _points(spec, key, m + 4, rng)
    y = np.array([count_params(spec.with_widths(p.tolist())) for p in pts], dtype=np.float64)
    # min-norm least squares: where a signature ties widths the monomials are
    # dependent, but any solution is exact on the tied subspace we evaluate
    coef, *_ = np.linalg.lstsq(_monomials(pts.astype(np.float64)), y, rcond=None)
    for p in _points(spec, key, 2, rng):
        exact = count_params(spec.with_widths(p.tolist()))
        fit = float((_monomials(p[None].astype(np.float64)) @ coef)[0])
        if abs(fit - exact) > 0.5:
            raise RuntimeError(f"parameter count of {spec.name!r} is not quadratic in the widths "
                               f"(at {p.tolist()}: fit {fit:.1f}, exact {exact})")
    return coef


def fit_param_polynomial(spec: ArchSpec) -> ParamPolynomial:
    """The parameter count of ``spec`` as a function of its stage widths."""
    return ParamPolynomial(spec, {})


def _nominal_ratios(spec: ArchSpec) -> np.ndarray:
    """The usual width pattern: doubling at each downsampling for ResNet-style
    stages (002), a constant growth rate for RKCNN periods (004)."""
    r, out = 1.0, []
    for i, s in enumerate(spec.stages):
        if i and s.downsample and not s.is_rkcnn:
            r *= 2
        out.append(r)
    return np.array(out)


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
    poly = fit_param_polynomial(spec)
    ratios = _nominal_ratios(spec)
    steps = max_width // WIDTH_MULTIPLE
    base = np.arange(1, steps + 1)[:, None] * WIDTH_MULTIPLE * ratios[None, :]          # (B, n)
    base = np.round(base / WIDTH_MULTIPLE)
    dev = np.array(list(itertools.product(range(-_DEVIATION, _DEVIATION + 1), repeat=len(ratios))))
    cand = (base[:, None, :] + dev[None, :, :]).reshape(-1, len(ratios))
    cand = np.unique(cand[(cand >= 1).all(1) & (cand <= steps).all(1)], axis=0) * WIDTH_MULTIPLE
    counts = np.round(poly(cand))
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
