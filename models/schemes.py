"""Explicit Runge-Kutta methods as data: Butcher tableaux.

A stacking scheme (000/001 §3) is a tableau ``(c, A, b)``; one block engine
(:class:`models.blocks.RKBlock`) runs every tableau, so adding a scheme is
adding a row to :data:`TABLEAUX`, never a new class.

Coefficients are kept exact (:class:`fractions.Fraction`) where they are
rational, so the invariants are checked exactly; Verner's entries that involve
sqrt(6) are evaluated once, in float64, from the exact strings shipped in
``models/data/verner89_1978.json``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import torch

Coefficient = Union[Fraction, float]

_DATA = Path(__file__).with_name("data")


def _exact(value) -> Coefficient:
    """Fraction for ints, Fractions and 'p/q' strings; floats stay floats."""
    if isinstance(value, (Fraction, float)):
        return value
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(value)


@dataclass(frozen=True, eq=False)
class ButcherTableau:
    """An explicit Runge-Kutta method ``(c, A, b)`` with ``s`` stages.

    ``a`` holds the strictly lower triangle row by row: ``a[i]`` has ``i``
    entries (``a[0]`` is empty). One step of ``y' = f(y)`` is
    ``k_i = f(y + h * sum_j a[i][j] k_j)``, ``y + h * sum_i b[i] k_i``.

    Checked on construction: shapes, row sums equal ``c`` (exactly for
    rationals, to 1e-12 for float entries), consistency ``sum(b) == 1``.
    """

    name: str
    order: int
    c: tuple[Coefficient, ...]
    a: tuple[tuple[Coefficient, ...], ...]
    b: tuple[Coefficient, ...]

    def __post_init__(self):
        c = tuple(_exact(x) for x in self.c)
        a = tuple(tuple(_exact(x) for x in row) for row in self.a)
        b = tuple(_exact(x) for x in self.b)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        s = len(b)
        if s < 1 or len(c) != s or len(a) != s:
            raise ValueError(f"tableau {self.name!r}: c, a, b must all have {s} stages "
                             f"(got c={len(c)}, a={len(a)}, b={len(b)})")
        for i, row in enumerate(a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name!r}: row {i} of a must have {i} entries "
                                 f"(explicit methods are strictly lower triangular), got {len(row)}")
            if not _close(sum(row, Fraction(0)), c[i]):
                raise ValueError(f"tableau {self.name!r}: row {i} of a sums to "
                                 f"{float(sum(row, Fraction(0))):.17g}, not c[{i}] = {float(c[i]):.17g}")
        if not _close(sum(b, Fraction(0)), Fraction(1)):
            raise ValueError(f"tableau {self.name!r}: weights b sum to "
                             f"{float(sum(b, Fraction(0))):.17g}, not 1 (inconsistent method)")
        if self.order < 1:
            raise ValueError(f"tableau {self.name!r}: order must be >= 1, got {self.order}")

    @property
    def stages(self) -> int:
        return len(self.b)

    @cached_property
    def last_use(self) -> tuple[int, ...]:
        """For each stage j, the last stage i > j whose input needs ``k_j``
        (``-1`` if none). The engine drops ``k_j`` after that stage, which is
        what makes inference memory differ between schemes (001 Table 2)."""
        out = []
        for j in range(self.stages):
            users = [i for i in range(j + 1, self.stages) if self.a[i][j] != 0]
            out.append(max(users) if users else -1)
        return tuple(out)

    @cached_property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c, A, b)`` as float64 tensors, ``A`` full ``s x s``, made once."""
        import torch  # noqa: PLC0415 - late: the readers of a study use the tableaux without PyTorch
        s = self.stages
        A = torch.zeros(s, s, dtype=torch.float64, device="cpu")  # never a default device (meta builds)
        for i, row in enumerate(self.a):
            for j, v in enumerate(row):
                A[i, j] = float(v)
        c = torch.tensor([float(x) for x in self.c], dtype=torch.float64, device="cpu")
        b = torch.tensor([float(x) for x in self.b], dtype=torch.float64, device="cpu")
        return c, A, b

    def is_exact(self) -> bool:
        """True when every coefficient is rational."""
        return all(isinstance(x, Fraction) for x in (*self.c, *self.b, *(v for r in self.a for v in r)))

    def __repr__(self) -> str:
        return f"ButcherTableau({self.name!r}, order={self.order}, stages={self.stages})"


def _close(x: Coefficient, y: Coefficient) -> bool:
    if isinstance(x, Fraction) and isinstance(y, Fraction):
        return x == y
    return math.isclose(float(x), float(y), rel_tol=1e-12, abs_tol=1e-12)


