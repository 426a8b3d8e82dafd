"""Print a Markdown table of the JSON logs (``main.py --log_json``) found in folders.

Usage: python scripts/collect_results.py logs/pruners [more folders or files...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_logs(paths: list[str]) -> list[dict]:
    """Every ``*.json`` run log under ``paths`` (files or folders), sorted by method and sparsity."""
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    logs = [json.loads(f.read_text()) for f in files]
    return sorted(logs, key=lambda r: (r["sparsity_type"], r["sparsity_ratio"], r["prune_method"]))


def row(result: dict) -> str:
    args = result.get("args", {})
    notes = []
    if args.get("reallocation"):
        notes.append("permuted" + (" + LSA" if args.get("lsa") else ""))
    if args.get("ria_per_matrix"):
        notes.append("per-matrix")
    dense = result.get("ppl_dense", {}).get("wikitext2")
    cal = result.get("calibration", {})
    return (
        f"| {result['prune_method']} | {result['sparsity_type']} | {result['sparsity_ratio']:.2f} | "
        f"{result['actual_sparsity']:.4f} | {result['ppl']['wikitext2']:.2f} | "
        f"{'' if dense is None else f'{dense:.2f}'} | {cal.get('nsamples')}x{cal.get('seqlen')} | "
        f"{result['eval']['windows']}x{result['eval']['seqlen']} | {result['timings'].get('prune', 0):.0f} | "
        f"{', '.join(notes)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="folders of JSON logs, or JSON files")
    args = parser.parse_args()
    columns = ["method", "pattern", "target", "actual", "WikiText-2 ppl", "dense ppl", "calibration", "eval windows"]
    columns += ["prune s", "notes"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for result in load_logs(args.paths):
        print(row(result))


if __name__ == "__main__":
    main()
