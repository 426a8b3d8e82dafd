"""Run a grid of ``main.py`` commands one at a time, skipping every run whose JSON log exists.

Shared by the resumable grids (``ladder.py``, ``recovery_grid.py``): a run that fails leaves no
log and stops the grid, so rerunning the same command resumes at that run.
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def run_missing(
    runs: list[tuple[Path, list[str] | Callable[[], list[str]]]],
    *,
    cwd: Path,
    tag: str,
    dry_run: bool,
    patterns: list[str] | None = None,
) -> int:
    """Run each ``(log path, argv)`` whose log is missing, in order, in ``cwd`` (only the runs whose
    log name matches one of the shell-style ``patterns``, when given). Each run's console output
    goes to ``<log>.out`` beside its log. An argv given as a function is built just before its run
    (from an earlier run's log; a dry run that finds that log missing says so). Returns 0, or the
    exit code of the first failed run."""
    for log, argv in runs:
        if patterns and not any(fnmatch.fnmatchcase(log.stem, p) for p in patterns):
            continue
        if log.exists():
            print(f"[{tag}] done: {log}")
            continue
        if callable(argv):
            try:
                argv = argv()
            except FileNotFoundError as missing:
                if not dry_run:
                    print(f"[{tag}] cannot run {log.stem} before {missing.filename} exists: run that first")
                    return 1
                print(f"[{tag}] would run {log.stem} once {missing.filename} exists")
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


def grid_arguments(
    argv: list[str], *, description: str, models: list[str], folder: str, table: Path
) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The options every grid script shares (``--models --results --runs --dry_run --report
    --table``) on a new parser; returns it with ``argv`` split at ``--`` into the script's own
    arguments and those passed to every ``main.py`` run. ``folder``: where logs go, for the help."""
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", choices=models, default=models, help="models to run")
    p.add_argument("--results", default=str(table.parent), help=f"logs go to RESULTS/<model>/{folder}/")
    p.add_argument("--runs", nargs="*", metavar="PATTERN", help="only runs whose name matches (e.g. 'wanda_0.7_*')")
    p.add_argument("--dry_run", action="store_true", help="print the commands of the missing runs, run nothing")
    p.add_argument("--report", action="store_true", help="build the report from the logs present")
    p.add_argument("--table", default=str(table), help="--report: Markdown table")
    return p, own, extra
