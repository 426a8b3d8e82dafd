"""The paper's tables (Table II: WikiText-2 ppl; Table IV: zero-shot accuracy) and figures from main.py JSON logs.

Reads every ``*.json`` under the given folders (recursively; files that are not run logs, such as
``results_zero_shot_*.json``, are skipped) and prints Markdown; ``--out FILE`` also writes it.

Examples:
  python scripts/make_tables.py logs/ --paper --out results/tables.md
  python scripts/make_tables.py logs/sweep --sparsity 0.6 --pic pic/sweep

Table II and Table IV take the unstructured, unquantized runs at ``--sparsity`` with the uniform or
the ALP allocation (ALP at ``--alpha``, with the paper's Stage-A statistic and loss). When several
logs fill one cell, the one evaluated on the most tokens (then calibrated on the most tokens) wins
and a note says so. Notes go to stderr.
Figures per model (under ``--pic``): ``ppl_vs_sparsity_<model>.png`` (needs runs at two or more
sparsities, e.g. from scripts/sweep.sh), ``block_ratios_<model>.png`` and ``zero_shot_<model>.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.utils import atomic_write_bytes  # noqa: E402

METHODS = {  # row key (pruner, plus _alp for the ALP allocation) -> row label, in the paper's order
    "dense": "Dense",
    "sparsegpt": "SparseGPT",
    "sparsegpt_alp": "ALP w. SparseGPT",
    "wanda": "Wanda",
    "wanda_alp": "ALP w. Wanda",
    "ria": "RIA",
    "ria_alp": "ALP w. RIA",
}
ALLOCATIONS = ("uniform", "alp", "none")
PAPER_GRADIENTS = {"grad_type": "l2_hundred_total", "grad_loss": "last_token"}  # main.py's defaults
TASK_ORDER = ("boolq", "rte", "hellaswag", "arc_challenge", "mnli", "openbookqa", "arc_easy", "winogrande", "piqa")
# Log "model" names of the paper's models (lower case), only to order the columns as the paper does.
MODEL_ORDER = ("llama-7b", "llama-13b", "llama-2-7b-hf", "llama-2-13b-hf", "meta-llama-3-8b", "opt-6.7b", "opt-13b")

# ALP paper, Table II: WikiText-2 perplexity at 70 % unstructured sparsity, 128 x 2048 C4 calibration,
# as transcribed in shared/docs/ALP_METHOD.md ("Published results").
PAPER_MODELS = ("LLaMA1-7B", "LLaMA1-13B", "LLaMA2-7B", "LLaMA2-13B", "LLaMA3-8B", "OPT-6.7B", "OPT-13B")
PAPER_TABLE_II = {
    "Dense": (5.68, 5.09, 5.47, 4.88, 5.68, 10.86, 10.13),
    "SparseGPT": (25.38, 19.37, 27.84, 19.38, 42.45, 20.55, 19.24),
    "ALP w. SparseGPT": (18.53, 16.56, 19.03, 16.81, 36.73, 20.51, 19.07),
    "Wanda": (86.38, 55.35, 76.84, 45.76, 120.83, 157.48, 55.26),
    "ALP w. Wanda": (24.14, 21.01, 29.18, 24.29, 100.55, 44.07, 33.16),
    "RIA": (83.11, 45.58, 62.92, 32.95, 126.54, 107.90, 38.52),
    "ALP w. RIA": (25.77, 18.86, 25.76, 20.34, 125.47, 43.05, 32.12),
}
PAPER_NOTE = "LLaMA3-8B dense: the paper prints 5.68, likely a typo (6.14 elsewhere in the literature)."


def note(message: str) -> None:
    """A remark for the user on stderr (stdout carries only the Markdown)."""
    print(f"[make_tables] {message}", file=sys.stderr)


def is_run_log(obj) -> bool:
    """True for a main.py ``--log_json`` object (it has ``prune_method`` and ``ppl``)."""
    return isinstance(obj, dict) and "prune_method" in obj and isinstance(obj.get("ppl"), dict)


def json_files(paths: list[str]) -> list[Path]:
    """Every ``*.json`` file under ``paths`` (folders searched recursively; files taken as given)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.rglob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def load_logs(paths: list[str]) -> list[dict]:
    """The run logs under ``paths``, each with its file in ``_path``; other JSON files are skipped."""
    logs = []
    for file in json_files(paths):
        try:
            obj = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            note(f"skip {file}: unreadable ({err.__class__.__name__})")
            continue
        if is_run_log(obj):
            logs.append({**obj, "_path": str(file)})
    return logs


