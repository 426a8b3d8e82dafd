"""Every layerwise allocation side by side for one model, pruner and target sparsity.

Runs ``main.py`` once per allocation (skipping runs whose JSON log exists, so it resumes),
then prints a Markdown table (allocation, its hyper-parameter, ppl) and saves one plot
overlaying the per-block ratio curves.

Example:
  python scripts/compare_allocations.py --prune_method wanda --sparsity_ratio 0.7 --out logs/alloc \\
      -- --nsamples 32 --seqlen 512 --eval_windows 20
Arguments after ``--`` go to every main.py run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.plots import plot_block_ratios  # noqa: E402

RUNS = {  # label -> extra main.py flags
    "uniform": ["--allocation", "uniform"],
    "alp": ["--allocation", "alp"],
    "alp (alpha auto)": ["--allocation", "alp", "--alpha", "auto"],
    "owl": ["--allocation", "owl"],
    "dlp": ["--allocation", "dlp"],
    "alphapruning": ["--allocation", "alphapruning"],
    "ramp (beta auto)": ["--allocation", "ramp", "--beta", "auto"],
}
PARAMETER = {"alp": "alpha", "dlp": "alpha", "owl": "owl_lambda", "ramp": "beta", "alphapruning": "epsilon"}


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prune_method", default="wanda")
    p.add_argument("--sparsity_ratio", type=float, default=0.7)
    p.add_argument("--out", default="logs/allocations")
    p.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    p.add_argument("--png", default=None, help="plot path (default: pic/allocations_{method}_{s}.png)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for label, flags in RUNS.items():
        if args.only and label not in args.only:
            continue
        slug = label.replace(" ", "_").replace("(", "").replace(")", "")
        log = out / f"{args.prune_method}_{args.sparsity_ratio}_{slug}.json"
        if not log.exists():
            cmd = [
                sys.executable,
                str(ROOT / "main.py"),
                "--prune_method",
                args.prune_method,
                "--sparsity_ratio",
                str(args.sparsity_ratio),
                *flags,
                *extra,
                "--log_json",
                str(log),
            ]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        results[label] = json.loads(log.read_text())
    rows = ["| allocation | setting | WikiText-2 ppl | min..max block sparsity |", "|---|---|---|---|"]
    for label, r in results.items():
        info = r["ratio_info"]
        key = PARAMETER.get(info["allocation"])
        setting = f"{key} = {info[key]}" if key else ""
        if "search" in info:
            setting += (
                " (searched: "
                + ", ".join(
                    f"{c[key]}: {'n/a' if c['loss'] is None else format(c['loss'], '.3f')}" for c in info["search"]
                )
                + ")"
            )
        ratios = r["layer_ratios"]
        rows.append(f"| {label} | {setting} | {r['ppl']['wikitext2']:.2f} | {min(ratios):.3f}..{max(ratios):.3f} |")
    print("\n".join(rows))
    png = Path(args.png or ROOT / "pic" / f"allocations_{args.prune_method}_{args.sparsity_ratio}.png")
    plot_block_ratios(
        png,
        {k: r["layer_ratios"] for k, r in results.items()},
        target=args.sparsity_ratio,
        title=f"per-block sparsity, {args.prune_method} at {args.sparsity_ratio}",
    )
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
