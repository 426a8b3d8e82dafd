"""Orchestration: per-block ratios + pruner + sequential engine -> a pruned model."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch
from torch import nn

from .arch import block_linears, block_sublayers, decoder_blocks, prunable_linears
from .masks import SparsityPattern
from .obs import gptq_keep_mask, recording_sweeps, summarize_sweeps, sweep_note
from .pruners import PRUNERS, LayerStats, Pruner, PrunerOptions
from .quant import rtn_quantize
from .recovery import RecoveryOptions, fitted_micro_batches
from .recovery.dsnot import dsnot_from_stats
from .recovery.reconstruct import SublayerCapture, reconstruct_block
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


def statistics_needed(
    pruner: Pruner, options: PrunerOptions, recovery: RecoveryOptions | None = None
) -> frozenset[str]:
    """What the engine collects for ``pruner``: its own needs, plus the Hessian for GPTQ and what
    the refinement (``recovery``) reads."""
    needs = pruner.needs | (recovery.needs if recovery is not None else frozenset())
    if options.quant is not None and options.quant.method == "gptq":
        return needs | {"hessian"}
    return needs


def quantize_keeping_mask(W: torch.Tensor, stats: LayerStats, options: PrunerOptions) -> torch.Tensor:
    """Quantize a pruned ``W`` ``(C_out, C_in)`` with ``options.quant``; zeros stay exactly 0."""
    config = options.quant
    if config.method == "rtn":
        return rtn_quantize(W, config)
    return gptq_keep_mask(W, stats.hessian, config, percdamp=options.percdamp, blocksize=options.blocksize)


def _timed(timer: StageTimer | None, stage: str):
    return timer(stage) if timer is not None else contextlib.nullcontext()


def prune_block(
    block: nn.Module,
    pruner_name: str,
    sparsity: float,
    pattern: SparsityPattern,
    options: PrunerOptions,
    forward_all=None,
    timer: StageTimer | None = None,
    sweeps: dict | None = None,
    recovery: RecoveryOptions | None = None,
    sublayers: dict[str, tuple[str, ...]] | None = None,
    store: torch.device | None = None,
    report: dict | None = None,
    fit_calls: int | None = None,
) -> None:
    """Collect what the pruner needs over the calibration data (``forward_all``), then prune
    every linear of ``block`` in place at ``sparsity`` (and quantize it if ``options.quant``).
    ``timer`` accumulates the pruning maths alone under ``"prune_maths"``; ``sweeps``: see
    :func:`prune_linears`.

    ``recovery`` (optional): refine each mask (DSnoT, timed as ``"refine"``) and/or fit the
    block's ``sublayers`` (:func:`lib.arch.block_sublayers`) to the dense block's outputs,
    captured in the same forward (activations kept on ``store``; the first ``fit_calls``
    micro-batches captured (``None``: all), of which the fit takes ``recovery.nsamples`` sequences,
    ``recovery.batch`` per AdamW step; timed as ``"reconstruct"``);
    quantization then comes last, with the final mask held. ``report`` gets the figures:
    ``"dsnot"``: per linear name, swaps and mean ``|e|`` before/after; ``"reconstruct"``: per
    sub-module, the loss before/after.
    """
    recovery = recovery or RecoveryOptions()
    pruner = PRUNERS[pruner_name]
    needs = statistics_needed(pruner, options, recovery)
    linears = block_linears(block)
    stats = {name: LayerStats() for name in linears}
    capture = None
    if needs or recovery.reconstruct:
        capturing = (
            SublayerCapture(block, sublayers, store, max_calls=fit_calls)
            if recovery.reconstruct
            else contextlib.nullcontext()
        )
        with InputStatistics(linears, needs) as collected, capturing as capture:
            forward_all()
        hessians, means = collected.hessians(), collected.col_means()
        stats = {
            name: LayerStats(
                col_sq_norm=collected.col_sq_norm.get(name),
                hessian=hessians.get(name),
                col_mean=means.get(name),
                tokens=collected.tokens.get(name),
                sequences=collected.sequences.get(name),
            )
            for name in linears
        }
        del hessians  # ``stats`` holds the only references: prune_linears frees each after its layer
    report = report if report is not None else {}
    refined = refined_linears(linears, sublayers, recovery)
    with _timed(timer, "prune_maths"):
        prune_linears(pruner, linears, stats, sparsity, pattern, options, sweeps, recovery, timer, report, refined)
    if not recovery.reconstruct:
        return
    with _timed(timer, "reconstruct"):
        fits = reconstruct_block(
            block,
            capture,
            rel_lr=recovery.rel_lr,
            lr=recovery.lr,
            epochs=recovery.epochs,
            batch=recovery.batch,
            nsamples=recovery.nsamples,
        )
    report["reconstruct"] = {name: fit.as_dict() for name, fit in fits.items()}
    if options.quant is not None:
        with _timed(timer, "prune_maths"):
            quantize_linears(linears, stats, options, sweeps)


def prune_linears(
    pruner: Pruner,
    linears: dict,
    stats: dict,
    sparsity: float,
    pattern,
    options,
    sweeps: dict | None = None,
    recovery: RecoveryOptions | None = None,
    timer: StageTimer | None = None,
    report: dict | None = None,
    refined: frozenset[str] | None = None,
) -> None:
    """Prune (and quantize) each linear in place from its statistics, freeing them as it goes.
    ``sweeps`` (if given) gets, per linear name, the :class:`~lib.obs.SweepRecord` of each of its
    OBS sweeps (SparseGPT, GPTQ). With ``recovery``, the mask of each linear named in ``refined``
    (default: all) is refined (DSnoT) before any quantization, and with reconstruction
    quantization is left to :func:`quantize_linears` (the statistics are then kept for it)."""
    recovery = recovery or RecoveryOptions()
    quant = options.quant
    # the mask must be final before quantizing: SparseGPT then prunes alone and GPTQ follows
    kernel = replace(options, quant=None) if recovery.active else options
    joint = pruner.quantizes_jointly and quant is not None and quant.method == "gptq" and not recovery.active
    for name, linear in linears.items():
        with recording_sweeps() as records:
            pruned = pruner.prune(linear.weight.data, stats[name], sparsity, pattern, kernel)
            if recovery.refine == "dsnot" and (refined is None or name in refined):
                with _timed(timer, "refine"):
                    pruned = _refine(linear.weight.data, pruned, stats[name], pattern, recovery, report, name)
            if quant is not None and not joint and not recovery.reconstruct:
                pruned = quantize_keeping_mask(pruned, stats[name], options)
        if sweeps is not None and records:
            sweeps[name] = records
        linear.weight.data.copy_(pruned)
        if not (recovery.reconstruct and quant is not None):
            stats[name] = None  # free this layer's statistics (a Hessian can be large) before the next


def refined_linears(
    linears: dict, sublayers: dict[str, tuple[str, ...]] | None, recovery: RecoveryOptions
) -> frozenset[str] | None:
    """The names of ``linears`` DSnoT refines: all but those inside the sub-module kind
    ``recovery.dsnot_skip`` names (``"mlp"`` as DSnoT's released code, ``"attention"``, or
    ``"none"``), whose attribute chains ``sublayers`` gives (:func:`lib.arch.block_sublayers`).
    ``None`` when nothing is refined or skipped."""
    if not recovery.dsnot_skips_sublayer:
        return None
    if sublayers is None:
        raise ValueError("DSnoT's --dsnot_skip needs the block's sub-module names (lib.arch.block_sublayers)")
    skipped = set(sublayers[recovery.dsnot_skip])
    return frozenset(name for name in linears if name.split(".")[0] not in skipped)


def _refine(W, pruned, stats: LayerStats, pattern, recovery: RecoveryOptions, report: dict | None, name: str):
    result = dsnot_from_stats(
        W,
        pruned,
        stats,
        nm_m=pattern.m if pattern.is_nm else None,
        max_cycles=recovery.dsnot_cycles,
        threshold=recovery.dsnot_threshold,
        rule=recovery.dsnot_rule,
    )
    if report is not None:
        report.setdefault("dsnot", {})[name] = {
            "swaps": int(result.swaps.sum()),
            "error_before": float(result.error_before.mean()),
            "error_after": float(result.error_after.mean()),
        }
    return result.W


def quantize_linears(linears: dict, stats: dict, options: PrunerOptions, sweeps: dict | None = None) -> None:
    """Quantize each (pruned, reconstructed) linear in place with its mask held, freeing its statistics."""
    for name, linear in linears.items():
        with recording_sweeps() as records:
            quantized = quantize_keeping_mask(linear.weight.data, stats[name], options)
        if sweeps is not None and records:
            sweeps.setdefault(name, []).extend(records)
        linear.weight.data.copy_(quantized)
        stats[name] = None


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
    recovery: RecoveryOptions | None = None,
    report: dict | None = None,
) -> dict:
    """Prune every decoder block ``l`` of ``model`` in place at sparsity ``ratios[l]``.

    ``calib_ids`` ``(n, T)`` feeds the sequential engine, so block ``l+1`` sees the pruned
    block ``l``. A data-free pruner (magnitude) skips the calibration forward entirely, unless
    ``recovery`` refines or reconstructs (both read calibration data). Returns what the OBS
    sweeps changed unasked (:func:`lib.obs.summarize_sweeps`, layers named ``"<block>.<linear>"``;
    for the run log), and prints it in one line when anything did. ``report`` (if given) gets
    the recovery figures (:func:`recovery_summary`).
    """
    options = options or PrunerOptions()
    recovery = recovery or RecoveryOptions()
    blocks = prunable_linears(model)
    if len(ratios) != len(blocks):
        raise ValueError(f"{len(ratios)} ratios for a model with {len(blocks)} decoder blocks")
    sweeps: dict[str, list] = {}
    per_block: list[dict] = []
    sublayers = block_sublayers(model) if recovery.reconstruct or recovery.dsnot_skips_sublayer else None
    store = model.get_input_embeddings().weight.device  # where the engine keeps activations
    fit_calls = fitted_micro_batches(recovery.nsamples, micro_batch)

    def step(index, block, forward_all=None):
        block_sweeps: dict[str, list] = {}
        per_block.append({})
        prune_block(
            block,
            pruner_name,
            ratios[index],
            pattern,
            options,
            forward_all,
            timer=timer,
            sweeps=block_sweeps,
            recovery=recovery,
            sublayers=sublayers,
            store=store,
            report=per_block[-1],
            fit_calls=fit_calls,
        )
        sweeps.update({f"{index}.{name}": records for name, records in block_sweeps.items()})

    if not statistics_needed(PRUNERS[pruner_name], options, recovery) and not recovery.reconstruct:
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
    if recovery.active:
        figures = recovery_summary(per_block)
        print(f"[recovery] {recovery_note(figures)}")
        if report is not None:
            report.update(figures)
    return summary


def recovery_summary(per_block: list[dict]) -> dict:
    """JSON-ready figures of the recovery steps from each block's ``prune_block`` report:
    ``dsnot``: swaps per linear (``"<block>.<linear>"``), their total, and the mean ``|e|`` over
    rows before / after, averaged over linears; ``reconstruct``: per block and sub-module, the
    calibration MSE against the dense sub-module before and after fitting."""
    figures: dict = {}
    layers = {f"{i}.{name}": r for i, block in enumerate(per_block) for name, r in block.get("dsnot", {}).items()}
    if layers:
        figures["dsnot"] = {
            "swaps_total": sum(r["swaps"] for r in layers.values()),
            "swaps": {name: r["swaps"] for name, r in layers.items()},
            "mean_error_before": sum(r["error_before"] for r in layers.values()) / len(layers),
            "mean_error_after": sum(r["error_after"] for r in layers.values()) / len(layers),
        }
    fits = [block["reconstruct"] for block in per_block if "reconstruct" in block]
    if fits:
        figures["reconstruct"] = {"blocks": fits}
    return figures


def recovery_note(figures: dict) -> str:
    """One printable line for :func:`recovery_summary`'s figures."""
    parts = []
    if "dsnot" in figures:
        d = figures["dsnot"]
        parts.append(
            f"DSnoT {d['swaps_total']} swaps over {len(d['swaps'])} linears, mean |e| "
            f"{d['mean_error_before']:.4g} -> {d['mean_error_after']:.4g}"
        )
    if "reconstruct" in figures:
        fits = [fit for block in figures["reconstruct"]["blocks"] for fit in block.values()]
        down = sum(fit["loss_after"] < fit["loss_before"] for fit in fits)
        # the fitted weights' loss, kept or undone (logs from before the revert rule lack loss_fitted)
        ratios = sorted(fit.get("loss_fitted", fit["loss_after"]) / max(fit["loss_before"], 1e-30) for fit in fits)
        reverted = sum(bool(fit.get("reverted")) for fit in fits)
        ratio = sum(ratios) / max(len(ratios), 1)
        parts.append(
            f"reconstruction lowered {down} of {len(fits)} sub-module losses ({reverted} fits undone: "
            f"they raised it), mean fitted/before {ratio:.3f}"
        )
        median = ratios[len(ratios) // 2] if ratios else 0.0
        if median > 1.0:
            parts.append(
                f"WARNING: most fits raised their loss (median fitted/before {median:.1f}) and were undone: "
                "the steps are too large for this model; rerun with a smaller --reconstruct_rel_lr"
            )
    return "; ".join(parts) or "nothing to report"


def measure_sparsity(model: nn.Module) -> tuple[float, list[float]]:
    """Fraction of zeros over all decoder-block linear weights, overall and per block."""
    per_block, zeros, total = [], 0, 0
    for block in prunable_linears(model):
        z = sum(int((lin.weight == 0).sum()) for lin in block.values())
        n = sum(lin.weight.numel() for lin in block.values())
        per_block.append(z / n)
        zeros, total = zeros + z, total + n
    return zeros / total, per_block
