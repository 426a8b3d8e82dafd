"""Orchestration: per-block ratios + pruner + sequential engine -> a pruned model."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .arch import block_linears, decoder_blocks, prunable_linears
from .masks import SparsityPattern
from .obs import gptq_keep_mask, recording_sweeps, summarize_sweeps, sweep_note
from .pruners import PRUNERS, LayerStats, Pruner, PrunerOptions
from .quant import rtn_quantize
from .sequential import run_sequential
from .stats import InputStatistics
from .utils import StageTimer

ALLOCATION_SUFFIX = "_alp"


def split_method(prune_method: str) -> tuple[str, str]:
    """``"wanda_alp"`` -> ``("wanda", "alp")``; ``"wanda"`` -> ``("wanda", "uniform")``; ``dense`` stays."""
    if prune_method.endswith(ALLOCATION_SUFFIX):
        return prune_method[: -len(ALLOCATION_SUFFIX)], "alp"
    return prune_method, "uniform"


def method_names() -> list[str]:
    """Every accepted ``--prune_method``: ``dense`` and each pruner, uniform and ``_alp``."""
    return ["dense"] + [f"{p}{suffix}" for p in PRUNERS for suffix in ("", ALLOCATION_SUFFIX)]


def statistics_needed(pruner: Pruner, options: PrunerOptions) -> frozenset[str]:
    """What the engine collects for ``pruner``: its own needs, plus the Hessian for GPTQ."""
    if options.quant is not None and options.quant.method == "gptq":
        return pruner.needs | {"hessian"}
    return pruner.needs


def quantize_keeping_mask(W: torch.Tensor, stats: LayerStats, options: PrunerOptions) -> torch.Tensor:
    """Quantize a pruned ``W`` ``(C_out, C_in)`` with ``options.quant``; zeros stay exactly 0."""
    config = options.quant
    if config.method == "rtn":
        return rtn_quantize(W, config)
    return gptq_keep_mask(W, stats.hessian, config, percdamp=options.percdamp, blocksize=options.blocksize)


def prune_block(
    block: nn.Module,
    pruner_name: str,
    sparsity: float,
    pattern: SparsityPattern,
    options: PrunerOptions,
    forward_all=None,
    timer: StageTimer | None = None,
    sweeps: dict | None = None,
) -> None:
    """Collect what the pruner needs over the calibration data (``forward_all``), then prune
    every linear of ``block`` in place at ``sparsity`` (and quantize it if ``options.quant``).
    ``timer`` accumulates the pruning maths alone under ``"prune_maths"``; ``sweeps``: see
    :func:`prune_linears`."""
    pruner = PRUNERS[pruner_name]
    needs = statistics_needed(pruner, options)
    linears = block_linears(block)
    stats = {name: LayerStats() for name in linears}
    if needs:
        with InputStatistics(linears, needs) as collected:
            forward_all()
        hessians = collected.hessians()
        stats = {
            name: LayerStats(col_sq_norm=collected.col_sq_norm.get(name), hessian=hessians.get(name))
            for name in linears
        }
        del hessians  # ``stats`` holds the only references: prune_linears frees each after its layer
    maths = timer("prune_maths") if timer is not None else contextlib.nullcontext()
    with maths:
        prune_linears(pruner, linears, stats, sparsity, pattern, options, sweeps)


def prune_linears(
    pruner: Pruner, linears: dict, stats: dict, sparsity: float, pattern, options, sweeps: dict | None = None
) -> None:
    """Prune (and quantize) each linear in place from its statistics, freeing them as it goes.
    ``sweeps`` (if given) gets, per linear name, the :class:`~lib.obs.SweepRecord` of each of its
    OBS sweeps (SparseGPT, GPTQ)."""
    for name, linear in linears.items():
        with recording_sweeps() as records:
            pruned = pruner.prune(linear.weight.data, stats[name], sparsity, pattern, options)
            quant = options.quant
            if quant is not None and not (pruner.quantizes_jointly and quant.method == "gptq"):
                pruned = quantize_keeping_mask(pruned, stats[name], options)
        if sweeps is not None and records:
            sweeps[name] = records
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
    timer: StageTimer | None = None,
) -> dict:
    """Prune every decoder block ``l`` of ``model`` in place at sparsity ``ratios[l]``.

    ``calib_ids`` ``(n, T)`` feeds the sequential engine, so block ``l+1`` sees the pruned
    block ``l``. A data-free pruner (magnitude) skips the calibration forward entirely.
    Returns what the OBS sweeps changed unasked (:func:`lib.obs.summarize_sweeps`, layers named
    ``"<block>.<linear>"``; for the run log), and prints it in one line when anything did.
    """
    options = options or PrunerOptions()
    blocks = prunable_linears(model)
    if len(ratios) != len(blocks):
        raise ValueError(f"{len(ratios)} ratios for a model with {len(blocks)} decoder blocks")
    sweeps: dict[str, list] = {}

    def step(index, block, forward_all=None):
        block_sweeps: dict[str, list] = {}
        prune_block(block, pruner_name, ratios[index], pattern, options, forward_all, timer=timer, sweeps=block_sweeps)
        sweeps.update({f"{index}.{name}": records for name, records in block_sweeps.items()})

    if not statistics_needed(PRUNERS[pruner_name], options):
        for index, block in enumerate(decoder_blocks(model)):
            step(index, block)
    elif calib_ids is None:
        raise ValueError(f"{pruner_name} needs calibration data")
    else:
        run_sequential(model, calib_ids, step, micro_batch=micro_batch, device=device, desc=f"{pruner_name} blocks")
    summary = summarize_sweeps(sweeps)
    note = sweep_note(summary)
    if note:
        print(note)
    return summary


def measure_sparsity(model: nn.Module) -> tuple[float, list[float]]:
    """Fraction of zeros over all decoder-block linear weights, overall and per block."""
    per_block, zeros, total = [], 0, 0
    for block in prunable_linears(model):
        z = sum(int((lin.weight == 0).sum()) for lin in block.values())
        n = sum(lin.weight.numel() for lin in block.values())
        per_block.append(z / n)
        zeros, total = zeros + z, total + n
    return zeros / total, per_block
