"""DSnoT (Zhang et al., 2023, "Dynamic Sparse No Training", arXiv 2310.08915): training-free
refinement of a pruning mask, one linear layer at a time, every row at once.

For output row ``i`` the expected reconstruction error of the pruned layer is (paper, Eq. 4)

    e_i = sum_j (W_ij - W'_ij) E[x_j]

with ``W`` the dense weight and ``W'`` the pruned one (zeros on the mask; for SparseGPT also
the updated kept weights). Each cycle, every row whose ``|e_i|`` is above the threshold swaps
one weight pair (paper, Eqs. 5-6):

- grow back the pruned weight that moves ``e_i`` towards 0 the most per unit of input
  variance: ``argmax_j sign(e_i) W_ij E[x_j] / Var[x_j]``, over ``W_ij E[x_j]`` of ``e_i``'s sign;
- prune the kept weight that moves ``e_i`` towards 0 and costs least by the Wanda score
  ``|W'_ik| ||X_k||``, over ``W'_ik E[x_k]`` of the opposite sign.

A row stops when ``|e_i|`` is at most the threshold, after ``max_cycles`` swaps, or when no
candidate pair is left. ``rule`` decides whether a swap is taken: ``"released"`` as DSnoT's released
code (unstructured: always, the error may overshoot zero; N:M: only while the error keeps its
initial sign, the row stopping once it would flip), ``"shrink"`` only when ``|e_i|`` shrinks (this
project's first version). The threshold is in the released code's units: the error summed over
the tokens of one calibration sequence (``seqlen x`` the per-token ``e_i`` above). A weight is
moved once: regrown weights are never pruned again and newly pruned ones never regrown, so every
row keeps its count of zeros. For N:M, the weight pruned lies in the regrown weight's group of
``m`` (so every group keeps ``n``), chosen by Wanda score alone. Which linears are refined is the
caller's choice (:func:`lib.prune.refined_linears`: the released code skips the MLP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import DSNOT_RULES


@dataclass(frozen=True)
class DsnotResult:
    """The refined weight and what changed: ``W`` ``(C_out, C_in)`` in the input's dtype,
    ``mask`` bool ``(C_out, C_in)`` (``True`` = pruned), ``swaps`` int ``(C_out,)`` per row,
    ``error_before`` / ``error_after`` fp32 ``(C_out,)``: ``|e_i|`` before and after."""

    W: torch.Tensor
    mask: torch.Tensor
    swaps: torch.Tensor
    error_before: torch.Tensor
    error_after: torch.Tensor


def expected_error(W: torch.Tensor, W_pruned: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``e_i = sum_j (W_ij - W'_ij) E[x_j]``: fp32 ``(C_out,)`` from ``(C_out, C_in)`` weights and ``(C_in,)`` means."""
    return (W.float() - W_pruned.float()) @ mean.float()


