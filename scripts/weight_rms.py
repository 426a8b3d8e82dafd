"""The scale of each model's weights, and the reconstruction step sizes it gets (issue 15).

``--reconstruct`` gives every tensor an AdamW learning rate of ``--reconstruct_rel_lr`` x its RMS
before pruning (``lib.recovery.reconstruct``). This prints, per model, the RMS of the tensors the
fit trains (the parameters of every block's attention and MLP) and the rates the default gives,
and writes them as JSON.

Examples:
  python scripts/weight_rms.py                                    # SmolLM2
  python scripts/weight_rms.py --model qwen2.5-coder-0.5b --out results/qwen2.5-coder-0.5b/weight_rms.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lib.arch import block_linears, block_sublayers, decoder_blocks  # noqa: E402
from lib.models import load_model, resolve_model_source  # noqa: E402
from lib.recovery import RecoveryOptions  # noqa: E402
from lib.recovery.reconstruct import tensor_scales  # noqa: E402
from lib.utils import atomic_write_text  # noqa: E402


def weight_rms(model: torch.nn.Module, rel_lr: float) -> dict:
    """Per kind of trained tensor (``"mlp.up_proj.weight"``, ``"self_attn.q_proj.bias"``...) over
    the blocks: min / median / max of the RMS and of the rate ``rel_lr x RMS``; and the same over
    every linear weight (``"linear weights"``)."""
    chains = block_sublayers(model).values()
    by_kind: dict[str, list[float]] = {}
    linear_weights: list[float] = []
    for block in decoder_blocks(model):
        weights = {f"{name}.weight" for name in block_linears(block)}
        for name, rms in tensor_scales(block, chains).items():
            by_kind.setdefault(name, []).append(rms)
            if name in weights:
                linear_weights.append(rms)
    by_kind["linear weights"] = linear_weights

    def summary(values: list[float]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values), "count": len(values)}

    return {
        kind: {"rms": summary(values), "rate": summary([rel_lr * v for v in values])}
        for kind, values in by_kind.items()
        if values
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="as main.py's --model (default: the embedded SmolLM2)")
    p.add_argument("--rel_lr", type=float, default=RecoveryOptions.rel_lr, help="as --reconstruct_rel_lr")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON (refuses an existing file)")
    args = p.parse_args(argv)
    if args.out is not None and args.out.exists():
        p.error(f"--out {args.out} exists; remove it or choose another path")
    source = resolve_model_source(args.model)
    model, _ = load_model(source, device=torch.device("cpu"), dtype=torch.float32)
    figures = weight_rms(model, args.rel_lr)
    for kind, f in figures.items():
        rms, rate = f["rms"], f["rate"]
        print(
            f"{kind:28s} RMS {rms['min']:.3g} / {rms['median']:.3g} / {rms['max']:.3g} (min / median / max), "
            f"rate {rate['min']:.2g} / {rate['median']:.2g} / {rate['max']:.2g}"
        )
    if args.out is not None:
        record = {"model": source.name, "rel_lr": args.rel_lr, "dtype": "float32", "tensors": figures}
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
