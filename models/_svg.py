"""The SVG pieces of :mod:`models.drawing`: text, lines, nodes, and the rail layout every
one-step block and RKCNN time-step is drawn with (ops in a row, their inputs and outputs on
horizontal rails below, a sum or concatenation node tapping the rails it reads)."""
from __future__ import annotations

import html
from dataclasses import dataclass

from .schemes import Coefficient

# --------------------------------------------------------------------------
# SVG primitives
# --------------------------------------------------------------------------

FONT = 11           # px, the drawing's body text
SMALL = 8           # px, coefficients and notes
BOX_W, BOX_H = 36, 24          # a leaf sub-net
NODE_R = 7                      # a sum or concat node
RAIL_DY = 12                    # between rails
NEST_SCALE = 0.42               # an inner block inside its outer block's sub-net box
LINE = "#444"
SUBSCRIPTS = str.maketrans("0123456789-", "₀₁₂₃₄₅₆₇₈₉₋")
# Presentation attributes, not a style sheet: a block drawn once and placed with <use>
# (studies' pages) is a copy that class selectors do not reach, while attributes travel with it.
LOOK = {
    "ln": 'stroke="#444" stroke-width="1.2" fill="none"', "rail": 'stroke="#999" stroke-width="1" fill="none"',
    "two": 'stroke="#b35900" stroke-width="1.4" stroke-dasharray="5 3" fill="none"',
    "box": 'fill="#fff" stroke="#444" stroke-width="1.2"', "blk": 'fill="#f7f7fb" stroke="#888" stroke-width="1"',
    "node": 'fill="#fff" stroke="#444" stroke-width="1.2"',
    "": 'fill="#222"', "note": 'fill="#555"', "coef": 'fill="#0b4f8a"', "cap": 'fill="#222" font-weight="600"',
}
FONT_FAMILY = "system-ui, -apple-system, 'Segoe UI', sans-serif"   # set on the drawing's root, inherited


def sub(text) -> str:
    return str(text).translate(SUBSCRIPTS)


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def text(x, y, text, size=FONT, anchor="start", cls="", extra="") -> str:
    c = (f' class="{cls}"' if cls else "") + " " + LOOK[cls]
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" text-anchor="{anchor}"{c}{extra}>'
            f'{esc(text)}</text>')


def path(points, cls="ln", arrow=False, extra="") -> str:
    d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in points)
    end = ' marker-end="url(#nd-arrow)"' if arrow else ""
    return f'<path d="{d}" class="{cls}" {LOOK[cls]}{end}{extra}/>'


def node(x, y, symbol: str, title: str, kind: str) -> str:
    return (f'<g data-node="{kind}"><title>{esc(title)}</title>'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{NODE_R}" {LOOK["node"]}/>'
            + text(x, y + 3.5, symbol, 10, "middle") + "</g>")


class Part:
    """A piece of drawing: SVG elements in its own coordinates and its size."""

    def __init__(self, body: str, w: float, h: float):
        self.body, self.w, self.h = body, w, h

    def at(self, x: float, y: float, scale: float = 1.0) -> str:
        s = f" scale({scale:g})" if scale != 1.0 else ""
        return f'<g transform="translate({x:.1f},{y:.1f}){s}">{self.body}</g>'


# --------------------------------------------------------------------------
# the rail layout: ops in a row, their inputs and outputs on rails below
# --------------------------------------------------------------------------

@dataclass
class Op:
    """A sub-net box (``box`` set) fed by a ``combine`` node (``sum``, ``concat``) that taps
    ``taps`` (rail, label, x weight?) or, with no box, the block's output node."""
    taps: list[tuple[str, str | None, Coefficient | None]]
    out: str | None = None            # the rail its result goes to
    box: str | None = None            # label of the sub-net box
    title: str = ""
    combine: str = "sum"
    inner: Part | None = None        # a nested block drawn inside the box
    kind: str = "subnet"


