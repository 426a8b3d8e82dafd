"""Placement of the weights (lib.placement): offloaded forwards, micro-batch invariance, the
memory of pruning one block at a time, and the predicted peak memory."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import main as main_cli
from lib.arch import block_linears, decoder_blocks
from lib.eval import perplexity
from lib.masks import SparsityPattern
from lib.placement import blocks_on_demand, move_to, predicted_peak_memory
from lib.prune import prune_model
from tests.conftest import ROOT, tiny_config, tiny_model

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_move_to_reaches_nested_tensors():
    obj = {"a": (torch.zeros(2), [torch.ones(1), 3]), "b": None}
    moved = move_to(obj, torch.device("cpu"))
    assert moved["a"][1][1] == 3 and moved["b"] is None and torch.equal(moved["a"][0], obj["a"][0])


# A device that compares unequal to the weights' ``device("cpu")``: placing on it takes every
# branch a GPU takes (blocks moved for their turn, forwards through the hooks) on a CPU-only machine.
OTHER_CPU = torch.device("cpu", 0)


@pytest.fixture
def block_moves(monkeypatch) -> list[str]:
    """Records every ``Module.to(OTHER_CPU)`` (the class name of the module moved). Such a move
    copies the module's tensors into new storage, as a move to a GPU does, so code that kept
    working on the tensors from before the move would lose its changes."""
    moves = []
    plain_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (str, torch.device)) and torch.device(target) == OTHER_CPU:
            moves.append(type(self).__name__)
            return self._apply(torch.clone)
        return plain_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    return moves


def _block_class(model) -> str:
    return type(decoder_blocks(model)[0]).__name__


@pytest.mark.parametrize("family", ["llama", "opt", "gemma2", "qwen2"])
def test_blocks_on_demand_forward_is_the_plain_forward(family, block_moves):
    """The hooked forward (each block moved in with its arguments, then back) equals the plain one,
    every block was moved once for its call, and every hook is gone afterwards."""
    model = tiny_model(family)
    ids = torch.randint(3, 128, (2, 12))
    with torch.no_grad():
        plain = model(ids).logits
        calls = []
        handle = decoder_blocks(model)[1].register_forward_hook(lambda *a: calls.append(1))
        with blocks_on_demand(model, OTHER_CPU):
            hooked = model(ids).logits
            assert len(decoder_blocks(model)[0]._forward_pre_hooks) == 1
        handle.remove()
    assert block_moves == [_block_class(model)] * len(decoder_blocks(model))
    assert torch.equal(plain, hooked) and calls == [1]
    assert all(not block._forward_pre_hooks and not block._forward_hooks for block in decoder_blocks(model))


def test_blocks_on_demand_is_a_no_op_where_nothing_moves(block_moves):
    model = tiny_model("llama")
    with blocks_on_demand(model, torch.device("cpu")):
        assert not decoder_blocks(model)[0]._forward_pre_hooks
        model(torch.randint(3, 128, (1, 8)))
    assert block_moves == []


def _pruned(model, pruner, ids, ratio, **engine):
    """``model`` pruned in place by ``pruner`` at ``ratio`` in every block (unstructured)."""
    blocks = len(decoder_blocks(model))
    prune_model(model, pruner_name=pruner, ratios=[ratio] * blocks, calib_ids=ids, pattern=SparsityPattern(), **engine)
    return model


def _masks(model):
    return [lin.weight == 0 for block in decoder_blocks(model) for lin in block_linears(block).values()]


@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt", "ria"])
def test_micro_batch_size_does_not_change_the_result(pruner):
    """Statistics are sums over samples: only their summation order depends on the micro-batch."""
    ids = torch.randint(3, 128, (6, 16))
    models = [_pruned(tiny_model("llama", seed=3), pruner, ids, 0.6, micro_batch=m) for m in (1, 4, 6)]
    reference = _masks(models[0])
    stream = torch.randint(3, 128, (1, 64))
    ppl = [perplexity(m, stream, seqlen=16)["ppl"] for m in models]
    for other in models[1:]:
        agree = [(a == b).float().mean() for a, b in zip(reference, _masks(other), strict=True)]
        assert min(agree) > 0.999
    assert ppl[1] == pytest.approx(ppl[0], rel=1e-4) and ppl[2] == pytest.approx(ppl[0], rel=1e-4)


@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt"])
def test_offloaded_engine_moves_each_block_and_gives_the_same_model(pruner, block_moves):
    """The engine's offload path (block moved to the device for its turn, pruned there, moved back;
    activations kept where they were captured) gives bit-identical weights and perplexity, and did
    move every block: the copying moves of ``block_moves`` lose any pruning done on stale tensors."""
    ids = torch.randint(3, 128, (4, 16))
    in_place = _pruned(tiny_model("llama", seed=5), pruner, ids, 0.5)
    assert block_moves == []
    offloaded = _pruned(tiny_model("llama", seed=5), pruner, ids, 0.5, device=OTHER_CPU)
    assert block_moves == [_block_class(offloaded)] * len(decoder_blocks(offloaded))
    for a, b in zip(in_place.parameters(), offloaded.parameters(), strict=True):
        assert torch.equal(a, b)
    stream = torch.randint(3, 128, (1, 64))
    with blocks_on_demand(offloaded, OTHER_CPU):
        ppl = perplexity(offloaded, stream, seqlen=16)["ppl"]
    assert ppl == perplexity(in_place, stream, seqlen=16)["ppl"]


def test_placements_give_the_in_memory_result(tiny_checkpoint, tmp_path, data_dir, monkeypatch, block_moves):
    """``--offload`` (weights in CPU memory, one block at a time on the device) and ``--device_map
    auto`` (accelerate's placement) give the same weights and perplexity as the default placement.

    ``--device cpu --offload`` would take the default path on a CPU (nothing has to move), so the
    offloaded run computes on ``cpu:0`` (OTHER_CPU): every block is moved for its turn in the pruning
    engine and for each evaluation forward (``block_moves`` counts them). On a CPU-only machine
    ``--device_map auto`` places every weight on the CPU and differs from the default only in how
    the model is loaded; the CUDA tests below check moves between real devices."""
    monkeypatch.setenv("ALP_DATA_DIR", str(data_dir))
    common = ["--model", str(tiny_checkpoint), "--prune_method", "sparsegpt", "--nsamples", "4", "--seqlen", "32"]
    common += ["--eval_seqlen", "64", "--eval_windows", "2", "--dtype", "float32", "--skip_dense"]
    placements = {
        "device": ["--device", "cpu"],
        "offload": ["--device", str(OTHER_CPU), "--offload"],
        "auto": ["--device_map", "auto"],
    }
    blocks = 4  # tiny_checkpoint
    moves = {"device": 0, "offload": blocks * (1 + 2), "auto": 0}  # pruning: once per block; evaluation: per window
    weights = {}
    for name, extra in placements.items():
        log = tmp_path / f"{name}.json"
        block_moves.clear()
        assert main_cli.main(common + extra + ["--log_json", str(log), "--save_model", str(tmp_path / name)]) == 0
        assert len(block_moves) == moves[name], (name, block_moves)
        result = json.loads(log.read_text())
        assert result["placement"] == name and result["predicted_memory_bytes"]["device"] > 0
        # on a CPU the measured peak is the process's peak RSS, which holds at least the weights
        assert result["measured_prune_peak_bytes"] >= result["predicted_memory_bytes"]["weights"]
        weights[name] = load_file(tmp_path / name / "model.safetensors")
        if name == "device":
            reference = result
        else:
            assert result["ppl"] == reference["ppl"] and result["block_sparsity"] == reference["block_sparsity"]
            assert weights["device"].keys() == weights[name].keys()
            assert all(torch.equal(weights["device"][k], weights[name][k]) for k in weights["device"])


@CUDA
@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("dtype,seqlen", [(torch.float32, 16), (torch.bfloat16, 256)])
def test_offloaded_pruning_on_cuda_matches_pruning_on_cuda(pruner, dtype, seqlen):
    """Bit-identical masks: the offloaded run computes the embeddings and rotary tables on the GPU
    too (long sequences: the CPU's cos / sin may differ from the GPU's in the last bits)."""
    ids = torch.randint(3, 128, (4, seqlen))
    cuda = torch.device("cuda")
    on_gpu = _pruned(tiny_model("llama", seed=5, dtype=dtype).cuda(), pruner, ids, 0.5, device=cuda)
    offloaded = _pruned(tiny_model("llama", seed=5, dtype=dtype), pruner, ids, 0.5, device=cuda)  # weights on the CPU
    assert next(decoder_blocks(offloaded)[0].parameters()).device.type == "cpu"
    for a, b in zip(_masks(on_gpu), _masks(offloaded), strict=True):
        assert torch.equal(a.cpu(), b)
    stream = torch.randint(3, 128, (1, 64))
    with blocks_on_demand(offloaded, torch.device("cuda")):
        ppl_offloaded = perplexity(offloaded, stream, seqlen=16)["ppl"]
    assert ppl_offloaded == pytest.approx(perplexity(on_gpu, stream, seqlen=16)["ppl"], rel=1e-5)
    assert next(offloaded.parameters()).device.type == "cpu"


def _mid_size_llama(vocab_size: int, layers: int, max_positions: int):
    """A LLaMA config with 384-wide blocks of ~3.5 MB in bf16: big enough for memory figures to
    tell one block from the whole model, small enough to build in a test."""
    import transformers as tf

    return tf.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=max_positions,
    )


# GPU peaks measured on one H200 (results/h200/, torch 2.11, bf16, SmolLM2-135M-Instruct, 128 x 2048
# calibration, --calib_batch_size 4) and the log each comes from. The formula's 64 MiB workspace term
# was chosen after those runs, so they do not validate it; the test guards against drift of either.
H200_PEAKS = {
    ("wanda", "device"): "results/h200/paper/smollm2_wanda_0.7.json",  # 733 MiB, predicted 753
    ("sparsegpt", "device"): "results/h200/paper/smollm2_sparsegpt_0.7.json",  # 709 MiB, predicted 844
    ("wanda", "offload"): "results/h200/offload_check/wanda_offload.json",  # 195 MiB, predicted 215 (same shapes,
    # random weights)
    ("wanda_alp", "device"): "results/h200/placements/placement_device_wanda_alp.json",  # 765 MiB, predicted 753
}


@CUDA
@pytest.mark.parametrize(("pruner", "placement"), list(H200_PEAKS))
def test_measured_gpu_peak_is_the_predicted_one(pruner, placement, tmp_path, smollm2_dir, data_dir, monkeypatch):
    """At the settings of the committed H200 runs, the CUDA allocator's peak while pruning
    (``measured_prune_peak_bytes``) is the committed one within 3 % (another torch or GPU may
    allocate a little differently) and between 0.80 and 1.02 times the predicted device peak:
    the range the four H200 runs span (0.84 SparseGPT, 0.91 offloaded, 0.97 Wanda, 1.016 Wanda-ALP,
    whose gradient pass leaves cuBLAS workspaces behind)."""
    monkeypatch.setenv("ALP_DATA_DIR", str(data_dir))
    (tmp_path / "cache").mkdir()  # fresh caches (the gradient pass runs), the converted model shared
    (tmp_path / "cache" / "models").symlink_to(smollm2_dir.parent, target_is_directory=True)
    monkeypatch.setenv("ALP_CACHE_DIR", str(tmp_path / "cache"))
    committed = json.loads((ROOT / H200_PEAKS[pruner, placement]).read_text())
    log = tmp_path / "run.json"
    flags = ["--prune_method", pruner, "--device", "cuda", "--dtype", "bfloat16", "--calib_batch_size", "4"]
    flags += ["--nsamples", "128", "--seqlen", "2048", "--eval_windows", "1", "--skip_dense", "--seed", "0"]
    flags += ["--alpha", "0.15", "--grad_nsamples", "10"] if pruner.endswith("_alp") else []
    flags += ["--log_json", str(log)] + (["--offload"] if placement == "offload" else [])
    assert main_cli.main(flags) == 0
    result = json.loads(log.read_text())
    predicted, measured = result["predicted_memory_bytes"]["device"], result["measured_prune_peak_bytes"]
    print(f"{pruner} {placement}: measured {measured / 2**20:.1f} MiB, predicted {predicted / 2**20:.1f} MiB")
    assert measured == pytest.approx(committed["measured_prune_peak_bytes"], rel=0.03)
    assert 0.80 * predicted <= measured <= 1.02 * predicted, (measured, result["predicted_memory_bytes"])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc for peak RSS")
@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt"])
def test_pruning_a_model_from_disk_holds_one_block_at_a_time(pruner, tmp_path):
    """Peak RSS growth while pruning a ~93 MiB model loaded from disk (every weight already
    resident) stays within the predicted working set of one block (activations, micro-batch,
    statistics: ``lib.placement.predicted_peak_memory``) plus the block's pruned copy and 16 MiB
    of allocator slack: far below a second copy of the model."""
    import transformers as tf

    tf.AutoModelForCausalLM.from_config(_mid_size_llama(4096, 12, 256)).save_pretrained(tmp_path / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "memory_probe.py"), str(tmp_path / "model"), pruner],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    bound = figures["predicted_working_set"] + figures["block_bytes"] + 16 * 2**20
    assert bound < figures["model_bytes"] * 0.6  # the test can tell one block from a model copy
    assert figures["peak_growth"] < bound, figures


def test_predicted_peak_memory_parts():
    model = tiny_model("llama", layers=4)
    d, d_ff = model.config.hidden_size, model.config.intermediate_size
    common = dict(nsamples=8, seqlen=16, micro_batch=2, dtype=torch.bfloat16)
    wanda = predicted_peak_memory(
        model, **common, needs=frozenset({"col_sq_norm"}), placement="device", device=torch.device("cpu")
    )
    hessian = predicted_peak_memory(
        model, **common, needs=frozenset({"hessian"}), placement="device", device=torch.device("cpu")
    )
    assert wanda.weights == sum(p.numel() for p in model.parameters()) * 2
    assert wanda.activations == 8 * 16 * d * 2
    assert wanda.micro_batch == 2 * 16 * (8 * d + 3 * d_ff) * 2  # SDPA: no attention matrix
    assert wanda.statistics == 4 * (4 * d + 2 * d + d_ff)  # q k v o gate up read d columns, down d_ff
    widest = max(d, d_ff)
    assert hessian.statistics == 4 * (6 * d * d + d_ff * d_ff) + 12 * widest**2 + 4 * 2 * 16 * widest
    assert (
        wanda.workspace == 0
        and wanda.device == wanda.weights + wanda.activations + wanda.micro_batch + wanda.statistics
    )
    model.config._attn_implementation = "eager"
    eager = predicted_peak_memory(
        model, **common, needs=frozenset({"col_sq_norm"}), placement="device", device=torch.device("cpu")
    )
    heads = model.config.num_attention_heads
    assert eager.micro_batch == wanda.micro_batch + 2 * heads * 16**2 * (2 * 2 + 4)
    gpu = predicted_peak_memory(
        model, **common, needs=frozenset({"col_sq_norm"}), placement="offload", device=torch.device("cuda")
    )
    outside = gpu.weights - sum(sum(p.numel() for p in b.parameters()) * 2 for b in decoder_blocks(model))
    working = gpu.block + eager.micro_batch + gpu.statistics
    assert gpu.device == max(outside + 2 * 2 * 16 * d * 2, working) + gpu.workspace and gpu.workspace > 0
    assert gpu.host == gpu.weights + gpu.activations
    magnitude = predicted_peak_memory(
        model, **common, needs=frozenset(), placement="device", device=torch.device("cpu")
    )
    assert magnitude.activations == magnitude.micro_batch == magnitude.statistics == 0
    config = tiny_config("llama")
    assert config.hidden_size == d
