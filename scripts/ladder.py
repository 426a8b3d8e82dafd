"""The model-size ladder (issue 14): SmolLM2-135M, Qwen2.5-Coder 0.5B and 1.5B pruned and scored alike.

Every run is ``python main.py --model M ... --nsamples 32 --seqlen 512 --eval_windows W
--log_json results/<model>/ladder/<name>.json``; a run whose log exists is skipped, so the
ladder resumes where it stopped. Within a model every run scores the same first ``W`` WikiText-2
windows (SmolLM2 40, the Qwen models 16), and the dense run puts the dense perplexity on those
windows in the table. ``--report`` builds the table and the figure from whatever logs exist.

Examples:
  python scripts/ladder.py --dry_run                       # print every command
  nohup nice -n 10 python scripts/ladder.py > ladder.out 2>&1 &   # run (or resume) the ladder
  python scripts/ladder.py --models qwen2.5-coder-0.5b     # one model only
  python scripts/ladder.py --runs dense 'wanda_0.7_*'      # only the runs whose names match
  python scripts/ladder.py --report                        # results/ladder.md + pic/ladder.png
Arguments after ``--`` go to every main.py run (e.g. ``-- --dtype float32``).
"""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from grid_runner import grid_arguments, run_missing  # noqa: E402

CALIBRATION = ["--nsamples", "32", "--seqlen", "512"]
# Every figure of the grids is fp32: --dtype auto would run bf16 on a CPU with bf16 units, and a
# grid filled across machines would mix precisions.
PRECISION = ["--dtype", "float32"]
ALLOCATIONS = {  # label -> main.py flags (alp: the reference alpha 0.15)
    "uniform": ["--allocation", "uniform"],
    "alp": ["--allocation", "alp"],
    "alp_auto": ["--allocation", "alp", "--alpha", "auto"],
    "owl": ["--allocation", "owl"],
    "dlp": ["--allocation", "dlp"],
    "dp": ["--allocation", "dp"],  # measured allocations (issue 16), default budgets
    "evo": ["--allocation", "evo"],
}
ALLOCATION_LABELS = {"alp": "alp (alpha 0.15)", "alp_auto": "alp (alpha auto)"}
FIVE, THREE = ["uniform", "alp", "alp_auto", "owl", "dlp"], ["uniform", "alp", "alp_auto"]
SEARCHED = [("wanda", 0.7, "dp"), ("wanda", 0.7, "evo")]
# issue 16 on SmolLM2: both pruners at 60 % with every allocation, and SparseGPT's dp and evo at 70 %
ALLOCATION_STUDY = tuple((p, 0.6, a) for p in ("wanda", "sparsegpt") for a in FIVE + ["dp", "evo"]) + (
    ("sparsegpt", 0.7, "dp"),
    ("sparsegpt", 0.7, "evo"),
)


@dataclass(frozen=True)
class LadderModel:
    """One rung: the --model value (None: the default SmolLM2), its size and its grid."""

    key: str  # folder under results/ and the --models name
    model: str | None
    params: float  # nominal parameter count (the figure's x axis)
    windows: int  # WikiText-2 windows (2048 tokens) every run of this model scores
    grid: tuple[tuple[str, float, str], ...]  # (pruner, sparsity, allocation label)


LADDER = (
    LadderModel(
        "smollm2",
        None,
        135e6,
        40,
        tuple((p, s, a) for p in ("wanda", "sparsegpt") for s in (0.5, 0.7) for a in FIVE)
        + tuple(SEARCHED)
        + ALLOCATION_STUDY,
    ),
    LadderModel(
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-0.5b",
        494e6,
        16,
        tuple([("wanda", 0.7, a) for a in FIVE] + [("sparsegpt", 0.7, a) for a in THREE] + SEARCHED),
    ),
    LadderModel("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b", 1.54e9, 16, tuple(("wanda", 0.7, a) for a in THREE)),
)
MODELS = {m.key: m for m in LADDER}


def log_folder(results: Path, model: LadderModel) -> Path:
    return results / model.key / "ladder"


def run_name(pruner: str, sparsity: float, allocation: str) -> str:
    return f"{pruner}_{sparsity}_{allocation}"


def commands(model: LadderModel, results: Path, extra: list[str]) -> list[tuple[Path, list[str]]]:
    """``(log path, argv)`` of every run of ``model``, the dense run first (argv runs in the checkout)."""
    base = [sys.executable, "main.py"] + (["--model", model.model] if model.model else [])
    runs = [("dense", ["--prune_method", "dense"])]
    runs += [
        (run_name(p, s, a), ["--prune_method", p, "--sparsity_ratio", str(s), *ALLOCATIONS[a]])
        for p, s, a in model.grid
    ]
    folder = log_folder(results, model)
    out = []
    for name, flags in runs:
        log = folder / f"{name}.json"
        tail = ["--eval_windows", str(model.windows), "--log_json", shown_path(log)]
        out.append((log, base + flags + CALIBRATION + PRECISION + tail + extra))
    return out


