"""The recovery grid (issue 15): how much DSnoT and reconstruction give back, for every pruner.

SmolLM2 (first 20 WikiText-2 windows): Wanda, SparseGPT, RIA and magnitude x {uniform,
``--alpha auto``} x {70 %, 50 %} x {no recovery, ``--refine dsnot``, ``--reconstruct``, both};
Qwen2.5-Coder 0.5B (first 16 windows): Wanda and SparseGPT at 70 % uniform, the same four.
Calibration 32 x 512 C4 tokens and fp32 (``--dtype float32``) everywhere. Every run is ``python main.py ... --log_json
results/<model>/recovery/grid/<pruner>_<sparsity>_<allocation>_<recovery>.json``; a run whose log
exists is skipped, so the grid resumes where it stopped. In an ``--alpha auto`` row only the
no-recovery run searches; the other three are given the alpha it chose (the search ranks the
pruner's masks alone, ``lib.options.PruningOptions.mask_only``, so it would choose the same), which
saves three searches per row. Once its 70 % runs are all logged, SmolLM2's best 70 % run (lowest
perplexity) is run again on every WikiText-2 window (``best_0.7_all_windows.json``). ``--report``
tabulates whatever logs exist: perplexity, the zeros of the pruned model (what ``--save_model``
writes), and the time each recovery adds (its logged ``refine`` + ``reconstruct`` seconds, and that
over the run's pruning time without them).

Examples:
  python scripts/recovery_grid.py --dry_run                     # print every missing command
  nohup nice -n 10 python scripts/recovery_grid.py > recovery.out 2>&1 &
  python scripts/recovery_grid.py --runs 'wanda_0.7_*'          # only the matching runs
  python scripts/recovery_grid.py --report                      # results/recovery_grid.md
Arguments after ``--`` go to every main.py run.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from grid_runner import grid_arguments, run_missing  # noqa: E402
from ladder import ALLOCATIONS, CALIBRATION, PRECISION, shown_path  # noqa: E402
from make_tables import markdown_table  # noqa: E402

from lib.recovery import RecoveryOptions  # noqa: E402

RECOVERIES = {  # label -> main.py flags
    "none": [],
    "reconstruct": ["--reconstruct"],
    "dsnot": ["--refine", "dsnot"],
    "both": ["--refine", "dsnot", "--reconstruct"],
}
PRUNERS = ("wanda", "sparsegpt", "ria", "magnitude")
RECOVERY_STAGES = ("refine", "reconstruct")  # timed inside "prune"
SEARCHED_ROW_NOTE = (  # the captions' word on the alpha of an --alpha auto row
    "An `alp_auto` row names the alpha its no-recovery run's search chose; its other runs were given "
    "that alpha (the search ranks masks alone, so it chooses the same)."
)


@dataclass(frozen=True)
class GridModel:
    """One model of the grid: the --model value (None: the default SmolLM2) and its configurations."""

    key: str  # folder under results/ and the --models name
    model: str | None
    windows: int  # WikiText-2 windows (2048 tokens) every run of this model scores
    configs: tuple[tuple[str, float, str], ...]  # (pruner, sparsity, allocation label of ladder.ALLOCATIONS)
    # sparsities whose best run (lowest perplexity of the grid) is run again on every window
    best_on_every_window: tuple[float, ...] = ()


GRID = (
    GridModel(
        "smollm2",
        None,
        20,
        tuple((p, s, a) for s in (0.7, 0.5) for a in ("uniform", "alp_auto") for p in PRUNERS),
        best_on_every_window=(0.7,),
    ),
    GridModel("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b", 16, tuple((p, 0.7, "uniform") for p in PRUNERS[:2])),
)
MODELS = {m.key: m for m in GRID}


def log_folder(results: Path, model: GridModel) -> Path:
    return results / model.key / "recovery" / "grid"


def run_name(pruner: str, sparsity: float, allocation: str, recovery: str) -> str:
    return f"{pruner}_{sparsity}_{allocation}_{recovery}"


def searched_flag(allocation_flags: list[str]) -> str | None:
    """The flag given ``auto`` in an allocation's flags (``--alpha``), or None."""
    pairs = zip(allocation_flags, allocation_flags[1:], strict=False)
    return next((flag for flag, value in pairs if value == "auto"), None)


