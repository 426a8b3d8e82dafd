"""ALP Stage A: per-weight loss-gradient sensitivities on a few calibration samples, cached.

Example: python save_gradient.py --grad_nsamples 10 --grad_seqlen 64 --grad_type l2_hundred_total
"""

from __future__ import annotations

import argparse
import sys

from lib.data import resolve_data_dir
from lib.models import model_names_help, resolve_model_source
from lib.options import gradient_options
from lib.pipeline import compute_gradient_cache, gradient_cache_path, gradient_dtype, gradient_metadata
from lib.sensitivity import (
    GRAD_TYPES,
    LOSSES,
)
from lib.utils import resolve_device


def add_gradient_args(parser: argparse.ArgumentParser, *, sample_aliases: tuple[str, ...] = ()) -> None:
    """Stage-A flags, shared by ``main.py`` and this script (which also accepts ``--nsamples``/``--ngrad``)."""
    parser.add_argument(
        "--grad_nsamples",
        *sample_aliases,
        dest="grad_nsamples",
        type=int,
        default=10,
        help="calibration samples for the gradients (reference: 10)",
    )
    parser.add_argument("--grad_seqlen", type=int, default=64, help="tokens per gradient sample (reference: 64)")
    parser.add_argument(
        "--grad_type",
        choices=GRAD_TYPES,
        default="l2_hundred_total",
        help="sensitivity statistic over per-sample gradients g_k: l2_total = sum g^2, l2 = its sqrt, "
        "l1 = sum |g|, l2_hundred_total = sum g^2 + 1e4 g_N^2 (the reference's, quirk included)",
    )
    parser.add_argument(
        "--grad_loss",
        choices=LOSSES,
        default="last_token",
        help="last_token: loss of the final prediction only (reference); full_sequence: all predictions (GBLM-Pruner)",
    )
    parser.add_argument(
        "--grad_dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="model dtype for the backward pass (auto: fp32 on CPU, half precision on GPU)",
    )
    parser.add_argument(
        "--grad_checkpointing",
        action="store_true",
        help="recompute each block's activations in the backward pass instead of storing them (less memory, "
        "one extra block forward); the weights and one fp32 accumulator per prunable weight must still fit",
    )
    parser.add_argument(
        "--gradient_path",
        default=None,
        help="sensitivity cache file (default: one file per model and setting under $ALP_CACHE_DIR, "
        "~/.cache/alp/gradients)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=None,
        help=f"hub id, checkpoint folder, .gguf file, or a model installed as GGUF parts: {model_names_help()} "
        "(default: the embedded SmolLM2-135M-Instruct)",
    )
    add_gradient_args(parser, sample_aliases=("--nsamples", "--ngrad"))
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--dataset", choices=["c4"], default="c4", help="calibration text")
    parser.add_argument("--data_dir", default=None, help="local data folder (default: $ALP_DATA_DIR, else the hub)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--device_map",
        choices=["auto"],
        default=None,
        help="auto: accelerate spreads the model over all visible GPUs (models too big for one)",
    )
    parser.add_argument(
        "--save_full",
        action="store_true",
        help="also store every per-weight sensitivity (4 bytes per weight), not only the block summary",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.grad_nsamples < 1 or args.grad_seqlen < 2:
            raise ValueError("--grad_nsamples must be >= 1 and --grad_seqlen >= 2")
        source = resolve_model_source(args.model)
        data_dir = resolve_data_dir(args.data_dir, needed=(args.dataset,))
        device = resolve_device(args.device)
        grad = gradient_options(args)
        metadata = gradient_metadata(grad, source, data_dir=data_dir, device=device)
        path = gradient_cache_path(grad, metadata)
        if path.exists() and not args.overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to recompute it")
    except ValueError as err:  # one line, before any heavy work
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    result = compute_gradient_cache(
        source,
        metadata,
        path,
        data_dir=data_dir,
        device=device,
        dtype=gradient_dtype(grad.dtype, device),
        save_full=grad.save_full,
        checkpointing=grad.checkpointing,
        device_map=args.device_map,
    )
    print(f"[gradients] {result['seconds']:.1f} s, peak memory {result['peak_memory_mb']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