def run_ladder(
    models: list[LadderModel], results: Path, extra: list[str], *, dry_run: bool, patterns: list[str] | None = None
) -> int:
    """Run every missing log in order (only the runs whose name matches one of ``patterns``, shell
    style, when given); each run's console output goes to ``<name>.out`` beside it."""
    runs = [run for model in models for run in commands(model, results, extra)]
    return run_missing(runs, cwd=ROOT, tag="ladder", dry_run=dry_run, patterns=patterns)


def read_logs(results: Path, models=LADDER) -> dict[str, dict[str, dict]]:
    """``{model key: {run name: log}}`` for every ladder log present."""
    found = {}
    for model in models:
        folder = log_folder(results, model)
        logs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
        if logs:
            found[model.key] = logs
    return found


def dense_ppl(logs: dict[str, dict]) -> float | None:
    """The dense WikiText-2 perplexity of one model: its dense run, else any run's dense figure."""
    if "dense" in logs:
        return logs["dense"]["ppl"]["wikitext2"]
    for log in logs.values():
        if log.get("ppl_dense", {}).get("wikitext2") is not None:
            return log["ppl_dense"]["wikitext2"]
    return None


def shown_path(path: Path) -> str:
    """``path`` relative to the checkout when inside it (for tables and captions)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


NESTED_STAGES = ("prune_maths", "gradients")  # timed inside "prune" and "allocation"


def run_seconds(log: dict) -> float:
    """Wall seconds of one run: its top-level stages (load, allocation, prune, evaluations)."""
    return sum(sec for stage, sec in log["timings"].items() if stage not in NESTED_STAGES)


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.2f}"


README_MODELS = {
    "smollm2": "SmolLM2-135M",
    "qwen2.5-coder-0.5b": "Qwen2.5-Coder 0.5B",
    "qwen2.5-coder-1.5b": "Qwen2.5-Coder 1.5B",
}
README_ALLOCATIONS = {
    "uniform": "uniform",
    "alp": "alp, alpha 0.15",
    "alp_auto": "alp, `--alpha auto`",
    "owl": "owl",
    "dlp": "dlp (mean, as released)",
    "dp": "dp (measured costs)",
    "evo": "evo (searched)",
}


def readme_table(found: dict[str, dict[str, dict]]) -> str:
    """The README's ladder table: rows pruner x allocation, columns model x sparsity, perplexity
    with one decimal; ``-`` for a run of the grid still to run, blank for one outside the grid."""
    columns = [(m, s) for m in LADDER for s in sorted({s for _, s, _ in m.grid})]
    head = ["method", "allocation", *(f"{README_MODELS[m.key]} {s * 100:.0f} %" for m, s in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(model: LadderModel, name: str) -> str:
        log = found.get(model.key, {}).get(name)
        return f"{log['ppl']['wikitext2']:,.1f}" if log else "-"

    dense = [dense_ppl(found[m.key]) if m.key in found else None for m, _ in columns]
    lines.append("| dense | | " + " | ".join("-" if d is None else f"{d:,.1f}" for d in dense) + " |")
    for pruner in ("wanda", "sparsegpt"):
        for allocation, label in README_ALLOCATIONS.items():
            cells = [
                cell(m, run_name(pruner, s, allocation)) if (pruner, s, allocation) in m.grid else ""
                for m, s in columns
            ]
            if any(cells):
                lines.append(f"| {pruner} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_table(found: dict[str, dict[str, dict]], results: Path) -> str:
    """Markdown: ppl with rows pruner x allocation, columns model x sparsity; then one row per
    model with the dtype, windows, run times and the alpha ``--alpha auto`` chose."""
    columns = [(m, s) for m in LADDER if m.key in found for s in sorted({s for _, s, _ in m.grid})]
    header = "| method | allocation | " + " | ".join(f"{m.key} {s:.0%}" for m, s in columns) + " |"
    lines = [header, "|---|---|" + "---|" * len(columns)]
    lines.append("| dense | | " + " | ".join(_cell(dense_ppl(found[m.key])) for m, _ in columns) + " |")
    for pruner in ("wanda", "sparsegpt"):
        for allocation in ALLOCATIONS:
            cells = []
            for m, s in columns:
                log = found[m.key].get(run_name(pruner, s, allocation))
                cells.append(_cell(log["ppl"]["wikitext2"]) if log else "")
            if any(cells):
                lines.append(
                    f"| {pruner} | {ALLOCATION_LABELS.get(allocation, allocation)} | " + " | ".join(cells) + " |"
                )
    lines += ["", "| model | dtype | windows | runs | total run time (s) | mean per run (s) | alpha auto chose |"]
    lines.append("|---|---|---|---|---|---|---|")
    for model in LADDER:
        logs = found.get(model.key)
        if not logs:
            continue
        dtypes = sorted({log["dtype"] for log in logs.values()})
        seconds = [run_seconds(log) for log in logs.values()]
        chosen = [
            f"{log['prune_method']} {log['sparsity_ratio']:.0%}: {log['ratio_info'].get('alpha', float('nan')):+g}"
            for name, log in logs.items()
            if name.endswith("_alp_auto")
        ]
        windows = sorted({log["eval"]["windows"] for log in logs.values()})
        lines.append(
            f"| {model.key} | {', '.join(dtypes)} | {', '.join(map(str, windows))} | {len(logs)} | "
            f"{sum(seconds):,.0f} | {sum(seconds) / len(seconds):,.0f} | {'; '.join(chosen)} |"
        )
    lines += [
        "",
        f"Logs: `{shown_path(results)}/<model>/ladder/*.json` (commands: `python scripts/ladder.py --dry_run`).",
    ]
    return "\n".join(lines)


def ratio_points(found: dict[str, dict[str, dict]]) -> dict[tuple[str, float], dict[str, list[tuple[float, float]]]]:
    """``{(pruner, sparsity): {allocation: [(params, ppl / uniform ppl), ...]}}`` over the models."""
    points: dict = {}
    for model in LADDER:
        logs = found.get(model.key, {})
        for pruner, sparsity, allocation in model.grid:
            log, base = (
                logs.get(run_name(pruner, sparsity, allocation)),
                logs.get(run_name(pruner, sparsity, "uniform")),
            )
            if allocation == "uniform" or log is None or base is None:
                continue
            ratio = log["ppl"]["wikitext2"] / base["ppl"]["wikitext2"]
            points.setdefault((pruner, sparsity), {}).setdefault(allocation, []).append((model.params, ratio))
    return points


def _params_label(count: int) -> str:
    """``494_032_768`` -> ``"494M"``, ``1_543_714_304`` -> ``"1.5B"``."""
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


def plot_ladder(found: dict[str, dict[str, dict]], path: Path, *, source: str) -> Path | None:
    """One panel per pruner and sparsity: each allocation's ppl / uniform ppl against model size
    (log x, log y; the dashed line is uniform). ``source`` (logs, dtype, machine) is the caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    points = ratio_points(found)
    if not points:
        return None
    panels = sorted(points)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.4, 4.2 * len(panels)), 4.2), dpi=120, squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for allocation, xy in points[key].items():
            xs, ys = zip(*sorted(xy), strict=True)
            ax.plot(xs, ys, marker="o", label=ALLOCATION_LABELS.get(allocation, allocation))
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="uniform")
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = sorted({x for xy in points[key].values() for x, _ in xy})
        ax.set_xticks(sizes, [_params_label(x) for x in sizes])  # the models themselves, not powers of ten
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("parameters")
        ax.set_title(f"{key[0]} at {key[1]:.0%}")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("ppl / uniform ppl (WikiText-2)")
    axes[0][-1].legend(fontsize=8)
    fig.text(0.5, 0.005, textwrap.fill(source, 110), ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def report(results: Path, table_path: Path, figure_path: Path, machine: str) -> str:
    """Write the Markdown table and the figure from the logs present; return the table."""
    found = read_logs(results)
    if not found:
        raise SystemExit(f"no ladder logs under {results}/<model>/ladder/")
    dtypes = sorted({log["dtype"] for logs in found.values() for log in logs.values()})
    source = f"logs: {shown_path(results)}/<model>/ladder/*.json; dtype {', '.join(dtypes)}; {machine}"
    table = report_table(found, results)
    figure = plot_ladder(found, figure_path, source=source)
    text = f"{table}\n\nFigure: `{shown_path(figure)}` ({source}).\n" if figure else f"{table}\n"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(text)
    return f"{text}\nREADME table (paste under **Does it hold as models grow?**):\n\n{readme_table(found)}\n"


def machine_description() -> str:
    """E.g. ``2-core AMD EPYC CPU, no bf16 units``: what the caption says the runs ran on."""
    import os

    from lib.utils import cpu_has_fast_bf16

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")]
    except OSError:
        names = []
    units = "bf16 units" if cpu_has_fast_bf16() else "no bf16 units"
    return f"{os.cpu_count()}-core {names[0] if names else 'unknown'} CPU, {units}"


def main(argv: list[str] | None = None) -> int:
    p, argv, extra = grid_arguments(
        sys.argv[1:] if argv is None else argv,
        description=__doc__,
        models=list(MODELS),
        folder="ladder",
        table=ROOT / "results" / "ladder.md",
    )
    p.add_argument("--figure", default=str(ROOT / "pic" / "ladder.png"), help="--report: PNG figure")
    p.add_argument("--machine", default=None, help="--report: the machine in the caption (default: this one)")
    args = p.parse_args(argv)
    results = Path(args.results)
    if args.report:
        print(report(results, Path(args.table), Path(args.figure), args.machine or machine_description()))
        return 0
    return run_ladder([MODELS[k] for k in args.models], results, extra, dry_run=args.dry_run, patterns=args.runs)


if __name__ == "__main__":
    sys.exit(main())
