"""Perspective 3D head (FCOS3D/DD3D style): dense per-pixel 3D detection on every FPN level.

Shared over cameras and levels. Per location it predicts (channels):
class logits (C), 2D ``ltrb`` (4), centerness (1), projected-centre offset (2, strides),
``log(depth * focal_ref / focal)`` (1), log size (3), allocentric ``(sin, cos)`` (2),
camera-frame velocity ``(x, z)`` (2), attribute logits (A), 3D confidence (1).

Also: its loss (:class:`PerspectiveLoss`) and the decoding of dense predictions into 3D boxes
in the (augmented) ego frame (:func:`decode_perspective`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .cameras import cam_xz_to_ego_xy, virtual_cameras, yaw_from_allocentric
from .config import PerspectiveConfig
from .perspective_targets import Locations, PerspectiveTargets
from .precision import float32_geometry

# name -> channels of the 3D/geometry outputs (class and attribute logits come from the cls tower)
GEOMETRY = {"ltrb": 4, "centerness": 1, "offset": 2, "depth": 1, "size": 3, "rot": 2, "vel": 2, "conf3d": 1}


def _tower(channels: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                   nn.GroupNorm(min(32, channels // 4), channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PerspectiveHead(nn.Module):
    """Dense head shared over levels.

    Args:
        channels: FPN channels C_f; num_classes; num_attrs; num_levels; cfg: PerspectiveConfig.
    """

    def __init__(self, channels: int, num_classes: int, num_attrs: int, num_levels: int,
                 cfg: PerspectiveConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.cls_tower = _tower(channels, cfg.num_convs)
        self.box_tower = _tower(channels, cfg.num_convs)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.attr_logits = nn.Conv2d(channels, num_attrs, 3, padding=1)
        self.geometry = nn.Conv2d(channels, sum(GEOMETRY.values()), 3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels))  # per-level scale of the 2D box regression
        for conv in (self.cls_logits, self.attr_logits, self.geometry):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - 0.01) / 0.01))
        with torch.no_grad():  # start near typical values: depth ~ 10 m at focal_ref, car-like size
            bias = dict(zip(GEOMETRY, self.geometry.bias.split(list(GEOMETRY.values()))))
            bias["depth"].fill_(math.log(10.0))
            bias["size"].copy_(torch.tensor([1.4, 0.7, 0.5]))
            bias["rot"][1] = 1.0

    def forward(self, feats: list[torch.Tensor], strides: list[int]) -> dict[str, torch.Tensor]:
        """``feats``: list of ``[I, C_f, H_l, W_l]`` -> dict of ``[I, L, k]`` (levels flattened and concatenated).

        Keys: ``cls [I, L, C]``, ``attr [I, L, A]`` and every GEOMETRY name (``ltrb`` in pixels, >= 0).
        """
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in ["cls", "attr", *GEOMETRY]}
        for lvl, (x, s) in enumerate(zip(feats, strides)):
            c = self.cls_tower(x)
            b = self.box_tower(x)
            outs["cls"].append(self.cls_logits(c).flatten(2).transpose(1, 2))
            outs["attr"].append(self.attr_logits(c).flatten(2).transpose(1, 2))
            geo = self.geometry(b).flatten(2).transpose(1, 2)
            for name, part in zip(GEOMETRY, geo.split(list(GEOMETRY.values()), -1)):
                if name == "ltrb":
                    part = F.relu(part * self.scales[lvl]) * s
                outs[name].append(part)
        return {k: torch.cat(v, 1) for k, v in outs.items()}


@float32_geometry
def decode_perspective(preds: dict[str, torch.Tensor], loc: Locations, ego2img: torch.Tensor,
                       intrinsics: torch.Tensor, cfg: PerspectiveConfig) -> dict[str, torch.Tensor]:
    """Dense predictions -> 3D boxes in the (augmented) ego frame of each image's sample.

    Args:
        preds: :class:`PerspectiveHead` output over ``I`` images.
        loc: the FPN locations; ego2img ``[I, 4, 4]``; intrinsics ``[I, 3, 3]``.
    Returns:
        dict: ``boxes [I, L, 9]``, ``scores [I, L]`` (sigmoid class x centerness x 3D confidence of the
        best class), ``labels [I, L]``, ``cls_prob [I, L, C]``.
    """
    ego2cam, focal = virtual_cameras(ego2img.float(), intrinsics.float())
    stride = loc.stride[None, :, None]
    uv = loc.points[None] + preds["offset"].float() * stride  # [I, L, 2]
    depth = preds["depth"].float()[..., 0].exp() * focal[:, None] / cfg.focal_ref  # [I, L]
    homo = torch.cat([uv * depth[..., None], depth[..., None], torch.ones_like(depth[..., None])], -1)
    centre = (torch.linalg.inv(ego2img.float())[:, None] @ homo[..., None])[..., 0][..., :3]
    lin = ego2cam[:, None, :3, :3].expand(-1, uv.shape[1], -1, -1)
    centre_cam = (ego2cam[:, None] @ torch.cat([centre, torch.ones_like(depth[..., None])], -1)[..., None])[..., 0]
    centre_cam = centre_cam[..., :3]
    rot = preds["rot"].float()
    yaw = yaw_from_allocentric(lin, centre_cam, torch.atan2(rot[..., 0], rot[..., 1]))
    vel = cam_xz_to_ego_xy(lin, preds["vel"].float())
    size = preds["size"].float().exp()
    boxes = torch.cat([centre, size, yaw[..., None], vel], -1)
    cls_prob = preds["cls"].float().sigmoid()
    best, labels = cls_prob.max(-1)
    scores = best * preds["centerness"].float()[..., 0].sigmoid() * preds["conf3d"].float()[..., 0].sigmoid()
    return {"boxes": boxes, "scores": scores, "labels": labels, "cls_prob": cls_prob}


class PerspectiveLoss(nn.Module):
    """Losses of the perspective head, each named (``cls``, ``box2d``, ``centerness``, ``offset``, ``depth``,
    ``size``, ``rot``, ``conf3d``, ``attr``, ``vel``), already weighted as in the reference."""

    def __init__(self, cfg: PerspectiveConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, preds: dict[str, torch.Tensor], targets: PerspectiveTargets, loc: Locations,
                ego2img: torch.Tensor, intrinsics: torch.Tensor) -> dict[str, torch.Tensor]:
        """preds over ``I`` images ``[I, L, k]``; targets over the same -> dict of scalar losses."""
        cfg = self.cfg
        cls = preds["cls"].float()
        num_classes = cls.shape[-1]
        pos = targets.labels < num_classes  # [I, L]
        num_pos = max(int(pos.sum()), 1)
        onehot = F.one_hot(targets.labels, num_classes + 1)[..., :num_classes].to(cls.dtype)
        losses = {"cls": cfg.weight_cls * sigmoid_focal_loss(
            cls, onehot, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="sum") / num_pos}
        zero = sum(v.sum() for v in preds.values()) * 0.0  # keeps every output in the graph
        if not bool(pos.any()):
            for k in ("box2d", "centerness", "offset", "depth", "size", "rot", "conf3d", "attr", "vel"):
                losses[k] = zero
            return losses
        p = {k: v[pos].float() for k, v in preds.items()}
        ctr_t = targets.centerness[pos]
        pts = loc.points[None].expand(pos.shape[0], -1, -1)[pos]
        box_p = torch.cat([pts - p["ltrb"][:, :2], pts + p["ltrb"][:, 2:]], -1)
        ltrb_t = targets.ltrb[pos]
        box_t = torch.cat([pts - ltrb_t[:, :2], pts + ltrb_t[:, 2:]], -1)
        giou = generalized_box_iou_loss(box_p, box_t, reduction="none")
        losses["box2d"] = cfg.weight_box2d * (giou * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        losses["centerness"] = cfg.weight_centerness * F.binary_cross_entropy_with_logits(
            p["centerness"][:, 0], ctr_t)

        def sl1(pred, tgt):
            return cfg.weight_box3d * F.smooth_l1_loss(pred, tgt, beta=cfg.smooth_l1_beta, reduction="none").sum(-1).mean()

        losses["offset"] = sl1(p["offset"], targets.offset[pos])
        losses["depth"] = sl1(p["depth"], targets.depth[pos][:, None])
        losses["size"] = sl1(p["size"], targets.size[pos])
        losses["rot"] = sl1(p["rot"], targets.rot[pos])
        # 3D confidence: BCE towards exp(-|decoded centre - GT centre| / T) (DD3D-style)
        with torch.no_grad():
            img_idx = pos.nonzero(as_tuple=True)[0]
            stride = loc.stride[None].expand(pos.shape[0], -1)[pos]
            centre = _decode_centres(p, pts, stride, ego2img[img_idx], intrinsics[img_idx], cfg)
            conf_t = torch.exp(-(centre - targets.centre[pos]).norm(dim=-1) / cfg.conf3d_temperature)
        losses["conf3d"] = cfg.weight_conf3d * F.binary_cross_entropy_with_logits(p["conf3d"][:, 0], conf_t)
        attr_t = targets.attr[pos]
        has_attr = attr_t >= 0
        losses["attr"] = (cfg.weight_attr * F.cross_entropy(p["attr"][has_attr], attr_t[has_attr])
                          if bool(has_attr.any()) else zero)
        vel_t = targets.vel[pos]
        has_vel = torch.isfinite(vel_t).all(-1)
        losses["vel"] = (cfg.weight_vel * F.l1_loss(p["vel"][has_vel], vel_t[has_vel], reduction="none").sum(-1).mean()
                         if bool(has_vel.any()) else zero)
        return losses


def _decode_centres(p: dict[str, torch.Tensor], pts: torch.Tensor, stride: torch.Tensor, ego2img: torch.Tensor,
                    intrinsics: torch.Tensor, cfg: PerspectiveConfig) -> torch.Tensor:
    """Positive locations only: ``pts [P, 2]``, ``stride [P]``, per-location ``ego2img [P, 4, 4]`` -> centres ``[P, 3]``."""
    focal = torch.linalg.det(intrinsics[:, :2, :2].float()).abs().sqrt()
    uv = pts + p["offset"] * stride[:, None]
    depth = p["depth"][:, 0].exp() * focal / cfg.focal_ref
    homo = torch.cat([uv * depth[:, None], depth[:, None], torch.ones_like(depth[:, None])], -1)
    return (torch.linalg.inv(ego2img.float()) @ homo[..., None])[..., 0][:, :3]
