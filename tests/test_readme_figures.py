"""The headline tables of README.md agree with the committed logs their captions name.

(The long grids live in results/README.md, generated from the logs and checked by
test_results_readme.py; the README's short tables are typed, so they are checked here.)
"""

from __future__ import annotations

import json
import re
import sys

from lib.recovery import RecoveryOptions
from lib.searched.options import RESTATS_DEFAULT, SearchedOptions
from tests.conftest import ROOT, load_script

README = (ROOT / "README.md").read_text(encoding="utf-8")


def ppl(rel: str) -> float:
    """WikiText-2 perplexity of the committed log ``results/<rel>``."""
    return json.loads((ROOT / "results" / rel).read_text())["ppl"]["wikitext2"]


def cell(value: float) -> str:
    """How the README prints a perplexity: one decimal, thousands separated."""
    return f"{value:,.1f}"


def table_rows(title: str) -> dict[str, list[str]]:
    """``{first cell: other cells}`` of the first Markdown table after the paragraph starting ``title``."""
    section = README.split(title, 1)[1]
    rows = {}
    for line in section.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= set("-"):
                rows[cells[0]] = cells[1:]
        elif rows:
            break
    return rows


ALLOCATION_ROWS = {  # README row label (prefix) -> log name part in results/smollm2/allocations/
    "uniform": "uniform",
    "alp, alpha 0.15": "alp",
    "alp, `--alpha auto`": "alp_alpha_auto",
    "owl": "owl",
    "dlp": "dlp",
    "alphapruning": "alphapruning",
}


def test_allocation_table_matches_its_logs():
    rows = table_rows("**Which allocation?**")
    for prefix, key in ALLOCATION_ROWS.items():
        label = next(label for label in rows if label.startswith(prefix))
        wanda, sparsegpt = rows[label]
        assert wanda == cell(ppl(f"smollm2/allocations/wanda_0.7_{key}.json")), label
        assert sparsegpt == cell(ppl(f"smollm2/allocations/sparsegpt_0.7_{key}.json")), label


def test_paper_settings_sentence_matches_its_logs():
    sentence = README.split("**The paper's settings**", 1)[1].split("\n\n", 1)[0]
    full = json.loads((ROOT / "results/smollm2/wanda_0.7_full.json").read_text())
    alp = json.loads((ROOT / "results/smollm2/wanda_alp_0.7_full.json").read_text())
    numbers = re.findall(r"\d[\d,]*(?:\.\d+)?", sentence.split("):", 1)[1])
    assert f"{full['ppl_dense']['wikitext2']:.2f}" in numbers
    assert cell(full["ppl"]["wikitext2"]) in numbers
    assert f"{alp['ppl']['wikitext2']:,.0f}" in numbers


def test_reference_parity_sentence_matches_its_logs():
    sentence = README.split("earlier variants beside them", 1)[1].split("\n\n", 1)[0]
    for name in ("wanda_0.7_dlp_mean", "wanda_0.7_dlp_median", "wanda_0.7_alphapruning_peak_eps0.3"):
        assert cell(ppl(f"smollm2/reference_parity/{name}.json")) in sentence, name
    assert cell(ppl("smollm2/reference_parity/wanda_0.7_alphapruning_median_eps0.2.json")) in sentence
    for name in ("dlp_mean", "dlp_median", "alphapruning_peak_eps0.3", "alphapruning_median_eps0.2"):
        assert cell(ppl(f"smollm2/reference_parity/sparsegpt_0.7_{name}.json")) in sentence, name


def test_ladder_table_matches_its_logs():
    sys.path.insert(0, str(ROOT / "scripts"))
    import ladder

    assert ladder.readme_table(ladder.read_logs(ROOT / "results")) in README


