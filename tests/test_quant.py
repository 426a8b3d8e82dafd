"""Quantization that keeps the mask: grids, GPTQ with a fixed mask, SparseGPT joint, storage."""

import json

import pytest
import torch

import main as main_cli
from lib.arch import block_linears, decoder_blocks
from lib.masks import SparsityPattern
from lib.obs import gptq_keep_mask
from lib.prune import prune_model
from lib.pruners import PRUNERS, PrunerOptions
from lib.quant import QuantConfig, fit_grid, quantize, rtn_quantize, static_grids, storage_figures
from tests.conftest import tiny_model
from tests.test_pruners import UNSTRUCTURED, layer_problem, reconstruction_error


def max_distinct_nonzero(W: torch.Tensor, width: int) -> int:
    """Largest number of distinct non-zero values in any row's group of ``width`` columns."""
    most = 0
    for start in range(0, W.shape[1], width):
        for row in W[:, start : start + width]:
            most = max(most, len(torch.unique(row[row != 0])))
    return most


def on_grid(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, width: int, maxq: int) -> bool:
    """Every entry of ``W`` is ``scale * (k - zero)`` with an integer ``k`` in ``[0, maxq]`` of its group."""
    group = torch.arange(W.shape[1]) // width
    k = W / scale[:, group] + zero[:, group]
    return bool(((k - k.round()).abs() < 1e-3).all() and (k.round() >= 0).all() and (k.round() <= maxq).all())


@pytest.mark.parametrize("sym", [False, True])
def test_zero_maps_to_exactly_zero(sym):
    W = torch.randn(8, 32) * torch.rand(8, 1) * 3 + 0.5  # rows not centred on 0
    W[:, ::3] = 0
    config = QuantConfig(wbits=3, sym=sym)
    scale, zero = fit_grid(W, config)
    q = quantize(W, scale, zero, config.maxq)
    assert (q[:, ::3] == 0).all()
    assert (zero == zero.round()).all()
    assert max_distinct_nonzero(q, 32) <= 2**3 - 1


CONFIGS = [
    QuantConfig(wbits=4),
    QuantConfig(wbits=3, groupsize=64),
    QuantConfig(wbits=3, groupsize=64, sym=True),
    QuantConfig(wbits=4, groupsize=64, act_order=True, static_groups=True),
    QuantConfig(wbits=2, groupsize=128, act_order=True, static_groups=True),
]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "ria"])
def test_gptq_keeps_the_mask_and_the_grid(config, pruner):
    W, _, stats = layer_problem(seed=7)
    pruned = PRUNERS[pruner].prune(W, stats, 0.5, UNSTRUCTURED, PrunerOptions())
    quantized = gptq_keep_mask(pruned, stats.hessian, config, percdamp=0.01, blocksize=64)
    assert (quantized[pruned == 0] == 0).all()
    assert quantized.dtype == W.dtype and torch.isfinite(quantized).all()
    assert max_distinct_nonzero(quantized, config.group_width(W.shape[1])) <= 2**config.wbits
    assert not torch.equal(quantized, rtn_quantize(pruned, config))  # errors were compensated


@pytest.mark.parametrize("config", CONFIGS[:3], ids=str)
@pytest.mark.parametrize("pruner", ["wanda", "ria"])
def test_gptq_error_is_below_round_to_nearest(config, pruner):
    W, X, stats = layer_problem(seed=8)
    pruned = PRUNERS[pruner].prune(W, stats, 0.5, UNSTRUCTURED, PrunerOptions())
    gptq = gptq_keep_mask(pruned, stats.hessian, config, percdamp=0.01, blocksize=128)
    rtn = rtn_quantize(pruned, config)
    assert reconstruction_error(W, gptq, X) < reconstruction_error(W, rtn, X)


def test_act_order_with_static_groups_uses_the_grid_of_the_original_order():
    W, _, stats = layer_problem(seed=9)
    pruned = PRUNERS["wanda"].prune(W, stats, 0.5, UNSTRUCTURED, PrunerOptions())
    plain = QuantConfig(wbits=3, groupsize=32, static_groups=True)
    reordered = QuantConfig(wbits=3, groupsize=32, static_groups=True, act_order=True)
    scale, zero = static_grids(pruned, plain)
    for config in (plain, reordered):
        quantized = gptq_keep_mask(pruned, stats.hessian, config, percdamp=0.01, blocksize=64)
        assert on_grid(quantized, scale, zero, 32, config.maxq), config
    assert not torch.equal(
        gptq_keep_mask(pruned, stats.hessian, plain, percdamp=0.01, blocksize=64),
        gptq_keep_mask(pruned, stats.hessian, reordered, percdamp=0.01, blocksize=64),
    )  # the order did change the compensation


@pytest.mark.parametrize("pattern", [UNSTRUCTURED, SparsityPattern(2, 4)], ids=str)
def test_sparsegpt_prunes_and_quantizes_in_one_sweep(pattern):
    W, X, stats = layer_problem(seed=10)
    config = QuantConfig(wbits=4, groupsize=64)
    joint = PRUNERS["sparsegpt"].prune(W, stats, 0.5, pattern, PrunerOptions(quant=config))
    assert max_distinct_nonzero(joint, 64) <= 2**4
    assert float((joint == 0).float().mean()) >= 0.5  # rounding may add zeros, never revive a pruned weight
    if pattern.is_nm:
        assert ((joint != 0).view(W.shape[0], -1, 4).sum(-1) <= 2).all()
    pruned_only = PRUNERS["sparsegpt"].prune(W, stats, 0.5, pattern, PrunerOptions())
    assert reconstruction_error(W, joint, X) < reconstruction_error(W, rtn_quantize(pruned_only, config), X)