def with_chosen_value(allocation_flags: list[str], searched_log: Path) -> list[str]:
    """``allocation_flags`` with ``auto`` replaced by the value the search of ``searched_log`` chose."""
    flag = searched_flag(allocation_flags)
    chosen = json.loads(searched_log.read_text())["ratio_info"][flag.removeprefix("--")]
    return [str(chosen) if value == "auto" else value for value in allocation_flags]


def commands(model: GridModel, results: Path, extra: list[str]) -> list[tuple[Path, list[str] | Callable]]:
    """``(log path, argv)`` of every run of ``model``, in grid order (argv runs in the checkout). The
    recovery runs of a searched (``auto``) row get a function that builds their argv from the value
    the row's no-recovery run chose; each of ``model.best_on_every_window`` ends the list with a
    function that builds the argv of that sparsity's best run on every window, once all are logged."""
    folder = log_folder(results, model)
    out = []
    for config in model.configs:
        for recovery in RECOVERIES:
            log = folder / f"{run_name(*config, recovery)}.json"
            out.append((log, run_argv(model, results, config, recovery, extra, windows=model.windows, log=log)))
    for sparsity in model.best_on_every_window:
        log = best_log(results, model, sparsity)
        out.append((log, partial(_best_on_every_window, model, results, sparsity, extra, log)))
    return out


def run_argv(
    model: GridModel,
    results: Path,
    config: tuple,
    recovery: str,
    extra: list[str],
    *,
    windows: int | None,
    log: Path,
    searched: bool = False,
) -> list[str] | Callable:
    """The main.py argv of ``config`` (pruner, sparsity, allocation) with ``recovery``, scoring the
    first ``windows`` WikiText-2 windows (None: all) and logging to ``log``; a function when it
    needs the alpha its row's no-recovery run chose (always, for a ``searched`` row's rerun)."""
    pruner, sparsity, allocation = config
    allocation_flags = ALLOCATIONS[allocation]
    head = [sys.executable, "main.py"] + (["--model", model.model] if model.model else [])
    head += ["--prune_method", pruner, "--sparsity_ratio", str(sparsity)]
    window_flags = [] if windows is None else ["--eval_windows", str(windows)]
    tail = RECOVERIES[recovery] + CALIBRATION + PRECISION + window_flags + ["--log_json", shown_path(log)] + extra
    if (recovery != "none" or searched) and searched_flag(allocation_flags):
        searched_log = log_folder(results, model) / f"{run_name(*config, 'none')}.json"
        return partial(_with_searched_value, head, allocation_flags, searched_log, tail)
    return head + allocation_flags + tail


def _with_searched_value(head: list[str], allocation_flags: list[str], searched_log: Path, tail: list[str]):
    return head + with_chosen_value(allocation_flags, searched_log) + tail


def best_log(results: Path, model: GridModel, sparsity: float) -> Path:
    return log_folder(results, model) / f"best_{sparsity}_all_windows.json"


def best_run(results: Path, model: GridModel, sparsity: float) -> tuple[tuple, str]:
    """``(config, recovery)`` of the lowest-perplexity run of ``model``'s grid at ``sparsity``;
    raises FileNotFoundError naming the first of its runs not logged yet."""
    runs = [(config, recovery) for config in model.configs if config[1] == sparsity for recovery in RECOVERIES]
    logs = {run: log_folder(results, model) / f"{run_name(*run[0], run[1])}.json" for run in runs}
    for path in logs.values():
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "a run of the grid is not logged yet", str(path))
    return min(runs, key=lambda run: json.loads(logs[run].read_text())["ppl"]["wikitext2"])


def _best_on_every_window(model: GridModel, results: Path, sparsity: float, extra: list[str], log: Path):
    config, recovery = best_run(results, model, sparsity)
    argv = run_argv(model, results, config, recovery, extra, windows=None, log=log, searched=True)
    return argv() if callable(argv) else argv


def added_seconds(log: dict) -> float:
    """Seconds the recovery stages (DSnoT, reconstruction) added to the run's pruning."""
    return sum(log["timings"].get(stage, 0.0) for stage in RECOVERY_STAGES)


