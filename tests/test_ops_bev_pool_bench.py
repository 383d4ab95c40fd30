"""benchmarks/bench_bev_pool.py: its LSS cumsum-trick baseline pools (and backpropagates) like the reference, and
one measurement per method runs end to end (in-process, on the script's ``smoke`` shape)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from bev_model.bev_grid import BEVGrid
from bev_model.ops.bev_pool_testing import forward_and_grads, random_inputs

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_bev_pool", ROOT / "benchmarks" / "bench_bev_pool.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_cumsum_trick_matches_reference_forward_and_grads():
    bench = _bench()
    grid = BEVGrid(pc_range=(-4.0, -3.0, -1.0, 4.0, 3.0, 1.0), H=6, W=8, Z=2)
    inputs = random_inputs(batch=2, cams=2, bins=5, feat_hw=(2, 3), channels=6, grid=grid, seed=2,
                           dtype=torch.float64)  # fmt: skip
    ref = forward_and_grads(inputs, "reference")
    depth = inputs["depth"].clone().requires_grad_(True)
    feat = inputs["feat"].clone().requires_grad_(True)
    keys = ("ranks_depth", "ranks_feat", "ranks_bev", "bev_feat_shape", "interval_starts", "interval_lengths")
    out = bench.cumsum_pool(depth, feat, *(inputs[k] for k in keys))
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))  # as forward_and_grads
    grads = torch.autograd.grad((out.float() * upstream).sum(), (depth, feat))
    for got, want in zip((out, *grads), ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_every_method_measures_on_the_smoke_shape():
    bench = _bench()
    args = argparse.Namespace(device="cpu", dtype="fp32", batch=1, repeats=2, budget_s=0.0)
    rows = [bench.worker("smoke", method, args) for method in bench.METHODS]
    assert [r["backend"] for r in rows] == ["reference", "cumsum", "cpu"]
    for r in rows:
        assert 0 < r["points"] < r["frustum"] and r["intervals"] > 0
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["err"] < 1e-5
