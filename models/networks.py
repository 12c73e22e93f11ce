"""Networks: ``build(spec)`` assembles stem, stages, transitions and head (000/001 §4.1,
002 §4, 004 §4.1.2).

Three macro families come out of one builder:

* HO-ResNet (000/001 §4.1): ``conv3x3(3->64)``, one stage of scheme blocks at
  64 channels and 32x32, ``BN-ReLU-GAP-FC``;
* CIFAR pre-act ResNet / LM-ResNet (002): three stages of 16/32/64 channels;
  the first block of stages 2-3 has a stride-2 first sub-net and adds the
  subsampled, zero-padded shortcut of its input (no 1x1 projection);
* RKCNN (004 §4.1.2): ``conv3x3(3->k1)``, periods joined by
  ``BN-ReLU-conv1x1-[attention]-avgpool2`` transitions, multiscale head.

A stage's ``blocks`` counts blocks of its scheme. Where a stage changes width
or resolution after a ``"resblock"`` transition, its first block does it and is
still a block of the stage's scheme (see :mod:`models.blocks`): we follow the
authors' HO-ResNet code, whose every block class opens a stage with its first
sub-net strided and its stage inputs built on the zero-padded shortcut, rather
than inserting an uncounted Euler block, so that a stage named "RK8 x1" runs one
RK8 block and the sub-net count of the stage is its scheme's. For Euler this is
the usual downsampling residual block; an LM stage opens with that Euler block,
counted as its first block, as 002's code does.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._rkcnn import BN_EPS, BN_MOMENTUM, MultiscaleHead, RKCNNPeriod, RKCNNTransition, init_rkcnn_module
from .blocks import (
    Increment,
    LearnableStep,
    LMStage,
    PaperBlock,
    PreActSubnet,
    RKBlock,
    Shortcut,
    conv3x3,
)
from .naming import describe, describe_stage, scheme_name, stage_summaries
from .schemes import TABLEAUX
from .spec import ArchSpec, SpecError, StageSpec


class Network(nn.Module):
    """Stem, stages (each optionally opened by its transition) and head.

    The head sees the final state of every stage (the multiscale head of 004
    uses them all; ``gap-fc`` uses the last). ``self.spec`` is the spec the
    network was built from.
    """

    def __init__(self, spec: ArchSpec, stem: nn.Module, stages: list[nn.Module], head: MultiscaleHead):
        super().__init__()
        self.spec = spec
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        self._multiscale = len(head.channels) > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        finals = []
        for stage in self.stages:
            # block by block, so that no frame keeps a stage's input alive
            # while its later blocks run (inference memory)
            for block in stage:
                y = block(y)
            if self._multiscale:
                finals.append(y)
        return self.head(finals if self._multiscale else [y])


def _step(stage: StageSpec):
    return LearnableStep(stage.step.value) if stage.step.mode == "learnable" else stage.step.value


def _rk_block(stage: StageSpec, c_in: int, c: int, depth: int, drop_prob: float = 0.0, stride: int = 1,
              outer: bool = True) -> nn.Module:
    """One block of a tableau scheme. A nested block (000 §3.5) of depth ``d``
    uses as sub-networks the increments ``B(y) - y`` of blocks ``B`` of depth
    ``d-1``, each with its own step. A block that changes shape (``stride``,
    ``c_in != c``) strides its first sub-net (recursively, down to the first
    leaf) and adds the :class:`Shortcut` of its input; inner blocks take the
    outer block's shortcut."""
    s = TABLEAUX[stage.scheme].stages
    if depth == 0:
        subnets = [PreActSubnet(c_in, c, stride)] + [PreActSubnet(c) for _ in range(s - 1)]
    else:
        subnets = ([Increment(_rk_block(stage, c_in, c, depth - 1, stride=stride, outer=False))]
                   + [Increment(_rk_block(stage, c, c, depth - 1, outer=False)) for _ in range(s - 1)])
    shortcut = Shortcut(c_in, c, stride) if outer and (stride != 1 or c_in != c) else None
    if stage.form == "paper":
        return PaperBlock(stage.scheme, subnets, _step(stage), drop_prob, shortcut)
    return RKBlock(stage.scheme, subnets, _step(stage), drop_prob, shortcut)


def _euler_block(c_in: int, c: int, stride: int, drop_prob: float = 0.0, step=1.0) -> RKBlock:
    """A pre-activation Euler block ``s + h F(x)``, opening a stage if the shape changes."""
    shortcut = Shortcut(c_in, c, stride) if stride != 1 or c_in != c else None
    return RKBlock("euler", [PreActSubnet(c_in, c, stride)], step, drop_prob, shortcut)


