"""``bev_pool_v2`` (BEVPoolv2): the official test vector, the three backends against each other, gradcheck,
index preparation against ``BEVGrid`` and input validation.

The Triton backend runs on CPU through Triton's interpreter. ``TRITON_INTERPRET=1`` must be set before triton is
first imported and would change Triton for every other test in the process, so the default run has one test that
re-runs this file in a subprocess with the variable set (plus a marker variable); the interpreter cases are
defined only there (as tests/test_ops_triton.py does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bev_model.bev_grid import BEVGrid
from bev_model.ops import BEV_POOL_ENV_VAR, bev_pool_v2, bev_pool_v2_prepare
from bev_model.ops.bev_pool_prepare import interval_runs
from bev_model.ops.bev_pool_testing import forward_and_grads, random_inputs
from bev_model.ops.bev_pool_triton import block_sizes
from bev_model.ops.triton_util import interpreter_active

_MARKER = "BEVSTREAM_BEV_POOL_INTERP_SUBPROCESS"
INNER = os.environ.get(_MARKER) == "1"
SEED = 5

GRID = BEVGrid(pc_range=(-4.0, -3.0, -1.0, 4.0, 3.0, 1.0), H=6, W=8, Z=2)
# spread 1.3: a good share of the points fall outside the grid. "sparse": few points per cell, many cells
# empty; "dense_odd_c": every cell filled, some intervals longer than the Triton tile (several tile iterations).
CASES = {
    "sparse": dict(batch=2, cams=2, bins=3, feat_hw=(2, 3), channels=5, grid=GRID),
    "dense_odd_c": dict(batch=1, cams=3, bins=24, feat_hw=(3, 4), channels=19, grid=BEVGrid(GRID.pc_range, 3, 4, 1)),
}


def official_vector(device="cpu"):
    """BEVDet's ``test_bev_pool_v2`` inputs: 8 depth values, all-ones features, two cells of two points each."""
    depth = torch.tensor([0.3, 0.4, 0.2, 0.1, 0.7, 0.6, 0.8, 0.9], device=device).view(1, 1, 2, 2, 2)
    feat = torch.ones(1, 1, 2, 2, 2, device=device)
    ranks_depth = torch.tensor([0, 4, 1, 6], dtype=torch.int32, device=device)
    ranks_feat = torch.tensor([0, 0, 1, 2], dtype=torch.int32, device=device)
    ranks_bev = torch.tensor([0, 0, 1, 1], dtype=torch.int32, device=device)
    starts, lengths = interval_runs(ranks_bev)
    return depth, feat, ranks_depth, ranks_feat, ranks_bev, (1, 1, 2, 2, 2), starts, lengths


def check_official_vector(backend: str) -> None:
    depth, feat, *rest = official_vector()
    depth.requires_grad_(True)
    feat.requires_grad_(True)
    out = bev_pool_v2(depth, feat, *rest, backend=backend)
    assert out.shape == (1, 2, 1, 2, 2)
    loss = out.sum()
    loss.backward()
    assert loss.item() == pytest.approx(4.4, abs=1e-6)
    torch.testing.assert_close(depth.grad.flatten(), torch.tensor([2.0, 2, 0, 0, 2, 0, 2, 0]))
    torch.testing.assert_close(feat.grad.flatten(), torch.tensor([1.0, 1, 0.4, 0.4, 0.8, 0.8, 0, 0]))


def assert_results_close(got, want, rtol, atol, what):
    for name, x, y in zip(("out", "grad_depth", "grad_feat"), got, want):
        scale = max(y.abs().max().item(), 1.0)
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol * scale, msg=lambda m, n=name: f"{what} {n}: {m}")


def test_random_cases_exercise_dropped_points_empty_cells_and_long_intervals():
    """The agreement tests below only mean something if the cases exercise these edge conditions."""
    for name, case in CASES.items():
        inputs = random_inputs(**case, seed=SEED)
        P = inputs["ranks_bev"].numel()
        assert 0 < P < inputs["depth"].numel(), f"{name}: no point dropped"
    sparse = random_inputs(**CASES["sparse"], seed=SEED)
    B, Z, Y, X, C = sparse["bev_feat_shape"]
    assert sparse["interval_starts"].numel() < B * Z * Y * X / 2
    dense = random_inputs(**CASES["dense_odd_c"], seed=SEED)
    assert dense["interval_lengths"].max() > block_sizes(dense["bev_feat_shape"][4])[0]


