"""Text sources (local-first), the calibration sampler and the evaluation token stream.

Local layout (as in ``../shared/data``; pass ``--data_dir`` or set ``$ALP_DATA_DIR``)::

    wikitext2/wikitext-2-raw-v1.test.jsonl   {"text"} per row, the HF wikitext-2-raw-v1 test split
    c4/c4-en-train.00000-of-01024.first1000.jsonl   {"text", ...} per document

Without a data directory the sets come from the Hugging Face hub. There is no silent
fallback: when the hub is not reachable and no local folder is named, the run stops with a
one-line hint (:func:`resolve_data_dir`).

Every source a run reads is described by :func:`text_source` / :func:`tasks_source` (path,
size, sha256 of the file, or hub id and revision) and the token ids it actually used by
:func:`token_record`; :func:`data_provenance` assembles them for the run's JSON log.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import socket
from pathlib import Path

import torch

DATA_ENV = "ALP_DATA_DIR"
LOCAL_FILES = {
    "wikitext2": "wikitext2/wikitext-2-raw-v1.test.jsonl",
    "c4": "c4/c4-en-train.00000-of-01024.first1000.jsonl",
}
# The hub copies of the text sets: what _hub_texts loads and what text_source records.
HUB_SETS = {
    "wikitext2": {"id": "wikitext", "config": "wikitext-2-raw-v1", "split": "test"},
    "c4": {"id": "allenai/c4", "data_files": "en/c4-train.00000-of-01024.json.gz", "split": "train"},
    "c4_validation": {
        "id": "allenai/c4",
        "data_files": "en/c4-validation.00000-of-00008.json.gz",
        "split": "validation",
    },
}
# Below this many documents the pool is tokenized up front so its size can be checked.
_SMALL_POOL_DOCS = 20_000
NO_DATA_HINT = (
    "pass --data_dir DIR or set ALP_DATA_DIR=DIR, DIR a local copy laid out as shared/data "
    "(wikitext2/, c4/, tasks/; see lib/data.py)"
)


def _hub_offline() -> str | None:
    """Why the hub cannot be used (``HF_*_OFFLINE`` set, or no connection), or ``None``."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return "offline mode is set"
    return None if hub_reachable() else "the hub is not reachable"


def resolve_data_dir(arg: str | None, needed: tuple[str, ...] = ()) -> Path | None:
    """The local data folder from ``--data_dir`` or ``$ALP_DATA_DIR`` (``None``: use the hub).

    Raises ``ValueError`` when the folder or one of the ``needed`` sets is missing, and when
    no folder is named, ``needed`` is not empty and the hub cannot be used (one line saying
    how to point at local data: no folder outside the checkout is used silently).
    """
    value = arg or os.environ.get(DATA_ENV)
    if not value:
        reason = _hub_offline() if needed else None
        if reason:
            raise ValueError(f"{reason} and no local data is named for {', '.join(needed)}: {NO_DATA_HINT}")
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ValueError(f"data directory {value} does not exist (set by --data_dir or ${DATA_ENV})")
    for name in needed:
        if not (folder / LOCAL_FILES[name]).is_file():
            raise ValueError(f"data directory {value} lacks {LOCAL_FILES[name]} (needed for {name})")
    return folder


def _read_jsonl_texts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub endpoint, so an offline run falls back in seconds, not minutes."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_texts(name: str) -> list[str]:
    from datasets import load_dataset

    spec = HUB_SETS[name]
    if "config" in spec:
        return list(load_dataset(spec["id"], spec["config"], split=spec["split"])["text"])
    files = {spec["split"]: spec["data_files"]}
    return list(load_dataset(spec["id"], data_files=files, split=spec["split"])["text"])


