"""Synthetic LiDAR for tests and benchmarks: points on the GT boxes' surfaces plus a ground plane.

``box_points(boxes, rng)`` -> ``[P, 4]`` float32 (x, y, z, intensity) in the boxes' frame, so the points of
an augmented batch are in its augmented frame (the ``Batch.points`` contract).
"""

from __future__ import annotations

import numpy as np
import torch


def box_points(boxes: np.ndarray | torch.Tensor, rng: np.random.Generator, per_box: int = 200,
               ground: int = 2000, radius: float = 50.0) -> torch.Tensor:
    """``boxes [G, >=7]`` (x, y, z, l, w, h, yaw) -> points on each box's sides and top, and on the ground (z = 0)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, boxes.shape[-1] if len(boxes) else 9)
    out = []
    for x, y, z, length, w, h, yaw in b[:, :7]:
        u = rng.uniform(-0.5, 0.5, (per_box, 3)) * (length, w, h)
        face = rng.integers(0, 3, per_box)  # 0: +-x side, 1: +-y side, 2: top
        sign = rng.choice([-0.5, 0.5], per_box)
        u[face == 0, 0] = sign[face == 0] * length
        u[face == 1, 1] = sign[face == 1] * w
        u[face == 2, 2] = 0.5 * h
        c, s = np.cos(yaw), np.sin(yaw)
        pts = np.stack([x + c * u[:, 0] - s * u[:, 1], y + s * u[:, 0] + c * u[:, 1], z + u[:, 2]], 1)
        out.append(np.concatenate([pts, rng.uniform(0.3, 1.0, (per_box, 1))], 1))
    r = radius * np.sqrt(rng.uniform(0, 1, ground))
    a = rng.uniform(-np.pi, np.pi, ground)
    out.append(np.stack([r * np.cos(a), r * np.sin(a), np.zeros(ground), rng.uniform(0, 0.2, ground)], 1))
    return torch.as_tensor(np.concatenate(out), dtype=torch.float32)
