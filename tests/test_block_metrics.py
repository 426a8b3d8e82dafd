"""Per-block scores for OWL, DLP and AlphaPruning, and the allocation hand-off through main.py."""

import json

import pytest
import torch

import main as main_cli
from lib.block_metrics import (
    block_sizes,
    eigenvalues,
    fit_power_law_peak,
    heavy_tail_alpha,
    hill_alpha,
    peak_alpha,
    wanda_block_metrics,
)
from lib.pruners.wanda import wanda_score
from lib.sequential import capture_block_inputs
from tests.conftest import tiny_model


def test_wanda_block_metrics_on_first_block():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (3, 12))
    metrics = wanda_block_metrics(model, ids, owl_m=2.0, micro_batch=2)
    assert metrics["outlier_share"].shape == (3,) and metrics["median"].shape == (3,)
    # recompute block 0 by hand from its captured inputs
    inputs = capture_block_inputs(model, ids, micro_batch=3)
    block = model.model.layers[0]
    acts = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, o, n=n: acts.__setitem__(n, a[0]))
        for n, m in block.named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    args, kwargs = inputs.call_args(inputs.hidden[0])
    with torch.no_grad():
        block(inputs.hidden[0], *args, **kwargs)
    for h in hooks:
        h.remove()
    scores = torch.cat(
        [
            wanda_score(m.weight, acts[n].reshape(-1, acts[n].shape[-1]).square().sum(0)).flatten()
            for n, m in block.named_modules()
            if isinstance(m, torch.nn.Linear)
        ]
    )
    assert metrics["median"][0].item() == pytest.approx(scores.median().item(), rel=1e-4)
    assert metrics["outlier_share"][0].item() == pytest.approx((scores > 2 * scores.mean()).float().mean().item())
    # DLP's block score: the released code's mean by default, the paper's median on request
    assert metrics["mean"][0].item() == pytest.approx(scores.mean().item(), rel=1e-4)
    assert torch.equal(metrics["dlp"], metrics["mean"])
    assert not torch.equal(metrics["mean"], metrics["median"])
    median = wanda_block_metrics(model, ids, dlp_statistic="median", micro_batch=2)
    assert torch.equal(median["dlp"], metrics["median"])
    with pytest.raises(ValueError, match="dlp_statistic 'max'"):
        wanda_block_metrics(model, ids, dlp_statistic="max")


def test_hill_alpha_smaller_for_heavier_tails():
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen))
    k = torch.arange(1, 201, dtype=torch.float32)
    heavy = U @ torch.diag(k**-1.0) @ V.T
    light = U @ torch.diag(k**-0.3) @ V.T
    assert hill_alpha(heavy) < hill_alpha(light)
    model = tiny_model("qwen2")
    assert heavy_tail_alpha(model).shape == (3,)
    assert block_sizes(model) == [
        sum(m.weight.numel() for m in b.modules() if isinstance(m, torch.nn.Linear)) for b in model.model.layers
    ]


@pytest.mark.parametrize("allocation", ["owl", "dlp", "alphapruning", "ramp"])
def test_allocations_reach_the_pruner(allocation, tiny_checkpoint, tmp_path, data_dir):
    log = tmp_path / "r.json"
    argv = [
        "--model",
        str(tiny_checkpoint),
        "--data_dir",
        str(data_dir),
        "--prune_method",
        "wanda",
        "--allocation",
        allocation,
        "--sparsity_ratio",
        "0.6",
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--eval_seqlen",
        "32",
        "--eval_windows",
        "1",
        "--skip_dense",
        "--owl_lambda",
        "0.1",
        "--beta",
        "0.05",
        "--dtype",
        "float32",
        "--log_json",
        str(log),
    ]
    assert main_cli.main(argv) == 0
    result = json.loads(log.read_text())
    assert result["ratio_info"]["allocation"] == allocation
    ratios = result["layer_ratios"]
    assert sum(ratios) / 4 == pytest.approx(0.6) and max(ratios) > min(ratios)
    assert result["block_sparsity"] == pytest.approx(ratios, abs=0.04)


def _alpha_auto_argv(checkpoint, data_dir, log) -> list[str]:
    return [
        "--model",
        str(checkpoint),
        "--data_dir",
        str(data_dir),
        "--prune_method",
        "wanda_alp",
        "--alpha",
        "auto",
        "--alpha_max",
        "0.1",
        "--search_candidates",
        "3",
        "--search_nsamples",
        "2",
        "--search_seqlen",
        "32",
        "--search_windows",
        "2",
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--grad_nsamples",
        "2",
        "--eval_seqlen",
        "32",
        "--eval_windows",
        "1",
        "--skip_dense",
        "--dtype",
        "float32",
        "--log_json",
        str(log),
    ]


def test_alpha_auto_searches_on_held_out_calibration(tiny_checkpoint, tmp_path, data_dir):
    log = tmp_path / "r.json"
    assert main_cli.main(_alpha_auto_argv(tiny_checkpoint, data_dir, log)) == 0
    info = json.loads(log.read_text())["ratio_info"]
    search = info["search"]
    assert [r["alpha"] for r in search] == [-0.1, 0.0, 0.1]
    best = min(search, key=lambda r: r["loss"])
    assert info["alpha"] == best["alpha"]
    assert search[1]["ratios"] == pytest.approx([0.7] * 4)  # alpha 0 is the uniform allocation


