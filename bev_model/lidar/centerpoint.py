"""The LiDAR teacher's CenterPoint heatmap head and its heatmap-peak proposals.

The heatmap's targets, Gaussians and focal loss are the family-neutral ones of :mod:`bev_model.heatmap`
(shared with BEVNeXt and BEVDistill); what is here is the teacher's own: its head and its first stage.
"""

from __future__ import annotations

import torch
from torch import nn

from ..bev_grid import BEVGrid


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


__all__ = ["HeatmapHead", "conv_bn_relu", "heatmap_proposals"]
