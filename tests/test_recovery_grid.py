"""scripts/recovery_grid.py: the grid of issue 15, resuming through the shared runner, the report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def grid():
    yield load_script("recovery_grid")
    sys.modules.pop("recovery_grid", None)


def test_grid_is_the_issue_grid(grid, tmp_path):
    small = [" ".join(argv) for _, argv in grid.commands(grid.MODELS["smollm2"], tmp_path, [])]
    # 4 pruners x {uniform, alpha auto} x {70 %, 50 %} x {none, reconstruct, dsnot, both}
    assert len(small) == 64 and len(set(small)) == 64
    assert all("--eval_windows 20" in c and "--nsamples 32 --seqlen 512" in c for c in small)
    assert sum("--alpha auto" in c for c in small) == 32
    assert sum("--reconstruct" in c for c in small) == sum("--refine dsnot" in c for c in small) == 32
    assert sum("--refine dsnot --reconstruct" in c for c in small) == 16
    qwen = [" ".join(argv) for _, argv in grid.commands(grid.MODELS["qwen2.5-coder-0.5b"], tmp_path, [])]
    assert len(qwen) == 8 and all("--model qwen2.5-coder-0.5b" in c and "--eval_windows 16" in c for c in qwen)


def test_grid_resumes_and_stops_at_a_failure(grid, tmp_path, monkeypatch):
    ran, failed = [], []

    def fake_run(argv, **kwargs):
        log = tmp_path / argv[argv.index("--log_json") + 1]
        ran.append(log.stem)
        if len(ran) == 2 and not failed:
            failed.append(log.stem)
            return subprocess.CompletedProcess(argv, 3)  # a failed run writes no log
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("{}")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(grid, "shown_path", lambda p: str(p.relative_to(tmp_path)))
    model = grid.MODELS["qwen2.5-coder-0.5b"]
    runs = grid.commands(model, tmp_path, [])
    assert grid.run_missing(runs, cwd=tmp_path, tag="t", dry_run=False) == 3
    assert ran == ["wanda_0.7_uniform_none", "wanda_0.7_uniform_reconstruct"]
    ran.clear()
    assert grid.run_missing(runs, cwd=tmp_path, tag="t", dry_run=False, patterns=["wanda_*"]) == 0
    assert ran == ["wanda_0.7_uniform_reconstruct", "wanda_0.7_uniform_dsnot", "wanda_0.7_uniform_both"]


def fake_log(ppl: float, prune: float, *, refine: float = 0.0, reconstruct: float = 0.0, zeros: float = 0.7) -> dict:
    timings = {"prune": prune + refine + reconstruct, "eval": 10.0}
    timings |= {"refine": refine} if refine else {}
    timings |= {"reconstruct": reconstruct} if reconstruct else {}
    return {"ppl": {"wikitext2": ppl}, "timings": timings, "actual_sparsity": zeros}


def test_report_reads_perplexity_time_added_and_zeros(grid, tmp_path):
    folder = tmp_path / "smollm2" / "recovery" / "grid"
    folder.mkdir(parents=True)
    logs = {
        "none": fake_log(1000.0, 100.0),
        "reconstruct": fake_log(250.0, 100.0, reconstruct=300.0),
        "dsnot": fake_log(1200.0, 100.0, refine=20.0, zeros=0.69971),
    }
    for recovery, log in logs.items():
        (folder / f"wanda_0.7_uniform_{recovery}.json").write_text(json.dumps(log))
    table = grid.report_table(tmp_path, models=(grid.MODELS["smollm2"],))
    rows = [line for line in table.splitlines() if line.startswith("| smollm2")]
    assert len(rows) == 1  # configurations without logs are left out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:4] == ["smollm2", "wanda", "70%", "uniform"]
    assert cells[4] == "1,000.0"
    assert cells[5] == "250.0 (+300 s, 3.00x)"
    assert cells[6] == "1,200.0 (+20 s, 0.20x)"
    assert cells[7] == "-"
    assert cells[8] == "0.6997 / 0.7000"