def load_texts(name: str, data_dir: Path | None) -> list[str]:
    """Rows of WikiText-2 test (``wikitext2``) or documents of C4 train shard 0 (``c4``).

    From ``data_dir`` when given, else from the hub; raises ``ValueError`` (one line, with
    :data:`NO_DATA_HINT`) when the hub cannot be used: never falls back to another folder.
    """
    if name not in LOCAL_FILES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(LOCAL_FILES)}")
    if data_dir is not None:
        return _read_jsonl_texts(data_dir / LOCAL_FILES[name])
    reason = _hub_offline()
    if reason is None:
        try:
            return _hub_texts(name)
        except Exception as err:  # any hub/network failure: say which, then stop below
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    raise ValueError(f"cannot load {name} from the hub ({reason}): {NO_DATA_HINT}")


def _concatenated_windows(token_lists, *, nsamples: int, seqlen: int, rng: random.Random, sep: int | None):
    stream = []
    for ids in token_lists:
        stream.extend(ids)
        if sep is not None:
            stream.append(sep)
    nchunks = len(stream) // seqlen
    if nchunks >= nsamples:
        starts = [c * seqlen for c in rng.sample(range(nchunks), nsamples)]
        how = f"{nsamples} distinct windows of the {nchunks} in the concatenated stream"
    else:
        starts = [rng.randint(0, len(stream) - seqlen) for _ in range(nsamples)]
        how = f"{nsamples} random (overlapping) windows of a {len(stream)}-token stream"
    return [stream[s : s + seqlen] for s in starts], how


def sample_calibration(tokenizer, docs: list[str], *, nsamples: int, seqlen: int, seed: int):
    """Draw ``nsamples`` windows of ``seqlen`` tokens; return ``(ids, note)``.

    ``ids`` is a LongTensor ``(nsamples, seqlen)``. The classic sampler (SparseGPT/Wanda):
    pick a random document longer than ``seqlen`` tokens, then a random window inside it,
    with ``random.Random(seed)`` making the same calls as the reference's seeded ``random``.
    When a small local pool has fewer such documents than ``nsamples`` (the 1,000-document
    C4 sample at 2048 tokens), the documents are instead joined (EOS-separated) into one
    stream and distinct windows are drawn from it; ``note`` says which was done.
    """
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples} and {seqlen}")
    rng = random.Random(seed)
    if len(docs) <= _SMALL_POOL_DOCS:
        token_lists = tokenizer(docs, add_special_tokens=True)["input_ids"]
        eligible = sum(len(ids) > seqlen for ids in token_lists)
        if eligible < nsamples:
            windows, how = _concatenated_windows(
                token_lists, nsamples=nsamples, seqlen=seqlen, rng=rng, sep=tokenizer.eos_token_id
            )
            note = (
                f"only {eligible} of {len(docs)} documents exceed {seqlen} tokens (< {nsamples} samples): "
                f"drew {how} instead of the classic per-document sampler"
            )
            return torch.tensor(windows, dtype=torch.long), note
        encode = token_lists.__getitem__
    else:
        cache: dict[int, list[int]] = {}

        def encode(i: int) -> list[int]:
            if i not in cache:
                cache[i] = tokenizer(docs[i])["input_ids"]
            return cache[i]

    windows = []
    for _ in range(nsamples):
        while True:
            ids = encode(rng.randint(0, len(docs) - 1))
            if len(ids) > seqlen:
                break
        start = rng.randint(0, len(ids) - seqlen - 1)
        windows.append(ids[start : start + seqlen])
    note = f"classic sampler: {nsamples} random windows from documents longer than {seqlen} tokens"
    return torch.tensor(windows, dtype=torch.long), note


def resolve_tasks_dir(data_dir: Path | None) -> Path | None:
    """Folder of the local zero-shot task files, or ``None`` to use the harness's hub tasks.

    A data directory must hold ``tasks/``; without one the hub must be usable (else
    ``ValueError`` with :data:`NO_DATA_HINT`).
    """
    if data_dir is not None:
        if not (data_dir / "tasks").is_dir():
            raise ValueError(f"data directory {data_dir} has no tasks/ folder (needed for --eval_zero_shot)")
        return data_dir / "tasks"
    reason = _hub_offline()
    if reason:
        raise ValueError(f"zero-shot tasks: {reason}: {NO_DATA_HINT}")
    return None


