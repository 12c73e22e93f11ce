"""The network a spec names is the network built, as the papers define it.

* A stage holds exactly ``blocks`` blocks of its scheme, also when it opens
  with a stride or a new width (the authors' HO-ResNet code strides the first
  sub-net of the stage's first block; 002's code opens an LM stage with an
  Euler block).
* Every block, nested or not, downsampling or not, is the identity (or its
  shortcut) when its leaf sub-nets output zero: a nested block's sub-nets are
  the increments ``B(y) - y`` of inner blocks (000 §3.5).
* Each family starts from its authors' initialisation.
"""
import copy

import pytest
import torch
from torch import nn

import models
from models import ArchSpec, StageSpec, StepSpec, presets
from models._rkcnn import RKCNNPeriod, RKCNNTransition
from models.blocks import (
    Increment,
    LMStage,
    PaperBlock,
    PreActSubnet,
    RKBlock,
    Shortcut,
)
from search_space import RandomTrial, sample_spec


def _depth(block) -> int:
    """Nesting depth of a built block; every sub-net must agree."""
    depths = {1 + _depth(f.block) if isinstance(f, Increment) else 0 for f in block.subnets}
    assert len(depths) == 1, depths
    return depths.pop()


def _scheme_blocks(stage_module: nn.Sequential, st: StageSpec) -> int:
    """Blocks of the stage's scheme (and form, and depth) found by walking the built
    stage; any other block in the stage fails. An RKCNN transition is a layer, not a block."""
    n = 0
    for m in stage_module:
        if isinstance(m, RKCNNTransition):
            continue
        if isinstance(m, LMStage):
            # 002: the first block of an LM stage is Euler (the downsampling one where the shape changes)
            assert st.scheme == "lm" and isinstance(m.first, RKBlock) and m.first.tableau.name == "euler"
            n += 1 + len(m.subnets)
        elif isinstance(m, RKBlock) and st.form == "butcher":
            assert (m.tableau.name, _depth(m)) == (st.scheme, st.depth), (m.tableau.name, st)
            n += 1
        elif isinstance(m, PaperBlock) and st.form == "paper":
            assert m.scheme == st.scheme, (m.scheme, st)
            n += 1
        else:
            raise AssertionError(f"stage {models.describe_stage(st)!r} holds a {type(m).__name__}")
    return n


def _check_stages(spec: ArchSpec) -> None:
    net = models.build(spec, device="meta")
    for i, (stage_module, st) in enumerate(zip(net.stages, spec.stages)):
        label = models.describe_stage(st)
        if st.is_rkcnn:
            (period,) = [m for m in stage_module if isinstance(m, RKCNNPeriod)]
            assert [(s.variant, s.stages) for s in period.steps] == [(st.scheme[-1], st.rk_stages)] * st.rk_steps
            assert f"s{st.rk_stages} r{st.rk_steps}" in label
            continue
        built = _scheme_blocks(stage_module, st)
        assert built == st.blocks, f"stages[{i}] {label!r}: {built} blocks of its scheme built"
        assert f" x{built}" in label


def _widths_by_hand(spec: ArchSpec) -> ArchSpec:
    """8 channels, doubled at each downsampling (no width solver needed to walk modules)."""
    w, widths = 8, []
    for s in spec.stages:
        w = w * 2 if s.downsample and not s.is_rkcnn else w
        widths.append(w)
    return spec.with_widths(widths)


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_stage_holds_its_blocks(name):
    _check_stages(presets.get(name))


@pytest.mark.parametrize("first", range(0, 500, 50))
def test_sampled_stages_hold_their_blocks(first):
    """500 sampled specs (in chunks of 50): every stage, downsampling ones
    included, holds exactly ``blocks`` blocks of its scheme, and its label says so."""
    for seed in range(first, first + 50):
        _check_stages(_widths_by_hand(sample_spec(RandomTrial(seed), seed=seed)))


