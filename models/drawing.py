"""A network drawn from its spec, as SVG (``search.py describe --svg``, the dashboard, the model card).

Pure spec -> text: no torch, no study. It lives beside the spec and the tableau registry because
it is a function of those alone, like :func:`models.describe`, and a preset draws without a study.

The drawing has two parts:

* the **macro row**: input, stem, every stage (its scheme and blocks in the papers' naming,
  channels, resolution, the stride where it halves), the transitions, the head;
* one **block** per distinct stage structure, drawn as the graph of its scheme:

  - a tableau scheme (000/001 §3) as :func:`scheme_graph` gives it: sub-nets ``F_i`` in a row,
    the block input ``x`` and each sub-net's output ``K_i`` on horizontal rails, and each
    weighted sum (``Y_i = x + h sum_j a_ij K_j``, the output ``x + h sum_i b_i K_i``) a node
    that taps the rails it adds, each tap labelled with its tableau coefficient. The papers'
    own wiring of midpoint and RK4 (``form="paper"``, 000/001 eqs. 6-9) is drawn the same
    way with its own weights. A nested block (000 §3.5) draws each ``F_i`` as the increment
    ``B(y) - y`` of the inner block, that block drawn inside it, smaller;
  - an LM stage (002 §2 eq. 5): the opening Euler block, then LM steps
    ``u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + h F_n(u_n)`` with the two-step arrow from
    ``u_{n-1}``;
  - an RKCNN period (004 §3.3, Algorithm 1): one time-step of ``s`` stages, Phase I's dense
    inputs ``E_i(concat[y_n, x_1..x_{i-1}])``, Phase II's ``I_i`` of the -I / -R variant (none
    for -E), ``y_{n+1} = y_n + sum_i e_i``.

Every element that stands for something carries a ``data-*`` attribute (``data-stage``,
``data-subnet``, ``data-coef``, ``data-edge``), so a test can check the drawing against the spec.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from ._svg import BOX_H, BOX_W, FONT, FONT_FAMILY, LINE, LOOK, NODE_R, SMALL, Op, Part, esc, node, path, rails, sub, text
from .naming import describe_stage
from .schemes import TABLEAUX, Coefficient
from .spec import ArchSpec, StageSpec

__all__ = ["SchemeGraph", "WeightedSum", "network_svg", "scheme_graph", "shared_defs"]


# --------------------------------------------------------------------------
# the graph of a one-step scheme
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightedSum:
    """``x_weight * x + h * sum(w * K_j for j, w in k)``: a stage input or a block's output
    (``j`` counts sub-nets from 0; only non-zero weights are listed)."""
    x_weight: Coefficient
    k: tuple[tuple[int, Coefficient], ...]


@dataclass(frozen=True)
class SchemeGraph:
    """One block of a one-step scheme: ``inputs[i]`` feeds sub-net ``F_i`` (``K_i = F_i(Y_i)``),
    ``output`` is the block's output."""
    scheme: str
    form: str
    inputs: tuple[WeightedSum, ...]
    output: WeightedSum

    @property
    def subnets(self) -> int:
        return len(self.inputs)


_H = Fraction(1, 2)
# The HO-ResNet papers' wiring (000/001 eqs. 6-9), written as weighted sums (the step h scales
# every F_i): midpoint m = hF1(x) + x, out = hF2(m/2) + x; rk4 k1 = hF1(x) + x,
# k2 = hF2(k1/2) + x, k3 = hF3(k2/2) + x, k4 = hF4(k3) + x, out = x + (k1 + 2k2 + 2k3 + k4)/6,
# so Y2 = x/2 + h K1/2, ..., and the output carries x twice. models.blocks.PaperBlock runs it;
# tests/test_drawing.py checks that this graph computes what PaperBlock computes.
_PAPER = {
    "midpoint": ((WeightedSum(1, ()), WeightedSum(_H, ((0, _H),))), WeightedSum(1, ((1, 1),))),
    "rk4": ((WeightedSum(1, ()), WeightedSum(_H, ((0, _H),)), WeightedSum(_H, ((1, _H),)),
             WeightedSum(1, ((2, 1),))),
            WeightedSum(2, ((0, Fraction(1, 6)), (1, Fraction(1, 3)), (2, Fraction(1, 3)), (3, Fraction(1, 6))))),
}


