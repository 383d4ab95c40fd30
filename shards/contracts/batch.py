"""The ``Batch`` handed to models (docs/CONTRACTS.md, "The Batch"; docs/DESIGN.md, "Data flow").

Shapes: B samples, T frames (time order, index T-1 is the current frame), N = 6 cameras.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One batch on one device.

    Attributes:
        imgs: ``[B, T, N, 3, H, W]`` float32 RGB in [0, 1] (the model normalises).
        ego2img: ``[B, T, N, 4, 4]`` augmented ego (of each frame, after ``bev_aug``) -> pixels.
        intrinsics: ``[B, T, N, 3, 3]`` augmented intrinsics ``K' = img_aug @ K``.
        cam2ego: ``[B, T, N, 4, 4]`` camera extrinsics (not augmented).
        img_aug: ``[B, T, N, 3, 3]`` source pixels -> output pixels (decode crop/resize and
            random image augmentation composed; integer coordinates at pixel centres).
        bev_aug: ``[B, 4, 4]`` ego -> augmented ego (identity without BEV augmentation).
        cur_from_prev: ``[B, T, 4, 4]`` augmented ego of frame t -> augmented ego of the current
            frame: ``bev_aug @ inv(ego2global_cur) @ ego2global_t @ inv(bev_aug)``.
        valid_prev: ``[B, T]`` bool, False where frame t is a fill-in copy (scene/clip start).
        ego2global: ``[B, T, 4, 4]`` keyframe ego pose of each frame (not augmented).
        gt_boxes: list of B ``[Ni, 9]`` float32, augmented, ego frame of the current frame.
        gt_labels, gt_attrs, gt_num_pts, gt_visibility: lists of B ``[Ni]`` int64.
        sample_token, scene_token: lists of B str; timestamp: ``[B]`` int64 (µs).
        points: optional list of B ``[Pi, 4]`` float32 (x y z intensity, augmented ego frame).
    """

    imgs: torch.Tensor
    ego2img: torch.Tensor
    intrinsics: torch.Tensor
    cam2ego: torch.Tensor
    img_aug: torch.Tensor
    bev_aug: torch.Tensor
    cur_from_prev: torch.Tensor
    valid_prev: torch.Tensor
    ego2global: torch.Tensor
    gt_boxes: list[torch.Tensor]
    gt_labels: list[torch.Tensor]
    gt_attrs: list[torch.Tensor]
    gt_num_pts: list[torch.Tensor]
    gt_visibility: list[torch.Tensor]
    sample_token: list[str]
    scene_token: list[str]
    timestamp: torch.Tensor
    points: list[torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.imgs.shape[0])

    def detection_targets(self, device: torch.device | str) -> tuple[list, list, list]:
        """Per sample, the GT every detector trains on, on ``device``: boxes ``[G, 9]`` float32, labels ``[G]`` and
        attrs ``[G]`` int64, with the boxes of non-detection categories (label -1) dropped."""
        boxes, labels, attrs = [], [], []
        for b in range(len(self.gt_boxes)):
            lab = self.gt_labels[b].to(device).long()
            keep = lab >= 0
            boxes.append(self.gt_boxes[b].to(device).float()[keep])
            labels.append(lab[keep])
            attrs.append(self.gt_attrs[b].to(device).long()[keep])
        return boxes, labels, attrs

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """Copy every tensor to ``device`` (non-blocking; pin the source for async copies)."""

        def mv(v):
            if isinstance(v, torch.Tensor):
                return v.to(device, non_blocking=non_blocking)
            if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                return [x.to(device, non_blocking=non_blocking) for x in v]
            return v

        return Batch(**{f.name: mv(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def pin_memory(self) -> Batch:
        def pin(v):
            if isinstance(v, torch.Tensor):
                return v.pin_memory()
            if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                return [x.pin_memory() for x in v]
            return v

        return Batch(**{f.name: pin(getattr(self, f.name)) for f in dataclasses.fields(self)})
