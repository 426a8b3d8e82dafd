"""Reconstruction (lib.recovery.reconstruct): the mask held bit for bit, the loss lowered, every
family and pruner, quantization after it, the memory prediction, the CLI."""

import json

import pytest
import torch

import lib.prune as prune_module
import main as main_cli
from lib.arch import block_linears, block_sublayers, decoder_blocks
from lib.masks import SparsityPattern
from lib.options import build_options
from lib.placement import predicted_peak_memory
from lib.prune import measure_sparsity, prune_model
from lib.pruners import PrunerOptions
from lib.quant import QuantConfig
from lib.recovery import RecoveryOptions, fitted_micro_batches
from lib.recovery.reconstruct import (
    SublayerCapture,
    _calibration_loss,
    fit_sublayer,
    held_out_call,
    per_sequence,
    step_calls,
    step_size_groups,
)
from lib.sequential import block_forward, capture_block_inputs
from tests.conftest import tiny_model

IDS = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(0))
FIT = RecoveryOptions(reconstruct=True, lr=1e-3, epochs=2, batch=4)


def _zeros(model):
    return [{n: lin.weight == 0 for n, lin in block_linears(b).items()} for b in decoder_blocks(model)]


@pytest.mark.parametrize("pattern", [SparsityPattern(), SparsityPattern(2, 4)])
def test_mask_is_held_bit_for_bit(pattern, monkeypatch):
    real = prune_module.reconstruct_block
    checked = []

    def checking(block, capture, **kwargs):
        before = {n: (lin.weight == 0).clone() for n, lin in block_linears(block).items()}
        values = {n: lin.weight.clone() for n, lin in block_linears(block).items()}
        result = real(block, capture, **kwargs)
        for name, lin in block_linears(block).items():
            assert torch.equal(lin.weight == 0, before[name]), name
            assert not torch.equal(lin.weight, values[name]), f"{name} was not fitted"
        checked.append(result)
        return result

    monkeypatch.setattr(prune_module, "reconstruct_block", checking)
    model = tiny_model("llama")
    prune_model(model, pruner_name="wanda", ratios=[0.5] * 3, calib_ids=IDS, pattern=pattern, recovery=FIT)
    assert len(checked) == 3
    for block in decoder_blocks(model):
        for lin in block_linears(block).values():
            if pattern.is_nm:
                assert ((lin.weight != 0).view(lin.weight.shape[0], -1, 4).sum(-1) <= 2).all()


def test_calibration_loss_goes_down_and_sparsity_is_unchanged(family):
    plain, fitted = tiny_model(family), tiny_model(family)
    prune_model(plain, pruner_name="wanda", ratios=[0.6] * 3, calib_ids=IDS, pattern=SparsityPattern())
    report = {}
    recovery = RecoveryOptions(refine="dsnot", reconstruct=True, lr=1e-3, epochs=2, batch=4)
    prune_model(
        fitted,
        pruner_name="wanda",
        ratios=[0.6] * 3,
        calib_ids=IDS,
        pattern=SparsityPattern(),
        recovery=recovery,
        report=report,
    )
    blocks = report["reconstruct"]["blocks"]
    assert len(blocks) == 3 and all(set(b) == {"attention", "mlp"} for b in blocks)
    for block in blocks:
        for fit in block.values():
            assert fit["loss_after"] < fit["loss_before"] and fit["steps"] == 4
            assert fit["loss_calls"] == 1  # the diagnostic loss: first micro-batch only (cheap)
    assert measure_sparsity(fitted) == measure_sparsity(plain)


@pytest.mark.parametrize("pruner", ["magnitude", "ria", "sparsegpt"])
def test_every_pruner(pruner):
    plain, fitted = tiny_model("qwen2"), tiny_model("qwen2")
    prune_model(plain, pruner_name=pruner, ratios=[0.5, 0.6, 0.7], calib_ids=IDS, pattern=SparsityPattern())
    prune_model(
        fitted, pruner_name=pruner, ratios=[0.5, 0.6, 0.7], calib_ids=IDS, pattern=SparsityPattern(), recovery=FIT
    )
    for a, b in zip(_zeros(plain)[0].values(), _zeros(fitted)[0].values(), strict=True):
        assert torch.equal(a, b)  # block 0 sees the same inputs: the same mask, whatever follows
    if pruner != "sparsegpt":
        assert measure_sparsity(fitted) == measure_sparsity(plain)


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_quantization_follows_with_the_mask_held(method, monkeypatch):
    order = []
    real_fit, real_quant = prune_module.reconstruct_block, prune_module.quantize_linears
    monkeypatch.setattr(prune_module, "reconstruct_block", lambda *a, **k: order.append("fit") or real_fit(*a, **k))
    monkeypatch.setattr(prune_module, "quantize_linears", lambda *a, **k: order.append("quant") or real_quant(*a, **k))
    model = tiny_model("llama")
    options = PrunerOptions(quant=QuantConfig(wbits=3, method=method))
    prune_model(
        model,
        pruner_name="sparsegpt",
        ratios=[0.5] * 3,
        calib_ids=IDS,
        pattern=SparsityPattern(),
        options=options,
        recovery=FIT,
    )
    assert order == ["fit", "quant"] * 3
    for block in decoder_blocks(model):
        for lin in block_linears(block).values():
            assert max(len(row.unique()) for row in lin.weight) <= 2**3  # on the 3-bit grid (0 included)


