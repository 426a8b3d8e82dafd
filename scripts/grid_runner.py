"""Run a grid of ``main.py`` commands one at a time, skipping every run whose JSON log exists.

Shared by the resumable grids (``ladder.py``, ``recovery_grid.py``): a run that fails leaves no
log and stops the grid, so rerunning the same command resumes at that run.
"""

from __future__ import annotations

import fnmatch
import subprocess
import time
from pathlib import Path


def run_missing(
    runs: list[tuple[Path, list[str]]],
    *,
    cwd: Path,
    tag: str,
    dry_run: bool,
    patterns: list[str] | None = None,
) -> int:
    """Run each ``(log path, argv)`` whose log is missing, in order, in ``cwd`` (only the runs whose
    log name matches one of the shell-style ``patterns``, when given). Each run's console output
    goes to ``<log>.out`` beside its log. Returns 0, or the exit code of the first failed run."""
    for log, argv in runs:
        if patterns and not any(fnmatch.fnmatchcase(log.stem, p) for p in patterns):
            continue
        if log.exists():
            print(f"[{tag}] done: {log}")
            continue
        print(f"[{tag}] {'would run' if dry_run else 'running'}: python {' '.join(argv[1:])}", flush=True)
        if dry_run:
            continue
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log.with_suffix(".out"), "w") as console:
            code = subprocess.run(argv, cwd=cwd, stdout=console, stderr=subprocess.STDOUT).returncode
        if code != 0:
            print(f"[{tag}] failed ({code}) after {time.perf_counter() - start:.0f} s; see {log.with_suffix('.out')}")
            return code
        print(f"[{tag}] {time.perf_counter() - start:.0f} s -> {log}", flush=True)
    return 0
