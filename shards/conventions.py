"""The one source of truth for frames, boxes, cameras and classes.

Every package imports these names; nothing else defines a camera order, a
class list, a box layout or a camera matrix.

Frames (docs/DESIGN.md, Conventions):

* All 3D quantities of a sample live in the **ego frame at the keyframe's
  LIDAR_TOP timestamp**: x forward, y left, z up, metres.
* Box vector ``[x, y, z, l, w, h, yaw, vx, vy]``: z is the box centre, l runs
  along the heading, yaw about +z from +x wrapped to (-pi, pi], velocity in the
  ego frame in m/s. nuScenes stores ``size`` as ``[w, l, h]``; the conversion
  happens here and nowhere else.
* ``ego2cam = inv(cam2ego) @ inv(ego2global_cam) @ ego2global_keyframe``
  (motion compensated: each camera keeps its own timestamp and ego pose);
  ``ego2img = K4 @ ego2cam`` with ``K4`` the 3x3 intrinsics padded to 4x4.
* ``cur_from_prev = inv(ego2global_cur) @ ego2global_prev``.

Matrix functions accept numpy arrays or torch tensors with any leading batch
dimensions (``[..., 4, 4]``) and return the same kind.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
"""The six cameras, in the order every tensor and sidecar uses."""

CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)
"""The 10 nuScenes detection classes in devkit order; a label is an index here."""

ATTRIBUTES: tuple[str, ...] = (
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.moving",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
)
"""nuScenes attribute names; an attribute label is an index here (-1: none)."""

DEFAULT_ATTRIBUTE: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "bus": "vehicle.moving",
    "trailer": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "pedestrian": "pedestrian.moving",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "traffic_cone": "",
    "barrier": "",
}
"""The attribute the devkit's own baselines emit per class (empty: no attribute)."""

CLASS_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "car": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "truck": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "bus": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "trailer": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "construction_vehicle": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "pedestrian": ("pedestrian.moving", "pedestrian.sitting_lying_down", "pedestrian.standing"),
    "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
    "bicycle": ("cycle.with_rider", "cycle.without_rider"),
    "traffic_cone": (),
    "barrier": (),
}
"""Attributes the devkit accepts for each detection class."""

BOX_DIM = 9
"""Length of the box vector ``[x, y, z, l, w, h, yaw, vx, vy]``."""