RECOVERY_ROWS = {"none": "none"}
RECOVERY_ROWS |= {
    "first defaults (`--reconstruct_nsamples 32 --reconstruct_epochs 2 --reconstruct_batch 4`), "
    "`--reconstruct_lr 1e-3`": "reconstruct"
}
RECOVERY_ROWS |= {"`--refine dsnot`, first version (every linear, `shrink`, per-token threshold)": "dsnot"}
RECOVERY_ROWS |= {"`--refine dsnot` (released settings, the default; machine shared)": "dsnot_released"}
RECOVERY_ROWS |= {"the same, `--reconstruct_lr 3e-3` (the first defaults)": "reconstruct_lr3e-3"}
RECOVERY_ROWS |= {"the same on 8 of the 32 (`--reconstruct_nsamples 8`; machine shared)": "reconstruct_n8"}
RECOVERY_ROWS |= {"`--calib_batch_size 1` (no recovery; one sequence per calibration forward)": "none_b1"}
RECOVERY_ROWS |= {
    "`--reconstruct_nsamples 16 --reconstruct_epochs 1 --reconstruct_batch 4 --reconstruct_lr 3e-3` "
    "(4 steps of 4 sequences)": ("reconstruct_n16_e1_lr3e-3"),
    "the same, `--reconstruct_lr 1e-2`": "reconstruct_n16_e1_lr1e-2",
    "the same, `--reconstruct_batch 1 --calib_batch_size 1` (16 steps of one sequence)": "reconstruct_n16_e1_b1",
    "the same, `--reconstruct_lr 5e-3`": "reconstruct_n16_e1_b1_lr5e-3",
    "the same on 20 sequences (`--reconstruct_nsamples 20`, lr 3e-3)": "reconstruct_n20_e1_b1",
    "the same on 20 sequences, `--reconstruct_lr 5e-3`": "reconstruct_n20_e1_b1_lr5e-3",
    "the same at the default `--calib_batch_size 4` (micro-batches split into sequences)": (
        "reconstruct_n20_e1_b1_lr5e-3_cb4"
    ),
    "`--reconstruct`, the defaults then (lr 5e-3 for every tensor; fused AdamW, keep masks multiplied in)": (
        "reconstruct_n20_e1_b1_lr5e-3_fused"
    ),
    "the same, each tensor's lr 0.025 x its survivors' RMS (machine shared)": "reconstruct_rel0.025_survivor_rms",
    "`--reconstruct` (now the defaults: lr 0.025 x each tensor's RMS before pruning, fits that raise their "
    "held-out loss undone)": "grid/wanda_0.7_uniform_reconstruct",
}


def test_recovery_table_matches_its_logs():
    rows = table_rows("**Recovery.**")
    for label, name in RECOVERY_ROWS.items():
        stem = name if "/" in name else f"wanda_0.7_uniform_{name}"
        log = json.loads((ROOT / f"results/smollm2/recovery/{stem}.json").read_text())
        perplexity, sparsity, added, relative = rows[label][:4]
        assert perplexity == cell(log["ppl"]["wikitext2"]), label
        assert sparsity == f"{log['actual_sparsity']:.4f}", label
        stages = [log["timings"][k] for k in ("refine", "reconstruct") if k in log["timings"]]
        assert added == (f"{sum(stages):.0f}" if stages else "-"), label
        pruning = log["timings"]["prune"] - sum(stages)
        assert relative == (f"{sum(stages) / pruning:.2f}" if stages else "-"), label


def test_dsnot_at_half_sparsity_sentence_matches_its_logs():
    none, refined = (
        json.loads((ROOT / f"results/smollm2/recovery/wanda_0.5_uniform_{n}.json").read_text())["ppl"]["wikitext2"]
        for n in ("none", "dsnot_released")
    )
    text = " ".join(README.split())
    assert f"at 50 % too ({none:.1f} -> {refined:.1f}, `results/smollm2/recovery/wanda_0.5_uniform_" in text


def test_roofline_paragraph_matches_its_log():
    bench = json.loads((ROOT / "results/bench/bench_pipeline_reference_float32.json").read_text())
    quick = json.loads((ROOT / "results/bench/bench_pipeline_quick_float32.json").read_text())
    para = " ".join(README.split("**Against the machine's limit.**", 1)[1].split("\n\n", 1)[0].split())
    assert "results/bench/bench_pipeline_reference_float32.json" in para and bench["run_flags"] == []
    assert f"takes {bench['wall_seconds'] / 60:.1f} min, {bench['roofline_ratio']:.2f}x" in para
    assert f"{bench['gemm_tflops']:.3f} TFLOP/s" in para and bench["gemm_peak_shape"].startswith("up/gate 8192x")
    assert f"reaches only {bench['gemm_probe']['up/gate 8192x576x1536']:.3f}" in para
    stage = bench["stage_roofline_ratio"]
    expected = {"calibration forward": "calibration_forward", "evaluation": "eval", "dense evaluation": "eval_dense"}
    for words, name in expected.items():
        assert f"{words} {stage[name]:.2f}x" in para, name
    assert f"gradient pass {stage['gradients']:.2f}x" in para
    assert f"the run takes {quick['roofline_ratio']:.2f}x" in para
    window = bench["profile"]["evaluation_window"]
    block = bench["profile"]["calibration_block_forward"]
    for part, share in (("GEMMs", window["gemm"]), ("attention", window["attention"])):
        assert f"{100 * share / window['wall']:.0f} % {part}" in para, part
    gemm, attention = (100 * block[k] / block["wall"] for k in ("gemm", "attention"))
    assert f"{gemm:.0f} % GEMMs, {attention:.0f} %" in para
    assert f"{100 * block['not_in_ops'] / block['wall']:.0f} % Python" in para
    calib = bench["stage_seconds"]["calibration_forward"]
    assert f"about {round(calib * block['not_in_ops'] / block['wall'], -1):.0f} s of the {calib / 60:.1f} min" in para