def scheme_graph(scheme: str, form: str = "butcher") -> SchemeGraph:
    """The weighted sums of one block of ``scheme``: from its Butcher tableau
    (``Y_i = x + h sum_j a_ij K_j``, ``out = x + h sum_i b_i K_i``, 000/001 §3), or for
    ``form="paper"`` the papers' own midpoint / RK4 (000/001 eqs. 6-9)."""
    if form == "paper":
        if scheme not in _PAPER:
            raise ValueError(f"form 'paper' exists for {', '.join(_PAPER)}, not {scheme!r}")
        inputs, output = _PAPER[scheme]
        return SchemeGraph(scheme, form, inputs, output)
    t = TABLEAUX[scheme]
    inputs = tuple(WeightedSum(1, tuple((j, v) for j, v in enumerate(row) if v != 0)) for row in t.a)
    return SchemeGraph(scheme, form, inputs, WeightedSum(1, tuple((i, v) for i, v in enumerate(t.b) if v != 0)))


def _coef(v: Coefficient) -> str:
    """A coefficient as printed in the tableau: ``1/2``, ``-56/15``, ``2``; irrational ones to 3 digits."""
    if isinstance(v, Fraction):
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
    return f"{float(v):.3g}"


# --------------------------------------------------------------------------
# the blocks of each kind of stage
# --------------------------------------------------------------------------

def _tableau_block(stage: StageSpec, depth: int) -> Part:
    """One block of a tableau scheme, its sub-nets drawn as inner blocks while ``depth`` > 0."""
    g = scheme_graph(stage.scheme, stage.form)
    inner = _tableau_block(stage, depth - 1) if depth else None
    ops = []
    for i, ws in enumerate(g.inputs):
        taps = [("x", None if ws.x_weight == 1 else _coef(ws.x_weight), ws.x_weight)] if ws.x_weight else []
        taps += [(f"K{j + 1}", _coef(v), v) for j, v in ws.k]
        if len(taps) == 1 and taps[0][0] == "x" and taps[0][1] is None:
            taps = [("x", None, 1)]
        name = f"F{sub(i + 1)}"
        title = (f"F{i + 1}: the increment B(y) - y of a {_scheme_words(stage)} block"
                 + (f" nested {depth - 1} more time(s)" if depth > 1 else "") if inner else
                 f"F{i + 1}: pre-activation sub-net BN-ReLU-conv3x3-BN-ReLU-conv3x3; K{i + 1} = F{i + 1}(Y{i + 1})")
        ops.append(Op(taps, out=f"K{i + 1}", box=(f"{name} = B(y) − y" if inner else name), title=title,
                       inner=inner, kind="block" if inner else "subnet"))
    out = g.output
    taps = [("x", None if out.x_weight == 1 else _coef(out.x_weight), out.x_weight)]
    taps += [(f"K{i + 1}", _coef(v), v) for i, v in out.k]
    ops.append(Op(taps, kind="output"))
    return rails(ops, "x", "x", "out")


def _scheme_words(stage: StageSpec) -> str:
    return describe_stage(StageSpec(scheme=stage.scheme, form=stage.form)).split(" x")[0]


