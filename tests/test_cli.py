"""main.py / save_gradient.py: help, refusal of bad input before heavy work, an end-to-end run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main as main_cli
import save_gradient
from lib.arch import block_linears, decoder_blocks
from lib.utils import cpu_vector_units
from tests.conftest import ROOT

# WikiText-2 perplexity of the tiny random LLaMA of ``tiny_checkpoint`` (seed 0, SmolLM2's
# vocabulary) in fp32, as each test below runs it; measured on a 2-core AMD EPYC (AVX2) with
# torch 2.13 (the values depend on the model's random init, the data and the settings, not on the
# CPU beyond fp32 rounding). A wrong evaluation window, a different mask or other ratios move
# these by far more than the tolerance.
TINY_PPL = {"wanda_alp": 100725.0, "dense": 92887.9, "magnitude": 115658.7}
TINY_PPL_REL = 1e-3


@pytest.mark.parametrize("script", ["main.py", "save_gradient.py"])
def test_help(script):
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--model" in out.stdout


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["--sparsity_ratio", "1.2"], "must be in [0, 1)"),
        (["--sparsity_ratio", "-0.1"], "must be in [0, 1)"),
        (["--sparsity_type", "2:4"], "use --sparsity_ratio 0.5"),
        (["--sparsity_type", "2:4", "--sparsity_ratio", "0.5"], "ratios cannot apply"),
        (["--sparsity_type", "3:4", "--sparsity_ratio", "0.5", "--prune_method", "wanda"], "ambiguous"),
        (["--sparsity_type", "banana"], "use 'unstructured' or N:M"),
        (["--alpha", "0.7"], "--alpha 0.7"),
        (["--nsamples", "0"], "--nsamples must be"),
        (["--model", "/definitely/not/here"], "no such file or folder"),
        (["--data_dir", "/definitely/not/here"], "does not exist"),
        (["--prune_method", "ria", "--reallocation"], "use it with ria and --sparsity_type N:M"),
        (["--prune_method", "ria", "--sparsity_type", "2:4", "--sparsity_ratio", "0.5", "--lsa"], "add --reallocation"),
        (["--prune_method", "sparsegpt", "--percdamp", "-1"], "--percdamp must be"),
        (["--device_map", "auto", "--device", "cpu"], "drop --device cpu"),
    ],
)
def test_bad_input_fails_fast_with_one_line(argv, reason, capsys, monkeypatch):
    monkeypatch.setattr(main_cli, "run", lambda *a: pytest.fail("heavy work started"))
    assert main_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1


def test_unknown_method_is_an_argparse_error():
    with pytest.raises(SystemExit) as exc:
        main_cli.main(["--prune_method", "nope"])
    assert exc.value.code == 2


def test_end_to_end_wanda_alp(tiny_checkpoint, tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("ALP_DATA_DIR", str(data_dir))
    log, saved = tmp_path / "run.json", tmp_path / "pruned"
    settings = [
        "--model",
        str(tiny_checkpoint),
        "--nsamples",
        "4",
        "--seqlen",
        "64",
        "--grad_nsamples",
        "3",
        "--eval_seqlen",
        "64",
        "--eval_windows",
        "3",
        "--alpha",
        "0.1",
        "--dtype",
        "float32",
    ]
    argv = settings + ["--log_json", str(log), "--save_model", str(saved), "--save_log", str(tmp_path / "logs")]
    assert main_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| wanda_alp | 0.70 (unstructured) |" in out
    result = json.loads(log.read_text())
    for key in ("model", "prune_method", "sparsity_ratio", "actual_sparsity", "layer_ratios", "ppl", "timings"):
        assert key in result
    ratios = result["layer_ratios"]
    assert len(ratios) == 4 and sum(ratios) / 4 == pytest.approx(0.7)
    assert max(ratios) - min(ratios) == pytest.approx(0.2)
    assert result["ppl"]["wikitext2"] == pytest.approx(TINY_PPL["wanda_alp"], rel=TINY_PPL_REL)
    assert result["eval"]["windows"] == 3
    assert set(result["timings"]) >= {"load", "gradients", "eval_dense", "prune", "eval"}
    # the machine is recorded with its timings: vector units decide the dtype and the speed
    assert result["host"]["cpu_units"] == cpu_vector_units() and result["host"]["cores"] == os.cpu_count()
    assert result["host"]["torch_threads"] == torch.get_num_threads() and result["host"]["gpu"] is None
    assert (tmp_path / "logs" / "log_wanda_alp.txt").read_text().startswith("method\tactual_sparsity\tppl_test")

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    for ratio, block in zip(ratios, decoder_blocks(reloaded), strict=True):
        for lin in block_linears(block).values():
            assert ((lin.weight == 0).sum(dim=1) == int(lin.weight.shape[1] * ratio)).all()

    # a second run reuses the gradient cache and the dense perplexity, and refuses to clobber outputs
    assert main_cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main_cli.main(settings + ["--log_json", str(log), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "using cache" in out and "dense wikitext2 perplexity from cache" in out
    assert json.loads(log.read_text())["layer_ratios"] == ratios


def test_cache_for_other_settings_is_refused(tiny_checkpoint, tmp_path, data_dir, monkeypatch, capsys):
    cache = tmp_path / "grad.safetensors"
    common = ["--model", str(tiny_checkpoint), "--data_dir", str(data_dir), "--gradient_path", str(cache)]
    assert save_gradient.main(common + ["--grad_nsamples", "2", "--grad_seqlen", "16"]) == 0
    assert cache.is_file()
    argv = common + [
        "--grad_nsamples",
        "3",
        "--grad_seqlen",
        "16",
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--eval_seqlen",
        "32",
        "--eval_windows",
        "1",
        "--skip_dense",
    ]
    assert main_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "made for other settings" in err and "nsamples: cache 2 vs run 3" in err
    assert save_gradient.main(common + ["--grad_nsamples", "2", "--grad_seqlen", "16"]) == 2  # no clobbering


def test_dense_method_runs_without_calibration(tiny_checkpoint, tmp_path, data_dir, monkeypatch, capsys):
    argv = [
        "--model",
        str(tiny_checkpoint),
        "--data_dir",
        str(data_dir),
        "--prune_method",
        "dense",
        "--eval_seqlen",
        "32",
        "--eval_windows",
        "2",
        "--dtype",
        "float32",
        "--log_json",
        str(tmp_path / "d.json"),
    ]
    assert main_cli.main(argv) == 0
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["actual_sparsity"] == 0 and "prune" not in result["timings"]
    assert result["ppl"]["wikitext2"] == pytest.approx(TINY_PPL["dense"], rel=TINY_PPL_REL)
    # the same figure from transformers' own loss over the same two windows of the same stream
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.data import evaluation_stream

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    stream, _ = evaluation_stream("wikitext2", AutoTokenizer.from_pretrained(tiny_checkpoint), data_dir, 32)
    with torch.no_grad():
        losses = [model(w[None], labels=w[None]).loss.item() for w in stream[0, :64].view(2, 32)]
    assert result["ppl"]["wikitext2"] == pytest.approx(math.exp(sum(losses) / 2), rel=1e-5)


def test_magnitude_needs_no_calibration_text(tiny_checkpoint, tmp_path, data_dir, monkeypatch):
    """Magnitude pruning runs with a data folder that holds WikiText-2 only."""
    wiki_only = tmp_path / "data"
    (wiki_only / "wikitext2").mkdir(parents=True)
    (wiki_only / "wikitext2" / "wikitext-2-raw-v1.test.jsonl").write_bytes(
        (data_dir / "wikitext2" / "wikitext-2-raw-v1.test.jsonl").read_bytes()
    )
    log = tmp_path / "m.json"
    argv = [
        "--model",
        str(tiny_checkpoint),
        "--data_dir",
        str(wiki_only),
        "--prune_method",
        "magnitude",
        "--sparsity_ratio",
        "0.5",
        "--eval_seqlen",
        "32",
        "--eval_windows",
        "2",
        "--skip_dense",
        "--dtype",
        "float32",
        "--log_json",
        str(log),
    ]
    assert main_cli.main(argv) == 0
    result = json.loads(log.read_text())
    assert result["actual_sparsity"] == pytest.approx(0.5, abs=1e-3) and result["calibration"]["note"] is None
    assert result["ppl"]["wikitext2"] == pytest.approx(TINY_PPL["magnitude"], rel=TINY_PPL_REL)


def _result(zero_shot=None) -> dict:
    """A minimal run record, as main.run returns it, for the output writers."""
    return {
        "model": "tiny",
        "prune_method": "wanda_alp",
        "sparsity_ratio": 0.7,
        "actual_sparsity": 0.7,
        "layer_ratios": [0.6, 0.8],
        "ratio_info": {"allocation": "alp", "block_scores": [1.0, 2.0]},
        "ppl": {"wikitext2": 12.5},
        "zero_shot": zero_shot,
    }


def test_outputs_never_replace_an_earlier_file_unless_asked(tmp_path, monkeypatch):
    """Default JSON logs, --plot figures and the zero-shot JSON of --save_log get a new name on
    every run; --overwrite replaces the figure and the zero-shot JSON instead."""
    from lib.options import OutputOptions

    monkeypatch.chdir(tmp_path)  # --plot draws under ./pic
    keep = OutputOptions(log_dir=str(tmp_path / "logs"), save_log=str(tmp_path / "ref"), plot=True)
    first = main_cli.write_outputs(keep, _result(zero_shot={"mean": 0.5}))
    second = main_cli.write_outputs(keep, _result(zero_shot={"mean": 0.6}))
    for what in ("json log", "plot", "zero-shot results"):
        assert first[what] != second[what] and Path(first[what]).is_file() and Path(second[what]).is_file(), what
    assert json.loads(Path(first["zero-shot results"]).read_text()) == {"mean": 0.5}
    assert len(list((tmp_path / "logs").glob("*.json"))) == 2
    replace = OutputOptions(log_dir=str(tmp_path / "logs"), save_log=str(tmp_path / "ref"), plot=True, overwrite=True)
    third = main_cli.write_outputs(replace, _result(zero_shot={"mean": 0.7}))
    assert third["plot"] == first["plot"] and third["zero-shot results"] == first["zero-shot results"]
    assert json.loads(Path(first["zero-shot results"]).read_text()) == {"mean": 0.7}
    assert json.loads(Path(third["json log"]).read_text())["outputs"]["json log"] == third["json log"]