def rails(ops: list[Op], first: str, first_label: str, out_label: str) -> Part:
    """Draw ``ops`` left to right; the rail ``first`` (the block input) and every op's output
    rail run below the row, each from its producer to its last reader."""
    names = [first] + [op.out for op in ops if op.out]
    rail_y0 = 0.0
    xs, parts = [], []
    x = 34.0                                  # the input's label takes the left margin
    row_h = max([BOX_H] + [op.inner.h * NEST_SCALE + 16 for op in ops if op.inner])
    y_row = row_h / 2 + 6
    rail_y0 = row_h + 18
    rail_y = {n: rail_y0 + i * RAIL_DY for i, n in enumerate(names)}
    start = {first: 6.0}
    end: dict[str, float] = {first: 6.0}
    for op in ops:
        xs.append(x)
        bw = (op.inner.w * NEST_SCALE + 10) if op.inner else BOX_W
        if op.box is None:
            x += 2 * NODE_R + 40
            continue
        stub = x + 2 * NODE_R + 4 + bw + 8
        start[op.out] = stub
        x = stub + 30
    width = x + 30
    for op, ox in zip(ops, xs):
        direct = op.box is not None and len(op.taps) == 1 and op.taps[0][1] is None and op.combine == "sum"
        lowest = max(rail_y[r] for r, _, _ in op.taps)
        if direct:
            parts.append(path([(ox, lowest), (ox, y_row), (ox + 2 * NODE_R + 4, y_row)], arrow=True))
        else:
            parts.append(path([(ox, lowest), (ox, y_row + NODE_R)]))
            sym = "∥" if op.combine == "concat" else "+"
            what = ("concatenation of " if op.combine == "concat" else "weighted sum of ") + ", ".join(
                (f"{lab}·" if lab else "") + r for r, lab, _ in op.taps)
            parts.append(node(ox, y_row, sym, what, op.combine))
            if op.box is not None:
                parts.append(path([(ox + NODE_R, y_row), (ox + 2 * NODE_R + 4, y_row)], arrow=True))
        for r, lab, _ in op.taps:
            end[r] = max(end.get(r, 0.0), ox)
            parts.append(f'<circle cx="{ox:.1f}" cy="{rail_y[r]:.1f}" r="2.2" fill="{LINE}"/>')
            if lab is not None:
                parts.append(text(ox + 3, rail_y[r] - 2.5, lab, SMALL, cls="coef",
                                   extra=f' data-coef="{esc(lab)}" data-rail="{esc(r)}"'))
        if op.box is None:
            parts.append(path([(ox + NODE_R, y_row), (ox + NODE_R + 26, y_row)], arrow=True))
            parts.append(text(ox + NODE_R + 29, y_row + 4, out_label, FONT))
            continue
        bx = ox + 2 * NODE_R + 4
        bw = (op.inner.w * NEST_SCALE + 10) if op.inner else BOX_W
        bh = (op.inner.h * NEST_SCALE + 16) if op.inner else BOX_H
        cls = "blk" if op.inner else "box"
        parts.append(f'<g data-{op.kind}="{esc(op.box)}"><title>{esc(op.title)}</title>'
                     f'<rect x="{bx:.1f}" y="{y_row - bh / 2:.1f}" width="{bw:.1f}" height="{bh:.1f}" rx="4" '
                     f'class="{cls}" {LOOK[cls]}/>')
        if op.inner:
            parts.append(text(bx + 4, y_row - bh / 2 + 9, op.box, SMALL, cls="note"))
            parts.append(op.inner.at(bx + 5, y_row - bh / 2 + 12, NEST_SCALE))
        else:
            parts.append(text(bx + bw / 2, y_row + 4, op.box, FONT, "middle"))
        parts.append("</g>")
        sx = start[op.out]
        parts.append(path([(bx + bw, y_row), (sx, y_row), (sx, rail_y[op.out])]))
        parts.append(text(sx + 3, rail_y[op.out] - 2.5, op.out[0] + sub(op.out[1:]), SMALL, cls="note"))
    for n in names:       # rails, under everything else
        y = rail_y[n]
        x0, x1 = start.get(n, 6.0), end.get(n, start.get(n, 6.0))
        parts.insert(0, path([(x0, y), (max(x1, x0 + 4), y)], cls="rail", extra=f' data-rail="{esc(n)}"'))
    parts.insert(0, text(2, rail_y[first] + 3.5, first_label, FONT))
    height = rail_y0 + (len(names) - 1) * RAIL_DY + 8
    return Part("".join(parts), width, height)
