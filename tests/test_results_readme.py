"""results/README.md is generated from the committed logs (scripts/results_readme.py) and stays so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_script

RESULTS = ROOT / "results"


gen = load_script("results_readme")


@pytest.fixture
def results_copy(tmp_path) -> Path:
    """A scratch copy of results/ (logs and the committed README)."""
    return Path(shutil.copytree(RESULTS, tmp_path / "results"))


def test_results_readme_matches_the_logs(capsys):
    """Every published grid equals what its logs give: regenerate with python scripts/results_readme.py."""
    status = gen.main(["--check"])
    assert status == 0, capsys.readouterr().out[-4000:]


def test_a_changed_log_number_changes_the_readme(results_copy, capsys):
    log_path = results_copy / "smollm2" / "pruners" / "wanda_0.5.json"
    log = json.loads(log_path.read_text())
    old = log["ppl"]["wikitext2"]
    assert f"| wanda | unstructured | 16 | 0.50 | 0.5000 | {old:.2f} |" in gen.render(results_copy)
    log["ppl"]["wikitext2"] = 12345.678
    log_path.write_text(json.dumps(log))
    text = gen.render(results_copy)
    assert "| wanda | unstructured | 16 | 0.50 | 0.5000 | 12345.68 |" in text
    assert f"{old:.2f} | 20.97" not in text
    assert gen.main(["--check", "--results", str(results_copy)]) == 1
    assert "12345.68" in capsys.readouterr().out  # the diff names the new figure


def test_a_disturbed_peer_run_keeps_its_quality_but_not_its_times(results_copy):
    path = results_copy / "bench" / "bench_peers_sparsegpt_float32_full.json"
    row = next(line for line in gen.render(results_copy).splitlines() if path.name in line and "| sparsegpt |" in line)
    assert "| 32 x 2048 |  |  |  | 338.6 | 324.2 |" in row  # times left out, perplexities kept
    bench = json.loads(path.read_text())
    del bench["timing_note"]
    path.write_text(json.dumps(bench))
    row = next(line for line in gen.render(results_copy).splitlines() if path.name in line and "| sparsegpt |" in line)
    assert f"| {bench['seconds_ours']['sparsegpt']:,.0f} |" in row  # a single run: its seconds, no speed ratio
    assert "|  | 338.6 |" in row
    bench["seconds_ours_runs"] = {"sparsegpt": [100.0, 90.0, 110.0]}
    bench["seconds_theirs_runs"] = {"sparsegpt": [200.0, 300.0, 250.0]}
    bench["seconds_ours"], bench["seconds_theirs"] = {"sparsegpt": 100.0}, {"sparsegpt": 250.0}
    bench.pop("sparsegpt_time_ratio", None)
    path.write_text(json.dumps(bench))
    row = next(line for line in gen.render(results_copy).splitlines() if path.name in line and "| sparsegpt |" in line)
    assert "| 100 (median of 3) | 250 (median of 3) | 0.40 |" in row  # medians of three: the ratio is shown


def test_a_hand_edited_figure_fails_the_check(results_copy, capsys):
    readme = results_copy / "README.md"
    text = readme.read_text()
    row = "| Dense | 21.62 |"
    assert row in text
    readme.write_text(text.replace(row, "| Dense | 19.99 |", 1))
    assert gen.main(["--check", "--results", str(results_copy)]) == 1
    assert "-| Dense | 19.99 |" in capsys.readouterr().out
    assert gen.main(["--results", str(results_copy)]) == 0  # rewriting restores it
    assert readme.read_text() == text


def test_sections_follow_the_folders_that_exist(results_copy):
    shutil.rmtree(results_copy / "smollm2" / "quant")
    ladder = results_copy / "tinymodel" / "ladder"
    ladder.mkdir(parents=True)
    log = json.loads((results_copy / "smollm2" / "pruners" / "wanda_0.7.json").read_text())
    log["ppl"]["wikitext2"] = 4321.5
    (ladder / "wanda_0.7.json").write_text(json.dumps(log))
    (ladder / "summary.json").write_text(json.dumps({"models": 3, "note": "ladder", "best": {"ppl": 7.25}}))
    text = gen.render(results_copy)
    assert "## Pruning + quantization" not in text
    assert "## `results/tinymodel/ladder/`" in text
    assert "wikitext2 4,321.50" in text
    assert "| best.ppl | 7.2500 |" in text
    assert "- [`results/tinymodel/ladder/`](#resultstinymodelladder)" in text


def test_memory_prediction_is_the_formulas():
    """The predicted peaks printed next to the H200 measurements are lib.placement's, for the logged settings."""
    estimate = gen.formula_peak(
        "SmolLM2-135M-Instruct", "wanda_alp", nsamples=128, seqlen=2048, micro_batch=4, placement="device"
    )
    text = (RESULTS / "README.md").read_text()
    row = f"| wanda | device | 128 x 2048 | 733.1 | {estimate.device / 2**20:.1f} | 0.97 |"
    assert row in text


def table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row in ``text`` (separator rows excluded)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_install_memory_figures_agree_with_their_logs():
    """INSTALL.md's measured / predicted peaks equal the generated ones for the log each row names,
    and its predicted table for the paper's models equals the generated one."""
    generated = table_rows((RESULTS / "README.md").read_text())
    memory = [row for row in generated if "measured / predicted" in row][0]
    by_log = {row[-1]: row for row in generated if len(row) == len(memory) and row[-1].startswith("`results/h200/")}
    install = table_rows((ROOT / "INSTALL.md").read_text())
    measured = [row for row in install if len(row) == 5 and row[1].startswith("`results/")]
    assert len(measured) >= 3
    for _, log, peak, predicted, ratio in measured:
        assert by_log[log][-4:-1] == [peak, predicted, ratio], log
    predicted_rows = [row for row in install if row[0].startswith("LLaMA")]
    assert len(predicted_rows) == 8
    for row in predicted_rows:
        assert row in generated, row
