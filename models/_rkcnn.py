"""RKCNN: Runge-Kutta convolutional networks (004, Zhu, Chang & Fu; 003, RKNet).

One *period* of an RKCNN is ``r`` time-steps (003's ``s x r`` naming; 004 uses
``r = 1``); one time-step is an *RK block* (004 §3.3, Algorithm 1, Table 1)::

    Phase I  (dense):  x_i = E_i(concat[y_n, x_1, ..., x_{i-1}])              (004 eq. 26)
    Phase II (own weights, 004 Rule 5):
        -E:  e_i = x_i                                                         (004 eq. 17)
        -I:  e_i = I_i(concat[y_n, e_1..e_{i-1}, x_{i+1}..x_s])                (004 eq. 28)
        -R:  e_i = I_i(concat[y_n, x_j for j != i])                            (004 eq. 27)
    y_{n+1} = y_n + sum_i e_i                                                  (004 eq. 7)

``y_n`` has ``k`` channels, the growth rate (004 Rule a / Rule 1), and every
``E_i`` / ``I_i`` is the bottleneck unit ``BN-ReLU-conv1x1(->w)-BN-ReLU-conv3x3(->k)``
with ``w = k`` (004 §4: "The 1x1 bottleneck layers, which output k channels to the
following 3x3 convolution layers"; §4.1: ``[1x1, k; 3x3, k]``; the authors' code
``--neck 1``). No conv has a bias.

The CIFAR macro network (004 §4.1.2, following CliqueNet, as in the authors'
code ZhuMai/RKCNN ``pytorch_models``):

* preprocessor: ``conv3x3(3 -> k1)``, no bias, no BN (the blocks are pre-activation);
* 3 periods; transitions ``BN-ReLU-conv1x1(k_d -> k_{d+1})`` (no bias; the output is
  the next period's growth rate, so ``y_0`` of every period already has ``k`` channels),
  then the attentional transition on the conv output: ``GAP -> Linear(c, c//2) -> ReLU
  -> Linear(c//2, c) -> sigmoid -> scale`` (both Linear layers with bias), then
  ``avgpool2``;
* multiscale postprocessor: ``BN-ReLU-GAP`` of every period's final state ``y_r``
  (``k_d`` channels each), concatenated, one ``Linear`` with bias.

This architecture reproduces every parameter count of 004 Table 3 (RKCNN rows),
Table 5 (CIFAR/SVHN) and, with the MNIST framework of 004 §4.1.1, Tables 2 and 4
to the printed precision; see :data:`PAPER_PARAM_ROWS` and ``tests/test_rkcnn.py``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

VARIANTS = ("e", "i", "r")

__all__ = [
    "VARIANTS", "PAPER_PARAM_ROWS", "BottleneckUnit", "RKCNNStep", "RKCNNPeriod",
    "ChannelAttention", "RKCNNTransition", "MultiscaleHead",
    "BN_EPS", "BN_MOMENTUM", "init_rkcnn_module", "init_rkcnn_weights", "norm",
]

# Published parameter counts (millions, as printed) of the CIFAR/SVHN RKCNNs of 004.
# Table 3 prints k column-wise; its garbled extraction "26 78 120 / 28 78 120 /
# 28 80 120" reads as the rows (k1, k2, k3) = (26, 28, 28), (78, 78, 80),
# (120, 120, 120) -- the only reading that reproduces 0.103 / 0.834 / 1.932.
# Every row uses attentional transitions and the multiscale postprocessor (004 §4).
PAPER_PARAM_ROWS: tuple[dict, ...] = (
    # 004 Table 3 (s = 2 in every period)
    dict(name="rkcnn-e-2_2_2", variant="e", growth=(120, 120, 120), stages=(2, 2, 2), cifar10="0.977", cifar100="1.009", source="004 Table 3"),
    dict(name="rkcnn-i-2_2_2-k26", variant="i", growth=(26, 28, 28), stages=(2, 2, 2), cifar10="0.103", cifar100="0.111", source="004 Table 3"),
    dict(name="rkcnn-i-2_2_2-k78", variant="i", growth=(78, 78, 80), stages=(2, 2, 2), cifar10="0.834", cifar100="0.855", source="004 Table 3"),
    dict(name="rkcnn-i-2_2_2", variant="i", growth=(120, 120, 120), stages=(2, 2, 2), cifar10="1.932", cifar100="1.964", source="004 Table 3"),
    dict(name="rkcnn-r-2_2_2-k26", variant="r", growth=(26, 28, 28), stages=(2, 2, 2), cifar10="0.103", cifar100="0.111", source="004 Table 3"),
    dict(name="rkcnn-r-2_2_2-k78", variant="r", growth=(78, 78, 80), stages=(2, 2, 2), cifar10="0.834", cifar100="0.855", source="004 Table 3"),
    dict(name="rkcnn-r-2_2_2", variant="r", growth=(120, 120, 120), stages=(2, 2, 2), cifar10="1.932", cifar100="1.964", source="004 Table 3"),
    # 004 Table 5
    dict(name="rkcnn-e-5_5_5-k80", variant="e", growth=(80, 80, 80), stages=(5, 5, 5), cifar10="1.19", cifar100="1.21", source="004 Table 5"),
    dict(name="rkcnn-e-5_5_5", variant="e", growth=(120, 120, 120), stages=(5, 5, 5), cifar10="2.67", cifar100="2.70", source="004 Table 5"),
    dict(name="rkcnn-i-5_5_5-k80", variant="i", growth=(80, 80, 80), stages=(5, 5, 5), cifar10="2.55", cifar100="2.57", source="004 Table 5"),
    dict(name="rkcnn-i-5_5_5", variant="i", growth=(120, 120, 120), stages=(5, 5, 5), cifar10="5.72", cifar100="5.75", source="004 Table 5"),
    dict(name="rkcnn-i-5_5_6", variant="i", growth=(150, 120, 120), stages=(5, 5, 6), cifar10="7.29", cifar100="7.32", source="004 Table 5"),
    dict(name="rkcnn-r-5_5_5-k80", variant="r", growth=(80, 80, 80), stages=(5, 5, 5), cifar10="2.55", cifar100="2.57", source="004 Table 5"),
    dict(name="rkcnn-r-5_5_5", variant="r", growth=(120, 120, 120), stages=(5, 5, 5), cifar10="5.72", cifar100="5.75", source="004 Table 5"),
    dict(name="rkcnn-r-3_4_4", variant="r", growth=(180, 180, 180), stages=(3, 4, 4), cifar10="8.76", cifar100="8.81", source="004 Table 5"),
)


# BatchNorm as the authors' code makes every one of an RKCNN (ZhuMai/RKCNN,
# pytorch_models/utils.py: ``nn.BatchNorm2d(dim, eps=0.001, momentum=0.01)``), not
# PyTorch's defaults (1e-5, 0.1): a slower running average (PyTorch's convention,
# new = (1 - momentum) * old + momentum * batch) and a larger variance floor.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def norm(channels: int) -> nn.BatchNorm2d:
    """An RKCNN BatchNorm: ``eps`` :data:`BN_EPS`, ``momentum`` :data:`BN_MOMENTUM` (the authors' code)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def init_rkcnn_module(m: nn.Module, generator: torch.Generator | None = None) -> bool:
    """The authors' initialisation (004 §4.1.2; ZhuMai/RKCNN) of one module's own tensors:
    He-normal (fan-in) convolutions, BN weight 1 / bias 0, Xavier-uniform Linear weights
    with zero bias; draws come from ``generator`` (torch's global one when None). True if
    ``m`` is a kind this sets."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="relu", generator=generator)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight, generator=generator)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    else:
        return False
    return True


def init_rkcnn_weights(module: nn.Module) -> None:
    """:func:`init_rkcnn_module` on every module of ``module`` (a period, transition or head
    made on its own). Meta tensors (builds that only count parameters) are left alone: their
    init costs most of such a build's time and has no values to set."""
    for m in module.modules():
        if not any(p.is_meta for p in m.parameters(recurse=False)):
            init_rkcnn_module(m)


def _check_variant(variant: str) -> str:
    v = str(variant).lower().removeprefix("rkcnn-").removeprefix("-")
    if v not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)} (RKCNN-E/-I/-R), got {variant!r}")
    return v


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


