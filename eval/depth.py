"""Depth quality of a depth-based detector (BEVNeXt) against LiDAR: per stride x stride patch with LiDAR, the
arg-max depth bin against the LiDAR bin, split by whether the patch's points lie on a GT object, and by range.

    rows = depth_quality(model, loader, samples=60)       # model: BEVNeXt in eval mode; loader yields Batches
    print(format_table(rows))

Targets are :func:`bev_model.bevnext.depth.depth_targets` (the nearest LiDAR point of each patch, through the
augmented ``ego2img``); a point is "on an object" when the devkit's ``points_in_box`` puts it inside a GT box.
A patch counts under "on objects" when its nearest point among the object points falls in it, so a patch can
count in both groups (its nearest object point and its nearest background point).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import islice

import numpy as np
import torch
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from bev_model.bevnext.config import DepthConfig
from bev_model.bevnext.depth import depth_targets

GROUPS = ("on objects", "background")
RANGES: tuple[tuple[int, int], ...] = ((0, 10), (10, 25), (25, 1000))
"""Bin-index ranges of the table (with the tiny preset's 1 m bins from 1 m: about 1-11 m, 11-26 m, beyond)."""


@dataclass(frozen=True)
class DepthRow:
    """One table row: ``group`` of patches, bin range ``[lo, hi)``, ``n`` patches, the fraction whose arg-max bin is
    within 1 and within 3 bins of the LiDAR bin, and the mean probability of the LiDAR bin."""

    group: str
    lo: int
    hi: int
    n: int
    within_1: float
    within_3: float
    p_true: float

    def to_dict(self) -> dict:
        return asdict(self)


def on_objects(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``points [P, 3]``, ``boxes [G, >=7]`` (x y z l w h yaw, the points' frame) -> ``[P]`` bool: inside any box."""
    inside = np.zeros(points.shape[0], dtype=bool)
    xyz = points.detach().cpu().T.double().numpy()
    for b in boxes.detach().cpu().double().tolist():
        box = Box(b[:3], [b[4], b[3], b[5]], Quaternion(axis=[0, 0, 1], angle=b[6]))  # devkit size: w, l, h
        inside |= points_in_box(box, xyz)
    return torch.from_numpy(inside)


def patch_errors(depth: torch.Tensor, points: torch.Tensor, boxes: torch.Tensor, ego2img: torch.Tensor,
                 image_hw: tuple[int, int], cfg: DepthConfig) -> dict[str, torch.Tensor]:
    """Per-patch errors of one sample.

    Args:
        depth: ``[N, D, h, w]`` depth probabilities of the sample's N cameras; points: ``[P, >=3]`` LiDAR in the
            augmented ego frame; boxes: ``[G, >=7]`` GT in the same frame; ego2img: ``[N, 4, 4]`` (augmented).
    Returns:
        ``{group: [M, 3]}`` float rows (LiDAR bin, |arg-max bin - LiDAR bin|, probability of the LiDAR bin) for the
        patches of each of :data:`GROUPS`.
    """
    pts = points[:, :3].float()
    obj = on_objects(pts, boxes)
    out = {}
    for group, sel in zip(GROUPS, (pts[obj], pts[~obj])):
        tgt = depth_targets([sel], ego2img[None].float(), image_hw, cfg)[0]  # [N, h, w]
        fg = tgt >= 0
        p = depth.float().permute(0, 2, 3, 1)[fg]  # [M, D]
        t = tgt[fg]
        out[group] = torch.stack([t.float(), (p.argmax(1) - t).abs().float(),
                                  p[torch.arange(len(t), device=p.device), t]], 1)
    return out


def summarize(parts: Iterable[dict[str, torch.Tensor]], num_bins: int,
              ranges: Sequence[tuple[int, int]] = RANGES) -> list[DepthRow]:
    """:func:`patch_errors` of many samples -> one :class:`DepthRow` per group and range (all bins first, as range
    ``[0, num_bins)``), ranges without patches left out."""
    rows: dict[str, list[torch.Tensor]] = {g: [] for g in GROUPS}
    for part in parts:
        for g in GROUPS:
            rows[g].append(part[g])
    out = []
    for g in GROUPS:
        r = torch.cat(rows[g]) if rows[g] else torch.zeros(0, 3)
        for lo, hi in ((0, num_bins), *ranges):
            x = r[(r[:, 0] >= lo) & (r[:, 0] < hi)]
            if len(x):
                out.append(DepthRow(g, lo, min(hi, num_bins), len(x), float((x[:, 1] <= 1).float().mean()),
                                    float((x[:, 1] <= 3).float().mean()), float(x[:, 2].mean())))
    return out


@torch.no_grad()
def depth_quality(model, batches: Iterable, samples: int | None = None) -> list[DepthRow]:
    """Score a BEVNeXt model's (CRF) depth on the current frame of each batch, up to ``samples`` batches.

    ``model``: a ``bev_model.bevnext.BEVNeXt`` (its mode is left as it is: call ``eval()`` first to score what
    inference sees); ``batches``: Batches with ``points`` (a loader with ``load_points``).
    """
    if not hasattr(model, "depth_and_context"):
        raise ValueError(f"depth quality needs a depth-based model (BEVNeXt); got {type(model).__name__}")
    dev = next(model.parameters()).device
    parts = []
    for batch in islice(batches, samples):
        if batch.points is None or any(p is None for p in batch.points):
            raise ValueError("depth quality needs LiDAR: this batch has no `points` (shards built with --lidar, "
                             "loader with load_points)")
        imgs = batch.imgs.to(dev)  # [B, T, N, 3, H, W]
        B, N = imgs.shape[0], imgs.shape[2]
        depth, _ = model.depth_and_context(imgs[:, -1], model.camera_inputs(batch, -1))  # [B N, D, h, w]
        depth = depth.view(B, N, *depth.shape[1:])
        boxes, _, _ = batch.detection_targets(dev)
        for b in range(B):
            parts.append(patch_errors(depth[b], batch.points[b].to(dev), boxes[b], batch.ego2img[b, -1].to(dev),
                                      tuple(imgs.shape[-2:]), model.cfg.depth))
    if not parts:
        raise ValueError("depth quality: the loader yielded no batch")
    return summarize(parts, model.cfg.depth.num_bins)


def overall(rows: Sequence[DepthRow]) -> dict[str, DepthRow]:
    """Each group's all-bins row of :func:`summarize`'s ``rows`` (its first)."""
    out: dict[str, DepthRow] = {}
    for r in rows:
        out.setdefault(r.group, r)
    return out


def format_table(rows: Sequence[DepthRow]) -> str:
    lines = [f"{'patches':<12}{'bins':>9}{'n':>7}{'within 1 bin':>14}{'within 3':>10}{'p(true bin)':>13}"]
    for r in rows:
        lines.append(f"{r.group:<12}{f'{r.lo}-{r.hi}':>9}{r.n:>7}{r.within_1:>14.2f}{r.within_3:>10.2f}"
                     f"{r.p_true:>13.3f}")
    return "\n".join(lines)


__all__ = ["DepthRow", "GROUPS", "RANGES", "depth_quality", "format_table", "on_objects", "overall", "patch_errors", "summarize"]
