"""Networks: ``build(spec)`` assembles stem, stages, transitions and head (SPEC §2).

Three macro families come out of one builder:

* HO-ResNet (000/001 §4.1): ``conv3x3(3->64)``, one stage of scheme blocks at
  64 channels and 32x32, ``BN-ReLU-GAP-FC``;
* CIFAR pre-act ResNet / LM-ResNet (002): three stages of 16/32/64 channels,
  the first block of stages 2-3 a stride-2 pre-act block with a 1x1 projection;
* RKCNN (004 §4.1.2): ``conv3x3(3->k1)``, periods joined by
  ``BN-ReLU-conv1x1-[attention]-avgpool2`` transitions, multiscale head.
"""
from __future__ import annotations

import torch
from torch import nn

from ._rkcnn import MultiscaleHead, RKCNNPeriod, RKCNNTransition
from .blocks import DownsampleBlock, LearnableStep, LMStage, PaperBlock, PreActSubnet, RKBlock, conv3x3
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
            # while its later blocks run (inference memory, SPEC §4)
            for block in stage:
                y = block(y)
            if self._multiscale:
                finals.append(y)
        return self.head(finals if self._multiscale else [y])


def _step(stage: StageSpec):
    return LearnableStep(stage.step.value) if stage.step.mode == "learnable" else stage.step.value


def _rk_block(stage: StageSpec, width: int, depth: int, drop_prob: float = 0.0) -> nn.Module:
    """One block of a tableau scheme; nested blocks (000 §3.5) use blocks of
    depth ``d-1`` as their sub-networks, each with its own step."""
    s = TABLEAUX[stage.scheme].stages
    if depth == 0:
        subnets = [PreActSubnet(width) for _ in range(s)]
    else:
        subnets = [_rk_block(stage, width, depth - 1) for _ in range(s)]
    if stage.form == "paper":
        return PaperBlock(stage.scheme, subnets, _step(stage), drop_prob)
    return RKBlock(stage.scheme, subnets, _step(stage), drop_prob)


def _drop_probs(spec: ArchSpec) -> list[list[float]]:
    """Stochastic depth (002 §3): block ``l`` of ``L`` (counted over the whole
    network) drops with probability ``(l/L)(1 - p_L)`` where its stage asks."""
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


def _transition(spec: ArchSpec, c_in: int, stage: StageSpec, needed: bool) -> nn.Module | None:
    if not needed:
        return None
    stride = 2 if stage.downsample else 1
    if spec.transition == "resblock":
        return DownsampleBlock(c_in, stage.width, stride)
    return RKCNNTransition(c_in, stage.width, attention=spec.transition == "conv-attention",
                           downsample=stage.downsample)


def _stage(spec: ArchSpec, stage: StageSpec, c_in: int, drop: list[float]) -> nn.Module:
    c = stage.width
    trans = _transition(spec, c_in, stage, stage.downsample or c_in != c)
    opens = isinstance(trans, DownsampleBlock)  # the pre-act block counts as the stage's first block
    if stage.is_rkcnn:
        period = RKCNNPeriod(c, c, stage.rk_stages, stage.rk_steps, variant=stage.scheme[-1])
        return nn.Sequential(*(m for m in (trans, period) if m is not None))
    if stage.scheme == "lm":
        first = trans if opens else RKBlock("euler", [PreActSubnet(c)], 1.0, drop[0])
        lm = LMStage(first, [PreActSubnet(c) for _ in range(stage.blocks - 1)], _step(stage), drop[1:])
        return nn.Sequential(*(m for m in (None if opens else trans, lm) if m is not None))
    blocks = [_rk_block(stage, c, stage.depth, p) for p in drop[1 if opens else 0:]]
    return nn.Sequential(*(m for m in (trans, *blocks) if m is not None))


