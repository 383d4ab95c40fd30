"""nuScenes dataroot -> shards: tars of whole temporal clips + Arrow sidecars + DALI indexes + manifest.

The main process reads the tables through nuscenes-devkit once, turns every
keyframe into a sidecar row (all matrices and boxes in the conventions of
:mod:`shards.conventions`) and plans the shards deterministically: a clip is up
to ``clip_frames`` consecutive keyframes of one scene, clips are packed in split
order into shards of at most ``max_shard_mb`` (estimated from the source file
sizes), and a clip never straddles two shards. Worker processes then write whole
shards; each file is written to a temporary name and renamed, the tar last, so a
shard whose tar exists is complete. A rerun with the same settings skips complete
shards and yields byte-identical output (fixed tar headers: mtime 0, uid/gid 0,
mode 0644, USTAR).

Velocities come from the devkit's ``box_velocity``; where it is undefined (NaN: an
instance annotated in one keyframe only, or neighbouring annotations too far apart in
time) the ego-frame ``gt_boxes`` store 0 and the float64 global-frame ``gt_velocity``
keeps the NaN. ``gt_translation``, ``gt_size`` and ``gt_rotation`` are the annotation
table's values unchanged (the evaluator's exact ground truth).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tarfile
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from shards import conventions as cv
from shards.schema import (
    CAMERA_MEMBERS,
    LIDAR_MEMBER,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SIDECAR_SCHEMA,
    sample_key,
    shard_name,
)
from shards.typed_config import from_dict, to_dict

BUILD_STATE_NAME = ".build.json"
"""Written at the start of a build: the settings and plan a resumed build must match."""

TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK


class BuildError(ValueError):
    """Bad input to the builder; the message names the file, table or argument at fault."""


@dataclass(frozen=True)
class BuildSettings:
    """Settings that change the bytes of a build (recorded in the manifest)."""

    clip_frames: int = 8
    max_shard_mb: float = 256.0
    resize: list[int] | None = None  # [W, H]
    jpeg_quality: int = 90
    lidar: bool = False
    skip_missing: bool = False

    def validate(self) -> None:
        if self.clip_frames < 1:
            raise BuildError(f"clip_frames must be >= 1, got {self.clip_frames}")
        if self.max_shard_mb <= 0:
            raise BuildError(f"max_shard_mb must be > 0, got {self.max_shard_mb}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 8):
            raise BuildError(f"resize must be [W, H], each at least 8, got {self.resize}")
        if not 1 <= self.jpeg_quality <= 100:
            raise BuildError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclass
class SampleJob:
    """One keyframe to write: its tar key, source files and sidecar row."""

    key: str
    clip: int
    cam_files: list[tuple[str, str, int]]  # (member extension, absolute path, bytes), camera order
    lidar_file: tuple[str, int] | None  # (absolute path, bytes)
    lidar2ego: list[float] | None  # row-major 4x4
    row: dict[str, Any]
    src_size: tuple[int, int]  # (W, H) of the source images

    def estimated_bytes(self, settings: BuildSettings) -> int:
        n = 0
        for _, _, size in self.cam_files:
            if settings.resize is not None:
                scale = settings.resize[0] * settings.resize[1] / max(1, self.src_size[0] * self.src_size[1])
                size = int(size * scale)
            n += TAR_BLOCK + size
        if self.lidar_file is not None:
            n += TAR_BLOCK + 128 + self.lidar_file[1] // 20 * 16
        return n


@dataclass
class ShardJob:
    """One shard to write: name and samples in tar order."""

    name: str
    samples: list[SampleJob] = field(default_factory=list)

    @property
    def clips(self) -> int:
        return len({s.clip for s in self.samples})


# --------------------------------------------------------------------------- input checks and planning


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
    compatible = {"mini_train": "mini", "mini_val": "mini", "train": "trainval", "val": "trainval",
                  "train_detect": "trainval", "train_track": "trainval", "test": "test"}
    if not version.endswith(compatible[split]):
        ok = sorted(s for s, v in compatible.items() if version.endswith(v))
        raise BuildError(f"split {split!r} does not belong to version {version!r} "
                         f"(splits of {version}: {', '.join(ok) or 'none'})")


def load_nuscenes(dataroot: Path, version: str):
    """Load the tables with nuscenes-devkit, turning its assertion errors into :class:`BuildError`."""
    from nuscenes.nuscenes import NuScenes

    missing = [t for t in ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
                           "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")
               if not (dataroot / version / f"{t}.json").is_file()]
    if missing:
        raise BuildError(f"table(s) missing in {dataroot / version}: {', '.join(m + '.json' for m in missing)}")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, OSError, KeyError, json.JSONDecodeError, IndexError) as e:
        raise BuildError(f"cannot load nuScenes {version} tables from {dataroot}: {type(e).__name__}: {e}") from e


def _flat(m: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(m, dtype=np.float64).reshape(-1)]


def resize_matrix(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """``[3, 3]`` pixel map of a resize from ``src`` (W, H) to ``dst`` (pixel centres at integers)."""
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    return np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])


def _image_size(nusc, sd: dict, path: str) -> tuple[int, int]:
    if sd.get("width") and sd.get("height"):
        return int(sd["width"]), int(sd["height"])
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as e:
        raise BuildError(f"corrupt image {path}: {e}") from e


def _sample_job(nusc, dataroot: Path, scene: dict, sample: dict, frame: int, settings: BuildSettings,
                missing: list[dict]) -> SampleJob | None:
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
        path = str(dataroot / sd["filename"])
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            absent.append(sd["filename"])
            continue
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        cep = nusc.get("ego_pose", sd["ego_pose_token"])
        k = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
        if k.shape != (3, 3):
            raise BuildError(f"calibrated_sensor {cs['token']} of {cam} has no 3x3 camera_intrinsic")
        w, h = _image_size(nusc, sd, path)
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
        path = str(dataroot / lidar_sd["filename"])
        try:
            lidar_file = (path, os.stat(path).st_size)
        except FileNotFoundError:
            absent.append(lidar_sd["filename"])
        cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
        lidar2ego = _flat(cv.pose_matrix(cs["rotation"], cs["translation"]))
    if absent:
        if not settings.skip_missing:
            raise BuildError(f"file(s) referenced by sample {sample['token']} ({key}) missing on disk: "
                             f"{', '.join(str(dataroot / a) for a in absent)} "
                             "(pass --skip-missing to skip such samples)")
        missing.append({"key": key, "sample_token": sample["token"], "missing": absent})
        return None

    anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
    vel = np.array([nusc.box_velocity(a["token"])[:2] for a in anns], dtype=np.float64).reshape(-1, 2)
    if anns:
        boxes = cv.boxes_from_nuscenes([a["translation"] for a in anns], [a["size"] for a in anns],
                                       [a["rotation"] for a in anns], np.nan_to_num(vel, nan=0.0), ego2global)
    else:
        boxes = np.zeros((0, cv.BOX_DIM))
    attr_names = _attribute_names(nusc)
    row = {
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
    return SampleJob(key, -1, cam_files, lidar_file, lidar2ego, row, src_size)


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


def plan_shards(nusc, dataroot: Path, split: str, settings: BuildSettings,
                progress: bool = False) -> tuple[list[ShardJob], list[dict], list[str]]:
    """Deterministic shard plan of ``split``.

    Returns:
        (shards in order, skipped samples ``[{key, sample_token, missing}]``, scene names used).
    """
    from nuscenes.utils.splits import create_splits_scenes

    by_name = {s["name"]: s for s in nusc.scene}
    wanted = create_splits_scenes()[split]
    names = [n for n in wanted if n in by_name]
    if not names:
        raise BuildError(f"none of the {len(wanted)} scenes of split {split!r} are in the {nusc.version} tables "
                         f"of {dataroot}")
    max_bytes = int(settings.max_shard_mb * 1024 * 1024)
    shards: list[ShardJob] = [ShardJob(shard_name(split, 0))]
    cur_bytes = 0
    missing: list[dict] = []
    clip_id = 0
    for name in tqdm(names, desc=f"plan {split}", unit="scene", disable=not progress):
        scene = by_name[name]
        clips: list[list[SampleJob]] = []
        token, frame, prev_kept = scene["first_sample_token"], 0, False
        while token:
            sample = nusc.get("sample", token)
            job = _sample_job(nusc, dataroot, scene, sample, frame, settings, missing)
            if job is not None:
                if not prev_kept or len(clips[-1]) >= settings.clip_frames:
                    clips.append([])
                clips[-1].append(job)
            prev_kept = job is not None
            token, frame = sample["next"], frame + 1
        for clip in clips:
            size = sum(s.estimated_bytes(settings) for s in clip)
            if shards[-1].samples and cur_bytes + size > max_bytes:
                shards.append(ShardJob(shard_name(split, len(shards))))
                cur_bytes = 0
            for s in clip:
                s.clip = clip_id
            shards[-1].samples.extend(clip)
            cur_bytes += size
            clip_id += 1
    if not shards[-1].samples:
        raise BuildError(f"split {split!r} has no samples to write (all {len(missing)} skipped for missing files)")
    return shards, missing, names


def plan_digest(shards: Iterable[ShardJob]) -> str:
    """sha256 over the shard names, keys and rows of a plan (identifies what a build writes)."""
    h = hashlib.sha256()
    for sh in shards:
        h.update(sh.name.encode())
        for s in sh.samples:
            h.update(json.dumps([s.key, s.clip, [c[1:] for c in s.cam_files], s.lidar_file, s.row],
                                sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- writing one shard


def _check_jpeg(data: bytes, path: str) -> None:
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise BuildError(f"corrupt image {path}: not a JPEG (no start-of-image marker)")
    if data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:
        raise BuildError(f"corrupt image {path}: truncated JPEG (no end-of-image marker)")


def _resize_jpeg(data: bytes, path: str, size: tuple[int, int], quality: int) -> bytes:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size[0], size[1]))
            im = im.convert("RGB")
            if im.size != tuple(size):
                im = im.resize(size, Image.BILINEAR)
    except OSError as e:
        raise BuildError(f"corrupt image {path}: {e}") from e
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _lidar_npy(path: str, lidar2ego: list[float]) -> bytes:
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 5:
        raise BuildError(f"corrupt lidar file {path}: {raw.size * 4} bytes is not a multiple of 5 float32")
    pts = raw.reshape(-1, 5)
    m = np.asarray(lidar2ego, dtype=np.float64).reshape(4, 4)
    out = np.empty((pts.shape[0], 4), dtype=np.float32)
    out[:, :3] = pts[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    out[:, 3] = pts[:, 3]
    buf = io.BytesIO()
    np.save(buf, out, allow_pickle=False)
    return buf.getvalue()


class _TarWriter:
    """Deterministic USTAR writer that records DALI index entries and hashes what it writes.

    The sha256 runs on a background thread (hashlib releases the GIL), so hashing overlaps
    reading and writing; at most ``max_pending`` chunks wait for it.
    """

    def __init__(self, f, max_pending: int = 64) -> None:
        self.f = f
        self.pos = 0
        self.sha = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(max_workers=1)
        self._pending: deque = deque()
        self._max_pending = max_pending

    def _write(self, b: bytes) -> None:
        self.f.write(b)
        self._pending.append(self._hasher.submit(self.sha.update, b))  # one thread: updates stay in order
        if len(self._pending) > self._max_pending:
            self._pending.popleft().result()
        self.pos += len(b)

    def add(self, name: str, data: bytes) -> int:
        """Append member ``name``; return the offset of its data."""
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o644, 0, 0, "", ""
        self._write(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
        offset = self.pos
        self._write(data)
        pad = -len(data) % TAR_BLOCK
        if pad:
            self._write(b"\0" * pad)
        return offset

    def close(self) -> str:
        """Write the end-of-archive blocks; return the tar's sha256."""
        self._write(b"\0" * (2 * TAR_BLOCK))
        pad = -self.pos % TAR_RECORD
        if pad:
            self._write(b"\0" * pad)
        while self._pending:
            self._pending.popleft().result()
        self._hasher.shutdown()
        return self.sha.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(out: Path, shard: ShardJob, settings: BuildSettings) -> dict[str, Any]:
    """Write ``{name}.arrow``, ``{name}.idx`` and ``{name}.tar`` atomically; return the shard's manifest entry."""
    tar_path, arrow_path, idx_path = (out / f"{shard.name}{ext}" for ext in (".tar", ".arrow", ".idx"))
    tmp_tar = tar_path.with_name(tar_path.name + ".tmp")
    idx_lines = []
    with open(tmp_tar, "wb") as f:
        w = _TarWriter(f)
        for s in shard.samples:
            comps = []
            for member, path, _ in s.cam_files:
                try:
                    with open(path, "rb") as src:
                        data = src.read()
                except OSError as e:
                    raise BuildError(f"cannot read image {path} (sample {s.key}): {e}") from e
                _check_jpeg(data, path)
                if settings.resize is not None:
                    data = _resize_jpeg(data, path, tuple(settings.resize), settings.jpeg_quality)
                name = f"{s.key}.{member}"
                comps.append(f"{member} {w.add(name, data)} {len(data)} {name}")
            if s.lidar_file is not None:
                data = _lidar_npy(s.lidar_file[0], s.lidar2ego)
                name = f"{s.key}.{LIDAR_MEMBER}"
                comps.append(f"{LIDAR_MEMBER} {w.add(name, data)} {len(data)} {name}")
            idx_lines.append(" ".join(comps))
        tar_sha = w.close()
    tar_bytes = w.pos

    table = pa.Table.from_pylist([s.row for s in shard.samples], schema=SIDECAR_SCHEMA)
    tmp_arrow = arrow_path.with_name(arrow_path.name + ".tmp")
    with pa.OSFile(str(tmp_arrow), "wb") as sink, pa.ipc.new_file(sink, SIDECAR_SCHEMA) as writer:
        writer.write_table(table)
    arrow_sha = _sha256_file(tmp_arrow)
    tmp_idx = idx_path.with_name(idx_path.name + ".tmp")
    tmp_idx.write_text(f"v1.2 {len(shard.samples)}\n" + "\n".join(idx_lines) + "\n")
    os.replace(tmp_arrow, arrow_path)
    os.replace(tmp_idx, idx_path)
    os.replace(tmp_tar, tar_path)  # last: a tar under its final name means the shard is complete
    return _shard_entry(shard, tar_bytes, tar_sha, arrow_path.stat().st_size, arrow_sha)


