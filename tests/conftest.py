"""Shared fixtures: tiny randomly initialised causal LMs of several families, data paths."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCRIPTS = ROOT / "scripts"


def load_script(name: str):
    """scripts/NAME.py as a module (scripts/ is not a package). It is registered in
    ``sys.modules`` (dataclasses resolve their annotations there), and scripts/ goes on the path
    for the scripts that import one another (grid_runner, ladder)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


DATA_DIR = Path(os.environ.get("ALP_DATA_DIR") or ROOT.parent / "shared" / "data")
FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "opt")


def tiny_config(family: str, *, vocab_size: int = 128, layers: int = 3):
    """A config of ``family`` small enough to build and run in milliseconds."""
    import transformers as tf

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "opt":
        return tf.OPTConfig(**common, ffn_dim=64, word_embed_proj_dim=32, enable_bias=True)
    gqa = dict(intermediate_size=64, num_key_value_heads=2, head_dim=8)
    return {
        "llama": tf.LlamaConfig,
        "mistral": tf.MistralConfig,
        "qwen2": tf.Qwen2Config,
        "gemma": tf.GemmaConfig,
        "gemma2": tf.Gemma2Config,
    }[family](**common, **gqa)


def tiny_model(family: str, *, seed: int = 0, vocab_size: int = 128, layers: int = 3, dtype=torch.float32):
    """A randomly initialised ``*ForCausalLM`` in eval mode, weights scaled so activations are varied."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, vocab_size=vocab_size, layers=layers)
    config.use_cache = False
    config._attn_implementation = "eager" if family == "gemma2" else "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "c4").is_dir():
        pytest.skip(f"no local data at {DATA_DIR}; set ALP_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2 converted to a checkpoint folder (converted once, then cached)."""
    from lib.models import embedded_gguf, gguf_checkpoint

    try:
        gguf = embedded_gguf()
    except ValueError as err:
        pytest.skip(str(err))
    return gguf_checkpoint(gguf)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture
def tiny_checkpoint(tmp_path, smollm2_tokenizer, monkeypatch) -> Path:
    """A tiny random LLaMA (4 blocks) with SmolLM2's vocabulary, saved as a checkpoint folder;
    caches go to a fresh ``ALP_CACHE_DIR`` under ``tmp_path``."""
    monkeypatch.setenv("ALP_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model("llama", vocab_size=len(smollm2_tokenizer), layers=4)
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _run_logs_in_tmp(tmp_path, monkeypatch):
    """main.py writes a JSON log for every run: keep the tests' logs out of the checkout."""
    monkeypatch.setenv("ALP_LOG_DIR", str(tmp_path / "run_logs"))
