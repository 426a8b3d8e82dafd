"""Do the placements give the same pruned model? Runs ``main.py`` once per pruner and placement
(skipping runs whose JSON log exists, so it resumes), then compares each placement's saved
model and log with the default placement's: bit-identical weights, identical masks, equal
perplexity and block sparsity. Prints a Markdown table and writes the comparison as JSON.

Placements (each a set of main.py flags; the reference is ``device``):

- ``device``: ``--device DEVICE`` (all weights on the compute device);
- ``offload``: ``--device OFFLOAD_DEVICE --offload``. On a CPU-only machine ``--device cpu
  --offload`` takes the default path (nothing has to move), so the default OFFLOAD_DEVICE there
  is ``cpu:0``: a device that compares unequal to the weights' ``cpu``, which forces the real
  offload path (each block moved for its turn in the pruning engine, evaluation through the
  per-block hooks of ``lib.placement.blocks_on_demand``) while the moves themselves copy nothing;
- ``auto``: ``--device_map auto`` (accelerate's placement; on a CPU-only machine every weight
  ends on the CPU and the pruning engine runs each block where it lives).

Example (the quick settings of results/smollm2/placements/, the embedded SmolLM2):
  python scripts/compare_placements.py --out results/smollm2/placements --models /tmp/placements \\
      -- --nsamples 8 --seqlen 256 --eval_seqlen 512 --eval_windows 4 --skip_dense
Arguments after ``--`` go to every main.py run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.utils import atomic_write_json  # noqa: E402

DEFAULT_PRUNERS = ("wanda", "sparsegpt")


def placement_flags(device: str, offload_device: str) -> dict[str, list[str]]:
    """Placement name -> the main.py flags that select it."""
    return {
        "device": ["--device", device],
        "offload": ["--device", offload_device, "--offload"],
        "auto": ["--device_map", "auto"],
    }


def compare_models(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict:
    """How two saved state dicts differ: tensors with any differing value, and for 2-D weights
    the number of entries whose zero / non-zero status differs (the masks)."""
    if reference.keys() != other.keys():
        missing = sorted(reference.keys() ^ other.keys())
        return {"same_keys": False, "key_difference": missing[:10]}
    differing = [k for k in reference if not torch.equal(reference[k], other[k])]
    weights = [k for k in reference if reference[k].dim() == 2]
    mask_entries = sum(int(((reference[k] == 0) != (other[k] == 0)).sum()) for k in weights)
    return {
        "same_keys": True,
        "tensors": len(reference),
        "tensors_differing": len(differing),
        "first_differing": differing[:5],
        "mask_entries_differing": mask_entries,
        "weights_identical": not differing,
        "masks_identical": mask_entries == 0,
    }


def compare_runs(logs: dict[str, dict], models: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Each placement against ``device``: the model comparison plus perplexity and block sparsity."""
    reference = logs["device"]
    out = {}
    for name, log in logs.items():
        if name == "device":
            continue
        out[name] = {
            **compare_models(models["device"], models[name]),
            "ppl": log["ppl"],
            "ppl_reference": reference["ppl"],
            "ppl_identical": log["ppl"] == reference["ppl"],
            "block_sparsity_identical": log.get("block_sparsity") == reference.get("block_sparsity"),
            "placement_logged": log.get("placement"),
        }
    return out


def run_main(flags: list[str], log: Path, saved: Path) -> list[str]:
    """Run main.py with ``flags`` unless ``log`` exists; returns the command."""
    cmd = [sys.executable, str(ROOT / "main.py"), *flags, "--log_json", str(log), "--save_model", str(saved)]
    if not log.exists():
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return cmd


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the JSON logs and the summary")
    p.add_argument("--models", required=True, help="folder for the saved models (large; e.g. under /tmp)")
    p.add_argument("--pruners", nargs="+", default=list(DEFAULT_PRUNERS))
    p.add_argument("--device", default="cpu", help="compute device of the reference placement")
    p.add_argument("--offload_device", default=None, help="--device of the offloaded runs (default: cpu:0 on a CPU)")
    p.add_argument("--placements", nargs="+", default=["device", "offload", "auto"])
    p.add_argument("--summary", default="summary.json", help="file name of the comparison under --out")
    args = p.parse_args(argv)
    offload_device = args.offload_device or ("cpu:0" if args.device == "cpu" else args.device)
    flags = placement_flags(args.device, offload_device)
    out, models_dir = Path(args.out), Path(args.models)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads" if args.device == "cpu" else args.device
    summary = {
        "what": "each placement's pruned model and perplexity against the default placement's (device)",
        "machine": machine,
        "torch": torch.__version__,
        "main_flags": extra,
        "placements": {k: flags[k] for k in args.placements},
        "pruners": {},
    }
    ok = True
    for pruner in args.pruners:
        logs, models, commands = {}, {}, {}
        for name in ["device"] + [n for n in args.placements if n != "device"]:
            log, saved = out / f"{pruner}_{name}.json", models_dir / f"{pruner}_{name}"
            commands[name] = run_main(["--prune_method", pruner, *flags[name], *extra], log, saved)
            logs[name] = json.loads(log.read_text())
            models[name] = load_file(saved / "model.safetensors")
        result = compare_runs(logs, models)
        summary["pruners"][pruner] = {
            "dtype": logs["device"].get("dtype"),
            "logs": {n: str(out / f"{pruner}_{n}.json") for n in logs},
            "commands": {n: " ".join(c[1:]) for n, c in commands.items()},
            "against_device": result,
        }
        ok &= all(r.get("weights_identical") and r["ppl_identical"] for r in result.values())
    summary["all_identical"] = ok
    atomic_write_json(out / args.summary, summary)
    print("| pruner | placement | weights identical | mask entries differing | ppl | ppl (device) |")
    print("|---|---|---|---|---|---|")
    for pruner, entry in summary["pruners"].items():
        for name, r in entry["against_device"].items():
            ppl, ref = r["ppl"].get("wikitext2"), r["ppl_reference"].get("wikitext2")
            same, masks = r.get("weights_identical"), r.get("mask_entries_differing")
            print(f"| {pruner} | {name} | {same} | {masks} | {ppl} | {ref} |")
    print(f"wrote {out / args.summary}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