def _lm_stage(stage: StageSpec) -> Part:
    """The LM stage (002 §2): the opening Euler block, then up to two LM steps drawn, the
    rest counted; each step ``u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + h F_n(u_n)``."""
    steps = min(2, stage.blocks - 1)
    parts = []
    y, ylo, yhi = 46.0, 82.0, 16.0
    x = 6.0
    parts.append(text(x, y + 4, "u₀", FONT))
    u_x = [x + 8]
    x += 22
    parts.append(path([(x - 8, y), (x + 4, y)], arrow=True))
    parts.append(f'<g data-subnet="Euler"><title>block 1: pre-activation Euler block u₁ = u₀ + h F₀(u₀) '
                 f'(it opens the stage: any stride or width change is here)</title>'
                 f'<rect x="{x + 4:.1f}" y="{y - 13:.1f}" width="80" height="26" rx="4" class="box" {LOOK["box"]}/>'
                 + text(x + 44, y + 4, "Euler block", FONT - 1, "middle") + "</g>")
    x += 84
    parts.append(path([(x, y), (x + 14, y)]))
    x += 18
    u_x.append(x)
    parts.append(text(x - 2, y - 6, "u₁", FONT))
    for n in range(1, steps + 1):
        fx = x + 20
        parts.append(path([(x, y), (fx, y)], arrow=True))
        parts.append(f'<g data-subnet="F{n}"><title>F{n}: pre-activation sub-net; LM step {n}: '
                     f'u{n + 1} = (1 - k{n}) u{n} + k{n} u{n - 1} + h F{n}(u{n}), k{n} learnable</title>'
                     f'<rect x="{fx:.1f}" y="{y - BOX_H / 2:.1f}" width="{BOX_W}" height="{BOX_H}" rx="4" '
                     f'class="box" {LOOK["box"]}/>' + text(fx + BOX_W / 2, y + 4, f"F{sub(n)}", FONT, "middle") + "</g>")
        sx = fx + BOX_W + 26
        parts.append(path([(fx + BOX_W, y), (sx - NODE_R, y)], arrow=True))
        parts.append(text(fx + BOX_W + 4, y - 4, "h", SMALL, cls="coef", extra=' data-coef="h"'))
        parts.append(node(sx, y, "+", f"u{n + 1} = (1 - k{n}) u{n} + k{n} u{n - 1} + h F{n}(u{n})", "sum"))
        # u_n -> sum above, u_{n-1} -> sum below: the two-step arrow
        parts.append(path([(x, y), (x, yhi), (sx, yhi), (sx, y - NODE_R)], arrow=True))
        parts.append(text((x + sx) / 2, yhi - 3, f"1 − k{sub(n)}", SMALL, "middle", cls="coef",
                           extra=f' data-coef="1-k{n}"'))
        up = u_x[n - 1]
        parts.append(f'<g data-edge="two-step"><title>two-step: u{n - 1} enters u{n + 1} with weight k{n}</title>'
                     + path([(up, y + 4), (up, ylo), (sx, ylo), (sx, y + NODE_R)], cls="two", arrow=True)
                     + "</g>")
        parts.append(text((up + sx) / 2, ylo + 10, f"k{sub(n)} (two-step)", SMALL, "middle", cls="coef",
                           extra=f' data-coef="k{n}"'))
        x = sx + NODE_R + 14
        parts.append(path([(sx + NODE_R, y), (x, y)]))
        u_x.append(x)
        parts.append(text(x - 2, y - 6, f"u{sub(n + 1)}", FONT))
        ylo += 10
    more = stage.blocks - 1 - steps
    if more > 0:
        parts.append(text(x + 8, y + 4, f"… {more} more LM step{'s' if more != 1 else ''}", FONT, cls="note"))
        x += 130
    return Part("".join(parts), x + 10, ylo + 16)


