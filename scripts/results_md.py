"""Shared pieces of the results/README.md generator (``scripts/results_readme.py``): the results
folder being read, Markdown tables, number formats, and the caption every table carries.

Every helper reads what a log records and never supplies a figure of its own; a missing value
renders as a blank cell.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _script(name: str):
    """``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tables = _script("make_tables")
collect_results = _script("collect_results")

CPU = "the 2-core AMX CPU of the development machine (AMD EPYC with AVX512-BF16)"
MIB = 2**20


@dataclass(frozen=True)
class Results:
    """The results folder being read; paths are shown as ``results/...`` whatever its location."""

    root: Path

    def path(self, rel: str) -> Path:
        return self.root / rel

    def show(self, rel: str | Path) -> str:
        """``rel`` (relative to the root, or absolute inside it) as a code span ``results/...``;
        a trailing ``/`` is kept."""
        slash = "/" if str(rel).endswith("/") else ""
        rel = Path(rel)
        rel = rel.relative_to(self.root) if rel.is_absolute() else rel
        return f"`results/{rel.as_posix()}{slash}`"

    def load(self, rel: str) -> dict:
        return json.loads(self.path(rel).read_text())

    def logs(self, folder: str) -> list[tuple[str, dict]]:
        """``(file name, run log)`` of every main.py log directly in ``folder``, by file name."""
        found = []
        for file in sorted(self.path(folder).glob("*.json")):
            obj = json.loads(file.read_text())
            if make_tables.is_run_log(obj):
                found.append((file.name, obj))
        return found


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (cells converted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def num(value, digits: int = 2) -> str:
    """``1,234.57`` style; blank for ``None``."""
    return "" if value is None else f"{value:,.{digits}f}"


def ppl(log: dict, dataset: str = "wikitext2") -> float | None:
    return (log.get("ppl") or {}).get(dataset)


def dense_ppl(log: dict) -> float | None:
    return (log.get("ppl_dense") or {}).get("wikitext2")


def calibration(log: dict) -> str:
    cal = log.get("calibration") or {}
    return f"{cal.get('nsamples')} x {cal.get('seqlen')}" if cal else "-"


def windows(log: dict) -> str:
    ev = log.get("eval") or {}
    return f"{ev.get('windows')} x {ev.get('seqlen')}" if ev else "-"


def timing(log: dict, stage: str) -> float | None:
    return (log.get("timings") or {}).get(stage)


def env_note(logs: list[dict]) -> str:
    """Which dtype / device / torch the logs record, with counts (``not recorded`` when absent)."""
    counts: dict[str, int] = {}
    for log in logs:
        parts = [f"{k} {log[k]}" for k in ("dtype", "device", "torch") if log.get(k)]
        key = ", ".join(parts) or "dtype not recorded"
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{k} ({n} log{'s' if n != 1 else ''})" for k, n in counts.items())


def settings_note(logs: list[dict]) -> str:
    """Calibration and evaluation settings of the logs, with counts."""
    counts: dict[str, int] = {}
    for log in logs:
        key = f"calibration {calibration(log)} C4 tokens, WikiText-2 {windows(log)} tokens"
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{k} ({n} log{'s' if n != 1 else ''})" for k, n in counts.items())


def caption(res: Results, source: str, logs: list[dict], command: str | None, extra: str = "") -> str:
    """The standard caption: source, settings, dtype / device, regenerating command."""
    parts = [f"Source: {res.show(source)}."]
    if logs:
        parts.append(f"Settings: {settings_note(logs)}." if any(log.get("calibration") for log in logs) else "")
        parts.append(f"Recorded: {env_note(logs)}.")
    if extra:
        parts.append(extra)
    text = " ".join(p for p in parts if p)
    return text + (f"\n\n```bash\n{command}\n```" if command else "")


def by_name(logs: list[tuple[str, dict]]) -> dict[str, dict]:
    return {name.removesuffix(".json"): log for name, log in logs}


def median_of(value) -> tuple[float | None, int]:
    """``(figure, runs)`` of a timing field: a number, a list of runs (their median), or a dict
    with ``median`` and / or ``runs``; ``(None, 0)`` for anything else."""
    if isinstance(value, dict):
        runs = value.get("runs") or value.get("seconds") or []
        median = value.get("median")
        if median is None and isinstance(runs, list) and runs:
            median = statistics.median(runs)
        return (median, len(runs) if isinstance(runs, list) else 1) if median is not None else (None, 0)
    if isinstance(value, list):
        return (statistics.median(value), len(value)) if value else (None, 0)
    return (value, 1) if isinstance(value, int | float) else (None, 0)
