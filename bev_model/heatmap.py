"""CenterPoint's BEV heatmaps, one definition for every family: Gaussian radius, per-box Gaussians, per-class
heatmap targets, the class-agnostic foreground mask and CenterNet's Gaussian focal loss.

Written from CenterNet/CenterPoint's definitions: ``gaussian_radius`` is CornerNet's radius for which a box
shifted by it still overlaps the GT with IoU >= ``min_overlap`` (the smallest of three cases); a box's radius
is that, floored, at least ``min_radius``; a Gaussian of radius r is drawn on the ``(2r + 1) x (2r + 1)``
window around the centre cell with sigma = (2r + 1) / 6, and overlapping Gaussians are merged by their maximum.
Centre cells come from :class:`bev_model.bev_grid.BEVGrid` (the one metric point -> cell convention), so
BEVNeXt's targets, the LiDAR teacher's targets and BEVDistill's masks land on the same ``[y, x]`` cell.
"""

from __future__ import annotations

import torch

from .bev_grid import BEVGrid


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float) -> torch.Tensor:
    """CornerNet/CenterPoint radius (cells, not floored) of box footprints ``height x width`` (cells, any equal
    shapes) so that a box shifted by it keeps IoU >= ``min_overlap`` with the original (the smallest of three
    cases). Like CenterPoint, each case divides by 2, not by ``2 a`` as the quadratic formula would."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def box_gaussians(boxes: torch.Tensor, grid: BEVGrid, min_overlap: float, min_radius: int) -> torch.Tensor:
    """One CenterPoint Gaussian per box on the grid.

    Args:
        boxes: ``[G, >=5]`` box vectors (x, y, z, l, w, ...) in the grid's frame; the radius is
            ``max(min_radius, floor(gaussian_radius(w / dy, l / dx, min_overlap)))`` cells (float32).
    Returns:
        ``[G, H, W]`` float32: box g's Gaussian (1 at its centre cell, 0 outside its window; all 0 for a box whose
        centre is off the grid or whose length or width is not a positive finite number, as CenterPoint skips).
    """
    H, W = grid.H, grid.W
    G = boxes.shape[0]
    dev = boxes.device
    if G == 0:
        return torch.zeros(0, H, W, device=dev)
    dx, dy, _ = grid.cell_size
    b = boxes.detach().float()
    mid_z = torch.full_like(b[:, :1], (grid.pc_range[2] + grid.pc_range[5]) / 2)  # the plane cell only
    cells, inside = grid.cell_of(torch.cat([b[:, :2], mid_z], 1))
    length, width = b[:, 3], b[:, 4]
    drawn = inside & (length > 0) & (width > 0) & torch.isfinite(length) & torch.isfinite(width)  # [G]
    radius = gaussian_radius(width / dy, length / dx, min_overlap).floor().clamp(min=min_radius)  # [G] float32
    radius = torch.where(drawn, radius, torch.zeros_like(radius))
    # 2 sigma^2 in float64, rounded once to float32 (sigma = (2 r + 1) / 6)
    two_sigma_sq = (2 * ((2 * radius.double() + 1) / 6) ** 2).float()[:, None, None]  # [G, 1, 1]
    ys = torch.arange(H, device=dev, dtype=torch.float32)[None, :, None] - cells[:, 1, None, None]  # [G, H, 1]
    xs = torch.arange(W, device=dev, dtype=torch.float32)[None, None, :] - cells[:, 2, None, None]  # [G, 1, W]
    g = torch.exp(-(xs ** 2 + ys ** 2) / two_sigma_sq)  # [G, H, W]
    r = radius[:, None, None]
    window = (xs.abs() <= r) & (ys.abs() <= r) & drawn[:, None, None]  # [G, H, W]
    return torch.where(window, g, torch.zeros_like(g))


def heatmap_targets(gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor], grid: BEVGrid, num_classes: int,
                    min_overlap: float, min_radius: int) -> torch.Tensor:
    """Per-class CenterPoint heatmaps.

    Args:
        gt_boxes: B x ``[G, >=5]`` boxes in the grid's frame; gt_labels: B x ``[G]`` class indices (labels outside
            ``[0, num_classes)`` draw nothing).
    Returns:
        ``[B, num_classes, H, W]`` float32: per class, the maximum of its boxes' :func:`box_gaussians`.
    """
    device = gt_boxes[0].device if gt_boxes else "cpu"
    out = torch.zeros(len(gt_boxes), num_classes, grid.H, grid.W, device=device)
    for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        g = box_gaussians(boxes, grid, min_overlap, min_radius)
        for c in labels.unique().tolist():
            if 0 <= c < num_classes:
                out[b, c] = g[labels == c].amax(0)
    return out


def foreground_mask(gt_boxes: list[torch.Tensor], grid: BEVGrid, min_overlap: float = 0.1,
                    min_radius: int = 1) -> torch.Tensor:
    """Class-agnostic mask ``[B, H, W]``: max of every GT box's Gaussian (BEVDistill's dense-loss weight)."""
    return torch.stack([box_gaussians(b, grid, min_overlap, min_radius).amax(0)
                        if b.shape[0] else torch.zeros(grid.H, grid.W, device=b.device) for b in gt_boxes])


def gaussian_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0) -> torch.Tensor:
    """CenterNet's focal loss on heatmaps.

    Args:
        logits: ``[B, K, H, W]`` (any float dtype; computed in float32); target: ``[B, K, H, W]`` in [0, 1],
            1 at the peaks.
    Returns:
        Scalar: summed over every cell, divided by the number of peaks (target == 1), at least 1.
    """
    pred = logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -(pred.log() * (1 - pred).pow(alpha) * pos).sum()
    neg_loss = -((1 - pred).log() * pred.pow(alpha) * (1 - target).pow(gamma) * (1 - pos)).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


__all__ = ["box_gaussians", "foreground_mask", "gaussian_focal_loss", "gaussian_radius", "heatmap_targets"]
