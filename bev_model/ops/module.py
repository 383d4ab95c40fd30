"""``MSDeformAttn``: the multi-scale deformable attention layer built on ``multi_scale_deformable_attn``.

Used by BEVFormer's spatial cross-attention (SCA), temporal self-attention (TSA) and the
Deformable-DETR decoder. Like Deformable DETR's ``MSDeformAttn`` it returns the attention output
only (no residual, no dropout): the caller adds those.

Reference-point layouts (``reference_layout``):

* ``"levels"`` (Deformable DETR, BEVFormer TSA and decoder): ``reference_points`` is
  ``[B, Q, L, 2]`` (one point per level; ``[B, Q, 1, 2]`` broadcasts over levels), (x, y) in [0, 1].
  Offsets are in pixels of each level: ``loc = ref + offset / (W_l, H_l)``. ``[B, Q, L, 4]``
  (cx, cy, w, h boxes) is also accepted: ``loc = ref_xy + offset / P * ref_wh * 0.5``.
* ``"anchors"`` (BEVFormer SCA): ``reference_points`` is ``[B, Q, Zr, 2]``, Zr height anchors of a
  BEV pillar projected into the image, shared by all levels; ``P`` must be divisible by ``Zr``: the
  P points of each level are split into ``P // Zr`` groups of Zr, point ``j`` of a group around anchor ``j``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .functional import BACKENDS, multi_scale_deformable_attn

_LAYOUTS = ("levels", "anchors")


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: value/offset/weight projections, softmax over L*P, output projection.

    Args:
        embed_dims: channels C of query and value (split into ``num_heads`` heads of ``C // num_heads``).
        num_heads: M.
        num_levels: L.
        num_points: P, sampling points per head and level.
        backend: backend of the op (``auto``, ``reference``, ``cpu``, ``triton``).
        reference_layout: ``"levels"`` or ``"anchors"`` (see the module docstring).
        output_proj: apply the output projection (BEVFormer's inner SCA attention has none: False).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        backend: str = "auto",
        reference_layout: str = "levels",
        output_proj: bool = True,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims={embed_dims} must be divisible by num_heads={num_heads}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if reference_layout not in _LAYOUTS:
            raise ValueError(f"reference_layout must be one of {_LAYOUTS}, got {reference_layout!r}")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.backend = backend
        self.reference_layout = reference_layout
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims) if output_proj else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a circle of directions (one per head), point i at radius i+1."""
        nn.init.zeros_(self.sampling_offsets.weight)
        M, L, P = self.num_heads, self.num_levels, self.num_points
        thetas = torch.arange(M, dtype=torch.float32) * (2.0 * math.pi / M)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # [M, 2]
        grid = grid / grid.abs().max(-1, keepdim=True)[0]  # onto the unit square's border
        grid = grid.view(M, 1, 1, 2).repeat(1, L, P, 1)
        grid = grid * torch.arange(1, P + 1, dtype=torch.float32).view(1, 1, P, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        if self.output_proj is not None:
            nn.init.xavier_uniform_(self.output_proj.weight)
            nn.init.zeros_(self.output_proj.bias)

    def sampling_locations(
        self, offsets: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: torch.Tensor
    ) -> torch.Tensor:
        """Combine offsets ``[B, Q, M, L, P, 2]`` (pixels) with reference points -> ``[B, Q, M, L, P, 2]`` in [0, 1]."""
        B, Q, M, L, P, _ = offsets.shape
        if reference_points.dim() != 4 or reference_points.shape[:2] != (B, Q):
            raise ValueError(
                f"reference_points must be [B={B}, Q={Q}, L or Zr, 2 or 4], got shape {tuple(reference_points.shape)}"
            )
        ref = reference_points
        # (W, H) per level: offsets are in pixels of each level.
        normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(offsets.dtype)  # [L, 2]
        k, c = reference_points.shape[2], reference_points.shape[3]
        if self.reference_layout == "anchors":
            if c != 2 or P % k != 0:
                raise ValueError(
                    f"reference_points for layout 'anchors' must be [B, Q, Zr, 2] with num_points={P} divisible "
                    f"by Zr, got shape {tuple(reference_points.shape)}"
                )
            off = (offsets / normalizer[None, None, None, :, None, :]).view(B, Q, M, L, P // k, k, 2)
            return (ref[:, :, None, None, None, :, :] + off).view(B, Q, M, L, P, 2)
        if k not in (1, L) or c not in (2, 4):
            raise ValueError(
                f"reference_points for layout 'levels' must be [B, Q, L={L} or 1, 2 or 4], "
                f"got shape {tuple(reference_points.shape)}"
            )
        if c == 2:
            return ref[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return ref[:, :, None, :, None, :2] + offsets / P * ref[:, :, None, :, None, 2:] * 0.5

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor | None,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from each query to P points per head and level around its reference points.

        Args:
            query: ``[B, Q, C]`` (positional embedding already added by the caller).
            reference_points: ``[B, Q, L|1, 2|4]`` (layout "levels") or ``[B, Q, Zr, 2]`` (layout "anchors").
            value: ``[B, S, C]`` flattened multi-level features; ``None`` means ``query`` (self-attention).
            spatial_shapes: ``[L, 2]`` int64 (H, W) per level.
            level_start_index: ``[L]`` int64.
            key_padding_mask: optional ``[B, S]`` bool, True where value is padding (zeroed).

        Returns:
            ``[B, Q, C]``.
        """
        if value is None:
            value = query
        if query.dim() != 3 or query.shape[-1] != self.embed_dims:
            raise ValueError(f"query must be [B, Q, C={self.embed_dims}], got shape {tuple(query.shape)}")
        if value.dim() != 3 or value.shape[0] != query.shape[0] or value.shape[-1] != self.embed_dims:
            raise ValueError(
                f"value must be [B={query.shape[0]}, S, C={self.embed_dims}], got shape {tuple(value.shape)}"
            )
        if spatial_shapes.shape[0] != self.num_levels:
            raise ValueError(
                f"spatial_shapes has {spatial_shapes.shape[0]} levels but the module has num_levels={self.num_levels}"
            )
        B, Q, _ = query.shape
        S = value.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, S):
                raise ValueError(
                    f"key_padding_mask must be [B={B}, S={S}], got shape {tuple(key_padding_mask.shape)}"
                )
            v = v.masked_fill(key_padding_mask[..., None], 0.0)
        v = v.view(B, S, M, self.embed_dims // M)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, M, L * P).softmax(-1).view(B, Q, M, L, P)
        locations = self.sampling_locations(offsets, reference_points, spatial_shapes)
        out = multi_scale_deformable_attn(
            v, spatial_shapes, level_start_index, locations, weights, self.backend
        )
        return self.output_proj(out) if self.output_proj is not None else out
