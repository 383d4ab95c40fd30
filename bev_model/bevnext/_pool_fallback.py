"""TEMPORARY pure-torch BEV pooling (BEVPoolv2 semantics) until ``bev_model.ops.bev_pool_v2`` is merged.

MERGE NOTE (lead): this is the one place BEVNeXt pools frustum features. When the fused op lands, replace
the body of this module by ``from bev_model.ops import bev_pool_v2, bev_pool_v2_prepare`` (same
signatures; the prepare function returns ``(ranks_bev, ranks_depth, ranks_feat, interval_starts,
interval_lengths)`` in BEVDet's order, check the op's order) and delete the rest. Nothing else in
``bev_model.bevnext`` imports pooling code.

Semantics (BEVDet ``bev_pool_v2``): frustum point ``i`` contributes ``depth.flat[ranks_depth[i]] *
feat.flat[ranks_feat[i], :]`` to the BEV cell ``ranks_bev[i]`` (over ``B * Z * Y * X``); points arrive sorted
by ``ranks_bev`` and ``interval_starts/lengths`` delimit the runs of equal ``ranks_bev`` (the fused kernel's
work items; unused here: ``index_add_`` needs no intervals and autograd gives both gradients).
"""

from __future__ import annotations

import torch

from ..bev_grid import BEVGrid


def bev_pool_v2(depth: torch.Tensor, feat: torch.Tensor, ranks_depth: torch.Tensor, ranks_feat: torch.Tensor,
                ranks_bev: torch.Tensor, bev_feat_shape: tuple[int, int, int, int, int],
                interval_starts: torch.Tensor, interval_lengths: torch.Tensor) -> torch.Tensor:
    """Splat depth-weighted features into BEV cells.

    Args:
        depth: ``[B, N, D, H, W]`` depth probabilities; feat: ``[B, N, H, W, C]`` context features.
        ranks_depth / ranks_feat / ranks_bev: ``[P]`` flat indices into depth, ``feat[..., :]`` rows and
            the ``B * Z * Y * X`` cells (sorted by ``ranks_bev``).
        bev_feat_shape: ``(B, Z, Y, X, C)``; interval_starts / interval_lengths: ``[I]`` (unused here).
    Returns:
        ``[B, C, Z, Y, X]``.
    """
    B, Z, Y, X, C = bev_feat_shape
    vals = depth.reshape(-1)[ranks_depth.long()][:, None] * feat.reshape(-1, C)[ranks_feat.long()]  # [P, C]
    out = vals.new_zeros(B * Z * Y * X, C).index_add_(0, ranks_bev.long(), vals)
    return out.view(B, Z, Y, X, C).permute(0, 4, 1, 2, 3).contiguous()


@torch.no_grad()
def bev_pool_v2_prepare(points_ego: torch.Tensor, grid: BEVGrid) -> tuple[torch.Tensor, ...]:
    """Index preparation: frustum points in the (augmented) ego frame -> the ranks of ``bev_pool_v2``.

    Args:
        points_ego: ``[B, N, D, H, W, 3]`` metric frustum points; grid: the target ``BEVGrid`` (its ``Z`` cells).
    Returns:
        ``(ranks_bev, ranks_depth, ranks_feat, interval_starts, interval_lengths)`` int64; points outside the
        grid are dropped, the rest sorted by ``ranks_bev``.
    """
    B, N, D, H, W, _ = points_ego.shape
    dev = points_ego.device
    cells, inside = grid.cell_of(points_ego)  # [B, N, D, H, W, 3] (iz, iy, ix)
    b = torch.arange(B, device=dev).view(B, 1, 1, 1, 1)
    ranks_bev = ((b * grid.Z + cells[..., 0]) * grid.H + cells[..., 1]) * grid.W + cells[..., 2]
    ranks_depth = torch.arange(B * N * D * H * W, device=dev).view(B, N, D, H, W)
    ranks_feat = torch.arange(B * N * H * W, device=dev).view(B, N, 1, H, W).expand(B, N, D, H, W)
    ranks_bev, ranks_depth, ranks_feat = ranks_bev[inside], ranks_depth[inside], ranks_feat[inside]
    order = torch.argsort(ranks_bev, stable=True)
    ranks_bev, ranks_depth, ranks_feat = ranks_bev[order], ranks_depth[order], ranks_feat[order]
    if ranks_bev.numel() == 0:
        empty = ranks_bev.new_zeros(0)
        return ranks_bev, ranks_depth, ranks_feat, empty, empty
    new = torch.ones_like(ranks_bev, dtype=torch.bool)
    new[1:] = ranks_bev[1:] != ranks_bev[:-1]
    interval_starts = torch.nonzero(new)[:, 0]
    ends = torch.cat([interval_starts[1:], interval_starts.new_tensor([ranks_bev.numel()])])
    return ranks_bev, ranks_depth, ranks_feat, interval_starts, ends - interval_starts
