"""The analysis scripts behind the README's figures, on synthetic logs and a tiny model:
scripts/collect_results.py, compare_allocations.py, compare_placements.py, block_sensitivity.py
and the FLOP counts of bench_pipeline.py (make_tables.py: tests/test_tables.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import ROOT, load_script, tiny_model

SCRIPTS = ROOT / "scripts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_log(method: str, sparsity: float, ppl: float, **extra) -> dict:
    """A main.py --log_json object with the keys the scripts read."""
    log = {
        "model": "tiny",
        "prune_method": method,
        "sparsity_ratio": sparsity,
        "sparsity_type": "unstructured",
        "actual_sparsity": sparsity,
        "layer_ratios": [sparsity] * 3,
        "ratio_info": {"allocation": "uniform"},
        "quantization": None,
        "ppl": {"wikitext2": ppl},
        "ppl_dense": {"wikitext2": 21.61},
        "calibration": {"nsamples": 32, "seqlen": 512},
        "eval": {"windows": 20, "seqlen": 2048},
        "timings": {"prune": 12.4},
        "args": {},
    }
    return {**log, **extra}


def write_logs(folder: Path, logs: dict[str, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, log in logs.items():
        (folder / name).write_text(json.dumps(log))
    return folder


# ---- collect_results.py -------------------------------------------------------------------------


def collect(*args) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "collect_results.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_collect_results_rows(tmp_path):
    folder = write_logs(
        tmp_path / "logs",
        {
            "wanda.json": run_log("wanda", 0.7, 1545.19),
            "wanda_alp.json": run_log("wanda_alp", 0.7, 88665.33, actual_sparsity=0.70012),
            "ria_nm.json": run_log("ria", 0.5, 50.5, sparsity_type="2:4", args={"reallocation": True, "lsa": True}),
            "dense.json": run_log("dense", 0.0, 21.61, timings={}),
        },
    )
    lines = collect(folder)
    assert lines[0].startswith("| method | pattern | bits | target | actual | WikiText-2 ppl |")
    rows = lines[2:]
    # sorted by pattern, target, method
    assert rows == [
        "| ria | 2:4 | 16 | 0.50 | 0.5000 | 50.50 | 21.61 | 32x512 | 20x2048 | 12 | permuted + LSA |",
        "| dense | unstructured | 16 | 0.00 | 0.0000 | 21.61 | 21.61 | 32x512 | 20x2048 | 0 |  |",
        "| wanda | unstructured | 16 | 0.70 | 0.7000 | 1545.19 | 21.61 | 32x512 | 20x2048 | 12 |  |",
        "| wanda_alp | unstructured | 16 | 0.70 | 0.7001 | 88665.33 | 21.61 | 32x512 | 20x2048 | 12 |  |",
    ]


def test_collect_results_by_bits(tmp_path):
    storage = {"bits_per_weight": 2.5, "mask_format": "bitmask", "packed_mib": 40.25, "dense_fp16_mib": 256.6}
    folder = write_logs(
        tmp_path / "quant",
        {
            "w16.json": run_log("wanda", 0.5, 30.0),
            "w4.json": run_log("wanda", 0.5, 35.5, quantization={"wbits": 4}, storage=storage),
            "dense4.json": run_log("dense", 0.0, 22.5, quantization={"wbits": 4}),
        },
    )
    lines = collect("--by_bits", folder)
    assert lines[:4] == [
        "| method | sparsity | 16 bit | 4 bit |",
        "|---|---|---|---|",
        "| dense | - |  | 22.50 |",
        "| wanda | 0.50 | 30.00 | 35.50 |",
    ]
    assert "| wanda | 0.50 | 4 | 2.50 (bitmask) | 40.2 | 256.6 |" in lines


# ---- compare_allocations.py ---------------------------------------------------------------------


def allocation_logs(folder: Path, method: str = "wanda", s: float = 0.7) -> dict:
    """One log per allocation of compare_allocations.RUNS, named as the script names them."""
    module = load_script("compare_allocations")
    logs = {}
    for i, label in enumerate(module.RUNS):
        slug = label.replace(" ", "_").replace("(", "").replace(")", "")
        allocation = label.split()[0]
        info = {"allocation": allocation}
        key = module.PARAMETER.get(allocation)
        if key:
            info[key] = 0.15
        if label == "alp (alpha auto)":
            info["search"] = [{"alpha": 0.1, "loss": 5.25}, {"alpha": 0.15, "loss": None}]
        ratios = [s - 0.01 * i, s, s + 0.01 * i]
        logs[f"{method}_{s}_{slug}.json"] = run_log(method, s, 100.0 + i, ratio_info=info, layer_ratios=ratios)
    write_logs(folder, logs)
    return logs


def test_compare_allocations_table_and_plot(tmp_path, monkeypatch, capsys):
    module = load_script("compare_allocations")
    out, png = tmp_path / "alloc", tmp_path / "pic" / "alloc.png"
    allocation_logs(out)
    never = SimpleNamespace(run=lambda *a, **k: pytest.fail("ran main.py although the log exists"))
    monkeypatch.setattr(module, "subprocess", never)
    monkeypatch.setattr(sys, "argv", ["compare_allocations.py", "--out", str(out), "--png", str(png)])
    assert module.main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "| allocation | setting | WikiText-2 ppl | min..max block sparsity |",
        "|---|---|---|---|",
        "| uniform |  | 100.00 | 0.700..0.700 |",
    ]
    assert "| alp | alpha = 0.15 | 101.00 | 0.690..0.710 |" in lines
    assert "| alp (alpha auto) | alpha = 0.15 (searched: 0.1: 5.250, 0.15: n/a) | 102.00 | 0.680..0.720 |" in lines
    assert "| ramp (beta auto) | beta = 0.15 | 106.00 | 0.640..0.760 |" in lines
    assert len(lines) == 2 + len(module.RUNS) + 1 and lines[-1] == f"wrote {png}"
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_compare_allocations_runs_main_for_a_missing_log(tmp_path, monkeypatch, capsys):
    module = load_script("compare_allocations")
    out = tmp_path / "alloc"
    logs = allocation_logs(out, method="sparsegpt", s=0.6)
    missing = "sparsegpt_0.6_owl.json"
    (out / missing).unlink()
    commands = []

    def fake_run(cmd, check, cwd):
        commands.append(cmd)
        Path(cmd[cmd.index("--log_json") + 1]).write_text(json.dumps(logs[missing]))

    monkeypatch.setattr(module, "subprocess", SimpleNamespace(run=fake_run))
    argv = ["--prune_method", "sparsegpt", "--sparsity_ratio", "0.6", "--out", str(out), "--only", "owl", "uniform"]
    monkeypatch.setattr(sys, "argv", ["x", *argv, "--png", str(tmp_path / "a.png"), "--", "--nsamples", "8"])
    assert module.main() == 0
    assert len(commands) == 1
    cmd = commands[0]
    assert cmd[1:] == [
        str(ROOT / "main.py"),
        "--prune_method",
        "sparsegpt",
        "--sparsity_ratio",
        "0.6",
        "--allocation",
        "owl",
        "--nsamples",
        "8",
        "--log_json",
        str(out / missing),
    ]
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ")[0] for line in lines if line.startswith("| ") and "..0." in line]
    assert rows == ["| uniform", "| owl"]


# ---- compare_placements.py ----------------------------------------------------------------------


def test_compare_models_counts_mask_and_value_differences():
    module = load_script("compare_placements")
    a = {"w": torch.tensor([[0.0, 1.0], [2.0, 0.0]]), "b": torch.ones(2)}
    assert module.compare_models(a, {k: v.clone() for k, v in a.items()})["weights_identical"]
    moved_zero = {"w": torch.tensor([[1.0, 0.0], [2.0, 0.0]]), "b": torch.ones(2)}
    r = module.compare_models(a, moved_zero)
    assert r["mask_entries_differing"] == 2 and not r["masks_identical"] and r["first_differing"] == ["w"]
    value_only = {"w": torch.tensor([[0.0, 1.5], [2.0, 0.0]]), "b": torch.ones(2)}
    r = module.compare_models(a, value_only)
    assert r["masks_identical"] and not r["weights_identical"] and r["tensors_differing"] == 1
    assert module.compare_models(a, {"w": a["w"]})["same_keys"] is False


@pytest.mark.parametrize("differ", [False, True])
def test_compare_placements_summary(tmp_path, differ, capsys):
    """With every log and saved model already there (no main.py runs), the summary says whether
    each placement matched the default one, and the exit code follows."""
    module = load_script("compare_placements")
    out, models = tmp_path / "out", tmp_path / "models"
    weights = {"model.layers.0.mlp.down_proj.weight": torch.tensor([[0.0, 1.0], [2.0, 0.0]])}
    for placement in ("device", "offload", "auto"):
        log = run_log("wanda", 0.7, 1545.19, placement=placement, block_sparsity=[0.7, 0.7], dtype="float32")
        state = {k: v.clone() for k, v in weights.items()}
        if differ and placement == "auto":
            log["ppl"] = {"wikitext2": 1545.2}
            state["model.layers.0.mlp.down_proj.weight"][0, 0] = 3.0
        write_logs(out, {f"wanda_{placement}.json": log})
        (models / f"wanda_{placement}").mkdir(parents=True)
        save_file(state, models / f"wanda_{placement}" / "model.safetensors")
    assert module.main(["--out", str(out), "--models", str(models), "--pruners", "wanda"]) == int(differ)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all_identical"] is not differ
    result = summary["pruners"]["wanda"]["against_device"]
    assert result["offload"]["weights_identical"] and result["offload"]["ppl_identical"]
    assert result["auto"]["mask_entries_differing"] == int(differ)
    assert result["auto"]["ppl_identical"] is not differ
    assert summary["placements"]["offload"] == ["--device", "cpu:0", "--offload"]
    assert "--device_map auto" in summary["pruners"]["wanda"]["commands"]["auto"]
    table = capsys.readouterr().out
    assert f"| wanda | auto | {not differ} | {int(differ)} | {1545.2 if differ else 1545.19} | 1545.19 |" in table


# ---- block_sensitivity.py -----------------------------------------------------------------------


def test_spearman():
    module = load_script("block_sensitivity")
    assert module.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert module.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [0, 2, 1, 3] vs [0, 1, 2, 3]: 1 - 6 * 2 / (4 * 15) = 0.8
    assert module.spearman([0.1, 0.9, 0.5, 2.0], [1, 2, 3, 4]) == pytest.approx(0.8)


def test_pruning_costs_restore_every_block():
    """Each block is pruned alone and restored: the model ends bit-identical, and pruning a block
    that the pruner leaves unchanged (sparsity 0) costs nothing."""
    module = load_script("block_sensitivity")
    model = tiny_model("llama", layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.randint(3, 128, (4, 16))
    held_out = torch.randint(3, 128, (2, 16))
    stats = module.dense_block_statistics(model, calib, frozenset({"col_sq_norm"}), micro_batch=2, device=None)
    base, costs = module.pruning_costs(model, "wanda", stats, 0.7, held_out)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(costs) == 3 and all(c != 0 for c in costs) and base > 0
    _, zero = module.pruning_costs(model, "wanda", stats, 0.0, held_out)
    assert zero == [0.0, 0.0, 0.0]


def test_block_sensitivity_on_a_tiny_model(tiny_checkpoint, data_dir, tmp_path, monkeypatch, capsys):
    module = load_script("block_sensitivity")
    out_json, out_md, out_png = tmp_path / "s.json", tmp_path / "s.md", tmp_path / "s.png"
    argv = ["--model", str(tiny_checkpoint), "--data_dir", str(data_dir), "--device", "cpu", "--dtype", "float32"]
    argv += ["--nsamples", "4", "--seqlen", "32", "--held_out", "2", "--grad_nsamples", "2", "--grad_seqlen", "16"]
    argv += ["--sparsity_ratio", "0.6", "--out_json", str(out_json), "--out_md", str(out_md), "--out_png", str(out_png)]
    monkeypatch.setattr(sys, "argv", ["block_sensitivity.py", *argv])
    assert module.main() == 0
    figures = json.loads(out_json.read_text())
    assert figures["prune_method"] == "wanda" and figures["sparsity_ratio"] == 0.6
    costs = figures["costs"]
    # every block's cost measured (random weights: pruning may lower the loss)
    assert len(costs) == 4 and all(c != 0 and abs(c) < 10 for c in costs)
    expected = {"alp (l2_hundred_total)", "alp (l2_total)", "owl", "dlp", "alphapruning", "ramp (beta 0.01)"}
    assert set(figures["ratios"]) == expected == set(figures["spearman"])
    for name, ratios in figures["ratios"].items():
        assert len(ratios) == 4 and sum(ratios) / 4 == pytest.approx(0.6, abs=1e-6)  # equal-sized blocks
        assert figures["spearman"][name] == pytest.approx(module.spearman(costs, [0.6 - r for r in ratios]))
    md = out_md.read_text()
    assert f"dense held-out NLL {figures['dense_nll']:.4f}" in md
    for name, rho in figures["spearman"].items():
        assert f"| {name} | {rho:+.3f} |" in md
    for i, c in enumerate(costs):
        assert f"| {i} | {c:+.4f} |" in md
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert capsys.readouterr().out.rstrip().endswith(f"wrote {out_png}")


# ---- bench_pipeline.py: FLOP counts behind its roofline figures ----------------------------------


def test_bench_pipeline_flop_counts():
    module = load_script("bench_pipeline")
    model = tiny_model("llama", layers=3)  # d 32, f 64, q 32 / kv 16 wide
    shape = module.model_shape(model)
    d, f, kv = 32, 64, 16
    block = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d  # q o, k v, gate up down, two norms
    assert shape == {"block_params": 3 * block, "head_params": 128 * d, "layers": 3, "hidden": d}
    flops = module.forward_flops(shape, 2, 16, head=True)
    assert flops == 2 * (3 * block + 128 * d) * 32 + 2 * 16**2 * d * 3 * 2
    assert module.forward_flops(shape, 2, 16, head=False) == flops - 2 * 128 * d * 32

    class Args:
        eval_seqlen, grad_nsamples, grad_seqlen, nsamples, seqlen = 16, 2, 8, 4, 16

    stages = module.stage_flops(shape, Args, windows=3)
    assert stages["gradients"] == 3 * module.forward_flops(shape, 2, 8, head=True)
    assert stages["calibration_forward"] == 2 * module.forward_flops(shape, 4, 16, head=False)
    assert stages["eval"] == stages["eval_dense"] == module.forward_flops(shape, 3, 16, head=True)


def test_bench_pipeline_refuses_an_existing_run_log(tmp_path):
    """--run_log never replaces a file: refused before the GEMM probe or the timed run start."""
    kept = tmp_path / "run.json"
    kept.write_text('{"mine": 1}')
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_pipeline.py"), "--run_log", str(kept)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"--run_log {kept} exists" in out.stderr and "[bench]" not in out.stdout
    assert kept.read_text() == '{"mine": 1}'


# ---- plot_profiles.py ---------------------------------------------------------------------------


def test_plot_profiles_figure_and_correlations(tmp_path, capsys):
    module = load_script("plot_profiles")
    protect_costly = run_log("wanda", 0.7, 100.0, layer_ratios=[0.6, 0.7, 0.8])
    prune_costly = run_log("wanda", 0.7, 900.0, layer_ratios=[0.8, 0.7, 0.6])
    write_logs(tmp_path, {"a.json": protect_costly, "b.json": prune_costly})
    (tmp_path / "sens.json").write_text(json.dumps({"costs": [3.0, 2.0, 1.0]}))
    out = tmp_path / "fig.png"
    argv = [f"protect={tmp_path / 'a.json'}", f"prune={tmp_path / 'b.json'}", "--out", str(out)]
    assert module.main(argv + ["--sensitivity", str(tmp_path / "sens.json")]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| p")}
    assert rows["protect"].rstrip(" |").endswith("-1.00") and rows["prune"].rstrip(" |").endswith("+1.00")
    with pytest.raises(FileExistsError):  # an existing figure is kept unless --overwrite
        module.main(argv)
    (tmp_path / "sens.json").write_text(json.dumps({"costs": [1.0, 2.0]}))
    with pytest.raises(SystemExit):  # block counts disagree
        module.main(argv + ["--overwrite", "--sensitivity", str(tmp_path / "sens.json")])
