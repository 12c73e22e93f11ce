"""Tests of models/_rkcnn.py: the RKCNN period, transition and head (004 §3.3,
Algorithm 1, Table 1, §4.1) against the papers' parameter counts and semantics."""

import copy
from decimal import Decimal

import pytest
import torch
from torch import nn

import models
from models import ArchSpec, StageSpec
from models._rkcnn import PAPER_PARAM_ROWS, MultiscaleHead, RKCNNPeriod, RKCNNStep, RKCNNTransition


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def printed(count: int, text: str, unit: float) -> bool:
    """``count`` rounds (half-up) to the table's printed value ``text`` (in ``unit``)."""
    ref = Decimal(text)
    return (Decimal(count) / Decimal(unit)).quantize(ref) == ref


# --- the contract: 004 Tables 3 and 5 (CIFAR-10/SVHN and CIFAR-100) ------------------

@pytest.mark.parametrize("row", PAPER_PARAM_ROWS, ids=[r["name"] for r in PAPER_PARAM_ROWS])
@pytest.mark.parametrize("dataset,classes", [("cifar10", 10), ("cifar100", 100)])
def test_paper_parameter_counts(row, dataset, classes):
    """004's CIFAR network as a spec (attentional transitions, multiscale head), built by models.build."""
    periods = tuple(StageSpec(scheme=f"rkcnn-{row['variant']}", width=k, rk_stages=s, downsample=i > 0)
                    for i, (k, s) in enumerate(zip(row["growth"], row["stages"])))
    spec = ArchSpec(stages=periods, stem_width=row["growth"][0], transition="conv-attention", head="multiscale",
                    num_classes=classes)
    count = n_params(models.build(spec, device="meta"))
    assert printed(count, row[dataset], 1e6), (row["name"], dataset, count, row[dataset])


# --- 004 Tables 2 and 4 (MNIST): the period inside the RK-Net/ODE-Net framework -----
# 004 §4.1.1: one period; preprocessor [3x3,k; 4x4,k,/2; 4x4,k,/2] and postprocessor of
# Chen et al.'s torchdiffeq MNIST code (GroupNorm, biased convs, norm-ReLU-GAP-FC).

MNIST_ROWS = [  # (variant, k, printed, unit, source)
    ("e", 24, "31.45", 1e3, "Table 2"), ("e", 30, "48.85", 1e3, "Table 2"), ("e", 32, "55.50", 1e3, "Table 2"),
    ("i", 20, "31.01", 1e3, "Table 2"), ("i", 26, "52.01", 1e3, "Table 2"), ("i", 32, "78.41", 1e3, "Table 2"),
    ("r", 20, "31.01", 1e3, "Table 2"), ("r", 26, "52.01", 1e3, "Table 2"), ("r", 32, "78.41", 1e3, "Table 2"),
    ("e", 32, "0.06", 1e6, "Table 4"), ("i", 32, "0.08", 1e6, "Table 4"), ("r", 32, "0.08", 1e6, "Table 4"),
]


@pytest.mark.parametrize("variant,k,text,unit,source", MNIST_ROWS)
def test_mnist_parameter_counts(variant, k, text, unit, source):
    def gn(c):
        return nn.GroupNorm(min(32, c), c)
    with torch.device("meta"):
        net = nn.Sequential(
            nn.Conv2d(1, k, 3, 1), gn(k), nn.ReLU(),
            nn.Conv2d(k, k, 4, 2, 1), gn(k), nn.ReLU(),
            nn.Conv2d(k, k, 4, 2, 1),
            RKCNNPeriod(k, k, stages=2, steps=1, variant=variant),
            gn(k), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(k, 10),
        )
    assert printed(n_params(net), text, unit), (variant, k, source, n_params(net))


# --- structure ------------------------------------------------------------------------

def test_e_has_no_phase2_and_i_r_have_equal_counts():
    for k, s in [(8, 1), (12, 2), (10, 3), (16, 5)]:
        e, i, r = (RKCNNStep(k, s, v) for v in "eir")
        assert e.phase2 is None
        assert not any("phase2" in name for name, _ in e.named_parameters())
        assert n_params(i) == n_params(r)
        # Phase II adds s units with input s*k, bottleneck k (004 Table 1, §4.1)
        unit = 2 * s * k + s * k * k + 2 * k + 9 * k * k
        assert n_params(i) - n_params(e) == s * unit


