"""scripts/reproduce_ratios.py: a fresh gradient pass checked against a run log, on a tiny model."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import reproduce_ratios  # noqa: E402

from lib.models import resolve_model_source  # noqa: E402


def test_log_reproduced_and_a_changed_log_refused(tiny_checkpoint, data_dir, tmp_path):
    settings = {"nsamples": 2, "seqlen": 16, "seed": 0, "grad_type": "l2_hundred_total", "loss": "last_token"}
    fresh = reproduce_ratios.fresh_ratios(
        resolve_model_source(str(tiny_checkpoint)),
        grad_dtype=torch.float32,
        dataset="c4",
        data_dir=data_dir,
        settings=settings,
        sparsity=0.7,
        alpha=0.1,
    )
    log = {
        "args": {"model": str(tiny_checkpoint)},
        "sparsity_ratio": 0.7,
        "layer_ratios": fresh["ratios"],
        "ratio_info": {**settings, "dataset": "c4", "alpha": 0.1, "block_scores": fresh["block_scores"]},
    }
    path, out = tmp_path / "log.json", tmp_path / "check.json"
    path.write_text(json.dumps(log))
    argv = ["--log", str(path), "--data_dir", str(data_dir), "--out", str(out)]
    assert reproduce_ratios.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["max_abs_ratio_diff"] == 0.0 and record["within_tolerance"]
    assert record["samples"]["token_ids"]["tokens"] == 2 * 16 and record["grad_dtype"] == "float32"
    log["layer_ratios"] = [r + 2e-6 * (i % 2) for i, r in enumerate(fresh["ratios"])]
    path.write_text(json.dumps(log))
    assert reproduce_ratios.main(argv) == 1
    assert json.loads(out.read_text())["max_abs_ratio_diff"] > 1e-6
