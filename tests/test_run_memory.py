"""The whole-run memory prediction (lib.placement: gradient pass, evaluation) and its log fields."""

import json

import torch
from transformers import AutoModelForCausalLM

import main as main_cli
from lib.arch import decoder_blocks, prunable_linears
from lib.placement import (
    RunMemoryEstimate,
    predicted_evaluation_memory,
    predicted_gradient_pass_memory,
)
from tests.conftest import tiny_model


def _linear_params(model) -> int:
    return sum(m.weight.numel() for b in decoder_blocks(model) for m in b.modules() if isinstance(m, torch.nn.Linear))


def test_gradient_pass_terms():
    model = tiny_model("qwen2", layers=3)
    params = sum(p.numel() for p in model.parameters())
    kwargs = {"seqlen": 64, "dtype": torch.float32}
    reused = predicted_gradient_pass_memory(model, reuses_model=True, checkpointing=False, **kwargs)
    second = predicted_gradient_pass_memory(model, reuses_model=False, checkpointing=False, **kwargs)
    assert second - reused == params * 4  # a second copy of the weights when the run's model is not reused
    # the fp32 accumulators: one per block-linear weight, whatever the pass's dtype
    assert reused > params * 4 + _linear_params(model) * 4
    half = predicted_gradient_pass_memory(
        model, reuses_model=True, checkpointing=False, seqlen=64, dtype=torch.bfloat16
    )
    assert reused - half >= params * 2
    checkpointed = predicted_gradient_pass_memory(model, reuses_model=True, checkpointing=True, **kwargs)
    assert checkpointed < reused


def test_evaluation_logits_scale_with_vocabulary_and_batch():
    small, large = tiny_model("llama", vocab_size=128), tiny_model("llama", vocab_size=1024)
    weights = {m: sum(p.numel() for p in m.parameters()) * 4 for m in (small, large)}
    one = {m: predicted_evaluation_memory(m, seqlen=256, batch_size=1, dtype=torch.float32) for m in (small, large)}
    logits_growth = (one[large] - weights[large]) - (one[small] - weights[small])
    assert logits_growth >= 256 * (1024 - 128) * 4
    two = predicted_evaluation_memory(large, seqlen=256, batch_size=2, dtype=torch.float32)
    assert two - one[large] >= 256 * 1024 * 4
    assert RunMemoryEstimate(5, 9, 7, 1).peak == 10


def test_run_log_has_the_phases_and_the_measured_run_peak(tiny_checkpoint, tmp_path, data_dir, monkeypatch):
    """An ALP run with no gradient cache predicts a gradient pass; the next run, with the cache
    written, predicts none; both logs carry the measured whole-run peak beside the prediction."""
    monkeypatch.setenv("ALP_DATA_DIR", str(data_dir))
    common = ["--model", str(tiny_checkpoint), "--prune_method", "wanda", "--allocation", "alp", "--nsamples", "2"]
    common += ["--seqlen", "32", "--eval_seqlen", "64", "--eval_windows", "1", "--dtype", "float32", "--skip_dense"]
    runs = []
    for name in ("first", "second"):
        log = tmp_path / f"{name}.json"
        assert main_cli.main(common + ["--log_json", str(log)]) == 0
        runs.append(json.loads(log.read_text()))
    first, second = (r["predicted_memory_bytes"]["run"] for r in runs)
    assert first["gradient_pass"] > 0 and second["gradient_pass"] == 0
    assert first["pruning"] == runs[0]["predicted_memory_bytes"]["device"]
    assert first["peak"] == max(first["pruning"], first["gradient_pass"], first["evaluation"]) + first["runtime"]
    for run in runs:
        assert run["measured_run_peak_bytes"] >= run["measured_prune_peak_bytes"] > 0


def test_evaluation_counts_materialised_attention_scores():
    model = tiny_model("llama")
    plain = predicted_evaluation_memory(model, seqlen=256, batch_size=1, dtype=torch.float32)
    scores = predicted_evaluation_memory(model, seqlen=256, batch_size=1, dtype=torch.float32, attention_scores=True)
    assert scores - plain == model.config.num_attention_heads * 256**2 * 12


_HEAP_SCENARIO = """
import os, torch
from lib.utils import free_memory
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
x = torch.ones(5 << 20); del x     # a freed 20 MiB block raises glibc's mmap threshold above 4 MiB
keep, big = [], []
for _ in range(32):
    big.append(torch.ones(1 << 20))  # 4 MiB each, now from the heap (like one linear's accumulator)
    keep.append(torch.ones(1 << 16)) # live tensors between them, as pruning / evaluation allocate
start = rss(); del big; freed = rss()
free_memory(); trimmed = rss()
print((start - freed) >> 20, (freed - trimmed) >> 20)
"""


def test_free_memory_returns_freed_heap_pages_to_the_os():
    """The ALP run's extra resident memory: freed gradient accumulators stayed resident until trimmed."""
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    if sys.platform != "linux":
        pytest.skip("needs Linux with glibc")
    out = subprocess.run([sys.executable, "-c", _HEAP_SCENARIO], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()  # fmt: skip
    released_by_free, released_by_trim = int(out[0]), int(out[1])
    assert released_by_free < 32  # the 128 MiB stay resident after del ...
    assert released_by_trim >= 100  # ... until free_memory trims the heap


def test_auto_search_holds_a_dense_backup_beside_pruning(tiny_checkpoint, tmp_path, data_dir, monkeypatch):
    """``--alpha auto`` on a CPU: the run prediction adds a search phase = pruning + one copy of
    every prunable weight (what lib.search keeps between candidates); a fixed alpha has none."""
    monkeypatch.setenv("ALP_DATA_DIR", str(data_dir))
    args = ["--model", str(tiny_checkpoint), "--prune_method", "wanda", "--allocation", "alp", "--nsamples", "2"]
    args += ["--seqlen", "32", "--eval_seqlen", "64", "--eval_windows", "1", "--dtype", "float32", "--skip_dense"]
    logs = {}
    for alpha in ("auto", "0.1"):
        log = tmp_path / f"alpha_{alpha}.json"
        assert main_cli.main(args + ["--alpha", alpha, "--log_json", str(log)]) == 0
        logs[alpha] = json.loads(log.read_text())["predicted_memory_bytes"]
    loaded = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    backup = sum(lin.weight.numel() for block in prunable_linears(loaded) for lin in block.values()) * 4
    auto, fixed = logs["auto"]["run"], logs["0.1"]["run"]
    assert auto["search"] == auto["pruning"] + backup and fixed["search"] == 0
    assert auto["peak"] == max(auto["search"], auto["gradient_pass"], auto["evaluation"]) + auto["runtime"]
    assert RunMemoryEstimate(5, 9, 7, 1, search=12).peak == 13
