"""CenterPoint heads of BEVNeXt: heatmap proposals, perspective refinement, regression, targets, decoding.

BEV maps are ``[B, C, H, W]`` over ``BEVGrid`` (rows along +y, columns along +x). The heatmap ``[B, K, H, W]``
(K classes, ``shards.conventions.CLASSES`` order) comes from the BEV neck; the regression maps from the
refined BEV: ``reg [B, 2]`` (centre offset in cells, x then y), ``height [1]`` (z, metres), ``dim [3]``
(log l, w, h), ``rot [2]`` (sin, cos yaw), ``vel [2]`` (m/s), ``attr [A]`` logits.
"""

from __future__ import annotations

import torch
from torch import nn

from shards.conventions import transform_boxes

from ..bev_encoder import EncoderLayer, pillar_points, project_pillars
from ..bev_grid import BEVGrid
from ..config import EncoderConfig
from ..heatmap import heatmap_targets
from ..postprocess import class_attribute_mask
from ..precision import float32_geometry
from .config import BEVNeXtConfig

REG_HEADS = (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))
"""Regression branches and their channels; concatenated in this order they are the 10-number target code."""


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _branch(c: int, cout: int, bias: float = 0.0) -> nn.Sequential:
    """CenterPoint ``SeparateHead`` branch: 3x3 conv-BN-ReLU, 3x3 conv to ``cout`` (bias ``bias``)."""
    out = nn.Conv2d(c, cout, 3, padding=1)
    nn.init.constant_(out.bias, bias)
    return nn.Sequential(_cbr(c, c), out)


class ProposalHead(nn.Module):
    """Heatmap head: ``[B, C_in, H, W]`` -> logits ``[B, K, H, W]`` (bias -2.19: prior 0.1)."""

    def __init__(self, in_channels: int, share: int, num_classes: int) -> None:
        super().__init__()
        self.shared = _cbr(in_channels, share)
        self.heatmap = _branch(share, num_classes, -2.19)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heatmap(self.shared(x))


class RegHead(nn.Module):
    """Regression head on the refined BEV: ``[B, C, H, W]`` -> dict of ``REG_HEADS`` maps + ``attr``."""

    def __init__(self, in_channels: int, share: int, num_attrs: int) -> None:
        super().__init__()
        self.shared = _cbr(in_channels, share)
        self.branches = nn.ModuleDict({k: _branch(share, c) for k, c in REG_HEADS})
        self.branches["attr"] = _branch(share, num_attrs)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.shared(x)
        return {k: b(x) for k, b in self.branches.items()}


