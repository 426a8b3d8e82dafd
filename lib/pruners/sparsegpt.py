"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with weight updates, column block by
column block.

With ``H = 2/n X X^T`` (damped by ``percdamp`` times its mean diagonal) and ``U`` the upper
Cholesky factor of ``H^-1``, each block of ``blocksize`` columns selects its mask by
``w^2 / U_jj^2`` (N:M: within every ``m`` columns, as they are reached) and, column by
column, zeroes the pruned weights and spreads their error ``(w - q) / U_jj`` onto the
remaining columns: ``W[:, j:] -= err * U[j, j:]``. All maths in fp32.
"""

from __future__ import annotations

import warnings

import torch

from ..masks import SparsityPattern, prune_lowest_per_matrix
from . import LayerStats, Pruner, PrunerOptions, register


def damped_inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^-1`` with ``damp = percdamp * mean(diag H)``.

    A Hessian that is still not positive definite is re-damped (x10, with a warning) rather
    than failing. ``H`` ``(C, C)`` fp32 (modified in place).
    """
    damp = percdamp * torch.mean(torch.diag(H))
    eye = torch.eye(H.shape[0], device=H.device, dtype=H.dtype)
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info == 0:
                return U
        warnings.warn(
            f"SparseGPT: Hessian not positive definite at damping {float(damp):.3g}; re-damping x10", stacklevel=2
        )
        damp = damp * 10 if damp > 0 else torch.tensor(1e-6, device=H.device)
    raise RuntimeError("SparseGPT: Hessian could not be made positive definite")


def sparsegpt_prune(
    W: torch.Tensor, stats: LayerStats, sparsity: float, pattern: SparsityPattern, options: PrunerOptions
) -> torch.Tensor:
    """Prune ``W`` ``(C_out, C_in)`` given ``stats.hessian`` ``(C_in, C_in)``; returns the updated weight."""
    out_dtype = W.dtype
    W = W.float().clone()
    H = stats.hessian.to(W.device, torch.float32).clone()
    dead = torch.diag(H) == 0  # inputs never active: any weight on them is free to drop
    H[dead, dead] = 1
    W[:, dead] = 0
    U = damped_inverse_cholesky(H, options.percdamp)
    cols = W.shape[1]
    n, m = pattern.n, pattern.m
    for i1 in range(0, cols, options.blocksize):
        i2 = min(i1 + options.blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        if pattern.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            mask1 = prune_lowest_per_matrix(W1.square() / d.square().unsqueeze(0), int(W1.numel() * sparsity))
        for i in range(i2 - i1):
            if pattern.is_nm and i % m == 0:
                score = W1[:, i : i + m].square() / d[i : i + m].square().unsqueeze(0)
                lowest = torch.topk(score, m - n, dim=1, largest=False).indices
                mask1.scatter_(1, i + lowest, True)
            w = W1[:, i]
            q = w.masked_fill(mask1[:, i], 0)
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W.to(out_dtype)


SPARSEGPT = register(Pruner(name="sparsegpt", needs=frozenset({"hessian"}), prune=sparsegpt_prune))
