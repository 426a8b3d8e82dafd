"""The measured cost table of ``--allocation dp`` and its on-disk cache.

``c[l][k]``: mean KL(dense || pruned) per held-out position (nats) when block ``l`` alone is
pruned at level ``k`` with the run's pruner and every other block is dense. The dense hidden
states entering every block are cached once (:class:`~lib.searched.forward.HeldOut`), so a
cost runs only blocks ``l..L-1``: a level costs ``sum_l (L - l) ~ L^2 / 2`` block forwards,
about ``L / 2`` full forwards of the held-out tokens.

The cache is a JSON file ``{"metadata": {...}, "costs": {block: {pruned weights: cost}}}``
keyed by the number of weights the level prunes in the block (``s_l * n_l``, 3 decimals), not
by level, so runs at other targets reuse every grid point they share (e.g. 0.6 and 0.7 with a
step of 0.02 on equal blocks share six of eleven levels). A cached point within one weight of
the one asked for is taken as the same point (a mask one weight apart in a whole block: the
rounding of ``Delta`` to whole weights makes such near-misses between targets).
A cache whose metadata differs from the run's is refused, never silently mixed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm.auto import tqdm

from ..utils import atomic_write_json
from .forward import HeldOut
from .levels import LevelGrid

COST_FORMAT = 1


class CostCacheMismatch(ValueError):
    """A cost table exists but was measured for another model or other settings."""


def ratio_key(ratio: float, size: int) -> str:
    """The cache key of sparsity ``ratio`` in a block of ``size`` weights: the pruned count."""
    return f"{ratio * size:.3f}"


def lookup(row: dict[str, float], ratio: float, size: int) -> float | None:
    """The cached cost of ``ratio`` in ``row`` (``{key: cost}``), matched within one weight."""
    if (key := ratio_key(ratio, size)) in row:
        return row[key]
    count = ratio * size
    near = [(abs(float(k) - count), k) for k in row if abs(float(k) - count) <= 1.0]
    return row[min(near)[1]] if near else None


def default_cost_path(root: Path, metadata: dict) -> Path:
    """``root/searched/<model>/dp_<pruner>_<12 hex of the metadata>.json``."""
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / "searched" / metadata["model"].replace("/", "--") / f"dp_{metadata['pruner']}_{digest}.json"


def load_costs(path: Path, metadata: dict) -> dict[int, dict[str, float]]:
    """``{block: {ratio key: cost}}`` from ``path`` (empty when absent); raises
    :class:`CostCacheMismatch` naming every field that differs from ``metadata``."""
    if not path.exists():
        return {}
    try:
        stored = json.loads(path.read_text())
        cached, costs = stored["metadata"], stored["costs"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"dp cost cache {path} is unreadable ({err}); delete it to measure again") from err
    wanted = {**metadata, "format": COST_FORMAT}
    diffs = [f"{k}: cache {cached.get(k)!r} vs run {v!r}" for k, v in wanted.items() if cached.get(k) != v]
    if diffs:
        raise CostCacheMismatch(
            f"dp cost cache {path} was measured for other settings ({'; '.join(diffs)}); "
            "point --cost_cache elsewhere or delete it"
        )
    return {int(b): dict(row) for b, row in costs.items()}


def save_costs(path: Path, metadata: dict, costs: dict[int, dict[str, float]]) -> Path:
    """Write the table atomically (the whole file, so a crash leaves the previous one)."""
    body = {"metadata": {**metadata, "format": COST_FORMAT}, "costs": {str(b): row for b, row in sorted(costs.items())}}
    return atomic_write_json(path, body)


def missing_entries(costs: dict[int, dict[str, float]], grid: LevelGrid) -> list[tuple[int, int]]:
    """``(block, level)`` pairs of ``grid`` without a cached cost."""
    return [
        (b, k)
        for b in range(len(grid.sizes))
        for k in grid.levels_of(b)
        if lookup(costs.get(b, {}), grid.ratio(b, k), grid.sizes[b]) is None
    ]


def measure_costs(held_out: HeldOut, grid: LevelGrid, entries, weights, *, save=None) -> dict[int, dict[str, float]]:
    """Measure ``entries`` ``[(block, level)]``: block ``l`` at ``grid.ratio(l, k)`` with
    ``weights(l, ratio)`` swapped in, from the cached dense states entering ``l``.
    ``save(costs)`` is called after each block so an interrupted run keeps what it measured."""
    costs: dict[int, dict[str, float]] = {}
    by_block: dict[int, list[int]] = {}
    for b, k in entries:
        by_block.setdefault(b, []).append(k)
    bar = tqdm(total=len(entries), desc="dp costs", leave=False)
    for b, levels in sorted(by_block.items()):
        for k in levels:
            ratio = grid.ratio(b, k)
            pruned = weights(b, ratio)
            cost = held_out.kl_from(
                b, held_out.dense_states[b], lambda index, b=b, pruned=pruned: pruned if index == b else None
            )
            costs.setdefault(b, {})[ratio_key(ratio, grid.sizes[b])] = cost
            bar.update()
        if save is not None:
            save(costs)
    bar.close()
    return costs


def cost_rows(costs: dict[int, dict[str, float]], grid: LevelGrid) -> list[dict[int, float]]:
    """The table as :func:`lib.searched.dp.dp_levels` takes it: ``rows[l][k]``."""
    return [
        {k: lookup(costs[b], grid.ratio(b, k), grid.sizes[b]) for k in grid.levels_of(b)}
        for b in range(len(grid.sizes))
    ]
