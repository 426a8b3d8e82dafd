"""Perplexity equals exp(mean NLL) computed from the logits."""

import math

import pytest
import torch

from lib.eval import perplexity, window_nll
from tests.conftest import tiny_model


def test_window_nll_matches_cross_entropy():
    logits = torch.randn(2, 150, 40)
    ids = torch.randint(0, 40, (2, 150))
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[b, :-1], ids[b, 1:]) for b in range(2)])
    torch.testing.assert_close(window_nll(logits, ids).float(), expected)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_perplexity_is_exp_mean_window_nll(batch_size):
    model = tiny_model("llama")
    stream = torch.randint(3, 128, (1, 16 * 5 + 7))  # 5 full windows + a partial one (dropped)
    with torch.no_grad():
        losses = [model(w.unsqueeze(0), labels=w.unsqueeze(0)).loss.item() for w in stream[0, :80].view(5, 16)]
    result = perplexity(model, stream, seqlen=16, batch_size=batch_size)
    assert result["windows"] == 5 and result["tokens"] == 80
    assert result["ppl"] == pytest.approx(math.exp(sum(losses) / 5), rel=1e-5)
    first3 = perplexity(model, stream, seqlen=16, max_windows=3)
    assert first3["windows"] == 3
    assert first3["ppl"] == pytest.approx(math.exp(sum(losses[:3]) / 3), rel=1e-5)


def test_too_short_stream_is_refused():
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(tiny_model("opt"), torch.randint(3, 128, (1, 10)), seqlen=16)
