"""Model sources, saving with zeros intact, atomic writes, device and dtype policy."""

import pytest
import torch

from lib.masks import SparsityPattern
from lib.models import ModelSource, resolve_model_source, save_model
from lib.prune import measure_sparsity, prune_model
from lib.utils import atomic_directory, atomic_write_text, resolve_device, resolve_dtype
from tests.conftest import tiny_model


def test_resolve_model_source(tmp_path):
    assert resolve_model_source("meta-llama/Llama-2-7b-hf") == ModelSource(
        "hub", "meta-llama/Llama-2-7b-hf", "Llama-2-7b-hf"
    )
    for bad in (str(tmp_path / "missing"), "./nope", "a/b/c", "x.gguf"):
        with pytest.raises(ValueError):
            resolve_model_source(bad)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="must be a .gguf"):
        resolve_model_source(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_source(str(tmp_path))


def test_folder_fingerprint_follows_config(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    first = resolve_model_source(str(tmp_path)).fingerprint()
    assert first == resolve_model_source(str(tmp_path)).fingerprint()
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert resolve_model_source(str(tmp_path)).fingerprint() != first


@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt", "ria", "magnitude"])
def test_saved_pruned_model_keeps_its_zeros(pruner, tmp_path, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    model = tiny_model("qwen2")
    prune_model(
        model,
        pruner_name=pruner,
        ratios=[0.6] * 3,
        calib_ids=torch.randint(3, 128, (2, 8)),
        pattern=SparsityPattern(),
        micro_batch=2,
    )
    out = save_model(model, smollm2_tokenizer, tmp_path / "pruned")
    assert (out / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert measure_sparsity(reloaded) == measure_sparsity(model)
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_model(model, smollm2_tokenizer, out)
    save_model(model, smollm2_tokenizer, out, overwrite=True)


def test_atomic_writes_never_clobber_unasked(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "one")
    with pytest.raises(FileExistsError):
        atomic_write_text(path, "two", overwrite=False)
    assert path.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError("boom")
    assert not (tmp_path / "d").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary left behind


def test_device_and_dtype_policy():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) in (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