def allocation(log: dict) -> str:
    """The log's layerwise allocation (``none`` for dense)."""
    return (log.get("ratio_info") or {}).get("allocation", "none")


def row_key(log: dict) -> str:
    """``pruner`` for a uniform run, ``pruner_alp`` for an ALP run (also ``--allocation alp``), ``dense``."""
    pruner = log["prune_method"].removesuffix("_alp")
    return f"{pruner}_alp" if allocation(log) == "alp" else pruner


def alpha_of(log: dict):
    """The ``--alpha`` of the run (a float, or ``auto``)."""
    return (log.get("args") or {}).get("alpha", (log.get("ratio_info") or {}).get("alpha"))


def same(a, b) -> bool:
    """Float equality up to rounding noise; False for non-numbers."""
    return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) < 1e-9


def paper_stage_a(log: dict) -> bool:
    """True unless the run's sensitivities used another statistic or loss than the paper's."""
    args = log.get("args") or {}
    return all(args.get(flag, value) == value for flag, value in PAPER_GRADIENTS.items())


def comparable(log: dict, alpha: float) -> bool:
    """Unstructured, unquantized, WikiText-2 evaluated, a Table II pruner, uniform or ALP (at ``alpha``)."""
    if log.get("sparsity_type") != "unstructured" or log.get("quantization") is not None:
        return False
    if allocation(log) not in ALLOCATIONS or row_key(log) not in METHODS or "wikitext2" not in log["ppl"]:
        return False
    return allocation(log) != "alp" or (same(alpha_of(log), alpha) and paper_stage_a(log))


def in_table(log: dict, sparsity: float, alpha: float) -> bool:
    """A run for Table II / IV: comparable and at ``sparsity`` (dense runs at any target)."""
    return comparable(log, alpha) and (row_key(log) == "dense" or same(log.get("sparsity_ratio"), sparsity))


def preference(log: dict) -> tuple:
    """Sort key among duplicate runs: most evaluation tokens, then most calibration tokens, then path."""
    calibration = log.get("calibration") or {}
    return (
        (log.get("eval") or {}).get("tokens") or 0,
        (calibration.get("nsamples") or 0) * (calibration.get("seqlen") or 0),
        log["_path"],
    )


def pick(groups: dict[tuple, list[dict]], *, quiet: bool = False) -> dict[tuple, dict]:
    """One log per key (see :func:`preference`), with a note for every key that had several."""
    chosen = {}
    for key, runs in groups.items():
        chosen[key] = max(runs, key=preference)
        if len(runs) > 1 and not quiet:
            note(f"{len(runs)} runs for {' / '.join(map(str, key))}; using {chosen[key]['_path']}")
    return chosen


def select(logs: list[dict], sparsity: float, alpha: float) -> dict[tuple[str, str], dict]:
    """The table runs, one per (model, row key)."""
    groups: dict[tuple, list[dict]] = {}
    for log in logs:
        if in_table(log, sparsity, alpha):
            groups.setdefault((log["model"], row_key(log)), []).append(log)
    return pick(groups)


def model_order(models) -> list[str]:
    """The paper's column order for its models, the others after them alphabetically."""
    rank = {name: i for i, name in enumerate(MODEL_ORDER)}
    return sorted(set(models), key=lambda m: (rank.get(m.lower(), len(rank)), m))


