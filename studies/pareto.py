"""Pareto arithmetic and rank statistics, accuracy maximised and memory minimised: the
non-dominated sorting and crowding distance of NSGA-II (promotions rank by them), the
hypervolume of a front, and Kendall's tau (how well the proxy ranks the retrained networks).
Plain numpy, no study needed."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

__all__ = ["crowding_distance", "hypervolume", "hypervolume_trace", "kendall_tau", "nondominated_ranks",
           "pareto_mask", "rank_for_promotion"]



def _as_min(acc: Sequence[float], mem: Sequence[float]) -> np.ndarray:
    """Points to minimise: (-accuracy, memory)."""
    return np.column_stack([-np.asarray(acc, dtype=float), np.asarray(mem, dtype=float)])


def nondominated_ranks(acc: Sequence[float], mem: Sequence[float]) -> np.ndarray:
    """NSGA-II front index of each point (0 = Pareto front), maximising
    ``acc`` and minimising ``mem``. Equal points share a front."""
    p = _as_min(acc, mem)
    n = len(p)
    if n == 0:
        return np.zeros(0, dtype=int)
    le = (p[:, None, :] <= p[None, :, :]).all(-1)
    lt = (p[:, None, :] < p[None, :, :]).any(-1)
    dominates = le & lt                      # dominates[i, j]: i dominates j
    count = dominates.sum(0)                 # how many dominate j
    ranks = np.full(n, -1, dtype=int)
    front, r = np.flatnonzero(count == 0), 0
    while front.size:
        ranks[front] = r
        count = count - dominates[front].sum(0)
        count[ranks >= 0] = -1
        front, r = np.flatnonzero(count == 0), r + 1
    return ranks


def pareto_mask(acc: Sequence[float], mem: Sequence[float]) -> np.ndarray:
    return nondominated_ranks(acc, mem) == 0


def crowding_distance(acc: Sequence[float], mem: Sequence[float], ranks: np.ndarray | None = None) -> np.ndarray:
    """NSGA-II crowding distance within each front (boundary points: inf)."""
    p = _as_min(acc, mem)
    ranks = nondominated_ranks(acc, mem) if ranks is None else ranks
    dist = np.zeros(len(p))
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        if len(idx) <= 2:
            dist[idx] = math.inf
            continue
        for k in range(p.shape[1]):
            order = idx[np.argsort(p[idx, k], kind="stable")]
            span = p[order[-1], k] - p[order[0], k]
            dist[order[0]] = dist[order[-1]] = math.inf
            if span > 0:
                dist[order[1:-1]] += (p[order[2:], k] - p[order[:-2], k]) / span
    return dist


def rank_for_promotion(acc: Sequence[float], mem: Sequence[float]) -> np.ndarray:
    """Indices best first: by front, then by crowding distance (larger first), then accuracy."""
    acc = np.asarray(acc, dtype=float)
    ranks = nondominated_ranks(acc, mem)
    crowd = crowding_distance(acc, mem, ranks)
    return np.lexsort((-acc, -crowd, ranks))


def hypervolume(acc: Sequence[float], mem: Sequence[float], ref_mem: float | None = None,
                ref_acc: float = 0.0, normalize: bool = False) -> float:
    """Area dominated by the points in (accuracy, memory) space, bounded by
    accuracy ``ref_acc`` and memory ``ref_mem`` (default: 1.1 x the largest memory).
    With ``normalize`` the memory axis is divided by ``ref_mem`` (result in [0, 1]
    for accuracies in [0, 1])."""
    acc, mem = np.asarray(acc, dtype=float), np.asarray(mem, dtype=float)
    ok = np.isfinite(acc) & np.isfinite(mem)
    acc, mem = acc[ok], mem[ok]
    if acc.size == 0:
        return 0.0
    ref_mem = float(mem.max() * 1.1) if ref_mem is None else float(ref_mem)
    front = pareto_mask(acc, mem) & (acc > ref_acc) & (mem < ref_mem)
    pts = sorted(zip(mem[front], acc[front]))          # memory ascending -> accuracy ascending
    area, best = 0.0, ref_acc
    for i, (m, a) in enumerate(pts):
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_mem
        best = max(best, a)
        area += (nxt - m) * (best - ref_acc)
    return float(area / ref_mem) if normalize and ref_mem > 0 else float(area)


def hypervolume_trace(keys: Sequence, acc: Sequence[float], mem: Sequence[float], ref_mem: float,
                      ref_acc: float = 0.0) -> list[float]:
    """The normalised :func:`hypervolume` after each of a sequence of scores, in the order given,
    where a score replaces the earlier one of the same ``key`` (a trial's longer proxy replaces
    its first-rung score): the front as it stood after each measurement. The curve falls where
    a replacing score is worse. Each step sorts the current points by memory and sweeps them
    (a running maximum of accuracy), ``O(k log k)`` for ``k`` points: no dominance matrix."""
    current: dict = {}
    out = []
    for k, a, m in zip(keys, acc, mem):
        current[k] = (float(m), float(a))
        pts = np.array(sorted(p for p in current.values() if math.isfinite(p[0]) and math.isfinite(p[1])
                              and p[0] < ref_mem and p[1] > ref_acc)).reshape(-1, 2)
        if not len(pts) or ref_mem <= 0:
            out.append(0.0)
            continue
        best = np.maximum.accumulate(pts[:, 1]) - ref_acc            # best accuracy at memory <= each point's
        widths = np.diff(np.append(pts[:, 0], ref_mem))
        out.append(float((widths * best).sum() / ref_mem))
    return out


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