def _drop_probs(spec: ArchSpec) -> list[list[float]]:
    """Stochastic depth (002 §3): block ``l`` of ``L`` (counted over the whole
    network, a stage's opening block included) drops with probability
    ``(l/L)(1 - p_L)`` where its stage asks."""
    counts = [1 if s.is_rkcnn else s.blocks for s in spec.stages]
    L = sum(counts)
    out, l = [], 0
    for s, n in zip(spec.stages, counts):
        probs = []
        for _ in range(n):
            l += 1
            probs.append((l / L) * (1 - spec.survival_last) if s.stochastic_depth else 0.0)
        out.append(probs)
    return out


def _stage(spec: ArchSpec, stage: StageSpec, c_in: int, drop: list[float]) -> nn.Module:
    c = stage.width
    stride = 2 if stage.downsample else 1
    trans = None
    if spec.transition != "resblock" and (stride != 1 or c_in != c):
        # RKCNN's transition (004 §4.1.2) is a layer of its own between periods
        trans = RKCNNTransition(c_in, c, attention=spec.transition == "conv-attention",
                                downsample=stage.downsample, dropout=spec.dropout)
        c_in, stride = c, 1
    if stage.is_rkcnn:
        if stride != 1 or c_in != c:
            # a "resblock" transition before a period: a pre-act Euler block, not
            # counted (an RKCNN stage is one period of s stages, r steps)
            trans = _euler_block(c_in, c, stride)
        period = RKCNNPeriod(c, c, stage.rk_stages, stage.rk_steps, variant=stage.scheme[-1], dropout=spec.dropout)
        return nn.Sequential(*(m for m in (trans, period) if m is not None))
    if stage.scheme == "lm":
        # 002's code: the stage's first block is Euler (the downsampling block
        # where the shape changes) and counts as the stage's first LM block; like
        # every block of the stage it runs the stage's step, learnable ones each their own
        lm = LMStage(_euler_block(c_in, c, stride, drop[0], _step(stage)),
                     [PreActSubnet(c) for _ in range(stage.blocks - 1)],
                     [_step(stage) for _ in range(stage.blocks - 1)], drop[1:])
        return nn.Sequential(*(m for m in (trans, lm) if m is not None))
    blocks = [_rk_block(stage, c_in if i == 0 else c, c, stage.depth, p, stride if i == 0 else 1)
              for i, p in enumerate(drop)]
    return nn.Sequential(*(m for m in (trans, *blocks) if m is not None))


def family(spec: ArchSpec) -> str:
    """The paper family a spec's network belongs to, which decides its
    initialisation: ``"rkcnn"`` (RKCNN periods or RKCNN transitions, 004),
    ``"ho-resnet"`` (scheme blocks at one resolution, 000/001 §4.1) or
    ``"cifar-resnet"`` (scheme blocks over downsampling stages, 002)."""
    if spec.transition != "resblock" or any(s.is_rkcnn for s in spec.stages):
        return "rkcnn"
    return "cifar-resnet" if any(s.downsample for s in spec.stages) else "ho-resnet"


# -- initialisation, every draw from one private generator --------------------------------
# Each family keeps its authors' code's initialisation (see build). The draws come from a
# torch.Generator seeded with the spec's seed, never from torch's global generator: a worker
# builds and measures the next trial in a thread while the current one trains, and a build
# that seeded (or merely forked and restored) the global generator changed the training
# thread's random numbers (its stochastic-depth draws, its AutoAugment policies).

def _default_linear(m: nn.Linear, gen: torch.Generator) -> None:
    """PyTorch's own ``nn.Linear`` initialisation, drawn from ``gen``."""
    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
    if m.bias is not None:
        bound = 1 / math.sqrt(m.in_features) if m.in_features > 0 else 0.0
        nn.init.uniform_(m.bias, -bound, bound, generator=gen)


def _init_ho_resnet(m: nn.Module, gen: torch.Generator) -> bool:
    """The HO-ResNet authors' code: ``kaiming_normal_`` with its defaults (fan-in, gain
    sqrt(2)) on every convolution *and* Linear weight; a Linear bias as PyTorch makes it."""
    if isinstance(m, nn.Linear):
        _default_linear(m, gen)
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, generator=gen)
        return True
    return False


