"""The Pareto arithmetic at study scale: the O(n log n) sweeps of ``studies.pareto`` against
the pairwise definitions they replace, on random points with ties and duplicates.

The references below are the former implementations (all pairs compared, the hypervolume
recomputed for every prefix of the trials), kept here as the definition.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from studies import pareto


def ref_ranks(acc, mem):
    """Pairwise non-dominated sorting (NSGA-II's definition; equal points share a front)."""
    p = np.column_stack([-np.asarray(acc, float), np.asarray(mem, float)])
    n = len(p)
    if n == 0:
        return np.zeros(0, dtype=int)
    le = (p[:, None, :] <= p[None, :, :]).all(-1)
    lt = (p[:, None, :] < p[None, :, :]).any(-1)
    dominates = le & lt
    count = dominates.sum(0)
    ranks = np.full(n, -1, dtype=int)
    front, r = np.flatnonzero(count == 0), 0
    while front.size:
        ranks[front] = r
        count = count - dominates[front].sum(0)
        count[ranks >= 0] = -1
        front, r = np.flatnonzero(count == 0), r + 1
    return ranks


def ref_crowding(acc, mem, ranks):
    p = np.column_stack([-np.asarray(acc, float), np.asarray(mem, float)])
    dist = np.zeros(len(p))
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        if len(idx) <= 2:
            dist[idx] = math.inf
            continue
        for k in range(2):
            order = idx[np.argsort(p[idx, k], kind="stable")]
            span = p[order[-1], k] - p[order[0], k]
            dist[order[0]] = dist[order[-1]] = math.inf
            if span > 0:
                dist[order[1:-1]] += (p[order[2:], k] - p[order[:-2], k]) / span
    return dist


def ref_hypervolume(acc, mem, ref_mem, ref_acc=0.0, normalize=False):
    acc, mem = np.asarray(acc, float), np.asarray(mem, float)
    ok = np.isfinite(acc) & np.isfinite(mem)
    acc, mem = acc[ok], mem[ok]
    if acc.size == 0:
        return 0.0
    front = (ref_ranks(acc, mem) == 0) & (acc > ref_acc) & (mem < ref_mem)
    pts = sorted(zip(mem[front], acc[front]))
    area, best = 0.0, ref_acc
    for i, (m, a) in enumerate(pts):
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_mem
        best = max(best, a)
        area += (nxt - m) * (best - ref_acc)
    return float(area / ref_mem) if normalize and ref_mem > 0 else float(area)


def points(rng, n, levels):
    """Random points on a coarse grid (``levels`` values per axis): ties and duplicates."""
    return rng.integers(0, levels, n) / levels, (rng.integers(0, levels, n) + 1) * 1000.0


@pytest.mark.parametrize("levels", [3, 8, 1000])
def test_ranks_and_crowding_match_the_pairwise_definition(levels):
    rng = np.random.default_rng(levels)
    for n in [0, 1, 2, 3, 7, 40, 300]:
        acc, mem = points(rng, n, levels)
        ranks = pareto.nondominated_ranks(acc, mem)
        assert ranks.tolist() == ref_ranks(acc, mem).tolist()
        assert pareto.crowding_distance(acc, mem, ranks).tolist() == ref_crowding(acc, mem, ranks).tolist()


def test_a_point_with_nan_is_compared_with_nothing():
    acc, mem = [0.5, float("nan"), 0.9, 0.4], [1.0, 2.0, 0.5, 3.0]
    assert pareto.nondominated_ranks(acc, mem).tolist() == [1, 0, 0, 2]


def ref_trace(keys, acc, mem, ref_mem):
    """The hypervolume of the current scores after each one, a later score of a key replacing
    its earlier one, recomputed from scratch every time."""
    current, out = {}, []
    for k, a, m in zip(keys, acc, mem):
        current[k] = (a, m)
        pts = list(current.values())
        out.append(ref_hypervolume([p[0] for p in pts], [p[1] for p in pts], ref_mem, normalize=True))
    return out


@pytest.mark.parametrize("levels", [3, 8, 1000])
def test_hypervolume_trace_matches_the_hypervolume_of_every_prefix(levels):
    rng = np.random.default_rng(10 + levels)
    for n in [1, 2, 5, 60, 400]:
        acc, mem = points(rng, n, levels)
        acc[rng.random(n) < 0.05] = 0.0                      # on the reference accuracy: adds nothing
        ref = float(mem.max()) * 1.1
        want = [ref_hypervolume(acc[:i + 1], mem[:i + 1], ref, normalize=True) for i in range(n)]
        got = pareto.hypervolume_trace(range(n), acc, mem, ref)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        assert pareto.hypervolume(acc, mem, ref, normalize=True) == pytest.approx(want[-1], rel=1e-12, abs=1e-15)
        assert pareto.hypervolume(acc, mem) == pytest.approx(ref_hypervolume(acc, mem, ref), rel=1e-12)


@pytest.mark.parametrize("levels", [2, 3, 8, 1000])
def test_hypervolume_trace_with_replaced_scores_matches_the_definition(levels):
    """Scores replaced as promotions replace them (same memory, another accuracy, better or
    worse), and points moved anywhere: steps of the front removed, points they dominated
    exposed again, equal points, points on or beyond the reference."""
    rng = np.random.default_rng(20 + levels)
    for n, keys_n in [(2, 1), (8, 3), (80, 30), (600, 200)]:
        keys = rng.integers(0, keys_n, n)
        acc, mem = points(rng, n, levels)
        first_mem = {}
        for i, k in enumerate(keys.tolist()):                 # most replacements keep the trial's memory
            if k in first_mem and rng.random() < 0.7:
                mem[i] = first_mem[k]
            first_mem.setdefault(k, mem[i])
        acc[rng.random(n) < 0.05] = 0.0
        ref = float(np.sort(mem)[-max(1, n // 10)]) * 1.01     # some points beyond the reference memory
        got = pareto.hypervolume_trace(keys, acc, mem, ref)
        np.testing.assert_allclose(got, ref_trace(keys, acc, mem, ref), rtol=1e-9, atol=1e-12)


def test_hypervolume_trace_falls_when_a_step_is_replaced_by_a_worse_score():
    # trial 1 dominates trial 0; its promotion scores worse and trial 0 is on the front again
    got = pareto.hypervolume_trace([0, 1, 1], [0.5, 0.8, 0.2], [4.0, 2.0, 2.0], 10.0, normalize=False)
    assert got == pytest.approx([0.5 * 6, 0.8 * 8, 0.2 * 2 + 0.5 * 6])


def test_hypervolume_trace_outside_the_reference_and_unnormalised():
    acc = np.array([0.5, 0.6, -0.1, 0.7, 0.65, 0.7, 0.2])
    mem = np.array([2.0, 5.0, 1.0, 12.0, 3.0, 3.0, 0.5])    # 12 lies beyond the reference memory 10
    got = pareto.hypervolume_trace(range(7), acc, mem, 10.0, normalize=False)
    want = [ref_hypervolume(acc[:i + 1], mem[:i + 1], 10.0) for i in range(len(acc))]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the staircase: 0.2 from memory 0.5, 0.5 from 2, 0.7 from 3 (0.6 at 5 is dominated) up to 10
    assert got[-1] == pytest.approx(0.2 * 1.5 + 0.5 * 1.0 + 0.7 * 7.0)


def test_the_sweeps_scale_to_a_large_study():
    """5,000 points ranked, crowded and their hypervolume trace computed, with and without
    600 replaced scores (promotions of the best trials, as a study makes them), in well under
    a second each on an idle machine (the pairwise forms needed minutes for the history at
    2,000 points; re-sorting the front after every score, seconds at 5,000)."""
    rng = np.random.default_rng(3)
    acc, mem = rng.random(5000), rng.random(5000) * 1e6
    t = time.process_time()
    ranks = pareto.nondominated_ranks(acc, mem)
    pareto.crowding_distance(acc, mem, ranks)
    pareto.hypervolume_trace(range(5000), acc, mem, 1.1e6)
    assert time.process_time() - t < 2.0
    best = np.argsort(ranks, kind="stable")[:600]            # promoted: the best fronts, rescored
    rescored = rng.random(600)
    t = time.process_time()
    got = pareto.hypervolume_trace(np.r_[np.arange(5000), best], np.r_[acc, rescored], np.r_[mem, mem[best]], 1.1e6)
    assert time.process_time() - t < 2.0
    current = acc.copy()
    current[best] = rescored
    assert got[-1] == pytest.approx(ref_hypervolume(current, mem, 1.1e6, normalize=True), rel=1e-9)
    sample = rng.choice(5000, 400, replace=False)
    assert pareto.nondominated_ranks(acc[sample], mem[sample]).tolist() == ref_ranks(acc[sample], mem[sample]).tolist()