def _init_weights(module: nn.Module) -> None:
    """He-normal convolutions (000 §4.1 cites He et al. 2015), BN at (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build(spec: ArchSpec | str, device: torch.device | str | None = None) -> Network:
    """Build the network a spec describes (SPEC §2). The same spec always gives
    the same weights: construction runs under ``torch.manual_seed(spec.seed)``
    with the global RNG state restored afterwards.

    ``spec`` may be an :class:`ArchSpec` or its JSON; every stage needs a width
    (see :func:`search_space.solve_widths`). ``device="meta"`` builds without
    memory, for counting parameters.
    """
    if isinstance(spec, str):
        spec = ArchSpec.from_json(spec)
    spec.validate(require_widths=True)
    drops = _drop_probs(spec)
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(spec.seed)
        stem_width = spec.stem_width or spec.stages[0].width
        stem = conv3x3(spec.in_channels, stem_width)
        stages, c_in = [], stem_width
        for stage, drop in zip(spec.stages, drops):
            stages.append(_stage(spec, stage, c_in, drop))
            c_in = stage.width
        channels = [s.width for s in spec.stages] if spec.head == "multiscale" else [spec.stages[-1].width]
        head = MultiscaleHead(channels, spec.num_classes)
        net = Network(spec, stem, stages, head)
        if torch.device(device or "cpu").type != "meta":  # meta builds only count; init costs most of their time
            _init_weights(net)
    return net


_NAMES = {"euler": "Euler", "midpoint": "Midpoint", "rk4": "RK4", "verner8": "RK8", "lm": "LM",
          "heun": "Heun", "ralston": "Ralston", "kutta3": "Kutta3", "ssprk3": "SSPRK3", "rk38": "RK3/8",
          "dopri5": "DOPRI5"}


def describe_stage(stage: StageSpec) -> str:
    """A stage in the papers' naming: ``RK4 x7 / 64ch``, ``Nest-Midpoint x4 once``,
    ``RK8 x2 Adaptive``, ``RKCNN-I s2 r1 / k120``."""
    width = f" / {stage.width}ch" if stage.width else ""
    if stage.is_rkcnn:
        k = f" / k{stage.width}" if stage.width else ""
        return f"RKCNN-{stage.scheme[-1].upper()} s{stage.rk_stages} r{stage.rk_steps}{k}"
    name = _NAMES.get(stage.scheme, stage.scheme)
    if stage.form == "paper":
        name += "(paper)"
    if stage.depth:
        name = "Nest-" + name
    text = f"{name} x{stage.blocks}"
    if stage.depth:
        text += " " + {1: "once", 2: "twice"}.get(stage.depth, f"{stage.depth} times")
    if stage.step.mode == "learnable":
        text += " Adaptive"
    elif stage.step.value != 1.0:
        text += f" F={stage.step.value:g}"
    if stage.stochastic_depth:
        text += " SD"
    return text + width


def describe(spec: ArchSpec) -> str:
    """The whole architecture in the papers' naming, stages joined by `` | ``."""
    return " | ".join(describe_stage(s) for s in spec.stages)


def stage_summaries(spec: ArchSpec) -> list[dict]:
    """One dict per stage for reports: scheme, form, blocks, depth, step, width,
    leaf sub-nets per block, downsample."""
    out = []
    for s in spec.stages:
        leaves = 1 if s.scheme == "lm" or s.is_rkcnn else TABLEAUX[s.scheme].stages ** (s.depth + 1)
        d = dict(name=describe_stage(s), scheme=s.scheme, form=s.form, blocks=s.blocks, depth=s.depth,
                 step=dict(mode=s.step.mode, value=s.step.value), width=s.width,
                 subnets_per_block=leaves, stochastic_depth=s.stochastic_depth, downsample=s.downsample)
        if s.is_rkcnn:
            d.update(rk_stages=s.rk_stages, rk_steps=s.rk_steps)
        out.append(d)
    return out


__all__ = ["Network", "build", "describe", "describe_stage", "stage_summaries", "SpecError"]