EVAL_SETS = ("wikitext2", "c4")
C4_EVAL_DOCS = 1100  # documents joined for C4 perplexity, as in the reference (its first 256 windows)
C4_EVAL_WINDOWS = 256


def _c4_validation_texts() -> list[str]:
    return _hub_texts("c4_validation")[:C4_EVAL_DOCS]


def evaluation_stream(name: str, tokenizer, data_dir: Path | None, seqlen: int) -> tuple[torch.Tensor, str]:
    """Token stream ``(1, N)`` for perplexity on ``name`` (see :data:`EVAL_SETS`) and where it came from.

    ``wikitext2``: the test split joined with ``"\n\n"``. ``c4``: the first 1,100 documents of the
    validation shard joined with ``" "``, cut to 256 windows of ``seqlen``; a local data folder
    has only the train-shard sample, which is used instead and said so (the calibration sampler
    draws from the same documents, so that figure is not a held-out one). Without a data folder
    the hub must be usable (``ValueError`` otherwise, see :func:`load_texts`).
    """
    if name == "wikitext2":
        return eval_token_stream(tokenizer, load_texts("wikitext2", data_dir)), "WikiText-2 test"
    if name != "c4":
        raise ValueError(f"unknown evaluation set {name!r}; choose from {', '.join(EVAL_SETS)}")
    if data_dir is None:
        reason = _hub_offline()
        try:
            docs = None if reason else _c4_validation_texts()
        except Exception as err:  # any hub/network failure: say which and stop
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if reason:
            raise ValueError(f"cannot load the C4 validation shard from the hub ({reason}): {NO_DATA_HINT}")
        note = "C4 validation shard 0, first 1,100 documents"
    else:
        docs = load_texts("c4", data_dir)[:C4_EVAL_DOCS]
        note = "local C4 train-shard sample (no validation split offline; overlaps the calibration pool)"
    ids = tokenizer(" ".join(docs), return_tensors="pt").input_ids[:, : C4_EVAL_WINDOWS * seqlen]
    return ids, note


def eval_token_stream(tokenizer, rows: list[str]) -> torch.Tensor:
    """Rows joined with ``"\\n\\n"`` and tokenized once: LongTensor ``(1, n_tokens)``."""
    return tokenizer("\n\n".join(rows), return_tensors="pt").input_ids


# ---- provenance: what a run read, for its JSON log (``data_provenance``) ----