def test_sparsegpt_parity_paragraph_matches_its_logs():
    para = README.split("**SparseGPT against llm-compressor**", 1)[1].split("\n\n", 1)[0]
    bench = ROOT / "results" / "bench"
    for name in ("bench_peers_sparsegpt_float32_full", "bench_peers_sparsegpt_32x2048"):
        log = json.loads((bench / f"{name}.json").read_text())
        ours, theirs = log["ppl_ours"]["sparsegpt"], log["ppl_theirs"]["sparsegpt"]
        assert f"{name}.json" in para
        assert f"{ours:,.1f}" in para and f"{theirs:,.1f}" in para, name
        assert f"+{100 * (ours / theirs - 1):.0f}" in para or f"+{100 * (ours / theirs - 1):.1f} %" in para, name
    assert cell(ppl("bench/sparsegpt_0.7_32x2048_fp32_calib_batch8.json")) in para
    agree = json.loads((bench / "bench_peers_sparsegpt_float32_full.json").read_text())["mask_agreement"]["sparsegpt"]
    assert f"{100 * agree['all']:.1f} %" in para and f"{100 * agree['per_block'][0]:.2f} % in block 0" in para


def test_ladder_wall_times_match_their_logs():
    text = " ".join(README.split("Wall times per run", 1)[1].split("\n\n", 1)[0].split())
    nested = ("prune_maths", "gradients")  # timed inside "prune" and "allocation"
    minutes = {}
    for run in ("wanda_0.7_uniform", "wanda_0.7_alp", "wanda_0.7_alp_auto"):
        timings = json.loads((ROOT / f"results/qwen2.5-coder-1.5b/ladder/{run}.json").read_text())["timings"]
        minutes[run] = sum(sec for stage, sec in timings.items() if stage not in nested) / 60
    assert f"{minutes['wanda_0.7_uniform']:.0f} min uniform" in text
    assert f"{minutes['wanda_0.7_alp']:.0f} min alpha 0.15" in text
    assert f"{minutes['wanda_0.7_alp_auto']:.0f} min `--alpha auto`" in text


def test_ladder_ratio_sentence_matches_its_logs():
    text = " ".join(README.split("The other score-based allocations do", 1)[1].split("\n\n", 1)[0].split())

    def ratio(model: str, allocation: str, pruner: str = "wanda") -> str:
        pruned, uniform = (ppl(f"{model}/ladder/{pruner}_0.7_{a}.json") for a in (allocation, "uniform"))
        return f"{pruned / uniform:.2f}x"

    owl, dlp = ratio("qwen2.5-coder-0.5b", "owl"), ratio("qwen2.5-coder-0.5b", "dlp")
    assert f"OWL gives {owl} uniform (SmolLM2: {ratio('smollm2', 'owl')})" in text
    assert f"DLP {dlp} (SmolLM2: {ratio('smollm2', 'dlp')})" in text
    owl, dlp = ratio("smollm2", "owl", "sparsegpt"), ratio("smollm2", "dlp", "sparsegpt")
    assert f"with SparseGPT on SmolLM2 OWL gives {owl} and DLP {dlp}" in text


def test_ladder_memory_sentence_matches_its_logs():
    paragraph = README.split("The other score-based allocations do", 1)[1].split("\n\n", 1)[0]
    text = " ".join(paragraph.split()).split("Memory, the whole run's peak", 1)[1]

    def peaks(model: str, run: str) -> tuple[float, float]:
        log = json.loads((ROOT / f"results/{model}/ladder/{run}.json").read_text())
        return log["measured_run_peak_bytes"] / 2**30, log["predicted_memory_bytes"]["run"]["peak"] / 2**30

    for model, run, label in (
        ("qwen2.5-coder-0.5b", "wanda_0.7_uniform", "0.5B Wanda uniform"),
        ("qwen2.5-coder-1.5b", "wanda_0.7_uniform", "1.5B Wanda uniform"),
        ("qwen2.5-coder-1.5b", "wanda_0.7_alp_auto", "`--alpha auto`"),
    ):
        measured, predicted = peaks(model, run)
        assert f"{label} {measured:.2f} vs {predicted:.2f} GiB ({measured / predicted:.2f})" in text, label
        assert measured / predicted <= 1.25
    wanda, sparsegpt = (peaks("qwen2.5-coder-0.5b", f"{p}_0.7_alp_auto") for p in ("wanda", "sparsegpt"))
    assert f"(Wanda {wanda[0] / wanda[1]:.2f}, SparseGPT {sparsegpt[0] / sparsegpt[1]:.2f}:" in text


