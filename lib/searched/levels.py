"""The level grid of the searched allocations: steps of an equal number of weights.

Block ``l`` (``n_l`` prunable weights) at integer level ``k`` has sparsity
``s_l(k) = s + k * Delta / n_l``, so it prunes ``s * n_l + k * Delta`` weights. Moving one
level down in one block and one up in another leaves the total pruned count
``s * sum_l n_l + Delta * sum_l k_l`` unchanged, whatever the block sizes: a profile keeps the
target exactly when ``sum_l k_l = 0``. Each block's levels are limited to
``[lo_l, hi_l] ⊆ [-K, K]`` so that its sparsity stays in ``[0, high]``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..allocation import MAX_SPARSITY


@dataclass(frozen=True)
class LevelGrid:
    """``sizes[l]``: prunable weights of block ``l``; ``step``: ``Delta`` in weights; ``lo[l] <= k <= hi[l]``."""

    sizes: tuple[int, ...]
    target: float
    step: int
    lo: tuple[int, ...]
    hi: tuple[int, ...]

    def ratio(self, block: int, level: int) -> float:
        """``s + k * Delta / n_l``: the sparsity of ``block`` at ``level``."""
        if not self.lo[block] <= level <= self.hi[block]:
            raise ValueError(f"level {level} of block {block} lies outside [{self.lo[block]}, {self.hi[block]}]")
        return self.target + level * self.step / self.sizes[block]

    def ratios(self, levels) -> list[float]:
        """One sparsity per block for the profile ``levels`` (``(L,)`` ints summing to 0)."""
        if len(levels) != len(self.sizes):
            raise ValueError(f"{len(levels)} levels for {len(self.sizes)} blocks")
        if sum(levels) != 0:
            raise ValueError(f"levels {list(levels)} sum to {sum(levels)}, not 0: the target would move")
        return [self.ratio(b, k) for b, k in enumerate(levels)]

    def levels_of(self, block: int) -> range:
        """Every admissible level of ``block``, ascending."""
        return range(self.lo[block], self.hi[block] + 1)

    def pruned_weights(self, levels) -> float:
        """Total weights pruned by the profile (``sum_l s_l * n_l``), for checks."""
        return sum(r * n for r, n in zip(self.ratios(levels), self.sizes, strict=True))


def level_grid(sizes, target: float, *, step_fraction: float, max_level: int, high: float = MAX_SPARSITY) -> LevelGrid:
    """The grid around ``target`` with ``Delta = round(step_fraction * mean(sizes))`` weights and
    at most ``max_level`` steps each way, each block's levels limited to ``0 <= s_l(k) <= high``."""
    if not 0 < step_fraction < 1 or max_level < 1:
        raise ValueError(f"level step {step_fraction} must lie in (0, 1) and the level range {max_level} be >= 1")
    if not 0 <= target <= high:
        raise ValueError(f"target sparsity {target} lies outside [0, {high}]")
    sizes = tuple(int(n) for n in sizes)
    step = max(1, round(step_fraction * sum(sizes) / len(sizes)))
    # s + k Delta / n >= 0  <=>  k >= -s n / Delta;   s + k Delta / n <= high  <=>  k <= (high - s) n / Delta
    lo = tuple(max(-max_level, -math.floor(target * n / step + 1e-9)) for n in sizes)
    hi = tuple(min(max_level, math.floor((high - target) * n / step + 1e-9)) for n in sizes)
    return LevelGrid(sizes, float(target), step, lo, hi)


def mutate(levels, grid: LevelGrid, rng: random.Random, *, max_moves: int) -> tuple[int, ...]:
    """EvoPress's level switch: ``1..max_moves`` times, one level moves from one block to another
    (one block one step less sparse, another one step more), so ``sum_l k_l`` never changes.
    Returns a new profile (the input is not modified); deterministic for ``rng``'s state."""
    child = list(levels)
    for _ in range(rng.randint(1, max_moves)):
        down = [b for b in range(len(child)) if child[b] > grid.lo[b]]
        up = [b for b in range(len(child)) if child[b] < grid.hi[b]]
        down = [a for a in down if any(b != a for b in up)]
        if not down:
            break  # every block at a bound: nothing can move
        a = rng.choice(down)
        b = rng.choice([u for u in up if u != a])
        child[a] -= 1
        child[b] += 1
    return tuple(child)


def snap_to_grid(grid: LevelGrid, ratios) -> tuple[int, ...]:
    """The profile on ``grid`` nearest to per-block sparsities ``ratios`` (``(L,)``, e.g. a heuristic
    allocation's), keeping ``sum_l k_l = 0``: each block's real level ``(r_l - s) n_l / Delta``,
    clipped to its bounds, is rounded down; then the block furthest below its real level moves one
    up (or, when clipping left too many up, the one furthest above moves down) until the sum is 0."""
    if len(ratios) != len(grid.sizes):
        raise ValueError(f"{len(ratios)} ratios for {len(grid.sizes)} blocks")
    exact = [
        min(max((r - grid.target) * n / grid.step, lo), hi)
        for r, n, lo, hi in zip(ratios, grid.sizes, grid.lo, grid.hi, strict=True)
    ]
    levels = [math.floor(x + 1e-9) for x in exact]
    while sum(levels) != 0:
        up = sum(levels) < 0
        movable = [b for b in range(len(levels)) if (levels[b] < grid.hi[b] if up else levels[b] > grid.lo[b])]
        if not movable:
            raise ValueError("the level grid cannot hold this profile at the target: widen --evo_levels")
        # raise the block furthest below its real level, or lower the one furthest above it
        b = max(movable, key=lambda b: (exact[b] - levels[b]) if up else (levels[b] - exact[b]))
        levels[b] += 1 if up else -1
    return tuple(levels)