def test_bottleneck_width_and_input_widths():
    k, s = 6, 3
    step = RKCNNStep(k, s, "r")
    for i, unit in enumerate(step.phase1):
        convs = [m for m in unit if isinstance(m, nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == \
            [((i + 1) * k, k, (1, 1)), (k, k, (3, 3))]
    for unit in step.phase2:
        convs = [m for m in unit if isinstance(m, nn.Conv2d)]
        assert convs[0].in_channels == s * k and convs[-1].out_channels == k
    assert all(m.bias is None for m in step.modules() if isinstance(m, nn.Conv2d))


def test_period_projection_and_steps():
    p = RKCNNPeriod(5, 8, stages=2, steps=3, variant="i")
    assert len(p.steps) == 3
    assert p(torch.randn(2, 5, 6, 6)).shape == (2, 8, 6, 6)
    assert isinstance(RKCNNPeriod(8, 8, 2).project, nn.Identity)
    with pytest.raises(ValueError, match="variant"):
        RKCNNPeriod(8, 8, 2, variant="x")


def test_transition_and_head_shapes():
    t = RKCNNTransition(8, 12, attention=True)
    assert t(torch.randn(2, 8, 8, 8)).shape == (2, 12, 4, 4)
    assert n_params(t) == 2 * 8 + 8 * 12 + (12 * 6 + 6) + (6 * 12 + 12)
    assert n_params(RKCNNTransition(8, 12, attention=False)) == 2 * 8 + 8 * 12
    h = MultiscaleHead([4, 6, 8], 10)
    out = h([torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 8, 2, 2)])
    assert out.shape == (2, 10)
    assert n_params(h) == 2 * 18 + 18 * 10 + 10


# --- semantics: Algorithm 1 -------------------------------------------------------------

def test_step_output_is_state_plus_increments():
    torch.manual_seed(0)
    for v in "eir":
        step = RKCNNStep(4, 3, v).eval()
        y = torch.randn(2, 4, 5, 5)
        xs, es = step.increments(y)
        assert len(xs) == len(es) == 3
        torch.testing.assert_close(step(y), y + es[0] + es[1] + es[2])
        if v == "e":
            assert all(e is x for e, x in zip(es, xs))


def _zero_last_conv(unit: nn.Sequential):
    conv = [m for m in unit if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        conv.weight.zero_()


def test_i_uses_updated_increments_r_does_not():
    """Zeroing I_1 changes e_1; e_2 follows it in -I (eq. 28) but not in -R (eq. 27)."""
    torch.manual_seed(0)
    y = torch.randn(2, 4, 6, 6)
    for v, e2_changes in [("i", True), ("r", False)]:
        step = RKCNNStep(4, 3, v)
        step.eval()
        xs, es = step.increments(y)
        zeroed = copy.deepcopy(step)
        _zero_last_conv(zeroed.phase2[0])
        xs2, es2 = zeroed.increments(y)
        for a, b in zip(xs, xs2):                      # Phase I untouched
            torch.testing.assert_close(a, b)
        assert torch.count_nonzero(es2[0]) == 0 and torch.count_nonzero(es[0]) > 0
        for j in (1, 2):
            changed = not torch.allclose(es[j], es2[j])
            assert changed == e2_changes, (v, j)


def test_forward_backward_small_network():
    torch.manual_seed(0)
    for v in "eir":
        periods = tuple(StageSpec(scheme=f"rkcnn-{v}", width=k, rk_stages=s, rk_steps=r, downsample=i > 0)
                        for i, (k, s, r) in enumerate(zip((8, 12, 16), (2, 3, 2), (1, 2, 1))))
        net = models.build(ArchSpec(stages=periods, stem_width=8, transition="conv-attention", head="multiscale"))
        net.train()
        out = net(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10)
        assert torch.isfinite(out).all()
        out.square().mean().backward()
        for name, p in net.named_parameters():
            assert p.grad is not None, (v, name)
            assert torch.isfinite(p.grad).all(), (v, name)
