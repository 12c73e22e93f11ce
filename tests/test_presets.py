"""Every registered preset builds, trains one step and matches its paper row.

Parametrised from the registry (``models.presets.names()``): a new preset is
tested by registering it, and no hand-written list can drift from it.
"""
import dataclasses
import io
import re
from contextlib import redirect_stdout
from decimal import Decimal

import pytest
import torch

import models
import search
from models import ArchSpec, presets
from models.blocks import PreActSubnet
from models.measure import count_params
from search_space.sampling import why_not_in_space

ALL = presets.names()


def paper_count(net, convention: str) -> int:
    if convention == "all":
        return count_params(net)
    # "no-bn": convolution and FC parameters only (what 000/001 print)
    return sum(p.numel() for m in net.modules() if not isinstance(m, torch.nn.BatchNorm2d)
               for p in m.parameters(recurse=False))


def printed_matches(count: int, printed: str) -> bool:
    """``count`` rounds to the printed value at its printed precision ("1.03M")."""
    text = printed.split("+")[0].rstrip("M")
    q = Decimal(text)
    exponent = q.as_tuple().exponent
    return (Decimal(count) / Decimal(10 ** 6)).quantize(Decimal(1).scaleb(exponent)) == q


def test_registry_names():
    assert len(ALL) >= 60
    for name in ALL:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name), name
    for required in ("ho-rk4-x7", "ho-verner8-adaptive-x2", "lm-resnet-56", "rkcnn-i-2_2_2-k120",
                     "resnet-110", "ho-nest-midpoint-x8-twice", "ho-verner8-x1-f2.5", "rkcnn-e-5_5_5-k80"):
        assert required in ALL
    with pytest.raises(ValueError, match="unknown preset 'ho-rk5-x7'"):
        presets.get("ho-rk5-x7")


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    spec = presets.get(name)
    small = dataclasses.replace(spec, image_size=16)  # fully convolutional: 16px keeps CPU tests fast
    net = models.build(small)
    stochastic = any(s.stochastic_depth for s in spec.stages)
    net.train(not stochastic)  # a dropped block would (rightly) get no gradient
    x = torch.randn(2, 3, 16, 16)
    out = net(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in ALL if presets.info(n).paper_params])
def test_parameter_count_matches_paper_row(name):
    info = presets.info(name)
    net = models.build(presets.get(name), device="meta")
    count = paper_count(net, info.count)
    if info.consistent:
        assert printed_matches(count, info.paper_params), f"{name}: {count:,} vs printed {info.paper_params}"
    else:
        # documented self-inconsistent rows of 001 (see models/presets.py)
        assert not printed_matches(count, info.paper_params)


@pytest.mark.parametrize("name", [n for n in ALL if presets.info(n).cifar100_params])
def test_parameter_count_at_100_classes_matches_the_cifar100_column(name):
    """002 Table 2 and 004 Tables 3/5 print CIFAR-100 counts: the head's 100 classes grow the count."""
    info = presets.info(name)
    net = models.build(dataclasses.replace(presets.get(name), num_classes=100), device="meta")
    count = paper_count(net, info.count)
    assert printed_matches(count, info.cifar100_params), f"{name}: {count:,} vs printed {info.cifar100_params}"
    assert info.params_on("cifar100") == info.cifar100_params and info.params_on("svhn") == info.paper_params


def test_cifar100_counts_cover_the_papers_rows():
    with_100 = {n for n in ALL if presets.info(n).cifar100_params}
    assert {"resnet-110", "lm-resnet-110"} <= with_100
    assert all(n in with_100 for n in ALL if n.startswith("rkcnn-"))
    assert presets.info("rkcnn-i-2_2_2-k120").cifar100_params == "1.964M"


def test_describe_counts_with_the_data_sets_classes():
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "search.py", "describe", "rkcnn-i-2_2_2-k120", "--dataset", "cifar100",
                          "--compact"], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert (d["params"], d["num_classes"], d["paper_params"]) == (1_964_020, 100, "1.964M")


def test_ho_rows_count_conv_and_fc_only():
    """001 prints 1.03M for Euler x14: conv+FC 1,034,570; with BN affine 1,038,282 (1.04M)."""
    net = models.build(presets.get("ho-euler-x14"), device="meta")
    assert paper_count(net, "no-bn") == 1_034_570
    assert count_params(net) == 1_038_282


def test_self_inconsistent_rows_are_the_documented_ones():
    bad = sorted(n for n in ALL if not presets.info(n).consistent)
    assert bad == ["ho-euler-x42", "ho-midpoint-paper-x21", "ho-midpoint-x21", "ho-rk4-paper-x10",
                   "ho-rk4-x10", "ho-verner8-adaptive-x3", "ho-verner8-x3"]
    # 3.01M for 42 sub-nets and 2.87M for 40 contradict the 73,728 conv params per sub-net of every other row
    assert paper_count(models.build(presets.get("ho-euler-x42"), device="meta"), "no-bn") == 3_098_954


