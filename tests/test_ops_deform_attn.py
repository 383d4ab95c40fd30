"""The deformable-attention op: reference (grid_sample) vs fused numba CPU kernel, gradcheck, dispatch, validation."""

from __future__ import annotations

import pytest
import torch

from bev_model.ops import ENV_VAR, multi_scale_deformable_attn, resolve_backend
from bev_model.ops.testing import Problem, forward_and_grads, level_tensors, random_inputs

CASES = {
    "single_level": Problem(batch=2, shapes=((6, 9),), queries=11, heads=2, head_dim=8, points=3),
    "multi_level": Problem(
        batch=2, shapes=((8, 10), (4, 5), (2, 3), (1, 1)), queries=9, heads=3, head_dim=16, points=4
    ),
    "odd_head_dim": Problem(batch=1, shapes=((7, 5), (3, 4)), queries=13, heads=2, head_dim=5, points=2),
    "many_heads_points": Problem(batch=1, shapes=((5, 6), (3, 3)), queries=6, heads=8, head_dim=4, points=8),
}
EDGE = Problem(batch=2, shapes=((8, 16), (4, 8), (2, 2)), queries=10, heads=2, head_dim=6, points=4)


def _assert_close(a, b, rtol: float, atol: float, what: str) -> None:
    for name, x, y in zip(("out", "grad_value", "grad_locations", "grad_weights"), a, b):
        scale = max(y.abs().max().item(), 1.0)
        torch.testing.assert_close(
            x, y, rtol=rtol, atol=atol * scale, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_kernel_matches_reference(case):
    inputs = random_inputs(CASES[case], seed=3, spread=1.4)
    ref = forward_and_grads(inputs, "reference", torch.float64)
    cpu = forward_and_grads(inputs, "cpu", torch.float32)
    _assert_close(cpu, ref, rtol=1e-4, atol=1e-5, what=case)


def test_cpu_kernel_matches_reference_on_edges():
    """Locations exactly at 0, 1, pixel -1 / W borders and far outside: forward and gradients agree with grid_sample."""
    inputs = random_inputs(EDGE, seed=5, edge_fraction=0.7)
    ref = forward_and_grads(inputs, "reference", torch.float64)
    for dtype in (torch.float64, torch.float32):
        cpu = forward_and_grads(inputs, "cpu", dtype)
        _assert_close(cpu, ref, rtol=1e-4, atol=1e-5, what=f"edges {dtype}")


def test_outside_map_reads_zero():
    inputs = random_inputs(CASES["single_level"], seed=1)
    inputs["sampling_locations"] = torch.full_like(
        inputs["sampling_locations"], -0.5
    )  # pixel < -1: all corners out
    for backend in ("reference", "cpu"):
        out, gv, gl, ga = forward_and_grads(inputs, backend)
        assert out.abs().max() == 0 and gv.abs().max() == 0 and gl.abs().max() == 0 and ga.abs().max() == 0


def test_half_inputs_on_cpu_backend_compute_in_float32():
    inputs = random_inputs(CASES["multi_level"], seed=2)
    ref = forward_and_grads(inputs, "reference", torch.float64)
    for dtype in (torch.float16, torch.bfloat16):
        low = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
        out = multi_scale_deformable_attn(**low, backend="cpu")
        assert out.dtype == dtype
        tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
        torch.testing.assert_close(out.double(), ref[0], rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    problem = Problem(batch=1, shapes=((4, 5), (2, 3)), queries=3, heads=2, head_dim=3, points=2)
    inputs = random_inputs(problem, dtype=torch.float64, seed=7, spread=1.2, requires_grad=True)
    fn = lambda v, loc, w: multi_scale_deformable_attn(  # noqa: E731
        v, inputs["spatial_shapes"], inputs["level_start_index"], loc, w, backend=backend
    )
    args = (inputs["value"], inputs["sampling_locations"], inputs["attention_weights"])
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_cpu_kernel_handles_empty_queries():
    problem = Problem(batch=2, shapes=((3, 4),), queries=0, heads=2, head_dim=4, points=2)
    inputs = random_inputs(problem, requires_grad=True)
    out = multi_scale_deformable_attn(**inputs, backend="cpu")
    assert out.shape == (2, 0, 8)
    out.sum().backward()
    assert inputs["value"].grad.abs().max() == 0


def test_auto_backend_follows_device_and_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    assert resolve_backend("reference", torch.device("cuda")) == "reference"
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    assert resolve_backend("cpu", torch.device("cpu")) == "cpu"  # the argument wins over the variable
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_backend("auto", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", torch.device("cpu"))


def test_env_var_forces_backend(monkeypatch):
    inputs = random_inputs(CASES["single_level"], seed=4)
    monkeypatch.setenv(ENV_VAR, "reference")
    a = multi_scale_deformable_attn(**inputs)
    monkeypatch.setenv(ENV_VAR, "cpu")
    b = multi_scale_deformable_attn(**inputs)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _bad(**changes):
    inputs = random_inputs(
        Problem(batch=2, shapes=((4, 5), (2, 3)), queries=3, heads=2, head_dim=4, points=2)
    )
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"value": torch.zeros(2, 26, 8)}, "value must be"),
        ({"value": torch.zeros(2, 25, 2, 4)}, "S=25"),
        ({"value": torch.zeros(2, 26, 2, 4, dtype=torch.int32)}, "value must be float"),
        ({"spatial_shapes": torch.tensor([[4.0, 5.0], [2.0, 3.0]])}, "spatial_shapes must be an integer"),
        ({"spatial_shapes": torch.tensor([4, 5, 2, 3])}, "spatial_shapes must be"),
        ({"level_start_index": torch.tensor([0, 21])}, "level_start_index .* inconsistent"),
        ({"level_start_index": torch.tensor([0])}, "level_start_index must be"),
        ({"sampling_locations": torch.zeros(2, 3, 2, 2, 2)}, "sampling_locations must be"),
        ({"sampling_locations": torch.zeros(2, 3, 3, 2, 2, 2)}, "sampling_locations must be"),
        ({"attention_weights": torch.zeros(2, 3, 2, 2, 3)}, "attention_weights must be"),
    ],
)
def test_invalid_inputs_name_the_argument(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        multi_scale_deformable_attn(**_bad(**changes), backend="reference")


def test_level_tensors_layout():
    shapes, starts = level_tensors(((4, 5), (2, 3), (1, 1)))
    assert shapes.dtype == torch.int64 and shapes.tolist() == [[4, 5], [2, 3], [1, 1]]
    assert starts.tolist() == [0, 20, 26]
