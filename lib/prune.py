"""Orchestration: per-block ratios + pruner + sequential engine -> a pruned model."""

from __future__ import annotations

import torch
from torch import nn

from .arch import block_linears, decoder_blocks, prunable_linears
from .masks import SparsityPattern
from .pruners import PRUNERS, LayerStats, PrunerOptions
from .sequential import run_sequential
from .stats import InputStatistics

ALLOCATION_SUFFIX = "_alp"


def split_method(prune_method: str) -> tuple[str, str]:
    """``"wanda_alp"`` -> ``("wanda", "alp")``; ``"wanda"`` -> ``("wanda", "uniform")``; ``dense`` stays."""
    if prune_method.endswith(ALLOCATION_SUFFIX):
        return prune_method[: -len(ALLOCATION_SUFFIX)], "alp"
    return prune_method, "uniform"


def method_names() -> list[str]:
    """Every accepted ``--prune_method``: ``dense`` and each pruner, uniform and ``_alp``."""
    return ["dense"] + [f"{p}{suffix}" for p in PRUNERS for suffix in ("", ALLOCATION_SUFFIX)]


def prune_block(
    block: nn.Module,
    pruner_name: str,
    sparsity: float,
    pattern: SparsityPattern,
    options: PrunerOptions,
    forward_all=None,
) -> None:
    """Collect what the pruner needs over the calibration data (``forward_all``), then prune
    every linear of ``block`` in place at ``sparsity``."""
    pruner = PRUNERS[pruner_name]
    linears = block_linears(block)
    stats = {name: LayerStats() for name in linears}
    if pruner.needs:
        with InputStatistics(linears, pruner.needs) as collected:
            forward_all()
        hessians = collected.hessians()
        stats = {
            name: LayerStats(col_sq_norm=collected.col_sq_norm.get(name), hessian=hessians.get(name))
            for name in linears
        }
    for name, linear in linears.items():
        pruned = pruner.prune(linear.weight.data, stats[name], sparsity, pattern, options)
        linear.weight.data.copy_(pruned)
        stats[name] = None  # free this layer's statistics (a Hessian can be large) before the next


@torch.no_grad()
def prune_model(
    model: nn.Module,
    *,
    pruner_name: str,
    ratios: list[float],
    calib_ids: torch.Tensor | None,
    pattern: SparsityPattern,
    micro_batch: int = 4,
    device: torch.device | None = None,
    options: PrunerOptions | None = None,
) -> None:
    """Prune every decoder block ``l`` of ``model`` in place at sparsity ``ratios[l]``.

    ``calib_ids`` ``(n, T)`` feeds the sequential engine, so block ``l+1`` sees the pruned
    block ``l``. A data-free pruner (magnitude) skips the calibration forward entirely.
    """
    options = options or PrunerOptions()
    blocks = prunable_linears(model)
    if len(ratios) != len(blocks):
        raise ValueError(f"{len(ratios)} ratios for a model with {len(blocks)} decoder blocks")
    if not PRUNERS[pruner_name].needs:
        for index, block in enumerate(decoder_blocks(model)):
            prune_block(block, pruner_name, ratios[index], pattern, options)
        return
    if calib_ids is None:
        raise ValueError(f"{pruner_name} needs calibration data")

    def step(index, block, forward_all):
        prune_block(block, pruner_name, ratios[index], pattern, options, forward_all)

    run_sequential(model, calib_ids, step, micro_batch=micro_batch, device=device, desc=f"{pruner_name} blocks")


def measure_sparsity(model: nn.Module) -> tuple[float, list[float]]:
    """Fraction of zeros over all decoder-block linear weights, overall and per block."""
    per_block, zeros, total = [], 0, 0
    for block in prunable_linears(model):
        z = sum(int((lin.weight == 0).sum()) for lin in block.values())
        n = sum(lin.weight.numel() for lin in block.values())
        per_block.append(z / n)
        zeros, total = zeros + z, total + n
    return zeros / total, per_block