def _shard_entry(shard: ShardJob, tar_bytes: int, tar_sha: str, arrow_bytes: int, arrow_sha: str) -> dict:
    scenes = list(dict.fromkeys(s.row["scene_name"] for s in shard.samples))
    return {"name": shard.name, "tar": f"{shard.name}.tar", "sidecar": f"{shard.name}.arrow",
            "index": f"{shard.name}.idx", "samples": len(shard.samples), "clips": shard.clips, "scenes": scenes,
            "first_key": shard.samples[0].key, "last_key": shard.samples[-1].key,
            "boxes": sum(len(s.row["ann_tokens"]) for s in shard.samples),
            "bytes": tar_bytes, "sha256": tar_sha, "sidecar_bytes": arrow_bytes, "sidecar_sha256": arrow_sha}


def _existing_entry(out: Path, shard: ShardJob) -> dict | None:
    """Manifest entry of an already complete shard (resume), or None."""
    tar_path, arrow_path, idx_path = (out / f"{shard.name}{ext}" for ext in (".tar", ".arrow", ".idx"))
    if not (tar_path.is_file() and arrow_path.is_file() and idx_path.is_file()):
        return None
    return _shard_entry(shard, tar_path.stat().st_size, _sha256_file(tar_path), arrow_path.stat().st_size,
                        _sha256_file(arrow_path))


