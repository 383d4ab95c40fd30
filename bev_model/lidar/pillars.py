"""PointPillars encoding in plain torch: points -> per-point MLP -> max per pillar (``scatter_reduce``).

Pillar cells come from :meth:`bev_model.bev_grid.BEVGrid.cell_of` on a grid ``stride`` times finer than the
BEV grid (rows along +y, columns along +x), so pillar ``(iy, ix)`` lies in BEV cell ``(iy // s, ix // s)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..bev_grid import BEVGrid

POINT_FEATURES = 9
"""x, y, z, intensity, offsets to the pillar's point mean (x, y, z), offsets to the pillar's centre (x, y)."""


class PillarEncoder(nn.Module):
    """``points`` (list of B ``[P_i, >=4]``) -> pseudo-image ``[B, channels, H * s, W * s]``.

    Args:
        grid: the pillar grid (``BEVGrid``, Z = 1 over the whole height range); channels: output channels;
        max_points: keep at most this many points per sample (0: all).
    """

    def __init__(self, grid: BEVGrid, channels: int, max_points: int = 0) -> None:
        super().__init__()
        self.grid = grid
        self.channels = channels
        self.max_points = max_points
        self.linear = nn.Linear(POINT_FEATURES, channels, bias=False)
        self.norm = nn.BatchNorm1d(channels)

    def point_features(self, points: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features ``[P, 9]`` float32, flat pillar index ``[P]`` = b * H * W + iy * W + ix) of the points inside."""
        g = self.grid
        HW = g.H * g.W
        feats, index = [], []
        centres = g.centres(points[0].device if points else None)[0]  # [H, W, 3]
        for b, p in enumerate(points):
            p = p.float()
            if self.max_points and p.shape[0] > self.max_points:
                keep = (torch.randperm(p.shape[0], device=p.device)[: self.max_points] if self.training
                        else torch.arange(self.max_points, device=p.device))
                p = p[keep]
            cells, inside = g.cell_of(p[:, :3])
            p, cells = p[inside], cells[inside]
            flat = cells[:, 1] * g.W + cells[:, 2]
            count = torch.zeros(HW, device=p.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
            mean = torch.zeros(HW, 3, device=p.device).index_add_(0, flat, p[:, :3]) / count.clamp(min=1)[:, None]
            centre = centres[cells[:, 1], cells[:, 2], :2]
            feats.append(torch.cat([p[:, :4], p[:, :3] - mean[flat], p[:, :2] - centre], 1))
            index.append(flat + b * HW)
        if not feats:
            return torch.zeros(0, POINT_FEATURES), torch.zeros(0, dtype=torch.long)
        return torch.cat(feats), torch.cat(index)

    def forward(self, points: list[torch.Tensor]) -> torch.Tensor:
        g = self.grid
        B = len(points)
        feats, index = self.point_features(points)
        dtype = self.linear.weight.dtype
        x = torch.relu(self.norm(self.linear(feats.to(dtype))))  # [P, C]
        canvas = x.new_zeros(B * g.H * g.W, self.channels)
        canvas = canvas.scatter_reduce(0, index[:, None].expand(-1, self.channels), x, "amax", include_self=False)
        return canvas.view(B, g.H, g.W, self.channels).permute(0, 3, 1, 2).contiguous()