def test_fp32_reference_run_sentence_matches_its_logs():
    fp32 = json.loads((ROOT / "results/smollm2/reproduce/wanda_alp_0.7_full_float32.json").read_text())
    bf16 = json.loads((ROOT / "results/smollm2/wanda_alp_0.7_full.json").read_text())
    bench = json.loads((ROOT / "results/bench/bench_pipeline_reference_float32.json").read_text())
    assert fp32["dtype"] == "float32" and bf16["dtype"] == "bfloat16"
    text = " ".join(README.split("A bare `python main.py` on that AVX2 CPU", 1)[1].split("\n\n", 1)[0].split())
    diff = max(abs(a - b) for a, b in zip(fp32["layer_ratios"], bf16["layer_ratios"], strict=True))
    assert diff < 1.6e-6 and "within 1.6e-6" in text
    assert f"dense {fp32['ppl_dense']['wikitext2']:.2f} (bf16: {bf16['ppl_dense']['wikitext2']:.2f})" in text
    assert f"Wanda-ALP {cell(fp32['ppl']['wikitext2'])} (bf16: {bf16['ppl']['wikitext2']:,.0f})" in text
    assert fp32["ppl"]["wikitext2"] == bench["ppl"]["wikitext2"]  # the run the bench timed
    assert f"{bench['wall_seconds'] / 60:.1f} min in fp32" in " ".join(README.split())


def test_reconstruction_defaults_sentence_matches_its_logs():
    text = " ".join(README.split("The fit needs AdamW steps", 1)[1].split("\n\n", 1)[0].split())
    recovery = ROOT / "results/smollm2/recovery"
    base = ppl("smollm2/recovery/wanda_0.7_uniform_none.json")
    assert base == ppl("smollm2/recovery/grid/wanda_0.7_uniform_none.json")
    defaults = RecoveryOptions()
    then = json.loads((recovery / "wanda_0.7_uniform_reconstruct_n20_e1_b1_lr5e-3_fused.json").read_text())
    now = json.loads((recovery / "grid/wanda_0.7_uniform_reconstruct.json").read_text())
    for log, steps in ((then, {"lr": 5e-3}), (now, {"rel_lr": defaults.rel_lr, "lr": None})):
        options = log["recovery"]["options"]
        assert (options["nsamples"], options["epochs"], options["batch"]) == (
            defaults.nsamples,
            defaults.epochs,
            defaults.batch,
        )
        assert {k: options.get(k) for k in steps} == steps
        assert log["args"]["calib_batch_size"] == 4
        added = log["timings"]["reconstruct"]
        assert added <= log["timings"]["prune"] - added  # issue 15: within the pruning time
    for log, verb in ((then, "gave"), (now, "gives")):
        added = log["timings"]["reconstruct"]
        ratio = log["ppl"]["wikitext2"] / base
        assert f"{verb} {cell(log['ppl']['wikitext2'])} in {added / (log['timings']['prune'] - added):.2f}x" in text
        assert f"{ratio:.2f}x the {cell(base)} of the same calibration" in text
    assert now["ppl"]["wikitext2"] / base <= 0.3  # issue 15's target, at today's defaults
    qwen_key = "qwen2.5-coder-0.5b"
    rates = {m: json.loads((ROOT / f"results/{m}/weight_rms.json").read_text()) for m in ("smollm2", qwen_key)}
    assert {r["rel_lr"] for r in rates.values()} == {defaults.rel_lr}
    smollm2, qwen = (rates[m]["tensors"]["linear weights"]["rate"] for m in ("smollm2", qwen_key))
    assert f"{rate(smollm2['min'])} to {rate(smollm2['max'])} over SmolLM2's linear weights" in text
    flags = " ".join(README.split("### Recovery: DSnoT and reconstruction", 1)[1].split("\n\n", 2)[1].split())
    assert f"a median of {rate(smollm2['median'])} over SmolLM2's linear weights" in flags
    ratio = smollm2["median"] / qwen["median"]
    assert f"and {rate(qwen['median'])}, {ratio:.0f}x less, over Qwen2.5-0.5B's" in flags