# --------------------------------------------------------------------------- the build


def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (a devkit dependency)
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _own_files(out: Path, split: str) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.name.startswith(f"{split}-") or p.name in (
        MANIFEST_NAME, BUILD_STATE_NAME, MANIFEST_NAME + ".tmp", BUILD_STATE_NAME + ".tmp"))


def _prepare_out(out: Path, state: dict, split: str, overwrite: bool) -> None:
    """Create OUT, or check that it holds a build of the same state (resume), or clear it (overwrite)."""
    out.mkdir(parents=True, exist_ok=True)
    previous = None
    for name in (BUILD_STATE_NAME, MANIFEST_NAME):
        p = out / name
        if p.is_file():
            try:
                prev = json.loads(p.read_text())
                previous = {k: prev.get(k) for k in ("source", "settings", "plan_digest")}
            except json.JSONDecodeError:
                previous = {"source": "unreadable"}
            break
    others = [p for p in out.iterdir() if p not in _own_files(out, split)]
    if previous is not None and previous != state:
        if not overwrite:
            diffs = []
            prev_src, prev_set = previous.get("source") or {}, previous.get("settings") or {}
            for section, old, new in (("source", prev_src, state["source"]), ("", prev_set, state["settings"])):
                if not isinstance(old, dict):
                    diffs.append(f"{section or 'settings'} unreadable")
                    continue
                for k in new:
                    if old.get(k) != new[k]:
                        diffs.append(f"{section + '.' if section else ''}{k}: {old.get(k)!r} there, {new[k]!r} now")
            if not diffs and previous.get("plan_digest") != state["plan_digest"]:
                diffs.append("the source tables or files changed since")
            raise BuildError(f"{out} already holds shards built differently ({'; '.join(diffs)}); "
                             "pass --overwrite to replace them")
        for p in _own_files(out, split):
            p.unlink()
    elif previous is None and (others or _own_files(out, split)):
        if not overwrite:
            raise BuildError(f"{out} is not empty and holds no shard build of split {split!r} "
                             f"(e.g. {sorted(p.name for p in out.iterdir())[:3]}); pass --overwrite to write there")
        for p in _own_files(out, split):
            p.unlink()
    for p in out.glob(f"{split}-*.tmp"):
        p.unlink()
    _write_json_atomic(out / BUILD_STATE_NAME, state)