@pytest.mark.parametrize("scheme, form, depth", [
    ("rk4", "butcher", 0), ("verner8", "butcher", 0), ("midpoint", "butcher", 2), ("rk4", "paper", 0),
    ("lm", "butcher", 0), ("euler", "butcher", 0)])
def test_downsampling_block_is_of_the_stage_scheme(scheme, form, depth):
    """"RK8 x1" after a stride-2 transition is one RK8 block whose first sub-net
    strides and whose shortcut subsamples and zero-pads (the HO-ResNet code)."""
    spec = ArchSpec(stages=(StageSpec("euler", 1, width=4),
                            StageSpec(scheme, 1 if scheme != "lm" else 2, form=form, depth=depth, width=8,
                                      downsample=True)), image_size=8)
    net = models.build(spec).eval()
    first = net.stages[1][0]
    first = first.first if isinstance(first, LMStage) else first
    assert isinstance(first.shortcut, Shortcut) and first.shortcut.proj is None
    leaf = first
    while not isinstance(leaf, PreActSubnet):
        leaf = leaf.subnets[0].block if isinstance(leaf.subnets[0], Increment) else leaf.subnets[0]
    assert leaf[2].stride == (2, 2) and (leaf[2].in_channels, leaf[2].out_channels) == (4, 8)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert _scheme_blocks(net.stages[1], spec.stages[1]) == spec.stages[1].blocks


def _zero_leaves(module: nn.Module) -> nn.Module:
    module = copy.deepcopy(module)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, PreActSubnet):
                m[-1].weight.zero_()
    return module


@pytest.mark.parametrize("downsample", [False, True])
@pytest.mark.parametrize("scheme, form, depth", [
    ("euler", "butcher", 0), ("midpoint", "butcher", 0), ("midpoint", "butcher", 1), ("midpoint", "butcher", 2),
    ("heun", "butcher", 2), ("kutta3", "butcher", 1), ("rk4", "butcher", 1), ("rk38", "butcher", 0),
    ("dopri5", "butcher", 0), ("verner8", "butcher", 0), ("midpoint", "paper", 0)])
@pytest.mark.parametrize("step", [StepSpec("fixed", 1.0), StepSpec("fixed", 2.5), StepSpec("learnable", 0.5)])
def test_block_is_identity_when_leaves_output_zero(scheme, form, depth, downsample, step):
    """With every leaf at zero a block maps x to x (to its shortcut when it changes
    shape), nested at any depth: nesting takes the inner block's increment as F."""
    spec = ArchSpec(stages=(StageSpec("euler", 1, width=4),
                            StageSpec(scheme, 2, form=form, depth=depth, step=step, width=8 if downsample else 4,
                                      downsample=downsample)), image_size=8)
    net = _zero_leaves(models.build(spec)).eval()
    x = torch.randn(2, 4, 8, 8)
    expect = Shortcut(4, 8, 2)(x) if downsample else x
    y = x
    with torch.no_grad():
        for block in net.stages[1]:
            y = block(y)
    torch.testing.assert_close(y, expect)


def test_paper_rk4_carries_x_twice_as_printed():
    """000/001 eq. 9 adds x to every k_i and once more: with zero leaves a paper-form
    RK4 block maps x to 2x. We keep the equations as printed."""
    net = _zero_leaves(models.build(presets.get("ho-rk4-paper-x1"))).eval()
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(net.stages[0][0](x), 2 * x)


def test_nested_preset_skip_path_gain_is_one():
    """Nest-Midpoint x8 once (000 Table 3) at init: with the leaves at zero the stage
    is the identity; taking whole inner blocks as F gave 2.5**4 = 39."""
    net = _zero_leaves(models.build(presets.get("ho-nest-midpoint-x8-once"))).eval()
    x = torch.randn(2, 64, 4, 4)
    y = x
    with torch.no_grad():
        for block in net.stages[0]:
            y = block(y)
    assert (y.norm() / x.norm()).item() == pytest.approx(1.0)