class PerspectiveRefinement(nn.Module):
    """One BEVFormer-style spatial cross-attention layer refining every BEV cell from the current images.

    Queries: a learned per-cell embedding + ``shared_conv(bev)`` (the BEV neck output), positions: learned
    row/column halves. Values: the current frame's context features + ``depth_embed(detached CRF depth)``
    (one level). Each query's pillar (``num_z_anchors`` over ``pc_range``'s height) is projected through
    every camera's augmented ``ego2img``; ``bev_model.bev_encoder.EncoderLayer`` (fused ``MSDeformAttn``,
    camera masks) does SCA + norm + FFN + norm. ``[B, C, H, W]`` out.
    """

    def __init__(self, cfg: BEVNeXtConfig) -> None:
        super().__init__()
        b, r = cfg.bev, cfg.refine
        C, D = b.channels, cfg.depth.num_bins
        self.enc = EncoderConfig(bev_h=b.bev_h, bev_w=b.bev_w, pc_range=tuple(b.pc_range), embed_dims=C, num_layers=1,
                                 num_heads=r.num_heads, num_levels=1, num_points=r.num_points,
                                 num_z_anchors=r.num_z_anchors, ffn_dims=C * r.ffn_mult, dropout=0.0)
        self.shared_conv = _cbr(b.neck_channels, C)
        self.bev_embed = nn.Embedding(b.bev_h * b.bev_w, C)
        self.row_embed = nn.Embedding(b.bev_h, C // 2)
        self.col_embed = nn.Embedding(b.bev_w, C - C // 2)
        self.depth_embed = nn.Sequential(nn.Conv2d(D, D, 1), nn.BatchNorm2d(D), nn.ReLU(inplace=True), nn.Conv2d(D, C, 1))
        self.layer = EncoderLayer(self.enc, cfg.attn_backend)
        self.register_buffer("pillars", pillar_points(self.enc), persistent=False)

    def forward(self, bev: torch.Tensor, context: torch.Tensor, depth: torch.Tensor, ego2img: torch.Tensor,
                image_hw: tuple[int, int]) -> torch.Tensor:
        """bev ``[B, C_neck, H, W]``; context ``[B N, C, h, w]``; depth ``[B N, D, h, w]``; ego2img ``[B, N, 4, 4]``."""
        B, N = ego2img.shape[:2]
        H, W = self.enc.bev_h, self.enc.bev_w
        value = context + self.depth_embed(depth.detach().to(context.dtype))
        C, h, w = value.shape[1:]
        value = value.flatten(2).transpose(1, 2)  # [B N, h w, C]
        shapes = torch.tensor([[h, w]], dtype=torch.long, device=value.device)
        starts = shapes.new_zeros(1)
        ref, hit = project_pillars(self.pillars, ego2img.float(), image_hw)
        query = self.bev_embed.weight.to(value.dtype)[None] + self.shared_conv(bev).flatten(2).transpose(1, 2)
        pos = torch.cat([self.row_embed.weight[:, None].expand(H, W, -1), self.col_embed.weight[None].expand(H, W, -1)],
                        -1).reshape(1, H * W, C).to(value.dtype).expand(B, -1, -1)
        out = self.layer(query, pos, value, ref, hit, shapes, starts)  # [B, H W, C]
        return out.transpose(1, 2).reshape(B, C, H, W)


# ----------------------------------------------------------------------------------------------- targets


@float32_geometry
def center_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor], attrs: list[torch.Tensor], grid: BEVGrid,
                   num_classes: int, overlap: float, min_radius: int) -> dict[str, torch.Tensor]:
    """CenterPoint targets; the heatmap is :func:`bev_model.heatmap.heatmap_targets` of the same boxes.

    Args:
        boxes: B x ``[G, 9]`` (augmented ego frame), labels: B x ``[G]`` (>= 0), attrs: B x ``[G]`` (-1 none).
    Returns:
        ``heatmap [B, K, H, W]`` (Gaussian peaks, 1 at each centre cell), ``ind [B, M]`` (flat cell ``iy W + ix``),
        ``mask [B, M]`` bool, ``code [B, M, 10]`` (offset x, y in cells, z, log l w h, sin, cos, vx, vy),
        ``attr [B, M]``; ``M = max G``; boxes whose centre lies outside the grid are skipped.
    """
    B = len(boxes)
    dev = boxes[0].device if B else torch.device("cpu")
    W = grid.W
    dx, dy, _ = grid.cell_size
    x0, y0 = grid.pc_range[0], grid.pc_range[1]
    M = max([1] + [int(b.shape[0]) for b in boxes])
    heat = heatmap_targets(boxes, labels, grid, num_classes, overlap, min_radius)
    ind = torch.zeros(B, M, dtype=torch.long, device=dev)
    mask = torch.zeros(B, M, dtype=torch.bool, device=dev)
    code = torch.zeros(B, M, 10, device=dev)
    attr = torch.full((B, M), -1, dtype=torch.long, device=dev)
    for b in range(B):
        bx = boxes[b].float()
        if bx.shape[0] == 0:
            continue
        mid_z = torch.full_like(bx[:, :1], (grid.pc_range[2] + grid.pc_range[5]) / 2)  # the plane cell only
        cells, inside = grid.cell_of(torch.cat([bx[:, :2], mid_z], -1))
        for g in torch.nonzero(inside)[:, 0].tolist():
            iy, ix = int(cells[g, 1]), int(cells[g, 2])
            ind[b, g] = iy * W + ix
            mask[b, g] = True
            cx, cy = (bx[g, 0] - x0) / dx, (bx[g, 1] - y0) / dy
            code[b, g] = torch.stack([cx - ix, cy - iy, bx[g, 2], *bx[g, 3:6].clamp(min=1e-3).log(),
                                      bx[g, 6].sin(), bx[g, 6].cos(), bx[g, 7], bx[g, 8]])
            attr[b, g] = int(attrs[b][g])
    return {"heatmap": heat, "ind": ind, "mask": mask, "code": code, "attr": attr}


