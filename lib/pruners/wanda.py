"""Wanda (Sun et al., 2023): score ``|W_ij| * ||X_j||_2``, compared within each output row."""

from __future__ import annotations

import torch

from . import register, score_pruner


def wanda_score(W: torch.Tensor, col_sq_norm: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(||X_j||^2)``: ``W`` ``(C_out, C_in)``, ``col_sq_norm`` ``(C_in,)`` -> fp32 ``(C_out, C_in)``."""
    return W.abs().float() * col_sq_norm.sqrt().to(W.device).unsqueeze(0)


WANDA = register(
    score_pruner(
        "wanda", {"col_sq_norm"}, lambda W, stats, options: wanda_score(W, stats.col_sq_norm), lambda options: "row"
    )
)
