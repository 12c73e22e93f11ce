"""Blocks: the sub-network, the Butcher-tableau engine and the other stacking schemes.

Every explicit Runge-Kutta scheme runs through :class:`RKBlock` (one step of
the method with sub-networks as stage functions, 000/001 §3). The HO-ResNet
papers' own wiring of midpoint and RK4 (000/001 eqs. 6-9) is
:class:`PaperBlock`; the linear multi-step scheme of LM-ResNet (002 §2) is
:class:`LMStage`.

Shape changes. A block that opens a stage at a new width or resolution is a
block *of the stage's scheme*, as in the authors' HO-ResNet code and 002's
code: its first sub-network carries the stride (and ``c_in -> c_out``), and
everywhere the scheme adds the block input ``x`` (stage inputs ``Y_i``, the
output) it adds the :class:`Shortcut` of ``x`` instead: ``x`` subsampled by
the stride and zero-padded to the new width (He et al.'s option A for CIFAR).
For Euler this is the usual pre-activation downsampling block.

Memory. A stage input ``Y_i`` is handed to its sub-network in a one-element
list that the sub-network empties (:class:`PreActSubnet` takes such a
hand-over), so ``Y_i`` is freed after the sub-network's first layer instead of
living, through the call's argument tuple, until the sub-network returns:
the inference peak is then what the scheme itself keeps (001 Table 2).
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator, Sequence

import torch
from torch import nn

from .schemes import ButcherTableau, get_tableau
from .spec import STEP_BOUNDS


_DRAWS = threading.local()    # .generator: where this thread's stochastic-depth draws come from


def dropped(p: float) -> bool:
    """Whether stochastic depth (002 §3) drops a block with drop probability ``p`` this time.

    The draw comes from torch's global generator, which the trainer seeds per epoch, unless
    this thread runs under :func:`private_draws`: a measurement in a worker's preparing
    thread must not take numbers from the stream the training thread is using."""
    return bool(torch.rand((), generator=getattr(_DRAWS, "generator", None)) < p)


@contextlib.contextmanager
def private_draws(generator: torch.Generator) -> Iterator[torch.Generator]:
    """Within the block, stochastic depth in this thread draws from ``generator`` only."""
    before = getattr(_DRAWS, "generator", None)
    _DRAWS.generator = generator
    try:
        yield generator
    finally:
        _DRAWS.generator = before


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PreActSubnet(nn.Sequential):
    """The residual sub-network ``F``: BN-ReLU-conv3x3-BN-ReLU-conv3x3, no bias
    (pre-activation, He et al. 2016; 002 §4 and 000 §4.1). The first conv
    carries ``stride`` and ``c_in -> c_out`` when the sub-net opens a stage.

    ``forward`` takes a tensor, or a hand-over: a one-element list holding it,
    which is emptied so that the input is freed after the first layer.
    """

    takes_handover = True

    def __init__(self, c_in: int, c_out: int | None = None, stride: int = 1):
        c_out = c_in if c_out is None else c_out
        super().__init__(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=False), conv3x3(c_in, c_out, stride),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=False), conv3x3(c_out, c_out),
        )

    def forward(self, x):
        if isinstance(x, list):
            x = x.pop()
        for layer in self:
            x = layer(x)  # rebinding x drops the only reference to the layer's input
        return x


def _consume(f: nn.Module, box: list) -> torch.Tensor:
    """``f(box[0])``, emptying ``box``: a sub-net that takes a hand-over frees the
    tensor after its first layer; any other module holds it for its whole call."""
    return f(box) if getattr(f, "takes_handover", False) else f(box.pop())


class Shortcut(nn.Module):
    """The identity branch of a block that changes shape: ``x`` subsampled by the
    stride and zero-padded to ``c_out`` channels, no parameters (He et al.'s
    option A, the ResNets of 002 with their 0.27M/0.46M/0.66M/0.85M/1.7M counts;
    the authors' HO-ResNet code does the same). Narrowing (``c_out < c_in``),
    which no paper network does, takes 002's code's projection instead:
    ``BN-ReLU-conv1x1(stride)``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.proj = (nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=False),
                                   nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))
                     if c_out < c_in else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return self.proj(x)
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.c_out > self.c_in:
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, self.c_out - self.c_in))
        return x

    def extra_repr(self) -> str:
        kind = "projection" if self.proj is not None else "zero-pad"
        return f"{self.c_in}->{self.c_out}, stride={self.stride}, {kind}"


