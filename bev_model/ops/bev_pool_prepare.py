"""Index preparation for ``bev_pool_v2`` (BEVPoolv2): frustum points -> sorted ranks and intervals, in torch.

A frustum point is one (camera n, depth bin d, feature pixel h, w) of one sample b. Its depth probability is
``depth[b, n, d, h, w]`` (flat index ``ranks_depth``), its feature ``feat[b, n, h, w, :]`` (flat row
``ranks_feat``), its BEV cell the flat ``(b, z, y, x)`` index ``ranks_bev`` of ``BEVGrid.cell_of`` its metric
position. Points outside the grid are dropped; the rest are sorted by cell so that each cell's points form one
contiguous run (an *interval*), which one kernel program sums without atomics.
"""

from __future__ import annotations

import torch

from ..bev_grid import BEVGrid


def interval_runs(sorted_ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of equal values in a sorted 1-D tensor ``[P]`` -> ``(starts [I], lengths [I])``, int32."""
    _, lengths = torch.unique_consecutive(sorted_ranks, return_counts=True)
    starts = torch.cumsum(lengths, 0) - lengths
    return starts.to(torch.int32), lengths.to(torch.int32)


def feature_intervals(
    ranks_depth: torch.Tensor, ranks_feat: torch.Tensor, ranks_bev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The points re-sorted by feature row, for the feature gradient (one program per feature row, no atomics).

    Returns ``(ranks_depth, ranks_feat, ranks_bev, starts, lengths)`` in feature order (stable sort, so the sum
    order inside a row is deterministic); the intervals are the runs of ``ranks_feat``.
    """
    order = torch.argsort(ranks_feat, stable=True)
    rf = ranks_feat[order]
    starts, lengths = interval_runs(rf)
    return ranks_depth[order], rf, ranks_bev[order], starts, lengths


def bev_pool_v2_prepare(
    points_ego: torch.Tensor, grid: BEVGrid
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted ranks and intervals of the frustum points that fall in ``grid``.

    Args:
        points_ego: ``[B, N, D, H, W, 3]`` metric (x, y, z) of every frustum point in the (augmented) ego frame.
        grid: the BEV grid; cells come from ``grid.cell_of`` (the one point -> cell convention).
    Returns:
        ``(ranks_bev, ranks_depth, ranks_feat, interval_starts, interval_lengths)``, int32 (as BEVDet's
        ``voxel_pooling_prepare_v2``): ``ranks_*`` ``[P]`` for the P in-grid points sorted by ``ranks_bev`` (flat
        ``(b, z, y, x)``; stable, so depth order within a cell), ``ranks_depth`` into the flat depth
        ``[B*N*D*H*W]``, ``ranks_feat`` into the flat feature rows ``[B*N*H*W]``; intervals ``[I]`` are the runs
        of equal ``ranks_bev``. Pass them with ``bev_feat_shape = (B, grid.Z, grid.H, grid.W, C)``.
    """
    if points_ego.dim() != 6 or points_ego.shape[-1] != 3:
        raise ValueError(f"points_ego must be [B, N, D, H, W, 3], got shape {tuple(points_ego.shape)}")
    B, N, D, H, W, _ = points_ego.shape
    if B * max(grid.Z * grid.H * grid.W, N * D * H * W) > 2**31 - 1:
        raise ValueError(f"points_ego {tuple(points_ego.shape)} with grid {grid} overflows int32 ranks")
    dev = points_ego.device
    cells, inside = grid.cell_of(points_ego)  # [B, N, D, H, W, 3] (iz, iy, ix), [B, N, D, H, W]
    b = torch.arange(B, device=dev).view(B, 1, 1, 1, 1)
    rank_bev = ((b * grid.Z + cells[..., 0]) * grid.H + cells[..., 1]) * grid.W + cells[..., 2]
    rank_depth = torch.arange(B * N * D * H * W, device=dev).view(B, N, D, H, W)
    rank_feat = torch.arange(B * N * H * W, device=dev).view(B, N, 1, H, W).expand(B, N, D, H, W)
    keep = inside.reshape(-1)
    rank_bev = rank_bev.reshape(-1)[keep]
    order = torch.argsort(rank_bev, stable=True)
    ranks_bev = rank_bev[order].to(torch.int32)
    ranks_depth = rank_depth.reshape(-1)[keep][order].to(torch.int32)
    ranks_feat = rank_feat.reshape(-1)[keep][order].to(torch.int32)
    starts, lengths = interval_runs(ranks_bev)
    return ranks_bev, ranks_depth, ranks_feat, starts, lengths