def test_fit_on_the_first_calibration_sequences(monkeypatch):
    real = prune_module.reconstruct_block
    captured = []

    def counting(block, capture, **kwargs):
        captured.append({name: (len(c.inputs), len(c.targets)) for name, c in capture.calls.items()})
        return real(block, capture, **kwargs)

    monkeypatch.setattr(prune_module, "reconstruct_block", counting)
    report = {}
    subset = RecoveryOptions(reconstruct=True, lr=1e-3, epochs=2, batch=2, nsamples=4)
    prune_model(
        tiny_model("llama"),
        pruner_name="wanda",
        ratios=[0.5] * 3,
        calib_ids=IDS,  # 8 sequences, micro-batches of 2: the fit takes the first 2 of 4 calls
        pattern=SparsityPattern(),
        recovery=subset,
        micro_batch=2,
        report=report,
    )
    assert captured == [{"attention": (3, 3), "mlp": (3, 3)}] * 3  # and the 3rd holds the held-out sequence
    fits = [fit for block in report["reconstruct"]["blocks"] for fit in block.values()]
    assert {fit["steps"] for fit in fits} == {4}  # 2 epochs x 2 calls, one per AdamW step (all 8 sequences: 8 steps)
    assert all(fit["held_out"] for fit in fits)


def test_sublayer_chains_come_from_the_family_table(family):
    chains = block_sublayers(tiny_model(family))
    assert chains["mlp"] == (("fc1", "activation_fn", "fc2") if family == "opt" else ("mlp",))
    assert chains["attention"] == ("self_attn",)


def test_memory_prediction_covers_the_optimizer_state():
    model = tiny_model("llama", layers=4)
    common = dict(nsamples=8, seqlen=16, micro_batch=2, dtype=torch.bfloat16, device=torch.device("cpu"))
    plain = predicted_peak_memory(model, **common, needs=frozenset({"col_sq_norm"}), placement="device")

    def fitting(nsamples=None):
        return predicted_peak_memory(
            model,
            **common,
            needs=frozenset({"col_sq_norm"}),
            placement="device",
            reconstruct_batch=4,
            reconstruct_nsamples=nsamples,
        )

    fitted = fitting()
    block = decoder_blocks(model)[0]
    largest = max(sum(p.numel() for p in m.parameters()) for m in (block.self_attn, block.mlp))
    assert fitted.reconstruction >= 20 * largest  # fp32 master, gradient, AdamW m and v, keep mask
    assert fitted.captured == 4 * 8 * 16 * model.config.hidden_size * 2
    assert fitted.device == plain.device + fitted.reconstruction + fitted.captured
    assert fitting(1).captured == fitted.captured // 4  # 1 fitted + 1 held out: one micro-batch of 2
    assert fitting(2).captured == fitted.captured // 2  # 2 + 1 held out: two whole micro-batches of 2
    assert [fitted_micro_batches(n, 4) for n in (None, 1, 3, 4, 20)] == [None, 1, 1, 2, 6]
    magnitude = predicted_peak_memory(model, **common, needs=frozenset(), placement="device", reconstruct_batch=4)
    assert magnitude.activations > 0  # reconstruction runs the calibration forward even for magnitude


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["--prune_method", "dense", "--reconstruct"], "not --prune_method dense"),
        (["--prune_method", "wanda", "--reconstruct", "--reconstruct_rel_lr", "0"], "--reconstruct_rel_lr must be"),
        (["--prune_method", "wanda", "--reconstruct", "--reconstruct_lr", "0"], "absolute AdamW learning rate must"),
        (["--prune_method", "wanda", "--reconstruct", "--reconstruct_epochs", "0"], "--reconstruct_epochs >= 1"),
        (["--prune_method", "wanda", "--reconstruct", "--reconstruct_batch", "0"], "positive integer"),
        (["--prune_method", "wanda", "--reconstruct", "--nsamples", "8", "--reconstruct_nsamples", "9"], "between"),
        (["--prune_method", "wanda", "--reconstruct", "--reconstruct_nsamples", "0"], "--reconstruct_nsamples 0"),
    ],
)
def test_bad_flags_fail_before_loading(argv, reason, capsys, monkeypatch):
    monkeypatch.setattr(main_cli, "run", lambda *a: pytest.fail("heavy work started"))
    assert main_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1