def fit_step_mark(log: dict) -> str:
    """For a reconstructing run whose AdamW steps differ from today's default, the setting it used
    (`` [lr 0.005]``: one absolute rate for every tensor, the default before ``--reconstruct_rel_lr``;
    `` [rel_lr 0.01]``: another relative rate); ``""`` otherwise."""
    options = (log.get("recovery") or {}).get("options") or {}
    if not options.get("reconstruct"):
        return ""
    if options.get("lr") is not None:
        return f" [lr {options['lr']:g}]"
    if options["rel_lr"] != RecoveryOptions.rel_lr:
        return f" [rel_lr {options['rel_lr']:g}]"
    return ""


def machine_label(log: dict) -> str:
    """The vector units of the CPU that ran a log (``host.cpu_units``; a GPU by name). Logs from
    before ``host`` was recorded: ``no-bf16 CPU`` where ``--dtype auto`` resolved to fp32 on the CPU,
    which it does only without bf16 units, else ``unrecorded``."""
    host = log.get("host")
    if host:
        return host["gpu"] or host["cpu_units"]
    if log.get("device") == "cpu" and log.get("args", {}).get("dtype") == "auto" and log["dtype"] == "float32":
        return "no-bf16 CPU"
    return "unrecorded"


def machines_cell(logs: dict[str, dict]) -> str:
    """One row's machines: the label alone when every run shares it, else each with its runs."""
    by_label: dict[str, list[str]] = {}
    for recovery, log in logs.items():
        by_label.setdefault(machine_label(log), []).append(recovery)
    if len(by_label) == 1:
        return next(iter(by_label))
    return ", ".join(f"{label} ({', '.join(runs)})" for label, runs in by_label.items())


def allocation_label(allocation: str, logs: dict[str, dict]) -> str:
    """``allocation``, and for a searched row the value its runs used (``alp_auto, alpha -0.15``);
    raises when the runs of one row disagree on it."""
    flag = searched_flag(ALLOCATIONS[allocation])
    if flag is None:
        return allocation
    name = flag.removeprefix("--")
    values = {log["ratio_info"][name] for log in logs.values()}
    if len(values) != 1:
        raise ValueError(f"the runs of one {allocation} row used different {flag} values: {sorted(values)}")
    return f"{allocation}, {name} {values.pop()}"


def report_table(results: Path, models=GRID) -> str:
    """Markdown: one row per (model, pruner, sparsity, allocation); per recovery its perplexity and,
    beside the others, ``+seconds (x the pruning time without recovery)``; the zeros of the model
    and the machine of each run (``machines_cell``). Raises on a log that did not run in fp32."""
    head = ["model", "pruner", "sparsity", "allocation", *RECOVERIES, "sparsity of the pruned model", "machine"]
    rows = []
    for model in models:
        folder = log_folder(results, model)
        for pruner, sparsity, allocation in model.configs:
            logs = {}
            for recovery in RECOVERIES:
                path = folder / f"{run_name(pruner, sparsity, allocation, recovery)}.json"
                if path.exists():
                    logs[recovery] = json.loads(path.read_text())
                    if logs[recovery]["dtype"] != "float32":  # the grid pins fp32 (ladder.PRECISION)
                        raise ValueError(f"{path} ran in {logs[recovery]['dtype']}, not fp32: move it aside")
            if not logs:
                continue
            cells = []
            for recovery in RECOVERIES:
                log = logs.get(recovery)
                if log is None:
                    cells.append("-")
                    continue
                cell = f"{log['ppl']['wikitext2']:,.1f}"
                if recovery != "none":
                    added = added_seconds(log)
                    cell += f" (+{added:.0f} s, {added / (log['timings']['prune'] - added):.2f}x)" + fit_step_mark(log)
                cells.append(cell)
            zeros = sorted({f"{log['actual_sparsity']:.4f}" for log in logs.values()})
            label = allocation_label(allocation, logs)
            rows.append([model.key, pruner, f"{sparsity:.0%}", label, *cells, " / ".join(zeros), machines_cell(logs)])
    return "\n".join(markdown_table(head, rows))