def category_to_class(category_name: str) -> int:
    """nuScenes category name (``vehicle.car``) -> class index, or -1 when not a detection class."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    name = category_to_detection_name(category_name)
    return CLASSES.index(name) if name is not None else -1


def attribute_index(name: str) -> int:
    """Attribute name -> index into ATTRIBUTES; "" -> -1."""
    return ATTRIBUTES.index(name) if name else -1


# --------------------------------------------------------------------------- helpers


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _inv(m):
    if _is_torch(m):
        import torch

        return torch.linalg.inv(m)
    return np.linalg.inv(m)


def wrap_angle(a):
    """Wrap angles to (-pi, pi]. Works on floats, numpy arrays and torch tensors."""
    if _is_torch(a):
        import torch

        w = torch.remainder(a + math.pi, 2 * math.pi) - math.pi
        return torch.where(w <= -math.pi, w + 2 * math.pi, w)
    w = np.remainder(np.asarray(a, dtype=np.float64) + math.pi, 2 * math.pi) - math.pi
    w = np.where(w <= -math.pi, w + 2 * math.pi, w)
    return float(w) if np.ndim(w) == 0 else w


# --------------------------------------------------------------------------- poses


def quaternion_to_matrix(q_wxyz) -> np.ndarray:
    """nuScenes quaternion ``[w, x, y, z]`` -> 3x3 rotation matrix."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    return Rotation.from_quat(q[..., [1, 2, 3, 0]]).as_matrix()


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> nuScenes quaternion ``[w, x, y, z]`` with w >= 0."""
    xyzw = Rotation.from_matrix(np.asarray(r, dtype=np.float64)).as_quat()
    q = xyzw[..., [3, 0, 1, 2]]
    return np.where(q[..., :1] < 0, -q, q)


def pose_matrix(rotation_wxyz, translation) -> np.ndarray:
    """nuScenes ``rotation`` + ``translation`` record -> 4x4 transform (child -> parent)."""
    m = np.eye(4)
    m[:3, :3] = quaternion_to_matrix(rotation_wxyz)
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def intrinsics_to_4x4(k):
    """``[..., 3, 3]`` intrinsics -> ``[..., 4, 4]`` with the 3x3 block top-left and 1 at [3, 3]."""
    if _is_torch(k):
        import torch

        out = torch.zeros(*k.shape[:-2], 4, 4, dtype=k.dtype, device=k.device)
    else:
        k = np.asarray(k)
        out = np.zeros(k.shape[:-2] + (4, 4), dtype=k.dtype if k.dtype.kind == "f" else np.float64)
    out[..., :3, :3] = k
    out[..., 3, 3] = 1
    return out


def ego2cam(cam2ego, ego2global_cam, ego2global_key):
    """Keyframe ego frame -> camera frame, motion compensated.

    Args:
        cam2ego: ``[..., 4, 4]`` camera extrinsics (camera -> ego at the camera's timestamp).
        ego2global_cam: ``[..., 4, 4]`` ego pose at the camera's timestamp.
        ego2global_key: ``[..., 4, 4]`` ego pose at the keyframe's LIDAR_TOP timestamp.
    Returns:
        ``[..., 4, 4]`` ``inv(cam2ego) @ inv(ego2global_cam) @ ego2global_key``.
    """
    return _inv(cam2ego) @ _inv(ego2global_cam) @ ego2global_key


def ego2img(intrinsics, ego2cam_m):
    """``[..., 3, 3]`` intrinsics and ``[..., 4, 4]`` ego2cam -> ``[..., 4, 4]`` ``K4 @ ego2cam``."""
    return intrinsics_to_4x4(intrinsics) @ ego2cam_m


def cur_from_prev(ego2global_cur, ego2global_prev):
    """``[..., 4, 4]`` poses -> transform from the previous ego frame into the current one."""
    return _inv(ego2global_cur) @ ego2global_prev


def project_points(points, ego2img_m, eps: float = 1e-5):
    """Project ego-frame points into an image.

    Args:
        points: ``[..., N, 3]`` ego-frame points.
        ego2img_m: ``[..., 4, 4]`` (broadcast against the points' leading dims).
    Returns:
        (uv ``[..., N, 2]`` pixel coordinates, depth ``[..., N]`` in metres; uv is only
        meaningful where depth > eps).
    """
    if _is_torch(points):
        import torch

        ones = torch.ones_like(points[..., :1])
        homo = torch.cat([points, ones], -1)
        cam = homo @ ego2img_m.transpose(-1, -2)
        depth = cam[..., 2]
        uv = cam[..., :2] / torch.clamp(depth, min=eps)[..., None]
        return uv, depth
    points = np.asarray(points, dtype=np.float64)
    homo = np.concatenate([points, np.ones_like(points[..., :1])], -1)
    cam = homo @ np.swapaxes(np.asarray(ego2img_m), -1, -2)
    depth = cam[..., 2]
    uv = cam[..., :2] / np.maximum(depth, eps)[..., None]
    return uv, depth


# --------------------------------------------------------------------------- boxes


def boxes_from_nuscenes(translation, size_wlh, rotation_wxyz, velocity_xy, ego2global_key) -> np.ndarray:
    """nuScenes global-frame annotations -> ``[N, 9]`` ego-frame box vectors.

    Args:
        translation: ``[N, 3]`` box centres in the global frame.
        size_wlh: ``[N, 3]`` nuScenes sizes ``[w, l, h]``.
        rotation_wxyz: ``[N, 4]`` global-frame orientation quaternions.
        velocity_xy: ``[N, 2]`` global-frame velocity (NaN allowed; kept as NaN).
        ego2global_key: ``[4, 4]`` keyframe ego pose.
    Returns:
        ``[N, 9]`` float64 ``[x, y, z, l, w, h, yaw, vx, vy]`` in the keyframe ego frame.
    """
    t = np.asarray(translation, dtype=np.float64).reshape(-1, 3)
    n = t.shape[0]
    size = np.asarray(size_wlh, dtype=np.float64).reshape(n, 3)
    rot = np.asarray(rotation_wxyz, dtype=np.float64).reshape(n, 4)
    vel = np.asarray(velocity_xy, dtype=np.float64).reshape(n, 2)
    global2ego = np.linalg.inv(np.asarray(ego2global_key, dtype=np.float64))
    r_ge = global2ego[:3, :3]
    out = np.zeros((n, BOX_DIM))
    if n == 0:
        return out
    out[:, :3] = t @ r_ge.T + global2ego[:3, 3]
    out[:, 3] = size[:, 1]
    out[:, 4] = size[:, 0]
    out[:, 5] = size[:, 2]
    heading = quaternion_to_matrix(rot)[:, :, 0] @ r_ge.T  # box x-axis in ego frame
    out[:, 6] = wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
    v3 = np.concatenate([vel, np.zeros((n, 1))], 1) @ r_ge.T
    out[:, 7:9] = v3[:, :2]
    return out


def boxes_to_nuscenes(boxes, ego2global_key) -> dict[str, np.ndarray]:
    """``[N, 9]`` ego-frame box vectors -> nuScenes global-frame fields.

    Returns:
        dict with ``translation [N, 3]``, ``size [N, 3]`` (``[w, l, h]``),
        ``rotation [N, 4]`` (``[w, x, y, z]``), ``velocity [N, 2]``.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM)
    e2g = np.asarray(ego2global_key, dtype=np.float64)
    r = e2g[:3, :3]
    n = b.shape[0]
    translation = b[:, :3] @ r.T + e2g[:3, 3]
    size = b[:, [4, 3, 5]]
    cy, sy = np.cos(b[:, 6]), np.sin(b[:, 6])
    r_box = np.zeros((n, 3, 3))
    r_box[:, 0, 0], r_box[:, 0, 1] = cy, -sy
    r_box[:, 1, 0], r_box[:, 1, 1] = sy, cy
    r_box[:, 2, 2] = 1.0
    rotation = matrix_to_quaternion(r @ r_box) if n else np.zeros((0, 4))
    v3 = np.concatenate([b[:, 7:9], np.zeros((n, 1))], 1) @ r.T
    return {"translation": translation, "size": size, "rotation": rotation, "velocity": v3[:, :2]}


def box_corners(boxes):
    """``[..., N, 9]`` (or ``[..., N, 7]``) box vectors -> ``[..., N, 8, 3]`` corners in the same frame.

    Corner order: the four bottom corners (front-left, front-right, back-right,
    back-left, seen along the heading), then the four top corners in the same order.
    """
    if _is_torch(boxes):
        import torch

        lib, stack = torch, torch.stack
        signs = torch.tensor(
            [[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1], [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]],
            dtype=boxes.dtype,
            device=boxes.device,
        )
    else:
        boxes = np.asarray(boxes, dtype=np.float64)
        lib, stack = np, np.stack
        signs = np.array(
            [[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1], [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]],
            dtype=np.float64,
        )
    half = boxes[..., None, 3:6] * 0.5 * signs  # [..., N, 8, 3] local offsets
    c, s = lib.cos(boxes[..., 6])[..., None], lib.sin(boxes[..., 6])[..., None]
    x = half[..., 0] * c - half[..., 1] * s
    y = half[..., 0] * s + half[..., 1] * c
    return stack([x, y, half[..., 2]], -1) + boxes[..., None, :3]


def transform_boxes(boxes, m):
    """Apply a 4x4 similarity transform (rotation about z, uniform scale, x/y flips, translation)
    to box vectors.

    Args:
        boxes: ``[N, 9]`` box vectors in the source frame.
        m: ``[4, 4]`` transform, source frame -> target frame.
    Returns:
        ``[N, 9]`` box vectors in the target frame: centres ``m @ c``, yaw from the
        transformed heading axis, sizes scaled by the transform's scale, velocity rotated
        (and scaled) by the linear part.
    """
    torch_mode = _is_torch(boxes)
    if torch_mode:
        import torch

        lib = torch
        m = torch.as_tensor(m, dtype=boxes.dtype, device=boxes.device)
        out = boxes.clone()
    else:
        lib = np
        boxes = np.asarray(boxes, dtype=np.float64)
        m = np.asarray(m, dtype=np.float64)
        out = boxes.copy()
    lin = m[:3, :3]
    out[:, :3] = boxes[:, :3] @ lin.T + m[:3, 3]
    heading = lib.stack([lib.cos(boxes[:, 6]), lib.sin(boxes[:, 6])], -1) @ lin[:2, :2].T
    out[:, 6] = wrap_angle(lib.arctan2(heading[:, 1], heading[:, 0]))
    scale = lib.linalg.norm(lin[:, 0])
    out[:, 3:6] = boxes[:, 3:6] * scale
    out[:, 7:9] = boxes[:, 7:9] @ lin[:2, :2].T
    return out
