"""Where a block's pruned weights at each level come from during a search.

Statistics (Wanda / RIA column norms, SparseGPT Hessians) are collected once on the DENSE
model with (the first ``nsamples`` of) the pruning calibration: every block sees dense inputs.
That is exact for ``--allocation dp`` (one block pruned, the others dense) and the usual
approximation of EvoPress's level database for the search; the final pruning run afterwards
still sees the pruned outputs of earlier blocks, as always.

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

from ..arch import block_linears
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


def _dense_statistics(model, calib_ids, needs, micro_batch: int, on_block) -> None:
    """Call ``on_block(index, block, stats)`` with each block's input statistics on the dense model."""

    def step(index, block, forward_all):
        linears = block_linears(block)
        stats = {name: LayerStats() for name in linears}
        if needs:
            with InputStatistics(linears, needs) as collected:
                forward_all()
            hessians = collected.hessians()
            stats = {n: LayerStats(col_sq_norm=collected.col_sq_norm.get(n), hessian=hessians.get(n)) for n in linears}
        on_block(index, block, stats)

    if needs:
        run_sequential(model, calib_ids, step, micro_batch=micro_batch, desc="search statistics")
    else:
        from ..arch import decoder_blocks

        for index, block in enumerate(decoder_blocks(model)):
            step(index, block, None)


class ScoreLevels:
    """Per-block score ranks of a score pruner; :meth:`weights` masks the dense weights on the fly."""

    def __init__(self, model: nn.Module, pruner: str, calib_ids, *, options: PrunerOptions, micro_batch: int):
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

        _dense_statistics(model, calib_ids, PRUNERS[pruner].needs, micro_batch, keep)

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
    """Pruned weights of every block at every level of ``grid`` (SparseGPT: updates kept weights)."""

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
            _dense_statistics(model, calib_ids, PRUNERS[pruner].needs, micro_batch, build)
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
