"""The stages of one ``main.py`` run that turn parsed flags into ratios, a pruned model and
perplexities. Functions take the argparse namespace (``args``) and the validated ``plan``
of ``main.validate``; the algorithms they call (``lib.allocation``, ``lib.prune``,
``lib.eval``...) take plain values.
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
from .data import load_texts, sample_calibration
from .eval import perplexity
from .masks import SparsityPattern
from .models import ModelSource, load_model
from .placement import blocks_on_demand, format_estimate, offloaded_parameters, predicted_peak_memory
from .prune import prune_model, statistics_needed
from .pruners import PRUNERS, PrunerOptions
from .quant import QuantConfig, StorageFigures, storage_figures
from .search import candidate_grid, search_parameter
from .sensitivity import (
    CacheMismatch,
    block_summary,
    cache_metadata,
    default_cache_path,
    gradient_sensitivities,
    load_cache,
    save_cache,
)
from .utils import StageTimer, atomic_write_json, cache_root, free_memory, resolve_dtype


def gradient_cache_path(args, metadata: dict) -> Path:
    """The cache file a run reads or writes: ``--gradient_path`` or the default under ``cache_root()``."""
    return Path(args.gradient_path) if args.gradient_path else default_cache_path(cache_root(), metadata)


def gradient_metadata(args, source: ModelSource) -> dict:
    """Cache metadata for this run's Stage-A settings (flags from :func:`add_gradient_args`)."""
    return cache_metadata(
        model=source.name,
        fingerprint=source.fingerprint(),
        grad_type=args.grad_type,
        loss=args.grad_loss,
        nsamples=args.grad_nsamples,
        seqlen=args.grad_seqlen,
        seed=args.seed,
        dataset=args.dataset,
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
) -> dict:
    """Load the model in ``dtype`` (on ``device``, or spread by ``device_map="auto"``), run the
    gradient pass, write the cache; return run figures (``seconds``, ``peak_memory_mb``: process
    peak RSS on CPU, allocator peak on CUDA)."""
    start = time.perf_counter()
    reset_peak_memory(device)
    model, tokenizer = load_model(source, device=device, dtype=dtype, device_map=device_map)
    docs = load_texts(metadata["dataset"], data_dir)
    samples, note = sample_calibration(
        tokenizer, docs, nsamples=metadata["nsamples"], seqlen=metadata["seqlen"], seed=metadata["seed"]
    )
    print(f"[gradients] {note}")
    sensitivities = gradient_sensitivities(
        model, samples, grad_type=metadata["grad_type"], loss=metadata["loss"], checkpointing=checkpointing
    )
    peak = peak_memory_mb(device)
    summary = block_summary(sensitivities)
    save_cache(path, summary, {**metadata, "tool_version": __version__}, sensitivities if save_full else None)
    del model, sensitivities
    free_memory()
    print(f"[gradients] wrote {path} (peak memory {peak:.0f} MiB)")
    return {"seconds": time.perf_counter() - start, "path": str(path), "peak_memory_mb": peak}


def gradient_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: fp32 on CPU (cheap for the few samples, and exact), half precision on GPU."""
    return torch.float32 if name == "auto" and device.type == "cpu" else resolve_dtype(name, device)


def alp_block_scores(args, plan, num_blocks: int, timer: StageTimer) -> tuple[torch.Tensor, dict]:
    """ALP's ``Z_l`` from the sensitivity cache, computing the cache first when it is missing."""
    metadata = gradient_metadata(args, plan["source"])
    path = gradient_cache_path(args, metadata)
    figures = {"cached": True}
    if not path.exists():
        with timer("gradients"):
            figures = compute_gradient_cache(
                plan["source"],
                metadata,
                path,
                data_dir=plan["data_dir"],
                device=plan["device"],
                dtype=gradient_dtype(args.grad_dtype, plan["device"]),
                checkpointing=args.grad_checkpointing,
                device_map="auto" if plan["placement"] == "auto" else None,
            )
    else:
        print(f"[gradients] using cache {path}")
    summary, _ = load_cache(path, expected=metadata)
    if len(summary.abs_z_sum) != num_blocks:
        raise CacheMismatch(f"{path} has {len(summary.abs_z_sum)} blocks, the model {num_blocks}")
    return summary.abs_z_sum, {"gradient_cache": str(path), "gradient_pass": figures, **metadata}


# allocation -> (flag holding its tuned hyper-parameter, formula(scores, s, value, sizes))
TUNABLE = {
    "alp": ("alpha", lambda scores, s, v, sizes: alp(scores, s, v, sizes)),
    "dlp": ("alpha", lambda scores, s, v, sizes: dlp(scores, s, v, sizes)),
    "owl": ("owl_lambda", lambda scores, s, v, sizes: owl(scores, s, v, sizes)),
    "ramp": ("beta", lambda scores, s, v, sizes: ramp(len(sizes), s, v, sizes)),
    "alphapruning": ("epsilon", lambda scores, s, v, sizes: alphapruning(scores, s, v, sizes)),
}


