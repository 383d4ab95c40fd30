"""A synthetic ``Batch`` with geometrically correct cameras, for tests and benchmarks (no files).

A nuScenes-like rig of up to six cameras (``shards.conventions.CAMERAS`` order) 1.5 m above the
ground, boxes of the 10 classes scattered around the ego car, static in the world while the ego
drives forward, so earlier frames see them moved. Each box is painted into every camera that sees
it as its projected 2D box, in a class colour shaded by depth (far first). ``bev_aug=True`` applies a
random BEV rotation/scale/flip ``B`` to the boxes and every frame's ``ego2img`` (``ego2img · B⁻¹``),
exactly as docs/DESIGN.md prescribes for the pipeline.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from shards.contracts.batch import Batch
from shards.conventions import (
    CAMERAS,
    CLASS_ATTRIBUTES,
    CLASSES,
    attribute_index,
    box_corners,
    cur_from_prev,
    ego2img,
    transform_boxes,
)

CAMERA_YAWS_DEG = (0.0, -55.0, 55.0, 180.0, 110.0, -110.0)
"""Heading of each camera about +z (nuScenes-like), in CAMERAS order."""

CLASS_SIZES = {  # (l, w, h) metres
    "car": (4.6, 1.9, 1.7), "truck": (6.5, 2.5, 2.8), "bus": (11.0, 2.9, 3.4), "trailer": (12.0, 2.9, 3.8),
    "construction_vehicle": (6.4, 2.8, 3.2), "pedestrian": (0.7, 0.7, 1.8), "motorcycle": (2.1, 0.8, 1.5),
    "bicycle": (1.8, 0.6, 1.3), "traffic_cone": (0.4, 0.4, 1.0), "barrier": (0.5, 2.5, 1.0),
}


SyntheticBatch = Batch
"""Synthetic batches are real ``shards.contracts.batch.Batch`` objects (docs/CONTRACTS.md)."""


def camera_rig(image_hw: tuple[int, int], num_cams: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """-> (intrinsics ``[N, 3, 3]``, cam2ego ``[N, 4, 4]``) for ``num_cams`` cameras (about 70 deg horizontal FOV)."""
    H, W = image_hw
    f = 0.8 * W
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=np.float64)
    cam2ego = []
    for yaw in CAMERA_YAWS_DEG[:num_cams]:
        a = math.radians(yaw)
        fwd, right, down = np.array([math.cos(a), math.sin(a), 0]), np.array([math.sin(a), -math.cos(a), 0]), np.array([0, 0, -1.0])
        m = np.eye(4)
        m[:3, :3] = np.stack([right, down, fwd], 1)  # camera axes (x right, y down, z forward) in the ego frame
        m[:3, 3] = [1.0 * math.cos(a), 1.0 * math.sin(a), 1.5]
        cam2ego.append(m)
    return np.repeat(K[None], num_cams, 0), np.stack(cam2ego)


def random_boxes(rng: np.random.Generator, n: int, radius: float = 30.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (boxes ``[n, 9]`` ego frame, labels ``[n]``, attrs ``[n]``), centres 4..radius m away, on the ground."""
    labels = rng.integers(0, len(CLASSES), n)
    r = rng.uniform(4.0, radius, n)
    phi = rng.uniform(-math.pi, math.pi, n)
    boxes = np.zeros((n, 9))
    for i, lab in enumerate(labels):
        size = np.array(CLASS_SIZES[CLASSES[lab]]) * rng.uniform(0.9, 1.1)
        boxes[i, :3] = [r[i] * math.cos(phi[i]), r[i] * math.sin(phi[i]), size[2] / 2]
        boxes[i, 3:6] = size
    boxes[:, 6] = rng.uniform(-math.pi, math.pi, n)
    boxes[:, 7:9] = rng.normal(0, 2.0, (n, 2))
    attrs = np.array([attribute_index(CLASS_ATTRIBUTES[CLASSES[lab]][0]) if CLASS_ATTRIBUTES[CLASSES[lab]] else -1
                      for lab in labels])
    return boxes, labels, attrs


