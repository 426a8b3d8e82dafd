"""ALP Stage A: gradient statistics, the block summary and the cache."""

import pytest
import torch

from lib.arch import prunable_linears
from lib.sensitivity import (
    CacheMismatch,
    block_summary,
    cache_metadata,
    causal_lm_loss,
    default_cache_path,
    gradient_sensitivities,
    load_cache,
    save_cache,
)
from tests.conftest import tiny_model


def per_sample_grads(model, samples, loss):
    """Reference: plain autograd, one sample at a time, every block linear weight."""
    weights = [lin.weight for block in prunable_linears(model) for lin in block.values()]
    grads = []
    for ids in samples:
        ids = ids.unsqueeze(0)
        g = torch.autograd.grad(causal_lm_loss(model(ids).logits, ids, loss), weights)
        grads.append([x.float() for x in g])
    return grads


@pytest.mark.parametrize("grad_type", ["l2_hundred_total", "l2_total", "l2", "l1"])
def test_statistics_closed_forms(grad_type):
    model = tiny_model("llama", layers=2)
    samples = torch.randint(3, 128, (4, 12))
    grads = per_sample_grads(model, samples, "last_token")
    result = gradient_sensitivities(model, samples, grad_type=grad_type, loss="last_token")
    flat = [t for block in result for t in block.values()]
    for i, S in enumerate(flat):
        g = torch.stack([sample[i] for sample in grads])  # (N, C_out, C_in)
        expected = {
            "l2_total": g.square().sum(0),
            "l2": g.square().sum(0).sqrt(),
            "l1": g.abs().sum(0),
            "l2_hundred_total": g.square().sum(0) + 1e4 * g[-1].square(),
        }[grad_type]
        torch.testing.assert_close(S, expected, rtol=1e-4, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # no gradient memory left behind


def test_last_token_loss_equals_hf_ignore_index_labels():
    model = tiny_model("qwen2")
    ids = torch.randint(3, 128, (1, 10))
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    with torch.no_grad():
        out = model(ids, labels=labels)
        torch.testing.assert_close(causal_lm_loss(out.logits, ids, "last_token"), out.loss)
        full = model(ids, labels=ids)
        torch.testing.assert_close(causal_lm_loss(full.logits, ids, "full_sequence"), full.loss)


def test_block_summary_matches_direct_formula():
    gen = torch.Generator().manual_seed(0)
    blocks = [{"a": torch.rand(4, 5, generator=gen) ** 3, "b": torch.rand(3, 2, generator=gen)} for _ in range(3)]
    summary = block_summary(blocks)
    for i, block in enumerate(blocks):
        S = torch.cat([t.flatten() for t in block.values()]).double()
        z = (S - S.mean()) / S.std()
        assert summary.abs_z_sum[i].item() == pytest.approx(z.abs().sum().item(), rel=1e-10)
        assert summary.count[i].item() == S.numel()


def _meta(**over):
    base = dict(
        model="tiny",
        fingerprint="abc",
        grad_type="l2_hundred_total",
        loss="last_token",
        nsamples=10,
        seqlen=64,
        seed=0,
        dataset="c4",
        grad_dtype=torch.float32,
        data_source="sha256:0123456789abcdef",
    )
    return cache_metadata(**{**base, **over})


def test_cache_round_trip_and_mismatch(tmp_path):
    summary = block_summary([{"w": torch.rand(3, 3)} for _ in range(2)])
    path = save_cache(
        tmp_path / "c.safetensors", summary, _meta(), full=[{"w": torch.full((3, 3), float(i))} for i in range(2)]
    )
    loaded, meta = load_cache(path, expected=_meta())
    torch.testing.assert_close(loaded.abs_z_sum, summary.abs_z_sum)
    assert meta["format"] == 1
    from safetensors.torch import load_file

    assert load_file(str(path))["block.1.w"][0, 0].item() == 1.0
    with pytest.raises(CacheMismatch, match="seed: cache 0 vs run 1"):
        load_cache(path, expected=_meta(seed=1))
    with pytest.raises(CacheMismatch, match="fingerprint"):
        load_cache(path, expected=_meta(fingerprint="other"))


def test_truncated_cache_refused(tmp_path):
    summary = block_summary([{"w": torch.rand(3, 3)}])
    path = save_cache(tmp_path / "c.safetensors", summary, _meta())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(ValueError, match="unreadable"):
        load_cache(path, expected=_meta())
    path.write_bytes(b"not a cache at all")
    with pytest.raises(ValueError, match="unreadable"):
        load_cache(path)


def test_gradient_pass_restores_requires_grad():
    model = tiny_model("opt", layers=2)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    gradient_sensitivities(model, torch.randint(3, 128, (2, 8)), grad_type="l2", loss="full_sequence")
    assert before == {n: p.requires_grad for n, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_statistic():
    model = tiny_model("mistral", layers=2)
    samples = torch.randint(3, 128, (3, 10))
    plain = gradient_sensitivities(model, samples, grad_type="l2_total", loss="full_sequence")
    ckpt = gradient_sensitivities(model, samples, grad_type="l2_total", loss="full_sequence", checkpointing=True)
    for a, b in zip(plain, ckpt, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-12)
    assert "forward" not in vars(model.model.layers[0])  # the wrapper is removed afterwards


def test_cache_key_holds_dtype_and_data_source(tmp_path):
    """A cache made in bf16, or from other text, gets another default path and is refused by
    name when handed over explicitly."""
    fp32_local = _meta()
    assert fp32_local["grad_dtype"] == "float32"
    bf16 = _meta(grad_dtype=torch.bfloat16)
    hub = _meta(data_source="hub:allenai/c4:en/c4-train.00000-of-01024.json.gz@abc")
    paths = {default_cache_path(tmp_path, m) for m in (fp32_local, bf16, hub)}
    assert len(paths) == 3
    assert "_fp32_" in default_cache_path(tmp_path, fp32_local).name
    assert "_bf16_" in default_cache_path(tmp_path, bf16).name
    summary = block_summary([{"w": torch.rand(3, 3)}])
    for made, reason in ((bf16, "grad_dtype: cache 'bfloat16' vs run 'float32'"), (hub, "data_source: cache 'hub")):
        path = save_cache(tmp_path / "other.safetensors", summary, made)
        with pytest.raises(CacheMismatch, match=reason):
            load_cache(path, expected=fp32_local)
    old = {k: v for k, v in fp32_local.items() if k not in ("grad_dtype", "data_source")}
    path = save_cache(tmp_path / "old.safetensors", summary, old)  # written before these fields existed
    with pytest.raises(CacheMismatch, match="grad_dtype: cache None"):
        load_cache(path, expected=fp32_local)


def test_two_fresh_gradient_passes_give_identical_block_scores():
    """Fresh model, same samples: bit-identical statistics and block scores, also when the same
    model object runs the pass twice (no gradient or state left behind between passes)."""
    samples = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    runs = []
    for _ in range(2):
        model = tiny_model("llama", layers=3)
        runs.append(gradient_sensitivities(model, samples, grad_type="l2_hundred_total", loss="last_token"))
    runs.append(gradient_sensitivities(model, samples, grad_type="l2_hundred_total", loss="last_token"))
    scores = [block_summary(r).abs_z_sum for r in runs]
    assert scores[0].abs().min() > 0
    for other, r in zip(scores[1:], runs[1:], strict=True):
        assert torch.equal(scores[0], other)
        for a, b in zip(runs[0], r, strict=True):
            assert all(torch.equal(a[name], b[name]) for name in a)


def test_gradient_pass_on_the_loaded_model_equals_a_fresh_load(tiny_checkpoint, tmp_path, data_dir, monkeypatch):
    """main.py reuses its own model for the gradient pass (no second copy in memory): the cache is
    the one a separately loaded model gives, and the model comes back with its grad flags."""
    import torch

    from lib.models import load_model, resolve_model_source
    from lib.options import GradientOptions
    from lib.pipeline import compute_gradient_cache, gradient_metadata
    from lib.sensitivity import load_cache

    source = resolve_model_source(str(tiny_checkpoint))
    cpu = torch.device("cpu")
    metadata = gradient_metadata(GradientOptions(nsamples=3, seqlen=16), source, data_dir=data_dir, device=cpu)
    common = dict(data_dir=data_dir, device=cpu, dtype=torch.float32)
    compute_gradient_cache(source, metadata, tmp_path / "fresh.safetensors", **common)
    model, tokenizer = load_model(source, device=cpu, dtype=torch.float32)
    before = {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}
    import lib.pipeline

    def no_second_copy(*args, **kwargs):
        raise AssertionError("the gradient pass loaded a second copy of the model")

    monkeypatch.setattr(lib.pipeline, "load_model", no_second_copy)
    compute_gradient_cache(source, metadata, tmp_path / "reused.safetensors", **common, loaded=(model, tokenizer))
    fresh, _ = load_cache(tmp_path / "fresh.safetensors")
    reused, _ = load_cache(tmp_path / "reused.safetensors")
    assert torch.equal(fresh.abs_z_sum, reused.abs_z_sum)
    for name, p in model.named_parameters():
        value, flag = before[name]
        assert torch.equal(p, value) and p.grad is None and p.requires_grad == flag, name