def _init_cifar_resnet(m: nn.Module, gen: torch.Generator) -> bool:
    """002's code (LM-ResNet): convolutions ``N(0, 2/n)`` with ``n = k*k*c_out`` (He,
    fan-out), Linear layers as PyTorch makes them."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
        return True
    if isinstance(m, nn.Linear):
        _default_linear(m, gen)
        return True
    return False


_INIT = {"ho-resnet": _init_ho_resnet, "cifar-resnet": _init_cifar_resnet, "rkcnn": init_rkcnn_module}


def _initialise(net: nn.Module, fam: str, gen: torch.Generator) -> None:
    """Set every parameter and buffer of a network materialised with ``to_empty``: the
    family's convolutions and Linear layers, BatchNorm at (1, 0) with fresh running
    statistics, steps at their initial value, LM's ``k_n``. A module holding tensors that
    nothing here knows how to set is an error, not garbage weights."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()              # (1, 0) and fresh running statistics; draws nothing
        elif isinstance(m, (LearnableStep, LMStage)):
            m.reset_parameters(generator=gen)
        elif _INIT[fam](m, gen):
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)        # no paper conv has a bias; a zero one changes nothing
        elif next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None:
            raise TypeError(f"models.build: no initialisation for {type(m).__name__}")
# BatchNorm (eps, momentum) per family, from its authors' code: RKCNN's sets both on every
# BatchNorm; the HO-ResNet and 002 families keep PyTorch's defaults (1e-5, 0.1)
_BATCHNORM = {"rkcnn": (BN_EPS, BN_MOMENTUM)}


def build(spec: ArchSpec | str, device: torch.device | str | None = None) -> Network:
    """Build the network a spec describes (000/001 §4.1, 002 §4, 004 §4.1.2).
    The same spec always gives the same weights: they are drawn from a private
    generator seeded with ``spec.seed``, and torch's global generator is neither
    read nor reseeded, so a build in one thread leaves another thread's random
    numbers alone.

    Initialisation: each family keeps the one of its authors' code, since the
    papers' results were obtained with it (:func:`family` says which applies):

    * ``ho-resnet`` (000/001 cite He et al. 2015): the HO-ResNet code's
      ``kaiming_normal_`` defaults, He fan-in on convolutions and on the FC;
    * ``cifar-resnet`` (002 §4 cites He et al. 2015): 002's code, He fan-out
      on convolutions, PyTorch's default FC; LM's ``k_n`` from ``U[-0.1, 0]``;
    * ``rkcnn`` (004 §4.1.2): He fan-in convolutions, Xavier-uniform Linear
      layers with zero bias (:func:`models._rkcnn.init_rkcnn_module`), and
      every BatchNorm with the authors' ``eps=0.001, momentum=0.01``.

    The two He variants agree on every 3x3 conv between equal widths; they
    differ on the stem, on convolutions that change width (a 600->120 1x1 conv
    of an RKCNN gets std 0.058 fan-in, 0.129 fan-out) and on the FC.

    ``spec`` may be an :class:`ArchSpec` or its JSON; every stage needs a width
    (see :func:`search_space.solve_widths`). ``device="meta"`` builds without
    memory and draws nothing, for counting parameters and measuring.
    """
    if isinstance(spec, str):
        spec = ArchSpec.from_json(spec)
    spec.validate(require_widths=True)
    drops = _drop_probs(spec)
    with torch.device("meta"):      # shapes first; the values are set below, from one generator
        stem_width = spec.stem_width or spec.stages[0].width
        stem = conv3x3(spec.in_channels, stem_width)
        stages, c_in = [], stem_width
        for stage, drop in zip(spec.stages, drops):
            stages.append(_stage(spec, stage, c_in, drop))
            c_in = stage.width
        channels = [s.width for s in spec.stages] if spec.head == "multiscale" else [spec.stages[-1].width]
        head = MultiscaleHead(channels, spec.num_classes)
        net = Network(spec, stem, stages, head)
        fam = family(spec)
        if fam in _BATCHNORM:     # the whole network, its head and any pre-act block included
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eps, m.momentum = _BATCHNORM[fam]
    target = torch.device(device or "cpu")
    if target.type == "meta":
        return net
    net = net.to_empty(device="cpu")     # drawn on the CPU: the same weights whatever the device
    _initialise(net, fam, torch.Generator().manual_seed(spec.seed))
    return net if target.type == "cpu" else net.to(target)


__all__ = ["Network", "build", "describe", "describe_stage", "family", "scheme_name", "stage_summaries", "SpecError"]
