"""Mask selection from importance scores. ``True`` in a mask means *pruned*.

All selections use a stable sort, so ties are broken deterministically (lower column
index pruned first), and are vectorised over rows and groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparsityPattern:
    """``unstructured`` (``n = m = None``) or ``n:m`` (keep ``n`` of every ``m`` consecutive inputs)."""

    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


def parse_sparsity_type(text: str) -> SparsityPattern:
    """``"unstructured"`` or ``"N:M"`` with ``0 < N < M`` -> :class:`SparsityPattern`."""
    if text == "unstructured":
        return SparsityPattern()
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match or not 0 < int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--sparsity_type {text!r}: use 'unstructured' or N:M with 0 < N < M, e.g. 2:4")
    return SparsityPattern(int(match.group(1)), int(match.group(2)))


def prune_lowest_per_row(score: torch.Tensor, count: int) -> torch.Tensor:
    """Mask ``(C_out, C_in)`` pruning the ``count`` lowest-scoring entries of every row."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    if count > 0:
        order = torch.argsort(score, dim=1, stable=True)
        mask.scatter_(1, order[:, :count], True)
    return mask


def prune_lowest_nm(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Mask ``(C_out, C_in)`` keeping the ``n`` highest of every ``m`` consecutive entries per row."""
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"N:M with M={m} needs the input width {cols} to be a multiple of {m}")
    groups = score.reshape(rows, cols // m, m)  # (C_out, C_in/M, M)
    order = torch.argsort(groups, dim=-1, stable=True)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order[..., : m - n], True)
    return mask.reshape(rows, cols)


def rows_pruned_count(c_in: int, sparsity: float) -> int:
    """Weights pruned per row at ``sparsity``: ``floor(C_in * s)`` as in the reference code."""
    return int(c_in * sparsity)


def prune_lowest_per_matrix(score: torch.Tensor, count: int) -> torch.Tensor:
    """Mask pruning the ``count`` lowest-scoring entries of the whole matrix (one threshold)."""
    flat = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if count > 0:
        order = torch.argsort(score.flatten(), stable=True)
        flat[order[:count]] = True
    return flat.view_as(score)
