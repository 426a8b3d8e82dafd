"""Sections of results/README.md for the GPU runs (``results/h200/``) and the memory formula.

The predicted peaks are ``lib.placement.predicted_peak_memory`` evaluated on weightless (meta
device) models of the logged shapes, so a change of the formula shows up as a stale README.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_md import (  # noqa: E402
    MIB,
    Results,
    by_name,
    calibration,
    caption,
    make_tables,
    num,
    ppl,
    table,
    timing,
    windows,
)

# SmolLM2-135M-Instruct's architecture (config.json of the embedded model) and the paper's models'
# (their hub configs), to evaluate the memory formula; shapes, not measurements.
MODEL_SHAPES = {  # hidden, MLP width, blocks, heads, kv heads, vocab, tied embeddings
    "SmolLM2-135M-Instruct": (576, 1536, 30, 9, 3, 49152, True),
    "LLaMA-7B": (4096, 11008, 32, 32, 32, 32000, False),
    "LLaMA-13B": (5120, 13824, 40, 40, 40, 32000, False),
    "LLaMA-3-8B": (4096, 14336, 32, 32, 8, 128256, False),
    "LLaMA-2-70B": (8192, 28672, 80, 64, 8, 32000, False),
}


@functools.cache
def meta_model(model: str):
    """A weightless (meta device) LLaMA-layout model with the shapes of ``model`` (:data:`MODEL_SHAPES`)
    and SDPA attention."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d, f, layers, heads, kv, vocab, tied = MODEL_SHAPES[model]
    config = LlamaConfig(
        hidden_size=d,
        intermediate_size=f,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def formula_peak(model: str, method: str, *, nsamples: int, seqlen: int, micro_batch: int, placement: str):
    """``lib.placement.predicted_peak_memory`` for ``model`` (a :data:`MODEL_SHAPES` key) pruned by
    ``method`` on a GPU in bf16 (bytes, :class:`lib.placement.MemoryEstimate`)."""
    import torch

    from lib.placement import predicted_peak_memory
    from lib.pruners import PRUNERS

    return predicted_peak_memory(
        meta_model(model),
        nsamples=nsamples,
        seqlen=seqlen,
        micro_batch=micro_batch,
        dtype=torch.bfloat16,
        needs=PRUNERS[method.removesuffix("_alp")].needs,
        placement=placement,
        device=torch.device("cuda"),
    )


def h200(res: Results) -> str:
    parts = ["## One GPU (H200)"]
    if res.path("h200/bench_pipeline.json").exists():
        b = res.load("h200/bench_pipeline.json")
        st = b["stage_seconds"]
        stages = ("load", "eval_dense", "gradients", "calibration_forward", "prune_maths", "eval")
        parts.append(
            "`scripts/bench_pipeline.py -- --device cuda` (Wanda-ALP, reference settings: 128 x 2048 C4 "
            "calibration, full WikiText-2 test). The load includes the one-off GGUF conversion; "
            "`eval_vs_plain_forward` of this log is not valid (see `results/h200/README.md`).\n\n"
            + table(
                ["wall s", *(f"{s} s" for s in stages), "GEMM TFLOP/s", "roofline ratio"],
                [
                    [num(b["wall_seconds"], 1), *(num(st.get(s), 1) for s in stages), num(b["gemm_tflops"], 0)]
                    + [num(b["roofline_ratio"], 1)]
                ],
            )
            + "\n\n"
            + caption(
                res,
                "h200/bench_pipeline.json",
                [],
                "bash scripts/bench_gpu.sh OUT   # step 1",
                "dtype: `--dtype auto`, bf16 on the GPU (not recorded in this log).",
            )
        )
    if res.path("h200/paper").exists():
        logs = make_tables.load_logs([str(res.path("h200/paper"))])
        named = by_name(res.logs("h200/paper"))
        rows = [
            [
                log["prune_method"],
                num(ppl(log)),
                num(timing(log, "load"), 1),
                num(timing(log, "prune"), 1),
                num(timing(log, "eval"), 1),
                res.show(f"h200/paper/{name}.json"),
            ]
            for name, log in named.items()
        ]
        parts.append(
            "The paper's 70 % grid at the reference calibration (128 x 2048), which the CPU runs above could not "
            "afford:\n\n"
            + make_tables.table_ii(make_tables.select(logs, 0.7, 0.15), logs, 0.7, 0.15)
            + "\n\n"
            + table(["method", "WikiText-2 ppl", "load s", "prune s", "eval s", "log"], rows)
            + "\n\n"
            + caption(res, "h200/paper/", list(named.values()), "bash scripts/bench_gpu.sh OUT   # step 3")
        )
    if res.path("h200/placements").exists():
        named = by_name(res.logs("h200/placements"))
        rows = [
            [
                log["prune_method"],
                log.get("placement"),
                num(ppl(log)),
                num(timing(log, "prune"), 1),
                num(timing(log, "eval"), 1),
                res.show(f"h200/placements/{name}.json"),
            ]
            for name, log in named.items()
        ]
        parts.append(
            "Placements (`bash scripts/bench_gpu.sh`, step 2), real weights, reference settings. The offloaded run "
            "predates the fix of the offloaded calibration embedding (`results/h200/README.md`), so its perplexity "
            "differs from the run with the weights on the GPU:\n\n"
            + table(["method", "placement", "WikiText-2 ppl", "prune s", "eval s", "log"], rows)
            + "\n\n"
            + caption(res, "h200/placements/", list(named.values()), "bash scripts/bench_gpu.sh OUT   # step 2")
        )
    parts.append(h200_memory(res))
    if res.path("h200/offload_check").exists():
        named = by_name(res.logs("h200/offload_check"))
        rows = [
            [name, log["prune_method"], log.get("placement"), log["model"], windows(log), repr(ppl(log))]
            for name, log in named.items()
        ]
        parts.append(
            "Offload check after the fix of the offloaded calibration embedding: the SmolLM2 architecture with "
            "random weights (`model` below), first 16 WikiText-2 windows; `wanda_offload_oldcode` ran the "
            "previous `lib/sequential.py`. Perplexities printed in full.\n\n"
            + table(["log", "method", "placement", "model", "eval", "WikiText-2 ppl"], rows)
            + "\n\n"
            + caption(res, "h200/offload_check/", list(named.values()), None)
        )
    return "\n\n".join(parts)


def h200_memory(res: Results) -> str:
    """Measured GPU peaks while pruning next to the formula's prediction for the same settings."""
    rows, logs, passes = [], [], []
    for folder in ("h200/paper", "h200/placements"):
        if not res.path(folder).exists():
            continue
        for name, log in res.logs(folder):
            measured = log.get("measured_prune_peak_bytes")
            if not measured or log.get("model") not in MODEL_SHAPES:
                continue
            args = log.get("args") or {}
            predicted = formula_peak(
                log["model"],
                log["prune_method"],
                nsamples=log["calibration"]["nsamples"],
                seqlen=log["calibration"]["seqlen"],
                micro_batch=args.get("calib_batch_size", 4),
                placement=log.get("placement", "device"),
            ).device
            logs.append(log)
            rows.append(
                [log["prune_method"], log.get("placement"), calibration(log), num(measured / MIB, 1)]
                + [num(predicted / MIB, 1), f"{measured / predicted:.2f}", res.show(f"{folder}/{name}")]
            )
            gp = (log.get("ratio_info") or {}).get("gradient_pass") or {}
            if "peak_memory_mb" in gp:
                passes.append([num(gp["seconds"], 1), num(gp["peak_memory_mb"], 1), res.show(f"{folder}/{name}")])
    prose = (
        "GPU peak while pruning (`measured_prune_peak_bytes`, the CUDA allocator's peak) against "
        "`lib.placement.predicted_peak_memory` evaluated now for each log's settings (its calibration and "
        "`--calib_batch_size`, bf16, SDPA). The formula was revised using these same H200 runs, so this table "
        "shows how well it was fitted to them, not a validation; the prediction each log recorded when it ran "
        "(`predicted_memory_bytes`) came from the earlier formula."
    )
    head = ["method", "placement", "calibration", "measured MiB", "predicted MiB", "measured / predicted", "log"]
    parts = ["### Memory on the H200: measured and predicted", prose, table(head, rows)]
    if passes:
        parts.append(
            "The gradient pass (Stage A, 10 x 64 tokens, `l2_hundred_total`) in the runs that computed it "
            "(`ratio_info.gradient_pass`; the others read the cache):\n\n"
            + table(["seconds", "peak MiB (CUDA allocator)", "log"], passes)
        )
    return "\n\n".join(parts)


def memory_formula(res: Results) -> str:
    rows = []
    for model in ("LLaMA-7B", "LLaMA-13B", "LLaMA-3-8B", "LLaMA-2-70B"):
        for method, label in (("wanda", "Wanda"), ("sparsegpt", "SparseGPT")):
            kw = dict(nsamples=128, seqlen=2048, micro_batch=4)
            dev, off = (formula_peak(model, method, placement=p, **kw) for p in ("device", "offload"))
            rows.append(
                [model, label, num(dev.device / 2**30, 1), num(off.device / 2**30, 1), num(off.host / 2**30, 1)]
            )
    return "\n\n".join(
        [
            "## Predicted peak memory at the paper's settings (formula, not measured)",
            "`lib.placement.predicted_peak_memory` on the models' shapes (`MODEL_SHAPES` in this script): "
            "128 x 2048 tokens, bf16, `--calib_batch_size 4`, SDPA. SparseGPT's figure is an upper bound "
            "(layers that read one input share one Hessian). INSTALL.md gives the formula.",
            table(
                ["model", "pruner", "GPU, default (GiB)", "GPU, `--offload` (GiB)", "CPU with `--offload` (GiB)"], rows
            ),
        ]
    )
