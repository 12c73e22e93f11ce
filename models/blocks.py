"""Blocks: the sub-network, the Butcher-tableau engine and the other stacking schemes.

Every explicit Runge-Kutta scheme runs through :class:`RKBlock` (SPEC §1,
canonical form). The HO-ResNet papers' own wiring of midpoint and RK4
(000/001 eqs. 6-9) is :class:`PaperBlock`; the linear multi-step scheme of
LM-ResNet (002 §2) is :class:`LMStage`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .schemes import ButcherTableau, get_tableau
from .spec import STEP_BOUNDS


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PreActSubnet(nn.Sequential):
    """The residual sub-network ``F``: BN-ReLU-conv3x3-BN-ReLU-conv3x3, no bias
    (pre-activation, He et al. 2016; 002 §4 and 000 §4.1)."""

    def __init__(self, c_in: int, c_out: int | None = None, stride: int = 1):
        c_out = c_in if c_out is None else c_out
        super().__init__(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=False), conv3x3(c_in, c_out, stride),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=False), conv3x3(c_out, c_out),
        )


class LearnableStep(nn.Module):
    """One scalar step ``h`` per block, kept inside ``[lo, hi]`` by a sigmoid
    reparametrisation (a clamp would stop the gradient at the bound).

    "Adaptive Verner" of 001 §2.4: exactly one extra parameter per block.
    """

    def __init__(self, init: float = 1.0, bounds: tuple[float, float] = STEP_BOUNDS):
        super().__init__()
        lo, hi = bounds
        if not lo < init < hi:
            raise ValueError(f"learnable step init must lie strictly inside ({lo}, {hi}), got {init}")
        self.lo, self.hi = float(lo), float(hi)
        p = (init - lo) / (hi - lo)
        self.raw = nn.Parameter(torch.tensor(math.log(p / (1 - p))))

    def forward(self) -> torch.Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(self.raw)

    def extra_repr(self) -> str:
        return f"value={self().item():.4g}, bounds=({self.lo}, {self.hi})"


def _step_module(step) -> tuple[float | None, nn.Module | None]:
    if isinstance(step, LearnableStep):
        return None, step
    step = float(step)
    if not STEP_BOUNDS[0] <= step <= STEP_BOUNDS[1]:
        raise ValueError(f"step must lie in [{STEP_BOUNDS[0]}, {STEP_BOUNDS[1]}], got {step}")
    return step, None


class _SchemeBlock(nn.Module):
    """Shared pieces of the one-step blocks: step (fixed or learnable) and
    stochastic depth (002 §3: drop the whole update in training with
    probability ``drop_prob``, scale it by the survival probability at eval)."""

    def __init__(self, subnets: Sequence[nn.Module], step, drop_prob: float):
        super().__init__()
        self.subnets = nn.ModuleList(subnets)
        self._fixed_step, self.step = _step_module(step)
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def h(self):
        return self._fixed_step if self.step is None else self.step()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob and self.training and torch.rand(()) < self.drop_prob:
            return x
        update = self.increment(x)
        if self.drop_prob and not self.training:
            update = update * (1.0 - self.drop_prob)
        return x + update

    def increment(self, x: torch.Tensor) -> torch.Tensor:  # out - x
        raise NotImplementedError


class RKBlock(_SchemeBlock):
    """One explicit Runge-Kutta step with sub-networks as stage functions (SPEC §1).

    ``Y_i = x + h * sum_{j<i} a_ij K_j``, ``K_i = F_i(Y_i)``,
    ``out = x + h * sum_i b_i K_i``.

    ``tableau`` is a name in :data:`models.schemes.TABLEAUX` or a
    :class:`ButcherTableau`; ``subnets`` has one module per stage; ``step`` is
    a float in [0.125, 4] or a :class:`LearnableStep`.

    Memory: ``b_i K_i`` is folded into one accumulator as soon as ``K_i``
    exists and ``K_j`` is released after the last stage whose input needs it,
    so what stays alive is what the method needs (euler/midpoint hold x and
    one stage, rk4 one more, verner8 many; 001 Table 2).
    """

    def __init__(self, tableau: str | ButcherTableau, subnets: Sequence[nn.Module],
                 step=1.0, drop_prob: float = 0.0):
        tableau = get_tableau(tableau)
        if len(subnets) != tableau.stages:
            raise ValueError(f"tableau {tableau.name!r} has {tableau.stages} stages, "
                             f"got {len(subnets)} sub-networks")
        super().__init__(subnets, step, drop_prob)
        self.tableau = tableau
        _, A, b = tableau.tensors
        # Python floats, taken once from the tableau's tensors: scalar * tensor
        # with a Python float costs no device copy per step.
        self._a = [[(j, v) for j, v in enumerate(row[:i]) if v != 0] for i, row in enumerate(A.tolist())]
        self._b = b.tolist()
        self._release = [[j for j, last in enumerate(tableau.last_use) if last == i]
                         for i in range(tableau.stages)]
        # Verner's row 12 has entries near 627 that cancel: form stage inputs
        # in float32 even under bf16 autocast (shared/schemes/README.md).
        self._fp32_combine = max((abs(v) for row in self._a for _, v in row), default=0.0) > 8.0

    def increment(self, x: torch.Tensor) -> torch.Tensor:
        h = self.h()
        keep = self.tableau.last_use
        K: list[torch.Tensor | None] = [None] * self.tableau.stages
        acc = None  # sum_i b_i K_i, accumulated in place into a tensor the block owns
        for i, f in enumerate(self.subnets):
            if self._a[i]:
                inputs = [self._stage_input(x, h, [(v, K[j]) for j, v in self._a[i]])]
                for j in self._release[i]:
                    K[j] = None
                # hand Y_i over without a name in this frame: the sub-net frees it
                # after its first layer, as a plain stack of blocks would
                k = f(inputs.pop())
            else:
                k = f(x)
            b = self._b[i]
            if b != 0:
                if acc is None:
                    acc = k if b == 1 and keep[i] < 0 and self.tableau.stages == 1 else k * b
                else:
                    acc.add_(k, alpha=b)
            if keep[i] >= 0:
                K[i] = k
            del k
        return acc if isinstance(h, float) and h == 1.0 else acc * h

    def _stage_input(self, x: torch.Tensor, h, terms) -> torch.Tensor:
        """``x + h * sum_j a_ij K_j`` with one temporary at most."""
        if self._fp32_combine and x.dtype in (torch.bfloat16, torch.float16):
            with torch.autocast(device_type=x.device.type, enabled=False):
                s = sum(v * k.float() for v, k in terms)
                return (x.float() + h * s).to(x.dtype)
        if len(terms) == 1 and isinstance(h, float):
            v, k = terms[0]
            return torch.add(x, k, alpha=h * v)
        (v0, k0), *rest = terms
        s = k0 * v0
        for v, k in rest:
            s.add_(k, alpha=v)
        return torch.add(x, s, alpha=h) if isinstance(h, float) else x + h * s

    def extra_repr(self) -> str:
        return f"tableau={self.tableau.name}, step={'learnable' if self.step is not None else self._fixed_step}"


class PaperBlock(_SchemeBlock):
    """The HO-ResNet papers' wiring of midpoint and RK4 (000/001 eqs. 6-9).

    midpoint: ``m = F1(x) + x``, ``out = F2(m/2) + x``.
    rk4: ``k1 = F1(x)+x``, ``k2 = F2(k1/2)+x``, ``k3 = F3(k2/2)+x``,
    ``k4 = F4(k3)+x``, ``out = x + (k1+2k2+2k3+k4)/6``.

    Unlike the canonical form, stage inputs are halved *states*, not
    ``x + h/2 * K``, and the rk4 output carries ``x`` twice. The step ``h``
    scales every sub-network output (``F_i -> h F_i``).
    """

    STAGES = {"midpoint": 2, "rk4": 4}

    def __init__(self, scheme: str, subnets: Sequence[nn.Module], step=1.0, drop_prob: float = 0.0):
        if scheme not in self.STAGES:
            raise ValueError(f"form 'paper' exists for {sorted(self.STAGES)}, not {scheme!r}")
        if len(subnets) != self.STAGES[scheme]:
            raise ValueError(f"paper-form {scheme} needs {self.STAGES[scheme]} sub-networks, got {len(subnets)}")
        super().__init__(subnets, step, drop_prob)
        self.scheme = scheme

    def increment(self, x: torch.Tensor) -> torch.Tensor:
        h = self.h()
        F = self.subnets
        if self.scheme == "midpoint":
            m = h * F[0](x) + x
            return h * F[1](m / 2)  # out - x
        k1 = h * F[0](x) + x
        acc = k1
        k2 = h * F[1](k1 / 2) + x
        del k1
        acc = acc + 2 * k2
        k3 = h * F[2](k2 / 2) + x
        del k2
        acc = acc + 2 * k3
        k4 = h * F[3](k3) + x
        del k3
        return (acc + k4) / 6  # out - x

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, form=paper"


class LMStage(nn.Module):
    """A stage of linear multi-step blocks (LM-ResNet, 002 §2, eq. 5).

    ``u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + F_n(u_n)`` with a learnable
    scalar ``k_n`` per block, initialised from ``U[-0.1, 0]``. The first block
    is a plain Euler block and its input serves as ``u_{n-1}`` for the second.
    When the first block changes shape (a downsampling transition block), its
    shortcut branch of the input plays that role.

    Stochastic depth (002 §3) drops only ``F_n(u_n)``; the LM combination is kept.
    """

    def __init__(self, first: nn.Module, subnets: Sequence[nn.Module], step=1.0,
                 drop_probs: Sequence[float] | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.first = first
        self.subnets = nn.ModuleList(subnets)
        self._fixed_step, self.step = _step_module(step)
        k = torch.empty(len(subnets)).uniform_(-0.1, 0.0, generator=generator)
        self.k = nn.Parameter(k)
        self.drop_probs = list(drop_probs) if drop_probs is not None else [0.0] * len(subnets)
        if len(self.drop_probs) != len(subnets):
            raise ValueError("one drop probability per LM block is needed")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._fixed_step if self.step is None else self.step()
        prev = self.first.shortcut(x) if hasattr(self.first, "shortcut") else x
        u = self.first(x)
        for n, f in enumerate(self.subnets):
            p = self.drop_probs[n]
            if p and self.training and torch.rand(()) < p:
                update = None
            else:
                update = h * f(u)
                if p and not self.training:
                    update = update * (1.0 - p)
            kn = self.k[n]
            nxt = (1 - kn) * u + kn * prev
            if update is not None:
                nxt = nxt + update
            prev, u = u, nxt
        return u


class DownsampleBlock(nn.Module):
    """Pre-activation residual block that changes width and/or resolution:
    ``BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3`` plus a shortcut. It is a
    forward-Euler block of the stage it opens.

    The shortcut is He et al.'s option A for CIFAR (the ResNets of 002 and
    their 0.27M/0.46M/0.66M/0.85M/1.7M counts): subsample by the stride and
    zero-pad the new channels, no parameters. Narrowing (``c_out < c_in``),
    which those networks never do, takes a ``conv1x1(stride)`` projection of
    the pre-activated input instead.
    """

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.bn = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.body = nn.Sequential(nn.BatchNorm2d(c_out), nn.ReLU(inplace=False), conv3x3(c_out, c_out))
        self.proj = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if c_out < c_in else None

    def shortcut(self, x: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        """The identity branch (``a``: the pre-activated input, if already computed)."""
        if self.proj is not None:
            return self.proj(self.relu(self.bn(x)) if a is None else a)
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.c_out > self.c_in:
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, self.c_out - self.c_in))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn(x))
        return self.shortcut(x, a) + self.body(self.conv1(a))
