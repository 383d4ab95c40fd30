"""Perspective-head targets built on the fly from 3D GT boxes and each camera's augmented matrices.

FCOS3D-style assignment, per camera image and FPN location (pixel centre ``(j + 0.5) s``):

1. GT filter: detection label >= 0, ``num_pts >= min_num_pts``, ``visibility >= min_visibility_level``
   (nuScenes level 1 = 0-40 % visible; "visibility >= 0.2" keeps level >= 1), centre depth
   >= ``min_depth``, projected 3D centre inside the image.
2. 2D box: the bounding box of the 8 projected corners (depths clamped to 0.1 m), clipped to the image.
3. Level assignment by 2D size: a GT goes to the level whose ``size_ranges`` entry holds half of its
   2D box's longer side (the largest regression distance at its centre). On that level a location is
   a candidate if it lies inside the 2D box within ``center_radius`` strides (both axes) of the
   projected 3D centre (centre sampling), or is the cell containing that centre (always).
4. Ties go to the GT nearest the camera.

Targets per location: class, 2D ``ltrb`` (pixels), centerness ``exp(-2.5 d^2)`` (``d`` the distance to
the projected centre in units of ``center_radius * stride``), projected-centre offset (strides),
``log(depth * focal_ref / focal)``, log size, allocentric ``(sin, cos)``, camera-frame velocity
``(x, z)``, attribute, and the GT index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shards.conventions import box_corners

from .cameras import allocentric_from_yaw, ego_xy_to_cam_xz, virtual_cameras
from .config import PerspectiveConfig
from .precision import float32_geometry


@dataclass
class Locations:
    """Flattened FPN locations of one image (levels concatenated, row-major).

    points ``[L, 2]`` pixel (x, y); stride ``[L]``; level ``[L]`` int64.
    """

    points: torch.Tensor
    stride: torch.Tensor
    level: torch.Tensor


def make_locations(shapes: list[tuple[int, int]], strides: list[int], device=None) -> Locations:
    """Level shapes ``[(H_l, W_l)]`` and strides -> :class:`Locations`."""
    pts, st, lv = [], [], []
    for i, ((h, w), s) in enumerate(zip(shapes, strides)):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack([gx.reshape(-1), gy.reshape(-1)], -1))
        st.append(torch.full((h * w,), float(s), device=device))
        lv.append(torch.full((h * w,), i, device=device, dtype=torch.long))
    return Locations(torch.cat(pts), torch.cat(st), torch.cat(lv))


@dataclass
class PerspectiveTargets:
    """Dense targets for ``I = B * N`` images over ``L`` locations.

    labels ``[I, L]`` int64 (``num_classes`` = background); gt_index ``[I, L]`` (-1 background; index into
    the sample's GT list); ltrb ``[I, L, 4]``; centerness ``[I, L]``; offset ``[I, L, 2]``; depth ``[I, L]``;
    size ``[I, L, 3]``; rot ``[I, L, 2]``; vel ``[I, L, 2]`` (NaN: unknown); attr ``[I, L]`` (-1 none);
    centre ``[I, L, 3]`` GT centre in the (augmented) ego frame.
    """

    labels: torch.Tensor
    gt_index: torch.Tensor
    ltrb: torch.Tensor
    centerness: torch.Tensor
    offset: torch.Tensor
    depth: torch.Tensor
    size: torch.Tensor
    rot: torch.Tensor
    vel: torch.Tensor
    attr: torch.Tensor
    centre: torch.Tensor


def filter_gt(labels: torch.Tensor, num_pts: torch.Tensor | None, visibility: torch.Tensor | None,
              cfg: PerspectiveConfig) -> torch.Tensor:
    """``[G]`` bool mask of GT boxes that supervise the perspective head."""
    keep = labels >= 0
    if num_pts is not None:
        keep &= num_pts.to(labels.device) >= cfg.min_num_pts
    if visibility is not None:
        keep &= visibility.to(labels.device) >= cfg.min_visibility_level
    return keep


def _sample_targets(boxes, labels, attrs, keep, ego2img, intrinsics, image_hw, loc: Locations,
                    cfg: PerspectiveConfig, num_classes: int) -> dict[str, torch.Tensor]:
    """One sample: boxes ``[G, 9]``, ego2img ``[N, 4, 4]``, intrinsics ``[N, 3, 3]`` -> dict of ``[N, L, ...]``."""
    N, L, G = ego2img.shape[0], loc.points.shape[0], boxes.shape[0]
    dev, H, W = boxes.device, float(image_hw[0]), float(image_hw[1])
    out = {
        "labels": torch.full((N, L), num_classes, dtype=torch.long, device=dev),
        "gt_index": torch.full((N, L), -1, dtype=torch.long, device=dev),
        "ltrb": torch.zeros(N, L, 4, device=dev), "centerness": torch.zeros(N, L, device=dev),
        "offset": torch.zeros(N, L, 2, device=dev), "depth": torch.zeros(N, L, device=dev),
        "size": torch.zeros(N, L, 3, device=dev), "rot": torch.zeros(N, L, 2, device=dev),
        "vel": torch.zeros(N, L, 2, device=dev), "attr": torch.full((N, L), -1, dtype=torch.long, device=dev),
        "centre": torch.zeros(N, L, 3, device=dev),
    }
    if G == 0 or not bool(keep.any()):
        return out
    ego2cam, focal = virtual_cameras(ego2img.float(), intrinsics.float())  # [N, 4, 4], [N]
    e2i = ego2img.float()
    # projected centres [N, G]
    ctr_h = torch.cat([boxes[:, :3], torch.ones(G, 1, device=dev)], -1)  # [G, 4]
    proj = torch.einsum("nij,gj->ngi", e2i, ctr_h)
    depth = proj[..., 2]
    uv = proj[..., :2] / depth.clamp(min=1e-3)[..., None]  # [N, G, 2]
    # 2D boxes from corners [N, G, 8]
    corners = box_corners(boxes[:, :7])  # [G, 8, 3]
    cor_h = torch.cat([corners, torch.ones(G, 8, 1, device=dev)], -1)
    cproj = torch.einsum("nij,gkj->ngki", e2i, cor_h)
    cuv = cproj[..., :2] / cproj[..., 2:3].clamp(min=0.1)
    x1 = cuv[..., 0].amin(-1).clamp(0, W)
    y1 = cuv[..., 1].amin(-1).clamp(0, H)
    x2 = cuv[..., 0].amax(-1).clamp(0, W)
    y2 = cuv[..., 1].amax(-1).clamp(0, H)
    inside_img = (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
    valid = keep[None] & (depth >= cfg.min_depth) & inside_img & (x2 > x1) & (y2 > y1)  # [N, G]
    # location x GT candidates [N, L, G]
    px, py = loc.points[None, :, 0, None], loc.points[None, :, 1, None]
    ltrb = torch.stack([px - x1[:, None], py - y1[:, None], x2[:, None] - px, y2[:, None] - py], -1)
    in_box = ltrb.amin(-1) > 0
    # level by the GT's 2D size: half of its longer 2D side falls in the level's range
    half = torch.maximum(x2 - x1, y2 - y1) / 2  # [N, G]
    ranges = torch.tensor(cfg.size_ranges, device=dev, dtype=torch.float32)  # [levels, 2]
    gt_level = ((half[..., None] >= ranges[:, 0]) & (half[..., None] < ranges[:, 1])).float().argmax(-1)
    same_level = loc.level[None, :, None] == gt_level[:, None, :]
    stride = loc.stride[None, :, None]
    dx = px - uv[:, None, :, 0]
    dy = py - uv[:, None, :, 1]
    in_centre = (dx.abs() < cfg.center_radius * stride) & (dy.abs() < cfg.center_radius * stride)
    centre_cell = (dx.abs() <= stride / 2) & (dy.abs() <= stride / 2)  # always positive, even for tiny boxes
    cand = valid[:, None, :] & same_level & ((in_box & in_centre) | centre_cell)
    cost = torch.where(cand, depth[:, None, :].expand(N, L, G), torch.full_like(ltrb[..., 0], float("inf")))
    best_cost, best = cost.min(-1)  # [N, L]
    pos = torch.isfinite(best_cost)
    if not bool(pos.any()):
        return out
    n_idx, l_idx = pos.nonzero(as_tuple=True)
    g = best[n_idx, l_idx]
    stride = loc.stride[l_idx]  # [P]
    b = boxes[g]
    out["labels"][n_idx, l_idx] = labels[g]
    out["gt_index"][n_idx, l_idx] = g
    out["ltrb"][n_idx, l_idx] = ltrb[n_idx, l_idx, g]
    d2 = (dx[n_idx, l_idx, g] ** 2 + dy[n_idx, l_idx, g] ** 2) / (cfg.center_radius * stride) ** 2
    out["centerness"][n_idx, l_idx] = torch.exp(-2.5 * d2)
    out["offset"][n_idx, l_idx] = (uv[n_idx, g] - loc.points[l_idx]) / stride[:, None]
    out["depth"][n_idx, l_idx] = torch.log(depth[n_idx, g] * cfg.focal_ref / focal[n_idx])
    out["size"][n_idx, l_idx] = b[:, 3:6].clamp(min=1e-3).log()
    lin = ego2cam[n_idx, :3, :3]
    centre_cam = (ego2cam[n_idx] @ ctr_h[g][..., None])[..., 0][:, :3]
    alpha = allocentric_from_yaw(lin, centre_cam, b[:, 6])
    out["rot"][n_idx, l_idx] = torch.stack([alpha.sin(), alpha.cos()], -1)
    out["vel"][n_idx, l_idx] = ego_xy_to_cam_xz(lin, b[:, 7:9])
    out["attr"][n_idx, l_idx] = attrs[g]
    out["centre"][n_idx, l_idx] = b[:, :3]
    return out


@torch.no_grad()
@float32_geometry
def build_perspective_targets(batch, frame: int, loc: Locations, image_hw: tuple[int, int],
                              cfg: PerspectiveConfig, num_classes: int) -> PerspectiveTargets:
    """Targets for every camera of every sample of ``batch`` at time index ``frame``.

    Args:
        batch: object with ``gt_boxes/gt_labels/gt_attrs`` lists (optional ``gt_num_pts``,
            ``gt_visibility``), ``ego2img [B, T, N, 4, 4]``, ``intrinsics [B, T, N, 3, 3]``.
        frame: the time index of the current frame.
        loc: the FPN locations of one image; image_hw: ``(H, W)`` of the (augmented) images.
    Returns:
        :class:`PerspectiveTargets` over ``B * N`` images (sample-major).
    """
    per = []
    num_pts, vis = batch.gt_num_pts, batch.gt_visibility
    for b in range(len(batch.gt_boxes)):
        boxes = batch.gt_boxes[b].float()
        labels = batch.gt_labels[b].long()
        attrs = batch.gt_attrs[b].long()
        keep = filter_gt(labels, None if num_pts is None else num_pts[b], None if vis is None else vis[b], cfg)
        per.append(_sample_targets(boxes, labels, attrs, keep, batch.ego2img[b, frame], batch.intrinsics[b, frame],
                                   image_hw, loc, cfg, num_classes))
    return PerspectiveTargets(**{k: torch.cat([p[k] for p in per]) for k in per[0]})
