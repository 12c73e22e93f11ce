"""Pareto arithmetic and rank statistics, accuracy maximised and memory minimised: the
non-dominated sorting and crowding distance of NSGA-II (promotions rank by them), the
hypervolume of a front and its history over the trials, and Kendall's tau (how well the
proxy ranks the retrained networks). Plain numpy, no study needed.

Two objectives allow sweeps instead of pairwise comparisons, so a study of thousands of
networks is ranked in O(n log n): sorted by accuracy (best first), a point's front is found
by bisection over the fronts' smallest memory so far (Jensen's sweep, 2003), and the
hypervolume is the area under the staircase of the running best accuracy.
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable, Sequence

import numpy as np

__all__ = ["crowding_distance", "hypervolume", "hypervolume_trace", "kendall_tau", "nondominated_ranks",
           "pareto_mask", "rank_for_promotion"]


def _as_min(acc: Sequence[float], mem: Sequence[float]) -> np.ndarray:
    """Points to minimise: (-accuracy, memory)."""
    return np.column_stack([-np.asarray(acc, dtype=float), np.asarray(mem, dtype=float)]).reshape(-1, 2)


def nondominated_ranks(acc: Sequence[float], mem: Sequence[float]) -> np.ndarray:
    """NSGA-II front index of each point (0 = Pareto front), maximising ``acc`` and
    minimising ``mem``. Equal points share a front; a point with a NaN coordinate is
    compared with nothing (front 0).

    O(n log n): equal points are merged, the rest swept in order of (-acc, mem). Every
    point that dominates the current one came before it, and the smallest memory of each
    front so far rises with the front index, so the current point joins the first front
    whose smallest memory exceeds its own (found by bisection).
    """
    p = _as_min(acc, mem)
    ranks = np.zeros(len(p), dtype=int)
    ok = ~np.isnan(p).any(axis=1)
    if not ok.any():
        return ranks
    unique, inverse = np.unique(p[ok], axis=0, return_inverse=True)   # sorted by (-acc, mem)
    lowest: list[float] = []            # lowest[f]: the smallest memory in front f so far
    rank_of = np.empty(len(unique), dtype=int)
    for i, m in enumerate(unique[:, 1].tolist()):
        f = bisect.bisect_right(lowest, m)  # fronts 0..f-1 hold a point at most as large: it dominates
        if f == len(lowest):
            lowest.append(m)
        else:
            lowest[f] = m
        rank_of[i] = f
    ranks[ok] = rank_of[inverse.reshape(-1)]
    return ranks


def pareto_mask(acc: Sequence[float], mem: Sequence[float]) -> np.ndarray:
    return nondominated_ranks(acc, mem) == 0


def crowding_distance(acc: Sequence[float], mem: Sequence[float], ranks: np.ndarray | None = None) -> np.ndarray:
    """NSGA-II crowding distance within each front (boundary points and fronts of one or
    two points: inf). One sort per objective over all fronts at once."""
    p = _as_min(acc, mem)
    ranks = nondominated_ranks(acc, mem) if ranks is None else np.asarray(ranks)
    n = len(p)
    dist = np.zeros(n)
    if n == 0:
        return dist
    size = np.bincount(ranks - ranks.min())[ranks - ranks.min()]
    for k in range(p.shape[1]):
        order = np.lexsort((p[:, k], ranks))             # by front, then by this objective (stable)
        r, v = ranks[order], p[order, k]
        first = np.r_[True, r[1:] != r[:-1]]             # a front's smallest value
        last = np.r_[r[1:] != r[:-1], True]              # and its largest
        lo = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        hi = np.minimum.accumulate(np.where(last, np.arange(n), n - 1)[::-1])[::-1]
        span = v[hi] - v[lo]
        inner = ~first & ~last
        prev, nxt = np.r_[v[:1], v[:-1]], np.r_[v[1:], v[-1:]]
        step = np.zeros(n)
        use = inner & (span > 0)
        step[use] = (nxt[use] - prev[use]) / span[use]
        dist[order] += step
        dist[order[first | last]] = math.inf
    dist[size <= 2] = math.inf
    return dist


def rank_for_promotion(acc: Sequence[float], mem: Sequence[float]) -> np.ndarray:
    """Indices best first: by front, then by crowding distance (larger first), then accuracy."""
    acc = np.asarray(acc, dtype=float)
    ranks = nondominated_ranks(acc, mem)
    crowd = crowding_distance(acc, mem, ranks)
    return np.lexsort((-acc, -crowd, ranks))


def _inside(acc: np.ndarray, mem: np.ndarray, ref_acc: float, ref_mem: float) -> np.ndarray:
    """Points that dominate the reference point (finite, more accurate, less memory)."""
    return np.isfinite(acc) & np.isfinite(mem) & (acc > ref_acc) & (mem < ref_mem)


def hypervolume(acc: Sequence[float], mem: Sequence[float], ref_mem: float | None = None,
                ref_acc: float = 0.0, normalize: bool = False) -> float:
    """Area dominated by the points in (accuracy, memory) space, bounded by
    accuracy ``ref_acc`` and memory ``ref_mem`` (default: 1.1 x the largest memory).
    With ``normalize`` the memory axis is divided by ``ref_mem`` (result in [0, 1]
    for accuracies in [0, 1]). Points with a non-finite coordinate are left out."""
    acc, mem = np.asarray(acc, dtype=float).reshape(-1), np.asarray(mem, dtype=float).reshape(-1)
    ok = np.isfinite(acc) & np.isfinite(mem)
    if not ok.any():
        return 0.0
    ref_mem = float(mem[ok].max() * 1.1) if ref_mem is None else float(ref_mem)
    keep = _inside(acc, mem, ref_acc, ref_mem)
    m, a = mem[keep], acc[keep]
    order = np.lexsort((a, m))                          # memory ascending
    m, best = m[order], np.maximum.accumulate(a[order])  # the staircase: best accuracy up to each memory
    width = np.diff(np.r_[m, ref_mem])
    area = float(np.sum(width * (best - ref_acc)))
    return area / ref_mem if normalize and ref_mem > 0 else area


def hypervolume_trace(keys: Sequence, acc: Sequence[float], mem: Sequence[float], ref_mem: float,
                      ref_acc: float = 0.0, normalize: bool = True) -> list[float]:
    """:func:`hypervolume` after each of a sequence of scores, in the order given, where a
    score replaces the earlier one of the same ``key`` (a trial's longer proxy replaces its
    first-rung score): the front as it stood after each measurement. With distinct keys it
    is the hypervolume of every prefix of the points. The curve falls where a replacing
    score is worse. Normalised (memory divided by ``ref_mem``) unless ``normalize`` is False.

    One pass over the front kept as a staircase sorted by memory (accuracy rising with it):
    a new point found dominated by bisection adds nothing; otherwise it adds the area between
    its accuracy and the staircase, from its memory up to the first more accurate step, and
    the steps it now dominates leave. Each point enters and leaves the staircase once:
    O(n log n) comparisons for n scores without replacements (the list splices move
    pointers, negligible at a study's sizes). A replaced score leaves first: a point under
    the staircase changes nothing; a step of it is swept again from the points under it
    (those it dominated), which costs their number - every score is kept for that only
    when some key repeats.
    """
    ref_mem, ref_acc = float(ref_mem), float(ref_acc)
    acc, mem = np.asarray(acc, dtype=float).reshape(-1), np.asarray(mem, dtype=float).reshape(-1)
    keys = list(keys)
    inside = _inside(acc, mem, ref_acc, ref_mem).tolist()
    steps = _Staircase(ref_mem, ref_acc, keep_points=len(set(keys)) < len(keys))
    current: dict = {}           # key -> its point, while inside the reference
    out = []
    for key, a, m, ok in zip(keys, acc.tolist(), mem.tolist(), inside):
        old = current.pop(key, None)
        if old is not None:
            steps.remove(*old)
        if ok:
            current[key] = (m, a)
            steps.add(m, a)
        out.append(steps.area / ref_mem if normalize and ref_mem > 0 else steps.area)
    return out


class _Staircase:
    """The front of points in (memory, accuracy), memory minimised: steps with memory and
    accuracy strictly rising, and the area they dominate up to ``ref_mem`` above ``ref_acc``
    (kept up to date, not recomputed). With ``keep_points`` every point is kept too, sorted,
    so that a step can be removed (:meth:`remove`)."""

    def __init__(self, ref_mem: float, ref_acc: float, keep_points: bool):
        self.ref_mem, self.ref_acc = ref_mem, ref_acc
        self.ms: list[float] = []
        self.as_: list[float] = []
        self.points: list[tuple[float, float]] | None = [] if keep_points else None
        self.area = 0.0

    def add(self, m: float, a: float) -> None:
        if self.points is not None:
            bisect.insort(self.points, (m, a))
        ms, as_ = self.ms, self.as_
        j = bisect.bisect_right(ms, m)              # ms[:j] <= m
        height = as_[j - 1] if j else self.ref_acc
        if height >= a:                             # dominated (or equal): it adds nothing
            return
        start = j - 1 if j and ms[j - 1] == m else j
        x, end = m, j
        while end < len(ms) and as_[end] <= a:      # the steps it dominates: their area rises to a
            self.area += (ms[end] - x) * (a - height)
            x, height = ms[end], as_[end]
            end += 1
        self.area += ((ms[end] if end < len(ms) else self.ref_mem) - x) * (a - height)
        ms[start:end], as_[start:end] = [m], [a]

    def remove(self, m: float, a: float) -> None:
        pts, ms, as_ = self.points, self.ms, self.as_
        del pts[bisect.bisect_left(pts, (m, a))]
        s = bisect.bisect_left(ms, m)
        if s == len(ms) or ms[s] != m or as_[s] != a:
            return                                  # under the staircase: the front is unchanged
        # a step: between its memory and the next step's, the front is now made of the points
        # there that it dominated, above the previous step's accuracy (nothing with less memory
        # rose above that; nothing there reaches the next step's accuracy)
        low = as_[s - 1] if s else self.ref_acc
        end = ms[s + 1] if s + 1 < len(ms) else self.ref_mem
        new_ms: list[float] = []
        new_as: list[float] = []
        best = low
        for pm, pa in pts[bisect.bisect_left(pts, (m, -math.inf)):bisect.bisect_left(pts, (end, -math.inf))]:
            if pa > best:
                if new_ms and new_ms[-1] == pm:
                    new_as[-1] = pa
                else:
                    new_ms.append(pm)
                    new_as.append(pa)
                best = pa
        edges = new_ms[1:] + [end]
        self.area -= (end - m) * (a - low) - sum((e - pm) * (pa - low) for pm, pa, e in zip(new_ms, new_as, edges))
        ms[s:s + 1], as_[s:s + 1] = new_ms, new_as


def kendall_tau(x: Iterable[float], y: Iterable[float]) -> float:
    """Kendall's tau-b of paired values (pairs with a NaN dropped); NaN below 2 pairs."""
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return math.nan
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    dx, dy = dx[iu], dy[iu]
    s = float((dx * dy).sum())
    nx, ny = float((dx != 0).sum()), float((dy != 0).sum())
    if nx == 0 or ny == 0:
        return math.nan
    return s / math.sqrt(nx * ny)
