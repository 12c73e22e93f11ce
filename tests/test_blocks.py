"""Paper forms, LM stages, nesting, steps and stochastic depth (000/001 §3, 002 §2-3)."""
import dataclasses

import pytest
import torch
from torch import nn

import models
from models import ArchSpec, StageSpec, StepSpec
from models.blocks import (
    LearnableStep,
    LMStage,
    PaperBlock,
    PreActSubnet,
    RKBlock,
    Shortcut,
)
from models.measure import count_params


class Affine(nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, y):
        return self.a * y + self.b


def test_paper_midpoint_by_hand():
    F1, F2 = Affine(2.0, 1.0), Affine(-1.0, 3.0)
    x = torch.tensor([0.7], dtype=torch.float64)
    m = F1(x) + x                       # 000 eq. 6
    expected = F2(m / 2) + x            # 000 eq. 7
    torch.testing.assert_close(PaperBlock("midpoint", [F1, F2])(x), expected)
    # ...which is not the canonical midpoint x + F2(x + F1(x)/2)
    assert not torch.allclose(RKBlock("midpoint", [F1, F2])(x), expected)


def test_paper_rk4_by_hand():
    F = [Affine(0.5, 0.1), Affine(-0.3, 0.2), Affine(0.8, -0.4), Affine(0.1, 0.9)]
    x = torch.tensor([1.3], dtype=torch.float64)
    k1 = F[0](x) + x
    k2 = F[1](k1 / 2) + x
    k3 = F[2](k2 / 2) + x
    k4 = F[3](k3) + x
    expected = x + (k1 + 2 * k2 + 2 * k3 + k4) / 6   # 000 eqs. 8-9: x is carried twice
    torch.testing.assert_close(PaperBlock("rk4", F)(x), expected)
    with pytest.raises(ValueError, match="form 'paper' exists for"):
        PaperBlock("euler", F[:1])


def test_downsampling_rk4_by_hand():
    """A block that opens a stage (the authors' HO-ResNet code): its first sub-net
    takes x and carries the stride; every later stage input and the output add
    the subsampled, zero-padded shortcut s of x where the scheme adds x."""
    F = [nn.Sequential(Shortcut(2, 4, 2), Affine(0.5, 0.1)),   # a sub-net that changes shape
         Affine(-0.3, 0.2), Affine(0.8, -0.4), Affine(0.1, 0.9)]
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    h = 0.5
    s = torch.cat([x[:, :, ::2, ::2], torch.zeros(1, 2, 2, 2, dtype=torch.float64)], 1)
    k1 = F[0](x)
    k2 = F[1](s + h / 2 * k1)
    k3 = F[2](s + h / 2 * k2)
    k4 = F[3](s + h * k3)
    expected = s + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
    torch.testing.assert_close(RKBlock("rk4", F, step=h, shortcut=Shortcut(2, 4, 2))(x), expected)
    m = F[0](x) + s                                              # paper midpoint: m = F1(x) + x, out = F2(m/2) + x
    torch.testing.assert_close(PaperBlock("midpoint", F[:2], shortcut=Shortcut(2, 4, 2))(x), F[1](m / 2) + s)


def test_lm_stage_recursion_by_hand():
    """u_{n+1} = (1-k_n) u_n + k_n u_{n-1} + F_n(u_n); first block Euler (002 eq. 5)."""
    F0, F1, F2 = Affine(0.5, 0.0), Affine(-0.2, 0.1), Affine(0.3, -0.1)
    first = RKBlock("euler", [F0])
    stage = LMStage(first, [F1, F2]).double()
    with torch.no_grad():
        stage.k.copy_(torch.tensor([-0.05, -0.08]))
    x = torch.tensor([0.9], dtype=torch.float64)
    u0, u1 = x, x + F0(x)
    u2 = (1 + 0.05) * u1 - 0.05 * u0 + F1(u1)
    u3 = (1 + 0.08) * u2 - 0.08 * u1 + F2(u2)
    torch.testing.assert_close(stage(x), u3)
    k = LMStage(first, [F1] * 200).k
    assert (k >= -0.1).all() and (k <= 0).all() and k.std() > 0.01   # U[-0.1, 0] init


def test_lm_stage_applies_its_step_to_every_block_one_learnable_h_per_block():
    """An LM stage's step reaches every block it labels, the opening Euler block included,
    and a learnable step is one parameter per block, as for every other scheme:
    a 6-block learnable LM stage has 6 step parameters (an RK4 x6 stage has 6 too)."""
    def stage_of(scheme, mode, value, blocks=6):
        spec = ArchSpec(stages=(StageSpec(scheme, blocks=blocks, step=StepSpec(mode, value), width=8),),
                        image_size=8)
        return models.build(spec).stages[0]

    def steps(module):
        return [p for p in module.parameters() if p.dim() == 0]

    assert len(steps(stage_of("lm", "learnable", 1.0))) == 6
    assert len(steps(stage_of("rk4", "learnable", 1.0))) == 6
    assert count_params(stage_of("lm", "learnable", 1.0)) == count_params(stage_of("lm", "fixed", 1.0)) + 6

    # forward = 002 eq. 5 with h per block: u1 = u0 + h0 F0(u0), u_{n+1} = (1-k_n) u_n + k_n u_{n-1} + h_n F_n(u_n)
    stage = stage_of("lm", "learnable", 1.0, blocks=3).double().eval()
    lm = stage[0]
    hs = [0.7, 1.9, 0.3]
    with torch.no_grad():
        for p, h in zip([lm.first.step.h, *(m.h for m in lm.steps)], hs):
            p.fill_(h)
        lm.k.copy_(torch.tensor([-0.05, -0.08]))
    F = [lm.first.subnets[0], *lm.subnets]
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        u0 = x
        u1 = u0 + hs[0] * F[0](u0)
        u2 = 1.05 * u1 - 0.05 * u0 + hs[1] * F[1](u1)
        u3 = 1.08 * u2 - 0.08 * u1 + hs[2] * F[2](u2)
        torch.testing.assert_close(stage(x), u3)

    # a fixed step reaches the opening block too: h = 2 is not the h = 1 network
    fixed = stage_of("lm", "fixed", 2.0)
    assert fixed[0].first.h() == 2.0 and [fixed[0].h(n) for n in range(5)] == [2.0] * 5
    with pytest.raises(ValueError, match="one learnable step per block"):
        LMStage(RKBlock("euler", [Affine(1.0, 0.0)]), [Affine(1.0, 0.0)] * 2, LearnableStep(1.0))


