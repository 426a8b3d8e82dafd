"""Per-block sparsity profiles of several runs in one figure, over the measured block sensitivity.

Each ``LABEL=LOG`` draws the ``layer_ratios`` of a ``main.py`` JSON log; ``--sensitivity``
(a ``scripts/block_sensitivity.py`` JSON) adds, as bars, the measured cost of pruning each block
alone, and the table printed gives each profile's Spearman correlation with it (negative: the
profile prunes costly blocks less).

Example (issue 16's figure):
  python scripts/plot_profiles.py --out pic/searched_profiles.png --title "Wanda 70 %, SmolLM2" \\
      --sensitivity results/smollm2/block_sensitivity_wanda_0.7.json \\
      alp=results/smollm2/ladder/wanda_0.7_alp.json owl=results/smollm2/ladder/wanda_0.7_owl.json \\
      dp=results/smollm2/ladder/wanda_0.7_dp.json evo=results/smollm2/ladder/wanda_0.7_evo.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.plots import plot_block_ratios  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two equal-length sequences (ties by order of appearance)."""
    import torch

    ranks = [torch.tensor(x, dtype=torch.float64).argsort(stable=True).argsort().double() for x in (a, b)]
    return torch.corrcoef(torch.stack(ranks))[0, 1].item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="LABEL=LOG", help="a curve label and the main.py JSON log it comes from")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--title", default="per-block sparsity")
    p.add_argument("--sensitivity", default=None, help="block_sensitivity.py JSON: measured cost per block (bars)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    args = p.parse_args(argv)
    curves, targets = {}, set()
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            p.error(f"{item!r}: expected LABEL=LOG")
        log = json.loads(Path(path).read_text())
        curves[label] = log["layer_ratios"]
        targets.add(log["sparsity_ratio"])
    costs = json.loads(Path(args.sensitivity).read_text())["costs"] if args.sensitivity else None
    lengths = {len(c) for c in curves.values()} | ({len(costs)} if costs else set())
    if len(lengths) != 1:
        p.error(f"the runs and the sensitivity file disagree on the number of blocks: {sorted(lengths)}")
    target = targets.pop() if len(targets) == 1 else None
    label = "cost of pruning the block alone (NLL increase)"
    out = plot_block_ratios(
        args.out, curves, title=args.title, target=target, scores=costs, score_label=label, overwrite=args.overwrite
    )
    print("| profile | min | max | Spearman with the block cost |")
    print("|---|---|---|---|")
    for name, ratios in curves.items():
        rho = f"{spearman(ratios, costs):+.2f}" if costs else ""
        print(f"| {name} | {min(ratios):.3f} | {max(ratios):.3f} | {rho} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
