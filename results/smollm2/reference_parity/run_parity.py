"""The reference-parity grid of issue 17 in one process: DLP mean vs median, AlphaPruning
released (peak, eps 0.3) vs ours (median, eps 0.2), for Wanda and SparseGPT at 70 %.

Each variant is one ``main.main(argv)`` call, so every log is the CLI's own JSON log and
``python main.py <argv>`` (argv stored in the log's ``args``) reproduces it. What one process
saves: the dense model's block scores (the DLP Wanda-metric pass gives both statistics; the
AlphaPruning spectra depend only on the dense weights) are computed once per setting and reused,
so the ``allocation`` timing of a reused setting is near zero. Run from the repository root
(optionally with the names of the variants to run, in that order):

    ALP_DATA_DIR=/work/shared/data nice -n 10 python results/smollm2/reference_parity/run_parity.py [NAME ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import lib.pipeline as pipeline  # noqa: E402
import main as main_cli  # noqa: E402

OUT = Path(__file__).resolve().parent
COMMON = ["--sparsity_ratio", "0.7", "--nsamples", "32", "--seqlen", "512", "--eval_windows", "20", "--skip_dense"]
VARIANTS = {
    "dlp_mean": ["--allocation", "dlp", "--alpha", "0.15", "--dlp_statistic", "mean"],
    "dlp_median": ["--allocation", "dlp", "--alpha", "0.15", "--dlp_statistic", "median"],
    "alphapruning_peak_eps0.3": ["--allocation", "alphapruning", "--alphapruning_xmin", "peak", "--epsilon", "0.3"],
    "alphapruning_median_eps0.2": [
        "--allocation",
        "alphapruning",
        "--alphapruning_xmin",
        "median",
        "--epsilon",
        "0.2",
    ],
}


def memoised_block_metrics():
    """One Wanda-metric pass over the dense model (same calibration ids in every run); the
    ``dlp`` entry is re-pointed at the requested statistic on every call."""
    cache: dict = {}
    compute = pipeline.wanda_block_metrics

    def metrics(model, calib_ids, *, owl_m, dlp_statistic, micro_batch, device):
        key = (owl_m, tuple(calib_ids.shape), int(calib_ids.sum()))
        if key not in cache:
            cache[key] = compute(model, calib_ids, owl_m=owl_m, micro_batch=micro_batch, device=device)
        return {**cache[key], "dlp": cache[key][dlp_statistic]}

    return metrics


def main() -> int:
    pipeline.wanda_block_metrics = memoised_block_metrics()
    pipeline.heavy_tail_alpha = _cached_alpha(pipeline.heavy_tail_alpha)
    os.chdir(ROOT)
    grid = {
        f"{pruner}_0.7_{variant}": ["--prune_method", pruner, *flags, *COMMON]
        for pruner in ("wanda", "sparsegpt")
        for variant, flags in VARIANTS.items()
    }
    for name in sys.argv[1:] or grid:  # names given: only those, in that order
        log = OUT / f"{name}.json"
        if log.exists():
            continue
        argv = [*grid[name], "--log_json", str(log.relative_to(ROOT))]
        print(f"=== {name}: python main.py {' '.join(argv)}", flush=True)
        if main_cli.main(argv) != 0:
            return 1
    return 0


def _cached_alpha(estimate):
    """Per-estimator cache of the dense model's block exponents (the spectra of the dense weights)."""
    cache: dict = {}

    def alphas(model, *, xmin):
        if xmin not in cache:
            cache[xmin] = estimate(model, xmin=xmin)
        return cache[xmin].clone()

    return alphas


if __name__ == "__main__":
    torch.set_num_threads(1)  # the 2 cores are shared by several jobs: one thread avoids barrier stalls
    sys.exit(main())
