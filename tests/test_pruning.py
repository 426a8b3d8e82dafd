"""Mask selection, Wanda scores and the hand-off of per-block ratios to the pruner."""

import math

import pytest
import torch

from lib.arch import block_linears, decoder_blocks
from lib.masks import SparsityPattern, parse_sparsity_type, prune_lowest_nm, prune_lowest_per_row
from lib.prune import measure_sparsity, prune_model
from lib.pruners.wanda import wanda_score
from lib.stats import InputStatistics
from tests.conftest import tiny_model


def test_per_row_count_and_lowest():
    score = torch.rand(7, 50)
    mask = prune_lowest_per_row(score, 20)
    assert (mask.sum(dim=1) == 20).all()
    # every pruned score is <= every kept score in the same row
    for row in range(7):
        assert score[row][mask[row]].max() <= score[row][~mask[row]].min()


def test_ties_break_towards_lower_index():
    mask = prune_lowest_per_row(torch.ones(2, 6), 2)
    assert mask[:, :2].all() and not mask[:, 2:].any()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 3)])
def test_nm_matches_naive_loop(n, m):
    score = torch.randn(5, 4 * m)
    mask = prune_lowest_nm(score, n, m)
    groups = mask.view(5, 4, m)
    assert ((~groups).sum(dim=-1) == n).all()
    for r in range(5):
        for g in range(4):
            chunk = score[r, g * m : (g + 1) * m]
            kept = set(torch.topk(chunk, n).indices.tolist())
            assert kept == set((~groups[r, g]).nonzero().flatten().tolist())


def test_nm_rejects_ragged_width():
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_lowest_nm(torch.rand(2, 6), 2, 4)


@pytest.mark.parametrize(
    "text,ok", [("unstructured", True), ("2:4", True), ("4:8", True), ("4:4", False), ("x", False)]
)
def test_parse_sparsity_type(text, ok):
    if ok:
        parse_sparsity_type(text)
    else:
        with pytest.raises(ValueError):
            parse_sparsity_type(text)


def test_input_statistics_match_definitions():
    model = tiny_model("llama")
    block = decoder_blocks(model)[0]
    linears = block_linears(block)
    captured = {}
    handles = [
        lin.register_forward_hook(lambda m, a, o, n=n: captured.setdefault(n, []).append(a[0]))
        for n, lin in linears.items()
    ]
    x = torch.randn(3, 10, 32)
    pos = torch.arange(10).unsqueeze(0)
    emb = model.model.rotary_emb(x, pos)
    with InputStatistics(linears, {"col_sq_norm", "hessian"}) as stats, torch.no_grad():
        block(x, position_embeddings=emb)
        block(x[:1], position_embeddings=emb)
    for h in handles:
        h.remove()
    hessians = stats.hessians()  # handed over once (scaled in place), then the object holds none
    assert stats.hessians() == {}
    for name in linears:
        X = torch.cat([t.reshape(-1, t.shape[-1]) for t in captured[name]])
        torch.testing.assert_close(stats.col_sq_norm[name], X.square().sum(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hessians[name], 2 * X.T @ X / 40, rtol=1e-5, atol=1e-5)
        assert stats.tokens[name] == 40


def test_wanda_score_is_weight_times_norm():
    W = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    sq = torch.tensor([4.0, 1.0])
    torch.testing.assert_close(wanda_score(W, sq), torch.tensor([[2.0, 2.0], [6.0, 0.5]]))


@pytest.mark.parametrize("family", ["llama", "opt", "qwen2", "gemma"])
def test_block_ratios_reach_the_pruner_exactly(family):
    """Per-row sparsity of every pruned linear is exactly floor(C_in * s_l) / C_in."""
    model = tiny_model(family, layers=4)
    ratios = [0.3, 0.55, 0.7, 0.85]
    ids = torch.randint(3, 128, (4, 16))
    prune_model(model, pruner_name="wanda", ratios=ratios, calib_ids=ids, pattern=SparsityPattern(), micro_batch=3)
    for ratio, block in zip(ratios, decoder_blocks(model), strict=True):
        for name, lin in block_linears(block).items():
            c_in = lin.weight.shape[1]
            zeros_per_row = (lin.weight == 0).sum(dim=1)
            assert (zeros_per_row == math.floor(c_in * ratio)).all(), (family, name)
    overall, per_block = measure_sparsity(model)
    assert per_block == pytest.approx(ratios, abs=0.04)


def test_nm_pruning_through_engine():
    model = tiny_model("mistral")
    prune_model(
        model,
        pruner_name="wanda",
        ratios=[0.5] * 3,
        calib_ids=torch.randint(3, 128, (2, 8)),
        pattern=SparsityPattern(2, 4),
        micro_batch=2,
    )
    for block in decoder_blocks(model):
        for lin in block_linears(block).values():
            groups = (lin.weight != 0).view(lin.weight.shape[0], -1, 4)
            assert (groups.sum(-1) <= 2).all()
    assert measure_sparsity(model)[0] == pytest.approx(0.5, abs=1e-3)


def test_wanda_uses_calibration_statistics():
    """Wanda's mask must depend on the activations, not only on |W| (else it is magnitude)."""
    masks = []
    for scale in (1.0, 50.0):
        model = tiny_model("llama", seed=1)
        with torch.no_grad():
            model.get_input_embeddings().weight[:, :8] *= scale  # inflate some input channels
        prune_model(
            model,
            pruner_name="wanda",
            ratios=[0.5] * 3,
            calib_ids=torch.randint(3, 128, (2, 16)),
            pattern=SparsityPattern(),
            micro_batch=2,
        )
        masks.append(decoder_blocks(model)[0].mlp.up_proj.weight == 0)
    assert not torch.equal(masks[0], masks[1])
