"""The BEV grid convention, one function each way, used by every detector family.

A BEV tensor is ``[B, C, H, W]`` (or ``[B, C, Z, H, W]`` with height cells): row ``h`` runs along +y,
column ``w`` along +x, over ``pc_range = (x_min, y_min, z_min, x_max, y_max, z_max)`` in the (augmented)
ego frame. Cell ``(h, w)`` covers ``x in [x_min + w dx, x_min + (w + 1) dx)`` and likewise for y, with
``dx = (x_max - x_min) / W`` and ``dy = (y_max - y_min) / H``; its centre is ``x_min + (w + 0.5) dx``.
BEVFormer v2's pillar anchors (``bev_model.bev_encoder.pillar_points``), the LiDAR teacher's pillars,
BEVNeXt's frustum pooling and every BEV target use these two functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BEVGrid:
    """A BEV grid: ``pc_range`` in metres, ``H x W`` cells in the plane and ``Z`` cells in height."""

    pc_range: tuple[float, float, float, float, float, float]
    H: int
    W: int
    Z: int = 1

    @property
    def cell_size(self) -> tuple[float, float, float]:
        """``(dx, dy, dz)`` in metres."""
        x0, y0, z0, x1, y1, z1 = self.pc_range
        return ((x1 - x0) / self.W, (y1 - y0) / self.H, (z1 - z0) / self.Z)

    def cell_of(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Metric points -> integer cells.

        Args:
            points: ``[..., 3]`` (x, y, z) metres in the grid's frame.
        Returns:
            (cells ``[..., 3]`` int64 as ``(iz, iy, ix)``, inside ``[...]`` bool: the point lies in ``pc_range``).
            Cells of points outside are clamped into the grid, so they index safely; mask them with ``inside``.
        """
        x0, y0, z0, x1, y1, z1 = self.pc_range
        dx, dy, dz = self.cell_size
        p = points.to(torch.float32)
        ix = torch.floor((p[..., 0] - x0) / dx).long()
        iy = torch.floor((p[..., 1] - y0) / dy).long()
        iz = torch.floor((p[..., 2] - z0) / dz).long()
        inside = (ix >= 0) & (ix < self.W) & (iy >= 0) & (iy < self.H) & (iz >= 0) & (iz < self.Z)
        cells = torch.stack([iz.clamp(0, self.Z - 1), iy.clamp(0, self.H - 1), ix.clamp(0, self.W - 1)], -1)
        return cells, inside

    def centres(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[Z, H, W, 3]`` metric centres (x, y, z) of every cell."""
        x0, y0, z0, _, _, _ = self.pc_range
        dx, dy, dz = self.cell_size
        xs = x0 + (torch.arange(self.W, dtype=torch.float32, device=device) + 0.5) * dx
        ys = y0 + (torch.arange(self.H, dtype=torch.float32, device=device) + 0.5) * dy
        zs = z0 + (torch.arange(self.Z, dtype=torch.float32, device=device) + 0.5) * dz
        gz, gy, gx = torch.meshgrid(zs, ys, xs, indexing="ij")
        return torch.stack([gx, gy, gz], -1)
