"""Session fixtures shared by every package's tests: a small synthetic nuScenes world and its shards.

``synth_dataroot``: ``(Path, "v1.0-mini")``: all 10 mini scenes, 6 keyframes each, 320x180 images,
LIDAR_TOP sweeps written. ``synth_shards``: ``{"mini_train": Path, "mini_val": Path}`` built from it
with clips of 3 frames and small shards (mini_train: 8 shards, mini_val: 2), no LiDAR.
``synth_shards_lidar``: mini_val built with ``lidar=True``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTH_FRAMES = 6
SYNTH_IMAGE_SIZE = (320, 180)
SHARD_CLIP_FRAMES = 3
SHARD_MAX_MB = 0.4


@pytest.fixture(scope="session")
def synth_dataroot(tmp_path_factory) -> tuple[Path, str]:
    from shards.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "nuscenes"
    synthesize(root, "v1.0-mini", frames_per_scene=SYNTH_FRAMES, image_size=SYNTH_IMAGE_SIZE, seed=0, lidar=True,
               progress=False)
    return root, "v1.0-mini"


@pytest.fixture(scope="session")
def synth_shards(synth_dataroot, tmp_path_factory) -> dict[str, Path]:
    from shards.build import build_shards

    root, version = synth_dataroot
    base = tmp_path_factory.mktemp("shards")
    out = {}
    for split in ("mini_train", "mini_val"):
        build_shards(root, version, split, base / split, clip_frames=SHARD_CLIP_FRAMES, max_shard_mb=SHARD_MAX_MB,
                     progress=False)
        out[split] = base / split
    return out


@pytest.fixture(scope="session")
def synth_shards_lidar(synth_dataroot, tmp_path_factory) -> Path:
    from shards.build import build_shards

    root, version = synth_dataroot
    out = tmp_path_factory.mktemp("shards_lidar") / "mini_val"
    build_shards(root, version, "mini_val", out, clip_frames=SHARD_CLIP_FRAMES, max_shard_mb=SHARD_MAX_MB,
                 lidar=True, progress=False)
    return out
