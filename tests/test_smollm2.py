"""Real-model checks on the embedded SmolLM2-135M-Instruct (a few evaluation windows)."""

import math

import pytest
import torch

from lib.allocation import alp
from lib.data import eval_token_stream, load_texts, sample_calibration
from lib.eval import perplexity
from lib.masks import SparsityPattern
from lib.models import load_model, resolve_model_source
from lib.prune import measure_sparsity, prune_model
from lib.sensitivity import block_summary, gradient_sensitivities


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    model, tokenizer = load_model(resolve_model_source(None), device=torch.device("cpu"), dtype=torch.bfloat16)
    return model, tokenizer


def test_wanda_alp_on_smollm2(smollm2, data_dir):
    model, tokenizer = smollm2
    stream = eval_token_stream(tokenizer, load_texts("wikitext2", data_dir))
    dense = perplexity(model, stream, seqlen=1024, max_windows=2)["ppl"]
    assert 5 < dense < 60, dense  # a working 135M instruct model on WikiText-2

    docs = load_texts("c4", data_dir)
    grad_ids, _ = sample_calibration(tokenizer, docs, nsamples=4, seqlen=64, seed=0)
    model.float()
    sens = gradient_sensitivities(model, grad_ids, grad_type="l2_hundred_total", loss="last_token")
    model.to(torch.bfloat16)
    ratios = alp(block_summary(sens).abs_z_sum, 0.5, 0.1).ratios
    assert len(ratios) == 30 and sum(ratios) / 30 == pytest.approx(0.5)

    calib, _ = sample_calibration(tokenizer, docs, nsamples=8, seqlen=256, seed=0)
    prune_model(model, pruner_name="wanda", ratios=ratios, calib_ids=calib, pattern=SparsityPattern(), micro_batch=4)
    overall, per_block = measure_sparsity(model)
    assert overall == pytest.approx(0.5, abs=0.005)
    assert per_block == pytest.approx(ratios, abs=0.005)
    pruned = perplexity(model, stream, seqlen=1024, max_windows=2)["ppl"]
    assert math.isfinite(pruned) and dense < pruned < 50 * dense
