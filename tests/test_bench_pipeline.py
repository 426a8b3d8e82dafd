"""scripts/bench_pipeline.py: the GEMM probe's shapes and layouts (the timed run is a benchmark)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    yield load_script("bench_pipeline")
    sys.modules.pop("bench_pipeline", None)


def test_probe_covers_the_model_shapes_in_both_layouts(bench):
    config = SimpleNamespace(hidden_size=64, intermediate_size=160)
    shapes = bench.probe_shapes(config, 32, torch.device("cpu"))
    assert shapes["up/gate 32x64x160"] == (32, 64, 160, False)
    assert shapes["up/gate 32x64x160 as nn.Linear"] == (32, 64, 160, True)
    assert shapes["down 32x160x64 as nn.Linear"] == (32, 160, 64, True)
    assert sum(linear for *_, linear in shapes.values()) == 3 and len(shapes) == 9


def test_probe_times_every_shape(bench, monkeypatch):
    calls = []

    def fake_seconds(m, k, n, dtype, device, repeats=5, as_linear=False):
        calls.append(as_linear)
        return 2 * m * k * n / 1e12 / (2.0 if as_linear else 1.0)  # the linear layout twice as fast

    monkeypatch.setattr(bench, "gemm_seconds", fake_seconds)
    probe = bench.gemm_probe({"a": (8, 8, 8, False), "b": (8, 8, 8, True)}, torch.float32, torch.device("cpu"))
    assert probe == pytest.approx({"a": 1.0, "b": 2.0}) and calls == [False, True]
    assert bench.gemm_seconds(16, 8, 4, torch.float32, torch.device("cpu"), repeats=1, as_linear=True) > 0