def test_reconstruct_batch_is_checked_only_with_reconstruct(data_dir):
    argv = ["--prune_method", "sparsegpt", "--reconstruct_batch", "0", "--data_dir", str(data_dir)]
    args = main_cli.build_parser().parse_args(argv)
    assert build_options(args).pruning.recovery.reconstruct is False
    args.reconstruct = True
    with pytest.raises(ValueError, match="positive integer"):
        build_options(args)
    args.reconstruct_batch = 3  # not a multiple of --calib_batch_size 4: the micro-batches are split
    assert build_options(args).pruning.recovery.batch == 3


def _captured(model, ids, micro_batch):
    """The first block's captured sub-module calls, calibrated ``micro_batch`` sequences at a time."""
    block = decoder_blocks(model)[0]
    inputs = capture_block_inputs(model, ids, micro_batch=micro_batch)
    with torch.no_grad(), SublayerCapture(block, block_sublayers(model)) as capture:
        for hidden in inputs.hidden:
            block_forward(block, hidden, inputs)
    return capture.calls


def test_micro_batches_split_into_the_calls_of_single_sequences(family):
    model = tiny_model(family)
    ids = IDS[:6]
    batched, single = _captured(model, ids, 4), _captured(model, ids, 1)
    assert batched["attention"].sequences == [4, 2] and single["mlp"].sequences == [1] * 6
    block = decoder_blocks(model)[0]
    for name, chain in block_sublayers(model).items():
        split = per_sequence(batched[name])
        assert split.sequences == [1] * 6
        for s in range(6):
            torch.testing.assert_close(split.inputs[s], single[name].inputs[s])
            torch.testing.assert_close(split.targets[s], single[name].targets[s])
        # the sliced masks and rotary tables reproduce each sequence's dense output
        modules = [getattr(block, part) for part in chain]
        params = [dict(m.named_parameters()) for m in modules]
        with torch.no_grad():
            assert _calibration_loss(modules, params, split, torch.device("cpu"), 6) < 1e-10


def test_step_calls_keeps_whole_micro_batches_when_they_divide_the_step(family):
    calls = _captured(tiny_model(family), IDS, 4)["mlp"]  # two calls of 4 sequences
    whole, accumulate = step_calls(calls, batch=8)
    assert (len(whole.inputs), accumulate) == (2, 2)
    assert step_calls(calls, batch=4, nsamples=4)[0].sequences == [4]
    single, accumulate = step_calls(calls, batch=2, nsamples=6)
    assert (single.sequences, accumulate) == ([1] * 6, 2)


def test_a_step_of_one_sequence_fits_alike_whatever_the_calibration_micro_batch():
    fitted = []
    for micro_batch in (4, 1):
        model = tiny_model("llama")
        calls = _captured(model, IDS[:4], micro_batch)
        block = decoder_blocks(model)[0]
        with torch.no_grad():
            for lin in block_linears(block).values():
                lin.weight[:, ::2] = 0
        steps, accumulate = step_calls(calls["mlp"], batch=1)
        fit = fit_sublayer(block, ("mlp",), steps, lr=1e-2, epochs=1, accumulate=accumulate)
        assert fit.steps == 4 and fit.loss_after < fit.loss_before
        fitted.append({n: lin.weight.detach().clone() for n, lin in block_linears(block).items()})
    for name in fitted[0]:
        torch.testing.assert_close(fitted[0][name], fitted[1][name], rtol=1e-4, atol=1e-6)


