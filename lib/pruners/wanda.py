"""Wanda (Sun et al., 2023): score ``|W_ij| * ||X_j||_2``, compared within each output row."""

from __future__ import annotations

import torch

from ..masks import SparsityPattern
from . import LayerStats, Pruner, register, select_per_row


def wanda_score(W: torch.Tensor, col_sq_norm: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(||X_j||^2)``: ``W`` ``(C_out, C_in)``, ``col_sq_norm`` ``(C_in,)`` -> fp32 ``(C_out, C_in)``."""
    return W.abs().float() * col_sq_norm.sqrt().to(W.device).unsqueeze(0)


def wanda_mask(W: torch.Tensor, stats: LayerStats, sparsity: float, pattern: SparsityPattern) -> torch.Tensor:
    """Prune the lowest Wanda scores of every row (or of every N:M group)."""
    return select_per_row(wanda_score(W, stats.col_sq_norm), sparsity, pattern)


WANDA = register(Pruner(name="wanda", needs=frozenset({"col_sq_norm"}), mask=wanda_mask))
