"""Each tableau block is one step of its Runge-Kutta method (000/001 §3).

With every sub-net replaced by one smooth function ``h f`` the block computes
``y + h * sum b_i k_i``; integrating a test ODE at halving steps must show the
method's convergence order. A wrong coefficient, a stage fed the wrong ``K``
or a dropped stage breaks the order, not just a digit.
"""
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from models.blocks import RKBlock
from models.schemes import TABLEAUX, ButcherTableau, get_tableau


class ScaledPendulum(nn.Module):
    """``h * f(y)`` for the pendulum ``u' = v, v' = -sin(u)``: one RKBlock with
    step 1 and this sub-net in every stage is one RK step of size ``h``."""

    def __init__(self, h: float):
        super().__init__()
        self.h = h

    def forward(self, y):
        u, v = y[..., 0], y[..., 1]
        return self.h * torch.stack([v, -torch.sin(u)], -1)


def integrate(tableau: ButcherTableau, T: float, n: int) -> torch.Tensor:
    f = ScaledPendulum(T / n)
    block = RKBlock(tableau, [f] * tableau.stages)
    y = torch.tensor([1.0, 0.5], dtype=torch.float64)
    for _ in range(n):
        y = block(y)
    return y


STEPS = {1: (64, 128, 256), 2: (32, 64, 128), 3: (16, 32, 64), 4: (16, 32, 64), 5: (8, 16, 32), 8: (4, 8, 16)}


@pytest.fixture(scope="module")
def reference():
    return integrate(TABLEAUX["verner8"], 4.0, 4000)  # error ~1e-20: float64 round-off only


@pytest.mark.parametrize("name", list(TABLEAUX))
def test_convergence_order(name, reference):
    t = TABLEAUX[name]
    errs = [(integrate(t, 4.0, n) - reference).abs().max().item() for n in STEPS[t.order]]
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert abs(slopes[-1] - t.order) < 0.3, f"{name}: observed orders {slopes}, expected {t.order}"


@pytest.mark.parametrize("name", list(TABLEAUX))
def test_linear_stability_polynomial(name):
    """For ``y' = z y`` one step multiplies by R(z), which agrees with exp(z)
    through the term z^p (p = order) and not beyond for these methods."""
    t = TABLEAUX[name]
    z = 0.05
    lin = nn.Linear(1, 1, bias=False).double()
    lin.weight.data.fill_(z)
    R = RKBlock(t, [lin] * t.stages)(torch.ones(1, 1, dtype=torch.float64)).item()
    taylor = sum(z ** k / math.factorial(k) for k in range(t.order + 1))
    assert abs(R - taylor) < 2 * z ** (t.order + 1)
    assert abs(R - math.exp(z)) < z ** (t.order + 1)


def test_one_step_by_hand():
    """RK4 on y' = y^2 from y=1 with h=0.1, every stage computed by hand."""
    class Sq(nn.Module):
        def forward(self, y):
            return 0.1 * y * y
    x = torch.tensor([1.0], dtype=torch.float64)
    k1 = 0.1 * 1.0
    k2 = 0.1 * (1 + k1 / 2) ** 2
    k3 = 0.1 * (1 + k2 / 2) ** 2
    k4 = 0.1 * (1 + k3) ** 2
    expected = 1 + (k1 + 2 * k2 + 2 * k3 + k4) / 6
    assert RKBlock("rk4", [Sq()] * 4)(x).item() == pytest.approx(expected, abs=1e-15)


def test_step_scales_like_h():
    """``step`` is the h of the method: a fixed step of 0.5 on f equals step 1 on f/2."""
    lin = nn.Linear(2, 2, bias=False).double()
    half = nn.Linear(2, 2, bias=False).double()
    half.weight.data = lin.weight.data / 2
    x = torch.randn(3, 2, dtype=torch.float64)
    a = RKBlock("dopri5", [lin] * 6, step=0.5)(x)
    b = RKBlock("dopri5", [half] * 6, step=1.0)(x)
    torch.testing.assert_close(a, b)


def test_tableaux_are_exact_where_rational():
    for name, t in TABLEAUX.items():
        assert t.is_exact() == (name != "verner8"), name
    v = TABLEAUX["verner8"]
    assert v.stages == 14 and v.order == 8
    assert [i + 1 for i, b in enumerate(v.b) if b != 0] == [1, 8, 9, 10, 11, 12, 13, 14]
    assert max(abs(float(x)) for row in v.a for x in row) > 600  # row 12's cancelling entries


def test_rk4_is_classical_not_three_eighths():
    rk4, rk38 = TABLEAUX["rk4"], TABLEAUX["rk38"]
    assert rk4.b == (Fraction(1, 6), Fraction(1, 3), Fraction(1, 3), Fraction(1, 6))
    assert rk38.b == (Fraction(1, 8), Fraction(3, 8), Fraction(3, 8), Fraction(1, 8))


def test_invariants_checked_on_construction():
    with pytest.raises(ValueError, match="row 1 of a sums to"):
        ButcherTableau("bad", 2, ["0", "1/2"], [[], ["1/3"]], ["0", "1"])
    with pytest.raises(ValueError, match="weights b sum to"):
        ButcherTableau("bad", 2, ["0", "1/2"], [[], ["1/2"]], ["0", "1/2"])
    with pytest.raises(ValueError, match="strictly lower triangular"):
        ButcherTableau("bad", 2, ["0", "1/2"], [[], ["1/4", "1/4"]], ["0", "1"])


def test_unknown_tableau_names_the_registry():
    with pytest.raises(ValueError, match="registered: .*rk4"):
        get_tableau("rk5")
    with pytest.raises(ValueError, match="has 4 stages, got 3 sub-networks"):
        RKBlock("rk4", [nn.Identity()] * 3)


def test_release_schedule_matches_tableau():
    """Stage outputs are dropped after their last use: rk4 keeps none beyond
    the next stage; Verner keeps K1 until stage 12 or later."""
    assert TABLEAUX["rk4"].last_use == (1, 2, 3, -1)
    assert TABLEAUX["euler"].last_use == (-1,)
    assert TABLEAUX["verner8"].last_use[0] >= 11
