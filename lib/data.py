"""Text sources (local-first), the calibration sampler and the evaluation token stream.

Local layout (as in ``../shared/data``; pass ``--data_dir`` or set ``$ALP_DATA_DIR``)::

    wikitext2/wikitext-2-raw-v1.test.jsonl   {"text"} per row, the HF wikitext-2-raw-v1 test split
    c4/c4-en-train.00000-of-01024.first1000.jsonl   {"text", ...} per document

Without a data directory the sets come from the Hugging Face hub; when the hub is not
reachable the ``shared/data`` folder beside the checkout is used if it exists.
"""

from __future__ import annotations

import functools
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
# Below this many documents the pool is tokenized up front so its size can be checked.
_SMALL_POOL_DOCS = 20_000
_FALLBACK_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def resolve_data_dir(arg: str | None, needed: tuple[str, ...] = ()) -> Path | None:
    """The local data folder from ``--data_dir`` or ``$ALP_DATA_DIR`` (``None``: use the hub).

    Raises ``ValueError`` when the folder or one of the ``needed`` sets is missing.
    """
    value = arg or os.environ.get(DATA_ENV)
    if not value:
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

    if name == "wikitext2":
        return list(load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])
    if name == "c4":
        files = {"train": "en/c4-train.00000-of-01024.json.gz"}
        return list(load_dataset("allenai/c4", data_files=files, split="train")["text"])
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(LOCAL_FILES)}")


def load_texts(name: str, data_dir: Path | None) -> list[str]:
    """Rows of WikiText-2 test (``wikitext2``) or documents of C4 train shard 0 (``c4``)."""
    if name not in LOCAL_FILES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(LOCAL_FILES)}")
    if data_dir is not None:
        return _read_jsonl_texts(data_dir / LOCAL_FILES[name])
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    if not offline and hub_reachable():
        try:
            return _hub_texts(name)
        except Exception as err:  # any hub/network failure: fall back to local files below
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    else:
        reason = "offline"
    fallback = _FALLBACK_DIR / LOCAL_FILES[name]
    if fallback.is_file():
        print(f"[data] hub not usable ({reason}); reading {fallback}")
        return _read_jsonl_texts(fallback)
    raise ValueError(f"cannot load {name} from the hub ({reason}); pass --data_dir or set ${DATA_ENV}")


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

    A data directory must hold ``tasks/``; without one, the hub is used when reachable, else
    the ``shared/data/tasks`` folder beside the checkout.
    """
    if data_dir is not None:
        if not (data_dir / "tasks").is_dir():
            raise ValueError(f"data directory {data_dir} has no tasks/ folder (needed for --eval_zero_shot)")
        return data_dir / "tasks"
    if os.environ.get("HF_DATASETS_OFFLINE") != "1" and hub_reachable():
        return None
    if (_FALLBACK_DIR / "tasks").is_dir():
        return _FALLBACK_DIR / "tasks"
    raise ValueError(f"zero-shot tasks: the hub is not reachable; pass --data_dir or set ${DATA_ENV}")


EVAL_SETS = ("wikitext2", "c4")
C4_EVAL_DOCS = 1100  # documents joined for C4 perplexity, as in the reference (its first 256 windows)
C4_EVAL_WINDOWS = 256


def _c4_validation_texts() -> list[str]:
    from datasets import load_dataset

    files = {"validation": "en/c4-validation.00000-of-00008.json.gz"}
    return list(load_dataset("allenai/c4", data_files=files, split="validation")["text"][:C4_EVAL_DOCS])


def evaluation_stream(name: str, tokenizer, data_dir: Path | None, seqlen: int) -> tuple[torch.Tensor, str]:
    """Token stream ``(1, N)`` for perplexity on ``name`` (see :data:`EVAL_SETS`) and where it came from.

    ``wikitext2``: the test split joined with ``"\n\n"``. ``c4``: the first 1,100 documents of the
    validation shard joined with ``" "``, cut to 256 windows of ``seqlen``; offline only the local
    train-shard sample exists, which is used instead and said so (the calibration sampler draws
    from the same documents, so that figure is not a held-out one).
    """
    if name == "wikitext2":
        return eval_token_stream(tokenizer, load_texts("wikitext2", data_dir)), "WikiText-2 test"
    if name != "c4":
        raise ValueError(f"unknown evaluation set {name!r}; choose from {', '.join(EVAL_SETS)}")
    docs, note = None, "C4 validation shard 0, first 1,100 documents"
    if data_dir is None and hub_reachable():
        try:
            docs = _c4_validation_texts()
        except Exception as err:  # any hub/network failure: fall back to the local sample below
            print(f"[data] C4 validation not loadable ({type(err).__name__}); using the local sample")
    if docs is None:
        docs = load_texts("c4", data_dir)[:C4_EVAL_DOCS]
        note = "local C4 train-shard sample (no validation split offline; overlaps the calibration pool)"
    ids = tokenizer(" ".join(docs), return_tensors="pt").input_ids[:, : C4_EVAL_WINDOWS * seqlen]
    return ids, note


def eval_token_stream(tokenizer, rows: list[str]) -> torch.Tensor:
    """Rows joined with ``"\\n\\n"`` and tokenized once: LongTensor ``(1, n_tokens)``."""
    return tokenizer("\n\n".join(rows), return_tensors="pt").input_ids