def dense_ppl(model: str, chosen: dict, logs: list[dict]) -> float | None:
    """WikiText-2 ppl of the dense model: its dense run, else ``ppl_dense`` of any run of the model."""
    if (model, "dense") in chosen:
        return chosen[(model, "dense")]["ppl"]["wikitext2"]
    runs = [r for r in logs if r["model"] == model and "wikitext2" in (r.get("ppl_dense") or {})]
    return max(runs, key=preference)["ppl_dense"]["wikitext2"] if runs else None


def fmt(value: float | None, scale: float = 1.0) -> str:
    """Two decimals, blank for a missing value."""
    return "" if value is None else f"{value * scale:.2f}"


def percent(fraction: float) -> str:
    """0.7 -> ``70 %``."""
    return f"{100 * fraction:g} %"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def settings_note(runs: list[dict]) -> str:
    """Which calibration and evaluation settings the runs used (flags mixed settings)."""
    counts: dict[str, int] = {}
    for r in runs:
        cal, ev = r.get("calibration") or {}, r.get("eval") or {}
        key = (
            f"calibration {cal.get('nsamples')} x {cal.get('seqlen')}, "
            f"WikiText-2 {ev.get('windows')} windows x {ev.get('seqlen')} tokens"
        )
        counts[key] = counts.get(key, 0) + 1
    mixed = " (mixed settings: compare with care)" if len(counts) > 1 else ""
    return "Runs: " + "; ".join(f"{k} ({n} run{'s' if n != 1 else ''})" for k, n in counts.items()) + mixed + "."


def table_ii(chosen: dict, logs: list[dict], sparsity: float, alpha: float) -> str:
    """Table II layout: WikiText-2 ppl, rows = method, columns = model (``chosen``: :func:`select`)."""
    title = f"### WikiText-2 perplexity, {percent(sparsity)} unstructured (Table II layout; ALP alpha {alpha:g})"
    if not chosen:
        return f"{title}\n\nNo unstructured, unquantized uniform or ALP runs at sparsity {sparsity:g}."
    models = model_order(m for m, _ in chosen)
    rows = []
    for key, label in METHODS.items():
        if key == "dense":
            cells = [fmt(dense_ppl(m, chosen, logs)) for m in models]
        else:
            cells = [fmt(chosen[(m, key)]["ppl"]["wikitext2"]) if (m, key) in chosen else "" for m in models]
        rows.append([label, *cells])
    lines = [title, "", *markdown_table(["method", *models], rows), "", settings_note(list(chosen.values()))]
    return "\n".join(lines)


def paper_table() -> str:
    """The published Table II, labelled as quoted."""
    rows = [[label, *(f"{v:.2f}" for v in values)] for label, values in PAPER_TABLE_II.items()]
    title = "### Quoted from the paper (ALP, Table II): WikiText-2 perplexity, 70 % unstructured, 128 x 2048 C4"
    return "\n".join([title, "", *markdown_table(["method", *PAPER_MODELS], rows), "", PAPER_NOTE])


def task_columns(runs: list[dict]) -> list[str]:
    """Tasks evaluated in any run (or unavailable there), the paper's six first."""
    tasks = set()
    for r in runs:
        tasks |= set(r["zero_shot"].get("tasks") or {}) | set(r["zero_shot"].get("unavailable") or [])
    rank = {t: i for i, t in enumerate(TASK_ORDER)}
    return sorted(tasks, key=lambda t: (rank.get(t, len(rank)), t))


def task_cell(zero_shot: dict, task: str) -> str:
    """Accuracy in %, ``n/a`` for a task unavailable in that run, blank when not run."""
    if task in (zero_shot.get("tasks") or {}):
        return fmt(zero_shot["tasks"][task].get("acc"), 100)
    return "n/a" if task in (zero_shot.get("unavailable") or []) else ""


def zero_shot_runs(chosen: dict) -> dict[tuple[str, str], dict]:
    """The table runs (``chosen``: :func:`select`) with a zero-shot result, in (model, method) order."""
    runs = {k: r for k, r in chosen.items() if r.get("zero_shot")}
    order = {m: i for i, m in enumerate(model_order(m for m, _ in runs))}
    methods = list(METHODS)
    return dict(sorted(runs.items(), key=lambda kv: (order[kv[0][0]], methods.index(kv[0][1]))))


