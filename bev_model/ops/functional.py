"""``multi_scale_deformable_attn``: one entry point, three backends (reference, cpu/numba, triton).

Backend choice (first match wins):
1. the ``backend`` argument when it is not ``"auto"``;
2. the environment variable ``BEVSTREAM_DEFORM_BACKEND`` (``reference``, ``cpu``, ``triton`` or ``auto``);
3. by device: ``triton`` for CUDA tensors, ``cpu`` (numba) for CPU tensors.
"""

from __future__ import annotations

import os

import torch

from .reference import multi_scale_deformable_attn_reference
from .validation import check_inputs

BACKENDS = ("auto", "reference", "cpu", "triton")
ENV_VAR = "BEVSTREAM_DEFORM_BACKEND"


def resolve_backend(backend: str, device: torch.device, env_var: str = ENV_VAR) -> str:
    """Return the concrete backend (``reference``/``cpu``/``triton``) for ``backend`` on ``device``.

    ``env_var`` names the environment variable consulted for ``"auto"`` (each fused op has its own)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get(env_var, "").strip().lower()
        if env and env not in BACKENDS:
            raise ValueError(f"environment variable {env_var}={env!r} must be one of {BACKENDS}")
        backend = env or "auto"
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "cpu"
    return backend


def multi_scale_deformable_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Multi-scale deformable attention (Deformable DETR / mmcv convention).

    Args:
        value: ``[B, S, M, D]``, the L levels' ``H_l * W_l`` positions concatenated along S (row-major).
        spatial_shapes: ``[L, 2]`` int64, (H, W) of each level.
        level_start_index: ``[L]`` int64, offset of each level in S (exclusive cumsum of H*W).
        sampling_locations: ``[B, Q, M, L, P, 2]``, (x, y) normalised to [0, 1]; pixel = loc * W - 0.5
            (``align_corners=False``); samples outside the map read zeros.
        attention_weights: ``[B, Q, M, L, P]`` (normally softmax-ed over L*P).
        backend: ``auto`` | ``reference`` | ``cpu`` | ``triton`` (see module docstring).

    Returns:
        ``[B, Q, M * D]`` in ``value.dtype``.
    """
    shapes = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    which = resolve_backend(backend, value.device)
    if which == "reference":
        return multi_scale_deformable_attn_reference(value, shapes, sampling_locations, attention_weights)
    if which == "cpu":
        if value.device.type != "cpu":
            raise ValueError(f"backend 'cpu' needs CPU tensors, got value on {value.device}")
        from .cpu_numba import deform_attn_cpu

        return deform_attn_cpu(value, shapes, sampling_locations, attention_weights)
    from .triton_kernel import deform_attn_triton

    return deform_attn_triton(value, shapes, sampling_locations, attention_weights)