def test_cli_end_to_end(tiny_checkpoint, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("ALP_DATA_DIR", str(data_dir))
    log, saved = tmp_path / "run.json", tmp_path / "pruned"
    argv = ["--model", str(tiny_checkpoint), "--prune_method", "wanda", "--nsamples", "4", "--seqlen", "64"]
    argv += ["--eval_seqlen", "64", "--eval_windows", "2", "--dtype", "float32", "--skip_dense"]
    argv += ["--refine", "dsnot", "--reconstruct", "--log_json", str(log), "--save_model", str(saved)]
    assert main_cli.main(argv) == 0
    result = json.loads(log.read_text())
    assert result["recovery"]["options"]["reconstruct"] and result["recovery"]["dsnot"]["swaps_total"] > 0
    assert len(result["recovery"]["reconstruct"]["blocks"]) == 4
    assert {"refine", "reconstruct"} <= set(result["timings"])
    assert result["predicted_memory_bytes"]["reconstruction"] > 0
    from transformers import AutoModelForCausalLM

    for block in decoder_blocks(AutoModelForCausalLM.from_pretrained(saved)):
        for lin in block_linears(block).values():
            assert ((lin.weight == 0).sum(dim=1) == int(lin.weight.shape[1] * 0.7)).all()


def test_pruned_weights_end_as_exact_positive_zeros_even_when_the_fit_diverges():
    model = tiny_model("llama")
    calls = _captured(model, IDS[:4], 4)["mlp"]
    calls.targets = [torch.full_like(y, float("nan")) for y in calls.targets]
    block = decoder_blocks(model)[0]
    with torch.no_grad():
        for lin in block_linears(block).values():
            lin.weight[:, ::2] = 0
    pruned = {n: lin.weight == 0 for n, lin in block_linears(block).items()}
    fit_sublayer(block, ("mlp",), calls, lr=1e-2, epochs=1)
    for name, lin in block_linears(block).items():
        if name.startswith("mlp."):
            weight = lin.weight[pruned[name]]
            assert torch.equal(weight, torch.zeros_like(weight)) and not weight.signbit().any(), name


@pytest.mark.parametrize("nsamples,fitted", [(32, 20), (8, 8)])
def test_the_fit_takes_twenty_sequences_by_default_or_all_when_fewer(nsamples, fitted, data_dir):
    argv = ["--prune_method", "wanda", "--reconstruct", "--nsamples", str(nsamples), "--data_dir", str(data_dir)]
    recovery = build_options(main_cli.build_parser().parse_args(argv)).pruning.recovery
    assert (recovery.nsamples, recovery.batch, recovery.epochs) == (fitted, 1, 1)


def test_recovery_note_warns_when_most_fits_raise_their_loss():
    def figures(ratios):
        fits = [
            {"attention": {"loss_before": 1.0, "loss_after": min(r, 1.0), "loss_fitted": r, "reverted": r > 1}}
            for r in ratios
        ]
        return {"reconstruct": {"blocks": fits}}

    fine = prune_module.recovery_note(figures([0.5, 0.6, 3.0]))  # one fit up: the median is what counts
    assert "lowered 2 of 3" in fine and "1 fits undone" in fine and "WARNING" not in fine
    diverged = prune_module.recovery_note(figures([0.5, 22.0, 1075.0]))  # Qwen2.5-0.5B at lr 5e-3
    assert "WARNING" in diverged and "median fitted/before 22.0" in diverged and "--reconstruct_rel_lr" in diverged


def test_step_sizes_follow_each_tensors_rms_before_pruning():
    model = tiny_model("qwen2")  # with biases
    block = decoder_blocks(model)[0]
    dense = {n: float(p.detach().square().mean().sqrt()) for n, p in block.named_parameters()}
    with torch.no_grad(), SublayerCapture(block, block_sublayers(model)) as capture:
        for lin in block_linears(block).values():
            lin.weight[:, ::2] = 0  # pruning after the capture began does not move the scales
    assert capture.scales and all(capture.scales[n] == pytest.approx(dense[n]) for n in capture.scales)
    assert {"self_attn.q_proj.bias", "self_attn.k_proj.weight", "mlp.down_proj.weight"} <= set(capture.scales)
    weight = block.mlp.up_proj.weight
    groups = step_size_groups([weight, 10 * weight], [0.2, 2.0], rel_lr=0.1, lr=None)
    assert [g["lr"] for g in groups] == pytest.approx([0.02, 0.2]) and groups[0]["params"][0] is weight
    assert [g["lr"] for g in step_size_groups([weight, weight], [0.2, 2.0], rel_lr=0.1, lr=3e-3)] == [3e-3] * 2


def _pruned_mlp_fit(scale: float, **step):
    """A tiny llama block's MLP, pruned, its up_proj scaled by ``scale`` and down_proj by ``1/scale``
    (the same function), fitted for 4 steps; returns the fit and how far the up / down weights moved."""
    model = tiny_model("llama")
    block = decoder_blocks(model)[0]
    calls = _captured(model, IDS[:4], 1)["mlp"]  # the dense targets
    with torch.no_grad():
        for lin in block_linears(block).values():
            lin.weight[:, ::2] = 0
        block.mlp.up_proj.weight.mul_(scale)
        block.mlp.down_proj.weight.div_(scale)
    up, down = block.mlp.up_proj.weight.detach().clone(), block.mlp.down_proj.weight.detach().clone()
    fit = fit_sublayer(block, ("mlp",), calls, epochs=1, **step)
    return fit, block.mlp.up_proj.weight.detach() - up, block.mlp.down_proj.weight.detach() - down


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_relative_steps_fit_alike_whatever_the_weight_scale():
    base, up, down = _pruned_mlp_fit(1.0, rel_lr=0.05)
    scaled, up_scaled, down_scaled = _pruned_mlp_fit(10.0, rel_lr=0.05)
    assert not base.reverted and base.loss_after < base.loss_before
    assert scaled.loss_fitted == pytest.approx(base.loss_fitted, rel=1e-3)
    # the same steps at the tensors' scales, up to AdamW's eps on the smallest gradients
    assert _relative_gap(up_scaled / 10, up) < 1e-3 and _relative_gap(down_scaled * 10, down) < 1e-3
    absolute, up, _ = _pruned_mlp_fit(1.0, lr=1e-3)
    absolute_scaled, up_scaled, _ = _pruned_mlp_fit(10.0, lr=1e-3)
    assert _relative_gap(up_scaled / 10, up) > 1e-2  # an absolute lr takes other steps at another scale


def test_a_fit_that_raises_the_loss_is_undone():
    model = tiny_model("llama")
    block = decoder_blocks(model)[0]
    calls = _captured(model, IDS[:4], 1)["mlp"]
    with torch.no_grad():
        for lin in block_linears(block).values():
            lin.weight[:, ::2] = 0
    start = {n: p.detach().clone() for n, p in block.mlp.named_parameters()}
    fit = fit_sublayer(block, ("mlp",), calls, epochs=1, rel_lr=50.0)  # steps 50x each weight's RMS
    assert fit.reverted and fit.loss_fitted > fit.loss_before and fit.loss_after == fit.loss_before
    for name, p in block.mlp.named_parameters():
        assert torch.equal(p, start[name]), name


def test_the_sequence_after_the_fitted_ones_checks_the_fit(monkeypatch):
    model = tiny_model("llama")
    calls = _captured(model, IDS[:6], 3)["mlp"]  # two micro-batches of 3 sequences
    held = held_out_call(calls, 4)
    assert held.sequences == [1] and torch.equal(held.inputs[0], calls.inputs[1][1:2])  # the 5th sequence
    assert held_out_call(calls, 6) is None and held_out_call(calls, None) is None
    block = decoder_blocks(model)[0]
    with torch.no_grad():
        for lin in block_linears(block).values():
            lin.weight[:, ::2] = 0
    fitted, _ = step_calls(calls, batch=1, nsamples=4)
    modules = [block.mlp]
    with torch.no_grad():
        before = _calibration_loss(modules, [dict(block.mlp.named_parameters())], held, torch.device("cpu"), 1)
    fit = fit_sublayer(block, ("mlp",), fitted, epochs=1, rel_lr=0.05, check=held)
    assert fit.held_out and fit.loss_calls == 1 and fit.loss_before == pytest.approx(before)
    held.targets = [torch.full_like(y, float("nan")) for y in held.targets]  # a fit the held-out text rejects
    start = {n: p.detach().clone() for n, p in block.mlp.named_parameters()}
    fit = fit_sublayer(block, ("mlp",), fitted, epochs=1, rel_lr=0.05, check=held)
    assert fit.reverted and all(torch.equal(p, start[n]) for n, p in block.mlp.named_parameters())


def test_weight_rms_script_reports_the_rates_the_fit_uses():
    from tests.conftest import load_script

    script = load_script("weight_rms")
    model = tiny_model("qwen2")
    figures = script.weight_rms(model, rel_lr=0.1)
    blocks = decoder_blocks(model)
    up = [float(b.mlp.up_proj.weight.detach().square().mean().sqrt()) for b in blocks]
    assert figures["mlp.up_proj.weight"]["rms"]["max"] == pytest.approx(max(up))
    assert figures["mlp.up_proj.weight"]["rate"]["median"] == pytest.approx(0.1 * sorted(up)[len(up) // 2])
    assert figures["linear weights"]["rms"]["count"] == 7 * len(blocks) and "self_attn.q_proj.bias" in figures
