"""models/drawing.py: the network drawn from its spec.

The graph drawn for a block must be the block: with affine stand-ins for the sub-nets, the
weighted sums of :func:`scheme_graph` give what ``RKBlock`` / ``PaperBlock`` compute, for every
tableau of the registry and both forms. The SVG must show what the spec says: one box per stage
with its width and stride, one sub-net per tableau stage with the tableau's coefficients on its
taps, a block inside a block when nested, LM's two-step arrows, RKCNN's Phase I / II units.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from fractions import Fraction

import pytest
import torch
from torch import nn

from models import ArchSpec, StageSpec, StepSpec, presets
from models.blocks import PaperBlock, RKBlock
from models.drawing import network_svg, scheme_graph, shared_defs
from models.schemes import TABLEAUX
from models.spec import PAPER_FORMS, RKCNN_SCHEMES

SVG = "{http://www.w3.org/2000/svg}"


class Affine(nn.Module):
    """A stand-in sub-net ``w * y + e``: distinct per sub-net, so a wrong weight or a wrong
    source in the drawn graph changes the result."""

    def __init__(self, w: float, e: float):
        super().__init__()
        self.w, self.e = w, e

    def forward(self, y):
        return self.w * y + self.e


def _run_graph(g, x, subnets, h):
    K = []
    for i, ws in enumerate(g.inputs):
        y = float(ws.x_weight) * x + h * sum((float(w) * K[j] for j, w in ws.k), torch.zeros_like(x))
        K.append(subnets[i](y))
    out = g.output
    return float(out.x_weight) * x + h * sum((float(w) * K[i] for i, w in out.k), torch.zeros_like(x))


CASES = [(s, "butcher") for s in TABLEAUX] + [(s, "paper") for s in PAPER_FORMS]


@pytest.mark.parametrize("scheme, form", CASES)
def test_drawn_graph_computes_the_block(scheme, form):
    g = scheme_graph(scheme, form)
    s = TABLEAUX[scheme].stages
    assert g.subnets == s
    subnets = [Affine(0.3 + 0.11 * i, 0.05 * (i + 1) - 0.2) for i in range(s)]
    h = 0.7
    block = (PaperBlock(scheme, subnets, step=h) if form == "paper" else RKBlock(scheme, subnets, step=h)).double()
    x = torch.linspace(-1.0, 2.0, 12, dtype=torch.float64).view(2, 6)
    with torch.no_grad():
        want = block(x)
    assert torch.allclose(_run_graph(g, x, subnets, h), want, rtol=1e-10, atol=1e-10)


def _root(spec) -> ET.Element:
    return ET.fromstring(network_svg(spec))


def _attr_all(el, name):
    return [e for e in el.iter() if e.get(name) is not None]


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_draws_its_stages(name):
    spec = presets.get(name)
    root = _root(spec)
    assert root.tag == SVG + "svg" and root.get("viewBox")
    stages = [e for e in root.iter() if e.get("data-part") == "stage"]
    assert [int(e.get("data-width")) for e in stages] == [s.width for s in spec.stages]
    assert [int(e.get("data-stride")) for e in stages] == [2 if s.downsample else 1 for s in spec.stages]
    size, sizes = spec.image_size, []
    for s in spec.stages:
        size //= 2 if s.downsample else 1
        sizes.append(size)
    assert [int(e.get("data-resolution")) for e in stages] == sizes
    covered = sorted(int(i) for e in _attr_all(root, "data-block-of") for i in e.get("data-block-of").split(", "))
    assert covered == list(range(1, len(spec.stages) + 1))      # every stage's block drawn (or named as the same)
    heads = [e for e in root.iter() if e.get("data-part") == "head"]
    assert len(heads) == 1
    multiscale = [e for e in root.iter() if e.get("data-edge") == "multiscale"]
    assert len(multiscale) == (len(spec.stages) - 1 if spec.head == "multiscale" else 0)


def _expected_labels(scheme: str) -> list[str]:
    """The tableau's non-zero a_ij and b_i, printed as the drawing prints them."""
    t = TABLEAUX[scheme]

    def text(v):
        if isinstance(v, Fraction):
            return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
        return f"{float(v):.3g}"
    return sorted(text(v) for row in (*t.a, t.b) for v in row if v != 0)


@pytest.mark.parametrize("scheme", list(TABLEAUX))
def test_tableau_block_shows_its_subnets_and_coefficients(scheme):
    spec = ArchSpec(stages=(StageSpec(scheme=scheme, blocks=2, width=16),))
    block = next(e for e in _root(spec).iter() if e.get("data-block-of") == "1")
    subnets = [e for e in block.iter() if e.get("data-subnet")]
    assert len(subnets) == TABLEAUX[scheme].stages
    labels = sorted(e.get("data-coef") for e in block.iter() if e.get("data-coef"))
    assert labels == _expected_labels(scheme)


