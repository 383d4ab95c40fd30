"""Sensor simulation of one keyframe: six camera images, a LiDAR sweep, radar hit counts.

All geometry goes through :mod:`shards.conventions` (camera matrices, box corners,
projection); :mod:`shards.synth.render` holds the numba loops.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from shards import conventions as cv
from shards.synth import render, rig
from shards.synth.world import SceneWorld

MAX_RENDER_DISTANCE = 160.0


@dataclass
class CameraFrame:
    """One camera exposure: image ``[H, W, 3]`` uint8, poses and per-box pixel counts ``[N]``."""

    name: str
    time: float
    ego2global: np.ndarray
    image: np.ndarray
    visible: np.ndarray
    total: np.ndarray


def box_rects(boxes: np.ndarray, global2img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[N, 4]`` int64 pixel rectangles ``(u0, u1, v0, v1)`` (half-open) that contain each box's image.

    Boxes entirely behind the camera get an empty rectangle; boxes crossing the camera plane
    get the whole image.
    """
    n = boxes.shape[0]
    rects = np.zeros((n, 4), dtype=np.int64)
    if n == 0:
        return rects
    uv, depth = cv.project_points(cv.box_corners(boxes[:, :7]), global2img)  # [N, 8, 2], [N, 8]
    front = depth > 0.05
    all_front, any_front = front.all(1), front.any(1)
    lo = np.floor(uv.min(1)).astype(np.int64) - 1  # [N, 2]
    hi = np.ceil(uv.max(1)).astype(np.int64) + 2
    rects[:, 0] = np.clip(lo[:, 0], 0, width)
    rects[:, 1] = np.clip(hi[:, 0], 0, width)
    rects[:, 2] = np.clip(lo[:, 1], 0, height)
    rects[:, 3] = np.clip(hi[:, 1], 0, height)
    rects[any_front & ~all_front] = (0, width, 0, height)
    rects[~any_front] = 0
    return rects


def render_camera(world: SceneWorld, name: str, t_key: float, image_size: tuple[int, int]) -> CameraFrame:
    """Render camera ``name`` of the keyframe at ``t_key`` (at the camera's own exposure time)."""
    width, height = image_size
    spec = rig.CAMERA_SPECS[name]
    t = t_key + spec.offset_us * 1e-6
    ego_pose = world.ego_pose(t)
    boxes = world.boxes(t)
    k = rig.intrinsics(spec, width, height)
    global2cam = cv.ego2cam(rig.cam2ego(spec), ego_pose, np.eye(4))
    cam2global = np.linalg.inv(global2cam)
    dist = np.linalg.norm(boxes[:, :2] - cam2global[:2, 3], axis=1)
    rects = box_rects(boxes, cv.ego2img(k, global2cam), width, height)
    rects[dist > MAX_RENDER_DISTANCE] = 0
    image = np.empty((height, width, 3), np.uint8)
    ids = np.empty((height, width), np.int32)
    total = np.zeros(len(boxes), np.int64)
    render.render_camera(
        np.linalg.inv(k), np.ascontiguousarray(cam2global[:3, :3]), np.ascontiguousarray(cam2global[:3, 3]),
        np.ascontiguousarray(boxes[:, :7]), world.actors.style, world.actors.tint, rects, render.PALETTE,
        render.SUN, render.SKY_HORIZON, render.SKY_ZENITH, render.FOG_DISTANCE, image, ids, total,
    )
    visible = np.bincount(ids[ids >= 0].ravel(), minlength=len(boxes)).astype(np.int64)
    return CameraFrame(name, t, ego_pose, image, visible, total)


_POOL: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """Threads for GIL-free work (rendering kernels, JPEG encoding): one per core, at most six."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(len(rig.CAMERA_SPECS), os.cpu_count() or 1)))
    return _POOL


def render_cameras(world: SceneWorld, t_key: float, image_size: tuple[int, int]) -> list[CameraFrame]:
    """Render the six cameras of the keyframe at ``t_key`` (in camera order, in parallel threads)."""
    return list(pool().map(lambda name: render_camera(world, name, t_key, image_size), rig.CAMERA_SPECS))


_LIDAR_DIRS = rig.lidar_directions()


def lidar_sweep(world: SceneWorld, t_key: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the LiDAR at ``t_key``.

    Returns:
        points ``[P, 5]`` float32 ``(x, y, z, intensity, ring)`` in the LIDAR_TOP frame (as a
        nuScenes ``.pcd.bin``), and per-box point counts ``[N]`` int64.
    """
    lidar2global = world.ego_pose(t_key) @ rig.lidar2ego()
    rot = lidar2global[:3, :3]
    dirs = np.ascontiguousarray(_LIDAR_DIRS @ rot.T)
    az0 = -np.pi + np.arctan2(rot[1, 0], rot[0, 0])
    boxes = world.boxes(t_key)
    t = np.empty(dirs.shape[:2])
    ids = np.empty(dirs.shape[:2], np.int64)
    render.raycast(np.ascontiguousarray(lidar2global[:3, 3]), dirs, az0, np.ascontiguousarray(boxes[:, :7]),
                   rig.LIDAR_MAX_RANGE, t, ids)
    hit = ids > -2
    ring = np.broadcast_to(np.arange(dirs.shape[0])[:, None], ids.shape)[hit]
    pts = _LIDAR_DIRS[hit] * t[hit][:, None]  # in the LiDAR frame
    hid = ids[hit]
    styles = world.actors.style
    intensity = np.where(hid >= 0, 25.0 + 6.0 * styles[np.maximum(hid, 0)], rng.uniform(1.0, 12.0, hid.shape))
    points = np.concatenate([pts, intensity[:, None], ring[:, None]], axis=1).astype(np.float32)
    counts = np.bincount(hid[hid >= 0], minlength=len(boxes)).astype(np.int64)
    return points, counts


def radar_counts(world: SceneWorld, t_key: float) -> np.ndarray:
    """Radar returns per box ``[N]``: one horizontal fan at bumper height from the ego centre."""
    ego = world.ego_pose(t_key)
    n_az = int(round(360.0 / rig.RADAR_AZIMUTH_STEP_DEG))
    yaw = np.arctan2(ego[1, 0], ego[0, 0])
    az = yaw - np.pi + np.arange(n_az) * 2 * np.pi / n_az
    dirs = np.stack([np.cos(az), np.sin(az), np.zeros_like(az)], -1)[None]
    origin = ego[:3, 3] + np.array([0.0, 0.0, rig.RADAR_HEIGHT])
    boxes = world.boxes(t_key)
    t = np.empty(dirs.shape[:2])
    ids = np.empty(dirs.shape[:2], np.int64)
    render.raycast(origin, np.ascontiguousarray(dirs), yaw - np.pi, np.ascontiguousarray(boxes[:, :7]),
                   rig.RADAR_MAX_RANGE, t, ids)
    return np.bincount(ids[ids >= 0], minlength=len(boxes)).astype(np.int64)
