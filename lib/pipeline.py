"""The stages of one ``main.py`` run: ratios, a pruned model and perplexities.

Each stage takes the option groups of :mod:`lib.options` it needs (never the argparse
namespace); the algorithms they call (``lib.allocation``, ``lib.prune``, ``lib.eval``...)
take plain values.
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from pathlib import Path

import torch

from . import __version__
from .allocation import alp, alphapruning, dlp, owl, ramp, uniform
from .arch import prunable_linears
from .block_metrics import block_sizes, heavy_tail_alpha, wanda_block_metrics
from .data import calibration_provenance, load_texts, sample_calibration, source_id, text_source
from .eval import perplexity
from .masks import SparsityPattern
from .models import ModelSource, load_model
from .options import (
    TUNED_FIELD,
    CalibrationOptions,
    EvalOptions,
    GradientOptions,
    ModelOptions,
    PruningOptions,
    RunOptions,
)
from .placement import (
    CPU_RUNTIME,
    RunMemoryEstimate,
    blocks_on_demand,
    format_estimate,
    format_run_estimate,
    offloaded_parameters,
    predicted_evaluation_memory,
    predicted_gradient_pass_memory,
    predicted_peak_memory,
    predicted_search_backup,
)
from .prune import prune_model, statistics_needed
from .pruners import PRUNERS
from .quant import QuantConfig, StorageFigures, storage_figures
from .search import candidate_grid, search_parameter
from .searched.allocate import searched_allocation
from .searched.options import SEARCHED_ALLOCATIONS
from .sensitivity import (
    CacheMismatch,
    block_summary,
    cache_metadata,
    default_cache_path,
    gradient_provenance,
    gradient_sensitivities,
    load_cache,
    save_cache,
)
from .utils import StageTimer, atomic_write_json, cache_root, free_memory, resolve_dtype


def gradient_cache_path(options: GradientOptions, metadata: dict) -> Path:
    """The cache file a run reads or writes: ``--gradient_path`` or the default under ``cache_root()``."""
    return Path(options.cache_path) if options.cache_path else default_cache_path(cache_root(), metadata)


def gradient_metadata(options: GradientOptions, source: ModelSource, *, data_dir, device: torch.device) -> dict:
    """Cache metadata for this run's Stage-A settings, the pass's dtype on ``device`` and the
    data source (the local file's checksum, or the hub id and revision) included."""
    return cache_metadata(
        model=source.name,
        fingerprint=source.fingerprint(),
        grad_type=options.grad_type,
        loss=options.loss,
        nsamples=options.nsamples,
        seqlen=options.seqlen,
        seed=options.seed,
        dataset=options.dataset,
        grad_dtype=gradient_dtype(options.dtype, device),
        data_source=source_id(text_source(options.dataset, data_dir)),
    )


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory_mb` on a GPU (every visible one); the process's
    peak RSS on the CPU cannot be reset."""
    if device.type == "cuda":
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory` (MiB): on a GPU the CUDA allocator's largest
    peak over the visible GPUs (``--device_map auto`` may compute on any), else the process's
    peak RSS."""
    if device.type == "cuda":
        return max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def compute_gradient_cache(
    source: ModelSource,
    metadata: dict,
    path: Path,
    *,
    data_dir,
    device,
    dtype,
    save_full: bool = False,
    checkpointing: bool = False,
    device_map: str | None = None,
    loaded: tuple | None = None,
) -> dict:
    """Load the model in ``dtype`` (on ``device``, or spread by ``device_map="auto"``), run the
    gradient pass, write the cache; return run figures (``seconds``, ``peak_memory_mb``: process
    peak RSS on CPU, allocator peak on CUDA). ``loaded``: ``(model, tokenizer)`` already in memory
    in ``dtype`` on ``device``, used instead of a second copy (the pass restores its grad flags)."""
    if str(dtype).removeprefix("torch.") != metadata["grad_dtype"]:
        raise ValueError(f"gradient pass in {dtype}, but the cache metadata says {metadata['grad_dtype']}")
    start = time.perf_counter()
    reset_peak_memory(device)
    if loaded is not None:
        model, tokenizer = loaded
    else:
        model, tokenizer = load_model(source, device=device, dtype=dtype, device_map=device_map)
    docs = load_texts(metadata["dataset"], data_dir)
    samples, note = sample_calibration(
        tokenizer, docs, nsamples=metadata["nsamples"], seqlen=metadata["seqlen"], seed=metadata["seed"]
    )
    print(f"[gradients] {note}")
    provenance = calibration_provenance(metadata["dataset"], data_dir, samples, note, seed=metadata["seed"], texts=docs)
    sensitivities = gradient_sensitivities(
        model, samples, grad_type=metadata["grad_type"], loss=metadata["loss"], checkpointing=checkpointing
    )
    peak = peak_memory_mb(device)
    summary = block_summary(sensitivities)
    extra = {"tool_version": __version__, "provenance": provenance}
    save_cache(path, summary, {**metadata, **extra}, sensitivities if save_full else None)
    del model, sensitivities
    free_memory()
    print(f"[gradients] wrote {path} (peak memory {peak:.0f} MiB)")
    return {"seconds": time.perf_counter() - start, "path": str(path), "peak_memory_mb": peak}


def gradient_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: fp32 on CPU (cheap for the few samples, and exact), half precision on GPU."""
    return torch.float32 if name == "auto" and device.type == "cpu" else resolve_dtype(name, device)


def alp_block_scores(
    grad: GradientOptions,
    model_options: ModelOptions,
    data_dir,
    num_blocks: int,
    timer: StageTimer,
    loaded: tuple | None = None,
) -> tuple[torch.Tensor, dict]:
    """ALP's ``Z_l`` ``(num_blocks,)`` from the sensitivity cache, computing the cache first when missing.
    ``loaded``: the run's ``(model, tokenizer)``, reused for the gradient pass when it sits on the
    device in the gradient dtype (same weights, no second copy in memory)."""
    metadata = gradient_metadata(grad, model_options.source, data_dir=data_dir, device=model_options.device)
    path = gradient_cache_path(grad, metadata)
    figures = {"cached": True}
    grad_dtype = gradient_dtype(grad.dtype, model_options.device)
    if not path.exists():
        with timer("gradients"):
            figures = compute_gradient_cache(
                model_options.source,
                metadata,
                path,
                data_dir=data_dir,
                device=model_options.device,
                dtype=grad_dtype,
                checkpointing=grad.checkpointing,
                device_map="auto" if model_options.placement == "auto" else None,
                loaded=loaded if model_options.placement == "device" and model_options.dtype == grad_dtype else None,
            )
    else:
        print(f"[gradients] using cache {path}")
    summary, cached = load_cache(path, expected=metadata)
    if len(summary.abs_z_sum) != num_blocks:
        raise CacheMismatch(f"{path} has {len(summary.abs_z_sum)} blocks, the model {num_blocks}")
    info = {"gradient_cache": str(path), "gradient_pass": figures, **metadata}
    return summary.abs_z_sum, {**info, "gradient_provenance": gradient_provenance(cached, path)}


# allocation -> formula(scores, s, value, sizes); the tuned value's field: options.TUNED_FIELD
FORMULAS = {
    "alp": alp,
    "dlp": dlp,
    "owl": owl,
    "ramp": lambda scores, s, v, sizes: ramp(len(sizes), s, v, sizes),  # ramp needs no scores, only depth
    "alphapruning": alphapruning,
}


def allocation_scores(run: RunOptions, model, calib_ids, timer, tokenizer=None) -> tuple[torch.Tensor | None, dict]:
    """The per-block scores ``(num_blocks,)`` the chosen allocation ranks blocks by (``None`` for ramp)."""
    allocation = run.allocation
    if allocation.name == "alp":
        loaded = None if tokenizer is None else (model, tokenizer)
        return alp_block_scores(run.gradients, run.model, run.data_dir, len(block_sizes(model)), timer, loaded)
    if allocation.name in ("owl", "dlp"):
        metrics = wanda_block_metrics(
            model,
            calib_ids,
            owl_m=allocation.owl_m,
            dlp_statistic=allocation.dlp_statistic,
            micro_batch=run.calibration.micro_batch,
            device=engine_device(run.model),
        )
        if allocation.name == "owl":
            return metrics["outlier_share"], {"owl_m": allocation.owl_m}
        return metrics["dlp"], {"dlp_statistic": allocation.dlp_statistic}
    if allocation.name == "alphapruning":
        xmin = allocation.alphapruning_xmin
        return heavy_tail_alpha(model, xmin=xmin), {"alphapruning_xmin": xmin}
    return None, {}


def block_ratios(run: RunOptions, model, tokenizer, calib_ids, timer: StageTimer) -> tuple[list[float], dict]:
    """One sparsity per decoder block from the chosen allocation, plus what produced it.

    A hyper-parameter given as ``auto`` is chosen among ``search.candidates`` values by the
    loss of the pruned model on held-out calibration text (:func:`lib.search.search_parameter`).
    """
    allocation, s = run.allocation, run.pruning.sparsity
    sizes = block_sizes(model)
    info: dict = {"allocation": allocation.name}
    if allocation.name == "uniform":
        return uniform(len(sizes), s).ratios, info
    if allocation.name in SEARCHED_ALLOCATIONS:  # measured on the model: lib.searched
        with timer("allocation"), on_device(run.model, model):
            result, extra = searched_allocation(run, model, tokenizer, calib_ids)
        return result.ratios, {**info, **extra}
    flag, formula = TUNED_FIELD[allocation.name], FORMULAS[allocation.name]
    with timer("allocation"):
        scores, extra = allocation_scores(run, model, calib_ids, timer, tokenizer)
        info.update(extra)
        value = allocation.tuned_value()
        if value == "auto":
            value, records = tune_allocation(run, model, tokenizer, calib_ids, scores, sizes, flag, formula)
            info["search"] = records
            print(f"[allocation] {allocation.name}: chose {flag} = {value} by held-out calibration loss")
        result = formula(scores, s, value, sizes)
    info.update({flag: value, "block_scores": None if scores is None else scores.tolist(), "clamped": result.clamped})
    info["fallback"] = result.fallback
    if result.fallback:
        print(f"[allocation] {allocation.name}: {result.fallback}, so every block gets {s}")
    if result.clamped:
        print(f"[allocation] {allocation.name}: {len(result.clamped)} block(s) clamped: {result.clamped}")
    return result.ratios, info


def tune_allocation(run: RunOptions, model, tokenizer, calib_ids, scores, sizes, flag: str, formula):
    """Search ``flag`` over a symmetric grid (negative = reversed direction, 0 = uniform)."""
    search = run.allocation.search
    limit = {"alpha": search.alpha_max, "owl_lambda": search.alpha_max, "beta": search.beta_max, "epsilon": 0.5}[flag]
    candidates = candidate_grid(limit, search.candidates, symmetric=flag != "epsilon")
    seed = run.calibration.seed + 1
    held_out, note = sample_calibration(
        tokenizer,
        load_texts(run.calibration.dataset, run.data_dir),
        nsamples=search.windows,
        seqlen=search.seqlen,
        seed=seed,
    )
    print(f"[allocation] held-out text for the search (seed {seed}): {note}")
    search_calib = None if calib_ids is None else calib_ids[: search.nsamples, : search.seqlen]

    def prune_with(ratios):
        run_pruner(run.pruning.mask_only(), run.model, run.calibration, model, ratios, search_calib)

    def ratios_for(value):
        return formula(scores, run.pruning.sparsity, value, sizes).ratios

    return search_parameter(
        model, candidates, ratios_for, prune_with, held_out, name=flag, placement=lambda: on_device(run.model, model)
    )


def load_placed_model(model_options: ModelOptions):
    """``(model, tokenizer)`` placed as ``model_options.placement`` says: all on the device, in CPU
    memory (``offload``), or spread by accelerate (``auto``, refused when it had to offload weights)."""
    source, device, dtype = model_options.source, model_options.device, model_options.dtype
    if model_options.placement == "offload":
        return load_model(source, device=torch.device("cpu"), dtype=dtype)
    if model_options.placement == "auto":
        model, tokenizer = load_model(source, device=device, dtype=dtype, device_map="auto")
        left_out = offloaded_parameters(model)
        if left_out:
            raise ValueError(
                f"--device_map auto could not fit {len(left_out)} weights (e.g. {left_out[0]}) on the GPUs and "
                "offloaded them, which pruning cannot modify in place: use --offload on one GPU instead"
            )
        return model, tokenizer
    return load_model(source, device=device, dtype=dtype)


def announce_memory(pruning: PruningOptions, model_options: ModelOptions, calibration: CalibrationOptions, model):
    """Print (and return as a dict) the predicted peak memory of pruning ``model`` with these settings."""
    estimate = predicted_peak_memory(
        model,
        nsamples=calibration.nsamples,
        seqlen=calibration.seqlen,
        micro_batch=calibration.micro_batch,
        dtype=model_options.dtype,
        needs=statistics_needed(PRUNERS[pruning.engine_pruner], pruning.kernel, pruning.recovery),
        placement=model_options.placement,
        device=model_options.device,
        reconstruct_batch=pruning.recovery.batch if pruning.recovery.reconstruct else None,
        reconstruct_nsamples=pruning.recovery.nsamples,
    )
    print(f"[memory] {format_estimate(estimate, model_options.device)}")
    return estimate.as_dict()


def announce_run_memory(run: RunOptions, model, pruning_bytes: int) -> dict:
    """Print (and return as a dict) the predicted peak of the whole run on the compute device:
    the largest of pruning (``pruning_bytes``), an ``auto`` search (pruning plus its dense backup),
    ALP's gradient pass (when its cache is missing) and evaluation, plus the process's own
    runtime on a CPU."""
    model_options, device = run.model, run.model.device
    gradient_pass = 0
    if run.allocation.name == "alp" and run.pruning.pruner != "dense":
        metadata = gradient_metadata(run.gradients, model_options.source, data_dir=run.data_dir, device=device)
        if not gradient_cache_path(run.gradients, metadata).exists():
            grad_dtype = gradient_dtype(run.gradients.dtype, device)
            gradient_pass = predicted_gradient_pass_memory(
                model,
                seqlen=run.gradients.seqlen,
                dtype=grad_dtype,
                reuses_model=model_options.placement == "device" and model_options.dtype == grad_dtype,
                checkpointing=run.gradients.checkpointing,
            )
    evaluation = predicted_evaluation_memory(
        model,
        seqlen=run.eval.seqlen,
        batch_size=run.eval.batch_size or 1,
        dtype=model_options.dtype,
        offloaded=model_options.placement == "offload" and device.type != "cpu",
        attention_scores=device.type == "cpu" or getattr(model.config, "_attn_implementation", "eager") == "eager",
    )
    search = 0
    if run.allocation.searched and device.type == "cpu":  # on a GPU the backup sits in host memory
        search = pruning_bytes + predicted_search_backup(model, dtype=model_options.dtype)
    runtime = CPU_RUNTIME if device.type == "cpu" else 0
    estimate = RunMemoryEstimate(pruning_bytes, gradient_pass, evaluation, runtime, search)
    print(f"[memory] {format_run_estimate(estimate, device)}")
    return estimate.as_dict()


def on_device(model_options: ModelOptions, model) -> contextlib.AbstractContextManager:
    """Context for whole-model forwards (evaluation, zero-shot, search losses): an offloaded
    model (``--offload``) runs with one decoder block at a time on the device."""
    if model_options.placement == "offload":
        return blocks_on_demand(model, model_options.device)
    return contextlib.nullcontext(model)


def engine_device(model_options: ModelOptions) -> torch.device | None:
    """Where the sequential engine runs each block: the compute device, or (``--device_map
    auto``) wherever accelerate placed it."""
    return None if model_options.placement == "auto" else model_options.device


def model_storage(model, quant: QuantConfig | None, pattern: SparsityPattern) -> StorageFigures:
    """Packed size of the model's decoder linears (values + mask + grids) next to fp16."""
    linears = [lin.weight for block in prunable_linears(model) for lin in block.values()]
    counted = {id(w) for w in linears}
    others = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return storage_figures(linears, others, config=quant, pattern=pattern)


def run_pruner(
    pruning: PruningOptions,
    model_options: ModelOptions,
    calibration: CalibrationOptions,
    model,
    ratios: list[float],
    calib_ids,
    timer: StageTimer | None = None,
    report: dict | None = None,
) -> dict:
    """Prune (and quantize) ``model`` in place with the run's pruner, pattern and options at ``ratios``
    (one per block; ``calib_ids`` ``(n, T)``; ``timer``: the pruning maths alone go to ``"prune_maths"``).
    Returns what the OBS sweeps changed silently (re-damped Hessians, dead inputs), per linear;
    ``report`` (if given) gets the figures of ``--refine`` / ``--reconstruct``."""
    return prune_model(
        model,
        pruner_name=pruning.engine_pruner,
        ratios=ratios,
        calib_ids=calib_ids,
        pattern=pruning.pattern,
        micro_batch=calibration.micro_batch,
        device=engine_device(model_options),
        options=pruning.kernel,
        timer=timer,
        recovery=pruning.recovery,
        report=report,
    )


def stream_perplexity(evaluation: EvalOptions, model, stream, desc: str) -> dict:
    """Perplexity of one evaluation token stream ``(1, N)`` with the run's window settings."""
    return perplexity(
        model,
        stream,
        seqlen=evaluation.seqlen,
        max_windows=evaluation.windows,
        batch_size=evaluation.batch_size or 1,
        desc=desc,
    )


def perplexities(evaluation: EvalOptions, model, streams: dict, desc: str) -> dict:
    """``{dataset: perplexity record}`` over every evaluation stream."""
    return {name: stream_perplexity(evaluation, model, stream, f"{desc} {name}") for name, stream in streams.items()}


def dense_perplexity(
    evaluation: EvalOptions, model_options: ModelOptions, model, name: str, stream, timer: StageTimer
) -> dict:
    """Dense-model perplexity on evaluation set ``name``, looked up in (or added to) a small JSON
    cache per model and setting."""
    key = "|".join(
        str(x)
        for x in (
            model_options.source.name,
            model_options.source.fingerprint(),
            name,
            evaluation.seqlen,
            evaluation.windows,
            model_options.dtype,
            model_options.device.type,
            int(stream.shape[1]),
        )
    )
    store = cache_root() / "dense_ppl.json"
    known = json.loads(store.read_text()) if store.is_file() else {}
    if key in known:
        print(f"[eval] dense {name} perplexity from cache {store}")
        return {**known[key], "cached": True}
    with timer("eval_dense"), on_device(model_options, model):
        result = stream_perplexity(evaluation, model, stream, f"dense ppl {name}")
    known = json.loads(store.read_text()) if store.is_file() else {}
    known[key] = result
    atomic_write_json(store, known)
    return {**result, "cached": False}
