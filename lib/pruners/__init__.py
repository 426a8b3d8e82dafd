"""Pruners: each turns a weight and its calibration statistics into a mask.

A pruner is a :class:`Pruner` with ``needs`` (the statistics the sequential engine must
collect: ``"col_sq_norm"`` for ``||X_j||^2``; empty for data-free pruners) and
``mask(W, stats, sparsity, pattern)`` returning a bool mask (``True`` = pruned) of
``W``'s shape. New pruners register themselves in :data:`PRUNERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..masks import SparsityPattern, prune_lowest_nm, prune_lowest_per_row, rows_pruned_count


@dataclass(frozen=True)
class LayerStats:
    """Calibration statistics of one linear layer's input (fields ``None`` when not collected)."""

    col_sq_norm: torch.Tensor | None = None  # (C_in,) fp32, sum over tokens of x_j^2


@dataclass(frozen=True)
class Pruner:
    """A named pruning rule: the statistics it needs and its mask function."""

    name: str
    needs: frozenset[str]
    mask: Callable[[torch.Tensor, LayerStats, float, SparsityPattern], torch.Tensor]


def select_per_row(score: torch.Tensor, sparsity: float, pattern: SparsityPattern) -> torch.Tensor:
    """Per-output-row comparison group (Wanda, RIA as ALP uses it) or N:M groups."""
    if pattern.is_nm:
        return prune_lowest_nm(score, pattern.n, pattern.m)
    return prune_lowest_per_row(score, rows_pruned_count(score.shape[1], sparsity))


PRUNERS: dict[str, Pruner] = {}


def register(pruner: Pruner) -> Pruner:
    """Add ``pruner`` to :data:`PRUNERS` under its name."""
    PRUNERS[pruner.name] = pruner
    return pruner


from . import wanda  # noqa: E402,F401  (registers itself)
