"""The fused Triton kernel, run on CPU through Triton's interpreter, against the reference.

``TRITON_INTERPRET=1`` only works when set before triton is first imported, and it would change
Triton for every other test in the process. So the default pytest run has one test that re-runs
this file in a subprocess with the variable set (plus a marker variable); the interpreter cases
(``_interpreter_cases``) are defined only in that subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bev_model.ops import MSDeformAttn, multi_scale_deformable_attn
from bev_model.ops.testing import Problem, fit_toy_target, forward_and_grads, level_tensors, random_inputs
from bev_model.ops.triton_kernel import block_sizes, interpreter_active

_MARKER = "BEVSTREAM_TRITON_INTERP_SUBPROCESS"
INNER = os.environ.get(_MARKER) == "1"

# Q > BLOCK_Q somewhere (several q-blocks, ragged tail); D not a multiple of the block; L, P odd.
CASES = {
    "single_level": Problem(batch=1, shapes=((6, 9),), queries=20, heads=2, head_dim=8, points=3),
    "multi_level": Problem(
        batch=2, shapes=((8, 10), (4, 5), (1, 3)), queries=7, heads=3, head_dim=16, points=2
    ),
    "odd_head_dim": Problem(batch=1, shapes=((5, 7), (2, 2)), queries=9, heads=2, head_dim=33, points=2),
    "edges": Problem(batch=1, shapes=((8, 16), (4, 8)), queries=12, heads=2, head_dim=6, points=4),
}


def _assert_close(got, want, rtol, atol, what):
    for name, x, y in zip(("out", "grad_value", "grad_locations", "grad_weights"), got, want):
        scale = max(y.abs().max().item(), 1.0)
        torch.testing.assert_close(
            x, y, rtol=rtol, atol=atol * scale, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


def test_block_sizes_cover_head_dim():
    assert block_sizes(32) == (64, 32, 8)
    assert block_sizes(32, kind="bwd") == (64, 32, 16)
    assert block_sizes(64) == (32, 64, 8)
    bq, bd, _ = block_sizes(33, num_queries=5)
    assert bd == 64 and bq == 16


if not INNER:

    def test_triton_kernel_under_interpreter():
        """Run this file's interpreter cases in a fresh process with TRITON_INTERPRET=1."""
        env = {**os.environ, "TRITON_INTERPRET": "1", _MARKER: "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(Path(__file__))]
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1]
        )
        assert proc.returncode == 0, (
            f"interpreter cases failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        )
        assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
        print(proc.stdout.strip().splitlines()[-1])

    def test_triton_on_cpu_without_interpreter_is_a_clear_error():
        if interpreter_active():
            pytest.skip("this process imported triton with TRITON_INTERPRET=1")
        inputs = random_inputs(Problem(batch=1, shapes=((3, 4),), queries=2, heads=1, head_dim=4, points=1))
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            multi_scale_deformable_attn(**inputs, backend="triton")

else:

    def test_interpreter_is_active():
        assert interpreter_active()

    @pytest.mark.parametrize("case", sorted(CASES))
    def test_triton_matches_reference_fp32(case):
        inputs = random_inputs(CASES[case], seed=11, edge_fraction=0.7 if case == "edges" else 0.0)
        ref = forward_and_grads(inputs, "reference", torch.float64)
        tri = forward_and_grads(inputs, "triton", torch.float32)
        _assert_close(tri, ref, rtol=1e-4, atol=1e-5, what=case)

    @pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
    def test_triton_half_precision_matches_reference(dtype, tol):
        """fp16/bf16 inputs, fp32 accumulation (grad_value through an fp32 atomic buffer): compare with the
        float64 reference evaluated on the same rounded inputs."""
        inputs = random_inputs(CASES["multi_level"], seed=12)
        rounded = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
        ref = forward_and_grads(rounded, "reference", torch.float64)
        tri = forward_and_grads(rounded, "triton", dtype)
        _assert_close(tri, ref, rtol=tol, atol=tol, what=str(dtype))

    def test_triton_mixed_dtypes_as_under_autocast():
        """bf16 values with fp32 locations and weights (autocast-style): output bf16, each grad in its input's dtype."""
        inputs = random_inputs(CASES["multi_level"], seed=13)
        inputs["value"] = inputs["value"].to(torch.bfloat16)
        ref = forward_and_grads(inputs, "reference", torch.float64)
        value = inputs["value"].clone().requires_grad_(True)
        loc = inputs["sampling_locations"].clone().requires_grad_(True)
        weights = inputs["attention_weights"].clone().requires_grad_(True)
        out = multi_scale_deformable_attn(
            value, inputs["spatial_shapes"], inputs["level_start_index"], loc, weights, backend="triton"
        )
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        assert (value.grad.dtype, loc.grad.dtype, weights.grad.dtype) == (
            torch.bfloat16,
            torch.float32,
            torch.float32,
        )
        torch.testing.assert_close(out.double(), ref[0], rtol=2e-2, atol=2e-2)

    def test_triton_output_dtype_and_shape():
        inputs = random_inputs(CASES["single_level"], dtype=torch.float16, seed=1)
        out = multi_scale_deformable_attn(**inputs, backend="triton")
        assert out.dtype == torch.float16 and out.shape == (1, 20, 16)

    def test_module_trains_with_triton_backend():
        torch.manual_seed(0)
        shapes = ((6, 8), (3, 4))
        spatial_shapes, level_start_index = level_tensors(shapes)
        attn = MSDeformAttn(embed_dims=16, num_heads=2, num_levels=2, num_points=2, backend="triton")
        query = torch.randn(1, 10, 16)
        value = torch.randn(1, 60, 16)
        ref = torch.rand(1, 10, 2, 2)
        target = torch.randn(1, 10, 16)
        losses = fit_toy_target(attn, query, ref, value, spatial_shapes, level_start_index, target, steps=8,
                                lr=2e-2)
        assert losses[-1] < 0.8 * losses[0], losses
