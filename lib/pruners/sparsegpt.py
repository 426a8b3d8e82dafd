"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with weight updates, column block by
column block (the kernel is :func:`lib.obs.obs_sweep`). With GPTQ quantization on, every
kept weight is also quantized inside the same sweep, as in the original algorithm.
"""

from __future__ import annotations

import torch

from ..masks import SparsityPattern
from ..obs import obs_sweep
from . import LayerStats, Pruner, PrunerOptions, register


def sparsegpt_prune(
    W: torch.Tensor, stats: LayerStats, sparsity: float, pattern: SparsityPattern, options: PrunerOptions
) -> torch.Tensor:
    """Prune ``W`` ``(C_out, C_in)`` given ``stats.hessian`` ``(C_in, C_in)``; returns the updated
    weight (same dtype), quantized jointly when ``options.quant`` asks for GPTQ."""
    joint = options.quant if options.quant is not None and options.quant.method == "gptq" else None
    pruned = obs_sweep(
        W,
        stats.hessian,
        percdamp=options.percdamp,
        blocksize=options.blocksize,
        sparsity=sparsity,
        pattern=pattern,
        quant=joint,
    )
    return pruned.to(W.dtype)


SPARSEGPT = register(
    Pruner(name="sparsegpt", needs=frozenset({"hessian"}), prune=sparsegpt_prune, quantizes_jointly=True)
)