@pytest.mark.parametrize("n", [1, 2, 3])
def test_adaptive_verner_has_one_parameter_per_block_more(n):
    fixed = count_params(models.build(presets.get(f"ho-verner8-x{n}"), device="meta"))
    adaptive = count_params(models.build(presets.get(f"ho-verner8-adaptive-x{n}"), device="meta"))
    assert adaptive == fixed + n


def test_equal_parameters_across_schemes():
    """Euler x28, Midpoint x14, RK4 x7, RK8 x2: the same sub-nets, restacked (001)."""
    counts = {count_params(models.build(presets.get(n), device="meta"))
              for n in ("ho-euler-x28", "ho-midpoint-x14", "ho-rk4-x7", "ho-verner8-x2", "ho-rk4-paper-x7")}
    assert counts == {2_074_058}


def test_lm_resnet_adds_only_k_per_lm_block():
    for depth in (20, 56, 110):
        n = (depth - 2) // 6
        plain = count_params(models.build(presets.get(f"resnet-{depth}"), device="meta"))
        lm = count_params(models.build(presets.get(f"lm-resnet-{depth}"), device="meta"))
        assert lm - plain == 3 * (n - 1)


@pytest.mark.parametrize("name", ALL)
def test_spec_json_round_trip_rebuilds_the_same_network(name):
    spec = presets.get(name)
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec


def test_same_spec_same_weights():
    spec = presets.get("resnet-20")
    a, b = models.build(spec), models.build(spec)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    c = models.build(dataclasses.replace(spec, seed=1))
    assert not torch.equal(a.stem.weight, c.stem.weight)


# Presets that are not points of the search space, each with its reason in the
# preset's docstring. None today: the space reaches 001's ResNet-86 rows, 004's
# RKCNN-I-5_5_6 and 002's p_L = 0.8.
OUTSIDE_SPACE: dict[str, str] = {}


@pytest.mark.parametrize("name", ALL)
def test_every_preset_is_a_point_of_the_space(name):
    """Widths aside, the search can draw every paper network it is compared with (the
    paper form of midpoint and RK4 when a study asks for it: tests/test_space_budget.py)."""
    reason = why_not_in_space(presets.get(name), paper_forms=True)
    if name in OUTSIDE_SPACE:
        assert reason and OUTSIDE_SPACE[name] in (presets.info(name).fn.__doc__ or "")
    else:
        assert reason is None, f"{name}: {reason}"


CIFAR_RESNETS = [n for n in ALL if models.networks.family(presets.get(n)) == "cifar-resnet"]


@pytest.mark.parametrize("name", CIFAR_RESNETS)
def test_cifar_resnets_are_labelled_what_they_are(name):
    """002's CIFAR ResNets and LM-ResNets are pre-activation here, and say so; their rows are
    002's Tables 2 and 4 (Table 1 lists ODEs, not networks)."""
    info = presets.info(name)
    assert "pre-activation" in info.source and "Pre-activation" in (info.fn.__doc__ or "").replace("pre-act", "Pre-act")
    assert "Table 1" not in info.source
    subnets = [m for m in models.build(presets.get(name), device="meta").modules() if isinstance(m, PreActSubnet)]
    assert subnets and all(isinstance(s[0], torch.nn.BatchNorm2d) and isinstance(s[1], torch.nn.ReLU)
                           for s in subnets)


def test_post_activation_rows_lend_no_accuracy_to_pre_activation_presets():
    """002 Table 2 prints ResNet-20..56 (8.75, 7.51, 7.17, 6.97% error) for He et al. 2015b's
    post-activation networks: the pre-activation presets of the same depth carry no printed
    accuracy; ResNet-110 pre-act (6.37%) and the LM-ResNets are the printed networks."""
    assert len(CIFAR_RESNETS) == 12
    for d in (20, 32, 44, 56):
        info = presets.info(f"resnet-{d}")
        assert info.paper_accuracy is None and "post-activation" in info.source
    assert {n: presets.info(n).paper_accuracy for n in ("resnet-110", "lm-resnet-20", "lm-resnet-56",
                                                         "lm-resnet-56-sd", "lm-resnet-110-sd")} == {
        "resnet-110": 93.63, "lm-resnet-20": 91.67, "lm-resnet-56": 93.69, "lm-resnet-56-sd": 94.86,
        "lm-resnet-110-sd": 95.20}
    out = io.StringIO()
    with redirect_stdout(out):
        assert search.main(["presets"]) == 0
    listed = {line.split()[0]: line for line in out.getvalue().splitlines()}
    assert all("pre-activation" in listed[n] for n in CIFAR_RESNETS)
    assert "post-activation" in listed["resnet-20"]
