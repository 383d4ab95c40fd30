"""The fused Triton kernel compiled and run on a CUDA GPU, against the float64 reference.

Skipped where no CUDA device is present (CI, the 2-core dev machine); there the kernel is covered by
``test_ops_triton.py`` (interpreter) and ``test_ops_triton_aot.py`` (sm_80/sm_90 cubins). Run on a GPU:

    python -m pytest -q -m gpu tests/test_ops_triton_cuda.py

Inputs are fresh random draws on every run (the seed is printed in any failure), at the sizes the
model uses: the tiny preset's spatial cross-attention and temporal self-attention, a multi-level
decoder call, and a ragged case (queries not a multiple of the block, odd head dim, odd L and P).
Errors are measured as ``||got - ref|| / ||ref||`` per output and gradient, plus the largest element error.
"""

from __future__ import annotations

import os

import pytest
import torch

from bev_model.ops import MSDeformAttn, multi_scale_deformable_attn
from bev_model.ops.testing import Problem, forward_and_grads, level_tensors, random_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROBLEMS = {
    "tiny_sca": Problem(batch=6, shapes=((12, 32), (6, 16), (3, 8), (2, 4)), queries=2500, heads=4,
                        head_dim=32, points=4),
    "tiny_tsa": Problem(batch=2, shapes=((50, 50),), queries=2500, heads=4, head_dim=32, points=4),
    "decoder": Problem(batch=2, shapes=((64, 64), (32, 32), (16, 16), (8, 8)), queries=900, heads=8,
                       head_dim=32, points=4),
    "ragged": Problem(batch=1, shapes=((37, 23), (19, 12), (5, 3)), queries=1001, heads=3, head_dim=33,
                      points=3),
}
NAMES = ("out", "grad_value", "grad_locations", "grad_weights")


def _seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _errors(got, want) -> dict[str, tuple[float, float]]:
    """Per tensor: (relative L2 error, largest element error relative to the largest reference element)."""
    out = {}
    for name, x, y in zip(NAMES, got, want):
        assert torch.isfinite(x).all(), f"{name} has non-finite elements"
        diff = (x - y).norm().item() / max(y.norm().item(), 1e-30)
        peak = (x - y).abs().max().item() / max(y.abs().max().item(), 1e-30)
        out[name] = (diff, peak)
    return out


def _check(errors, rel: float, peak: float, what: str) -> None:
    bad = {k: v for k, v in errors.items() if v[0] > rel or v[1] > peak}
    assert not bad, f"{what}: errors over ({rel}, {peak}): {bad}"


@pytest.mark.parametrize("case", sorted(PROBLEMS))
def test_cuda_kernel_matches_float64_reference(case):
    seed = _seed()
    inputs = random_inputs(PROBLEMS[case], device="cuda", seed=seed)
    ref = forward_and_grads(inputs, "reference", torch.float64)
    got = forward_and_grads(inputs, "triton", torch.float32)
    _check(_errors(got, ref), rel=1e-5, peak=1e-4, what=f"{case} fp32 seed={seed}")


@pytest.mark.parametrize("case", ["ragged", "tiny_sca"])
def test_cuda_kernel_on_cell_borders(case):
    """Locations exactly on cell borders and map edges (30 %). Output, value and weight gradients are continuous
    there and must match; the location gradient is one-sided at a border (float32 ``loc * W - 0.5`` may land
    on the other side of the integer than float64 does), so it is only required to be finite there."""
    seed = _seed()
    inputs = random_inputs(PROBLEMS[case], device="cuda", seed=seed, edge_fraction=0.3)
    ref = forward_and_grads(inputs, "reference", torch.float64)
    got = forward_and_grads(inputs, "triton", torch.float32)
    errors = _errors(got, ref)
    errors.pop("grad_locations")
    _check(errors, rel=1e-5, peak=1e-4, what=f"{case} borders fp32 seed={seed}")


@pytest.mark.parametrize("dtype, rel", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_cuda_kernel_half_precision(dtype, rel):
    """fp16/bf16 inputs against the float64 reference on the same rounded inputs: only the output rounding
    (and fp32 accumulation order) separates them."""
    seed = _seed()
    inputs = random_inputs(PROBLEMS["tiny_sca"], device="cuda", seed=seed)
    rounded = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    ref = forward_and_grads(rounded, "reference", torch.float64)
    got = forward_and_grads(rounded, "triton", dtype)
    _check(_errors(got, ref), rel=rel, peak=10 * rel, what=f"{dtype} seed={seed}")


def test_cuda_forward_is_deterministic_and_overwrites_its_output():
    """Two forward calls give the same bits; the output buffer is fresh each call (no stale memory)."""
    inputs = random_inputs(PROBLEMS["decoder"], device="cuda", seed=_seed())
    args = (inputs["value"], inputs["spatial_shapes"], inputs["level_start_index"],
            inputs["sampling_locations"], inputs["attention_weights"])
    first = multi_scale_deformable_attn(*args, backend="triton")
    # fill the caching allocator's free blocks with NaN so a kernel that skipped elements would show them
    junk = torch.full((first.numel() * 4,), float("nan"), device="cuda")
    del junk
    second = multi_scale_deformable_attn(*args, backend="triton")
    assert torch.isfinite(second).all()
    assert torch.equal(first, second)


def test_cuda_empty_queries_and_sparse_levels():
    """Q = 0 launches nothing; a 1x1 level and locations far outside every map read zeros."""
    p = Problem(batch=1, shapes=((1, 1), (4, 6)), queries=0, heads=2, head_dim=16, points=2)
    inputs = random_inputs(p, device="cuda", seed=1)
    out = multi_scale_deformable_attn(**inputs, backend="triton")
    assert out.shape == (1, 0, 32)
    p = Problem(batch=1, shapes=((1, 1), (4, 6)), queries=5, heads=2, head_dim=16, points=2)
    inputs = random_inputs(p, device="cuda", seed=2)
    inputs["sampling_locations"] = inputs["sampling_locations"] + 5.0  # every sample far outside
    out = multi_scale_deformable_attn(**inputs, backend="triton")
    assert torch.equal(out, torch.zeros_like(out))


def test_cuda_module_under_bf16_autocast_matches_reference_backend():
    """The attention module as the model runs it on a GPU (bf16 autocast): triton and reference backends give
    the same output and parameter gradients to bf16 accuracy."""
    torch.manual_seed(_seed() % 2**31)
    shapes = ((24, 64), (12, 32), (6, 16), (3, 8))
    spatial_shapes, level_start_index = level_tensors(shapes, "cuda")
    attn = MSDeformAttn(embed_dims=128, num_heads=4, num_levels=4, num_points=4).cuda()
    query = torch.randn(2, 400, 128, device="cuda")
    value = torch.randn(2, sum(h * w for h, w in shapes), 128, device="cuda")
    ref_points = torch.rand(2, 400, 4, 2, device="cuda")
    results = {}
    for backend in ("reference", "triton"):
        attn.backend = backend
        attn.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = attn(query, ref_points, value, spatial_shapes, level_start_index)
        out.float().square().mean().backward()
        results[backend] = (out.float(), attn.sampling_offsets.weight.grad.clone(),
                            attn.attention_weights.weight.grad.clone(), attn.value_proj.weight.grad.clone())
    for name, x, y in zip(("out", "grad_offsets", "grad_weights", "grad_value_proj"),
                          results["triton"], results["reference"]):
        rel = (x - y).norm().item() / y.norm().item()
        assert rel < 3e-2, f"{name}: triton vs reference relative error {rel:.2e}"
