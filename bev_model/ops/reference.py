"""PyTorch reference for multi-scale deformable attention (the ground truth for tests).

One ``F.grid_sample`` per level. It materialises the sampled values
``[B*M, D, Q, L*P]`` and keeps them for backward, so it is memory-hungry; the
fused kernels (``cpu_numba``, ``triton_kernel``) never do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_scale_deformable_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention with ``grid_sample`` (bilinear, zero padding, ``align_corners=False``).

    Args:
        value: ``[B, S, M, D]`` with ``S = sum(H_l * W_l)``, levels concatenated in order.
        spatial_shapes: ``[L, 2]`` (H, W) per level (tensor or list of pairs).
        sampling_locations: ``[B, Q, M, L, P, 2]`` (x, y) normalised to [0, 1].
        attention_weights: ``[B, Q, M, L, P]``.

    Returns:
        ``[B, Q, M * D]`` in ``value.dtype``.
    """
    shapes = (
        spatial_shapes.tolist() if torch.is_tensor(spatial_shapes) else [tuple(s) for s in spatial_shapes]
    )
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    ctype = torch.promote_types(
        torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype
    )
    out_dtype = value.dtype
    value = value.to(ctype)
    grids = 2.0 * sampling_locations.to(ctype) - 1.0  # grid_sample wants [-1, 1]
    sizes = [int(h) * int(w) for h, w in shapes]
    value_levels = value.split(sizes, dim=1)
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [B, H*W, M, D] -> [B*M, D, H, W]
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(B * M, D, int(h), int(w))
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # -> [B*M, D, Q, P]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B, Q, M, L, P] -> [B*M, 1, Q, L*P]
    weights = attention_weights.to(ctype).transpose(1, 2).reshape(B * M, 1, Q, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [B*M, D, Q]
    return out.view(B, M * D, Q).transpose(1, 2).contiguous().to(out_dtype)