CLASSIC_SAMPLER = "classic_per_document"  # SparseGPT/Wanda: random document, random window in it
CONCATENATED_SAMPLER = "concatenated_stream"  # small pools: EOS-joined stream, distinct windows


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes; ``size`` and ``mtime_ns`` are in the key so an edited file is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict:
    """``{"path", "bytes", "sha256"}`` of a local file, hashed once per process per (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "sha256": _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)}


def text_source(name: str, data_dir: Path | None, texts: list[str] | None = None) -> dict:
    """Where text set ``name`` (a key of :data:`HUB_SETS`; ``c4_validation`` only from the hub)
    is read from, as :func:`load_texts` reads it.

    Local: ``{"kind": "local", "path", "bytes", "sha256"}``; hub: ``{"kind": "hub", "id",
    "config" | "data_files", "split", "revision"}`` (``revision``: the commit the hub serves,
    ``None`` when it cannot be asked). ``texts`` (the rows or documents read) adds ``"rows"``.
    """
    if name not in HUB_SETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(HUB_SETS)}")
    if data_dir is not None:
        record = {"kind": "local", **file_record(Path(data_dir) / LOCAL_FILES[name.removesuffix("_validation")])}
    else:
        from .hub import resolved_revision

        spec = HUB_SETS[name]
        record = {"kind": "hub", **spec, "revision": resolved_revision(spec["id"], repo_type="dataset")}
    if texts is not None:
        record["rows"] = len(texts)
    return record


def source_id(record: dict) -> str:
    """A short content id of a :func:`text_source` record, for cache keys: ``sha256:<16 hex>``
    of a local file (wherever it lies), or ``hub:<id>[:<config or files>]@<revision or 'unresolved'>``."""
    if record["kind"] == "local":
        return f"sha256:{record['sha256'][:16]}"
    part = record.get("config") or record.get("data_files")
    return f"hub:{record['id']}:{part}@{record.get('revision') or 'unresolved'}"


def token_record(ids: torch.Tensor) -> dict:
    """``{"shape", "tokens", "sha256"}`` of token ids (hashed as contiguous int64 bytes, so the
    same ids give the same checksum on every machine)."""
    flat = ids.detach().to("cpu", torch.int64).contiguous()
    return {
        "shape": list(flat.shape),
        "tokens": flat.numel(),
        "sha256": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
    }


def sampler_record(note: str, *, nsamples: int, seqlen: int, seed: int) -> dict:
    """Which sampler :func:`sample_calibration` used (from its ``note``) and its settings."""
    name = CLASSIC_SAMPLER if note.startswith("classic sampler") else CONCATENATED_SAMPLER
    record = {"name": name, "rng": "random.Random(seed)", "seed": seed, "nsamples": nsamples, "seqlen": seqlen}
    if name == CONCATENATED_SAMPLER:
        record["separator"] = "eos"
    return {**record, "note": note}


def calibration_provenance(
    name: str, data_dir: Path | None, ids: torch.Tensor, note: str, *, seed: int, texts: list[str] | None = None
) -> dict:
    """Provenance of sampled windows ``ids`` ``(nsamples, seqlen)`` of set ``name``: its source,
    the sampler and a checksum of the ids (calibration, the gradient pass, held-out search text)."""
    nsamples, seqlen = ids.shape
    return {
        "dataset": name,
        "source": text_source(name, data_dir, texts),
        "sampler": sampler_record(note, nsamples=nsamples, seqlen=seqlen, seed=seed),
        "token_ids": token_record(ids),
    }


def evaluation_provenance(name: str, data_dir: Path | None, stream: torch.Tensor, note: str) -> dict:
    """Provenance of the perplexity stream ``(1, N)`` of evaluation set ``name`` (see :func:`evaluation_stream`)."""
    set_name = "c4_validation" if name == "c4" and data_dir is None else name
    return {"source": text_source(set_name, data_dir), "note": note, "token_ids": token_record(stream)}


def tasks_source(tasks_dir: Path | None, tasks: list[str]) -> dict:
    """Provenance of the zero-shot task data: per task, every local file under ``tasks_dir/<task>``
    (:func:`file_record`), or, with ``tasks_dir`` ``None``, the harness's hub tasks by name."""
    if tasks_dir is None:
        return {"kind": "hub", "tasks": {t: {"harness_task": t} for t in tasks}}
    records = {}
    for task in tasks:
        folder = Path(tasks_dir) / task
        files = sorted(f for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else []
        records[task] = {"files": [file_record(f) for f in files]}
    return {"kind": "local", "path": str(Path(tasks_dir).resolve()), "tasks": records}


def data_provenance(*, calibration=None, gradients=None, evaluation=None, zero_shot=None) -> dict:
    """The run log's ``data_provenance``: one entry per text source the run used (``None`` parts
    are left out). Build the parts with :func:`calibration_provenance` (calibration, and the
    gradient pass, or :func:`lib.sensitivity.gradient_provenance` from a cache),
    ``{set: evaluation_provenance(...)}`` and :func:`tasks_source`."""
    parts = {"calibration": calibration, "gradients": gradients, "evaluation": evaluation, "zero_shot": zero_shot}
    return {k: v for k, v in parts.items() if v is not None}
