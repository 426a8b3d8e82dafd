"""scripts/make_tables.py on synthetic run logs, and the reproduction shell scripts in dry-run mode."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SCRIPTS, load_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAPER_METHODS = ["dense", "sparsegpt", "sparsegpt_alp", "wanda", "wanda_alp", "ria", "ria_alp"]


make_tables = load_script("make_tables")


def run_log(model, method, sparsity, ppl, **extra) -> dict:
    """A minimal main.py --log_json object."""
    alp = method.endswith("_alp")
    log = {
        "model": model,
        "prune_method": method,
        "sparsity_ratio": sparsity,
        "sparsity_type": "unstructured",
        "layer_ratios": [sparsity - 0.1, sparsity, sparsity + 0.1] if alp else [sparsity] * 3,
        "ratio_info": {"allocation": "none" if method == "dense" else ("alp" if alp else "uniform"), "alpha": 0.15},
        "quantization": None,
        "ppl": {"wikitext2": ppl},
        "ppl_dense": {},
        "zero_shot": None,
        "calibration": {"nsamples": 128, "seqlen": 2048},
        "eval": {"windows": 4, "seqlen": 2048, "tokens": 8192},
        "args": {"alpha": 0.15, "grad_type": "l2_hundred_total", "grad_loss": "last_token"},
    }
    return {**log, **extra}


def zero_shot(accs: dict, *, unavailable=(), limit=None, paper_mean=None) -> dict:
    """A zero_shot record as lib.zero_shot writes it."""
    tasks = {t: {"acc": a, "acc_stderr": 0.01, "acc_norm": a, "acc_norm_stderr": 0.01} for t, a in accs.items()}
    mean = {"mean_acc": sum(accs.values()) / len(accs), "paper_mean_sum_of_six_over_5": paper_mean}
    return {"tasks": tasks, "unavailable": list(unavailable), "mean": mean, "limit": limit}


SIX = dict(boolq=0.6477, rte=0.5487, hellaswag=0.4441, arc_challenge=0.2747, mnli=0.3561, openbookqa=0.314)
TWO = {"boolq": 0.5792, "rte": 0.5776}


def synthetic_logs() -> dict[str, dict]:
    """Relative path -> log: two models, several methods, 0.5 and 0.7, zero-shot, runs that must be left out."""
    llama, opt = "llama-7b", "opt-6.7b"
    return {
        "llama/dense.json": run_log(llama, "dense", 0.7, 5.68),
        "llama/sparsegpt.json": run_log(llama, "sparsegpt", 0.7, 25.38),
        "llama/sparsegpt_alp.json": run_log(llama, "sparsegpt_alp", 0.7, 18.53),
        "llama/wanda.json": run_log(
            llama, "wanda", 0.7, 86.38, zero_shot=zero_shot(TWO, unavailable=["mnli"], limit=100)
        ),
        "llama/wanda_alp.json": run_log(
            llama, "wanda_alp", 0.7, 24.14, zero_shot=zero_shot(SIX, paper_mean=sum(SIX.values()) / 5)
        ),
        "llama/ria.json": run_log(llama, "ria", 0.7, 83.11),
        "llama/ria_alp.json": run_log(llama, "ria_alp", 0.7, 25.77),
        "llama/sweep/wanda_0.5.json": run_log(llama, "wanda", 0.5, 7.26),
        "llama/sweep/wanda_alp_0.5.json": run_log(llama, "wanda_alp", 0.5, 7.01),
        "llama/quant/wanda_alp_w4.json": run_log(llama, "wanda_alp", 0.7, 999.11, quantization={"wbits": 4}),
        "llama/nm/wanda_2-4.json": run_log(llama, "wanda", 0.5, 888.22, sparsity_type="2:4"),
        "llama/owl.json": run_log(llama, "wanda", 0.7, 777.33, ratio_info={"allocation": "owl"}),
        "opt/wanda.json": run_log(opt, "wanda", 0.7, 157.48, ppl_dense={"wikitext2": 10.86}),
        "opt/wanda_alp.json": run_log(opt, "wanda_alp", 0.7, 44.07, ppl_dense={"wikitext2": 10.86}),
        "opt/wanda_alp_a0.05.json": run_log(
            opt, "wanda_alp", 0.7, 666.44, args={"alpha": 0.05}, ratio_info={"allocation": "alp", "alpha": 0.05}
        ),
        "opt/results_zero_shot_wanda_0.7.json": {"tasks": {}, "mean": {}},  # not a run log
    }


@pytest.fixture
def logs_dir(tmp_path) -> Path:
    """A folder of synthetic logs, plus a list-valued and a broken JSON file."""
    root = tmp_path / "logs"
    for rel, log in synthetic_logs().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(log))
    (root / "list.json").write_text("[1, 2]")
    (root / "broken.json").write_text("{not json")
    return root


def tables(logs_dir, capsys, *flags) -> tuple[list[str], str]:
    """Run make_tables (no figures); returns (stdout lines, stderr)."""
    assert make_tables.main([str(logs_dir), "--no_figures", *flags]) == 0
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


def test_table_ii_cells(logs_dir, capsys):
    lines, err = tables(logs_dir, capsys)
    assert "| method | llama-7b | opt-6.7b |" in lines
    assert "| Dense | 5.68 | 10.86 |" in lines  # opt: ppl_dense of its runs (no dense run)
    assert "| SparseGPT | 25.38 |  |" in lines
    assert "| ALP w. SparseGPT | 18.53 |  |" in lines
    assert "| Wanda | 86.38 | 157.48 |" in lines
    assert "| ALP w. Wanda | 24.14 | 44.07 |" in lines
    assert "| RIA | 83.11 |  |" in lines
    assert "| ALP w. RIA | 25.77 |  |" in lines
    text = "\n".join(lines)
    for left_out in ("999.11", "888.22", "777.33", "666.44", "7.26", "Quoted from the paper"):
        assert left_out not in text
    assert "skip" in err and "broken.json" in err


def test_table_ii_other_sparsity(logs_dir, capsys):
    lines, _ = tables(logs_dir, capsys, "--sparsity", "0.5")
    assert "| method | llama-7b |" in lines  # opt-6.7b has no run at 50 %
    assert "| Wanda | 7.26 |" in lines
    assert "| ALP w. Wanda | 7.01 |" in lines
    assert "| Dense | 5.68 |" in lines


def test_paper_table(logs_dir, capsys):
    lines, _ = tables(logs_dir, capsys, "--paper")
    start = next(i for i, line in enumerate(lines) if "Quoted from the paper" in line)
    quoted = lines[start:]
    assert "| method | LLaMA1-7B | LLaMA1-13B | LLaMA2-7B | LLaMA2-13B | LLaMA3-8B | OPT-6.7B | OPT-13B |" in quoted
    assert "| ALP w. Wanda | 24.14 | 21.01 | 29.18 | 24.29 | 100.55 | 44.07 | 33.16 |" in quoted
    assert "| RIA | 83.11 | 45.58 | 62.92 | 32.95 | 126.54 | 107.90 | 38.52 |" in quoted


def test_table_iv_zero_shot(logs_dir, capsys):
    lines, _ = tables(logs_dir, capsys)
    header = "| model | method | boolq | rte | hellaswag | arc_challenge | mnli | openbookqa | Mean (true) | "
    assert header + "Paper Mean (sum of six / 5) |" in lines
    # Wanda ran before ALP w. Wanda (paper order); mnli was unavailable to it; no paper mean without all six.
    assert "| llama-7b | Wanda | 57.92 | 57.76 |  |  | n/a |  | 57.84 |  |" in lines
    assert "| llama-7b | ALP w. Wanda | 64.77 | 54.87 | 44.41 | 27.47 | 35.61 | 31.40 | 43.09 | 51.71 |" in lines
    assert "Per-task limit: first 100 documents per task (llama-7b Wanda)." in lines


def test_out_file_and_figures(logs_dir, tmp_path, capsys):
    out, pic = tmp_path / "results" / "tables.md", tmp_path / "pic"
    assert make_tables.main([str(logs_dir), "--paper", "--out", str(out), "--pic", str(pic)]) == 0
    captured = capsys.readouterr()
    assert out.read_text() == captured.out
    assert [p.name for p in out.parent.iterdir()] == ["tables.md"]  # no temporary file left
    expected = {
        "ppl_vs_sparsity_llama-7b.png",
        "block_ratios_llama-7b.png",
        "zero_shot_llama-7b.png",
        "block_ratios_opt-6.7b.png",
    }
    assert {p.name for p in pic.iterdir()} == expected
    for name in expected:
        assert (pic / name).read_bytes()[:8] == PNG_MAGIC
    assert "skip ppl_vs_sparsity_opt-6.7b.png" in captured.err
    assert "skip zero_shot_opt-6.7b.png" in captured.err


def test_sparsity_curves_keep_uniform_and_alp_apart(logs_dir):
    logs = make_tables.load_logs([str(logs_dir)])
    curves = make_tables.sparsity_curves(logs, "llama-7b", 0.15)
    assert curves == {"Wanda": {0.5: 7.26, 0.7: 86.38}, "ALP w. Wanda": {0.5: 7.01, 0.7: 24.14}}


def test_no_run_logs(tmp_path, capsys):
    (tmp_path / "results_zero_shot_wanda_0.7.json").write_text(json.dumps({"tasks": {}}))
    assert make_tables.main([str(tmp_path), "--no_figures"]) == 1
    assert "no main.py run logs" in capsys.readouterr().err


def test_duplicate_runs_prefer_the_longer_evaluation(logs_dir, capsys):
    full = run_log("llama-7b", "wanda", 0.7, 80.0, eval={"windows": 148, "seqlen": 2048, "tokens": 303104})
    (logs_dir / "llama" / "wanda_full.json").write_text(json.dumps(full))
    lines, err = tables(logs_dir, capsys)
    assert "| Wanda | 80.00 | 157.48 |" in lines
    assert "2 runs for llama-7b / wanda" in err


# ---- shell scripts ----------------------------------------------------------------------------


def run_script(name: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """Run scripts/NAME with a clean reproduction environment plus ``env``, from an empty folder."""
    base = {k: v for k, v in os.environ.items() if k not in ("MODEL", "OUT", "EXTRA", "ZERO_SHOT", "DEVICE", "PRUNER")}
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", str(SCRIPTS / name)], env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def commands(stdout: str) -> list[str]:
    """The '+ ' lines of a dry run."""
    return [line for line in stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    ("script", "name", "model_flag", "device"),
    [("llama-7b.sh", "llama-7b", "--model huggyllama/llama-7b", "cuda"), ("smollm2.sh", "smollm2", None, "cpu")],
)
def test_dry_run_prints_the_seven_runs(script, name, model_flag, device, tmp_path):
    out = tmp_path / "out"
    result = run_script(script, tmp_path, DRY_RUN="1", OUT=str(out))
    assert result.returncode == 0, result.stderr
    lines = commands(result.stdout)
    assert len(lines) == 7 and lines == result.stdout.splitlines()
    for method, line in zip(PAPER_METHODS, lines, strict=True):
        assert line.startswith(f"+ python main.py --prune_method {method} --sparsity_ratio 0.7 ")
        assert "--alpha 0.15 --grad_nsamples 10 --seed 0" in line
        assert f"--device {device}" in line
        assert f"--log_json {out}/{name}_{method}_0.7.json --save_log {out}" in line
        assert (model_flag in line) if model_flag else ("--model" not in line)
        assert "--eval_zero_shot" not in line
    assert not out.exists()
    assert list((tmp_path / "cwd").iterdir()) == []


def test_dry_run_skips_existing_logs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "llama-7b_wanda_alp_0.7.json").write_text("{}")
    result = run_script("llama-7b.sh", tmp_path, DRY_RUN="1", OUT=str(out))
    assert result.returncode == 0, result.stderr
    lines = commands(result.stdout)
    assert [line.split()[4] for line in lines] == [m for m in PAPER_METHODS if m != "wanda_alp"]
    assert any(line.startswith("skip llama-7b_wanda_alp_0.7") for line in result.stdout.splitlines())
    assert [p.name for p in out.iterdir()] == ["llama-7b_wanda_alp_0.7.json"]


def test_dry_run_environment(tmp_path):
    env = dict(DRY_RUN="1", OUT=str(tmp_path / "o"), MODEL="/models/opt", DEVICE="cuda:1", ZERO_SHOT="1")
    result = run_script("opt-6.7b.sh", tmp_path, EXTRA="--eval_windows 20 --nsamples 32", **env)
    lines = commands(result.stdout)
    assert len(lines) == 7
    for line in lines:
        assert "--model /models/opt --device cuda:1 --eval_zero_shot" in line
        assert line.endswith("--eval_windows 20 --nsamples 32")


def test_methods_picks_a_subset_and_refuses_typos(tmp_path):
    result = run_script("smollm2.sh", tmp_path, DRY_RUN="1", OUT=str(tmp_path / "o"), METHODS="dense ria_alp")
    assert [line.split()[4] for line in commands(result.stdout)] == ["dense", "ria_alp"]
    bad = run_script("smollm2.sh", tmp_path, DRY_RUN="1", OUT=str(tmp_path / "o"), METHODS="dense wanda_alpp")
    assert bad.returncode == 2 and "wanda_alpp" in bad.stderr and not commands(bad.stdout)


def test_sweep_dry_run(tmp_path):
    result = run_script("sweep.sh", tmp_path, DRY_RUN="1", OUT=str(tmp_path / "sweep"), PRUNER="ria")
    assert result.returncode == 0, result.stderr
    lines = commands(result.stdout)
    assert len(lines) == 4 * 5 + 4
    assert sum("--prune_method ria_alp " in line for line in lines) == 20
    assert sum("--prune_method ria " in line for line in lines) == 4
    flags = f"--alpha 0.25 --grad_nsamples 10 --seed 0 --device auto --log_json {tmp_path}/sweep/smollm2_ria_alp_0.8"
    assert any(flags in line for line in lines)
    assert not (tmp_path / "sweep").exists()
    assert run_script("sweep.sh", tmp_path, DRY_RUN="1", PRUNER="bogus").returncode != 0