def limit_note(runs: dict[tuple[str, str], dict]) -> str | None:
    """Footnote naming the per-task document limit of the rows that had one."""
    limited: dict[int, list[str]] = {}
    for (model, key), r in runs.items():
        if r["zero_shot"].get("limit"):
            limited.setdefault(r["zero_shot"]["limit"], []).append(f"{model} {METHODS[key]}")
    if not limited:
        return None
    parts = [f"first {n} documents per task ({', '.join(rows)})" for n, rows in sorted(limited.items())]
    return "Per-task limit: " + "; ".join(parts) + "."


def table_iv(chosen: dict, sparsity: float) -> str:
    """Table IV layout: zero-shot accuracy (%) per task, rows = model + method, with both means."""
    runs = zero_shot_runs(chosen)
    title = f"### Zero-shot accuracy (%), {percent(sparsity)} unstructured (Table IV layout)"
    if not runs:
        return f"{title}\n\nNo zero-shot results (main.py --eval_zero_shot) among these runs."
    tasks = task_columns(list(runs.values()))
    header = ["model", "method", *tasks, "Mean (true)", "Paper Mean (sum of six / 5)"]
    rows = []
    for (model, key), r in runs.items():
        mean = r["zero_shot"].get("mean") or {}
        cells = [task_cell(r["zero_shot"], t) for t in tasks]
        means = [fmt(mean.get("mean_acc"), 100), fmt(mean.get("paper_mean_sum_of_six_over_5"), 100)]
        rows.append([model, METHODS[key], *cells, *means])
    lines = [title, "", *markdown_table(header, rows)]
    footnote = limit_note(runs)
    return "\n".join(lines + ([""] + [footnote] if footnote else []))