if not INNER:

    @pytest.mark.parametrize("backend", ["reference", "cpu"])
    def test_official_test_vector(backend):
        check_official_vector(backend)

    @pytest.mark.parametrize("case", sorted(CASES))
    def test_cpu_matches_reference(case):
        inputs = random_inputs(**CASES[case], seed=SEED)
        ref = forward_and_grads(inputs, "reference", torch.float64)
        cpu = forward_and_grads(inputs, "cpu", torch.float32)
        assert_results_close(cpu, ref, rtol=1e-5, atol=1e-5, what=case)
        out = ref[0]
        B, Z, Y, X, C = inputs["bev_feat_shape"]
        filled = torch.zeros(B * Z * Y * X, dtype=torch.bool)
        filled[inputs["ranks_bev"].long()] = True
        cells = out.permute(0, 2, 3, 4, 1).reshape(-1, C)
        assert (cells[~filled] == 0).all() and (cells[filled].abs().sum(1) > 0).all()

    @pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
    def test_cpu_half_precision_matches_reference(dtype, tol):
        inputs = random_inputs(**CASES["dense_odd_c"], seed=SEED, dtype=dtype)
        ref = forward_and_grads(inputs, "reference", torch.float64)
        got = forward_and_grads(inputs, "cpu", dtype)
        assert_results_close(got, ref, rtol=tol, atol=tol, what=str(dtype))

    @pytest.mark.parametrize("backend", ["reference", "cpu"])
    def test_gradcheck_float64(backend):
        inputs = random_inputs(batch=1, cams=2, bins=3, feat_hw=(2, 2), channels=3, grid=GRID, seed=SEED,
                               dtype=torch.float64)  # fmt: skip
        assert inputs["interval_starts"].numel() > 1
        rest = {k: v for k, v in inputs.items() if k not in ("depth", "feat")}
        depth = inputs["depth"].requires_grad_(True)
        feat = inputs["feat"].requires_grad_(True)
        assert torch.autograd.gradcheck(lambda d, f: bev_pool_v2(d, f, backend=backend, **rest), (depth, feat))

    def test_repeated_depth_index_accumulates_in_every_backend():
        """Two points reading one depth element (not produced by prepare, but valid input): its gradient is the
        sum of both points' (the per-point depth gradients are scattered with a sum)."""
        depth, feat, _, _, _, shape, _, _ = official_vector()
        feat = torch.randn(feat.shape, generator=torch.Generator().manual_seed(0))
        rd = torch.tensor([3, 3, 5], dtype=torch.int32)
        rf = torch.tensor([0, 1, 1], dtype=torch.int32)
        rb = torch.tensor([1, 2, 2], dtype=torch.int32)
        starts, lengths = interval_runs(rb)
        inputs = dict(depth=depth, feat=feat, ranks_depth=rd, ranks_feat=rf, ranks_bev=rb, bev_feat_shape=shape,
                      interval_starts=starts, interval_lengths=lengths)  # fmt: skip
        ref = forward_and_grads(inputs, "reference", torch.float64)
        assert ref[1].flatten()[3] != 0
        assert_results_close(forward_and_grads(inputs, "cpu"), ref, rtol=1e-5, atol=1e-6, what="repeated")

    @pytest.mark.parametrize("backend", ["reference", "cpu"])
    def test_no_point_in_grid_gives_zeros(backend):
        depth = torch.rand(1, 2, 3, 2, 2, requires_grad=True)
        feat = torch.rand(1, 2, 2, 2, 4, requires_grad=True)
        far = torch.full((1, 2, 3, 2, 2, 3), 100.0)
        ranks_bev, ranks_depth, ranks_feat, starts, lengths = bev_pool_v2_prepare(far, GRID)
        assert ranks_bev.numel() == 0 and starts.numel() == 0
        out = bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev, (1, 2, 6, 8, 4), starts, lengths,
                          backend=backend)  # fmt: skip
        assert out.shape == (1, 4, 2, 6, 8) and (out == 0).all()
        out.sum().backward()
        assert (depth.grad == 0).all() and (feat.grad == 0).all()

    def test_auto_backend_is_cpu_on_cpu_and_env_var_overrides(monkeypatch):
        from bev_model.ops import resolve_backend

        monkeypatch.delenv(BEV_POOL_ENV_VAR, raising=False)
        dev = torch.device("cpu")
        assert resolve_backend("auto", dev, env_var=BEV_POOL_ENV_VAR) == "cpu"
        assert resolve_backend("auto", torch.device("cuda", 0), env_var=BEV_POOL_ENV_VAR) == "triton"
        monkeypatch.setenv(BEV_POOL_ENV_VAR, "reference")
        assert resolve_backend("auto", dev, env_var=BEV_POOL_ENV_VAR) == "reference"
        assert resolve_backend("auto", dev) == "cpu"  # the attention op's variable is separate
        monkeypatch.setenv(BEV_POOL_ENV_VAR, "fast")
        with pytest.raises(ValueError, match=BEV_POOL_ENV_VAR):
            bev_pool_v2(*official_vector())

    def test_triton_on_cpu_without_interpreter_is_a_clear_error():
        if interpreter_active():
            pytest.skip("this process imported triton with TRITON_INTERPRET=1")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            bev_pool_v2(*official_vector(), backend="triton")

    def test_triton_kernels_under_interpreter():
        """Run this file's interpreter cases in a fresh process with TRITON_INTERPRET=1."""
        env = {**os.environ, "TRITON_INTERPRET": "1", _MARKER: "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(Path(__file__))]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                              cwd=Path(__file__).parents[1])  # fmt: skip
        assert proc.returncode == 0, f"interpreter cases failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]

else:

    def test_interpreter_is_active():
        assert interpreter_active()

    def test_triton_official_test_vector():
        check_official_vector("triton")

    @pytest.mark.parametrize("case", sorted(CASES))
    def test_triton_matches_reference_and_cpu(case):
        inputs = random_inputs(**CASES[case], seed=SEED)
        ref = forward_and_grads(inputs, "reference", torch.float64)
        tri = forward_and_grads(inputs, "triton", torch.float32)
        assert_results_close(tri, ref, rtol=1e-5, atol=1e-5, what=f"{case} triton")
        assert_results_close(tri, forward_and_grads(inputs, "cpu", torch.float32), rtol=1e-5, atol=1e-5,
                             what=f"{case} triton vs cpu")  # fmt: skip

    @pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
    def test_triton_half_precision_matches_reference(dtype, tol):
        """fp16/bf16 inputs, fp32 accumulation: compare with float64 on the same rounded inputs."""
        inputs = random_inputs(**CASES["dense_odd_c"], seed=SEED, dtype=dtype)
        ref = forward_and_grads(inputs, "reference", torch.float64)
        got = forward_and_grads(inputs, "triton", dtype)
        assert_results_close(got, ref, rtol=tol, atol=tol, what=str(dtype))

    def test_triton_mixed_dtypes_as_under_autocast():
        """fp32 depth (a softmax), bf16 features: output in the promoted dtype, each grad in its input's."""
        inputs = random_inputs(**CASES["sparse"], seed=SEED)
        inputs["feat"] = inputs["feat"].to(torch.bfloat16)
        depth = inputs["depth"].clone().requires_grad_(True)
        feat = inputs["feat"].clone().requires_grad_(True)
        rest = {k: v for k, v in inputs.items() if k not in ("depth", "feat")}
        out = bev_pool_v2(depth, feat, backend="triton", **rest)
        assert out.dtype == torch.float32
        out.sum().backward()
        assert (depth.grad.dtype, feat.grad.dtype) == (torch.float32, torch.bfloat16)
        ref = forward_and_grads(inputs, "reference", torch.float64)
        torch.testing.assert_close(out.double(), ref[0], rtol=1e-4, atol=1e-4)
