"""Ground truth for layerwise allocations: the measured cost of pruning each block *alone*.

For every decoder block l: prune only block l at the target sparsity (statistics from one
dense calibration pass), measure the increase of the mean NLL on held-out calibration text
(another seed; never the evaluation set), restore the block. Then report the Spearman rank
correlation between that cost and how much each allocation *protects* the block
(``s - s_l``): a positive correlation means the allocation spares the blocks that hurt
most when pruned. Writes a Markdown table (stdout and --out_md) and a PNG (--out_png).

Example: python scripts/block_sensitivity.py --prune_method wanda --sparsity_ratio 0.7
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib import allocation as alloc  # noqa: E402
from lib.arch import block_linears, decoder_blocks  # noqa: E402
from lib.block_metrics import block_sizes, heavy_tail_alpha, wanda_block_metrics  # noqa: E402
from lib.data import load_texts, resolve_data_dir, sample_calibration  # noqa: E402
from lib.masks import SparsityPattern  # noqa: E402
from lib.models import load_model, resolve_model_source  # noqa: E402
from lib.plots import plot_block_ratios  # noqa: E402
from lib.pruners import PRUNERS, LayerStats, PrunerOptions  # noqa: E402
from lib.search import mean_nll  # noqa: E402
from lib.sensitivity import block_summary, gradient_sensitivities  # noqa: E402
from lib.sequential import run_sequential  # noqa: E402
from lib.stats import InputStatistics  # noqa: E402
from lib.utils import atomic_write_text, resolve_device, resolve_dtype  # noqa: E402


def dense_block_statistics(model, calib_ids, needs, *, micro_batch, device) -> list[dict[str, LayerStats]]:
    """Each block's pruner statistics from one dense sequential pass (inputs from dense blocks)."""
    per_block = []

    def step(index, block, forward_all):
        linears = block_linears(block)
        if not needs:
            per_block.append({n: LayerStats() for n in linears})
            return
        with InputStatistics(linears, needs) as stats:
            forward_all()
        hessians = stats.hessians()
        per_block.append(
            {n: LayerStats(col_sq_norm=stats.col_sq_norm.get(n), hessian=hessians.get(n)) for n in linears}
        )

    run_sequential(model, calib_ids, step, micro_batch=micro_batch, device=device, desc="dense statistics")
    return per_block


@torch.no_grad()
def pruning_costs(model, pruner_name, stats, sparsity, held_out) -> tuple[float, list[float]]:
    """``(dense loss, [loss increase when only block l is pruned])``."""
    from tqdm.auto import tqdm

    base = mean_nll(model, held_out)
    costs = []
    for block, block_stats in tqdm(list(zip(decoder_blocks(model), stats, strict=True)), desc="blocks alone"):
        linears = block_linears(block)
        saved = {n: lin.weight.detach().clone() for n, lin in linears.items()}
        for n, lin in linears.items():
            lin.weight.copy_(
                PRUNERS[pruner_name].prune(lin.weight, block_stats[n], sparsity, SparsityPattern(), PrunerOptions())
            )
        costs.append(mean_nll(model, held_out) - base)
        for n, lin in linears.items():
            lin.weight.copy_(saved[n])
    return base, costs


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences."""
    ra = torch.argsort(torch.argsort(torch.as_tensor(a, dtype=torch.float64))).double()
    rb = torch.argsort(torch.argsort(torch.as_tensor(b, dtype=torch.float64))).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--prune_method", default="wanda", choices=sorted(PRUNERS))
    p.add_argument("--sparsity_ratio", type=float, default=0.7)
    p.add_argument("--nsamples", type=int, default=32, help="calibration samples for the pruner statistics")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--held_out", type=int, default=8, help="held-out calibration windows for the loss")
    p.add_argument("--grad_nsamples", type=int, default=10)
    p.add_argument("--grad_seqlen", type=int, default=64)
    p.add_argument("--alpha", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--calib_batch_size", type=int, default=4)
    p.add_argument("--out_md", default=None, help="also write the Markdown table here")
    p.add_argument("--out_png", default="pic/block_sensitivity.png")
    p.add_argument("--out_json", default=None, help="write all figures as JSON here")
    args = p.parse_args()
    device = resolve_device(args.device)
    source = resolve_model_source(args.model)
    data_dir = resolve_data_dir(args.data_dir, needed=("c4",))

    docs = load_texts("c4", data_dir)
    model, tok = load_model(source, device=device, dtype=torch.float32)
    grad_ids, _ = sample_calibration(tok, docs, nsamples=args.grad_nsamples, seqlen=args.grad_seqlen, seed=args.seed)
    grad_types = ("l2_hundred_total", "l2_total")
    z_scores = {
        g: block_summary(gradient_sensitivities(model, grad_ids, grad_type=g, loss="last_token")).abs_z_sum
        for g in grad_types
    }
    model.to(resolve_dtype(args.dtype, device))

    calib, _ = sample_calibration(tok, docs, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    held_out, _ = sample_calibration(tok, docs, nsamples=args.held_out, seqlen=args.seqlen, seed=args.seed + 1)
    needs = PRUNERS[args.prune_method].needs
    stats = dense_block_statistics(model, calib, needs, micro_batch=args.calib_batch_size, device=device)
    base, costs = pruning_costs(model, args.prune_method, stats, args.sparsity_ratio, held_out)

    s, sizes = args.sparsity_ratio, block_sizes(model)
    metrics = wanda_block_metrics(model, calib, micro_batch=args.calib_batch_size, device=device)
    allocations = {f"alp ({g})": alloc.alp(z, s, args.alpha, sizes) for g, z in z_scores.items()}
    allocations["owl"] = alloc.owl(metrics["outlier_share"], s, 0.08, sizes)
    allocations["dlp"] = alloc.dlp(metrics["median"], s, args.alpha, sizes)
    allocations["alphapruning"] = alloc.alphapruning(heavy_tail_alpha(model), s, 0.2, sizes)
    allocations["ramp (beta 0.01)"] = alloc.ramp(len(sizes), s, 0.01, sizes)

    rows = ["| allocation | Spearman(cost, protection s - s_l) |", "|---|---|"]
    rows += [f"| {name} | {spearman(costs, [s - r for r in a.ratios]):+.3f} |" for name, a in allocations.items()]
    table = "\n".join(rows)
    header = (
        f"Block sensitivity: {source.name}, {args.prune_method} at {s} on one block at a time; "
        f"dense held-out NLL {base:.4f}; cost = NLL increase ({args.held_out} x {args.seqlen} held-out tokens)\n\n"
    )
    cost_rows = "\n\n| block | cost |\n|---|---|\n" + "\n".join(f"| {i} | {c:+.4f} |" for i, c in enumerate(costs))
    print(header + table + cost_rows)
    if args.out_md:
        atomic_write_text(args.out_md, header + table + cost_rows + "\n")
    if args.out_json:
        atomic_write_text(
            args.out_json,
            json.dumps(
                {
                    "model": source.name,
                    "prune_method": args.prune_method,
                    "sparsity_ratio": s,
                    "dense_nll": base,
                    "costs": costs,
                    "ratios": {k: a.ratios for k, a in allocations.items()},
                    "spearman": {k: spearman(costs, [s - r for r in a.ratios]) for k, a in allocations.items()},
                },
                indent=2,
            ),
        )
    plot_block_ratios(
        args.out_png,
        {k: a.ratios for k, a in allocations.items()},
        target=s,
        scores=costs,
        score_label="NLL increase, block pruned alone",
        title=f"{source.name}: block sensitivity ({args.prune_method} {s})",
    )
    print(f"wrote {args.out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
