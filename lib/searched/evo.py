"""``--allocation evo``: EvoPress's (1 + lambda) evolutionary search over level profiles
(Sieberling et al., "EvoPress: Accurate Dynamic Model Compression via Evolutionary Search",
ICML 2025), written from the paper.

Each generation: ``lambda`` offspring of the parent by level switches (:func:`levels.mutate`:
budget kept exactly); selection in stages: every offspring scored on the first (fewest)
tokens, the best ``survivors[0]`` re-scored on more tokens, ..., the last stage (the most
tokens) leaves one; it replaces the parent only when its fitness there is lower (elitism), so
the fitness on the last stage's tokens never rises. Fitness: mean KL(dense || pruned) of the
next-token distribution on held-out calibration tokens. Deterministic for a seed.

Cost model (measured, printed before the search): one generation costs
``lambda * T_1 + sum_i survivors_i * T_{i+1}`` token-forwards, ``T_i`` the tokens of stage ``i``;
a token-forward costs ``c`` seconds (the full model + the head twice, dense and pruned), and an
offspring runs only from the first block it changes. SmolLM2-135M, fp32, this 2-core CPU with
the ladder job sharing it: ``c`` = 8 ms (full forward, 2048 tokens) to 25 ms (a profile's
fitness under heavier load); the defaults (24 generations x 6,144 token-forwards = 147k) take
~20-30 min at 8-12 ms and more under heavy load; the run prints its own estimate from a timed
forward before it starts. A 7B model in bf16 on one GPU: ``c ~ 2 * 7e9 FLOP / (~1e15 FLOP/s *
~0.3 utilisation) ~ 0.05 ms``, so 400 generations x 64 offspring x 2,048 tokens in stage one
(+ 8 x 8,192 + 1 x 65,536) ~ 105M token-forwards ~ 1.5 h, or the default budget in ~8 s.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .levels import LevelGrid, mutate


@dataclass
class EvoResult:
    """The best profile found, its fitness on the last stage, and the history per generation."""

    levels: tuple[int, ...]
    fitness: float
    start_fitness: float
    history: list[dict] = field(default_factory=list)


def evolve(
    start,
    grid: LevelGrid,
    fitness: Callable[[tuple[int, ...], int], float],
    *,
    generations: int,
    offspring: int,
    survivors: tuple[int, ...],
    max_moves: int,
    seed: int,
    set_parent: Callable[[tuple[int, ...]], float] | None = None,
    progress: bool = True,
) -> EvoResult:
    """(1 + lambda) search from ``start`` (levels summing to 0).

    ``fitness(levels, stage)``: lower is better, ``stage`` in ``0..len(survivors)`` (more tokens
    with each stage; the last stage is the fitness optimised). ``survivors[i]``: offspring kept
    after stage ``i`` (decreasing); the last stage picks the best of those left. ``set_parent``
    (optional): called with each new parent, returns its last-stage fitness (lets ``fitness``
    cache the parent's states).
    """
    last = len(survivors)
    rng = random.Random(seed)
    parent = tuple(start)
    grid.ratios(parent)  # checks the start is on the grid and keeps the target
    score_parent = set_parent or (lambda levels: fitness(levels, last))
    best = start_fitness = score_parent(parent)
    history = []
    bar = tqdm(range(generations), desc="evo", leave=False, disable=not progress)
    for generation in bar:
        children = list(dict.fromkeys(mutate(parent, grid, rng, max_moves=max_moves) for _ in range(offspring)))
        children = [c for c in children if c != parent] or children
        scored = children
        for stage in range(last):
            ranked = sorted(scored, key=lambda c, s=stage: fitness(c, s))  # stable: ties keep birth order
            scored = ranked[: survivors[stage]]
        value, champion = min(((fitness(c, last), i), c) for i, c in enumerate(scored))  # ties: birth order
        value = value[0]
        accepted = value < best
        if accepted:
            parent, best = champion, value
            if set_parent is not None:
                set_parent(parent)
        history.append(
            {"generation": generation, "best_fitness": best, "offspring_fitness": value, "accepted": accepted}
        )
        bar.set_postfix(best=f"{best:.4f}")
    return EvoResult(parent, best, start_fitness, history)