def dsnot(
    W: torch.Tensor,
    W_pruned: torch.Tensor,
    mean: torch.Tensor,
    variance: torch.Tensor,
    col_sq_norm: torch.Tensor,
    *,
    max_cycles: int = 50,
    threshold: float = 0.1,
    nm_m: int | None = None,
    rule: str = "released",
) -> DsnotResult:
    """Refine the mask of ``W_pruned`` (the zeros of it, ``(C_out, C_in)``) against the dense ``W``.

    ``mean`` ``E[x_j]``, ``variance`` ``Var[x_j]`` and ``col_sq_norm`` ``||X_j||^2``: fp32 ``(C_in,)``
    input statistics. ``nm_m``: group width ``m`` of an N:M mask (swaps stay inside a group), or
    ``None`` (unstructured: only each row's count is kept). ``threshold`` is compared with the
    per-token ``|e_i|`` here (callers rescale it, :func:`dsnot_from_stats`); ``rule``: ``"released"``
    or ``"shrink"`` (module docstring). Returns a :class:`DsnotResult`.
    """
    if rule not in DSNOT_RULES:
        raise ValueError(f"unknown DSnoT rule {rule!r}: choose one of {', '.join(DSNOT_RULES)}")
    dense = W.float()
    kept = W_pruned.float().clone()
    mu = mean.float().to(W.device)
    mask = W_pruned == 0
    grow_gain = dense * mu  # what regrowing W_ij takes off e_i
    grow_rank = grow_gain / variance.float().to(W.device).clamp_min(1e-8)  # paper: per unit of variance
    wanda = kept.abs() * col_sq_norm.float().to(W.device).sqrt()
    growable, prunable = mask.clone(), ~mask
    e = expected_error(dense, kept, mu)
    error_before = e.abs()
    initial_sign = torch.sign(e)
    rows = torch.arange(W.shape[0], device=W.device)
    swaps = torch.zeros(W.shape[0], dtype=torch.long, device=W.device)
    active = torch.ones(W.shape[0], dtype=torch.bool, device=W.device)
    inf = torch.tensor(float("inf"), device=W.device)
    for _ in range(max_cycles):
        active &= e.abs() > threshold
        if not active.any():
            break
        s = torch.sign(e).unsqueeze(1)  # (C_out, 1)
        prune_cost = kept * mu  # what pruning W'_ik adds to e_i
        if nm_m is None:
            grow_score = torch.where(growable & (s * grow_gain > 0), s * grow_rank, -inf)
            j = grow_score.argmax(dim=1)
            prune_score = torch.where(prunable & (s * prune_cost < 0), wanda, inf)
            k = prune_score.argmin(dim=1)
            found = grow_score[rows, j].isfinite() & prune_score[rows, k].isfinite()
        else:
            j, k, found = _nm_pair(e, grow_gain, grow_rank, prune_cost, wanda, growable, prunable, nm_m, rule)
        e_after = e - grow_gain[rows, j] + prune_cost[rows, k]
        if rule == "shrink":
            accept = e_after.abs() < e.abs()
        elif nm_m is not None:
            accept = torch.sign(e_after) == initial_sign
        else:
            accept = torch.ones_like(found)
        swap = active & found & accept
        active &= swap  # no acceptable swap: the row is done
        r, j, k = rows[swap], j[swap], k[swap]
        kept[r, j], kept[r, k] = dense[r, j], 0.0
        mask[r, j], mask[r, k] = False, True
        growable[r, j], prunable[r, k] = False, False
        e = torch.where(swap, e_after, e)
        swaps += swap
    return DsnotResult(kept.to(W.dtype), mask, swaps, error_before, e.abs())


def _nm_pair(e, grow_gain, grow_rank, prune_cost, wanda, growable, prunable, m: int, rule: str):
    """N:M swap per row: for every group, its cheapest prunable weight by Wanda score; the weight
    regrown is the best-ranked growable one that moves ``e_i`` towards 0 (``rule`` ``"shrink"``:
    whose swap with its group's candidate shrinks ``|e_i|``). Returns ``(j, k, found)``, ``(C_out,)`` each."""
    c_out, c_in = grow_gain.shape
    groups = c_in // m
    cost = torch.where(prunable, wanda, float("inf")).view(c_out, groups, m)  # (C_out, C_in/M, M)
    best = cost.argmin(dim=2)  # (C_out, C_in/M): position inside the group
    partner = best + torch.arange(groups, device=e.device) * m  # column of each group's candidate
    partner_ok = prunable.gather(1, partner)
    partner_cost = prune_cost.gather(1, partner)
    # every column's group partner, broadcast over the group's m columns
    partner_col = partner.repeat_interleave(m, dim=1)
    after = e.unsqueeze(1) - grow_gain + partner_cost.repeat_interleave(m, dim=1)
    if rule == "shrink":
        towards_zero = after.abs() < e.abs().unsqueeze(1)
    else:  # released: the regrown weight moves e_i towards 0; the row stops when its sign flips
        towards_zero = torch.sign(e).unsqueeze(1) * grow_gain > 0
    ok = growable & partner_ok.repeat_interleave(m, dim=1) & towards_zero
    score = torch.where(ok, torch.sign(e).unsqueeze(1) * grow_rank, float("-inf"))
    j = score.argmax(dim=1)
    rows = torch.arange(c_out, device=e.device)
    return j, partner_col[rows, j], score[rows, j].isfinite()


def dsnot_from_stats(
    W, W_pruned, stats, *, nm_m: int | None, max_cycles: int, threshold: float, rule: str = "released"
) -> DsnotResult:
    """:func:`dsnot` with the statistics of :class:`lib.pruners.LayerStats` (``col_mean``,
    ``col_sq_norm``, ``tokens``, ``sequences``): ``Var[x_j] = ||X_j||^2 / n - E[x_j]^2``; ``threshold``
    on the error summed over one sequence's tokens (the released units), so divided by the tokens
    per sequence before it meets the per-token error."""
    mean = stats.col_mean
    variance = (stats.col_sq_norm / stats.tokens - mean.square()).clamp_min(0)
    per_sequence = stats.tokens / stats.sequences if stats.sequences else 1.0
    return dsnot(
        W, W_pruned, mean, variance, stats.col_sq_norm,
        max_cycles=max_cycles, threshold=threshold / per_sequence, nm_m=nm_m, rule=rule,
    )  # fmt: skip