def rate(value: float) -> str:
    """A learning rate as the README writes it: ``4.8e-3``."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def test_fresh_fp32_pass_reproduces_the_fp32_log():
    record = json.loads((ROOT / "results/smollm2/reproduce/ratios_fp32_vs_fp32_log.json").read_text())
    assert record["reference_log"] == "results/smollm2/reproduce/wanda_alp_0.7_full_float32.json"
    assert record["max_abs_ratio_diff"] == 0.0 and record["max_rel_score_diff"] == 0.0
    assert "ratios_fp32_vs_fp32_log.json" in README and "exactly (difference 0;" in " ".join(README.split())


def test_ladder_alp_harm_sentence_matches_its_logs():
    text = " ".join(README.split("The paper's ALP direction (alpha 0.15) is worse", 1)[1].split("\n\n", 1)[0].split())

    def harm(model: str, pruner: str = "wanda") -> float:
        return ppl(f"{model}/ladder/{pruner}_0.7_alp.json") / ppl(f"{model}/ladder/{pruner}_0.7_uniform.json")

    assert f"{harm('smollm2'):.0f}x on SmolLM2, {harm('qwen2.5-coder-0.5b'):.0f}x on the 0.5B model" in text
    assert f"{harm('qwen2.5-coder-1.5b'):.1f}x on the 1.5B model" in text
    assert f"with SparseGPT {harm('smollm2', 'sparsegpt'):.0f}x on SmolLM2" in text
    assert f"and {harm('qwen2.5-coder-0.5b', 'sparsegpt'):.0f}x on the 0.5B model" in text


def test_ladder_sparsegpt_auto_clause_matches_its_log():
    auto = json.loads((ROOT / "results/smollm2/ladder/sparsegpt_0.7_alp_auto.json").read_text())
    ratio = auto["ppl"]["wikitext2"] / ppl("smollm2/ladder/sparsegpt_0.7_uniform.json")
    assert auto["ratio_info"]["alpha"] == -0.15
    assert f"-0.15 on SmolLM2 (0.23x uniform; SparseGPT {ratio:.2f}x)" in " ".join(README.split())
    small = json.loads((ROOT / "results/qwen2.5-coder-0.5b/ladder/sparsegpt_0.7_alp_auto.json").read_text())
    ratio = small["ppl"]["wikitext2"] / ppl("qwen2.5-coder-0.5b/ladder/sparsegpt_0.7_uniform.json")
    assert small["ratio_info"]["alpha"] == -0.15
    assert f"on the 0.5B model (0.63x; SparseGPT {ratio:.2f}x)" in " ".join(README.split())


def half_sparsity_sentence() -> str:
    """The README's sentence on the SmolLM2 50 % column, from its logs."""

    def ratio(pruner: str, allocation: str) -> str:
        pruned, uniform = (ppl(f"smollm2/ladder/{pruner}_0.5_{a}.json") for a in (allocation, "uniform"))
        return f"{pruned / uniform:.2f}x"

    chose = [
        json.loads((ROOT / f"results/smollm2/ladder/{p}_0.5_alp_auto.json").read_text())["ratio_info"]["alpha"]
        for p in ("wanda", "sparsegpt")
    ]
    pair = {
        a: f"{ratio('wanda', a)} (Wanda) and {ratio('sparsegpt', a)} (SparseGPT)"
        for a in ("alp", "alp_auto", "owl", "dlp")
    }
    return (
        f"At 50 % on SmolLM2 alpha 0.15 gives {pair['alp']} uniform; `--alpha auto` chose {chose[0]:g} and "
        f"{chose[1]:g}: {pair['alp_auto']}; OWL {pair['owl']}; DLP {pair['dlp']}."
    )


def test_ladder_half_sparsity_sentence_matches_its_logs():
    assert half_sparsity_sentence() in " ".join(README.split())


GRID = "smollm2/recovery/grid"
QWEN_RECOVERY = "qwen2.5-coder-0.5b/recovery"
fit_step_mark = load_script("recovery_grid").fit_step_mark
PRUNER_NAMES = {"wanda": "Wanda", "sparsegpt": "SparseGPT", "ria": "RIA", "magnitude": "magnitude"}


