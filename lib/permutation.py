"""RIA channel permutation for N:M sparsity.

N:M keeps ``n`` of every ``m`` consecutive input channels. If the most important channels
happen to share a group, some of them must be pruned. Permuting input channels first
spreads them out: sort channels by summed score, deal them into the ``m`` positions of the
groups in zig-zag order, optionally refine each position with a linear-sum assignment, take
N:M in permuted order, and map the mask back to the original channel order.
"""

from __future__ import annotations

import torch

from .masks import prune_lowest_nm


def retained_nm_score(score: torch.Tensor, n: int, m: int) -> float:
    """Sum of the scores N:M keeps (top ``n`` of every ``m`` consecutive entries per row)."""
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    return float(groups.topk(n, dim=-1).values.sum(dtype=torch.float64))


def zigzag_permutation(score: torch.Tensor, m: int) -> torch.Tensor:
    """Channel order ``perm`` (``perm[p]`` = original channel at position ``p``) that deals
    channels, most important first, across the ``C_in / m`` groups: forward for position 0,
    backward for position 1, and so on, so every group gets one channel of every tier."""
    cols = score.shape[1]
    num_groups = cols // m
    order = torch.argsort(score.sum(dim=0), descending=True, stable=True)
    tiers = order.view(m, num_groups)  # tier r: the r-th block of num_groups channels by importance
    perm = torch.empty(cols, dtype=torch.long, device=score.device)
    groups = torch.arange(num_groups, device=score.device)
    for r in range(m):
        target = groups if r % 2 == 0 else groups.flip(0)
        perm[target * m + r] = tiers[r]
    return perm


def _lsa_position(score: torch.Tensor, perm: torch.Tensor, n: int, m: int, r: int, chunk: int = 32) -> torch.Tensor:
    """Reassign the channels at position ``r`` of every group optimally, the others held fixed.

    With the other ``m-1`` members of group ``g`` sorted ``o_1 >= ... >= o_{m-1}`` (per row),
    adding ``x`` keeps ``sum_{k<n} o_k + max(x, o_n)``: only ``sum_rows max(x, o_n)`` depends
    on the choice, which is the assignment gain.
    """
    from scipy.optimize import linear_sum_assignment

    rows, cols = score.shape
    num_groups = cols // m
    slots = perm.view(num_groups, m)
    others = torch.cat([slots[:, :r], slots[:, r + 1 :]], dim=1)  # (G, m-1)
    other_scores = score[:, others]  # (rows, G, m-1)
    o_n = other_scores.topk(n, dim=-1).values[..., -1]  # (rows, G): n-th largest of the others
    candidates = slots[:, r]  # channels now at position r
    gain = torch.empty(num_groups, num_groups, dtype=torch.float64)
    for start in range(0, num_groups, chunk):
        x = score[:, candidates[start : start + chunk]]  # (rows, c)
        gain[start : start + chunk] = torch.maximum(x.unsqueeze(2), o_n.unsqueeze(1)).sum(0, dtype=torch.float64).cpu()
    row_ind, col_ind = linear_sum_assignment(gain.numpy(), maximize=True)
    new = slots.clone()
    new[torch.as_tensor(col_ind, device=perm.device), r] = candidates[torch.as_tensor(row_ind, device=perm.device)]
    return new.view(-1)


def permuted_nm_mask(score: torch.Tensor, n: int, m: int, *, lsa: bool = False) -> torch.Tensor:
    """N:M mask (``True`` = pruned) chosen in permuted channel order, returned in original order.

    The permutation is kept only if it retains at least the score of no permutation, so it
    never does worse than plain N:M.
    """
    identity_mask = prune_lowest_nm(score, n, m)
    perm = zigzag_permutation(score, m)
    if lsa:
        for r in range(m):
            perm = _lsa_position(score, perm, n, m, r)
    permuted = score[:, perm]
    if retained_nm_score(permuted, n, m) < retained_nm_score(score, n, m):
        return identity_mask
    mask = torch.empty_like(identity_mask)
    mask[:, perm] = prune_lowest_nm(permuted, n, m)
    return mask
