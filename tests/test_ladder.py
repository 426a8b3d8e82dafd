"""scripts/ladder.py: the grid of issue 14, resuming, and the report on synthetic logs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import load_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ladder():
    yield load_script("ladder")
    sys.modules.pop("ladder", None)


def test_grid_is_the_issue_grid(ladder, tmp_path):
    counts = {m.key: len(ladder.commands(m, tmp_path, [])) for m in ladder.LADDER}
    # issue 14's grid, plus dp and evo for Wanda 70 % on the first two rungs (issue 16), and on
    # SmolLM2 issue 16's 60 % column (2 pruners x 7 allocations) and SparseGPT's dp and evo at 70 %
    assert counts == {"smollm2": 23 + 14 + 2, "qwen2.5-coder-0.5b": 11, "qwen2.5-coder-1.5b": 4}
    big = ladder.commands(ladder.MODELS["qwen2.5-coder-1.5b"], tmp_path, [])
    log, argv = big[-1]
    assert log == tmp_path / "qwen2.5-coder-1.5b" / "ladder" / "wanda_0.7_alp_auto.json"
    joined = " ".join(argv[1:])
    assert joined.startswith("main.py --model qwen2.5-coder-1.5b --prune_method wanda --sparsity_ratio 0.7")
    for flags in (
        "--allocation alp --alpha auto",
        "--nsamples 32 --seqlen 512",
        "--eval_windows 16",
        "--dtype float32",
    ):
        assert flags in joined
    small = [" ".join(argv) for _, argv in ladder.commands(ladder.MODELS["smollm2"], tmp_path, [])]
    assert all("--model" not in c and "--eval_windows 40" in c for c in small)
    assert all("--dtype float32" in c for c in small)  # fp32 whatever the CPU: one precision per grid
    assert "--prune_method dense" in small[0]


def test_ladder_resumes(ladder, tmp_path, monkeypatch, capsys):
    model = ladder.MODELS["qwen2.5-coder-1.5b"]
    ran = []

    def fake_run(argv, **kwargs):
        log = tmp_path / argv[argv.index("--log_json") + 1]
        ran.append(log.name)
        log.write_text("{}")
        return subprocess.CompletedProcess(argv, 0 if len(ran) < 3 else 1)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(ladder, "shown_path", lambda p: str(p.relative_to(tmp_path)))
    assert ladder.run_ladder([model], tmp_path, [], dry_run=False) == 1  # the third run fails: stop there
    assert ran == ["dense.json", "wanda_0.7_uniform.json", "wanda_0.7_alp.json"]
    (tmp_path / model.key / "ladder" / "wanda_0.7_alp.json").unlink()  # a failed run leaves no log
    ran.clear()
    assert ladder.run_ladder([model], tmp_path, [], dry_run=True) == 0 and ran == []
    ladder.run_ladder([model], tmp_path, [], dry_run=False)
    assert ran == ["wanda_0.7_alp.json", "wanda_0.7_alp_auto.json"]
    assert "done: " in capsys.readouterr().out


def test_ladder_runs_only_the_matching_names(ladder, tmp_path, monkeypatch):
    ran = []

    def fake_run(argv, **kwargs):
        log = tmp_path / argv[argv.index("--log_json") + 1]
        ran.append(log.stem)
        log.write_text("{}")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(ladder, "shown_path", lambda p: str(p.relative_to(tmp_path)))
    model = ladder.MODELS["smollm2"]
    assert ladder.run_ladder([model], tmp_path, [], dry_run=False, patterns=["dense", "sparsegpt_0.7_*"]) == 0
    assert ran == ["dense"] + [f"sparsegpt_0.7_{a}" for a in ladder.FIVE + ["dp", "evo"]]


def fake_log(ppl: float, *, dense: float, method: str = "wanda", sparsity: float = 0.7, alpha=None) -> dict:
    info = {"allocation": "alp"} if alpha is None else {"allocation": "alp", "alpha": alpha}
    return {
        "prune_method": method,
        "sparsity_ratio": sparsity,
        "ppl": {"wikitext2": ppl},
        "ppl_dense": {"wikitext2": dense},
        "ratio_info": info,
        "timings": {"load": 1.0, "prune": 9.0, "prune_maths": 5.0},
        "dtype": "bfloat16",
        "eval": {"windows": 16, "seqlen": 2048, "tokens": 32768},
    }


def write_logs(root, key, logs):
    folder = root / key / "ladder"
    folder.mkdir(parents=True)
    for name, log in logs.items():
        (folder / f"{name}.json").write_text(json.dumps(log))


def test_report_table_and_figure(ladder, tmp_path):
    write_logs(
        tmp_path,
        "qwen2.5-coder-0.5b",
        {
            "dense": fake_log(12.5, dense=12.5, method="dense", sparsity=0.0),
            "wanda_0.7_uniform": fake_log(400.0, dense=12.5),
            "wanda_0.7_alp": fake_log(800.0, dense=12.5),
            "wanda_0.7_alp_auto": fake_log(300.0, dense=12.5, alpha=-0.075),
        },
    )
    write_logs(
        tmp_path,
        "qwen2.5-coder-1.5b",
        {"wanda_0.7_uniform": fake_log(100.0, dense=9.0), "wanda_0.7_alp": fake_log(50.0, dense=9.0)},
    )
    table_path, figure = tmp_path / "ladder.md", tmp_path / "pic" / "ladder.png"
    printed = ladder.report(tmp_path, table_path, figure, "test machine")
    text, readme = printed.split("README table", 1)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    rows = {f"{c[0]}/{c[1]}": c[2:] for c in cells}
    assert rows["dense/"] == ["12.50", "9.00"]  # the 1.5B: from a pruned run's dense figure
    assert rows["wanda/alp (alpha 0.15)"] == ["800.00", "50.00"]
    assert rows["wanda/alp (alpha auto)"] == ["300.00", ""]
    assert "sparsegpt/uniform" not in rows and "wanda/owl" not in rows  # no logs, no row
    assert "| qwen2.5-coder-0.5b | bfloat16 | 16 | 4 | 40 | 10 | wanda 70%: -0.075 |" in text
    assert table_path.read_text() == text.rstrip("\n") + "\n" and figure.read_bytes()[:8] == PNG_MAGIC
    readme_rows = {
        f"{c[0]}/{c[1]}": [x.strip() for x in c[2:]]
        for c in (line.strip("|").split("|") for line in readme.splitlines() if line.startswith("|"))
    }
    # columns: SmolLM2 50 %, 60 %, 70 %, 0.5B 70 %, 1.5B 70 %; "-" still to run, blank outside the grid
    assert readme_rows[" dense / "] == ["-", "-", "-", "12.5", "9.0"]
    assert readme_rows[" wanda / alp, alpha 0.15 "] == ["-", "-", "-", "800.0", "50.0"]
    assert readme_rows[" wanda / dp (measured costs) "] == ["", "-", "-", "-", ""]
    assert readme_rows[" sparsegpt / evo (searched) "] == ["", "-", "-", "", ""]
    points = ladder.ratio_points(ladder.read_logs(tmp_path))
    assert points[("wanda", 0.7)]["alp"] == [(494e6, 2.0), (1.54e9, 0.5)]
    assert points[("wanda", 0.7)]["alp_auto"] == [(494e6, 0.75)]


def test_figure_ticks_name_the_model_sizes(ladder):
    assert [ladder._params_label(n) for n in (134_515_008, 494_032_768, 1_543_714_304)] == ["135M", "494M", "1.5B"]
