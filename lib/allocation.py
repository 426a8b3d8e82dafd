"""Per-block sparsity allocations: pure formulas on per-block scores, no model code.

Each function returns an :class:`Allocation`: one sparsity per decoder block, checked so
that their mean equals the target, plus a record of any clamping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

ALP_MIN_SPARSITY = 0.01  # the reference sets a non-positive block sparsity to this


@dataclass
class Allocation:
    """``ratios[l]`` is the sparsity of decoder block ``l``; ``clamped`` lists ``(l, before, after)``."""

    name: str
    ratios: list[float]
    clamped: list[tuple[int, float, float]] = field(default_factory=list)


def uniform(num_blocks: int, sparsity: float) -> Allocation:
    """``s_l = s`` for every block."""
    return Allocation("uniform", [float(sparsity)] * num_blocks)


def alp(block_scores: torch.Tensor, sparsity: float, alpha: float) -> Allocation:
    """ALP Stage B. ``block_scores`` ``(L,)``: ``Z_l = sum_i |z_i|`` of each block's standardised
    sensitivities (:func:`lib.sensitivity.block_summary`).

    1. ``r_l = 1 - Z_l / sum_m Z_m``
    2. ``d_l = (r_l - min r) / (max r - min r) * 2 alpha``
    3. keep ``k_l = d_l - mean(d) + (1 - s)``; ``s_l = 1 - k_l``; non-positive ``s_l`` -> 0.01.

    Equivalently ``s_l = s + 2 alpha (u_l - mean u)`` with ``u`` the min-max normalised ``Z``:
    lighter-tailed blocks (larger ``Z``) are pruned more. A block pushed to ``s_l >= 1`` is an
    error (lower ``alpha`` or the target), since it would delete the block.
    """
    Z = block_scores.double()
    r = 1.0 - Z / Z.sum()
    spread = r.max() - r.min()
    if spread <= 0:  # all blocks alike: no information to allocate with
        return uniform(len(Z), sparsity)
    d = (r - r.min()) / spread * (2.0 * alpha)
    keep = d - d.mean() + (1.0 - sparsity)
    ratios = (1.0 - keep).tolist()
    clamped = []
    for index, value in enumerate(ratios):
        if value <= 0:
            clamped.append((index, value, ALP_MIN_SPARSITY))
            ratios[index] = ALP_MIN_SPARSITY
        elif value >= 1:
            raise ValueError(
                f"ALP gives block {index} sparsity {value:.3f} >= 1 at target {sparsity} and alpha {alpha}; "
                "lower --alpha or --sparsity_ratio"
            )
    return Allocation("alp", ratios, clamped)