def _leaves(net):
    return sum(isinstance(m, PreActSubnet) for m in net.modules())


def test_nesting_keeps_leaves_and_params():
    """Midpoint x4 (8 leaves) == Nest-Midpoint x4 once (2 blocks of depth 1) == twice (1 of depth 2)."""
    flat = ArchSpec(stages=(StageSpec("midpoint", blocks=4, width=16),))
    once = ArchSpec(stages=(StageSpec("midpoint", blocks=2, depth=1, width=16),))
    twice = ArchSpec(stages=(StageSpec("midpoint", blocks=1, depth=2, width=16),))
    nets = [models.build(s) for s in (flat, once, twice)]
    assert [_leaves(n) for n in nets] == [8, 8, 8]
    assert len({count_params(n) for n in nets}) == 1
    x = torch.randn(2, 3, 8, 8)
    outs = [n.eval()(x) for n in nets]
    assert not torch.allclose(outs[0], outs[1])  # same weights budget, different wiring


def test_learnable_step_is_h_itself_and_one_parameter_per_block():
    """001 §3.6: the adaptive step "did not follow the constraint" [0.125, 4]."""
    step = LearnableStep(1.0)
    (h,) = step.parameters()
    assert h.dim() == 0 and h.item() == 1.0 and step() is h
    block = RKBlock("euler", [Affine(1.0, 0.0)], step=step)
    with torch.no_grad():
        h.fill_(10.0)                   # outside [0.125, 4]: not squashed back
    x = torch.ones(3)
    torch.testing.assert_close(block(x), x + 10.0 * x)
    fixed = ArchSpec(stages=(StageSpec("verner8", blocks=2, width=8),))
    adaptive = dataclasses.replace(fixed, stages=(dataclasses.replace(fixed.stages[0], step=StepSpec("learnable", 2.0)),))
    net = models.build(adaptive)
    assert count_params(net) == count_params(models.build(fixed)) + 2
    assert [p.item() for n, p in net.named_parameters() if p.dim() == 0] == [2.0, 2.0]  # init at the spec's value


def test_weight_decay_alone_moves_h_toward_zero():
    """000 §4.6 saw a learnable factor decay toward 0 under weight decay: with no
    loss gradient, SGD's decay must shrink h itself, step after step."""
    block = RKBlock("midpoint", [Affine(0.5, 0.0), Affine(0.5, 0.0)], step=LearnableStep(1.0))
    opt = torch.optim.SGD(block.parameters(), lr=0.1, weight_decay=0.1)
    hs = [block.h().item()]
    for _ in range(50):
        opt.zero_grad()
        (0.0 * block(torch.ones(2)).sum()).backward()   # zero loss gradient: only the decay acts
        opt.step()
        hs.append(block.h().item())
    assert all(b < a for a, b in zip(hs, hs[1:]))
    assert hs[-1] == pytest.approx(0.99 ** 50)       # h <- h (1 - lr * wd): decay acts on h, not a reparametrisation


def test_fixed_step_out_of_bounds():
    with pytest.raises(ValueError, match=r"step must lie in \[0.125, 4.0\]"):
        RKBlock("euler", [nn.Identity()], step=5.0)


def test_stochastic_depth_drops_in_training_and_scales_at_eval():
    f = Affine(1.0, 1.0)
    block = RKBlock("euler", [f], drop_prob=0.5)
    x = torch.zeros(4)
    block.eval()
    torch.testing.assert_close(block(x), x + 0.5 * f(x))
    block.train()
    torch.manual_seed(0)
    outs = {tuple(block(x).tolist()) for _ in range(50)}
    assert outs == {tuple(x.tolist()), tuple((x + f(x)).tolist())}


def test_stochastic_depth_linear_decay():
    """Block l of L drops with (l/L)(1 - p_L) (002 §3), counted over the network."""
    spec = models.presets.get("lm-resnet-56-sd")
    net = models.build(spec)
    probs = [p for st in net.stages for m in st for p in getattr(m, "drop_probs", [])]
    firsts = [m.first.drop_prob for st in net.stages for m in st
              if isinstance(m, LMStage) and isinstance(m.first, RKBlock)]
    L = 27
    # every stage's opening Euler block counts, the downsampling ones too (002's code drops them)
    assert firsts == [pytest.approx(l / L * 0.2) for l in (1, 10, 19)]
    assert probs[-1] == pytest.approx(0.2)  # last block: 1 - p_L with p_L = 0.8


def test_lm_keeps_combination_when_f_dropped():
    F = Affine(0.0, 1.0)
    stage = LMStage(RKBlock("euler", [Affine(0.0, 0.0)]), [F], drop_probs=[0.999999])
    with torch.no_grad():
        stage.k.fill_(-0.1)
    stage.train()
    x = torch.ones(1)
    torch.manual_seed(0)
    # F dropped: u2 = (1-k) u1 + k u0 with u1 = u0 = x, so exactly x
    torch.testing.assert_close(stage(x), x)
