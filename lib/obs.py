"""The blocked Optimal-Brain-Surgeon column sweep shared by SparseGPT and GPTQ.

With ``H = 2/n X X^T`` (damped by ``percdamp`` times its mean diagonal) and ``U`` the upper
Cholesky factor of ``H^-1``, columns are visited left to right in blocks of ``blocksize``.
Each column ``j`` is replaced by its pruned and/or quantized value ``q`` and its error
``(w - q) / U_jj`` is spread onto the columns not yet visited: ``W[:, j:] -= err * U[j, j:]``
(inside the block at once, onto later blocks lazily). All maths in fp32.

- SparseGPT (Frantar & Alistarh, 2023): the mask is chosen during the sweep, per block by
  ``w^2 / U_jj^2`` (N:M: within every ``m`` columns as they are reached).
- GPTQ (Frantar et al., 2023) with a fixed mask: the mask is given (a pruner already chose
  it); pruned weights are set back to exactly 0 when their column is reached, so the error
  is compensated only into surviving weights.
"""

from __future__ import annotations

import warnings

import torch

from .masks import SparsityPattern, prune_lowest_per_matrix
from .quant import QuantConfig, fit_grid, quantize, static_grids

UNSTRUCTURED = SparsityPattern()
SUB = 16  # columns per inner sub-block of the sweep


def damped_inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^-1`` with ``damp = percdamp * mean(diag H)``.

    A Hessian that is still not positive definite is re-damped (x10, with a warning) rather
    than failing. ``H`` ``(C, C)`` fp32 is damped **in place** (its diagonal raised), so that at
    most three ``C x C`` matrices exist at once: for a 7B model's ``down_proj`` each is 0.5 GB.
    """
    diagonal = H.diagonal()
    undamped = diagonal.clone()
    damp = percdamp * torch.mean(undamped)
    for _ in range(8):
        torch.add(undamped, damp, out=diagonal)
        L, info = torch.linalg.cholesky_ex(H)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            del Hinv
            if info == 0:
                return U
        warnings.warn(
            f"OBS sweep: Hessian not positive definite at damping {float(damp):.3g}; re-damping x10", stacklevel=2
        )
        damp = damp * 10 if damp > 0 else torch.tensor(1e-6, device=H.device)
    raise RuntimeError("OBS sweep: Hessian could not be made positive definite")


def obs_sweep(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    percdamp: float,
    blocksize: int,
    sparsity: float = 0.0,
    pattern: SparsityPattern = UNSTRUCTURED,
    fixed_mask: torch.Tensor | None = None,
    quant: QuantConfig | None = None,
) -> torch.Tensor:
    """Prune and/or quantize ``W`` ``(C_out, C_in)`` given ``H`` ``(C_in, C_in)``; returns fp32.

    ``fixed_mask`` (``True`` = pruned) keeps a mask chosen elsewhere; otherwise SparseGPT chooses
    one at ``sparsity`` / ``pattern``. ``quant`` rounds every kept weight to its group's grid.
    """
    W = W.float().clone()
    H = H.to(W.device, torch.float32).clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0  # inputs never active: any weight on them is free to drop
    H[dead, dead] = 1
    W[:, dead] = 0
    act_order = quant is not None and quant.act_order
    if act_order and fixed_mask is None and pattern.is_nm:
        raise ValueError("act-order visits columns out of order, so it cannot keep N:M groups while pruning")
    width = quant.group_width(columns) if quant else columns
    # Grids fitted once up front: one per row (groupsize -1), or every group with static groups.
    static = static_grids(W if fixed_mask is None else W.masked_fill(fixed_mask, 0), quant) if quant else None
    refit = quant is not None and quant.groupsize != -1 and not quant.static_groups
    order = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else None
    if order is not None:
        W, H = W[:, order], H[order][:, order]
        fixed_mask = None if fixed_mask is None else fixed_mask[:, order]
    original_column = order if order is not None else torch.arange(columns, device=W.device)
    U = damped_inverse_cholesky(H, percdamp)
    # The sweep works on W^T, so that column j (the unit of every update) is contiguous row j.
    Wt = W.T.contiguous()  # (C_in, C_out)
    mask_t = None if fixed_mask is None else fixed_mask.T.contiguous()

    def quantize_row(j: int, q: torch.Tensor) -> torch.Tensor:
        nonlocal scale, zero
        if refit and j % width == 0:  # GPTQ: a group's grid from its current (updated) weights
            group = Wt[j : j + width]
            if mask_t is not None:
                group = group.masked_fill(mask_t[j : j + width], 0)
            scale, zero = fit_grid(group.T, quant)
        elif not refit:
            g = int(original_column[j]) // width
            scale, zero = static[0][:, g], static[1][:, g]
        return quantize(q, scale, zero, quant.maxq)

    scale = zero = None
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1, U1 = Wt[i1:i2], U[i1:i2, i1:i2]  # W1 is a view: updates land in Wt
        d = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        if mask_t is not None:
            mask1 = mask_t[i1:i2]
        elif pattern.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            score = W1.square() / d.square().unsqueeze(1)
            mask1 = prune_lowest_per_matrix(score.T, int(W1.numel() * sparsity)).T
        # Within the block, rank-1 updates only reach the next SUB columns; every SUB columns
        # their errors reach the rest of the block in one matmul (same result, less traffic).
        for s1 in range(0, i2 - i1, SUB):
            s2 = min(s1 + SUB, i2 - i1)
            for i in range(s1, s2):
                if mask_t is None and pattern.is_nm and i % pattern.m == 0:
                    score = W1[i : i + pattern.m].square() / d[i : i + pattern.m].square().unsqueeze(1)
                    lowest = torch.topk(score, pattern.m - pattern.n, dim=0, largest=False).indices
                    mask1.scatter_(0, i + lowest, True)
                w = W1[i].clone()
                q = w.masked_fill(mask1[i], 0)
                if quant is not None:
                    q = quantize_row(i1 + i, q).masked_fill(mask1[i], 0)
                err = (w - q) / d[i]
                W1[i:s2] -= U1[i, i:s2].unsqueeze(1) * err.unsqueeze(0)
                W1[i] = q
                Err1[i] = err
            W1[s2:] -= U1[s1:s2, s2:].T @ Err1[s1:s2]
        Wt[i2:] -= U[i1:i2, i2:].T @ Err1
    W = Wt.T
    if order is not None:
        W = W[:, torch.argsort(order)]
    return W.contiguous()


def gptq_keep_mask(
    W: torch.Tensor, H: torch.Tensor, config: QuantConfig, *, percdamp: float, blocksize: int
) -> torch.Tensor:
    """GPTQ of an already pruned ``W`` ``(C_out, C_in)``: its zeros stay exactly 0; same dtype."""
    return obs_sweep(W, H, percdamp=percdamp, blocksize=blocksize, fixed_mask=W == 0, quant=config).to(W.dtype)