def recovery_grid_sentence(sparsity: float, allocation: str) -> str:
    """The README's sentence on one row group of issue 15's SmolLM2 grid (every pruner at
    ``sparsity`` with ``allocation``), from its logs."""

    def grid_log(pruner: str, recovery: str) -> dict:
        return json.loads((ROOT / "results" / GRID / f"{pruner}_{sparsity}_{allocation}_{recovery}.json").read_text())

    def grid_ppl(pruner: str, recovery: str) -> float:
        return grid_log(pruner, recovery)["ppl"]["wikitext2"]

    def change(pruner: str, recovery: str) -> str:
        return f"{grid_ppl(pruner, recovery) / grid_ppl(pruner, 'none'):.2f}x"

    def fitted(pruner: str, recovery: str) -> str:  # the perplexity, and the steps when not today's
        return cell(grid_ppl(pruner, recovery)) + fit_step_mark(grid_log(pruner, recovery))

    reconstruct = ", ".join(
        f"{name} {cell(grid_ppl(p, 'none'))} -> {fitted(p, 'reconstruct')} ({change(p, 'reconstruct')})"
        for p, name in PRUNER_NAMES.items()
    )
    dsnot = ", ".join(f"{name} {change(p, 'dsnot')}" for p, name in PRUNER_NAMES.items())
    both = ", ".join(f"{name} {fitted(p, 'both')}" for p, name in PRUNER_NAMES.items())
    if allocation == "uniform":
        lead = f"At {sparsity * 100:.0f} % uniform"
    else:
        chosen = ", ".join(f"{grid_log(p, 'none')['ratio_info']['alpha']:g}" for p in PRUNER_NAMES)
        lead = f"At {sparsity * 100:.0f} % with `--alpha auto` (it chose {chosen})"
    return (
        f"{lead}, `--reconstruct` gives {reconstruct}; `--refine dsnot` alone changes perplexity by "
        f"{dsnot}; DSnoT before reconstruction gives {both}."
    )


def recovery_best_sentence(sparsity: float) -> str:
    """The README's sentence on the grid's best run at ``sparsity`` rerun on every window."""
    full = json.loads((ROOT / "results" / GRID / f"best_{sparsity}_all_windows.json").read_text())
    value, dense = full["ppl"]["wikitext2"], full["ppl_dense"]["wikitext2"]
    return (
        f"rerun on all {full['eval']['windows']} windows (`best_{sparsity}_all_windows.json`), gives "
        f"{cell(value)} against dense {dense:.2f}, {value / dense:.1f}x."
    )


def reconstruct_fits(log: dict) -> list[dict]:
    """Every sub-module fit of a reconstructing run's log, block by block."""
    return [f for block in log["recovery"]["reconstruct"]["blocks"] for f in block.values()]


