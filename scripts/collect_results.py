"""Print a Markdown table of the JSON logs (``main.py --log_json``) found in folders.

Usage: python scripts/collect_results.py logs/pruners [more folders or files...]
       python scripts/collect_results.py --by_bits logs/quant   # ppl per method x bits, and sizes
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


def wbits(result: dict) -> int:
    """Bits per kept weight of a run (16 when it was not quantized)."""
    return (result.get("quantization") or {}).get("wbits", 16)


def by_bits_tables(logs: list[dict]) -> str:
    """Two Markdown tables: WikiText-2 ppl per (method, sparsity) x bits, and the packed sizes."""
    bits = sorted({wbits(r) for r in logs}, reverse=True)
    cells: dict[tuple, dict[int, dict]] = {}
    for r in logs:
        target = r["sparsity_type"] if r["sparsity_type"] != "unstructured" else f"{r['sparsity_ratio']:.2f}"
        if r["prune_method"] == "dense":
            target = "-"
        cells.setdefault((r["prune_method"], target), {})[wbits(r)] = r
    lines = ["| method | sparsity | " + " | ".join(f"{b} bit" for b in bits) + " |"]
    lines.append("|---|---|" + "---|" * len(bits))
    for (method, s), runs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ppl = [f"{runs[b]['ppl']['wikitext2']:.2f}" if b in runs else "" for b in bits]
        lines.append(f"| {method} | {s} | " + " | ".join(ppl) + " |")
    lines += ["", "| method | sparsity | bits | bits per linear weight (packed) | model MiB packed | model MiB fp16 |"]
    lines.append("|---|---|---|---|---|---|")
    for (method, s), runs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for b in bits:
            if b in runs and "storage" in runs[b]:
                size = runs[b]["storage"]
                lines.append(
                    f"| {method} | {s} | {b} | {size['bits_per_weight']:.2f} ({size['mask_format']}) | "
                    f"{size['packed_mib']:.1f} | {size['dense_fp16_mib']:.1f} |"
                )
    return "\n".join(lines)


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
        f"| {result['prune_method']} | {result['sparsity_type']} | {wbits(result)} | {result['sparsity_ratio']:.2f} | "
        f"{result['actual_sparsity']:.4f} | {result['ppl']['wikitext2']:.2f} | "
        f"{'' if dense is None else f'{dense:.2f}'} | {cal.get('nsamples')}x{cal.get('seqlen')} | "
        f"{result['eval']['windows']}x{result['eval']['seqlen']} | {result['timings'].get('prune', 0):.0f} | "
        f"{', '.join(notes)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="folders of JSON logs, or JSON files")
    parser.add_argument("--by_bits", action="store_true", help="pivot: ppl per method and sparsity x weight bits")
    args = parser.parse_args()
    if args.by_bits:
        print(by_bits_tables(load_logs(args.paths)))
        return
    columns = ["method", "pattern", "bits", "target", "actual", "WikiText-2 ppl", "dense ppl", "calibration"]
    columns += ["eval windows", "prune s", "notes"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for result in load_logs(args.paths):
        print(row(result))


if __name__ == "__main__":
    main()
