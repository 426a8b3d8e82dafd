"""Where the time of one ``python main.py`` run goes, against the machine's GEMM limit.

1. Measures this machine's peak GEMM throughput in the dtype the run uses (bf16 on a CPU with
   bf16 units or a GPU, else fp32), as the best of several shapes: large squares and the
   model's own linear shapes at the calibration micro-batch, each both as a plain product and
   as ``nn.Linear`` computes it (``x @ W^T``) (``gemm_probe`` in the JSON lists every shape;
   ``gemm_peak_shape`` names the winner).
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
5. Profiles one calibration block forward (one micro-batch) and one evaluation window with
   ``torch.profiler`` and splits their time into GEMMs, attention, element-wise / other
   operators and what no operator accounts for (Python and framework overhead): ``profile``.
Prints a table, then the same figures as one JSON object on the last line; ``--run_log PATH``
also keeps main.py's own JSON log of the timed run (perplexities, ratios, provenance).

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

from transformers import AutoConfig  # noqa: E402

import main as main_cli  # noqa: E402
from lib.arch import decoder_blocks  # noqa: E402
from lib.data import evaluation_stream, resolve_data_dir  # noqa: E402
from lib.eval import perplexity  # noqa: E402
from lib.models import gguf_checkpoint, load_model  # noqa: E402
from lib.options import build_options  # noqa: E402
from lib.sequential import capture_block_inputs  # noqa: E402
from lib.utils import DTYPES, atomic_write_json, cache_root, print_figures  # noqa: E402


def gemm_seconds(
    m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, repeats: int = 5, as_linear: bool = False
) -> float:
    """Median seconds of one ``(m, k) @ (k, n)`` product; ``as_linear``: as ``nn.Linear`` computes
    it, ``x @ W^T`` with the weight stored ``(n, k)`` (the layout the model's GEMMs use)."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    if as_linear:
        w = torch.randn(n, k, device=device, dtype=dtype)

        def product():
            return torch.nn.functional.linear(a, w)
    else:
        b = torch.randn(k, n, device=device, dtype=dtype)

        def product():
            return a @ b

    product()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_probe(shapes: dict[str, tuple[int, int, int, bool]], dtype: torch.dtype, device: torch.device) -> dict:
    """TFLOP/s of each named ``(m, k, n, as_linear)`` product; the peak is the best of them."""
    return {
        name: 2 * m * k * n / gemm_seconds(m, k, n, dtype, device, as_linear=linear) / 1e12
        for name, (m, k, n, linear) in shapes.items()
    }


def probe_shapes(config, tokens: int, device: torch.device) -> dict[str, tuple[int, int, int, bool]]:
    """Squares plus the model's linear products ``(tokens, C_in) @ (C_in, C_out)`` at ``tokens`` rows,
    each of those both with a plain ``(C_in, C_out)`` operand and as ``nn.Linear`` computes it."""
    d, f = config.hidden_size, config.intermediate_size
    squares = (2048, 4096, 8192) if device.type == "cuda" else (1024, 2048, 3072)
    shapes = {f"square {n}": (n, n, n, False) for n in squares}
    for name, (k, n) in {"q/o proj": (d, d), "up/gate": (d, f), "down": (f, d)}.items():
        shapes[f"{name} {tokens}x{k}x{n}"] = (tokens, k, n, False)
        shapes[f"{name} {tokens}x{k}x{n} as nn.Linear"] = (tokens, k, n, True)
    return shapes


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")
ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention", "aten::_softmax")


def profile_split(fn) -> dict:
    """Seconds of one call of ``fn`` split into GEMMs, attention, other operators and the rest
    (time no profiled operator accounts for: Python and dispatch overhead)."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - start
    split, others = {"gemm": 0.0, "attention": 0.0, "other_ops": 0.0}, {}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key in GEMM_OPS:
            split["gemm"] += seconds
        elif any(tag in event.key for tag in ATTENTION_OPS):
            split["attention"] += seconds
        else:
            split["other_ops"] += seconds
            others[event.key] = seconds
    split["not_in_ops"] = max(wall - sum(split.values()), 0.0)
    split["wall"] = wall
    split["top_other_ops"] = dict(sorted(others.items(), key=lambda kv: -kv[1])[:6])
    return split


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


def gguf_or_folder(source) -> str:
    """The checkpoint folder of a model source (a GGUF file is converted once, as main.py does)."""
    return str(gguf_checkpoint(source.location)) if source.kind == "gguf" else source.location


@torch.no_grad()
def block_and_window_profile(model, window: torch.Tensor, micro_batch: int, seqlen: int) -> dict:
    """:func:`profile_split` of one decoder block's forward on a calibration micro-batch
    ``(micro_batch, seqlen)`` and of one whole-model evaluation window ``(1, eval_seqlen)``."""
    block = decoder_blocks(model)[0]
    ids = window[:, :seqlen].repeat(micro_batch, 1)
    inputs = capture_block_inputs(model, ids, micro_batch=micro_batch)
    positional, keywords = inputs.call_args(inputs.hidden[0])
    return {
        "calibration_block_forward": profile_split(lambda: block(inputs.hidden[0], *positional, **keywords)),
        "evaluation_window": profile_split(lambda: model(window, use_cache=False)),
    }


def main() -> int:
    argv = sys.argv[1:]
    run_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gemm_dtype", default="auto", choices=["auto", *DTYPES], help="auto: the run's model dtype")
    p.add_argument("--plain_windows", type=int, default=4, help="windows timed for the evaluation comparison")
    p.add_argument(
        "--run_log",
        type=Path,
        default=None,
        help="also keep main.py's own JSON log of the timed run at this path (never replaced)",
    )
    opts = p.parse_args(argv)
    if opts.run_log is not None and opts.run_log.exists():
        p.error(f"--run_log {opts.run_log} exists; choose another path (a log is never replaced)")
    args = main_cli.build_parser().parse_args(run_flags)
    options = build_options(args)
    device, dtype = options.model.device, options.model.dtype
    gemm_dtype = dtype if opts.gemm_dtype == "auto" else DTYPES[opts.gemm_dtype]
    config = AutoConfig.from_pretrained(gguf_or_folder(options.model.source))
    shapes = probe_shapes(config, options.calibration.micro_batch * args.seqlen, device)
    probe = gemm_probe(shapes, gemm_dtype, device)
    peak_shape = max(probe, key=probe.get)
    limit = probe[peak_shape]
    print(f"[bench] GEMM peak {str(gemm_dtype).replace('torch.', '')}: {limit:.3f} TFLOP/s ({peak_shape})")

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
        if opts.run_log is not None:
            atomic_write_json(opts.run_log, result, overwrite=False)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    seconds = dict(result["timings"])
    if "prune" in seconds:
        seconds["calibration_forward"] = seconds["prune"] - seconds.get("prune_maths", 0.0)

    model, tokenizer = load_model(options.model.source, device=device, dtype=dtype)
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
    profile = block_and_window_profile(model, windows[:1], options.calibration.micro_batch, args.seqlen)

    figures = {
        "run_flags": run_flags,
        "wall_seconds": wall,
        "stage_seconds": seconds,
        "stage_tflop": {k: v / 1e12 for k, v in flops.items()},
        "stage_roofline_ratio": {k: seconds[k] / (flops[k] / (limit * 1e12)) for k in flops if k in seconds},
        "peak_rss_mb": peak_rss_mb,
        "gemm_tflops": limit,
        "gemm_dtype": str(gemm_dtype).replace("torch.", ""),
        "gemm_peak_shape": peak_shape,
        "gemm_probe": probe,
        "profile": profile,
        "roofline_ratio": roofline,
        "eval_vs_plain_forward": plain / ours,
        "ppl": result["ppl"],
    }
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
