"""Input checks for the deformable-attention op: shapes, dtypes, level layout. Errors name the argument."""

from __future__ import annotations

import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> list[tuple[int, int]]:
    """Validate the op's inputs; return the level shapes as a host list ``[(H, W), ...]``.

    Raises ``ValueError``/``TypeError`` naming the offending argument, its shape/dtype and what was expected.
    """
    for name, t in (
        ("value", value),
        ("spatial_shapes", spatial_shapes),
        ("level_start_index", level_start_index),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor (int64), got {t.dtype}")
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, M, D], got shape {tuple(value.shape)}")
    B, S, M, D = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must be [L, 2] (H, W), got shape {tuple(spatial_shapes.shape)}")
    L = spatial_shapes.shape[0]
    if L == 0:
        raise ValueError("spatial_shapes must have at least one level, got [0, 2]")
    if level_start_index.shape != (L,):
        raise ValueError(f"level_start_index must be [L={L}], got shape {tuple(level_start_index.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must be [B, Q, M, L, P, 2], got shape {tuple(sampling_locations.shape)}"
        )
    _, Q, _, _, P, _ = sampling_locations.shape
    expected = (B, Q, M, L, P, 2)
    if tuple(sampling_locations.shape) != expected:
        raise ValueError(
            f"sampling_locations must be [B={B}, Q, M={M}, L={L}, P, 2] to match value {tuple(value.shape)} "
            f"and spatial_shapes (L={L}), got shape {tuple(sampling_locations.shape)}"
        )
    if tuple(attention_weights.shape) != expected[:5]:
        raise ValueError(
            f"attention_weights must be [B, Q, M, L, P] = {expected[:5]}, got shape {tuple(attention_weights.shape)}"
        )
    devices = {t.device for t in (value, sampling_locations, attention_weights)}
    if len(devices) != 1:
        raise ValueError(
            f"value, sampling_locations and attention_weights must share a device, got "
            f"{value.device}, {sampling_locations.device}, {attention_weights.device}"
        )
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    for lvl, (h, w) in enumerate(shapes):
        if h <= 0 or w <= 0:
            raise ValueError(f"spatial_shapes[{lvl}] must be positive (H, W), got ({h}, {w})")
    starts = level_start_index.tolist()
    expected_starts, total = [], 0
    for h, w in shapes:
        expected_starts.append(total)
        total += h * w
    if starts != expected_starts:
        raise ValueError(
            f"level_start_index {starts} is inconsistent with spatial_shapes {shapes}: expected {expected_starts}"
        )
    if total != S:
        raise ValueError(
            f"value has S={S} positions but spatial_shapes {shapes} sum to {total} (S must equal sum(H*W))"
        )
    return shapes
