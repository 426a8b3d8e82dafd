"""Measured peak memory of one model's gradient pass and pruning run on the CPU, beside the prediction.

``gradients``: runs ``save_gradient.py`` once per setting (fp32, fp32 with --grad_checkpointing,
bf16, ...) under ``/usr/bin/time -v`` (peak RSS of the whole process: load included), then
compares each setting's block scores ``Z_l`` and ALP ratios (s = 0.7, alpha = 0.15) with the
fp32 ones. ``prune``: runs ``main.py`` (Wanda, 70 %, one evaluation window, no dense
evaluation) and reads the predicted peak it prints beside the measured one. Each setting is
skipped, with a note, when the machine has less memory available than its estimate plus 1 GiB.

Examples:
  python scripts/model_memory.py gradients --model qwen2.5-coder-1.5b --settings fp32,bf16
  python scripts/model_memory.py prune --model qwen2.5-coder-0.5b --nsamples 32 --seqlen 512
Writes results/memory/<model>_<mode>.json (with every command); runs one process at a time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 2**30
SETTINGS = {  # name -> save_gradient.py flags
    "fp32": ["--grad_dtype", "float32"],
    "fp32_checkpointing": ["--grad_dtype", "float32", "--grad_checkpointing"],
    "bf16": ["--grad_dtype", "bfloat16"],
    "bf16_checkpointing": ["--grad_dtype", "bfloat16", "--grad_checkpointing"],
}


def meta_model(model_name: str | None):
    """The model built on the meta device from its converted config (shapes only, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lib.models import gguf_checkpoint, resolve_model_source

    source = resolve_model_source(model_name)
    folder = gguf_checkpoint(source.location) if source.kind == "gguf" else source.location
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)), folder


def shapes(model, folder) -> dict:
    """Parameter counts of ``model`` (from :func:`meta_model`), converted from ``folder``."""
    from lib.arch import prunable_linears

    linears = sum(lin.weight.numel() for block in prunable_linears(model) for lin in block.values())
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "block_linear_params": linears,
        "blocks": model.config.num_hidden_layers,
        "checkpoint": str(folder),
    }


def gradient_estimate(model, counts: dict, width: int, checkpointing: bool) -> int:
    """Bytes the gradient pass holds, as ``main.py`` predicts it
    (``lib.placement.predicted_gradient_pass_memory`` of 64-token samples plus the CPU runtime),
    or the load's own peak, when larger."""
    import torch

    from lib.placement import CPU_RUNTIME, predicted_gradient_pass_memory

    dtype = torch.float32 if width == 4 else torch.bfloat16
    steady = predicted_gradient_pass_memory(
        model, seqlen=64, dtype=dtype, reuses_model=True, checkpointing=checkpointing
    )
    steady += CPU_RUNTIME
    # loading a half-precision model from the fp32 checkpoint maps the fp32 file while it casts
    load = counts["params"] * (4 + width) if width < 4 else counts["params"] * 4
    return max(steady, load)


def available_bytes() -> int:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+) kB", text).group(1)) * 1024


