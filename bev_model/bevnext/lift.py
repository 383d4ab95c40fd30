"""Frustum lift (Lift-Splat): depth-weighted context features of every camera -> one BEV map.

The frustum of a stride-``s`` feature map: pixel ``(u, v) = (s j + (s - 1) / 2, s i + (s - 1) / 2)`` (the
centre of patch ``(i, j)``, pixel centres at integers as ``Batch.img_aug``), depth the centre of bin ``k``.
A frustum point goes to the (augmented) ego frame through ``inv(ego2img)`` of the augmented matrices
(``[u d, v d, d, 1] = ego2img [x, y, z, 1]``), so image and BEV augmentation need no special case, and a past
frame lands in the current frame when its ``ego2img`` is composed with ``inv(cur_from_prev)``. Cells follow
``bev_model.bev_grid.BEVGrid``.
"""

from __future__ import annotations

import torch

from ..bev_grid import BEVGrid
from ..ops import bev_pool_v2, bev_pool_v2_prepare
from ..precision import float32_geometry
from .config import DepthConfig


def frustum(image_hw: tuple[int, int], cfg: DepthConfig, device=None) -> torch.Tensor:
    """``[D, h, w, 3]`` (u, v, d) of every frustum point (``h, w = ceil(H / s), ceil(W / s)``)."""
    H, W = image_hw
    s = cfg.stride
    h, w = -(-H // s), -(-W // s)
    us = torch.arange(w, dtype=torch.float32, device=device) * s + (s - 1) / 2
    vs = torch.arange(h, dtype=torch.float32, device=device) * s + (s - 1) / 2
    ds = cfg.d_min + (torch.arange(cfg.num_bins, dtype=torch.float32, device=device) + 0.5) * cfg.d_step
    d, v, u = torch.meshgrid(ds, vs, us, indexing="ij")
    return torch.stack([u, v, d], -1)


@float32_geometry
def frustum_to_ego(points: torch.Tensor, ego2img: torch.Tensor) -> torch.Tensor:
    """``points [D, h, w, 3]`` (u, v, d), ``ego2img [B, N, 4, 4]`` -> ego points ``[B, N, D, h, w, 3]``."""
    u, v, d = points.unbind(-1)
    pix = torch.stack([u * d, v * d, d, torch.ones_like(d)], -1)  # [D, h, w, 4]
    img2ego = torch.linalg.inv(ego2img.double()).float()  # [B, N, 4, 4]
    return torch.einsum("bnij,dhwj->bndhwi", img2ego, pix)[..., :3]


def lift(depth: torch.Tensor, context: torch.Tensor, ego2img: torch.Tensor, frustum_pts: torch.Tensor,
         grid: BEVGrid, pool: str = "sum") -> torch.Tensor:
    """Splat one frame into the BEV grid.

    ``pool="sum"`` is BEVPoolv2's (and BEVDet's, BEVDepth's, BEVNeXt's) sum of depth-weighted features per cell;
    ``"mean"`` divides it by the cell's depth mass ``sum p`` (floored at 1: cells with less keep the sum), a
    weighted mean whose scale does not grow with the number of rays through the cell.

    Args:
        depth: ``[B, N, D, h, w]`` probabilities; context: ``[B, N, C, h, w]``;
        ego2img: ``[B, N, 4, 4]`` (augmented; for a past frame composed with ``inv(cur_from_prev)``);
        frustum_pts: ``[D, h, w, 3]`` from :func:`frustum`; grid: the target grid (one height cell).
    Returns:
        ``[B, C, grid.H, grid.W]`` (sum over the Z cells).
    """
    if pool == "mean":
        ones = torch.ones_like(context[:, :, :1])
        out = lift(depth, torch.cat([context, ones], 2), ego2img, frustum_pts, grid)
        return out[:, :-1] / out[:, -1:].clamp(min=1.0)
    if pool != "sum":
        raise ValueError(f"pool must be 'sum' or 'mean', got {pool!r}")
    B, N, C, h, w = context.shape
    pts = frustum_to_ego(frustum_pts, ego2img)
    ranks_bev, ranks_depth, ranks_feat, starts, lengths = bev_pool_v2_prepare(pts, grid)
    feat = context.permute(0, 1, 3, 4, 2).contiguous()  # [B, N, h, w, C]
    bev = bev_pool_v2(depth.to(feat.dtype).contiguous(), feat, ranks_depth, ranks_feat, ranks_bev,
                      (B, grid.Z, grid.H, grid.W, C), starts, lengths,
                      check_values=False)  # indices straight from bev_pool_v2_prepare: no host sync per frame
    return bev.sum(2)