def allocation_scores(args, plan, model, calib_ids, timer) -> tuple[torch.Tensor | None, dict]:
    """The per-block scores the chosen allocation ranks blocks by (``None`` for ramp)."""
    name = plan["allocation"]
    if name == "alp":
        return alp_block_scores(args, plan, len(block_sizes(model)), timer)
    if name in ("owl", "dlp"):
        metrics = wanda_block_metrics(
            model, calib_ids, owl_m=args.owl_m, micro_batch=args.calib_batch_size, device=engine_device(plan)
        )
        return metrics["outlier_share" if name == "owl" else "median"], {"owl_m": args.owl_m} if name == "owl" else {}
    if name == "alphapruning":
        return heavy_tail_alpha(model), {}
    return None, {}


def block_ratios(args, plan, model, tokenizer, calib_ids, timer: StageTimer) -> tuple[list[float], dict]:
    """One sparsity per decoder block from the chosen ``--allocation``, plus what produced it.

    A hyper-parameter given as ``auto`` is chosen among ``--search_candidates`` values by the
    loss of the pruned model on held-out calibration text (:func:`lib.search.search_parameter`).
    """
    name, s = plan["allocation"], args.sparsity_ratio
    sizes = block_sizes(model)
    info: dict = {"allocation": name}
    if name == "uniform":
        return uniform(len(sizes), s).ratios, info
    flag, formula = TUNABLE[name]
    with timer("allocation"):
        scores, extra = allocation_scores(args, plan, model, calib_ids, timer)
        info.update(extra)
        value = getattr(args, flag)
        if value == "auto":
            value, records = tune_allocation(args, plan, model, tokenizer, calib_ids, scores, sizes, flag, formula)
            info["search"] = records
            print(f"[allocation] {name}: chose {flag} = {value} by held-out calibration loss")
        result = formula(scores, s, value, sizes)
    info.update({flag: value, "block_scores": None if scores is None else scores.tolist(), "clamped": result.clamped})
    if result.clamped:
        print(f"[allocation] {name}: {len(result.clamped)} block(s) clamped: {result.clamped}")
    return result.ratios, info


def tune_allocation(args, plan, model, tokenizer, calib_ids, scores, sizes, flag, formula):
    """Search ``flag`` over a symmetric grid (negative = reversed direction, 0 = uniform)."""
    limit = {"alpha": args.alpha_max, "owl_lambda": args.alpha_max, "beta": args.beta_max, "epsilon": 0.5}[flag]
    candidates = candidate_grid(limit, args.search_candidates, symmetric=flag != "epsilon")
    held_out, note = sample_calibration(
        tokenizer,
        load_texts(args.dataset, plan["data_dir"]),
        nsamples=args.search_windows,
        seqlen=args.search_seqlen,
        seed=args.seed + 1,
    )
    print(f"[allocation] held-out text for the search (seed {args.seed + 1}): {note}")
    search_calib = None if calib_ids is None else calib_ids[: args.search_nsamples, : args.search_seqlen]

    def prune_with(ratios):
        run_pruner(args, plan, model, ratios, search_calib)

    def ratios_for(value):
        return formula(scores, args.sparsity_ratio, value, sizes).ratios

    return search_parameter(
        model, candidates, ratios_for, prune_with, held_out, name=flag, placement=lambda: on_device(plan, model)
    )


def load_placed_model(plan):
    """``(model, tokenizer)`` placed as ``plan["placement"]`` says: all on the device, in CPU memory
    (``offload``), or spread by accelerate (``auto``, refused when it had to offload weights)."""
    if plan["placement"] == "offload":
        return load_model(plan["source"], device=torch.device("cpu"), dtype=plan["dtype"])
    if plan["placement"] == "auto":
        model, tokenizer = load_model(plan["source"], device=plan["device"], dtype=plan["dtype"], device_map="auto")
        left_out = offloaded_parameters(model)
        if left_out:
            raise ValueError(
                f"--device_map auto could not fit {len(left_out)} weights (e.g. {left_out[0]}) on the GPUs and "
                "offloaded them, which pruning cannot modify in place: use --offload on one GPU instead"
            )
        return model, tokenizer
    return load_model(plan["source"], device=plan["device"], dtype=plan["dtype"])


