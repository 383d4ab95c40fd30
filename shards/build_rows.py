"""nuScenes tables -> sidecar rows: one :class:`SampleJob` (row + source files) per keyframe.

The tables are read once through nuscenes-devkit. Every matrix and box follows
:mod:`shards.conventions`. Velocities come from the devkit's ``box_velocity``; where it is
undefined (NaN: an instance annotated in one keyframe only, or neighbouring annotations too far
apart in time) the ego-frame ``gt_boxes`` store 0 and the float64 global-frame ``gt_velocity``
keeps the NaN. ``gt_translation``, ``gt_size`` and ``gt_rotation`` are the annotation table's
values unchanged (the evaluator's exact ground truth).

Every ``sample_data.filename`` is resolved inside the dataroot (:class:`DatarootFiles`): a table row
whose file is absolute, climbs out with ``..`` or reaches outside through a symlink is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISLNK
from typing import Any

import numpy as np

from shards import conventions as cv
from shards.errors import BuildError
from shards.manifest import BuildSettings, SkippedSample
from shards.schema import CAMERA_MEMBERS, sample_key

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
          "scene", "sample", "sample_data", "sample_annotation", "map")
"""The nuScenes tables the devkit loads (``{dataroot}/{version}/{table}.json``)."""

SPLIT_VERSIONS = {"mini_train": "mini", "mini_val": "mini", "train": "trainval", "val": "trainval",
                  "train_detect": "trainval", "train_track": "trainval", "test": "test"}
"""Split -> the suffix of the versions that hold it."""


@dataclass
class SampleJob:
    """One keyframe to write: its tar key, clip id (set by the planner), source files and sidecar row."""

    key: str
    clip: int
    cam_files: list[tuple[str, str, int]]  # (member extension, absolute path, bytes), camera order
    lidar_file: tuple[str, int] | None  # (absolute path, bytes)
    lidar2ego: list[float] | None  # row-major 4x4
    row: dict[str, Any]
    src_size: tuple[int, int]  # (W, H) of the source images


def check_inputs(dataroot: Path, version: str, split: str) -> None:
    """Raise :class:`BuildError` naming what is wrong with the dataroot, version or split."""
    from nuscenes.utils.splits import create_splits_scenes

    if not dataroot.exists():
        raise BuildError(f"dataroot not found: {dataroot}")
    if not dataroot.is_dir():
        raise BuildError(f"dataroot is not a directory: {dataroot}")
    if not os.access(dataroot, os.R_OK | os.X_OK):
        raise BuildError(f"dataroot is not readable: {dataroot}")
    table_dir = dataroot / version
    if not table_dir.is_dir():
        found = sorted(p.name for p in dataroot.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise BuildError(f"unknown version {version!r}: no table directory {table_dir} "
                         f"(versions found in the dataroot: {', '.join(found) or 'none'})")
    splits = create_splits_scenes()
    if split not in splits:
        raise BuildError(f"unknown split {split!r} (known: {', '.join(sorted(splits))})")
    if not version.endswith(SPLIT_VERSIONS[split]):
        ok = sorted(s for s, v in SPLIT_VERSIONS.items() if version.endswith(v))
        raise BuildError(f"split {split!r} does not belong to version {version!r} "
                         f"(splits of {version}: {', '.join(ok) or 'none'})")


def load_nuscenes(dataroot: Path, version: str):
    """Load the tables with nuscenes-devkit, turning its assertion errors into :class:`BuildError`."""
    from nuscenes.nuscenes import NuScenes

    missing = [t for t in TABLES if not (dataroot / version / f"{t}.json").is_file()]
    if missing:
        raise BuildError(f"table(s) missing in {dataroot / version}: {', '.join(m + '.json' for m in missing)}")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, OSError, KeyError, json.JSONDecodeError, IndexError) as e:
        raise BuildError(f"cannot load nuScenes {version} tables from {dataroot}: {type(e).__name__}: {e}") from e


class DatarootFiles:
    """Paths of ``sample_data`` files, refused unless they stay inside the dataroot.

    ``dataroot`` must be absolute and resolved. A file's path is ``dataroot / filename`` (as planned
    and digested); its resolved form (symlinks followed) must lie under ``dataroot``. Directories are
    resolved once each (nuScenes keeps its files in a few dozen), files only when they are symlinks.
    """

    def __init__(self, dataroot: Path) -> None:
        self.root = str(dataroot)
        self._dirs: dict[str, bool] = {}

    def _inside(self, real: str) -> bool:
        return real != self.root and os.path.commonpath([real, self.root]) == self.root

    def stat(self, sd: dict, what: str) -> tuple[str, int | None]:
        """Path and size of ``sample_data`` row ``sd``'s file (size None when the file is missing).

        Raises:
            BuildError: naming the ``sample_data`` token, ``what`` (channel and sample) and the filename.
        """
        name = sd.get("filename")
        where = f"sample_data {sd.get('token')} ({what}): filename {name!r}"
        if not isinstance(name, str) or not name:
            raise BuildError(f"{where} is not a file name")
        if os.path.isabs(name) or name.startswith(("/", "\\")):
            raise BuildError(f"{where} is an absolute path; sample_data files must be inside the dataroot "
                             f"{self.root}")
        path = os.path.join(self.root, name)
        head, tail = os.path.split(path)
        if head not in self._dirs:
            real_dir = os.path.realpath(head)
            self._dirs[head] = real_dir == self.root or self._inside(real_dir)
        try:
            st: os.stat_result | None = os.lstat(path)  # one syscall: symlink test and size
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if not self._dirs[head] or tail in ("", ".", "..") or (st is not None and S_ISLNK(st.st_mode)):
            real = os.path.realpath(path)
            if not self._inside(real):
                raise BuildError(f"{where} leaves the dataroot {self.root} (resolves to {real})")
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                st = None
        return str(Path(self.root) / name), None if st is None else st.st_size


def resize_matrix(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """``[3, 3]`` pixel map of a resize from ``src`` (W, H) to ``dst`` (pixel centres at integers)."""
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    return np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])


def sample_job(nusc, files: DatarootFiles, scene: dict, sample: dict, frame: int, settings: BuildSettings,
               missing: list[SkippedSample]) -> SampleJob | None:
    """Sidecar row + file list of one keyframe (None, recorded in ``missing``, when skipped)."""
    key = sample_key(scene["name"], frame)
    data = sample["data"]
    if "LIDAR_TOP" not in data:
        raise BuildError(f"sample {sample['token']} ({key}) has no LIDAR_TOP sample_data: the keyframe ego pose "
                         "is undefined")
    lidar_sd = nusc.get("sample_data", data["LIDAR_TOP"])
    ep = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
    ego2global = cv.pose_matrix(ep["rotation"], ep["translation"])
    cams, cam_files, absent = [], [], []
    src_size = (0, 0)
    for member, cam in zip(CAMERA_MEMBERS, cv.CAMERAS):
        if cam not in data:
            raise BuildError(f"sample {sample['token']} ({key}) has no {cam} sample_data")
        sd = nusc.get("sample_data", data[cam])
        path, size = files.stat(sd, f"{cam} of sample {key}")
        if size is None:
            absent.append(sd["filename"])
            continue
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        cep = nusc.get("ego_pose", sd["ego_pose_token"])
        k = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
        if k.shape != (3, 3):
            raise BuildError(f"calibrated_sensor {cs['token']} of {cam} has no 3x3 camera_intrinsic")
        w, h = _image_size(sd, path)
        src_size = (w, h)
        if settings.resize is not None:
            k = resize_matrix((w, h), tuple(settings.resize)) @ k
            w, h = settings.resize
        cams.append({"name": cam, "intrinsic": _flat(k),
                     "cam2ego": _flat(cv.pose_matrix(cs["rotation"], cs["translation"])),
                     "ego2global": _flat(cv.pose_matrix(cep["rotation"], cep["translation"])),
                     "timestamp": int(sd["timestamp"]), "width": int(w), "height": int(h)})
        cam_files.append((member, path, size))
    lidar_file, lidar2ego = None, None
    if settings.lidar:
        path, size = files.stat(lidar_sd, f"LIDAR_TOP of sample {key}")
        if size is None:
            absent.append(lidar_sd["filename"])
        else:
            lidar_file = (path, size)
        cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
        lidar2ego = _flat(cv.pose_matrix(cs["rotation"], cs["translation"]))
    if absent:
        if not settings.skip_missing:
            raise BuildError(f"file(s) referenced by sample {sample['token']} ({key}) missing on disk: "
                             f"{', '.join(str(Path(files.root) / a) for a in absent)} "
                             "(pass --skip-missing to skip such samples)")
        missing.append(SkippedSample(key=key, sample_token=sample["token"], missing=absent))
        return None
    return SampleJob(key, -1, cam_files, lidar_file, lidar2ego, sample_row(nusc, scene, sample, frame, key,
                                                                          ego2global, cams), src_size)


def sample_row(nusc, scene: dict, sample: dict, frame: int, key: str, ego2global: np.ndarray,
               cams: list[dict]) -> dict[str, Any]:
    """The sidecar row of a keyframe (``shards.schema.SIDECAR_SCHEMA``); ``ego2global`` is ``[4, 4]``."""
    anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
    vel = np.array([nusc.box_velocity(a["token"])[:2] for a in anns], dtype=np.float64).reshape(-1, 2)
    if anns:
        boxes = cv.boxes_from_nuscenes([a["translation"] for a in anns], [a["size"] for a in anns],
                                       [a["rotation"] for a in anns], np.nan_to_num(vel, nan=0.0), ego2global)
    else:
        boxes = np.zeros((0, cv.BOX_DIM))
    attr_names = _attribute_names(nusc)
    return {
        "key": key, "sample_token": sample["token"], "scene_token": scene["token"], "scene_name": scene["name"],
        "timestamp": int(sample["timestamp"]), "frame_index": frame, "prev_token": sample["prev"],
        "next_token": sample["next"], "ego2global": _flat(ego2global), "cameras": cams,
        "gt_boxes": boxes.astype(np.float32).tolist(),
        "gt_labels": [cv.category_to_class(a["category_name"]) for a in anns],
        "gt_names": [a["category_name"] for a in anns],
        "gt_attrs": [attr_names[a["attribute_tokens"][0]] if a["attribute_tokens"] else "" for a in anns],
        "num_lidar_pts": [int(a["num_lidar_pts"]) for a in anns],
        "num_radar_pts": [int(a["num_radar_pts"]) for a in anns],
        "visibility": [_visibility_level(a.get("visibility_token", "")) for a in anns],
        "instance_tokens": [a["instance_token"] for a in anns],
        "ann_tokens": [a["token"] for a in anns],
        "gt_translation": [_floats(a["translation"], 3, "translation", a) for a in anns],
        "gt_size": [_floats(a["size"], 3, "size", a) for a in anns],
        "gt_rotation": [_floats(a["rotation"], 4, "rotation", a) for a in anns],
        "gt_velocity": vel.tolist(),  # NaN kept where box_velocity is undefined
    }


def _flat(m: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(m, dtype=np.float64).reshape(-1)]


def _image_size(sd: dict, path: str) -> tuple[int, int]:
    if sd.get("width") and sd.get("height"):
        return int(sd["width"]), int(sd["height"])
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as e:
        raise BuildError(f"corrupt image {path}: {e}") from e


def _floats(values, n: int, what: str, ann: dict) -> list[float]:
    """An annotation field as ``n`` floats (raises :class:`BuildError` naming the annotation otherwise)."""
    out = [float(v) for v in values]
    if len(out) != n:
        raise BuildError(f"sample_annotation {ann['token']} has {len(out)} {what} values, expected {n}")
    return out


def _attribute_names(nusc) -> dict[str, str]:
    names = getattr(nusc, "_bevstream_attr_names", None)
    if names is None:
        names = {a["token"]: a["name"] for a in nusc.attribute}
        nusc._bevstream_attr_names = names
    return names


def _visibility_level(token: str) -> int:
    return int(token) if str(token).isdigit() else 0
