"""Mask selection from importance scores. ``True`` in a mask means *pruned*.

All selections use a stable sort, so ties are broken deterministically (lower column
index pruned first), and are vectorised over rows and groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# How "N:M" reads: keep N of every M (this tool's convention) or prune N of every M (the
# reference CLIs: Wanda, SparseGPT, OWL, DLP, AlphaPruning). Both agree only when M = 2N.
NM_READINGS = ("keep", "prune")


@dataclass(frozen=True)
class SparsityPattern:
    """``unstructured`` (``n = m = None``) or ``n:m`` (keep ``n`` of every ``m`` consecutive inputs)."""

    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    @property
    def sparsity(self) -> float | None:
        """Fraction of weights an ``n:m`` pattern prunes, ``(m - n) / m``; ``None`` when unstructured."""
        return (self.m - self.n) / self.m if self.is_nm else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


def parse_sparsity_type(text: str, reading: str | None = None) -> SparsityPattern:
    """``"unstructured"`` or ``"N:M"`` with ``0 < N < M`` -> :class:`SparsityPattern` (which keeps ``n``).

    ``reading``: ``"keep"`` (keep N of every M) or ``"prune"`` (prune N of every M, as the
    reference CLIs read it). Without one, only patterns both readings agree on (``M = 2N``) are
    accepted, so an ``N:M`` never silently means the other thing.
    """
    if reading is not None and reading not in NM_READINGS:
        raise ValueError(f"--nm_reading {reading!r}: choose among {', '.join(NM_READINGS)}")
    if text == "unstructured":
        if reading is not None:
            raise ValueError("--nm_reading says how to read an N:M --sparsity_type: drop it for unstructured")
        return SparsityPattern()
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match or not 0 < int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--sparsity_type {text!r}: use 'unstructured' or N:M with 0 < N < M, e.g. 2:4")
    n, m = int(match.group(1)), int(match.group(2))
    if reading is None and 2 * n != m:
        raise ValueError(
            f"--sparsity_type {text} is ambiguous: keep {n} of every {m} ({(m - n) / m:.0%} sparse) here, prune {n} "
            f"of every {m} ({n / m:.0%} sparse) in the reference CLIs; add --nm_reading keep or --nm_reading prune"
        )
    return SparsityPattern(m - n, m) if reading == "prune" else SparsityPattern(n, m)


def check_nm_target(pattern: SparsityPattern, sparsity: float, *, blocksize: int | None = None) -> None:
    """Raise ``ValueError`` unless ``sparsity`` is what the ``n:m`` ``pattern`` prunes and, for a
    column-blocked kernel (SparseGPT) of ``blocksize`` columns, ``m`` divides the block."""
    if not pattern.is_nm:
        return
    if abs(sparsity - pattern.sparsity) > 1e-4:  # 4 decimals suffice for e.g. 2:3
        raise ValueError(
            f"--sparsity_type {pattern} (keep {pattern.n} of every {pattern.m}) prunes {pattern.sparsity:.4g} "
            f"of the weights: use --sparsity_ratio {pattern.sparsity:.4g}"
        )
    if blocksize is not None and blocksize % pattern.m:
        raise ValueError(f"--blocksize {blocksize} must be a multiple of M = {pattern.m} for N:M groups")


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