def announce_memory(args, plan, model) -> dict:
    """Print (and return) the predicted peak memory of pruning ``model`` with these settings."""
    options = pruner_options(args, plan)
    estimate = predicted_peak_memory(
        model,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        micro_batch=args.calib_batch_size,
        dtype=plan["dtype"],
        needs=statistics_needed(PRUNERS[engine_pruner(plan)], options),
        placement=plan["placement"],
        device=plan["device"],
    )
    print(f"[memory] {format_estimate(estimate, plan['device'])}")
    return estimate.as_dict()


def on_device(plan, model) -> contextlib.AbstractContextManager:
    """Context for whole-model forwards (evaluation, zero-shot, search losses): an offloaded
    model (``--offload``) runs with one decoder block at a time on the device."""
    if plan["placement"] == "offload":
        return blocks_on_demand(model, plan["device"])
    return contextlib.nullcontext(model)


def engine_device(plan) -> torch.device | None:
    """Where the sequential engine runs each block: the compute device, or (``--device_map
    auto``) wherever accelerate placed it."""
    return None if plan["placement"] == "auto" else plan["device"]


def model_storage(model, quant: QuantConfig | None, pattern: SparsityPattern) -> StorageFigures:
    """Packed size of the model's decoder linears (values + mask + grids) next to fp16."""
    linears = [lin.weight for block in prunable_linears(model) for lin in block.values()]
    counted = {id(w) for w in linears}
    others = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return storage_figures(linears, others, config=quant, pattern=pattern)


def engine_pruner(plan) -> str:
    """The pruner the engine runs. ``dense`` with ``--wbits`` only quantizes: magnitude at
    sparsity 0 prunes nothing, and the engine then quantizes every layer."""
    return "magnitude" if plan["pruner"] == "dense" else plan["pruner"]


def needs_calibration_data(args, plan) -> bool:
    """Whether pruning, quantizing or the allocation reads calibration sequences."""
    tuned = plan["allocation"] in TUNABLE and getattr(args, TUNABLE[plan["allocation"]][0]) == "auto"
    needs = statistics_needed(PRUNERS[engine_pruner(plan)], pruner_options(args, plan))
    return bool(needs) or plan["allocation"] in ("owl", "dlp") or tuned


def run_pruner(args, plan, model, ratios, calib_ids, timer: StageTimer | None = None) -> None:
    """Prune (and quantize) ``model`` in place with the CLI's pruner, pattern and options at ``ratios``
    (``timer``: the pruning maths alone go to ``"prune_maths"``)."""
    prune_model(
        model,
        pruner_name=engine_pruner(plan),
        ratios=ratios,
        calib_ids=calib_ids,
        pattern=plan["pattern"],
        micro_batch=args.calib_batch_size,
        device=engine_device(plan),
        options=pruner_options(args, plan),
        timer=timer,
    )


def stream_perplexity(args, model, stream, desc: str) -> dict:
    """Perplexity of one evaluation token stream with the CLI's window settings."""
    return perplexity(
        model,
        stream,
        seqlen=args.eval_seqlen,
        max_windows=args.eval_windows,
        batch_size=args.eval_batch_size or 1,
        desc=desc,
    )


def perplexities(args, model, streams: dict, desc: str) -> dict:
    """``{dataset: perplexity record}`` over every evaluation stream."""
    return {name: stream_perplexity(args, model, stream, f"{desc} {name}") for name, stream in streams.items()}


def pruner_options(args, plan) -> PrunerOptions:
    """The pruner hyper-parameters from the CLI flags (and the validated quantization settings)."""
    return PrunerOptions(
        ria_a=args.ria_a,
        ria_per_matrix=args.ria_per_matrix,
        reallocation=args.reallocation,
        lsa=args.lsa,
        blocksize=args.blocksize,
        percdamp=args.percdamp,
        quant=plan["quant"],
    )


def dense_perplexity(args, plan, model, name: str, stream, timer: StageTimer) -> dict:
    """Dense-model perplexity on evaluation set ``name``, looked up in (or added to) a small JSON
    cache per model and setting."""
    key = "|".join(
        str(x)
        for x in (
            plan["source"].name,
            plan["source"].fingerprint(),
            name,
            args.eval_seqlen,
            args.eval_windows,
            plan["dtype"],
            plan["device"].type,
            int(stream.shape[1]),
        )
    )
    store = cache_root() / "dense_ppl.json"
    known = json.loads(store.read_text()) if store.is_file() else {}
    if key in known:
        print(f"[eval] dense {name} perplexity from cache {store}")
        return {**known[key], "cached": True}
    with timer("eval_dense"), on_device(plan, model):
        result = stream_perplexity(args, model, stream, f"dense ppl {name}")
    known = json.loads(store.read_text()) if store.is_file() else {}
    known[key] = result
    atomic_write_json(store, known)
    return {**result, "cached": False}
