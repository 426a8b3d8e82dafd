"""``--allocation dp``: one level per block minimising the summed measured cost at exactly the target.

With ``c[l][k]`` the cost of pruning block ``l`` alone at level ``k`` (all other blocks dense),
the profile minimising ``sum_l c[l][k_l]`` subject to ``sum_l k_l = 0`` is found by a dynamic
programme over blocks whose state is the running level sum (a knapsack with equal-weight
items): ``V_l(t) = min_k V_{l-1}(t - k) + c[l][k]``. The additive model is the assumption;
the search of :mod:`lib.searched.evo` drops it.
"""

from __future__ import annotations

import math

from .levels import LevelGrid


def dp_levels(costs: list[dict[int, float]], grid: LevelGrid) -> tuple[tuple[int, ...], float]:
    """Optimal profile for ``costs[l][k]`` (a cost per admissible level of each block).

    Returns ``(levels, summed cost)``; ties go to the profile found first (lowest levels for the
    earliest blocks). ``O(L * S * K)`` with ``S`` the span of reachable level sums.
    """
    if len(costs) != len(grid.sizes):
        raise ValueError(f"{len(costs)} cost rows for {len(grid.sizes)} blocks")
    best = {0: 0.0}  # running level sum -> least cost so far
    choice: list[dict[int, int]] = []  # per block: running sum after it -> level chosen
    for block, row in enumerate(costs):
        missing = [k for k in grid.levels_of(block) if k not in row]
        if missing:
            raise ValueError(f"block {block} has no cost for levels {missing}")
        nxt, picked = {}, {}
        for total, value in sorted(best.items()):
            for k in grid.levels_of(block):
                candidate = value + row[k]
                if candidate < nxt.get(total + k, math.inf):
                    nxt[total + k], picked[total + k] = candidate, k
        best, choice = nxt, choice + [picked]
    if 0 not in best:
        raise ValueError("no profile of the grid sums to level 0")
    levels, total = [], 0
    for picked in reversed(choice):  # walk back from the final sum 0
        k = picked[total]
        levels.append(k)
        total -= k
    return tuple(reversed(levels)), best[0]
