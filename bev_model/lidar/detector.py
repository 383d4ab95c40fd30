"""The LiDAR teacher: pillars -> SECOND + FPN (the student's BEV grid) -> BEV head (+ CenterPoint heatmap).

The head is the camera student's :class:`bev_model.bev_head.BEVHead` (Deformable-DETR decoder with iterative
refinement) with its :class:`SetCriterion` and :class:`BoxCoder`, so boxes are coded, matched, scored and decoded
exactly as the student's. Its queries: ``head.num_queries`` learned ones plus, with ``head.hybrid`` other than
``none``, ``head.num_hybrid`` placed on the CenterPoint heatmap's best peaks
(:func:`bev_model.lidar.centerpoint.heatmap_proposals`; content = the BEV feature at the peak, as TransFusion's
queries; ``anchor``: the peak's class probabilities are the query's starting scores). Learned queries alone
(``hybrid: none``) trained too slowly to make a teacher (docs/experiments.md, 2026-12-02). ``forward_train(batch) -> {"loss", "bev.<term>",
"aux.heatmap"}``; ``predict(batch) -> [{"boxes", "scores", "labels", "attrs"}]`` in the un-augmented ego frame;
:meth:`LidarDetector.outputs` gives the distillation everything at once.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..bev_grid import BEVGrid
from ..bev_head import CODE_PRIOR, BEVHead
from ..box_coder import BoxCoder
from ..heatmap import gaussian_focal_loss, heatmap_targets
from ..losses import SetCriterion
from ..postprocess import postprocess
from .centerpoint import HeatmapHead, heatmap_proposals
from .config import LidarConfig
from .pillars import PillarEncoder
from .second import SecondFPN

PRIOR_SIZE = tuple(math.exp(c) for c in CODE_PRIOR[:3])
"""``(l, w, h)`` of a heatmap proposal's box: the size the head's regression branches start from."""


class LidarDetector(nn.Module):
    """Build with :func:`bev_model.build_model` from a :class:`LidarConfig`."""

    def __init__(self, cfg: LidarConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        g = cfg.grid
        self.grid: BEVGrid = g.bev_grid()
        s = cfg.pillar.stride
        pillar_grid = BEVGrid(tuple(g.pc_range), g.bev_h * s, g.bev_w * s)
        self.pillars = PillarEncoder(pillar_grid, cfg.pillar.channels, cfg.pillar.max_points)
        self.backbone = SecondFPN(cfg.pillar.channels, cfg.backbone, s, cfg.embed_dims)
        self.coder = BoxCoder(g.pc_range)
        self.head = BEVHead(cfg.embed_dims, cfg.head, self.coder, cfg.num_classes, cfg.num_attrs,
                            cfg.head.hybrid != "none", cfg.attn_backend)
        self.criterion = SetCriterion(cfg.head, self.coder, cfg.num_classes)
        self.heatmap = (HeatmapHead(cfg.embed_dims, cfg.heatmap.shared_channels, cfg.num_classes)
                        if cfg.heatmap.enabled else None)

    def bev_features(self, points: list[torch.Tensor]) -> torch.Tensor:
        """``points``: B tensors ``[P_i, >=4]`` (augmented ego frame) -> BEV ``[B, embed_dims, bev_h, bev_w]``."""
        bev = self.backbone(self.pillars(points))
        if bev.shape[-2:] != (self.grid.H, self.grid.W):
            raise RuntimeError(f"teacher BEV {tuple(bev.shape[-2:])} != grid {(self.grid.H, self.grid.W)}")
        return bev

    def outputs(self, batch) -> dict[str, torch.Tensor]:
        """``bev [B, C, H, W]`` (the FPN output, before the head), the head's ``cls/codes/attr [Ly, B, Q, .]``,
        and with the heatmap head ``shared [B, S, H, W]`` and ``heatmap [B, num_classes, H, W]`` logits."""
        points = batch.points
        if points is None:
            raise ValueError("the LiDAR teacher needs batch.points (data.load_points: true)")
        dev = next(self.parameters()).device
        bev = self.bev_features([p.to(dev) for p in points])
        out: dict[str, torch.Tensor] = {"bev": bev}
        proposals = None
        if self.heatmap is not None:
            out["shared"], out["heatmap"] = self.heatmap(bev)
            if self.cfg.head.hybrid != "none":
                proposals = heatmap_proposals(out["heatmap"], bev, self.grid, self.cfg.head.num_hybrid, PRIOR_SIZE)
        out.update(self.head(bev, proposals))
        return out

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        """``{"loss": total, "bev.<term>": ..., "aux.heatmap": ...}`` (scalars)."""
        out = self.outputs(batch)
        boxes, labels, attrs = batch.detection_targets(out["cls"].device)
        terms = {f"bev.{k}": v for k, v in self.criterion(out, boxes, labels, attrs).items()}
        total = sum(terms.values())
        if self.heatmap is not None:
            h = self.cfg.heatmap
            target = heatmap_targets(boxes, labels, self.grid, self.cfg.num_classes, h.min_overlap, h.min_radius)
            terms["aux.heatmap"] = h.weight * gaussian_focal_loss(out["heatmap"], target)
            total = total + terms["aux.heatmap"]
        terms["loss"] = total
        return terms

    @torch.no_grad()
    def predict(self, batch, history=None) -> list[dict[str, torch.Tensor]]:
        """Detections per sample: ``boxes [K, 9]`` (current ego frame, bev_aug undone), ``scores``, ``labels``, ``attrs``."""
        out = self.outputs(batch)
        return postprocess(out["cls"][-1], out["codes"][-1], out["attr"][-1], self.coder,
                           batch.bev_aug, self.cfg.head.max_detections)

    def new_history(self) -> None:
        """Single-frame: no state across frames."""
        return None

    def forward(self, batch):
        return self.forward_train(batch) if self.training else self.predict(batch)
