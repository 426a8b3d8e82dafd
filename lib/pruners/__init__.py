"""Pruners: each turns a weight and its calibration statistics into a pruned weight.

A :class:`Pruner` declares ``needs`` (the statistics the sequential engine must collect:
``"col_sq_norm"`` for ``||X_j||^2``, ``"hessian"`` for ``X X^T``; empty for data-free
pruners) and ``prune(W, stats, sparsity, pattern, options)`` returning the pruned ``W``
(same shape and dtype; pruned entries exactly 0). A pruner that ``quantizes_jointly``
applies ``options.quant`` (GPTQ) itself; for the others the engine quantizes afterwards
with the mask held fixed (:mod:`lib.prune`). Score-based pruners are built with
:func:`score_pruner` from a score function and a comparison group. New pruners register
themselves in :data:`PRUNERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..masks import SparsityPattern, prune_lowest_nm, prune_lowest_per_matrix, prune_lowest_per_row, rows_pruned_count
from ..quant import QuantConfig


@dataclass(frozen=True)
class LayerStats:
    """Calibration statistics of one linear layer's input (fields ``None`` when not collected)."""

    col_sq_norm: torch.Tensor | None = None  # (C_in,) fp32, sum over tokens of x_j^2
    hessian: torch.Tensor | None = None  # (C_in, C_in) fp32, 2/n sum_tokens x x^T
    col_mean: torch.Tensor | None = None  # (C_in,) fp32, mean over tokens of x_j (DSnoT)
    tokens: int | None = None  # calibration tokens the statistics were summed over
    sequences: int | None = None  # calibration sequences those tokens came in


@dataclass(frozen=True)
class PrunerOptions:
    """Pruner hyper-parameters (defaults are the reference ones; the CLI sets them)."""

    ria_a: float = 0.5  # RIA activation exponent
    ria_per_matrix: bool = False  # RIA paper's per-matrix threshold instead of ALP's per-row one
    reallocation: bool = False  # RIA channel permutation for N:M
    lsa: bool = False  # refine the permutation with a linear-sum assignment
    blocksize: int = 128  # SparseGPT column block
    percdamp: float = 0.01  # SparseGPT / GPTQ damping, fraction of the mean Hessian diagonal
    quant: QuantConfig | None = None  # quantize after (or, for SparseGPT, while) pruning


@dataclass(frozen=True)
class Pruner:
    """A named pruning rule: the statistics it needs and its pruning function."""

    name: str
    needs: frozenset[str]
    prune: Callable[[torch.Tensor, LayerStats, float, SparsityPattern, PrunerOptions], torch.Tensor]
    quantizes_jointly: bool = False  # applies options.quant inside its own sweep (SparseGPT)


def select(score: torch.Tensor, sparsity: float, pattern: SparsityPattern, group: str) -> torch.Tensor:
    """Mask (``True`` = pruned) of the lowest scores: per output ``row``, per ``matrix``, or N:M groups."""
    if pattern.is_nm:
        return prune_lowest_nm(score, pattern.n, pattern.m)
    if group == "row":
        return prune_lowest_per_row(score, rows_pruned_count(score.shape[1], sparsity))
    return prune_lowest_per_matrix(score, int(score.numel() * sparsity))


def score_pruner(name: str, needs: set[str], score: Callable, group: Callable[[PrunerOptions], str]) -> Pruner:
    """A pruner that zeroes the lowest ``score(W, stats, options)`` within ``group(options)``."""

    def prune(W, stats, sparsity, pattern, options):
        mask = select(score(W, stats, options), sparsity, pattern, group(options))
        return W.masked_fill(mask.to(W.device), 0)

    return Pruner(name=name, needs=frozenset(needs), prune=prune)


PRUNERS: dict[str, Pruner] = {}


def register(pruner: Pruner) -> Pruner:
    """Add ``pruner`` to :data:`PRUNERS` under its name."""
    PRUNERS[pruner.name] = pruner
    return pruner


from . import magnitude, ria, sparsegpt, wanda  # noqa: E402,F401  (each registers itself)
