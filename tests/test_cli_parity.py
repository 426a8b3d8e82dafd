"""Reference-parity flags of main.py: --nm_reading, --dlp_statistic, --alphapruning_xmin and
--epsilon: refusals before any model loads, help text, defaults, and what reaches the run log."""

import json

import pytest
import torch

import lib.pipeline
import main as main_cli
from lib.block_metrics import heavy_tail_alpha
from lib.masks import SparsityPattern
from lib.options import build_options


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["--sparsity_type", "1:4", "--sparsity_ratio", "0.75"], "add --nm_reading keep or --nm_reading prune"),
        (["--sparsity_type", "3:4", "--sparsity_ratio", "0.25"], "is ambiguous"),
        (["--sparsity_type", "1:4", "--nm_reading", "keep", "--sparsity_ratio", "0.25"], "use --sparsity_ratio 0.75"),
        (["--sparsity_type", "1:4", "--nm_reading", "prune", "--sparsity_ratio", "0.75"], "use --sparsity_ratio 0.25"),
        (["--sparsity_type", "2:4", "--sparsity_ratio", "0.7"], "use --sparsity_ratio 0.5"),
        (["--nm_reading", "keep"], "drop it for unstructured"),
        (
            [
                "--prune_method",
                "sparsegpt",
                "--sparsity_type",
                "1:3",
                "--nm_reading",
                "keep",
                "--sparsity_ratio",
                "0.6667",
            ],
            "--blocksize 128 must be a multiple of M = 3",
        ),
    ],
)
def test_nm_refusals_come_before_any_model(argv, reason, capsys, monkeypatch):
    monkeypatch.setattr(main_cli, "run", lambda *a: pytest.fail("heavy work started"))
    assert main_cli.main(["--prune_method", "wanda", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv", [["--dlp_statistic", "max"], ["--alphapruning_xmin", "mid"], ["--nm_reading", "x"]])
def test_unknown_choices_are_argparse_errors(argv, monkeypatch):
    monkeypatch.setattr(main_cli, "run", lambda *a: pytest.fail("heavy work started"))
    with pytest.raises(SystemExit) as exc:
        main_cli.main(argv)
    assert exc.value.code == 2


def test_help_and_released_defaults():
    parser = main_cli.build_parser()
    text = " ".join(parser.format_help().split())
    for flag in ("--nm_reading {keep,prune}", "--dlp_statistic {mean,median}", "--alphapruning_xmin {peak,median}"):
        assert flag in text
    assert "prune N of every M" in text and "keeps N of every M" in text
    args = parser.parse_args([])
    assert (args.dlp_statistic, args.alphapruning_xmin, args.epsilon, args.nm_reading) == ("mean", "peak", 0.3, None)


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["--sparsity_type", "2:4", "--sparsity_ratio", "0.5"], SparsityPattern(2, 4)),
        (["--sparsity_type", "1:4", "--nm_reading", "keep", "--sparsity_ratio", "0.75"], SparsityPattern(1, 4)),
        (["--sparsity_type", "1:4", "--nm_reading", "prune", "--sparsity_ratio", "0.25"], SparsityPattern(3, 4)),
        (["--sparsity_type", "3:8", "--nm_reading", "keep", "--sparsity_ratio", "0.625"], SparsityPattern(3, 8)),
    ],
)
def test_spelled_out_patterns_are_accepted(argv, pattern, data_dir):
    args = main_cli.build_parser().parse_args(["--prune_method", "wanda", "--data_dir", str(data_dir), *argv])
    assert build_options(args).pruning.pattern == pattern


def run_allocation(tiny_checkpoint, tmp_path, data_dir, name, *flags):
    log = tmp_path / f"{name}.json"
    argv = [
        "--model",
        str(tiny_checkpoint),
        "--data_dir",
        str(data_dir),
        "--prune_method",
        "wanda",
        "--sparsity_ratio",
        "0.6",
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--eval_seqlen",
        "32",
        "--eval_windows",
        "1",
        "--skip_dense",
        "--dtype",
        "float32",
        "--log_json",
        str(log),
        *flags,
    ]
    assert main_cli.main(argv) == 0
    return json.loads(log.read_text())


def test_dlp_statistic_reaches_the_log(tiny_checkpoint, tmp_path, data_dir):
    mean = run_allocation(tiny_checkpoint, tmp_path, data_dir, "mean", "--allocation", "dlp")
    median = run_allocation(
        tiny_checkpoint, tmp_path, data_dir, "median", "--allocation", "dlp", "--dlp_statistic", "median"
    )
    assert mean["ratio_info"]["dlp_statistic"] == "mean" and median["ratio_info"]["dlp_statistic"] == "median"
    assert mean["ratio_info"]["fallback"] is None
    # the two statistics rank the blocks by different numbers: the scores and ratios differ
    assert mean["ratio_info"]["block_scores"] != pytest.approx(median["ratio_info"]["block_scores"], rel=1e-3)
    assert mean["layer_ratios"] != pytest.approx(median["layer_ratios"], abs=1e-4)


def test_alphapruning_estimator_and_epsilon_reach_the_log(tiny_checkpoint, tmp_path, data_dir):
    from transformers import AutoModelForCausalLM

    released = run_allocation(tiny_checkpoint, tmp_path, data_dir, "peak", "--allocation", "alphapruning")
    ours = run_allocation(
        tiny_checkpoint,
        tmp_path,
        data_dir,
        "median",
        "--allocation",
        "alphapruning",
        "--alphapruning_xmin",
        "median",
        "--epsilon",
        "0.2",
    )
    info, other = released["ratio_info"], ours["ratio_info"]
    assert (info["alphapruning_xmin"], info["epsilon"]) == ("peak", 0.3)
    assert (other["alphapruning_xmin"], other["epsilon"]) == ("median", 0.2)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    assert info["block_scores"] == pytest.approx(heavy_tail_alpha(model, xmin="peak").tolist(), rel=1e-6)
    assert other["block_scores"] == pytest.approx(heavy_tail_alpha(model, xmin="median").tolist(), rel=1e-6)
    ratios = torch.tensor(released["layer_ratios"])
    assert (ratios.max() / ratios.min()).item() == pytest.approx(1.3 / 0.7, rel=1e-6)  # eps 0.3 band


def test_uniform_fallback_is_logged_and_printed(tiny_checkpoint, tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setattr(lib.pipeline, "heavy_tail_alpha", lambda model, xmin: torch.full((4,), 3.0))
    result = run_allocation(tiny_checkpoint, tmp_path, data_dir, "flat", "--allocation", "alphapruning")
    assert result["ratio_info"]["fallback"] == "uniform: all block scores are equal"
    assert result["layer_ratios"] == [0.6] * 4
    assert "alphapruning: uniform: all block scores are equal" in capsys.readouterr().out