class LearnableStep(nn.Module):
    """One scalar step per block, the parameter ``h`` itself (0-dim), initialised
    at ``init`` and not squashed into a bound: 001 §3.6 says the adaptive step
    "did not follow the constraint" [0.125, 4], and 000 §4.6 watched a learnable
    factor decay toward 0 under weight decay, which acts on ``h``.

    "Adaptive Verner" of 001 §2.4: exactly one extra parameter per block.
    """

    def __init__(self, init: float = 1.0):
        super().__init__()
        init = float(init)
        if not math.isfinite(init):
            raise ValueError(f"learnable step init must be a finite number, got {init}")
        self.init = init
        self.h = nn.Parameter(torch.tensor(init))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``h`` back to its initial value (draws nothing; ``generator`` for a uniform call)."""
        with torch.no_grad():
            self.h.fill_(self.init)

    def forward(self) -> torch.Tensor:
        return self.h

    def extra_repr(self) -> str:
        return f"h={self.h.item():.4g}"


def _step_module(step) -> tuple[float | None, nn.Module | None]:
    if isinstance(step, LearnableStep):
        return None, step
    step = float(step)
    if not STEP_BOUNDS[0] <= step <= STEP_BOUNDS[1]:
        raise ValueError(f"step must lie in [{STEP_BOUNDS[0]}, {STEP_BOUNDS[1]}], got {step}")
    return step, None


def _plus(s: torch.Tensor, h, k: torch.Tensor) -> torch.Tensor:
    """``s + h * k`` with one new tensor."""
    return torch.add(s, k, alpha=h) if isinstance(h, float) else torch.addcmul(s, k, h)


class Increment(nn.Module):
    """The sub-network of a nested block: the increment ``F(y) = B(y) - y`` of an
    inner block ``B`` (000 §3.5 "regarding the block as the F"). Taking the
    increment, not the whole inner block, keeps every block the identity when its
    leaves output zero; the whole block would multiply the skip path (by 2.5 per
    midpoint level). When the outer block changes shape, its first sub-net's
    increment is taken relative to the outer block's shortcut ``s``."""

    def __init__(self, block: "_SchemeBlock"):
        super().__init__()
        self.block = block

    def forward(self, y: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        return self.block.increment(y, y if s is None else s)


class _SchemeBlock(nn.Module):
    """Shared pieces of the one-step blocks: step (fixed or learnable), the
    shortcut of a block that changes shape, and stochastic depth (002 §3: drop
    the whole update in training with probability ``drop_prob``, scale it by the
    survival probability at eval)."""

    def __init__(self, subnets: Sequence[nn.Module], step, drop_prob: float,
                 shortcut: nn.Module | None = None):
        super().__init__()
        self.subnets = nn.ModuleList(subnets)
        self._fixed_step, self.step = _step_module(step)
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)
        self.shortcut = shortcut

    def h(self):
        return self._fixed_step if self.step is None else self.step()

    def shortcut_of(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.shortcut is None else self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, self.shortcut_of(x))

    def forward_from(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The block's output for input ``x`` whose identity branch is ``s``."""
        if self.drop_prob and self.training and dropped(self.drop_prob):
            return s
        update = self.increment(x, s)
        if self.drop_prob and not self.training:
            update = update * (1.0 - self.drop_prob)
        return s + update

    def increment(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """``out - s``; ``s`` (default ``x``) stands for ``x`` wherever the scheme adds it."""
        raise NotImplementedError

    def _first(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The first sub-net on the block input (it carries any stride)."""
        f = self.subnets[0]
        return f(x, s) if isinstance(f, Increment) else f(x)


class RKBlock(_SchemeBlock):
    """One explicit Runge-Kutta step with sub-networks as stage functions
    (000/001 §3; Butcher's canonical form).

    ``Y_i = x + h * sum_{j<i} a_ij K_j``, ``K_i = F_i(Y_i)``,
    ``out = x + h * sum_i b_i K_i``.

    ``tableau`` is a name in :data:`models.schemes.TABLEAUX` or a
    :class:`ButcherTableau`; ``subnets`` has one module per stage; ``step`` is
    a float in [0.125, 4] or a :class:`LearnableStep`; ``shortcut`` (a block
    that changes shape) replaces ``x`` in every ``Y_i`` (i > 1) and in ``out``.

    Memory: ``b_i K_i`` is folded into one accumulator as soon as ``K_i``
    exists, ``K_j`` is released after the last stage whose input needs it, and
    ``Y_i`` is handed over to its sub-net (see the module docstring), so what
    stays alive is what the method needs: Euler and midpoint hold ``x`` and one
    sub-net's work, RK4 one accumulator more, Verner its stage outputs (001 Table 2).
    """

    def __init__(self, tableau: str | ButcherTableau, subnets: Sequence[nn.Module],
                 step=1.0, drop_prob: float = 0.0, shortcut: nn.Module | None = None):
        tableau = get_tableau(tableau)
        if len(subnets) != tableau.stages:
            raise ValueError(f"tableau {tableau.name!r} has {tableau.stages} stages, "
                             f"got {len(subnets)} sub-networks")
        super().__init__(subnets, step, drop_prob, shortcut)
        self.tableau = tableau
        _, A, b = tableau.tensors
        # Python floats, taken once from the tableau's tensors: scalar * tensor
        # with a Python float costs no device copy per step.
        self._a = [[(j, v) for j, v in enumerate(row[:i]) if v != 0] for i, row in enumerate(A.tolist())]
        self._b = b.tolist()
        self._last_b = max(i for i, v in enumerate(self._b) if v != 0)
        self._release = [[j for j, last in enumerate(tableau.last_use) if last == i]
                         for i in range(tableau.stages)]
        # Verner's row 12 has entries near 627 that cancel: form stage inputs
        # in float32 even under bf16 autocast (models/data/verner89_1978.json).
        self._fp32_combine = max((abs(v) for row in self._a for _, v in row), default=0.0) > 8.0

    def increment(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        s = x if s is None else s
        h = self.h()
        keep = self.tableau.last_use
        K: list[torch.Tensor | None] = [None] * self.tableau.stages
        acc = None  # sum_i b_i K_i, accumulated in place into a tensor the block owns
        for i, f in enumerate(self.subnets):
            if i == 0:
                k = self._first(x, s)
            else:
                box = [self._stage_input(s, h, [(v, K[j]) for j, v in self._a[i]]) if self._a[i] else s]
                for j in self._release[i]:
                    K[j] = None
                k = _consume(f, box)
            b = self._b[i]
            if b != 0:
                if acc is None:
                    # the last contribution with weight 1 and no later use is taken
                    # as is (Euler, midpoint): nothing is ever written into a sub-net's output
                    owned = not (b == 1 and keep[i] < 0 and i == self._last_b)
                    acc = k * b if owned else k
                else:
                    acc.add_(k, alpha=b)
            if keep[i] >= 0:
                K[i] = k
            del k
        if isinstance(h, float) and h == 1.0:
            return acc
        # in place only into the block's own accumulator, and by a tensor h only
        # where no graph needs acc (the gradient of h does)
        return acc.mul_(h) if owned and (isinstance(h, float) or not torch.is_grad_enabled()) else acc * h

    def _stage_input(self, s: torch.Tensor, h, terms) -> torch.Tensor:
        """``s + h * sum_j a_ij K_j`` with one temporary at most."""
        if self._fp32_combine and s.dtype in (torch.bfloat16, torch.float16):
            with torch.autocast(device_type=s.device.type, enabled=False):
                acc = sum(v * k.float() for v, k in terms)
                return (s.float() + h * acc).to(s.dtype)
        if len(terms) == 1:
            v, k = terms[0]
            return torch.add(s, k, alpha=h * v) if isinstance(h, float) else torch.addcmul(s, k, h * v)
        (v0, k0), *rest = terms
        acc = k0 * v0
        for v, k in rest:
            acc.add_(k, alpha=v)
        if isinstance(h, float):
            return (acc if h == 1.0 else acc.mul_(h)).add_(s)
        if not torch.is_grad_enabled():  # a learnable h at inference: no graph needs acc
            return acc.mul_(h).add_(s)
        return torch.addcmul(s, acc, h)

    def extra_repr(self) -> str:
        return f"tableau={self.tableau.name}, step={'learnable' if self.step is not None else self._fixed_step}"


class PaperBlock(_SchemeBlock):
    """The HO-ResNet papers' wiring of midpoint and RK4 (000/001 eqs. 6-9).

    midpoint: ``m = F1(x) + x``, ``out = F2(m/2) + x``.
    rk4: ``k1 = F1(x)+x``, ``k2 = F2(k1/2)+x``, ``k3 = F3(k2/2)+x``,
    ``k4 = F4(k3)+x``, ``out = x + (k1+2k2+2k3+k4)/6``.

    Unlike the canonical form, stage inputs are halved *states*, not
    ``x + h/2 * K``, and the rk4 output carries ``x`` twice (with every
    sub-net at zero it maps ``x`` to ``2x``, as the equations are printed).
    The step ``h`` scales every sub-network output (``F_i -> h F_i``); a
    ``shortcut`` replaces ``x`` where it is added, as in :class:`RKBlock`.
    """

    STAGES = {"midpoint": 2, "rk4": 4}

    def __init__(self, scheme: str, subnets: Sequence[nn.Module], step=1.0, drop_prob: float = 0.0,
                 shortcut: nn.Module | None = None):
        if scheme not in self.STAGES:
            raise ValueError(f"form 'paper' exists for {sorted(self.STAGES)}, not {scheme!r}")
        if len(subnets) != self.STAGES[scheme]:
            raise ValueError(f"paper-form {scheme} needs {self.STAGES[scheme]} sub-networks, got {len(subnets)}")
        super().__init__(subnets, step, drop_prob, shortcut)
        self.scheme = scheme

    def increment(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        s = x if s is None else s
        h = self.h()
        F = self.subnets
        if self.scheme == "midpoint":
            box = [_plus(s, h, self._first(x, s)).mul_(0.5)]      # m/2, m = F1(x) + x
            k = _consume(F[1], box)
            return k if isinstance(h, float) and h == 1.0 else k * h  # out - x
        acc = _plus(s, h, self._first(x, s))                      # k1
        box = [acc * 0.5]
        k = _plus(s, h, _consume(F[1], box))                      # k2
        acc.add_(k, alpha=2)
        box = [k.mul_(0.5)]
        del k
        k = _plus(s, h, _consume(F[2], box))                      # k3
        acc.add_(k, alpha=2)
        box = [k]
        del k
        acc.add_(_plus(s, h, _consume(F[3], box)))                # k4
        return acc.div_(6)                                        # out - x

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, form=paper"


class LMStage(nn.Module):
    """A stage of linear multi-step blocks (LM-ResNet, 002 §2, eq. 5).

    ``u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + h_n F_n(u_n)`` with a learnable
    scalar ``k_n`` per block, initialised from ``U[-0.1, 0]``, and the block's
    step ``h_n``. The first block is a plain Euler block ``u_1 = u_0 + h_0 F_0(u_0)``
    (``first``, carrying its own step) and its input serves as ``u_{n-1}`` for
    the second. When the first block changes shape (it opens a stage at a new
    width or resolution, as in 002's code), its shortcut of the input plays that
    role.

    ``steps``: one per block after the first, each a float in [0.125, 4] or its
    own :class:`LearnableStep` (one parameter per block, as every other scheme);
    a single float applies to all of them. 002 uses ``h = 1``.

    Stochastic depth (002 §3) drops only ``F_n(u_n)``; the LM combination is kept.
    """

    def __init__(self, first: nn.Module, subnets: Sequence[nn.Module], steps=1.0,
                 drop_probs: Sequence[float] | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.first = first
        self.subnets = nn.ModuleList(subnets)
        if isinstance(steps, LearnableStep):
            raise ValueError("an LM stage needs one learnable step per block, not one shared by the stage")
        if isinstance(steps, (int, float)):
            steps = [float(steps)] * len(subnets)
        if len(steps) != len(subnets):
            raise ValueError(f"one step per LM block is needed: {len(subnets)} blocks, got {len(steps)} steps")
        fixed_and_learnable = [_step_module(s) for s in steps]
        self.steps = nn.ModuleList(m for _, m in fixed_and_learnable if m is not None)
        # per block: its fixed step (a float), or the index of its LearnableStep in self.steps
        index = iter(range(len(self.steps)))
        self._h = [v if m is None else next(index) for v, m in fixed_and_learnable]
        self.k = nn.Parameter(torch.empty(len(subnets)))
        self.reset_parameters(generator)
        self.drop_probs = list(drop_probs) if drop_probs is not None else [0.0] * len(subnets)
        if len(self.drop_probs) != len(subnets):
            raise ValueError("one drop probability per LM block is needed")

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``k_n`` from ``U[-0.1, 0]`` (002 §4), drawn from ``generator`` (torch's global one
        when None); the sub-networks and steps are set on their own."""
        with torch.no_grad():
            self.k.uniform_(-0.1, 0.0, generator=generator)

    def h(self, n: int):
        """The step of LM block ``n`` (0-based, after the opening block)."""
        h = self._h[n]
        return h if isinstance(h, float) else self.steps[h]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.first, _SchemeBlock):
            prev = self.first.shortcut_of(x)
            u = self.first.forward_from(x, prev)
        else:
            prev, u = x, self.first(x)
        for n, f in enumerate(self.subnets):
            p = self.drop_probs[n]
            if p and self.training and dropped(p):
                update = None
            else:
                update = self.h(n) * f(u)
                if p and not self.training:
                    update = update * (1.0 - p)
            kn = self.k[n]
            nxt = (1 - kn) * u + kn * prev
            if update is not None:
                nxt = nxt + update
            prev, u = u, nxt
        return u
