"""The shard format's names and the Arrow sidecar schema (docs/DESIGN.md, Shards).

A shard ``{split}-{i:06d}.tar`` holds whole temporal clips; every sample ``{key}``
has the members ``{key}.cam_front.jpg`` ... (one per camera, in
:data:`shards.conventions.CAMERAS` order) and optionally ``{key}.lidar.npy``.
Beside it, ``{split}-{i:06d}.arrow`` is an Arrow IPC file with one row per sample
in tar order (:data:`SIDECAR_SCHEMA`), and ``{split}-{i:06d}.idx`` the DALI
webdataset index.
"""

from __future__ import annotations

import pyarrow as pa

from shards.conventions import CAMERAS

SCHEMA_VERSION = 2
"""Bumped whenever a sidecar column is added or changes meaning or type (2: the float64 ``gt_translation``,
``gt_size``, ``gt_rotation``, ``gt_velocity`` columns)."""

SCHEMA_VERSION_KEY = b"bevstream.schema_version"
"""Key of the schema version in the Arrow schema metadata."""

LIDAR_MEMBER = "lidar.npy"
"""Tar member extension of the optional point cloud: float32 ``[N, 4]`` (x, y, z, intensity), ego frame."""

MANIFEST_NAME = "manifest.json"


def camera_member(cam_name: str) -> str:
    """``CAM_FRONT`` -> ``cam_front.jpg`` (the tar member extension of that camera)."""
    if cam_name not in CAMERAS:
        raise ValueError(f"unknown camera {cam_name!r} (known: {', '.join(CAMERAS)})")
    return cam_name.lower() + ".jpg"


CAMERA_MEMBERS: tuple[str, ...] = tuple(camera_member(c) for c in CAMERAS)
"""Member extensions of the six cameras, in camera order."""

CAMERA_STRUCT = pa.struct(
    [
        ("name", pa.string()),
        ("intrinsic", pa.list_(pa.float64(), 9)),
        ("cam2ego", pa.list_(pa.float64(), 16)),
        ("ego2global", pa.list_(pa.float64(), 16)),
        ("timestamp", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
"""One camera of a sample: 3x3 intrinsics and 4x4 matrices flattened row-major."""

SIDECAR_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sample_token", pa.string()),
        ("scene_token", pa.string()),
        ("scene_name", pa.string()),
        ("timestamp", pa.int64()),
        ("frame_index", pa.int64()),
        ("prev_token", pa.string()),
        ("next_token", pa.string()),
        ("ego2global", pa.list_(pa.float64(), 16)),
        ("cameras", pa.list_(CAMERA_STRUCT)),
        ("gt_boxes", pa.list_(pa.list_(pa.float32(), 9))),
        ("gt_labels", pa.list_(pa.int32())),
        ("gt_names", pa.list_(pa.string())),
        ("gt_attrs", pa.list_(pa.string())),
        ("num_lidar_pts", pa.list_(pa.int32())),
        ("num_radar_pts", pa.list_(pa.int32())),
        ("visibility", pa.list_(pa.int32())),
        ("instance_tokens", pa.list_(pa.string())),
        ("ann_tokens", pa.list_(pa.string())),
        ("gt_translation", pa.list_(pa.list_(pa.float64(), 3))),
        ("gt_size", pa.list_(pa.list_(pa.float64(), 3))),
        ("gt_rotation", pa.list_(pa.list_(pa.float64(), 4))),
        ("gt_velocity", pa.list_(pa.list_(pa.float64(), 2))),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
"""Sidecar columns and types: the contract of docs/CONTRACTS.md (one row per sample, tar order).

Beyond the starting design's columns (docs/CONTRACTS.md marks them "v2 (added)"), four float64 columns hold each annotation exactly as the devkit gives it,
in the global frame, for the evaluator: ``gt_translation`` (x, y, z of the box centre), ``gt_size``
(nuScenes ``w, l, h``), ``gt_rotation`` (quaternion ``w, x, y, z``) and ``gt_velocity`` (``vx, vy``
from ``NuScenes.box_velocity``, **NaN where the devkit's estimate is undefined**, e.g. an instance
annotated in one keyframe only). The ego-frame float32 ``gt_boxes`` store velocity 0 there instead
(training targets have no NaN); only ``gt_velocity`` tells the two cases apart.
"""


def sample_key(scene_name: str, frame_index: int) -> str:
    """``scene-0061``, 3 -> ``scene-0061_0003`` (no dots, so webdataset splits members correctly)."""
    key = f"{scene_name}_{frame_index:04d}"
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} may not contain '.' or '/' (scene name {scene_name!r})")
    return key


def shard_name(split: str, index: int) -> str:
    """``mini_train``, 3 -> ``mini_train-000003`` (the stem of the tar, sidecar and index)."""
    return f"{split}-{index:06d}"
