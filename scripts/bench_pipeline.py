"""Where the time of one ``python main.py`` run goes, against the machine's GEMM limit.

1. Measures this machine's dense GEMM throughput (``--gemm_dtype``, default bf16) in this run.
2. Runs ``main.py`` once (reference settings unless flags follow ``--``) with a fresh cache
   folder (the converted model is shared, so only the one-off GGUF conversion is skipped) and
   reads its stage times: load, gradients, dense evaluation, pruning (split into the
   calibration forward and the pruning maths), evaluation; and its peak RSS.
3. Counts each stage's useful FLOPs from the model shape (linears: 2 per weight and token,
   backward 2x more; causal attention: 2 T^2 d per layer and sequence; lm_head included) and
   reports ``roofline_ratio`` = measured time / (FLOPs / measured GEMM throughput): 1.0 is the
   limit, larger is slower.
4. Compares the evaluation's throughput with a plain transformers forward over the same
   windows (``eval_vs_plain_forward`` = ours / plain tokens per second; 1.0 = no overhead).
Prints a table, then the same figures as one JSON object on the last line.

Example (quick settings):
  python scripts/bench_pipeline.py -- --nsamples 32 --seqlen 512 --eval_windows 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import main as main_cli  # noqa: E402
from lib.arch import decoder_blocks  # noqa: E402
from lib.data import evaluation_stream, resolve_data_dir  # noqa: E402
from lib.eval import perplexity  # noqa: E402
from lib.models import load_model  # noqa: E402
from lib.utils import DTYPES, cache_root, print_figures  # noqa: E402


def gemm_tflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 7) -> float:
    """Median dense ``(n, n) @ (n, n)`` throughput in TFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e12


def model_shape(model) -> dict:
    """Parameters in the decoder blocks, in the lm_head, layers and hidden size."""
    blocks = sum(p.numel() for block in decoder_blocks(model) for p in block.parameters())
    head = model.get_output_embeddings().weight.numel()
    return {"block_params": blocks, "head_params": head, "layers": len(decoder_blocks(model)),
            "hidden": model.config.hidden_size}  # fmt: skip


def forward_flops(shape: dict, sequences: int, seqlen: int, *, head: bool) -> float:
    """Useful FLOPs of a forward over ``sequences`` x ``seqlen`` tokens (causal attention)."""
    tokens = sequences * seqlen
    linear = 2 * (shape["block_params"] + (shape["head_params"] if head else 0)) * tokens
    attention = 2 * seqlen**2 * shape["hidden"] * shape["layers"] * sequences
    return linear + attention


def stage_flops(shape: dict, args, windows: int) -> dict:
    """FLOPs per timed stage of a main.py run with flags ``args`` evaluated on ``windows`` windows."""
    evaluation = forward_flops(shape, windows, args.eval_seqlen, head=True)
    return {
        "gradients": 3 * forward_flops(shape, args.grad_nsamples, args.grad_seqlen, head=True),
        # the engine runs each block twice: once for the statistics, once for the next block's inputs
        "calibration_forward": 2 * forward_flops(shape, args.nsamples, args.seqlen, head=False),
        "eval_dense": evaluation,
        "eval": evaluation,
    }


def main() -> int:
    argv = sys.argv[1:]
    run_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gemm_dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--plain_windows", type=int, default=4, help="windows timed for the evaluation comparison")
    opts = p.parse_args(argv)
    args = main_cli.build_parser().parse_args(run_flags)
    plan = main_cli.validate(args)
    device = plan["device"]
    # a GPU needs large products to reach its peak; 2048 already does on a CPU
    limit = gemm_tflops(getattr(torch, opts.gemm_dtype), device, n=8192 if device.type == "cuda" else 2048)
    print(f"[bench] GEMM {opts.gemm_dtype}: {limit:.3f} TFLOP/s")

    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        shared_models = cache_root() / "models"
        shared_models.mkdir(parents=True, exist_ok=True)  # a first run converts the GGUF into it
        (Path(cache) / "models").symlink_to(shared_models, target_is_directory=True)
        log = Path(out) / "run.json"
        env = {**os.environ, "ALP_CACHE_DIR": cache}
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "main.py"), *run_flags, "--log_json", str(log)], check=True,
                       env=env, cwd=ROOT)  # fmt: skip
        wall = time.perf_counter() - start
        result = json.loads(log.read_text())
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    seconds = dict(result["timings"])
    if "prune" in seconds:
        seconds["calibration_forward"] = seconds["prune"] - seconds.get("prune_maths", 0.0)

    model, tokenizer = load_model(plan["source"], device=device, dtype=plan["dtype"])
    stream, _ = evaluation_stream("wikitext2", tokenizer, resolve_data_dir(args.data_dir), args.eval_seqlen)
    windows = min(stream.shape[1] // args.eval_seqlen, args.eval_windows or stream.shape[1])
    flops = stage_flops(model_shape(model), args, windows)
    timed = {k: v for k, v in seconds.items() if k in flops or k in ("prune_maths", "load")}
    useful = sum(flops[k] for k in timed if k in flops)
    measured = sum(v for k, v in timed.items() if k in flops or k == "prune_maths")
    roofline = measured / (useful / (limit * 1e12))

    n = opts.plain_windows
    windows = stream[0, : n * args.eval_seqlen].view(n, args.eval_seqlen).to(device)
    with torch.no_grad():
        model(windows[:1], use_cache=False)  # warm-up
        start = time.perf_counter()
        for w in windows:
            model(w[None], use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the launches above return before the GPU is done
        plain = time.perf_counter() - start
    start = time.perf_counter()
    perplexity(model, stream, seqlen=args.eval_seqlen, max_windows=n)
    ours = time.perf_counter() - start

    figures = {
        "run_flags": run_flags,
        "wall_seconds": wall,
        "stage_seconds": seconds,
        "stage_tflop": {k: v / 1e12 for k, v in flops.items()},
        "stage_roofline_ratio": {k: seconds[k] / (flops[k] / (limit * 1e12)) for k in flops if k in seconds},
        "peak_rss_mb": peak_rss_mb,
        "gemm_tflops": limit,
        "roofline_ratio": roofline,
        "eval_vs_plain_forward": plain / ours,
        "ppl": result["ppl"],
    }
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