def build_shards(dataroot: Path | str, version: str, split: str, out: Path | str, *, clip_frames: int = 8,
                 max_shard_mb: float = 256.0, resize: tuple[int, int] | None = None, jpeg_quality: int = 90,
                 lidar: bool = False, workers: int = 1, overwrite: bool = False, skip_missing: bool = False,
                 progress: bool = True, processes: bool = False, timings: dict[str, float] | None = None) -> dict:
    """Build the shards of ``split`` from a nuScenes ``dataroot`` into ``out``; return the manifest.

    Output: ``{split}-{i:06d}.tar/.arrow/.idx`` and ``manifest.json`` (DESIGN.md, Shards).
    ``workers`` shards are written at once, by threads (file I/O, sha256, JPEG decode / resize /
    encode and Arrow all release the GIL) or, with ``processes=True``, by spawned processes
    (each pays an interpreter start-up). The bytes do not depend on either. ``timings``, when given, receives the seconds spent loading + planning (``plan_s``) and
    writing (``write_s``).
    """
    t_start = time.perf_counter()
    dataroot, out = Path(dataroot), Path(out)
    settings = from_dict(BuildSettings, {
        "clip_frames": clip_frames, "max_shard_mb": float(max_shard_mb),
        "resize": [int(v) for v in resize] if resize is not None else None, "jpeg_quality": jpeg_quality, "lidar": lidar,
        "skip_missing": skip_missing})
    if workers < 1:
        raise BuildError(f"workers must be >= 1, got {workers}")
    check_inputs(dataroot, version, split)
    # absolute paths in the plan (and its digest): the same dataroot named relatively or absolutely is one build
    dataroot = dataroot.resolve()
    nusc = load_nuscenes(dataroot, version)
    with _single_threaded_blas():  # many tiny 4x4 inversions: BLAS threads only add overhead
        shards, missing, scenes = plan_shards(nusc, dataroot, split, settings, progress=progress)
    del nusc
    state = {"source": {"version": version, "split": split, "dataroot": dataroot.resolve().name},
             "settings": to_dict(settings), "plan_digest": plan_digest(shards)}
    _prepare_out(out, state, split, overwrite)
    t_write = time.perf_counter()

    entries: dict[str, dict] = {}
    todo = []
    for sh in shards:
        e = _existing_entry(out, sh)
        if e is None:
            todo.append(sh)
        else:
            entries[sh.name] = e
    bar = tqdm(total=sum(len(sh.samples) for sh in shards), initial=sum(e["samples"] for e in entries.values()),
               desc=f"build {split}", unit="sample", disable=not progress)
    if workers == 1 or len(todo) <= 1:
        for sh in todo:
            entries[sh.name] = write_shard(out, sh, settings)
            bar.update(len(sh.samples))
    else:
        n = min(workers, len(todo))
        with (ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn")) if processes
              else ThreadPoolExecutor(max_workers=n)) as pool:
            futures = {pool.submit(write_shard, out, sh, settings): sh for sh in todo}
            for fut in as_completed(futures):
                sh = futures[fut]
                entries[sh.name] = fut.result()
                bar.update(len(sh.samples))
    bar.close()

    shard_entries = [entries[sh.name] for sh in shards]
    manifest = {
        "format": "bevstream-shards",
        "schema_version": SCHEMA_VERSION,
        **state,
        "num_shards": len(shards),
        "num_samples": sum(e["samples"] for e in shard_entries),
        "num_clips": sum(e["clips"] for e in shard_entries),
        "num_scenes": len(scenes),
        "num_boxes": sum(e["boxes"] for e in shard_entries),
        "bytes": sum(e["bytes"] + e["sidecar_bytes"] for e in shard_entries),
        "shards": shard_entries,
        "skipped": missing,
    }
    _write_json_atomic(out / MANIFEST_NAME, manifest)
    if timings is not None:
        timings["plan_s"] = t_write - t_start
        timings["write_s"] = time.perf_counter() - t_write
    return manifest


def settings_fields() -> list[str]:
    """Names of the settings recorded in a manifest."""
    return [f.name for f in dataclasses.fields(BuildSettings)]
