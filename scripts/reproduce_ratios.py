"""Reproduce the ALP block scores and ratios of a committed run log from a fresh gradient pass.

Runs Stage A (the gradient pass) with the log's settings, in the chosen model dtype, on the
chosen text, and compares the block scores ``Z_l`` and the ALP ratios with the log's. No
cache is read or written. Writes a JSON record (``--out``) with the differences, the dtype,
the CPU's kernel set, the thread count and the provenance of the samples; exits 1 when the
ratios differ by more than ``--tolerance``.

Example (the committed default run; about 30 s in fp32 on one CPU core):
    python scripts/reproduce_ratios.py --log results/smollm2/wanda_alp_0.7_full.json \
        --grad_dtype float32 --out results/smollm2/reproduce/ratios_fp32.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.allocation import alp  # noqa: E402
from lib.block_metrics import block_sizes  # noqa: E402
from lib.data import calibration_provenance, load_texts, resolve_data_dir, sample_calibration  # noqa: E402
from lib.models import load_model, resolve_model_source  # noqa: E402
from lib.sensitivity import block_summary, gradient_sensitivities  # noqa: E402
from lib.utils import DTYPES, atomic_write_json  # noqa: E402


def fresh_ratios(source, *, grad_dtype, dataset, data_dir, settings: dict, sparsity: float, alpha: float) -> dict:
    """One gradient pass with ``settings`` (the log's ``ratio_info``): block scores ``(L,)``, ALP
    ratios ``(L,)``, the pass's seconds and the samples' provenance."""
    model, tokenizer = load_model(source, device=torch.device("cpu"), dtype=grad_dtype)
    docs = load_texts(dataset, data_dir)
    samples, note = sample_calibration(
        tokenizer, docs, nsamples=settings["nsamples"], seqlen=settings["seqlen"], seed=settings["seed"]
    )
    start = time.perf_counter()
    sensitivities = gradient_sensitivities(model, samples, grad_type=settings["grad_type"], loss=settings["loss"])
    seconds = time.perf_counter() - start
    scores = block_summary(sensitivities).abs_z_sum
    ratios = alp(scores, sparsity, alpha, block_sizes(model)).ratios
    provenance = calibration_provenance(dataset, data_dir, samples, note, seed=settings["seed"], texts=docs)
    return {"block_scores": scores.tolist(), "ratios": ratios, "seconds": seconds, "samples": provenance}


def compare(fresh: dict, log: dict) -> dict:
    """Largest absolute ratio difference and largest relative block-score difference."""
    ratios = torch.tensor(fresh["ratios"], dtype=torch.float64)
    ref_ratios = torch.tensor(log["layer_ratios"], dtype=torch.float64)
    scores = torch.tensor(fresh["block_scores"], dtype=torch.float64)
    ref_scores = torch.tensor(log["ratio_info"]["block_scores"], dtype=torch.float64)
    return {
        "max_abs_ratio_diff": float((ratios - ref_ratios).abs().max()),
        "max_rel_score_diff": float(((scores - ref_scores).abs() / ref_scores.abs()).max()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", required=True, help="committed run log (JSON) of an ALP run")
    p.add_argument("--grad_dtype", choices=sorted(DTYPES), default="float32", help="model dtype of the gradient pass")
    p.add_argument("--dataset", default=None, help="text of the samples (default: the log's)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: the log's)")
    p.add_argument("--data_dir", default=None, help="local data folder (default: $ALP_DATA_DIR, else the hub)")
    p.add_argument("--tolerance", type=float, default=1e-6, help="largest absolute ratio difference accepted")
    p.add_argument("--out", required=True, help="JSON record to write")
    args = p.parse_args(argv)
    log = json.loads(Path(args.log).read_text())
    info = log["ratio_info"]
    settings = {k: info[k] for k in ("nsamples", "seqlen", "seed", "grad_type", "loss")}
    if args.seed is not None:
        settings["seed"] = args.seed
    dataset = args.dataset or info["dataset"]
    data_dir = resolve_data_dir(args.data_dir, needed=(dataset,))
    fresh = fresh_ratios(
        resolve_model_source(log["args"].get("model")),
        grad_dtype=DTYPES[args.grad_dtype],
        dataset=dataset,
        data_dir=data_dir,
        settings=settings,
        sparsity=log["sparsity_ratio"],
        alpha=info["alpha"],
    )
    diff = compare(fresh, log)
    record = {
        "reference_log": args.log,
        "grad_dtype": args.grad_dtype,
        "settings": {**settings, "dataset": dataset},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tolerance": args.tolerance,
        "within_tolerance": diff["max_abs_ratio_diff"] <= args.tolerance,
        **diff,
        **fresh,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    atomic_write_json(args.out, record, overwrite=True)
    print(
        f"[ratios] {args.grad_dtype}, {dataset} seed {settings['seed']}: max |ratio diff| "
        f"{diff['max_abs_ratio_diff']:.2e}, max relative score diff {diff['max_rel_score_diff']:.2e} "
        f"({'within' if record['within_tolerance'] else 'beyond'} {args.tolerance:g}); wrote {args.out}"
    )
    return 0 if record["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