def _rkcnn_period(stage: StageSpec) -> Part:
    """One time-step of an RKCNN period (004 §3.3, Algorithm 1): Phase I ``E_i`` on the dense
    concatenation, Phase II ``I_i`` of the -I / -R variant, ``y_{n+1} = y_n + sum e_i``."""
    s, variant = stage.rk_stages, stage.scheme[-1]
    ops = []
    for i in range(1, s + 1):
        taps = [("y", None, None)] + [(f"x{j}", None, None) for j in range(1, i)]
        ops.append(Op(taps, out=f"x{i}", box=f"E{sub(i)}", combine="concat" if i > 1 else "sum",
                       title=f"E{i}: bottleneck BN-ReLU-conv1x1-BN-ReLU-conv3x3 on concat[y_n, x1..x{i - 1}] "
                             f"(Phase I, dense)"))
    if variant == "e":
        summed = [f"x{i}" for i in range(1, s + 1)]
    else:
        summed = [f"e{i}" for i in range(1, s + 1)]
        for i in range(1, s + 1):
            if variant == "i":
                src = [f"e{j}" for j in range(1, i)] + [f"x{j}" for j in range(i + 1, s + 1)]
            else:
                src = [f"x{j}" for j in range(1, s + 1) if j != i]
            ops.append(Op([("y", None, None)] + [(r, None, None) for r in src], out=f"e{i}", box=f"I{sub(i)}",
                           combine="concat", title=f"I{i}: Phase II unit (own weights) on concat[y_n, "
                                                   f"{', '.join(src)}] (RKCNN-{variant.upper()})"))
    ops.append(Op([("y", None, None)] + [(r, None, None) for r in summed], kind="output"))
    return rails(ops, "y", "yₙ", "yₙ₊₁")


# --------------------------------------------------------------------------
# the whole network
# --------------------------------------------------------------------------

def _stage_key(st: StageSpec) -> tuple:
    if st.is_rkcnn:
        return (st.scheme, st.rk_stages, st.rk_steps)
    if st.scheme == "lm":
        return ("lm", min(st.blocks, 3), st.blocks)
    return (st.scheme, st.form, st.depth)


def _caption(st: StageSpec) -> str:
    if st.is_rkcnn:
        variant = st.scheme[-1].upper()
        phase2 = {"E": "no Phase II (eᵢ = xᵢ)", "I": "Phase II Iᵢ on yₙ, e₁..eᵢ₋₁, xᵢ₊₁..xₛ",
                  "R": "Phase II Iᵢ on yₙ and every other xⱼ"}[variant]
        steps = "one time-step" if st.rk_steps == 1 else f"r = {st.rk_steps} time-steps like this one"
        return (f"RKCNN-{variant} period: {steps}, s = {st.rk_stages} stages (004 §3.3): Phase I Eᵢ on concat[yₙ, x₁..xᵢ₋₁]; {phase2}; "
                f"yₙ₊₁ = yₙ + Σ eᵢ")
    if st.scheme == "lm":
        return ("LM stage (002 §2): the first block is Euler; then uₙ₊₁ = (1 − kₙ) uₙ + kₙ uₙ₋₁ + h Fₙ(uₙ), "
                "kₙ learnable (dashed: the two-step arrow)")
    step = "h learnable" if st.step.mode == "learnable" else f"h = {st.step.value:g}"
    name = _scheme_words(st)
    if st.form == "paper":
        how = f"{name}: the papers' wiring (000/001 eqs. 6-9), the weights on its sums; every K × h"
    else:
        how = f"{name} (Butcher tableau): Yᵢ = x + h Σ aᵢⱼ Kⱼ, Kᵢ = Fᵢ(Yᵢ), out = x + h Σ bᵢ Kᵢ"
    nest = {1: "; nested once: each F is the increment B(y) − y of a block of the same scheme",
            2: "; nested twice: each F is the increment B(y) − y of a nested-once block"}.get(
        st.depth, f"; nested {st.depth} times" if st.depth else "")
    return f"one block: {how}; {step}{nest}"


def _stage_block(st: StageSpec) -> Part:
    if st.is_rkcnn:
        return _rkcnn_period(st)
    if st.scheme == "lm":
        return _lm_stage(st)
    return _tableau_block(st, st.depth)


