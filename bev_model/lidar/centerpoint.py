"""CenterPoint's BEV Gaussians, heatmap targets, heatmap head and Gaussian focal loss.

Written from CenterNet/CenterPoint's definitions: ``gaussian_radius`` is CornerNet's radius for which a box
shifted by it still overlaps the GT with IoU >= ``min_overlap`` (the smallest of three cases); a Gaussian of
radius r is drawn on the ``(2r + 1) x (2r + 1)`` window around the centre cell with sigma = (2r + 1) / 6, and
overlapping Gaussians are merged by their maximum. Centre cells come from :class:`bev_model.bev_grid.BEVGrid`
(the one metric point -> cell convention), so teacher targets, student targets and the distillation mask
land on the same ``[y, x]`` cell.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..bev_grid import BEVGrid


def gaussian_radius(height: float, width: float, min_overlap: float = 0.5) -> float:
    """CornerNet/CenterPoint radius (in cells) of a ``height x width`` (cells) box for IoU ``min_overlap``."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 * b1 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 * b2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def box_gaussians(boxes: torch.Tensor, grid: BEVGrid, min_overlap: float, min_radius: int) -> torch.Tensor:
    """One CenterPoint Gaussian per box on the grid.

    Args:
        boxes: ``[G, >=5]`` box vectors (x, y, z, l, w, ...) in the grid's frame.
    Returns:
        ``[G, H, W]`` float32: box g's Gaussian (0 outside its window; all 0 for a box whose centre is off the
        grid or whose size is not positive).
    """
    H, W = grid.H, grid.W
    G = boxes.shape[0]
    out = torch.zeros(G, H, W, dtype=torch.float32, device=boxes.device)
    if G == 0:
        return out
    dx, dy, _ = grid.cell_size
    b = boxes.detach().float()
    centre = torch.cat([b[:, :2], torch.full_like(b[:, :1], (grid.pc_range[2] + grid.pc_range[5]) / 2)], 1)
    cells, inside = grid.cell_of(centre)
    iy, ix = cells[:, 1], cells[:, 2]
    radius = torch.tensor([max(min_radius, int(gaussian_radius(wid / dy, length / dx, min_overlap)))
                           if length > 0 and wid > 0 else -1 for length, wid in b[:, 3:5].tolist()],
                          device=boxes.device)
    ys = torch.arange(H, device=boxes.device)[None, :, None]
    xs = torch.arange(W, device=boxes.device)[None, None, :]
    ddy, ddx = ys - iy[:, None, None], xs - ix[:, None, None]
    r = radius[:, None, None]
    sigma = (2 * r.float() + 1) / 6
    g = torch.exp(-(ddx.float() ** 2 + ddy.float() ** 2) / (2 * sigma**2))
    window = (ddx.abs() <= r) & (ddy.abs() <= r) & (inside & (radius >= 0))[:, None, None]
    return torch.where(window, g, torch.zeros_like(g))


def heatmap_targets(gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor], grid: BEVGrid, num_classes: int,
                    min_overlap: float, min_radius: int) -> torch.Tensor:
    """Per-class CenterPoint heatmaps ``[B, num_classes, H, W]`` (max of the class's Gaussians)."""
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
    return torch.stack([box_gaussians(b, grid, min_overlap, min_radius).amax(0, keepdim=True)[0]
                        if b.shape[0] else torch.zeros(grid.H, grid.W, device=b.device) for b in gt_boxes])


