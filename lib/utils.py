"""Small shared helpers: atomic writes, device/dtype resolution, cache locations."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


def cache_root() -> Path:
    """Folder for converted models, gradient caches and cached dense perplexities.

    ``$ALP_CACHE_DIR`` when set, else ``~/.cache/alp``.
    """
    root = os.environ.get("ALP_CACHE_DIR") or os.path.join(Path.home(), ".cache", "alp")
    return Path(root)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")


def unused_path(path: str | os.PathLike) -> Path:
    """``path`` itself when nothing is there, else the first free ``stem-2.ext``, ``stem-3.ext``..."""
    path = Path(path)
    candidate, index = path, 2
    while candidate.exists():
        candidate, index = path.with_name(f"{path.stem}-{index}{path.suffix}"), index + 1
    return candidate


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike, obj, *, overwrite: bool = True) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", overwrite=overwrite)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False):
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    A failure inside the block removes the temporary folder and leaves ``path`` untouched.
    """
    path = Path(path)
    occupied = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if occupied and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when one is visible, else CPU; other names pass through."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matmul units (AVX512-BF16 or AMX)."""
    return cpu_vector_units() in ("amx-bf16", "avx512-bf16")


@functools.cache
def _cpuinfo() -> str:
    """The text of /proc/cpuinfo, read once (``""`` off Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_vector_units() -> str:
    """The widest matmul units this CPU reports, as the dtype choice and timings depend on them:
    ``amx-bf16``, ``avx512-bf16``, ``avx512``, ``avx2`` or ``other`` (``unknown`` off Linux)."""
    flags = set(_cpuinfo().split())
    if not flags:
        return "unknown"
    for flag, name in (
        ("amx_bf16", "amx-bf16"),
        ("avx512_bf16", "avx512-bf16"),
        ("avx512f", "avx512"),
        ("avx2", "avx2"),
    ):
        if flag in flags:
            return name
    return "other"


def host_description(device: torch.device) -> dict:
    """What ran a job, for its log: CPU model and vector units, cores, torch threads, the GPU."""
    lines = _cpuinfo().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    return {
        "cpu": cpu,
        "cpu_units": cpu_vector_units(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Model dtype for ``device``: ``auto`` -> bf16 on CUDA with bf16 support (else fp16),
    bf16 on a CPU with native bf16 units, else fp32."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def free_memory() -> None:
    """Release cached accelerator memory, and hand freed CPU heap pages back to the OS."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    release_freed_heap()


def release_freed_heap() -> bool:
    """``malloc_trim(0)`` on glibc: return the pages of freed CPU tensors to the OS.

    glibc raises its mmap threshold to the size of the largest freed mmapped block (up to 32 MiB),
    so later tensors below that size (every linear of a sub-billion model) come from the heap, and
    freeing them does not lower the resident size: the gradient pass's fp32 accumulators stayed
    resident through pruning and evaluation. Returns whether the call was made (False off glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.cache
def _glibc():
    """The C library when it is glibc (has ``malloc_trim``), else ``None``; loaded once."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


class StageTimer:
    """Records wall seconds per named stage: ``with timer("load"): ...`` -> ``timer.seconds["load"]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        import time

        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def print_figures(figures: dict) -> None:
    """A benchmark's figures as a Markdown table, then the same as one JSON object on the last line."""
    print("| figure | value |\n|---|---|")
    for key, value in figures.items():
        print(f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
    print(json.dumps(figures))