def random_bev_aug(rng: np.random.Generator) -> np.ndarray:
    """A BEV transform: rotation within +-22.5 deg, scale 0.95-1.05, random x/y flips."""
    a = rng.uniform(-math.pi / 8, math.pi / 8)
    s = rng.uniform(0.95, 1.05)
    m = np.eye(4)
    m[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    m[:3, :3] *= s
    flip = np.diag([-1.0 if rng.random() < 0.5 else 1.0, -1.0 if rng.random() < 0.5 else 1.0, 1.0])
    m[:3, :3] = flip @ m[:3, :3]
    return m


def render(boxes: np.ndarray, labels: np.ndarray, e2i: np.ndarray, image_hw: tuple[int, int],
           rng: np.random.Generator) -> np.ndarray:
    """Paint boxes (un-augmented ego frame) into cameras ``e2i [N, 4, 4]`` -> ``[N, 3, H, W]`` float32 in [0, 1]."""
    H, W = image_hw
    N = e2i.shape[0]
    img = np.empty((N, 3, H, W), dtype=np.float32)
    rows = np.linspace(0.35, 0.65, H, dtype=np.float32)[None, :, None]
    img[:] = rows  # sky-to-ground gradient
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    colours = np.stack([np.array([(c * 0.37) % 1.0, (c * 0.61 + 0.2) % 1.0, (c * 0.13 + 0.5) % 1.0])
                        for c in range(len(CLASSES))])
    corners = box_corners(boxes[:, :7]) if len(boxes) else np.zeros((0, 8, 3))
    for n in range(N):
        homo = np.concatenate([corners, np.ones(corners.shape[:2] + (1,))], -1) @ e2i[n].T
        depth = homo[..., 2]
        order = np.argsort(-depth.mean(-1)) if len(boxes) else []
        for g in order:
            if (depth[g] < 0.1).any():
                continue
            uv = homo[g, :, :2] / depth[g, :, None]
            x1, y1 = np.floor(uv.min(0)).astype(int)
            x2, y2 = np.ceil(uv.max(0)).astype(int)
            x1, x2, y1, y2 = max(x1, 0), min(x2, W), max(y1, 0), min(y2, H)
            if x2 <= x1 or y2 <= y1:
                continue
            shade = float(np.clip(1.2 - depth[g].mean() / 60.0, 0.3, 1.0))
            img[n, :, y1:y2, x1:x2] = (colours[labels[g]] * shade)[:, None, None]
            img[n, :, y1:y2, x1:x1 + 1] = 0.0  # a dark left edge, to mark the extent
    return np.clip(img, 0.0, 1.0)


def make_batch(batch_size: int = 1, frames: int = 1, image_hw: tuple[int, int] = (128, 352), num_cams: int = 6,
               num_boxes: int = 8, bev_aug: bool = False, seed: int = 0, speed: float = 2.0) -> SyntheticBatch:
    """A synthetic batch: ``imgs [B, T, N, 3, H, W]`` and every matrix/GT field of the Batch contract.

    Frames are keyframes ``speed`` metres apart (ego driving along +x, with a slight turn); the
    current frame is the last. Boxes are static in the world; GT is given in the current frame.
    """
    rng = np.random.default_rng(seed)
    K, cam2ego = camera_rig(image_hw, num_cams)
    ego2cam = np.linalg.inv(cam2ego)
    T = frames
    out: dict[str, list] = {k: [] for k in ("imgs", "ego2img", "aug", "cfp", "e2g", "boxes", "labels", "attrs")}
    for _ in range(batch_size):
        boxes, labels, attrs = random_boxes(rng, num_boxes)
        B = random_bev_aug(rng) if bev_aug else np.eye(4)
        e2g, imgs, e2is, cfps = [], [], [], []
        base_yaw = rng.uniform(-math.pi, math.pi)
        for t in range(T):
            back = T - 1 - t
            yaw = base_yaw - 0.02 * back
            m = np.eye(4)
            m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
            m[:3, 3] = [100.0 - speed * back * math.cos(base_yaw), 200.0 - speed * back * math.sin(base_yaw), 0.0]
            e2g.append(m)
        for t in range(T):
            cfp = cur_from_prev(e2g[-1], e2g[t])
            boxes_t = transform_boxes(boxes, np.linalg.inv(cfp))  # the same static boxes seen from frame t
            e2i = ego2img(K, ego2cam)  # [N, 4, 4], no motion compensation in the synthetic rig
            imgs.append(render(boxes_t, labels, e2i, image_hw, rng))
            e2is.append(e2i @ np.linalg.inv(B))
            cfps.append(B @ cfp @ np.linalg.inv(B))  # between augmented frames (shards.contracts.batch convention)
        out["imgs"].append(np.stack(imgs))
        out["ego2img"].append(np.stack(e2is))
        out["aug"].append(B)
        out["cfp"].append(np.stack(cfps))
        out["e2g"].append(np.stack(e2g))
        out["boxes"].append(transform_boxes(boxes, B))
        out["labels"].append(labels)
        out["attrs"].append(attrs)
    f32 = lambda x: torch.as_tensor(np.array(x), dtype=torch.float32)
    Bn = batch_size
    return SyntheticBatch(
        imgs=f32(out["imgs"]),
        ego2img=f32(out["ego2img"]),
        intrinsics=f32(np.broadcast_to(K, (Bn, T) + K.shape)),
        cam2ego=f32(np.broadcast_to(cam2ego, (Bn, T) + cam2ego.shape)),
        img_aug=torch.eye(3).expand(Bn, T, num_cams, 3, 3).clone(),
        bev_aug=f32(out["aug"]),
        cur_from_prev=f32(out["cfp"]),
        valid_prev=torch.ones(Bn, T, dtype=torch.bool),
        ego2global=torch.as_tensor(np.asarray(out["e2g"]), dtype=torch.float64).float(),
        gt_boxes=[f32(b) for b in out["boxes"]],
        gt_labels=[torch.as_tensor(x, dtype=torch.long) for x in out["labels"]],
        gt_attrs=[torch.as_tensor(x, dtype=torch.long) for x in out["attrs"]],
        gt_num_pts=[torch.full((num_boxes,), 50, dtype=torch.long) for _ in range(Bn)],
        gt_visibility=[torch.full((num_boxes,), 4, dtype=torch.long) for _ in range(Bn)],
        sample_token=[f"sample{seed}_{b}" for b in range(Bn)],
        scene_token=[f"scene{seed}_{b}" for b in range(Bn)],
        timestamp=torch.arange(Bn, dtype=torch.long),
    )


__all__ = ["CAMERAS", "SyntheticBatch", "camera_rig", "make_batch", "random_bev_aug", "random_boxes", "render"]