def released_alpha_peak(eig: torch.Tensor, bins: int = 100) -> float:
    """The published ``xmin_peak`` procedure as a plain loop (no vectorisation), fp64 maths."""
    log10 = torch.log10(eig)
    counts = torch.histc(log10, bins, min=float(log10.min()), max=float(log10.max()))
    peak = 10 ** torch.linspace(float(log10.min()), float(log10.max()), bins + 1)[torch.argmax(counts)]
    lowest, highest = torch.log10(0.95 * peak), 1.5 * peak
    e = eig.double()
    N = len(e)
    alphas, kss = [0.0] * (N - 1), [1.0] * (N - 1)
    for i in range(N - 1):
        if eig[i] < lowest:
            continue
        if eig[i] > highest:
            break
        n = N - i
        alphas[i] = 1 + n / float(sum(torch.log(e[j] / e[i]) for j in range(i, N)))
        if alphas[i] > 1:
            kss[i] = max(abs(1 - float(e[i + k] / e[i]) ** (1 - alphas[i]) - k / n) for k in range(n))
    return alphas[kss.index(min(kss))]  # the first candidate of smallest KS distance


def pareto_spectrum(alpha: float, count: int, seed: int) -> torch.Tensor:
    """``count`` ascending eigenvalues drawn from a power law ``p(x) ~ x^-alpha``, ``x >= 1``."""
    u = torch.rand(count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (u ** (-1 / (alpha - 1))).sort().values.float()


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_alpha_peak_recovers_a_known_power_law(alpha):
    fit = fit_power_law_peak(pareto_spectrum(alpha, 2000, seed=1))
    # ML standard error (alpha - 1) / sqrt(n) is about 0.02-0.08 here
    assert fit.alpha == pytest.approx(alpha, abs=0.15)
    assert 1.0 <= fit.xmin < 1.2 and fit.ks < 0.05


def test_alpha_peak_matches_the_published_loop():
    gen, gen10 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(10)
    spectra = [
        pareto_spectrum(2.5, 300, seed=3) * 40.0,
        pareto_spectrum(3.0, 300, seed=4) * 1e-3,  # peak below 1: log10(0.95 peak) < 0 bounds nothing
        # a power law from 10 with a cluster at 200 that makes the histogram peak: the released lower
        # bound log10(0.95 * 200) = 2.3 lets x_min = 10 win (alpha 2.03); a linear 0.95 * 200 would give 3.08
        torch.cat([pareto_spectrum(2.5, 400, seed=7) * 10.0, 200.0 + torch.linspace(0, 0.5, 60)]).sort().values,
        eigenvalues(torch.randn(96, 160, generator=gen)),  # Marchenko-Pastur bulk
        eigenvalues(torch.randn(96, 96, generator=gen) @ torch.diag(torch.linspace(0.1, 3, 96) ** 2)),
        # log-normally scaled columns: here the fit moves with the histogram's bin count (1.38 vs 1.56 at 50)
        eigenvalues(torch.randn(64, 128, generator=gen10) * torch.exp(torch.randn(128, generator=gen10))),
    ]
    for eig in spectra:
        assert fit_power_law_peak(eig, chunk=7).alpha == pytest.approx(released_alpha_peak(eig), rel=1e-9)


def test_alpha_peak_differs_from_the_median_fit_and_ranks_tails():
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen))

    def with_spectrum(eig):
        return U @ torch.diag(eig.sqrt()) @ V.T

    heavy, light = with_spectrum(pareto_spectrum(2.0, 200, seed=5)), with_spectrum(pareto_spectrum(4.0, 200, seed=5))
    assert peak_alpha(heavy) < peak_alpha(light)
    assert peak_alpha(heavy) != pytest.approx(hill_alpha(heavy), rel=1e-3)
    model = tiny_model("llama")
    peak, median = heavy_tail_alpha(model), heavy_tail_alpha(model, xmin="median")
    assert peak.shape == median.shape == (3,) and not torch.allclose(peak, median)
    by_hand = [
        sum(peak_alpha(m.weight) for m in b.modules() if isinstance(m, torch.nn.Linear)) for b in model.model.layers
    ]
    assert peak.tolist() == pytest.approx([a / 7 for a in by_hand])
    with pytest.raises(ValueError, match="xmin 'mid'"):
        heavy_tail_alpha(model, xmin="mid")


def test_alpha_auto_ranks_the_masks_alone(tiny_checkpoint, tmp_path, data_dir):
    """The search scores each candidate without --refine / --reconstruct / --wbits (they run once,
    on the chosen ratios): its losses and choice are those of the same run without them."""
    logs = {}
    for label, extra in {"plain": [], "recovered": ["--refine", "dsnot", "--reconstruct", "--wbits", "4"]}.items():
        log = tmp_path / f"{label}.json"
        assert main_cli.main(_alpha_auto_argv(tiny_checkpoint, data_dir, log) + extra) == 0
        logs[label] = json.loads(log.read_text())
    plain, recovered = (logs[k]["ratio_info"] for k in ("plain", "recovered"))
    assert recovered["search"] == plain["search"] and recovered["alpha"] == plain["alpha"]
    assert "reconstruct" in logs["recovered"]["timings"] and logs["recovered"]["recovery"]
