"""The synthetic vehicle's sensor rig: six cameras and a top LiDAR, nuScenes-like.

Intrinsics and mounting positions follow the nuScenes rig (1600x900 images;
the back camera has the wider lens); intrinsics scale with the image size.
Each camera fires at its own offset from the LiDAR keyframe timestamp, in the
order the spinning LiDAR sweeps past it, so the ego moves between exposures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.conventions import CAMERAS

NUSC_SIZE = (1600, 900)
"""Image size (W, H) the reference intrinsics below are given for."""


@dataclass(frozen=True)
class CameraSpec:
    """One camera: reference intrinsics at 1600x900, mount on the ego, firing offset."""

    name: str
    fx: float
    cx: float
    cy: float
    position: tuple[float, float, float]  # metres, ego frame
    yaw_deg: float  # optical axis direction about +z (0: forward, 90: left)
    offset_us: int  # exposure time relative to the LiDAR keyframe timestamp


CAMERA_SPECS: dict[str, CameraSpec] = {
    "CAM_FRONT": CameraSpec("CAM_FRONT", 1266.4, 816.3, 491.5, (1.70, 0.02, 1.51), 0.0, 12_000),
    "CAM_FRONT_RIGHT": CameraSpec("CAM_FRONT_RIGHT", 1260.8, 807.9, 495.3, (1.55, -0.49, 1.50), -55.0, 20_000),
    "CAM_FRONT_LEFT": CameraSpec("CAM_FRONT_LEFT", 1272.6, 826.6, 479.8, (1.52, 0.49, 1.51), 55.0, 4_000),
    "CAM_BACK": CameraSpec("CAM_BACK", 809.2, 829.2, 481.8, (0.03, 0.00, 1.57), 180.0, 37_000),
    "CAM_BACK_LEFT": CameraSpec("CAM_BACK_LEFT", 1256.7, 817.8, 451.9, (1.04, 0.48, 1.56), 110.0, 45_000),
    "CAM_BACK_RIGHT": CameraSpec("CAM_BACK_RIGHT", 1259.5, 807.3, 501.2, (1.03, -0.48, 1.56), -110.0, 28_000),
}
assert tuple(CAMERA_SPECS) == tuple(sorted(CAMERA_SPECS, key=CAMERAS.index))

LIDAR_POSITION = (0.943, 0.0, 1.84)
LIDAR_YAW_DEG = -90.0  # nuScenes' LIDAR_TOP x axis points to the ego's right
LIDAR_BEAMS = 32
LIDAR_AZIMUTHS = 1084
LIDAR_ELEVATION_DEG = (-30.67, 10.67)  # HDL-32E field of view
LIDAR_MAX_RANGE = 70.0
RADAR_HEIGHT = 0.5
RADAR_AZIMUTH_STEP_DEG = 1.5
RADAR_MAX_RANGE = 100.0


def intrinsics(spec: CameraSpec, width: int, height: int) -> np.ndarray:
    """``[3, 3]`` intrinsics of ``spec`` for an image of ``width`` x ``height`` pixels.

    Pixel centres sit at integer coordinates (OpenCV); scaling maps centre to centre.
    """
    sx, sy = width / NUSC_SIZE[0], height / NUSC_SIZE[1]
    return np.array(
        [
            [spec.fx * sx, 0.0, (spec.cx + 0.5) * sx - 0.5],
            [0.0, spec.fx * sy, (spec.cy + 0.5) * sy - 0.5],
            [0.0, 0.0, 1.0],
        ]
    )


def camera_rotation(yaw_deg: float) -> np.ndarray:
    """``[3, 3]`` camera -> ego rotation for a level camera looking along ``yaw_deg``.

    Camera axes (OpenCV): x right, y down, z along the optical axis.
    """
    y = np.deg2rad(yaw_deg)
    fwd = np.array([np.cos(y), np.sin(y), 0.0])
    right = np.array([np.sin(y), -np.cos(y), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    return np.stack([right, down, fwd], axis=1)


def yaw_rotation(yaw_deg: float) -> np.ndarray:
    """``[3, 3]`` rotation about +z."""
    y = np.deg2rad(yaw_deg)
    c, s = np.cos(y), np.sin(y)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def cam2ego(spec: CameraSpec) -> np.ndarray:
    """``[4, 4]`` camera -> ego transform of ``spec``."""
    m = np.eye(4)
    m[:3, :3] = camera_rotation(spec.yaw_deg)
    m[:3, 3] = spec.position
    return m


def lidar2ego() -> np.ndarray:
    """``[4, 4]`` LIDAR_TOP -> ego transform."""
    m = np.eye(4)
    m[:3, :3] = yaw_rotation(LIDAR_YAW_DEG)
    m[:3, 3] = LIDAR_POSITION
    return m


def lidar_directions() -> np.ndarray:
    """``[B, A, 3]`` unit ray directions in the LiDAR frame (beam elevations x azimuths)."""
    el = np.deg2rad(np.linspace(*LIDAR_ELEVATION_DEG, LIDAR_BEAMS))
    az = np.linspace(-np.pi, np.pi, LIDAR_AZIMUTHS, endpoint=False)
    ce, se = np.cos(el)[:, None], np.sin(el)[:, None]
    return np.stack([ce * np.cos(az)[None], ce * np.sin(az)[None], np.broadcast_to(se, (LIDAR_BEAMS, LIDAR_AZIMUTHS))], -1)