def _macro(spec: ArchSpec, fill: Callable[[StageSpec], str | None]) -> Part:
    parts = []
    y, h = 14.0, 66.0
    x = 4.0
    size = spec.image_size
    stem_w = spec.stem_width or spec.stages[0].width

    def box(x, w, lines, kind, title, colour=None, attrs=""):
        fill_ = f' style="fill:{colour};fill-opacity:0.22"' if colour else ""
        out = [f'<g data-part="{kind}"{attrs}><title>{esc(title)}</title>'
               f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="5" class="box" {LOOK["box"]}{fill_}/>']
        for i, (words, cls) in enumerate(lines):
            out.append(text(x + w / 2, y + 16 + i * 14, words, FONT if i == 0 else FONT - 1, "middle", cls=cls))
        return "".join(out) + "</g>"

    def arrow(x0, x1, label=""):
        out = path([(x0, y + h / 2), (x1, y + h / 2)], arrow=True)
        if label:
            out += text((x0 + x1) / 2, y + h / 2 - 5, label, SMALL, "middle", cls="note")
        return out

    parts.append(box(x, 70, [("input", "cap"), (f"{spec.in_channels}×{size}×{size}", "")], "input",
                     "the image, normalised"))
    x += 70
    parts.append(arrow(x, x + 16))
    x += 16
    parts.append(box(x, 84, [("stem", "cap"), ("conv3×3", ""), (f"{spec.in_channels}→{stem_w} ch", "")], "stem",
                     f"stem: conv3x3 {spec.in_channels} -> {stem_w} channels"))
    x += 84
    c_in = stem_w
    head_links = []
    for i, st in enumerate(spec.stages):
        stride = 2 if st.downsample else 1
        changes = stride != 1 or c_in != st.width
        label = ""
        if spec.transition != "resblock" and changes:
            parts.append(arrow(x, x + 12))
            x += 12
            att = " + attention" if spec.transition == "conv-attention" else ""
            tw = 96
            parts.append(box(x, tw, [("transition", "cap"), ("conv1×1" + ("+att." if att else ""), ""),
                                     ("avgpool2" if st.downsample else "", "")], "transition",
                             f"transition (004 §4.1.2): BN-ReLU-conv1x1 {c_in}->{st.width}{att}"
                             + (", avgpool2 (resolution /2)" if st.downsample else "")))
            x += tw
        elif changes:
            label = "/2" if st.downsample else f"{c_in}→{st.width}"
        if st.downsample:
            size = max(1, size // 2)
        parts.append(arrow(x, x + 22, label))
        x += 22
        name = describe_stage(st).split(" / ")[0]
        lines = [(f"stage {i + 1}", "cap"), (name, ""), (f"{st.width} ch · {size}×{size}", "")]
        if changes and spec.transition == "resblock":
            lines.append(("opened by an Euler block" if st.is_rkcnn else "stride 2 in block 1" if st.downsample
                          else f"block 1: {c_in}→{st.width} ch", "note"))
        w = max(128, 6.4 * max(len(t) for t, _ in lines) + 14)     # the longest line fits (10 px text)
        title = (f"stage {i + 1}: {describe_stage(st)}; {st.width} channels at {size}x{size}"
                 + ("; its first block's first sub-net has stride 2 and its shortcut is the input subsampled "
                    "and zero-padded" if st.downsample and spec.transition == "resblock" else ""))
        attrs = (f' data-stage="{i + 1}" data-width="{st.width}" data-stride="{stride}" '
                 f'data-scheme="{esc(st.scheme)}" data-resolution="{size}"')
        parts.append(box(x, w, lines, "stage", title, fill(st), attrs))
        head_links.append(x + w / 2)
        x += w
        c_in = st.width
    parts.append(arrow(x, x + 18))
    x += 18
    if spec.head == "multiscale":
        hw = 128
        parts.append(box(x, hw, [("head", "cap"), ("GAP of every stage", ""), (f"concat, FC → {spec.num_classes}", "")],
                         "head", "multiscale head (004): BN-ReLU-GAP of every stage's output, concatenated, one FC"))
        for sx in head_links[:-1]:      # every stage's output reaches the head
            parts.append(path([(sx, y + h), (sx, y + h + 12), (x + hw / 2, y + h + 12), (x + hw / 2, y + h)],
                               arrow=True, extra=' data-edge="multiscale"'))
    else:
        hw = 104
        parts.append(box(x, hw, [("head", "cap"), ("BN-ReLU-GAP", ""), (f"FC → {spec.num_classes}", "")], "head",
                         f"head: BN-ReLU, global average pool, fully connected to {spec.num_classes} classes"))
    x += hw
    return Part("".join(parts), x + 6, y + h + (22 if spec.head == "multiscale" else 8))


_MARKER = ('<marker id="nd-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
           f'orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" fill="{LINE}"/></marker>')


def network_svg(spec: ArchSpec, fill: Callable[[StageSpec], str | None] | None = None,
                title: str | None = None, shared: dict[str, str] | None = None) -> str:
    """The drawing of ``spec`` as a standalone SVG document (also valid inline in HTML).

    ``fill(stage)`` may colour each stage box (the dashboard passes its scheme-family colours);
    ``title`` replaces the heading (default: the architecture in the papers' naming). The SVG
    scales to its container (``viewBox``, ``width`` its natural size in px).

    ``shared``: a page that draws many networks passes one dict for all of them. Each distinct
    block is then drawn once, into it, and referenced with ``<use>``; the page carries
    :func:`shared_defs` once (the blocks, the style, the arrowhead). A block is ~3/4 of a
    drawing, and a study's networks share few distinct blocks."""
    spec.validate(require_widths=True)
    fill = fill or (lambda st: None)
    heading = title if title is not None else " | ".join(describe_stage(s) for s in spec.stages)
    macro = _macro(spec, fill)
    pieces = [text(4, 14, heading, FONT + 1, cls="cap")]
    y = 20.0
    pieces.append(macro.at(0, y))
    y += macro.h + 10
    width = macro.w
    seen: dict[tuple, list[int]] = {}
    for i, st in enumerate(spec.stages):
        seen.setdefault(_stage_key(st), []).append(i)
    for key, idx in seen.items():
        st = spec.stages[idx[0]]
        which = ", ".join(str(i + 1) for i in idx)
        count = "" if st.is_rkcnn or st.scheme == "lm" else \
            f" ({' / '.join(str(spec.stages[i].blocks) for i in idx)} block{'s' if st.blocks != 1 else ''})"
        head = f"stage{'s' if len(idx) > 1 else ''} {which}{count}: {_caption(st)}"
        part = _stage_block(st)
        if shared is None:
            drawn = part.at(4, y + 20)
        else:
            ref = "nd-" + hashlib.sha1(repr(key).encode()).hexdigest()[:12]
            shared.setdefault(ref, part.body)
            drawn = f'<use href="#{ref}" transform="translate(4,{y + 20:.1f})"/>'
        pieces.append(f'<g data-block-of="{which}">' + text(4, y + 12, head, FONT - 1, cls="note") + drawn + "</g>")
        y += 20 + part.h + 12
        width = max(width, part.w + 8, 6.0 * len(head))
    width, height = round(width + 8), round(y + 4)
    label = esc("network drawing: " + heading)
    own = f"<defs>{_MARKER}</defs>" if shared is None else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="nd network-drawing" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{label}" font-family="{FONT_FAMILY}">'
            + own + "".join(pieces)
            + "</svg>\n")


def shared_defs(shared: dict[str, str]) -> str:
    """Once in a page of drawings made with ``shared``: the blocks they reference and the
    arrowhead, in an SVG that takes no room."""
    blocks = "".join(f'<g id="{ref}">{body}</g>' for ref, body in shared.items())
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="nd" width="0" height="0" aria-hidden="true" '
            f'style="position:absolute"><defs>{_MARKER}{blocks}</defs></svg>')
