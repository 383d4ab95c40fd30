"""LiDAR for synthetic batches (``bev_model.synthetic.make_batch`` carries none): points on the boxes' surfaces
and on the ground, in the augmented ego frame of the current frame, as ``Batch.points``."""

from __future__ import annotations

import dataclasses

import torch

from shards.conventions import box_corners


def with_points(batch, per_box: int = 200, ground: int = 2000, seed: int = 0):
    """``batch`` with ``points``: B x ``[P, 4]`` (x, y, z, intensity 0). Box points are random mixtures of each
    box's corners (inside the box); ground points lie at z = 0 between 2 and 50 m."""
    g = torch.Generator().manual_seed(seed)
    points = []
    for b, boxes in enumerate(batch.gt_boxes):
        parts = []
        if boxes.shape[0]:
            corners = box_corners(boxes.double())  # [G, 8, 3]
            w = torch.rand(boxes.shape[0], per_box, 8, generator=g, dtype=torch.float64) ** 4
            w = w / w.sum(-1, keepdim=True)
            parts.append((w @ corners).reshape(-1, 3))
        r = 2 + 48 * torch.rand(ground, generator=g, dtype=torch.float64)
        a = torch.rand(ground, generator=g, dtype=torch.float64) * 2 * torch.pi
        gp = torch.stack([r * a.cos(), r * a.sin(), torch.zeros_like(r), torch.ones_like(r)], -1)
        aug = batch.bev_aug[b].double() if batch.bev_aug is not None else torch.eye(4, dtype=torch.float64)
        parts.append((gp @ aug.T)[:, :3])
        p = torch.cat(parts).float()
        points.append(torch.cat([p, torch.zeros_like(p[:, :1])], -1))
    return dataclasses.replace(batch, points=points)
