"""Sections of results/README.md for the CPU runs (``results/smollm2/``, ``results/bench/``).

Each function takes the :class:`results_md.Results` being read and returns one Markdown section
(its ``## `` title first); ``scripts/results_readme.py`` lists them in :data:`SECTIONS`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_md import (  # noqa: E402
    Results,
    by_name,
    caption,
    collect_results,
    dense_ppl,
    env_note,
    make_tables,
    median_of,
    num,
    ppl,
    table,
    timing,
)

FP32_REFERENCE = "smollm2/reproduce/wanda_alp_0.7_full_float32.json"  # bare main.py on a CPU without bf16 units


def reference_run(res: Results) -> str:
    alp, uni = res.load("smollm2/wanda_alp_0.7_full.json"), res.load("smollm2/wanda_0.7_full.json")
    runs = [
        ("Wanda, uniform", "smollm2/wanda_0.7_full.json", uni),
        ("Wanda-ALP (alpha 0.15)", "smollm2/wanda_alp_0.7_full.json", alp),
    ]
    dense_rows = [("dense", "smollm2/wanda_alp_0.7_full.json", alp)]
    if res.path(FP32_REFERENCE).exists():
        fp32 = res.load(FP32_REFERENCE)
        runs.append(("Wanda-ALP (alpha 0.15)", FP32_REFERENCE, fp32))
        dense_rows.append(("dense", FP32_REFERENCE, fp32))
    rows = [
        ["dense", log.get("dtype", ""), "-", "0", num(dense_ppl(log)), "-", "-", "-", num(timing(log, "eval_dense"), 0)]
        + [res.show(name)]
        for _, name, log in dense_rows
    ]
    for label, name, log in runs:
        rows.append(
            [
                label,
                log.get("dtype", ""),
                f"{log['sparsity_ratio']:.2f}",
                f"{log['actual_sparsity']:.4f}",
                num(ppl(log)),
                num(timing(log, "load"), 1),
                num(timing(log, "gradients"), 1) or "-",
                num(timing(log, "prune"), 0),
                num(timing(log, "eval"), 0),
                res.show(name),
            ]
        )
    head = ["method", "dtype", "target", "actual sparsity", "WikiText-2 ppl", "load s", "gradients s", "prune s"]
    head += ["eval s", "log"]
    cmd = (
        "python main.py --prune_method wanda_alp --sparsity_ratio 0.7 --nsamples 128 --seqlen 2048 \\\n"
        "  --log_json results/smollm2/wanda_alp_0.7_full.json\n"
        "python main.py --prune_method wanda --sparsity_ratio 0.7 --nsamples 128 --seqlen 2048 \\\n"
        "  --log_json results/smollm2/wanda_0.7_full.json"
    )
    machines = "The bf16 logs come from a 2-core CPU with AMX."
    if res.path(FP32_REFERENCE).exists():
        machines = (
            "The bf16 logs come from a 2-core CPU with AMX; the fp32 one is a bare `python main.py` on a 2-core "
            "AVX2 EPYC without bf16 units, where `--dtype auto` is fp32 (timed by `scripts/bench_pipeline.py "
            "--run_log`, fresh caches; `results/smollm2/reproduce/README.md`)."
        )
    return "\n\n".join(
        [
            "## `python main.py` at the reference settings (CPU)",
            "SmolLM2-135M-Instruct (the embedded GGUF), 70 % unstructured, gradients 10 x 64 tokens, "
            "full WikiText-2 test. The dense rows are the Wanda-ALP logs' `ppl_dense` and `timings.eval_dense`; "
            "`prune s` includes the calibration forward. " + machines,
            table(head, rows),
            caption(res, "smollm2/", [alp, uni], cmd),
        ]
    )


BENCH_PIPELINE_LOGS = (
    "bench/bench_pipeline_reference.json",
    "bench/bench_pipeline_quick.json",
    "bench/bench_pipeline_quick_float32.json",
    "bench/bench_pipeline_reference_float32.json",
)


def bench_pipeline(res: Results) -> str:
    files = [f for f in BENCH_PIPELINE_LOGS if res.path(f).exists()]
    stages = ("load", "gradients", "eval_dense", "calibration_forward", "prune_maths", "prune", "eval")
    rows, profiled = [], []
    for f in files:
        b = res.load(f)
        ratio = b.get("stage_roofline_ratio") or {}
        if b.get("profile"):
            profiled.append((f, b))
        rows.append(
            [
                res.show(f),
                " ".join(b.get("run_flags") or []) or "(reference)",
                num(b["wall_seconds"] / 60, 1),
                *(num((b.get("stage_seconds") or {}).get(s), 1) for s in stages),
                num(b.get("peak_rss_mb", 0) / 1024, 2),
                b.get("gemm_dtype") or "bfloat16 (not recorded)",
                num(b.get("gemm_tflops"), 3),
                b.get("gemm_peak_shape") or "2048^3 square only",
                num(b.get("roofline_ratio"), 2),
                " / ".join(num(ratio.get(s), 2) for s in ("calibration_forward", "eval", "eval_dense", "gradients")),
                num(b.get("eval_vs_plain_forward"), 3),
            ]
        )
    head = ["log", "extra flags", "wall min", *(f"{s} s" for s in stages), "peak RSS GiB"]
    head += ["GEMM dtype", "GEMM peak TFLOP/s", "peak shape (M x K x N)", "roofline ratio"]
    head += ["roofline: calib fwd / eval / dense eval / gradients", "eval vs plain forward"]
    ref = res.load(files[0]) if files else {}
    saved = (ref.get("stage_seconds") or {}).get("eval_dense", 0) + (ref.get("stage_seconds") or {}).get("gradients", 0)
    prose = (
        "Stage wall times of one Wanda-ALP `main.py` run, measured on the CPU with fresh caches by "
        "`scripts/bench_pipeline.py`. `roofline_ratio` = measured time / the time the stage's useful FLOPs "
        "need at the GEMM peak measured in the same run, in the run's dtype: the best of several shapes "
        "(large squares and the model's own linear shapes at the calibration batch; the logs made before that "
        "probe timed one 2048^3 bf16 square). `eval_vs_plain_forward` = evaluation "
        "throughput / a plain transformers forward over the same windows. The calibration forward runs two "
        "forwards of the calibration set through every block. A second run reuses the cached gradients and "
        f"dense perplexity, which saves the dense evaluation and the gradient pass ({num(saved / 60, 1)} min "
        "in the reference run)."
    )
    parts = ["## Stage times and the GEMM roofline (CPU)", prose, table(head, rows)]
    for f, b in profiled:
        parts.append(f"GEMM probe of {res.show(f)} (TFLOP/s, {b.get('gemm_dtype')}):")
        probe = b.get("gemm_probe") or {}
        parts.append(table(["shape", "TFLOP/s"], [[k, num(v, 3)] for k, v in probe.items()]))
        parts.append(f"Where the time goes ({res.show(f)}, `torch.profiler`, seconds and share of the wall time):")
        parts.append(profile_table(b["profile"]))
    cmd = "python scripts/bench_pipeline.py\n"
    cmd += "python scripts/bench_pipeline.py -- --nsamples 32 --seqlen 512 --eval_windows 20"
    extra = (
        "dtype: `--dtype auto`: bf16 on the AMX CPU for the logs without `gemm_dtype` (not recorded in them), "
        "fp32 on the 2-core AVX2 EPYC for `bench_pipeline_quick_float32.json` (its main.py log: "
        "`bench_pipeline_quick_float32_run.json`); commits and machines in `results/bench/README.md`."
    )
    parts.append(caption(res, "bench/", [], cmd, extra))
    return "\n\n".join(parts)


def profile_table(profile: dict) -> str:
    """Rows: the profiled pieces (one calibration block forward, one evaluation window); columns:
    GEMMs, attention, other operators, time outside any operator (Python / framework), wall."""
    parts = ("gemm", "attention", "other_ops", "not_in_ops")
    rows = []
    for name, p in profile.items():
        wall = p.get("wall") or 0.0
        cells = [f"{num(p.get(k), 3)} ({num(100 * (p.get(k) or 0) / wall, 0)} %)" if wall else "-" for k in parts]
        largest = list((p.get("top_other_ops") or {}).items())[:3]
        top = ", ".join(f"{op.removeprefix('aten::')} {num(t, 3)}" for op, t in largest)
        rows.append([name.replace("_", " "), *cells, num(wall, 3), top])
    head = ["piece", "GEMMs s", "attention s", "other ops s", "outside ops s", "wall s", "largest other ops s"]
    return table(head, rows)


MIN_TIMED_RUNS = 3  # runs per side behind a published speed ratio


def bench_peers(res: Results) -> str:
    rows, logs, scopes = [], [], {}
    for file in sorted(res.path("bench").glob("bench_peers_*.json")):
        b = json.loads(file.read_text())
        logs.append(b)
        for method in sorted(b.get("seconds_ours") or {}):
            ours, n_ours = median_of(b["seconds_ours"][method])
            theirs, n_theirs = median_of((b.get("seconds_theirs") or {}).get(method))
            n_ours = len((b.get("seconds_ours_runs") or {}).get(method) or []) or n_ours  # medians of these runs
            n_theirs = len((b.get("seconds_theirs_runs") or {}).get(method) or []) or n_theirs
            load = b.get("load_average")
            ratio, _ = median_of(b.get(f"{method}_time_ratio"))
            ratio = ratio if ratio is not None else (ours / theirs if ours and theirs else None)
            if b.get("timing_note"):  # a run whose times were disturbed: keep its quality figures only
                ours = theirs = ratio = None
            if min(n_ours, n_theirs) < MIN_TIMED_RUNS:  # one run of each side ranks nothing on a shared CPU
                ratio = None
            versions = b.get("peer_versions") or {}
            rows.append(
                [
                    res.show(file),
                    method,
                    f"{b.get('nsamples')} x {b.get('seqlen')}",
                    f"{num(ours, 0)}" + (f" (median of {n_ours})" if n_ours > 1 else ""),
                    f"{num(theirs, 0)}" + (f" (median of {n_theirs})" if n_theirs > 1 else ""),
                    num(ratio, 2),
                    num(median_of((b.get("ppl_ours") or {}).get(method))[0], 1),
                    num(median_of((b.get("ppl_theirs") or {}).get(method))[0], 1),
                    f"{(b.get('sparsity_ours') or {}).get(method)} / {(b.get('sparsity_theirs') or {}).get(method)}",
                    b.get("eval_windows"),
                    f"{b.get('threads')} / {b.get('peer_threads')}",
                    f"{b.get('dtype')}, {b.get('device')}, torch {versions.get('torch')}, "
                    f"llm-compressor {versions.get('llmcompressor')}"
                    + (f", 1-min load {load[0]} -> {load[1]}" if isinstance(load, list) and len(load) == 2 else ""),
                ]
            )
            scope = json.dumps(b["timing_scope"], sort_keys=True) if b.get("timing_scope") else ""
            if res.show(file) not in scopes.setdefault(scope, []):
                scopes[scope].append(res.show(file))
    head = ["log", "method", "calibration", "ours s", "theirs s", "time ratio", "ppl ours", "ppl theirs"]
    head += ["sparsity ours / theirs", "eval windows", "threads ours / theirs", "recorded"]
    prose = (
        "Our Wanda / SparseGPT against llm-compressor's on the same model and calibration ids, both "
        "evaluated with this project's perplexity over the first WikiText-2 windows (`eval windows`), "
        "70 % unstructured. `time ratio` = ours / theirs, given only where both sides are medians of at least "
        f"{MIN_TIMED_RUNS} runs (single-run seconds are shown as measured). The two implementations differ in "
        "details listed in `scripts/bench_peers.py` (ties at the mask threshold, Hessian fallback, bf16 "
        "rounding order); at 70 % on a 135M model such details move perplexity either way, so one short "
        "evaluation does not rank them."
    )
    for scope, files in scopes.items():
        if scope:
            sides = "; ".join(f"{side}: {text}" for side, text in json.loads(scope).items())
            prose += f"\n\nTiming scope ({', '.join(files)}): {sides}."
        else:
            prose += f"\n\nTiming scope not recorded in {', '.join(files)} (single runs, before `--repeats`)."
    cmd = (
        "python scripts/bench_peers.py --methods wanda --skip_dense --eval_windows 40\n"
        "python scripts/bench_peers.py --methods sparsegpt --skip_dense --eval_windows 40 --nsamples 32"
    )
    return "\n\n".join(
        [
            "## Against llm-compressor (CPU)",
            prose,
            table(head, rows),
            caption(res, "bench/", [], cmd, "Each file's exact command is in `results/bench/README.md`."),
        ]
    )


def bench_zero_shot(res: Results) -> str:
    b = res.load("bench/bench_zero_shot_limit200.json")
    rows = [
        ["tasks", ", ".join(b["tasks"])],
        ["documents per task (`--limit`)", b["limit"]],
        ["batch size", b["batch_size"]],
        ["tokens scored", num(b["tokens"], 0)],
        ["harness tokens/s (end to end)", num(b["tokens_per_s"], 0)],
        ["harness tokens/s (inside `loglikelihood` only)", num(b["scoring_tokens_per_s"], 0)],
        ["plain forward tokens/s (same batches)", num(b["plain_forward_tokens_per_s"], 0)],
        ["ratio end to end / inside `loglikelihood`", f"{b['ratio']:.2f} / {b['scoring_ratio']:.2f}"],
        ["task set-up s (fixed cost)", num(b["setup_seconds"], 1)],
    ]
    prose = (
        "Zero-shot throughput through lm-eval's harness against a plain forward of the same batches. "
        "The task set-up is a fixed cost, so small `--limit` values show lower end-to-end ratios."
    )
    return "\n\n".join(
        [
            "## Zero-shot harness throughput (CPU)",
            prose,
            table(["quantity", "value"], rows),
            caption(
                res,
                "bench/bench_zero_shot_limit200.json",
                [],
                "python scripts/bench_zero_shot.py --limit 200",
                f"Recorded: dtype {b.get('dtype')}.",
            ),
        ]
    )


def paper_smollm2(res: Results) -> str:
    folder = "smollm2/paper"
    logs = make_tables.load_logs([str(res.path(folder))])
    chosen = make_tables.select(logs, 0.7, 0.15)
    named = by_name(res.logs(folder))
    rows = []
    for name, log in named.items():
        runs = (log.get("eval") or {}).get("windows")
        ev = timing(log, "eval")
        rows.append(
            [
                log["prune_method"],
                num(timing(log, "load"), 1),
                num(timing(log, "prune"), 1),
                num(ev, 1),
                num(ev / runs, 2) if ev and runs else "",
                num(timing(log, "zero_shot"), 0),
                res.show(f"{folder}/{name}.json"),
            ]
        )
    cmd = (
        'METHODS="dense wanda_alp" ZERO_SHOT=1 OUT=results/smollm2/paper \\\n'
        '  EXTRA="--nsamples 32 --seqlen 512 --tasks boolq,rte,hellaswag,arc_challenge,openbookqa,arc_easy,'
        'winogrande,piqa --limit 1000" \\\n'
        "  bash scripts/smollm2.sh\n"
        'OUT=results/smollm2/paper EXTRA="--nsamples 32 --seqlen 512" bash scripts/smollm2.sh   # the other five\n'
        "python scripts/make_tables.py results/smollm2/paper --paper --out results/smollm2/paper/tables.md"
    )
    prose = (
        "`scripts/smollm2.sh`: dense + {SparseGPT, Wanda, RIA} x {uniform, ALP}, 70 % unstructured, alpha "
        "0.15, 10 gradient samples, seed 0, with the CPU variant of the calibration (32 x 512 C4 tokens) "
        "and the full WikiText-2 test; zero-shot on the eight offline task sets (mnli has no local copy, "
        'so the paper\'s "sum of six / 5" mean is undefined) for dense and Wanda-ALP. Tables as '
        "`scripts/make_tables.py` prints them (`acc`; `acc_norm` and stderrs are in the logs). The dense "
        "run's zero-shot pass shared the machine with other jobs."
    )
    figures = (
        "Figures: [zero-shot accuracy](../pic/zero_shot_SmolLM2-135M-Instruct.png) (the two rows above), "
        "[ALP's per-block ratios](../pic/block_ratios_SmolLM2-135M-Instruct.png) of these runs, "
        "[perplexity vs sparsity](../pic/ppl_vs_sparsity_SmolLM2-135M-Instruct.png) (every pruner, uniform vs "
        "ALP, at 50 % and 70 %, from the quick-settings runs in `results/smollm2/pruners/`)."
    )
    return "\n\n".join(
        [
            "## The paper's tables on SmolLM2 (CPU)",
            prose,
            make_tables.table_ii(chosen, logs, 0.7, 0.15),
            make_tables.table_iv(chosen, 0.7),
            "Stage seconds per run:",
            table(["method", "load s", "prune s", "eval s", "eval s / window", "zero-shot s", "log"], rows),
            caption(res, folder + "/", [log for _, log in named.items()], cmd),
            figures,
        ]
    )


def paper_quoted(res: Results) -> str:
    return "\n\n".join(
        [
            "## The paper's own numbers (quoted, not measured here)",
            "For comparison, the published Table II (LLaMA / OPT at 70 %, 128 x 2048 C4 calibration, on GPUs), "
            "as transcribed in `scripts/make_tables.py` (`PAPER_TABLE_II`, from `shared/docs/ALP_METHOD.md`).",
            make_tables.paper_table(),
        ]
    )


def pruners(res: Results) -> str:
    folder = "smollm2/pruners"
    named = by_name(res.logs(folder))
    logs = collect_results.load_logs([str(res.path(folder))])
    head = ["method", "pattern", "bits", "target", "actual", "WikiText-2 ppl", "dense ppl", "calibration"]
    head += ["eval windows", "prune s", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [collect_results.row(r) for r in logs]
    half = sorted((ppl(named[k]), k) for k in ("sparsegpt_0.5", "wanda_0.5", "ria_0.5", "magnitude_0.5") if k in named)
    order = " < ".join(f"{k.split('_')[0]} ({num(v, 1)})" for v, k in half)
    perm = [named.get(k) for k in ("ria_2-4", "ria_2-4_permuted", "ria_2-4_permuted_lsa")]
    prose = [f"At 50 % unstructured, uniform: {order}."]
    if all(perm):
        prose.append(
            f"At 2:4, RIA's channel permutation moves its ppl from {num(ppl(perm[0]), 1)} to {num(ppl(perm[1]), 1)} "
            f"({num(ppl(perm[2]), 1)} with the linear-sum-assignment refinement)."
        )
    cmd = "bash scripts/pruner_table.sh && python scripts/collect_results.py logs/pruners"
    return "\n\n".join(
        [
            "## Every pruner, uniform and ALP (CPU, quick settings)",
            "Every pruner x {uniform, ALP (alpha 0.15)} x {50 %, 70 %, 2:4}, "
            "as `scripts/collect_results.py` prints it.",
            "\n".join(lines),
            " ".join(prose),
            caption(res, folder + "/", [log for _, log in named.items()], cmd),
        ]
    )


def block_zero(res: Results) -> str:
    log = res.load("smollm2/wanda_alp_0.7_full.json")
    scores, ratios = log["ratio_info"]["block_scores"], log["layer_ratios"]
    others = scores[1:]
    top = max(range(len(ratios)), key=ratios.__getitem__)
    return "\n\n".join(
        [
            "## Why the reference ALP allocation hurts on SmolLM2",
            f"ALP gives block {top} the highest sparsity ({ratios[top]:.3f}): its sensitivities are the "
            f"lightest-tailed (block score `Z_0` = {scores[0]:.2e}, against {min(others):.2e} to {max(others):.2e} "
            "for the other blocks), and the pruned model collapses. The formula is the reference's (tests check "
            "it against a hand-computed example); the paper's tables are for 7B-13B LLaMA / OPT models.",
            "![ALP block sparsity on SmolLM2](../pic/ratios_SmolLM2-135M-Instruct_wanda_alp_0.7.png)",
            f"Source: {res.show('smollm2/wanda_alp_0.7_full.json')} (`layer_ratios`, `ratio_info.block_scores`). "
            f"Recorded: {env_note([log])}.",
        ]
    )


PARAMETER = {"alp": "alpha", "dlp": "alpha", "owl": "owl_lambda", "ramp": "beta", "alphapruning": "epsilon"}
ALLOCATION_RUNS = ("uniform", "alp", "alp_alpha_auto", "owl", "dlp", "alphapruning", "ramp_beta_auto")


def allocation_table(named: dict[str, dict], pruner: str) -> str:
    """The table ``scripts/compare_allocations.py`` prints, from its logs."""
    rows = []
    for slug in ALLOCATION_RUNS:
        log = named.get(f"{pruner}_0.7_{slug}")
        if log is None:
            continue
        info = log["ratio_info"]
        key = PARAMETER.get(info["allocation"])
        setting = f"{key} = {info[key]}" if key else ""
        if "search" in info:
            tried = ", ".join(
                f"{c[key]}: {'n/a' if c['loss'] is None else format(c['loss'], '.3f')}" for c in info["search"]
            )
            setting += f" (searched: {tried})"
        label = slug.replace("_alpha_auto", " (alpha auto)").replace("_beta_auto", " (beta auto)")
        r = log["layer_ratios"]
        rows.append([label, setting, num(ppl(log)), f"{min(r):.3f}..{max(r):.3f}"])
    return table(["allocation", "setting", "WikiText-2 ppl", "min..max block sparsity"], rows)


def allocations(res: Results) -> str:
    folder = "smollm2/allocations"
    named = by_name(res.logs(folder))
    parts = ["## Allocations side by side (CPU, quick settings)"]
    parts.append(
        "Every `--allocation` at 70 %; `auto` values are chosen by the held-out C4 loss (shown per candidate "
        "in brackets), never by WikiText-2."
    )
    for pruner in ("wanda", "sparsegpt"):
        uni, ref, auto = (named.get(f"{pruner}_0.7_{s}") for s in ("uniform", "alp", "alp_alpha_auto"))
        if not uni:
            continue
        parts.append(f"### {pruner}\n\n" + allocation_table(named, pruner))
        if ref and auto:
            parts.append(
                f"The held-out search picks alpha = {auto['ratio_info']['alpha']} (ppl {num(ppl(auto), 1)}), against "
                f"{num(ppl(uni), 1)} uniform and {num(ppl(ref), 1)} for the reference direction "
                f"(alpha = {ref['ratio_info']['alpha']})."
            )
        better = [
            f"{slug.replace('_', ' ')} ({num(ppl(log), 1)})"
            for slug in ALLOCATION_RUNS[1:]
            if (log := named.get(f"{pruner}_0.7_{slug}")) and ppl(log) < ppl(uni)
        ]
        parts.append(f"Below uniform ({num(ppl(uni), 1)}) with {pruner}: " + (", ".join(better) or "none") + ".")
        parts.append(f"![Allocations on SmolLM2, {pruner}](../pic/allocations_{pruner}_0.7.png)")
        cmd = (
            f"python scripts/compare_allocations.py --prune_method {pruner} --sparsity_ratio 0.7 --out logs/alloc "
            "-- --nsamples 32 --seqlen 512 --eval_windows 20"
        )
        logs = [log for name, log in named.items() if name.startswith(f"{pruner}_")]
        parts.append(caption(res, f"{folder}/{pruner}_0.7_*.json", logs, cmd))
    return "\n\n".join(parts)


GRAD_VARIANTS = [
    (g, loss) for g in ("l2_hundred_total", "l2_total", "l2", "l1") for loss in ("last_token", "full_sequence")
]


def gradvariants(res: Results) -> str:
    folder = "smollm2/gradvariants"
    named = by_name(res.logs(folder))
    pr = by_name(res.logs("smollm2/pruners")) if res.path("smollm2/pruners").exists() else {}

    def run(pruner: str, g: str, loss: str):
        if (g, loss) == ("l2_hundred_total", "last_token"):  # main.py's default statistic: the pruner grid's run
            return pr.get(f"{pruner}_alp_0.7")
        return named.get(f"{pruner}_alp_{g}_{loss}")

    rows, used = [], []
    for g, loss in GRAD_VARIANTS:
        w, s = run("wanda", g, loss), run("sparsegpt", g, loss)
        used += [x for x in (w, s) if x]
        first = (w or s or {}).get("layer_ratios") or [None]
        rows.append([g, loss, num(ppl(w) if w else None, 1), num(ppl(s) if s else None, 1), num(first[0], 3)])
    summary = []
    if "wanda_0.7" in pr and "sparsegpt_0.7" in pr:
        rows.append(["uniform (no ALP)", "", num(ppl(pr["wanda_0.7"]), 1), num(ppl(pr["sparsegpt_0.7"]), 1), "0.700"])
        for pruner in ("wanda", "sparsegpt"):
            runs = [(ppl(r), g, loss) for g, loss in GRAD_VARIANTS if (r := run(pruner, g, loss))]
            if runs:
                best, g, loss = min(runs)
                uniform = ppl(pr[f"{pruner}_0.7"])
                verdict = "below" if best < uniform else "above"
                summary.append(
                    f"Best {pruner}-ALP: `{g}` / `{loss}` at {num(best, 1)}, {verdict} uniform ({num(uniform, 1)})."
                )
    passes = []
    for name, log in named.items():
        gp = (log.get("ratio_info") or {}).get("gradient_pass") or {}
        if "seconds" in gp:
            passes.append([name.removeprefix("wanda_alp_"), num(gp["seconds"], 1), num(gp.get("peak_memory_mb"), 0)])
    cmd = (
        "python main.py --prune_method sparsegpt_alp --grad_type l1 --grad_loss full_sequence \\\n"
        "  --nsamples 32 --seqlen 512 --eval_windows 20 --log_json results/smollm2/gradvariants/"
        "sparsegpt_alp_l1_full_sequence.json   # one per cell"
    )
    parts = [
        "## ALP with each Stage-A statistic (CPU, quick settings)",
        "Wanda-ALP and SparseGPT-ALP at 70 %, alpha 0.15, for each gradient statistic and loss. The row "
        "`l2_hundred_total` / `last_token` (the default) and the uniform row are the runs of "
        "`results/smollm2/pruners/`. `block 0 sparsity` is ALP's ratio for the first block.",
        table(["grad_type", "loss", "Wanda-ALP 70 % ppl", "SparseGPT-ALP 70 % ppl", "block 0 sparsity"], rows),
        " ".join(summary),
        caption(res, folder + "/", used, cmd),
    ]
    if passes:
        parts.append(
            "The gradient pass itself (10 x 64 tokens, fp32 on this CPU) as recorded by the runs that computed "
            "it (the others read the cache; `peak_memory_mb` is the process's peak RSS):\n\n"
            + table(["statistic_loss", "seconds", "peak RSS MiB"], passes)
        )
    return "\n\n".join(parts)


def block_sensitivity(res: Results) -> str:
    rel = "smollm2/block_sensitivity_wanda_0.7.json"
    b = res.load(rel)
    rows = [[name, f"{rho:+.3f}"] for name, rho in b["spearman"].items()]
    costs = [[i, f"{c:+.4f}"] for i, c in enumerate(b["costs"])]
    worst = max(range(len(b["costs"])), key=b["costs"].__getitem__)
    alp = {k: v for k, v in b["spearman"].items() if k.startswith("alp (")}
    finding = (
        f"Pruning block {worst} alone costs the most (+{b['costs'][worst]:.4f} NLL). ALP's reference direction "
        "has a Spearman correlation of " + ", ".join(f"{v:+.3f} ({k})" for k, v in alp.items()) + " with the "
        "measured cost: a negative value means it protects the blocks that cost least, which is why a reversed "
        "alpha does better on this model (allocations above)."
    )
    cmd = (
        f"python scripts/block_sensitivity.py --prune_method {b['prune_method']} "
        f"--sparsity_ratio {b['sparsity_ratio']} "
        "--out_json results/smollm2/block_sensitivity_wanda_0.7.json "
        "--out_md results/smollm2/block_sensitivity_wanda_0.7.md --out_png pic/block_sensitivity_wanda_0.7.png"
    )
    return "\n\n".join(
        [
            "## Block sensitivity (CPU)",
            f"The held-out NLL increase when only one block of {b['model']} is pruned ({b['prune_method']} at "
            f"{b['sparsity_ratio']}; dense held-out NLL {b['dense_nll']:.4f}), against how much each allocation "
            "protects that block (`s - s_l`). The script's defaults: 32 x 512 calibration, 8 x 512 held-out tokens.",
            table(["allocation", "Spearman(cost, protection s - s_l)"], rows),
            finding,
            "![Block sensitivity on SmolLM2](../pic/block_sensitivity_wanda_0.7.png)",
            "Per-block cost:\n\n" + table(["block", "NLL increase"], costs),
            caption(
                res,
                rel,
                [],
                cmd,
                "dtype not recorded in this log (the script's default `--dtype auto`: bf16 on this CPU; "
                "gradients in fp32).",
            ),
        ]
    )


def quantization(res: Results) -> str:
    folder = "smollm2/quant"
    named = by_name(res.logs(folder))
    grid = collect_results.by_bits_tables(collect_results.load_logs([str(res.path(folder))]))
    ppl_table, size_table = grid.split("\n\n", 1)
    prose = []
    half = [
        abs(ppl(named[f"{m}_0.5_w8"]) / ppl(named[f"{m}_0.5_w16"]) - 1)
        for m in ("wanda", "wanda_alp", "sparsegpt", "sparsegpt_alp", "ria", "ria_alp")
        if f"{m}_0.5_w8" in named and f"{m}_0.5_w16" in named
    ]
    if half:
        prose.append(f"At 50 %, 8 bits change the ppl by at most {100 * max(half):.1f} %.")
    d16, d4 = named.get("dense_w16"), named.get("dense_w4")
    if d16 and d4:
        prose.append(f"4-bit per-row grids already hurt the dense model ({num(ppl(d16))} -> {num(ppl(d4))}).")
    change = []
    for m in ("sparsegpt", "ria"):
        a, b = named.get(f"{m}_0.7_w16"), named.get(f"{m}_0.7_w8")
        if a and b:
            change.append(f"{m} {100 * (ppl(b) / ppl(a) - 1):+.0f} %")
    if change:
        prose.append("At 70 %, 8 bits change the ppl by " + ", ".join(change) + ".")
    a, b = named.get("wanda_0.7_w16"), named.get("wanda_0.7_w4")
    if a and b:
        prose.append(f"Wanda at 70 %: {num(ppl(a), 1)} at 16 bits, {num(ppl(b), 1)} at 4 bits.")
    blank = "A blank cell is a run without a log (`scripts/quant_table.sh` resumes where it stopped)."
    return "\n\n".join(
        [
            "## Pruning + quantization, with storage sizes (CPU, quick settings)",
            "GPTQ on per-row grids (`--groupsize -1`); WikiText-2 ppl per method and sparsity x weight bits. " + blank,
            ppl_table,
            "Packed size (`storage` in each log): `wbits` per kept weight + a mask per weight, next to fp16.",
            size_table,
            " ".join(prose),
            caption(
                res,
                folder + "/",
                [log for _, log in named.items()],
                "bash scripts/quant_table.sh && python scripts/collect_results.py --by_bits logs/quant",
            ),
        ]
    )


def recovery_for_every_pruner(res: Results) -> str:
    """Issue 15's grid (``scripts/recovery_grid.py``): pruner x allocation x sparsity x recovery."""
    import recovery_grid as grid

    folders = [grid.log_folder(res.root, m) for m in grid.GRID if grid.log_folder(res.root, m).exists()]
    logs = [log for folder in folders for _, log in res.logs(folder.relative_to(res.root).as_posix())]
    return "\n\n".join(
        [
            "## Recovery for every pruner (CPU, quick settings)",
            "WikiText-2 perplexity without recovery, with `--reconstruct`, with `--refine dsnot` and with both "
            "(DSnoT first); beside each recovery the seconds it added and that over the same run's pruning time "
            "without it; `-`: not run yet.",
            grid.report_table(res.root),
            caption(
                res,
                "smollm2/recovery/grid/",
                logs,
                "python scripts/recovery_grid.py   # runs (or resumes) the grid; --dry_run prints the commands",
                grid.SEARCHED_ROW_NOTE,
            ),
        ]
    )