class BottleneckUnit(nn.Sequential):
    """``E_i`` / ``I_i`` of an RK block: ``BN-ReLU-conv1x1(c_in -> width)-BN-ReLU-conv3x3(width -> k)``,
    no bias (004 §4 "bottleneck ... outputs k channels"; §4.1 ``[1x1, k; 3x3, k]``).

    ``width = 0`` drops the bottleneck: ``BN-ReLU-conv3x3(c_in -> k)`` (003 Table 1
    RKNets without "B"; not used by any 004 row). ``dropout > 0`` adds dropout after
    each convolution, as the authors do on SVHN (004 §4.1.2, rate 0.2).
    """

    def __init__(self, in_channels: int, width: int, out_channels: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        c = in_channels
        if width:
            layers += [norm(c), nn.ReLU(), nn.Conv2d(c, width, 1, bias=False)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c = width
        layers += [norm(c), nn.ReLU(), nn.Conv2d(c, out_channels, 3, padding=1, bias=False)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class RKCNNStep(nn.Module):
    """One time-step (RK block) of an RKCNN: 004 §3.3, Algorithm 1, Table 1.

    ``phase1[i]`` is ``E_{i+1}`` (input ``(i+1)*k`` channels: ``y_n, x_1..x_i``);
    ``phase2[i]`` is ``I_{i+1}`` (input ``s*k`` channels: ``y_n`` and the other
    ``s-1`` stages; absent for -E). Phase II weights are not shared with Phase I
    (004 Rule 5), and ``y_n`` enters Phase II (004 Rule 4).
    """

    def __init__(self, growth: int, stages: int, variant: str = "e", bottleneck: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        k = _positive("growth", growth)
        s = _positive("stages", stages)
        self.variant = _check_variant(variant)
        self.growth, self.stages = k, s
        width = k if bottleneck is None else int(bottleneck)
        if width < 0:
            raise ValueError(f"bottleneck: expected a width >= 0 (0 = no bottleneck), got {bottleneck!r}")
        self.bottleneck = width
        self.phase1 = nn.ModuleList(BottleneckUnit((i + 1) * k, width, k, dropout) for i in range(s))
        # s = 1 with -I/-R (allowed by the authors' code, outside 004 Rule 2) gives e_1 = I_1(y_n).
        self.phase2 = (nn.ModuleList(BottleneckUnit(s * k, width, k, dropout) for _ in range(s))
                       if self.variant != "e" else None)

    def increments(self, y: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(xs, es)``: Phase I outputs ``x_1..x_s`` and increments ``e_1..e_s``."""
        xs: list[torch.Tensor] = []
        for unit in self.phase1:                       # Algorithm 1, lines 1-5
            xs.append(unit(torch.cat([y, *xs], 1) if xs else y))
        if self.phase2 is None:                        # -E: e_i = x_i (line 9)
            return xs, list(xs)
        es: list[torch.Tensor] = []
        cur = list(xs)                                 # -I replaces x_j by e_j as it goes (line 12)
        for i, unit in enumerate(self.phase2):
            src = cur if self.variant == "i" else xs   # -R: always the x_j (line 14)
            e = unit(torch.cat([y, *src[:i], *src[i + 1:]], 1))
            es.append(e)
            cur[i] = e
        return xs, es

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        _, es = self.increments(y)
        out = y
        for e in es:                                   # Algorithm 1, lines 19-24
            out = out + e
        return out

    def extra_repr(self) -> str:
        return f"variant={self.variant}, growth={self.growth}, stages={self.stages}, bottleneck={self.bottleneck}"


class RKCNNPeriod(nn.Module):
    """One RKCNN period: ``steps`` (r) time-steps of an ``stages``-stage (s) RK block,
    each step with its own weights (004 §3.2 "different time steps learn their own h";
    003 ``s x r``; the authors' code builds one block per step). State ``y`` has
    ``growth`` (k) channels throughout (004 §3.2: the dimension is consistent within a
    period).

    ``bottleneck``: width ``w`` of the 1x1 bottleneck; ``None`` = ``k`` (004; reproduces
    the papers' counts), ``0`` = none.

    ``in_channels != growth``: the papers never need this (preprocessor and
    transitions already output ``k``); here ``y_0 = conv1x1(BN-ReLU(x))`` (no bias),
    a project extension so a period can follow any stem. ``in_channels == growth``
    adds nothing.
    """

    def __init__(self, in_channels: int, growth: int, stages: int, steps: int = 1, variant: str = "e",
                 bottleneck: int | None = None, dropout: float = 0.0):
        super().__init__()
        _positive("in_channels", in_channels)
        _positive("steps", steps)
        self.in_channels, self.out_channels = in_channels, growth
        self.variant = _check_variant(variant)
        self.project = (nn.Identity() if in_channels == growth else
                        nn.Sequential(norm(in_channels), nn.ReLU(),
                                      nn.Conv2d(in_channels, growth, 1, bias=False)))
        self.steps = nn.ModuleList(RKCNNStep(growth, stages, variant, bottleneck, dropout) for _ in range(steps))
        init_rkcnn_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(x)
        for step in self.steps:
            y = step(y)
        return y


class ChannelAttention(nn.Module):
    """Attentional transition of CliqueNet as used by 003 §4.2 / 004 §4: ``GAP ->
    Linear(c, c//2) -> ReLU -> Linear(c//2, c) -> sigmoid``, scaling each channel.
    Both Linear layers have a bias (needed for 004 Table 3's counts)."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(1, channels // 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.pool(x).flatten(1)
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(w))))
        return x * w[:, :, None, None]


class RKCNNTransition(nn.Module):
    """Transition between periods (004 §4.1.2, CliqueNet's with 004's change):
    ``BN-ReLU-conv1x1(in -> out)`` with ``out`` = the next period's growth rate (no
    bias), then, if ``attention``, :class:`ChannelAttention` on the conv output
    (003 §4.2: "the filters are globally averaged after the convolution"), then
    ``avgpool2`` (``downsample=False`` skips the pooling; every paper row pools)."""

    def __init__(self, in_channels: int, out_channels: int, attention: bool = True,
                 downsample: bool = True, dropout: float = 0.0):
        super().__init__()
        self.bn = norm(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.attention = ChannelAttention(out_channels) if attention else nn.Identity()
        self.pool = nn.AvgPool2d(2) if downsample else nn.Identity()
        self.out_channels = out_channels
        init_rkcnn_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.attention(self.dropout(self.conv(self.relu(self.bn(x))))))


class MultiscaleHead(nn.Module):
    """Multiscale postprocessor (003 §4.2, 004 §4): ``BN-ReLU-GAP`` of each period's
    final state (CliqueNet's ``global_pool``), concatenated, one ``Linear`` with bias.
    ``forward(features)`` takes the list of final states, first period first.
    A single-entry list is the plain ``BN-ReLU-GAP-FC`` head."""

    def __init__(self, channels_per_period: Sequence[int], num_classes: int):
        super().__init__()
        self.channels = [int(c) for c in channels_per_period]
        if not self.channels:
            raise ValueError("channels_per_period: expected at least one period")
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in self.channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(sum(self.channels), num_classes)
        init_rkcnn_weights(self)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.norms):
            raise ValueError(f"expected {len(self.norms)} feature maps, got {len(features)}")
        pooled = [self.pool(torch.relu(bn(f))).flatten(1) for bn, f in zip(self.norms, features)]
        return self.fc(torch.cat(pooled, 1))