def gaussian_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0) -> torch.Tensor:
    """CenterNet's focal loss on heatmaps, summed and divided by the number of peaks (target == 1), at least 1."""
    pred = logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -(pred.log() * (1 - pred).pow(alpha) * pos).sum()
    neg_loss = -((1 - pred).log() * pred.pow(alpha) * (1 - target).pow(gamma) * (1 - pos)).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class HeatmapHead(nn.Module):
    """CenterPoint heatmap branch: ``shared`` (3x3 conv-BN-ReLU, C -> S) then ``cls`` (3x3 conv-BN-ReLU, 3x3 conv).

    ``forward(bev [B, C, H, W]) -> (shared [B, S, H, W], logits [B, num_classes, H, W])``. The class bias starts
    at -2.19 (CenterPoint's prior 0.1).
    """

    def __init__(self, in_channels: int, shared_channels: int, num_classes: int) -> None:
        super().__init__()
        self.shared = conv_bn_relu(in_channels, shared_channels)
        self.cls = nn.Sequential(conv_bn_relu(shared_channels, shared_channels),
                                 nn.Conv2d(shared_channels, num_classes, 3, padding=1))
        nn.init.constant_(self.cls[-1].bias, -2.19)

    def forward(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.shared(bev)
        return shared, self.cls(shared)


def heatmap_proposals(logits: torch.Tensor, bev: torch.Tensor, grid: BEVGrid, k: int,
                      prior_size: tuple[float, float, float]) -> dict[str, torch.Tensor]:
    """The teacher's first stage: the ``k`` best local maxima of the CenterPoint heatmap, as proposals for the
    BEV head's hybrid queries (TransFusion/CenterPoint-style query initialisation).

    A cell is a peak of class c when its probability is the maximum of its 3x3 neighbourhood in class c's map
    (CenterPoint's max-pool NMS); the ``k`` best peaks over all classes and cells are kept (fewer peaks than
    ``k``: the best non-peaks fill in, ``kept`` False). Positions and scores are detached: the heatmap is trained
    by its own focal loss, not through the queries it places; ``content`` is not (the BEV learns through it).

    Args:
        logits: ``[B, C, H, W]`` heatmap logits; bev: ``[B, D, H, W]`` the BEV features the head attends to;
        grid: the heatmap's grid; k: proposals per sample; prior_size: ``(l, w, h)`` metres of the proposal box
        (the heatmap gives no size: the decoder's regression branches start from it).
    Returns:
        ``boxes [B, k, 9]`` (cell centre x, y; z mid-range; ``prior_size``; yaw 0; velocity 0), ``scores [B, k]``
        (peak probability), ``labels [B, k]``, ``cls_prob [B, k, C]`` (every class's probability at the cell),
        ``kept [B, k]`` bool, ``content [B, k, D]`` (the BEV feature at the cell, TransFusion's query content).
    """
    B, C, H, W = logits.shape
    if (H, W) != (grid.H, grid.W):
        raise ValueError(f"heatmap {(H, W)} != grid {(grid.H, grid.W)}")
    if not 1 <= k <= C * H * W:
        raise ValueError(f"k = {k} proposals from a {C}x{H}x{W} heatmap")
    prob = logits.detach().float().sigmoid()
    peak = prob == nn.functional.max_pool2d(prob, 3, stride=1, padding=1)
    ranked = torch.where(peak, prob, prob - 1.0)  # non-peaks rank below every peak
    top, idx = ranked.flatten(1).topk(k, dim=1)  # [B, k] over (class, y, x)
    labels, cell = idx // (H * W), idx % (H * W)
    centres = grid.centres(logits.device)[0].reshape(H * W, 3)  # [H*W, 3]
    xyz = centres[cell]  # [B, k, 3]
    xyz[..., 2] = 0.5 * (grid.pc_range[2] + grid.pc_range[5])
    rest = xyz.new_tensor([*prior_size, 0.0, 0.0, 0.0]).expand(B, k, 6)
    flat_prob = prob.flatten(2)  # [B, C, H*W]
    cls_prob = torch.gather(flat_prob, 2, cell[:, None, :].expand(B, C, k)).transpose(1, 2)  # [B, k, C]
    content = torch.gather(bev.flatten(2), 2, cell[:, None, :].expand(B, bev.shape[1], k)).transpose(1, 2)
    return {"boxes": torch.cat([xyz, rest], -1), "scores": torch.gather(cls_prob, 2, labels[..., None])[..., 0],
            "labels": labels, "cls_prob": cls_prob, "kept": top >= 0, "content": content}