def timed(argv: list[str]) -> dict:
    """Run ``argv`` under ``/usr/bin/time -v`` (niced); return its peak RSS, wall time and output."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", "nice", "-n", "10", *argv], cwd=ROOT, capture_output=True, text=True)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {
        "returncode": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_bytes": int(peak.group(1)) * 1024 if peak else None,
        "stdout": proc.stdout,
        "stderr_tail": proc.stderr[-1500:],
    }


def compare_scores(reference: Path, other: Path, sparsity: float = 0.7, alpha: float = 0.15) -> dict:
    """How far ``other``'s block scores and ALP ratios are from ``reference``'s."""
    import torch

    from lib.allocation import alp
    from lib.sensitivity import load_cache

    z_ref, z = load_cache(reference)[0].abs_z_sum, load_cache(other)[0].abs_z_sum
    r_ref = torch.tensor(alp(z_ref, sparsity, alpha).ratios)
    r = torch.tensor(alp(z, sparsity, alpha).ratios)
    rank = lambda t: t.argsort().argsort().double()  # noqa: E731
    ranks = torch.corrcoef(torch.stack([rank(z_ref), rank(z)]))[0, 1].item()
    return {
        "max_rel_diff_Z": ((z - z_ref).abs() / z_ref.abs()).max().item(),
        "spearman_Z": ranks,
        "same_block_order": bool((z.argsort() == z_ref.argsort()).all()),
        f"max_abs_diff_alp_ratio_s{sparsity}_alpha{alpha}": (r - r_ref).abs().max().item(),
    }


def gradients(args, counts: dict) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="grad_memory_"))
    runs = {}
    for name in args.settings:
        width = 2 if "bf16" in name else 4
        estimate = gradient_estimate(args.meta_model, counts, width, "checkpointing" in name)
        argv = [sys.executable, "save_gradient.py", *(["--model", args.model] if args.model else [])]
        argv += [*SETTINGS[name], "--gradient_path", str(folder / f"{name}.safetensors"), "--overwrite"]
        shown = ["python", *argv[1:]]
        record = {"command": " ".join(["/usr/bin/time -v nice -n 10", *shown]), "estimate_bytes": estimate}
        if available_bytes() < estimate + 1.5 * GIB:  # + the runtime, tokenizer and data
            record["skipped"] = f"only {available_bytes() / GIB:.1f} GiB available"
            print(f"[memory] {name}: skipped ({record['skipped']}, estimate {estimate / GIB:.1f} GiB)")
            runs[name] = record
            continue
        result = timed(argv)
        match = re.search(r"\[gradients\] ([\d.]+) s, peak memory (\d+) MiB", result["stdout"])
        record.update({k: result[k] for k in ("returncode", "wall_s", "peak_rss_bytes")})
        record["gradient_pass_s"] = float(match.group(1)) if match else None
        if result["returncode"] != 0:
            record["stderr_tail"] = result["stderr_tail"]
        print(f"[memory] {name}: peak {record['peak_rss_bytes'] / GIB:.2f} GiB, estimate {estimate / GIB:.2f} GiB")
        runs[name] = record
    reference = folder / "fp32.safetensors"
    for name, record in runs.items():
        path = folder / f"{name}.safetensors"
        if path != reference and reference.exists() and path.exists():
            record[f"vs_{reference.stem}"] = compare_scores(reference, path)
    return {"settings": runs, "gradient_caches": str(folder)}


def prune(args, counts: dict) -> dict:
    log = Path(tempfile.mkdtemp(prefix="prune_memory_")) / "run.json"
    argv = [sys.executable, "main.py", *(["--model", args.model] if args.model else [])]
    argv += ["--prune_method", "wanda", "--sparsity_ratio", "0.7", "--allocation", "uniform"]
    argv += ["--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--eval_windows", "1", "--skip_dense"]
    argv += ["--log_json", str(log), *args.extra]
    command = " ".join(["/usr/bin/time -v nice -n 10 python", *argv[1:]])
    if available_bytes() < counts["params"] * 4 + 1.5 * GIB:  # fp32 weights (no bf16 units) + runtime
        print(f"[memory] prune: skipped, only {available_bytes() / GIB:.1f} GiB available")
        return {"command": command, "skipped": f"only {available_bytes() / GIB:.1f} GiB available"}
    result = timed(argv)
    record = {"command": command, **{k: result[k] for k in ("returncode", "wall_s", "peak_rss_bytes")}}
    if result["returncode"] != 0:
        record["stderr_tail"] = result["stderr_tail"]
        return record
    run = json.loads(log.read_text())
    predicted = run["predicted_memory_bytes"]
    record.update(
        {
            "predicted": predicted,
            "measured_prune_peak_bytes": run["measured_prune_peak_bytes"],
            "timings": run["timings"],
            "dtype": run["dtype"],
            "memory_line": next((x for x in result["stdout"].splitlines() if x.startswith("[memory]")), None),
            "measured_over_predicted": result["peak_rss_bytes"] / predicted["host"],
        }
    )
    print(f"[memory] prune: measured {result['peak_rss_bytes'] / GIB:.2f} GiB, predicted {predicted['host'] / GIB:.2f}")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["gradients", "prune"])
    p.add_argument("--model", default=None, help="as main.py --model (default: the embedded SmolLM2)")
    p.add_argument("--settings", default="fp32,fp32_checkpointing,bf16", help=f"gradients: among {','.join(SETTINGS)}")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="prune: more main.py flags")
    p.add_argument("--out", default=None, help="JSON path (default: results/memory/<model>_<mode>.json)")
    args = p.parse_args(argv)
    args.settings = [s for s in args.settings.split(",") if s]
    args.meta_model, folder = meta_model(args.model)
    counts = shapes(args.meta_model, folder)
    figures = gradients(args, counts) if args.mode == "gradients" else prune(args, counts)
    name = args.model or "smollm2"
    out = Path(args.out) if args.out else ROOT / "results" / "memory" / f"{name}_{args.mode}.json"
    from ladder import machine_description  # scripts/ is on sys.path when this file runs

    from lib.utils import atomic_write_json

    machine = f"{machine_description()} (peak RSS of the whole process, /usr/bin/time -v)"
    atomic_write_json(out, {"model": name, "machine": machine, **counts, args.mode: figures})
    print(f"[memory] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