def median_fit_ratio(log: dict, key: str) -> float:
    """The median over a run's fits of ``key`` (``loss_after`` / ``loss_fitted``) over ``loss_before``."""
    ratios = sorted(f[key] / f["loss_before"] for f in reconstruct_fits(log))
    return ratios[len(ratios) // 2]


def recovery_qwen_sentence() -> str:
    """The README's sentence on issue 15's 0.5B rows (Wanda 70 % uniform), from their logs."""
    recovery = ROOT / "results/qwen2.5-coder-0.5b/recovery"
    none, dsnot, fit = (
        json.loads((recovery / "grid" / f"wanda_0.7_uniform_{r}.json").read_text())
        for r in ("none", "dsnot", "reconstruct")
    )
    absolute = json.loads((recovery / "abs_lr5e-3/wanda_0.7_uniform_reconstruct.json").read_text())
    assert absolute["recovery"]["options"]["lr"] == 5e-3 and fit["recovery"]["options"]["lr"] is None

    fits = reconstruct_fits(fit)
    assert all(f["held_out"] for f in fits)
    undone = sum(f["reverted"] for f in fits)
    base = none["ppl"]["wikitext2"]
    sparsegpt = {r: ppl(f"qwen2.5-coder-0.5b/recovery/grid/sparsegpt_0.7_uniform_{r}.json") for r in ("none", "dsnot")}
    return (
        f"On the 0.5B model (first {none['eval']['windows']} windows, dense {none['ppl_dense']['wikitext2']:.2f}) "
        f"at 70 % uniform `--refine dsnot` takes Wanda from {cell(base)} to "
        f"{cell(dsnot['ppl']['wikitext2'])} and SparseGPT from {cell(sparsegpt['none'])} to "
        f"{cell(sparsegpt['dsnot'])}. Reconstruction at the default steps does not help it. "
        "The absolute rate 5e-3 diverged "
        f"({cell(absolute['ppl']['wikitext2'])}, the sub-module losses rising "
        f"{median_fit_ratio(absolute, 'loss_after'):.0f}x, median; `recovery/abs_lr5e-3/`). With today's steps "
        f"Wanda's `--reconstruct` gives {cell(fit['ppl']['wikitext2'])}, {fit['ppl']['wikitext2'] / base:.2f}x, "
        f"although its fits lower the held-out sub-module loss (median {median_fit_ratio(fit, 'loss_fitted'):.2f}, "
        f"{undone} of {len(fits)} undone)."
    )


def recovery_half_sentence() -> str:
    """The README's sentence on SmolLM2 Wanda 50 % uniform reconstruction, then and now."""
    none = ppl(f"{GRID}/wanda_0.5_uniform_none.json")
    then = json.loads((ROOT / "results/smollm2/recovery/abs_lr5e-3/wanda_0.5_uniform_reconstruct.json").read_text())
    now = json.loads((ROOT / "results" / GRID / "wanda_0.5_uniform_reconstruct.json").read_text())
    then_fits, now_fits = reconstruct_fits(then), reconstruct_fits(now)
    assert then["recovery"]["options"]["lr"] == 5e-3 and all(f["held_out"] for f in now_fits)
    raised = sum(f["loss_after"] > f["loss_before"] for f in then_fits)
    undone = sum(f["reverted"] for f in now_fits)
    return (
        f"At 50 % on SmolLM2 the absolute rate made Wanda worse ({cell(none)} -> {cell(then['ppl']['wikitext2'])}, "
        f"{raised} of {len(then_fits)} fits raising their loss); today's steps give {cell(now['ppl']['wikitext2'])} "
        f"({now['ppl']['wikitext2'] / none:.2f}x), {undone} of {len(now_fits)} fits undone by the held-out check."
    )


def recovery_rate_sentence() -> str:
    """The README's sentence on ``--reconstruct_rel_lr 0.005`` against the default, on both models."""

    def log(path: str) -> dict:
        return json.loads((ROOT / "results" / path).read_text())

    def held_out_median(run: dict) -> float:
        assert all(f["held_out"] for f in reconstruct_fits(run))
        return median_fit_ratio(run, "loss_fitted")

    qwen, qwen_none = (
        log(f"{QWEN_RECOVERY}/wanda_0.7_uniform_reconstruct_rel0.005.json"),
        ppl(f"{QWEN_RECOVERY}/grid/wanda_0.7_uniform_none.json"),
    )
    small = log("smollm2/recovery/wanda_0.7_uniform_reconstruct_rel0.005.json")
    default = log(f"{GRID}/wanda_0.7_uniform_reconstruct.json")
    none = ppl(f"{GRID}/wanda_0.7_uniform_none.json")
    for run, rate in ((qwen, 0.005), (small, 0.005), (default, RecoveryOptions.rel_lr)):
        assert run["recovery"]["options"]["rel_lr"] == rate and run["recovery"]["options"]["lr"] is None
    half_small = ppl("smollm2/recovery/wanda_0.5_uniform_reconstruct_rel0.005.json")
    half_default, half_none = (ppl(f"{GRID}/wanda_0.5_uniform_{r}.json") for r in ("reconstruct", "none"))
    value, smaller = default["ppl"]["wikitext2"], small["ppl"]["wikitext2"]
    return (
        f"Smaller steps suit it: `--reconstruct_rel_lr 0.005` gives {cell(qwen['ppl']['wikitext2'])} "
        f"({qwen['ppl']['wikitext2'] / qwen_none:.2f}x). On SmolLM2 the same steps give {cell(smaller)} at 70 % "
        f"({smaller / none:.2f}x, against {value / none:.2f}x at the default {RecoveryOptions.rel_lr:g}) but "
        f"{cell(half_small)} at 50 % ({half_small / half_none:.2f}x, against {half_default / half_none:.2f}x); "
        "that suggests that the further pruning has moved a model from dense, the larger the step its fit wants. "
        "So no one rate suits every case, and the fits' own losses do not say which: at 0.005 SmolLM2's 70 % "
        f"fits lower their held-out loss more (median {held_out_median(small):.2f} against "
        f"{held_out_median(default):.2f}) and the model ends worse."
    )


def test_recovery_grid_sentence_matches_its_logs():
    text = " ".join(README.split())
    assert recovery_grid_sentence(0.7, "uniform") in text and recovery_grid_sentence(0.7, "alp_auto") in text
    assert recovery_best_sentence(0.7) in text and recovery_qwen_sentence() in text
    assert recovery_half_sentence() in text and recovery_rate_sentence() in text
    runs = {log.stem: json.loads(log.read_text()) for log in (ROOT / "results" / GRID).glob("*_0.7_*_*.json")}
    moved = []  # rows whose runs were given ratios that differ (gradients recomputed on another machine)
    for pruner in PRUNER_NAMES:  # every recovery keeps the zeros of the mask its run chose
        for allocation in ("uniform", "alp_auto"):
            row = [runs[f"{pruner}_0.7_{allocation}_{r}"] for r in ("none", "dsnot", "reconstruct", "both")]
            by_ratios = {}
            for run in row:
                by_ratios.setdefault(tuple(run["layer_ratios"]), set()).add(run["actual_sparsity"])
            assert all(len(zeros) == 1 for zeros in by_ratios.values())
            shift = max(abs(a - b) for a, b in zip(row[0]["layer_ratios"], row[-1]["layer_ratios"], strict=True))
            assert shift < 2e-6
            zeros = {z for zeros in by_ratios.values() for z in zeros}
            if len(zeros) > 1:
                weights = row[0]["storage"]["linear_dense_fp16_mib"] * 2**19  # fp16: two bytes a weight
                moved.append((pruner, allocation, round((max(zeros) - min(zeros)) * weights), shift))
    [(pruner, allocation, count, shift)] = moved
    assert (pruner, allocation) == ("sparsegpt", "alp_auto")
    assert f"auto runs have {count} zeros more than" in text
    assert f"ratios by at most {shift:.1e}.".replace("e-0", "e-") in text
    machine = load_script("recovery_grid").machine_label
    for name, run in runs.items():  # the caption's machines: refitted and later runs on one, the rest on another
        refitted = name.endswith(("_reconstruct", "_both", "_all_windows")) and name != "wanda_0.7_uniform_reconstruct"
        assert machine(run) == ("avx512-bf16" if refitted else "no-bf16 CPU"), name
    for r in ("none", "dsnot", "reconstruct", "both"):  # the search kept alpha 0: the uniform runs again
        assert runs[f"magnitude_0.7_alp_auto_{r}"]["ppl"] == runs[f"magnitude_0.7_uniform_{r}"]["ppl"]
    best = min(
        (run for name, run in runs.items() if not name.startswith("best_")), key=lambda run: run["ppl"]["wikitext2"]
    )
    assert best is runs["sparsegpt_0.7_alp_auto_reconstruct"]
    dense = best["ppl_dense"]["wikitext2"]
    assert f"is the grid's best at 70 % ({best['ppl']['wikitext2'] / dense:.1f}x dense {dense:.2f} over" in text


def searched_variants_sentence() -> str:
    """The README's sentences on the dp and evo variants measured beside the ladder (Wanda 70 %,
    SmolLM2, first 40 windows), from their logs in results/smollm2/ladder/ and searched/."""
    uniform, auto = ppl("smollm2/ladder/wanda_0.7_uniform.json"), ppl("smollm2/ladder/wanda_0.7_alp_auto.json")
    dp5, dp10 = ppl("smollm2/ladder/wanda_0.7_dp.json"), ppl("smollm2/searched/wanda_0.7_dp10.json")

    def evo_log(rel: str) -> tuple[float, str]:
        log = json.loads((ROOT / "results" / rel).read_text())
        evo = log["ratio_info"]["evo"]
        minutes = (
            f"{evo['search_seconds'] / 60:.1f} min search plus {evo['statistics_seconds'] / 60:.1f} min of statistics"
        )
        return log["ppl"]["wikitext2"], minutes

    default, default_time = evo_log("smollm2/ladder/wanda_0.7_evo.json")
    longer, longer_time = evo_log("smollm2/searched/wanda_0.7_evo_g40.json")
    started, started_time = evo_log("smollm2/searched/wanda_0.7_evo_auto_restats8.json")
    return (
        f"evo with its defaults (24 generations, `--evo_restats 8`) gives {cell(default)}, {default / uniform:.2f}x "
        f"uniform and {default / auto:.2f}x `--alpha auto` ({default_time}); on dense statistics (`--evo_restats 0`, "
        f"the default until then) it gave {cell(ppl('smollm2/searched/wanda_0.7_evo_dense_stats.json'))}. "
        f"40 generations instead of 24 give {cell(longer)} ({longer_time}), so 24 stay the default. "
        f"From the `--alpha auto` profile evo gives {cell(started)}, {started / uniform:.2f}x uniform and "
        f"{started / auto:.2f}x `--alpha auto` ({started_time}). A wider dp grid does not help: `--dp_levels 10` "
        f"gives {cell(dp10)} against {cell(dp5)}."
    )


def test_searched_variants_sentence_matches_its_logs():
    assert searched_variants_sentence() in " ".join(README.split())
    # the ladder's evo row ran with today's defaults, as the sentence says
    options = json.loads((ROOT / "results/smollm2/ladder/wanda_0.7_evo.json").read_text())["options"]
    searched = options["allocation"]["searched_options"]
    assert (searched["generations"], searched["restats"]) == (SearchedOptions().generations, RESTATS_DEFAULT["wanda"])
    assert (searched["generations"], searched["restats"]) == (24, 8)
