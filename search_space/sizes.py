"""The sizes a budget leaves room for: which nesting depths, block counts and RKCNN
``s`` / ``r`` the sampler offers at a parameter budget, so that the width solver
(:func:`search_space.budget.solve_widths`) can bring the network to the budget.

The sampler asks a network's sizes last, stage by stage, once every stage's
scheme and downsampling are known; each size question offers the range of
values for which some choice of the sizes still to come can meet the budget
(:meth:`Room.allowed`). What can meet it is judged on a size model of the
network, not on its exact count (the solver's): a stage of ``n`` sub-nets at
``c`` channels holds ``n * (18 c^2 + 4 c)`` parameters (two 3x3 convolutions and
two BatchNorms per sub-net); an RKCNN unit reading ``m k`` channels holds
``(m + 9) k^2 + (2 m + 2) k`` (a 1x1 convolution from ``m k`` channels, a 3x3 one at
``k``, their BatchNorms), a transition ``k^2 + 2 k`` (attention adds about ``k^2``);
the stem adds ``27 c`` and the head ``(2 + classes) c`` per stage it reads (the last
stage of a ResNet-style network, every RKCNN period), plus its bias. Widths follow the
solver's pattern (x2 per downsampling; constant for RKCNN) scaled to the budget
and clipped to ``[MIN_WIDTH, MAX_WIDTH]``. A network is offered when

* its narrowest form (every stage at ``MIN_WIDTH``) holds at most the budget plus
  the tolerance, and its widest (every stage at ``MAX_WIDTH``) at least the budget
  minus the tolerance: no width can help otherwise;
* one channel more or less in any stage moves the count by no more than the
  tolerance window (``2 * tolerance * budget``) plus what the finer parts can
  absorb: three channels either way of every stage whose own channel steps fit
  in the window (the solver's fine candidates) and, for a network opening with a
  scheme stage, a stem from ``MIN_WIDTH`` to twice the first stage's width (the
  solver's last resort). This is what keeps a deep stage from being narrow: a
  stage of ``n`` sub-nets at ``c`` channels moves the count by about ``36 n c`` per
  channel, ``2/c`` of a one-stage network.

Where no value fits, the least coarse one that the widths can still bring to the
budget is offered (the solver may find the channels all the same). The sampler also
asks the number of stages after the first stage's scheme, offering one stage only
where that scheme can fit alone.

A spec's validity at a budget thus depends on the budget and on the choices
made before each size; :func:`search_space.sampling.why_not_in_space` replays
the same questions, so it knows the rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .budget import MAX_WIDTH, MIN_WIDTH

_STEM = 27             # parameters per stem channel: conv3x3 from 3 input channels
_HEAD_NORM = 2         # parameters per channel a head reads besides its FC row of one weight per class: BatchNorm
_MOVES = 3             # channels either way the solver moves a stage among its fine candidates
_BISECTION = 20        # halvings of the scale interval (at most 512 channels): a thousandth of a channel


def subnet_weights(scheme_leaves: int, blocks: int) -> tuple[float, float]:
    """``(sub-nets, parameters per channel)`` of a scheme stage of ``blocks`` blocks of
    ``scheme_leaves`` leaves: each sub-net holds ``18 c^2`` conv weights and ``4 c`` of
    BatchNorm."""
    n = float(scheme_leaves * blocks)
    return n, 4 * n


def rkcnn_weights(s: int, r: int, variant: str, transition: str, first: bool) -> tuple[float, float]:
    """An RKCNN period of ``s`` stages and ``r`` steps, with the transition before it, as
    ``(sub-net equivalents, parameters per channel)``: its ``k^2`` terms over a sub-net's
    ``18 k^2``, and its terms linear in ``k``. A unit reading ``m k`` channels holds
    ``(m + 9) k^2`` conv weights and ``(2 m + 2) k`` of BatchNorm; phase I unit ``i``
    reads ``i k``, phase II units (-I, -R) read ``s k`` (004 Algorithm 1); the transition
    holds ``k^2`` (``2 k^2`` and ``1.5 k`` more with attention) and ``2 k``."""
    reads = list(range(1, s + 1)) + ([] if variant == "rkcnn-e" else [s] * s)
    quad = r * sum(m + 9 for m in reads)
    lin = r * sum(2 * m + 2 for m in reads)
    if not first:
        attention = transition == "conv-attention"
        quad, lin = quad + (2 if attention else 1), lin + (3.5 if attention else 2)
    return quad / 18, lin


@dataclass(frozen=True)
class Room:
    """The size model at one budget and tolerance, for a data set of ``num_classes``
    classes. Its methods take ``resnet``: whether the network is ResNet-style (it opens
    with a scheme stage, whose stem width the solver may free, and its head reads the
    last stage) or an RKCNN (its multiscale head reads every period)."""

    budget: int
    tolerance: float
    num_classes: int = 10

    def _head_reads(self, n_stages: int, resnet: bool) -> np.ndarray:
        """Per stage, the head's parameters per channel of it (BatchNorm and the FC's row)."""
        reads = np.zeros(n_stages) if resnet else np.ones(n_stages)
        reads[-1] = 1
        return reads * (_HEAD_NORM + self.num_classes)

    def _counts(self, weights: np.ndarray, ratios: np.ndarray, scale: np.ndarray, resnet: bool) -> tuple:
        c = np.clip(scale[:, None] * ratios[None, :], MIN_WIDTH, MAX_WIDTH)
        quad, lin = weights[..., 0], weights[..., 1]
        head = c @ self._head_reads(c.shape[1], resnet) + self.num_classes
        total = (18 * quad * c * c + lin * c).sum(1) + _STEM * c[:, 0] + head
        return total, c

    def feasible(self, weights, ratios, resnet: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each row of ``weights`` (per stage, ``(sub-nets, parameters per channel)``):
        ``(reach, fits, coarse)``, whether some widths hold the budget between the
        narrowest and the widest network, whether moreover the channel steps are fine
        enough to meet it (see the module docstring), and how coarse they are (the
        largest channel step over what can absorb it; infinite out of reach)."""
        w = np.asarray(weights, dtype=float).reshape(len(weights), -1, 2)
        r = np.asarray(ratios, dtype=float)
        b, tol = float(self.budget), self.tolerance
        lo = np.full(len(w), MIN_WIDTH / r.max())
        hi = np.full(len(w), MAX_WIDTH / r.min())
        floor, _ = self._counts(w, r, lo, resnet)
        ceiling, _ = self._counts(w, r, hi, resnet)
        reach = (floor <= b * (1 + tol)) & (ceiling >= b * (1 - tol))
        for _ in range(_BISECTION):  # the scale that meets the budget (counts grow with it)
            mid = (lo + hi) / 2
            above = self._counts(w, r, mid, resnet)[0] > b
            hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
        _, c = self._counts(w, r, lo, resnet)
        # parameters per channel of each stage, the head's share included
        step = 36 * w[..., 0] * c + 18 * w[..., 0] + w[..., 1] + self._head_reads(w.shape[1], resnet)
        window = 2 * tol * b
        fine = step <= window
        at_bound = (c <= MIN_WIDTH) | (c >= MAX_WIDTH)
        moves = np.where(fine, np.where(at_bound, _MOVES, 2 * _MOVES) * step, 0.0)
        stem = (9 * c[:, 0] + 31) * (2 * c[:, 0] - MIN_WIDTH) if resnet else np.zeros(len(w))
        absorbed = window + stem[:, None] + moves.sum(1, keepdims=True) - moves
        coarse = (step / absorbed).max(1)   # above 1: some count between two channel steps is out of reach
        return reach, reach & (coarse <= 1), np.where(reach, coarse, np.inf)

    def allowed(self, decided: list[float], options: dict, later: list[tuple[float, float]],
                ratios, resnet: bool) -> list:
        """The values of one size question that leave room for the budget, a run of
        consecutive ones: ``options`` maps each value to the stage weights it can lead
        to (the stage's sizes still open; weights as :func:`subnet_weights` gives them),
        ``decided`` holds the weights of the stages before, ``later`` the ``(fewest,
        most)`` weights of the stages after. A value is
        allowed when one of its weights fits with the later stages all at their fewest
        or all at their most. Where the allowed values are not consecutive, the longest
        run is offered (the first of equals); where none fits, the value whose channel
        steps are the least coarse among those whose widths can hold the budget (the
        solver may still find the channels); where none can, none (the network is
        pruned)."""
        rows, keys = [], []
        ends = [[lo for lo, _ in later], [hi for _, hi in later]]
        for value, weights in options.items():
            for weight in weights:
                for end in ends:
                    rows.append([*decided, weight, *end])
                    keys.append(value)
        _, fits, coarse = self.feasible(rows, ratios, resnet)
        good = sorted({k for k, g in zip(keys, fits) if g})
        if good:
            return _longest_run(good, sorted(options))
        least = coarse.min()
        return [] if not np.isfinite(least) else sorted({k for k, c in zip(keys, coarse) if c == least})


def _longest_run(good: list, values: list) -> list:
    """The longest run of ``good`` values that are consecutive in ``values``."""
    runs, run = [], []
    for v in values:
        if v in good:
            run.append(v)
        elif run:
            runs.append(run)
            run = []
    runs.append(run)
    return max(runs, key=len)