def test_sparsegpt_refuses_act_order_with_nm():
    W, _, stats = layer_problem(seed=11)
    with pytest.raises(ValueError, match="N:M"):
        PRUNERS["sparsegpt"].prune(
            W, stats, 0.5, SparsityPattern(2, 4), PrunerOptions(quant=QuantConfig(wbits=4, act_order=True))
        )


@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt", "magnitude"])
def test_engine_quantizes_every_layer_and_keeps_block_zero_mask(pruner):
    calib = torch.randint(3, 128, (3, 16))
    options = dict(pruner_name=pruner, ratios=[0.5] * 3, calib_ids=calib, pattern=UNSTRUCTURED, micro_batch=2)
    reference, quantized = tiny_model("llama"), tiny_model("llama")
    prune_model(reference, **options)
    config = QuantConfig(wbits=3, method="rtn" if pruner == "magnitude" else "gptq")
    prune_model(quantized, **options, options=PrunerOptions(quant=config))
    pairs = zip(decoder_blocks(reference), decoder_blocks(quantized), strict=True)
    for index, (ref_block, q_block) in enumerate(pairs):
        for name, lin in block_linears(q_block).items():
            W = lin.weight
            assert max_distinct_nonzero(W, W.shape[1]) <= 2**3, name
            if index == 0 and pruner != "sparsegpt":  # same inputs, same mask: every pruned weight still 0
                assert (W[block_linears(ref_block)[name].weight == 0] == 0).all(), name


def test_storage_figures_by_hand():
    W = torch.ones(4, 8)
    W[:, :4] = 0  # half pruned: 16 kept of 32
    quant = QuantConfig(wbits=4, groupsize=4)
    fig = storage_figures([W], other_params=10, config=quant, pattern=UNSTRUCTURED)
    bits = 16 * 4 + 32 + 4 * 2 * (16 + 4)  # values + bitmask + (scale, zero) per row and group
    assert fig.bits_per_weight == pytest.approx(bits / 32)
    assert fig.linear_dense_fp16_mib == pytest.approx(32 * 16 / 8 / 2**20)
    assert fig.packed_mib == pytest.approx((bits + 160) / 8 / 2**20)
    assert fig.mask_format == "bitmask"
    nm = torch.ones(4, 8)
    nm[:, ::4] = 0
    nm[:, 1::4] = 0  # 2:4; kept * log2(4) = 32 bits = the bitmask, so the bitmask stays
    assert storage_figures([nm], 0, config=None, pattern=SparsityPattern(2, 4)).bits_per_weight == pytest.approx(
        (16 * 16 + 32) / 32
    )
    dense = storage_figures([torch.ones(4, 8)], 0, config=None, pattern=UNSTRUCTURED)
    assert dense.bits_per_weight == 16 and dense.mask_format == "dense"
    few_zeros = torch.ones(4, 8)
    few_zeros[0, 0] = 0  # e.g. a weight rounded to 0: cheaper to store densely than with a mask
    fig = storage_figures([few_zeros], 0, config=QuantConfig(wbits=8), pattern=UNSTRUCTURED)
    assert fig.mask_format == "dense" and fig.bits_per_weight == pytest.approx(8 + 4 * (16 + 8) / 32)


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["--act-order"], "add --wbits"),
        (["--gptq"], "add --wbits"),
        (["--wbits", "4", "--groupsize", "0"], "--groupsize 0"),
        (["--wbits", "4", "--quantizer", "rtn", "--act-order"], "GPTQ options"),
        (
            ["--prune_method", "sparsegpt", "--sparsity_type", "2:4", "--sparsity_ratio", "0.5"]
            + ["--wbits", "4", "--act-order"],
            "cannot keep N:M",
        ),
    ],
)
def test_bad_quantization_flags_fail_fast(argv, reason, capsys, monkeypatch):
    monkeypatch.setattr(main_cli, "run", lambda *a: pytest.fail("heavy work started"))
    assert main_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1


def test_cli_wanda_with_gptq_logs_settings_and_sizes(tiny_checkpoint, tmp_path, data_dir):
    log = tmp_path / "q.json"
    argv = ["--model", str(tiny_checkpoint), "--data_dir", str(data_dir), "--prune_method", "wanda"]
    argv += ["--sparsity_ratio", "0.5", "--nsamples", "2", "--seqlen", "32", "--eval_seqlen", "32"]
    argv += ["--eval_windows", "1", "--skip_dense", "--dtype", "float32", "--wbits", "3", "--groupsize", "32"]
    saved = tmp_path / "saved"
    assert main_cli.main(argv + ["--log_json", str(log), "--save_model", str(saved)]) == 0
    result = json.loads(log.read_text())
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(saved)  # plain transformers: fake-quantized weights
    for block in decoder_blocks(reloaded):
        for lin in block_linears(block).values():
            assert max_distinct_nonzero(lin.weight, 32) <= 2**3
            assert (lin.weight == 0).float().mean() >= 0.5
    assert result["quantization"]["wbits"] == 3 and result["quantization"]["groupsize"] == 32
    storage = result["storage"]
    assert storage["packed_mib"] < storage["dense_fp16_mib"]
    kept = 1 - result["actual_sparsity"]
    assert result["actual_sparsity"] >= 0.5
    # 3-bit values on the kept weights + a 1-bit mask + a (fp16 scale, 3-bit zero) per 32 columns
    assert storage["bits_per_weight"] == pytest.approx(3 * kept + 1 + 19 / 32)