def best_table(results: Path, models=GRID) -> str:
    """Markdown: per (model, sparsity) of ``best_on_every_window`` whose run on every window is
    logged, the grid's best run, its perplexity on the grid's windows and on every window, and the
    dense model's on every window. Raises when that log is not the grid's best run any more (other
    ratios, pruner, recovery or reconstruction steps)."""
    head = [
        "model",
        "sparsity",
        "best run of the grid",
        "perplexity, grid windows",
        "perplexity, all windows",
        "dense, all windows",
        "sparsity of the pruned model",
    ]
    rows = []
    for model in models:
        for sparsity in model.best_on_every_window:
            path = best_log(results, model, sparsity)
            if not path.exists():
                continue
            full = json.loads(path.read_text())
            config, recovery = best_run(results, model, sparsity)
            name = run_name(*config, recovery)
            grid_log = json.loads((log_folder(results, model) / f"{name}.json").read_text())
            same = ("prune_method", "refine", "reconstruct")
            if (
                full["layer_ratios"] != grid_log["layer_ratios"]
                or any(full["args"][key] != grid_log["args"][key] for key in same)
                or fit_step_mark(full) != fit_step_mark(grid_log)
            ):
                raise ValueError(f"{path} is not the grid's best run {name} any more: move it aside and rerun it")
            windows = full["eval"]["windows"]
            rows.append(
                [
                    model.key,
                    f"{sparsity:.0%}",
                    f"`{name}` ({allocation_label(config[2], {recovery: grid_log})})",
                    f"{grid_log['ppl']['wikitext2']:,.1f} ({grid_log['eval']['windows']})",
                    f"{full['ppl']['wikitext2']:,.1f} ({windows})",
                    f"{full['ppl_dense']['wikitext2']:,.2f} ({windows})",
                    f"{full['actual_sparsity']:.4f}",
                ]
            )
    return "\n".join(markdown_table(head, rows)) if rows else ""


def report(results: Path, table_path: Path) -> str:
    """Write the table (with its caption) to ``table_path`` atomically and return it."""
    from lib.utils import atomic_write_text

    caption = (
        f"Logs: `{shown_path(results)}/<model>/recovery/grid/*.json` (commands: "
        "`python scripts/recovery_grid.py --dry_run`). Perplexity on the first 20 (SmolLM2) or 16 (Qwen 0.5B) "
        "WikiText-2 windows; 32 x 512 C4 calibration; `(+s, x)`: seconds DSnoT and reconstruction added and "
        "that over the run's pruning time without them; the last column lists each distinct fraction of "
        "zeros among the row's runs, and the machine column the CPU vector units of each run's machine (the "
        "times depend on them; `no-bf16 CPU`: a log from before machines were recorded, run in fp32 under "
        "`--dtype auto`, so on a CPU without bf16 units). Every run is fp32. Reconstruction steps each tensor by "
        f"`--reconstruct_rel_lr` {RecoveryOptions.rel_lr:g} x its RMS unless a cell says otherwise: `[lr 0.005]` "
        "marks a fit with one absolute AdamW rate for every tensor (the default before `--reconstruct_rel_lr`). "
        + SEARCHED_ROW_NOTE
    )
    text = report_table(results) + "\n\n" + caption + "\n"
    best = best_table(results)
    if best:
        text += (
            "\nThe best run of a sparsity's grid, evaluated again on every WikiText-2 window "
            "(`best_<sparsity>_all_windows.json`; window counts in brackets):\n\n" + best + "\n"
        )
    atomic_write_text(table_path, text)
    return text


def main(argv: list[str] | None = None) -> int:
    p, argv, extra = grid_arguments(
        sys.argv[1:] if argv is None else argv,
        description=__doc__,
        models=list(MODELS),
        folder="recovery/grid",
        table=ROOT / "results" / "recovery_grid.md",
    )
    args = p.parse_args(argv)
    results = Path(args.results)
    if args.report:
        print(report(results, Path(args.table)))
        return 0
    runs = [run for key in args.models for run in commands(MODELS[key], results, extra)]
    return run_missing(runs, cwd=ROOT, tag="recovery", dry_run=args.dry_run, patterns=args.runs)


if __name__ == "__main__":
    sys.exit(main())