def gather_code(reg: dict[str, torch.Tensor], ind: torch.Tensor) -> torch.Tensor:
    """Regression maps ``[B, c, H, W]`` at flat cells ``ind [B, M]`` -> codes ``[B, M, 10]`` (``REG_HEADS`` order)."""
    maps = torch.cat([reg[k] for k, _ in REG_HEADS], 1).flatten(2)  # [B, 10, H W]
    return maps.gather(2, ind[:, None].expand(-1, maps.shape[1], -1)).transpose(1, 2)


# ----------------------------------------------------------------------------------------------- decoding


def circle_nms(xy: torch.Tensor, labels: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Greedy per-class circle NMS over score-sorted centres ``xy [K, 2]``: drop a box closer than its class's
    ``radius`` (metres) to a kept, higher-scored box of the same class. Returns kept indices ``[K']``."""
    K = xy.shape[0]
    if K == 0:
        return torch.zeros(0, dtype=torch.long, device=xy.device)
    close = (torch.cdist(xy, xy) < radius[labels][:, None]) & (labels[:, None] == labels[None])
    keep = torch.ones(K, dtype=torch.bool, device=xy.device)
    close_cpu, keep_cpu = close.cpu(), keep.cpu()
    for i in range(K):
        if keep_cpu[i]:
            sup = close_cpu[i].clone()
            sup[: i + 1] = False
            keep_cpu &= ~sup
    return torch.nonzero(keep_cpu.to(xy.device))[:, 0]


@float32_geometry
def decode(heat_logits: torch.Tensor, reg: dict[str, torch.Tensor], grid: BEVGrid, cfg: BEVNeXtConfig,
           bev_aug: torch.Tensor | None) -> list[dict[str, torch.Tensor]]:
    """Heatmap + regression maps -> per-sample detections in the un-augmented ego frame.

    Returns B dicts: ``boxes [K, 9]``, ``scores [K]``, ``labels [K]`` int64, ``attrs [K]`` int64 (-1 none),
    ``K <= head.max_detections``, sorted by score.
    """
    h = cfg.head
    B, Kc, H, W = heat_logits.shape
    dx, dy, _ = grid.cell_size
    x0, y0 = grid.pc_range[0], grid.pc_range[1]
    scores_all = heat_logits.sigmoid().flatten(1)  # [B, Kc H W]
    radius = torch.tensor(h.nms_radius, device=heat_logits.device)
    attr_ok = class_attribute_mask(heat_logits.device)
    out = []
    for b in range(B):
        scores, idx = scores_all[b].topk(min(h.pre_max, scores_all.shape[1]))
        keep = scores > h.score_threshold
        scores, idx = scores[keep], idx[keep]
        labels = idx // (H * W)
        cell = idx % (H * W)
        iy, ix = (cell // W).float(), (cell % W).float()
        at = {k: v[b].flatten(1)[:, cell] for k, v in reg.items()}  # [c, K]
        x = x0 + (ix + at["reg"][0]) * dx
        y = y0 + (iy + at["reg"][1]) * dy
        yaw = torch.atan2(at["rot"][0], at["rot"][1])
        boxes = torch.stack([x, y, at["height"][0], *at["dim"].clamp(max=5.0).exp(), yaw, at["vel"][0],
                             at["vel"][1]], -1)
        kept = circle_nms(boxes[:, :2], labels, radius)[: h.max_detections]
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
        if bev_aug is not None:
            boxes = transform_boxes(boxes, torch.linalg.inv(bev_aug[b].float()))
        a = at["attr"][:, kept].t().masked_fill(~attr_ok[labels], float("-inf"))
        attrs = torch.where(attr_ok[labels].any(-1), a.argmax(-1), torch.full_like(labels, -1))
        out.append({"boxes": boxes, "scores": scores, "labels": labels.long(), "attrs": attrs.long()})
    return out


__all__ = ["PerspectiveRefinement", "ProposalHead", "REG_HEADS", "RegHead", "center_targets", "circle_nms", "decode",
           "gather_code"]
