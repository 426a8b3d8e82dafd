"""Where a block's pruned weights at each level come from during a search.

Statistics (Wanda / RIA column norms, SparseGPT Hessians) are collected with (the first
``nsamples`` of) the pruning calibration, by default on the DENSE model: every block sees dense
inputs. That is exact for ``--allocation dp`` (one block pruned, the others dense) and the usual
approximation of EvoPress's level database. The final pruning run sees the pruned outputs of the
earlier blocks instead, so a store can also be built "at a profile" (``ratios``): block ``l``'s
statistics are then collected on the outputs of blocks ``0..l-1`` pruned at that profile, as
the run would see them (``--evo_restats``).

- :class:`ScoreLevels` (magnitude, Wanda, RIA): each linear keeps the rank of every weight in
  its score order (per row or per matrix, ties broken as :func:`lib.pruners.select` breaks
  them); a level's mask is ``rank < count``, applied on the fly. No weight copies.
- :class:`DatabaseLevels` (SparseGPT, whose kept weights are updated): the pruned weights of
  every block at every level, computed once; in memory when they fit ``memory_bytes``, else in
  one safetensors file per block and level under a folder removed afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..arch import block_linears, decoder_blocks
from ..masks import SparsityPattern, rows_pruned_count
from ..pruners import PRUNERS, LayerStats, PrunerOptions
from ..pruners.ria import ria_score
from ..pruners.wanda import wanda_score
from ..sequential import run_sequential
from ..stats import InputStatistics
from .levels import LevelGrid

SCORE_PRUNERS = ("magnitude", "wanda", "ria")


def score_and_group(pruner: str, W: torch.Tensor, stats: LayerStats, options: PrunerOptions):
    """``(score (C_out, C_in) fp32, "row" | "matrix")`` exactly as the pruner ranks weights."""
    if pruner == "magnitude":
        return W.abs().float(), "matrix"
    if pruner == "wanda":
        return wanda_score(W, stats.col_sq_norm), "row"
    if pruner == "ria":
        return ria_score(W, stats.col_sq_norm, options.ria_a), "matrix" if options.ria_per_matrix else "row"
    raise ValueError(f"{pruner} has no score order; use DatabaseLevels")


def score_ranks(score: torch.Tensor, group: str) -> torch.Tensor:
    """Rank of each entry in the stable ascending order of ``score`` within its row (int16 when
    the row fits, else int32) or the whole matrix (int32): entry pruned at ``count`` iff rank < count."""
    if group == "row":
        order = torch.argsort(score, dim=1, stable=True)
        dtype = torch.int16 if score.shape[1] <= torch.iinfo(torch.int16).max else torch.int32
        positions = torch.arange(score.shape[1], dtype=dtype).expand_as(order)
        return torch.empty_like(order, dtype=dtype).scatter_(1, order, positions)
    order = torch.argsort(score.flatten(), stable=True)
    ranks = torch.empty(score.numel(), dtype=torch.int32)
    ranks[order] = torch.arange(score.numel(), dtype=torch.int32)
    return ranks.view_as(score)


def _pruned_count(shape, group: str, ratio: float) -> int:
    return rows_pruned_count(shape[1], ratio) if group == "row" else int(shape[0] * shape[1] * ratio)


def _block_statistics(model, calib_ids, needs, micro_batch: int, on_block, outputs_weights=None) -> None:
    """Call ``on_block(index, block, stats)`` with each block's input statistics. The inputs of
    block ``l + 1`` are block ``l``'s outputs computed with ``outputs_weights(l)`` swapped in
    (its linears pruned at a profile, say; called after ``on_block``), or with the dense block
    when None. The dense weights are put back after each block's outputs."""
    swapped: dict[str, torch.Tensor] = {}

    def step(index, block, forward_all):
        linears = block_linears(block)
        stats = {name: LayerStats() for name in linears}
        if needs:
            with InputStatistics(linears, needs) as collected:
                forward_all()
            hessians = collected.hessians()
            stats = {n: LayerStats(col_sq_norm=collected.col_sq_norm.get(n), hessian=hessians.get(n)) for n in linears}
        on_block(index, block, stats)
        if outputs_weights is not None:
            for name, w in outputs_weights(index).items():
                swapped[name] = linears[name].weight.data
                linears[name].weight.data = w

    def put_back(index, hidden):
        linears = block_linears(decoder_blocks(model)[index])
        for name, w in swapped.items():
            linears[name].weight.data = w
        swapped.clear()

    if needs:
        run_sequential(model, calib_ids, step, micro_batch=micro_batch, after_block=put_back, desc="search statistics")
    else:  # no statistics (magnitude): nothing depends on the inputs
        for index, block in enumerate(decoder_blocks(model)):
            on_block(index, block, {name: LayerStats() for name in block_linears(block)})