def test_paper_form_shows_its_own_weights():
    """000/001 eqs. 6-9: RK4's stage inputs halve the state (x weight 1/2 twice) and its output
    carries x twice (weight 2), unlike the tableau's."""
    spec = ArchSpec(stages=(StageSpec(scheme="rk4", form="paper", blocks=1, width=16),))
    block = next(e for e in _root(spec).iter() if e.get("data-block-of") == "1")
    on_x = sorted(e.get("data-coef") for e in block.iter() if e.get("data-rail") == "x" and e.get("data-coef"))
    assert on_x == ["1/2", "1/2", "2"]


def test_nested_block_is_drawn_inside_its_block():
    spec = ArchSpec(stages=(StageSpec(scheme="midpoint", depth=2, blocks=1, width=16),))
    block = next(e for e in _root(spec).iter() if e.get("data-block-of") == "1")
    outer = [e for e in block.iter() if e.get("data-block")]
    assert len(outer) == 2 + 2 * 2                                     # 2 inner blocks, each holding 2
    assert len([e for e in block.iter() if e.get("data-subnet")]) == 2 ** 3   # s**(d+1) leaves
    first = outer[0]
    assert len([e for e in first.iter() if e.get("data-block")]) == 1 + 2    # itself and its 2 inner blocks


@pytest.mark.parametrize("blocks, steps", [(1, 0), (2, 1), (3, 2), (9, 2)])
def test_lm_stage_has_two_step_arrows(blocks, steps):
    spec = ArchSpec(stages=(StageSpec(scheme="lm", blocks=blocks, width=16),))
    block = next(e for e in _root(spec).iter() if e.get("data-block-of") == "1")
    assert len([e for e in block.iter() if e.get("data-edge") == "two-step"]) == steps
    coefs = sorted(e.get("data-coef") for e in block.iter() if e.get("data-coef"))
    assert coefs == sorted(c for n in range(1, steps + 1) for c in (f"k{n}", f"1-k{n}", "h"))
    text = "".join(block.itertext())
    assert ("more LM step" in text) == (blocks - 1 > 2)


@pytest.mark.parametrize("variant", RKCNN_SCHEMES)
@pytest.mark.parametrize("s", [2, 4])
def test_rkcnn_period_shows_dense_phase_one_and_its_phase_two(variant, s):
    spec = ArchSpec(stages=(StageSpec(scheme=variant, rk_stages=s, rk_steps=2, width=24),), transition="conv",
                    head="multiscale")
    block = next(e for e in _root(spec).iter() if e.get("data-block-of") == "1")
    names = [e.get("data-subnet") for e in block.iter() if e.get("data-subnet")]
    assert [n for n in names if n.startswith("E")] == [f"E{chr(0x2080 + i)}" for i in range(1, s + 1)]
    assert len([n for n in names if n.startswith("I")]) == (0 if variant == "rkcnn-e" else s)
    # Phase I is dense: E_i reads y_n and x_1..x_{i-1}; one concatenation node per E_i after the first
    concat = [e for e in block.iter() if e.get("data-node") == "concat"]
    assert len(concat) == (s - 1) + (0 if variant == "rkcnn-e" else s)
    assert "r = 2 time-steps" in "".join(block.itertext())


def test_step_and_stride_are_named():
    spec = ArchSpec(stages=(StageSpec(scheme="rk4", blocks=2, width=16, step=StepSpec("learnable", 1.0)),
                            StageSpec(scheme="euler", blocks=3, width=32, downsample=True)))
    root = _root(spec)
    text = " ".join(root.itertext())
    assert "h learnable" in text and "stride 2 in block 1" in text and "16 ch · 32×32" in text
    assert "32 ch · 16×16" in text


def test_a_page_of_drawings_draws_each_block_once():
    """The dashboard's drawings share their blocks: RK4 x3 and RK4 x7 reference one RK4 block,
    defined once with the arrowhead, and it is the block the standalone drawing shows."""
    shared: dict[str, str] = {}
    a = network_svg(presets.get("ho-rk4-x3"), shared=shared)
    b = network_svg(presets.get("ho-rk4-x7"), shared=shared)
    c = network_svg(presets.get("lm-resnet-20"), shared=shared)
    assert len(shared) == 2
    assert set(re.findall(r'<use href="#([^"]+)"', a + b + c)) == set(shared)
    defs = ET.fromstring(shared_defs(shared))
    assert {e.get("id") for e in defs.iter() if e.get("id")} == set(shared) | {"nd-arrow"}
    rk4 = next(e for e in defs.iter() if e.get("id") == re.search(r'<use href="#([^"]+)"', a).group(1))
    standalone = next(e for e in _root(presets.get("ho-rk4-x3")).iter() if e.get("data-block-of") == "1")
    assert sorted(e.get("data-coef") for e in rk4.iter() if e.get("data-coef")) == \
        sorted(e.get("data-coef") for e in standalone.iter() if e.get("data-coef")) == _expected_labels("rk4")
    assert len(a) < len(network_svg(presets.get("ho-rk4-x3"))) / 2