def _weights(net, kind, c_in=None, c_out=None, k=None):
    ws = [m.weight for m in net.modules() if isinstance(m, kind)
          and (c_in is None or (m.in_channels if kind is nn.Conv2d else m.in_features) == c_in)
          and (c_out is None or (m.out_channels if kind is nn.Conv2d else m.out_features) == c_out)
          and (k is None or m.kernel_size[0] == k)]
    assert ws
    return torch.cat([w.detach().flatten() for w in ws])


def test_rkcnn_keeps_its_fan_in_init():
    """004's code: He fan-in convolutions, Xavier Linear with zero bias. A 600->120
    1x1 conv (Phase II of RKCNN-I-5_5_5, s*k = 600 inputs) has std sqrt(2/600) =
    0.058, not the fan-out 0.129."""
    net = models.build(presets.get("rkcnn-i-5_5_5-k120"))
    assert _weights(net, nn.Conv2d, 600, 120, 1).std().item() == pytest.approx((2 / 600) ** 0.5, rel=0.02)
    fc = net.head.fc
    assert fc.weight.std().item() == pytest.approx((2 / (360 + 10)) ** 0.5, rel=0.1)
    assert torch.count_nonzero(fc.bias) == 0


def test_ho_resnet_keeps_its_authors_init():
    """The HO-ResNet code: kaiming_normal_ defaults (fan-in) on convs and the FC."""
    net = models.build(presets.get("ho-rk4-x7"))
    assert net.stem.weight.std().item() == pytest.approx((2 / 27) ** 0.5, rel=0.06)   # 3*3*3 inputs
    assert _weights(net, nn.Linear).std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.1)
    assert torch.count_nonzero(net.head.fc.bias) == 10                                 # PyTorch's bias init


def test_cifar_resnet_keeps_002_code_init():
    """002's code: convs N(0, 2/(k*k*c_out)) (fan-out), PyTorch's default FC."""
    net = models.build(presets.get("lm-resnet-56"))
    assert net.stem.weight.std().item() == pytest.approx((2 / (9 * 16)) ** 0.5, rel=0.06)
    stride2 = _weights(net, nn.Conv2d, 16, 32, 3)   # the strided first conv of stage 2: fan-out 9*32
    assert stride2.std().item() == pytest.approx((2 / (9 * 32)) ** 0.5, rel=0.06)
    bound = 1 / 64 ** 0.5                           # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    fc = net.head.fc.weight
    assert fc.abs().max().item() <= bound and fc.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.15)


@pytest.mark.parametrize("variant", ["e", "i", "r"])
def test_rkcnn_batchnorm_follows_its_authors_code(variant):
    """The authors' code makes every RKCNN BatchNorm with eps=0.001, momentum=0.01 (PyTorch's
    defaults are 1e-5 and 0.1): units, transitions and the multiscale head alike. One training
    step moves a running mean by 1% of the batch mean, not 10%."""
    periods = tuple(StageSpec(scheme=f"rkcnn-{variant}", width=8, rk_stages=2, downsample=i > 0) for i in range(3))
    spec = ArchSpec(stages=periods, stem_width=8, transition="conv-attention", head="multiscale", image_size=8)
    net = models.build(spec)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) > 10 and {(m.eps, m.momentum) for m in norms} == {(1e-3, 0.01)}
    head = net.head.norms[0]
    net.train()
    x = torch.randn(4, 3, 8, 8) + 3.0
    with torch.no_grad():
        features = net.stages[0][0](net.stem(x))        # what the head's first BatchNorm normalises
        net(x)
    torch.testing.assert_close(head.running_mean, 0.01 * features.mean((0, 2, 3)))
    # the other families keep PyTorch's defaults
    for name in ("ho-rk4-x1", "lm-resnet-20"):
        assert {(m.eps, m.momentum) for m in models.build(presets.get(name)).modules()
                if isinstance(m, nn.BatchNorm2d)} == {(1e-5, 0.1)}
