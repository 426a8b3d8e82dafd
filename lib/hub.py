"""The Hugging Face hub revision a run used, for cache keys and provenance records."""

from __future__ import annotations

import functools
import os
from pathlib import Path


def _cached_ref(repo_id: str, repo_type: str, ref: str = "main") -> str | None:
    """The commit ``ref`` pointed to when ``repo_id`` was last downloaded (from the local hub cache)."""
    from huggingface_hub import constants

    folder = f"{repo_type}s--{repo_id.replace('/', '--')}"
    path = Path(constants.HF_HUB_CACHE) / folder / "refs" / ref
    return path.read_text().strip() if path.is_file() else None


@functools.lru_cache(maxsize=32)
def resolved_revision(repo_id: str, *, repo_type: str = "model") -> str | None:
    """The commit sha of ``repo_id`` (``repo_type``: ``model`` or ``dataset``) that a load uses:
    the hub's answer when it can be asked, else the local cache's ``refs/main``, else ``None``."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or (
        repo_type == "dataset" and os.environ.get("HF_DATASETS_OFFLINE") == "1"
    )
    if not offline:
        from .data import hub_reachable

        if hub_reachable():
            try:
                from huggingface_hub import HfApi

                info = getattr(HfApi(), f"{repo_type}_info")(repo_id, timeout=10)
                return info.sha
            except Exception:  # noqa: BLE001 - any hub failure: fall back to the local cache's ref
                pass
    return _cached_ref(repo_id, repo_type)
