"""Non-dominated rows of a criteria table (every criterion minimised).

Row a dominates row b when a is no worse in every criterion and better in one. Under any objective that is
monotone in the criteria — one criterion, a lexicographic order, a weighted sum with non-negative weights,
an ε-constraint — the optimum lies on the first non-dominated front, and the j-th best plan within the first
j fronts; constraints that only bound criteria (memory ≤ the GPU, throughput ≥ a target) keep this true.
So the solver hands CP-SAT only the first k fronts, which is exact for its top-k answers.

The criteria are one or two fine-grained columns (step time, memory) and a few coarse integer columns
(simplicity, GPU count). For each combination ℓ of coarse values, a row with coarse values exactly ℓ is
dominated by a row with coarse values ≤ ℓ and ≠ ℓ that is no worse in the fine columns, or by a row with
the same coarse values that is no worse in the fine columns and better in one — two prefix-minimum sweeps
over the rows sorted by the first fine column, O(n log n) per combination.
"""

from __future__ import annotations

import numpy as np


def first_fronts(fine: np.ndarray, coarse: np.ndarray, k: int = 1, groups: np.ndarray | None = None) -> np.ndarray:
    """Mask of the rows on the first ``k`` non-dominated fronts. ``fine``: (n, 1 or 2) integers; ``coarse``:
    (n, q) small integers (q may be 0); ``groups``: rows of different groups are incomparable (fronts are
    taken within each group)."""
    n = len(fine)
    keep = np.zeros(n, dtype=bool)
    remaining = np.arange(n)
    for _ in range(k):
        if len(remaining) == 0:
            break
        front = remaining[nondominated(fine[remaining], coarse[remaining],
                                       None if groups is None else groups[remaining])]
        keep[front] = True
        remaining = np.setdiff1d(remaining, front, assume_unique=True)
    return keep


def nondominated(fine: np.ndarray, coarse: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Mask of the non-dominated rows (module docstring), within ``groups`` when given."""
    n = len(fine)
    dominated = np.zeros(n, dtype=bool)
    if n == 0:
        return ~dominated
    groups = np.zeros(n, dtype=np.int64) if groups is None else np.unique(groups, return_inverse=True)[1].reshape(-1)
    levels = np.unique(coarse, axis=0) if coarse.shape[1] else np.zeros((1, 0), dtype=np.int64)
    for level in levels:
        own = np.all(coarse == level, axis=1) if coarse.shape[1] else np.ones(n, dtype=bool)
        lower = np.all(coarse <= level, axis=1) & ~own if coarse.shape[1] else np.zeros(n, dtype=bool)
        rows = np.flatnonzero(own)
        if lower.any():
            dominated[rows] |= _covered(fine[lower], groups[lower], fine[rows], groups[rows], strict=False)
        dominated[rows] |= _covered(fine[rows], groups[rows], fine[rows], groups[rows], strict=True)
    return ~dominated


_NONE = np.iinfo(np.int64).max


def _covered(by: np.ndarray, by_group: np.ndarray, rows: np.ndarray, row_group: np.ndarray, *, strict: bool) -> np.ndarray:
    """For each row of ``rows``: is some row of ``by`` in its group no worse in every fine column (and,
    when ``strict``, better in one)? Rows are keyed (group, first fine column) in one sorted int64 key;
    the second column's prefix minimum restarts at each group (each later group is shifted below all
    earlier ones, so a running minimum never crosses a group boundary)."""
    span = int(max(by[:, 0].max(), rows[:, 0].max())) + 1
    key_by = by_group * span + by[:, 0]
    order = np.argsort(key_by, kind="stable")
    key_sorted = key_by[order]
    key = row_group * span + rows[:, 0]
    upto = np.searchsorted(key_sorted, key, side="right")
    start = np.searchsorted(key_sorted, row_group * span, side="left")  # the group's first row of `by`
    if by.shape[1] == 1:
        before = np.searchsorted(key_sorted, key, side="left")
        return (before > start) if strict else (upto > start)
    m_sorted = by[order, 1]
    shift = int(max(m_sorted.max(), rows[:, 1].max())) + 1
    group_sorted = by_group[order]
    prefix = np.minimum.accumulate(m_sorted - group_sorted * shift) + group_sorted * shift
    m = rows[:, 1]
    min_upto = np.where(upto > start, prefix[np.maximum(upto - 1, 0)], _NONE)
    if not strict:
        return min_upto <= m
    before = np.searchsorted(key_sorted, key, side="left")  # same group, time < t
    min_before = np.where(before > start, prefix[np.maximum(before - 1, 0)], _NONE)
    # rows of equal (group, time): the least memory among them
    keys, starts = np.unique(key_sorted, return_index=True)
    least = np.minimum.reduceat(m_sorted, starts)
    at = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
    same_least = np.where(keys[at] == key, least[at], _NONE)
    return (min_before <= m) | (same_least < m)