class ScoreLevels:
    """Per-block score ranks of a score pruner; :meth:`weights` masks the dense weights on the fly.
    ``ratios`` (one per block): statistics collected at that profile, else on the dense model."""

    def __init__(
        self,
        model: nn.Module,
        pruner: str,
        calib_ids,
        *,
        options: PrunerOptions,
        micro_batch: int,
        ratios: list[float] | None = None,
    ):
        self.ranks: list[dict[str, tuple[torch.Tensor, str]]] = []
        self.linears = []

        def keep(index, block, stats):
            linears = block_linears(block)
            entry = {}
            for name, lin in linears.items():
                score, group = score_and_group(pruner, lin.weight, stats[name], options)
                entry[name] = (score_ranks(score.cpu(), group), group)
            self.ranks.append(entry)
            self.linears.append(linears)

        at_profile = None if ratios is None else (lambda index: self.weights(index, ratios[index]))
        _block_statistics(model, calib_ids, PRUNERS[pruner].needs, micro_batch, keep, at_profile)

    def weights(self, block: int, ratio: float) -> dict[str, torch.Tensor]:
        """The linears of ``block`` pruned at ``ratio`` (new tensors, model dtype and device)."""
        out = {}
        for name, (ranks, group) in self.ranks[block].items():
            W = self.linears[block][name].weight
            count = _pruned_count(W.shape, group, ratio)
            out[name] = W.masked_fill((ranks < count).to(W.device), 0)
        return out

    def close(self) -> None:
        """Nothing to release beyond memory."""


def database_bytes(model: nn.Module, grid: LevelGrid) -> int:
    """Bytes of a SparseGPT level database for ``grid``: every admissible level of every block."""
    from ..arch import decoder_blocks

    total = 0
    for index, block in enumerate(decoder_blocks(model)):
        per_level = sum(lin.weight.numel() * lin.weight.element_size() for lin in block_linears(block).values())
        total += per_level * len(grid.levels_of(index))
    return total


class DatabaseLevels:
    """Pruned weights of every block at every level of ``grid`` (SparseGPT: updates kept weights).
    ``ratios`` (grid points, one per block): statistics collected at that profile, else dense."""

    def __init__(
        self,
        model: nn.Module,
        pruner: str,
        calib_ids,
        grid: LevelGrid,
        *,
        pattern: SparsityPattern,
        options: PrunerOptions,
        micro_batch: int,
        memory_bytes: int,
        folder: str | Path | None = None,
        ratios: list[float] | None = None,
    ):
        size = database_bytes(model, grid)
        self.in_memory = size <= memory_bytes
        self.memory: dict[tuple[int, float], dict[str, torch.Tensor]] = {}
        self.folder = None
        where = "in memory"
        if not self.in_memory:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix="level-db-", dir=folder))
            where = f"on disk in {self.folder}"
        print(
            f"[searched] {pruner} level database: {sum(len(grid.levels_of(b)) for b in range(len(grid.sizes)))} "
            f"block levels, {size / 2**30:.2f} GiB {where} (limit {memory_bytes / 2**30:.2f} GiB in memory)"
        )
        self.grid, self.keys = grid, {}
        prune = PRUNERS[pruner].prune
        options = dataclasses.replace(options, quant=None)  # the search ranks pruning alone; --wbits comes after
        self.devices: dict[int, torch.device] = {}

        def build(index, block, stats):
            self.devices[index] = next(block.parameters()).device
            for level in grid.levels_of(index):
                ratio = grid.ratio(index, level)
                linears = block_linears(block)
                pruned = {n: prune(lin.weight.data, stats[n], ratio, pattern, options) for n, lin in linears.items()}
                self._put(index, ratio, pruned)

        try:
            at_profile = None if ratios is None else (lambda index: self.weights(index, ratios[index]))
            _block_statistics(model, calib_ids, PRUNERS[pruner].needs, micro_batch, build, at_profile)
        except BaseException:
            self.close()
            raise

    def _key(self, block: int, ratio: float) -> str:
        return f"b{block}_r{ratio:.9f}"

    def _put(self, block: int, ratio: float, weights: dict[str, torch.Tensor]) -> None:
        if self.in_memory:
            self.memory[(block, round(ratio, 9))] = weights
        else:
            from safetensors.torch import save_file

            tensors = {n: w.contiguous().cpu() for n, w in weights.items()}
            save_file(tensors, self.folder / f"{self._key(block, ratio)}.safetensors")

    def weights(self, block: int, ratio: float) -> dict[str, torch.Tensor]:
        """The stored pruned linears of ``block`` at ``ratio`` (a grid point)."""
        if self.in_memory:
            return self.memory[(block, round(ratio, 9))]
        from safetensors.torch import load_file

        stored = load_file(self.folder / f"{self._key(block, ratio)}.safetensors")
        return {n: w.to(self.devices[block]) for n, w in stored.items()}

    def close(self) -> None:
        """Delete the on-disk database (if any)."""
        if self.folder is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.folder)
            self.folder = None
        self.memory = {}
