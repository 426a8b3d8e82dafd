"""RIA (Zhang et al., 2024): relative importance times activations,
``(|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * (||X_j||_2)^a``.

Compared per output row as ALP uses it (``ria_per_matrix`` for the RIA paper's threshold).
For N:M, ``reallocation`` permutes input channels before grouping (see :mod:`lib.permutation`).
"""

from __future__ import annotations

import torch

from ..masks import SparsityPattern
from ..permutation import permuted_nm_mask
from . import LayerStats, Pruner, PrunerOptions, register, select


def ria_score(W: torch.Tensor, col_sq_norm: torch.Tensor, a: float) -> torch.Tensor:
    """RIA score, fp32 ``(C_out, C_in)``; ``col_sq_norm`` ``(C_in,)`` is ``||X_j||^2``."""
    A = W.abs().float()
    col_sum = A.sum(dim=0, keepdim=True)  # sum over output rows k of |W_kj|
    row_sum = A.sum(dim=1, keepdim=True)  # sum over inputs k of |W_ik|
    relative = A / col_sum.clamp_min(1e-30) + A / row_sum.clamp_min(1e-30)
    return relative * col_sq_norm.to(W.device).sqrt().pow(a).unsqueeze(0)


def ria_prune(W: torch.Tensor, stats: LayerStats, sparsity: float, pattern: SparsityPattern, options: PrunerOptions):
    score = ria_score(W, stats.col_sq_norm, options.ria_a)
    if pattern.is_nm and options.reallocation:
        mask = permuted_nm_mask(score, pattern.n, pattern.m, lsa=options.lsa)
    else:
        mask = select(score, sparsity, pattern, "matrix" if options.ria_per_matrix else "row")
    return W.masked_fill(mask.to(W.device), 0)


RIA = register(Pruner(name="ria", needs=frozenset({"col_sq_norm"}), prune=ria_prune))