def render(chosen: dict, logs: list[dict], sparsity: float, alpha: float, paper: bool) -> str:
    """The whole Markdown document (``chosen``: :func:`select`)."""
    parts = [table_ii(chosen, logs, sparsity, alpha)]
    if paper:
        parts.append(paper_table())
    parts.append(table_iv(chosen, sparsity))
    return "\n\n".join(parts) + "\n"


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Render ``fig`` to PNG and write it atomically; closes the figure."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def file_stem(model: str) -> str:
    """The model name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model)


def sparsity_curves(logs: list[dict], model: str, alpha: float) -> dict[str, dict[float, float]]:
    """Label (pruner, allocation) -> {sparsity: ppl} for the curves with two or more sparsities."""
    groups: dict[tuple, list[dict]] = {}
    for r in logs:
        if r["model"] == model and comparable(r, alpha) and row_key(r) != "dense":
            groups.setdefault((model, row_key(r), r["sparsity_ratio"]), []).append(r)
    curves: dict[str, dict[float, float]] = {}
    for (_, key, s), r in pick(groups, quiet=True).items():
        curves.setdefault(METHODS[key], {})[s] = r["ppl"]["wikitext2"]
    return {label: points for label, points in curves.items() if len(points) > 1}


def plot_ppl_vs_sparsity(chosen: dict, logs: list[dict], model: str, alpha: float, pic: Path) -> Path | None:
    """ppl_vs_sparsity_<model>.png: one line per pruner x allocation, log y, dense as a reference line."""
    curves = sparsity_curves(logs, model, alpha)
    if not curves:
        note(f"skip ppl_vs_sparsity_{file_stem(model)}.png: no pruner has runs at two or more sparsities")
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label in (lb for lb in METHODS.values() if lb in curves):
        points = sorted(curves[label].items())
        style = "-" if label.startswith("ALP") else "--"
        ax.plot([s for s, _ in points], [p for _, p in points], style, marker="o", label=label)
    dense = dense_ppl(model, chosen, logs)
    if dense is not None:
        ax.axhline(dense, color="grey", linestyle=":", linewidth=1, label=f"dense ({dense:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("target sparsity")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_title(f"{model}: perplexity vs sparsity, uniform vs ALP (alpha {alpha:g})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, pic / f"ppl_vs_sparsity_{file_stem(model)}.png")


def plot_ratios(chosen: dict, model: str, sparsity: float, pic: Path) -> Path | None:
    """block_ratios_<model>.png: the per-block sparsity of each ALP run at ``sparsity``."""
    runs = {key: chosen.get((model, key)) for key in METHODS if key.endswith("_alp")}
    curves = {METHODS[key]: r["layer_ratios"] for key, r in runs.items() if r and r.get("layer_ratios")}
    name = f"block_ratios_{file_stem(model)}.png"
    if not curves:
        note(f"skip {name}: no ALP run of {model} at sparsity {sparsity:g}")
        return None
    from lib.plots import plot_block_ratios

    title = f"{model}: ALP per-block sparsity at {sparsity:g}"
    return plot_block_ratios(pic / name, curves, target=sparsity, title=title)


def plot_zero_shot(runs: dict, model: str, pic: Path) -> Path | None:
    """zero_shot_<model>.png: grouped bars, accuracy per task, one bar per method."""
    mine = {key: r for (m, key), r in runs.items() if m == model}
    name = f"zero_shot_{file_stem(model)}.png"
    ran = set().union(*(r["zero_shot"].get("tasks") or {} for r in mine.values()))
    tasks = [t for t in task_columns(list(mine.values())) if t in ran]
    if not tasks:
        note(f"skip {name}: no zero-shot results for {model}")
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks)), 4.5), dpi=120)
    width = 0.8 / len(mine)
    for i, (key, r) in enumerate(mine.items()):
        results = r["zero_shot"].get("tasks") or {}
        accs = [100 * results[t]["acc"] if t in results else float("nan") for t in tasks]  # nan: no bar
        ax.bar([x + (i - (len(mine) - 1) / 2) * width for x in range(len(tasks))], accs, width, label=METHODS[key])
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{model}: zero-shot accuracy")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, pic / name)


def make_figures(chosen: dict, logs: list[dict], sparsity: float, alpha: float, pic: Path) -> list[Path]:
    """Every figure there is data for, per model (``chosen``: :func:`select`); returns the files written."""
    runs = zero_shot_runs(chosen)
    written = []
    for model in model_order(r["model"] for r in logs):
        written += [
            plot_ppl_vs_sparsity(chosen, logs, model, alpha, pic),
            plot_ratios(chosen, model, sparsity, pic),
            plot_zero_shot(runs, model, pic),
        ]
    return [p for p in written if p is not None]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="folders searched recursively for *.json run logs, or JSON files")
    p.add_argument("--sparsity", type=float, default=0.7, help="target sparsity of the tables (default 0.7)")
    p.add_argument("--alpha", type=float, default=0.15, help="ALP runs at other alphas are left out (default 0.15)")
    p.add_argument("--paper", action="store_true", help="add the published Table II, quoted from the paper")
    p.add_argument("--out", metavar="FILE", help="also write the Markdown here (atomically)")
    p.add_argument("--pic", default="pic", metavar="DIR", help="folder for the figures (default pic/)")
    p.add_argument("--no_figures", action="store_true", help="tables only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the tables, write ``--out`` and the figures; 1 when no run log was found."""
    args = parse_args(argv)
    try:
        logs = load_logs(args.paths)
    except FileNotFoundError as err:
        note(str(err))
        return 1
    if not logs:
        note(f"no main.py run logs under {' '.join(args.paths)}")
        return 1
    chosen = select(logs, args.sparsity, args.alpha)
    text = render(chosen, logs, args.sparsity, args.alpha, args.paper)
    print(text, end="")
    if args.out:
        note(f"wrote {atomic_write_bytes(args.out, text.encode('utf-8'))}")
    if not args.no_figures:
        for path in make_figures(chosen, logs, args.sparsity, args.alpha, Path(args.pic)):
            note(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