_SURD = re.compile(r"^\(\s*(-?\d+)\s*([+-])\s*(\d+)\s*\*\s*sqrt\(6\)\s*\)\s*/\s*(\d+)$")


def _parse_coefficient(text: str) -> Coefficient:
    """'p/q' -> Fraction; '(p+q*sqrt(6))/d' -> float64, evaluated once."""
    m = _SURD.match(text.replace(" ", ""))
    if m is None:
        return Fraction(text)
    p, sign, q, d = m.groups()
    q = int(q) if sign == "+" else -int(q)
    return (int(p) + q * math.sqrt(6.0)) / int(d)


def _verner8() -> ButcherTableau:
    """Verner's 1978 RK8(9) pair (SIAM J. Numer. Anal. 15(4)), order-8 weights.

    The order-8 output uses stages 1, 8..14 only, and those need only stages
    1..14, so stages 15-16 (used by the order-9 estimate) are dropped: a
    "fixed Verner" HO-ResNet block has 14 sub-networks (000 §3.4).
    """
    raw = json.loads((_DATA / "verner89_1978.json").read_text())
    used = 14
    c = [_parse_coefficient(x) for x in raw["c"][:used]]
    a = [[_parse_coefficient(x) for x in row] for row in raw["a"][:used]]
    b = [_parse_coefficient(x) for x in raw["b"]]
    if any(x != 0 for x in b[used:]):
        raise ValueError("verner89_1978.json: order-8 weights use stages beyond 14")
    return ButcherTableau("verner8", 8, c, a, b[:used])


def _t(name, order, c, a, b) -> ButcherTableau:
    return ButcherTableau(name, order, [Fraction(x) for x in c],
                          [[Fraction(x) for x in row] for row in a], [Fraction(x) for x in b])


TABLEAUX: dict[str, ButcherTableau] = {t.name: t for t in (
    # forward Euler: a ResNet block x + F(x)
    _t("euler", 1, ["0"], [[]], ["1"]),
    # explicit midpoint (000/001 §3.2)
    _t("midpoint", 2, ["0", "1/2"], [[], ["1/2"]], ["0", "1"]),
    # Heun's second-order method (explicit trapezoid)
    _t("heun", 2, ["0", "1"], [[], ["1"]], ["1/2", "1/2"]),
    # Ralston's second-order method (minimum error bound among 2-stage RK2)
    _t("ralston", 2, ["0", "2/3"], [[], ["2/3"]], ["1/4", "3/4"]),
    # Kutta's third-order method
    _t("kutta3", 3, ["0", "1/2", "1"], [[], ["1/2"], ["-1", "2"]], ["1/6", "2/3", "1/6"]),
    # Strong-stability-preserving RK3 (Shu-Osher)
    _t("ssprk3", 3, ["0", "1", "1/2"], [[], ["1"], ["1/4", "1/4"]], ["1/6", "1/6", "2/3"]),
    # the classical fourth-order Runge-Kutta method (000/001 §3.3)
    _t("rk4", 4, ["0", "1/2", "1/2", "1"], [[], ["1/2"], ["0", "1/2"], ["0", "0", "1"]],
       ["1/6", "1/3", "1/3", "1/6"]),
    # Kutta's 3/8 rule, the other classical fourth-order method
    _t("rk38", 4, ["0", "1/3", "2/3", "1"], [[], ["1/3"], ["-1/3", "1"], ["1", "-1", "1"]],
       ["1/8", "3/8", "3/8", "1/8"]),
    # Dormand-Prince 5(4), fifth-order weights; the 7th (FSAL) stage only
    # serves the error estimate and has b = 0, so 6 stages are used.
    _t("dopri5", 5, ["0", "1/5", "3/10", "4/5", "8/9", "1"],
       [[], ["1/5"], ["3/40", "9/40"], ["44/45", "-56/15", "32/9"],
        ["19372/6561", "-25360/2187", "64448/6561", "-212/729"],
        ["9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"]],
       ["35/384", "0", "500/1113", "125/192", "-2187/6784", "11/84"]),
    _verner8(),
)}


def get_tableau(name_or_tableau: str | ButcherTableau) -> ButcherTableau:
    """Look a tableau up by name; a tableau object passes through."""
    if isinstance(name_or_tableau, ButcherTableau):
        return name_or_tableau
    try:
        return TABLEAUX[name_or_tableau]
    except KeyError:
        raise ValueError(f"unknown tableau {name_or_tableau!r}; "
                         f"registered: {', '.join(sorted(TABLEAUX))}") from None
