"""scripts/recovery_grid.py: the grid of issue 15, resuming through the shared runner, the report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lib.recovery import RecoveryOptions
from tests.conftest import load_script


@pytest.fixture(scope="module")
def grid():
    yield load_script("recovery_grid")
    sys.modules.pop("recovery_grid", None)


def searched_log(alpha: float) -> str:
    return json.dumps({"ratio_info": {"allocation": "alp", "alpha": alpha}})


def test_grid_is_the_issue_grid(grid, tmp_path):
    runs = grid.commands(grid.MODELS["smollm2"], tmp_path, [])
    best = runs.pop()  # the 70 % best run on every window comes last, built once the 70 % runs are logged
    assert best[0].name == "best_0.7_all_windows.json" and callable(best[1])
    with pytest.raises(FileNotFoundError):
        best[1]()
    for log, argv in runs:  # the searched rows' no-recovery runs, as if done
        if not callable(argv) and "--alpha" in argv:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(searched_log(-0.15))
    small = [" ".join(argv() if callable(argv) else argv) for _, argv in runs]
    # 4 pruners x {uniform, alpha auto} x {70 %, 50 %} x {none, reconstruct, dsnot, both}
    assert len(small) == 64 and len(set(small)) == 64
    assert all("--eval_windows 20" in c and "--nsamples 32 --seqlen 512 --dtype float32" in c for c in small)
    # only the no-recovery run of an auto row searches; its other runs take the alpha it chose
    assert sum("--alpha auto" in c for c in small) == 8 and sum("--alpha -0.15 " in c for c in small) == 24
    assert not any("--alpha auto" in c and ("--reconstruct" in c or "--refine" in c) for c in small)
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


def test_searched_rows_wait_for_the_value_their_search_chose(grid, tmp_path, monkeypatch, capsys):
    ran = {}

    def fake_run(argv, **kwargs):
        log = tmp_path / argv[argv.index("--log_json") + 1]
        ran[log.stem] = argv[argv.index("--alpha") + 1] if "--alpha" in argv else None
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(searched_log(-0.075) if ran[log.stem] == "auto" else "{}")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(grid, "shown_path", lambda p: str(p.relative_to(tmp_path)))
    runs = grid.commands(grid.MODELS["smollm2"], tmp_path, [])
    assert grid.run_missing(runs, cwd=tmp_path, tag="t", dry_run=True, patterns=["ria_0.5_alp_auto_*"]) == 0
    assert "would run ria_0.5_alp_auto_dsnot once" in capsys.readouterr().out and not ran
    assert grid.run_missing(runs, cwd=tmp_path, tag="t", dry_run=False, patterns=["ria_0.5_alp_auto_dsnot"]) == 1
    assert "cannot run ria_0.5_alp_auto_dsnot before" in capsys.readouterr().out and not ran
    assert grid.run_missing(runs, cwd=tmp_path, tag="t", dry_run=False, patterns=["ria_0.5_alp_auto_*"]) == 0
    assert ran == {f"ria_0.5_alp_auto_{r}": "auto" if r == "none" else "-0.075" for r in grid.RECOVERIES}


def fake_log(
    ppl: float, prune: float, *, refine: float = 0.0, reconstruct: float = 0.0, zeros: float = 0.7, **steps
) -> dict:
    """A run's log; ``steps``: the reconstruction's ``rel_lr`` / ``lr`` options (default: today's)."""
    timings = {"prune": prune + refine + reconstruct, "eval": 10.0}
    timings |= {"refine": refine} if refine else {}
    timings |= {"reconstruct": reconstruct} if reconstruct else {}
    options = {"reconstruct": bool(reconstruct), "rel_lr": RecoveryOptions.rel_lr, "lr": None} | steps
    machine = {"device": "cpu", "dtype": "float32", "host": {"cpu": "AMD EPYC", "cpu_units": "avx2", "gpu": None}}
    return {
        "ppl": {"wikitext2": ppl},
        "timings": timings,
        "actual_sparsity": zeros,
        "recovery": {"options": options},
        **machine,
    }


def test_report_reads_perplexity_time_added_and_zeros(grid, tmp_path):
    folder = tmp_path / "smollm2" / "recovery" / "grid"
    folder.mkdir(parents=True)
    logs = {
        "none": fake_log(1000.0, 100.0),
        "reconstruct": fake_log(250.0, 100.0, reconstruct=300.0),
        "dsnot": fake_log(1200.0, 100.0, refine=20.0, zeros=0.69971),
        "both": fake_log(300.0, 100.0, refine=20.0, reconstruct=300.0, lr=0.005),  # a log from before rel_lr
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
    assert cells[7] == "300.0 (+320 s, 3.20x) [lr 0.005]"  # the steps of a fit other than the default are named
    assert cells[8] == "0.6997 / 0.7000"
    assert cells[9] == "avx2"  # one machine ran the row


def test_report_names_each_runs_machine_and_refuses_a_log_not_in_fp32(grid, tmp_path):
    folder = tmp_path / "smollm2" / "recovery" / "grid"
    folder.mkdir(parents=True)
    older = fake_log(1000.0, 100.0) | {"args": {"dtype": "auto"}}  # no host record: auto -> fp32 on a CPU
    del older["host"]
    newer = fake_log(250.0, 100.0, reconstruct=30.0)
    newer["host"] |= {"cpu_units": "avx512-bf16"}
    for recovery, log in {"none": older, "dsnot": older, "reconstruct": newer}.items():
        (folder / f"wanda_0.7_uniform_{recovery}.json").write_text(json.dumps(log))
    table = grid.report_table(tmp_path, models=(grid.MODELS["smollm2"],))
    assert table.splitlines()[-1].endswith("| no-bf16 CPU (none, dsnot), avx512-bf16 (reconstruct) |")
    (folder / "wanda_0.7_uniform_both.json").write_text(json.dumps(newer | {"dtype": "bfloat16"}))
    with pytest.raises(ValueError, match="ran in bfloat16, not fp32"):
        grid.report_table(tmp_path, models=(grid.MODELS["smollm2"],))


def test_report_names_the_searched_value_and_refuses_a_mixed_row(grid, tmp_path):
    folder = tmp_path / "smollm2" / "recovery" / "grid"
    folder.mkdir(parents=True)
    for recovery, alpha in {"none": -0.15, "dsnot": -0.15}.items():
        log = fake_log(300.0, 100.0) | {"ratio_info": {"alpha": alpha}}
        (folder / f"sparsegpt_0.5_alp_auto_{recovery}.json").write_text(json.dumps(log))
    table = grid.report_table(tmp_path, models=(grid.MODELS["smollm2"],))
    assert "| smollm2 | sparsegpt | 50% | alp_auto, alpha -0.15 |" in table
    mixed = fake_log(1.0, 1.0) | {"ratio_info": {"alpha": 0.0}}
    (folder / "sparsegpt_0.5_alp_auto_both.json").write_text(json.dumps(mixed))
    with pytest.raises(ValueError, match="different --alpha values"):
        grid.report_table(tmp_path, models=(grid.MODELS["smollm2"],))


def test_best_run_is_rerun_on_every_window_with_its_chosen_alpha(grid, tmp_path, monkeypatch):
    monkeypatch.setattr(grid, "shown_path", lambda p: str(p.relative_to(tmp_path)))
    model = grid.MODELS["smollm2"]
    folder = tmp_path / "smollm2" / "recovery" / "grid"
    folder.mkdir(parents=True)
    names = [grid.run_name(*c, r) for c in model.configs if c[1] == 0.7 for r in grid.RECOVERIES]
    for rank, name in enumerate(names):  # perplexity falls along the list: the last run is the best
        log = fake_log(1000.0 - rank, 100.0) | {"ratio_info": {"alpha": -0.15}, "layer_ratios": [0.7, 0.7]}
        log["args"] = {"prune_method": name.split("_")[0], "refine": "none", "reconstruct": False}
        (folder / f"{name}.json").write_text(json.dumps(log))
    best_log, best_argv = grid.commands(model, tmp_path, [])[-1]
    assert names[-1] == "magnitude_0.7_alp_auto_both"
    argv = " ".join(best_argv())
    assert "--prune_method magnitude --sparsity_ratio 0.7 --allocation alp --alpha -0.15 " in argv
    assert "--refine dsnot --reconstruct" in argv and "--eval_windows" not in argv
    assert argv.endswith(f"--log_json {best_log.relative_to(tmp_path)}")
    # the best being a searched row's no-recovery run, the rerun takes the alpha it chose
    (folder / "wanda_0.7_alp_auto_none.json").write_text(
        json.dumps(fake_log(10.0, 100.0) | {"ratio_info": {"alpha": -0.15}})
    )
    argv = " ".join(best_argv())
    assert "--prune_method wanda --sparsity_ratio 0.7 --allocation alp --alpha -0.15 " in argv
    assert "--reconstruct" not in argv and "--refine" not in argv


def test_best_table_refuses_a_rerun_that_is_not_the_best_run(grid, tmp_path):
    model = grid.MODELS["smollm2"]
    folder = tmp_path / "smollm2" / "recovery" / "grid"
    folder.mkdir(parents=True)
    args = {"prune_method": "sparsegpt", "refine": "none", "reconstruct": True}
    for c in model.configs:
        for r in grid.RECOVERIES:
            ppl = 100.0 if grid.run_name(*c, r) == "sparsegpt_0.7_uniform_reconstruct" else 500.0
            log = fake_log(ppl, 10.0, reconstruct=5.0) | {"layer_ratios": [0.7], "args": args, "eval": {"windows": 20}}
            (folder / f"{grid.run_name(*c, r)}.json").write_text(json.dumps(log))
    assert grid.best_table(tmp_path, models=(model,)) == ""  # no rerun logged yet
    full = fake_log(120.0, 10.0, reconstruct=5.0) | {"layer_ratios": [0.7], "args": args, "eval": {"windows": 148}}
    full["ppl_dense"] = {"wikitext2": 20.5}
    grid.best_log(tmp_path, model, 0.7).write_text(json.dumps(full))
    row = grid.best_table(tmp_path, models=(model,)).splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["smollm2", "70%", "`sparsegpt_0.7_uniform_reconstruct` (uniform)", "100.0 (20)", "120.0 (148)"] + [
        "20.50 (148)",
        "0.7000",
    ]
    for stale in ({"layer_ratios": [0.6]}, fake_log(120.0, 10.0, reconstruct=5.0, lr=0.005)):
        # other ratios, or a rerun whose fit took other steps than its grid run (a log kept from an old default)
        grid.best_log(tmp_path, model, 0.7).write_text(json.dumps(full | stale))
        with pytest.raises(ValueError, match="not the grid's best run"):
            grid.best_table(tmp_path, models=(model,))
