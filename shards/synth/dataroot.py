"""Write a synthetic world as a nuScenes dataroot (13 tables, camera JPEGs, LIDAR_TOP sweeps).

Only keyframes are written (2 Hz, ``sample.timestamp`` 0.5 s apart), each with
its six camera ``sample_data`` (own timestamps and ego poses) and one LIDAR_TOP
``sample_data`` whose timestamp is the sample's. The ``.pcd.bin`` files are only
written with ``lidar=True``; the tables reference them either way (the devkit's
evaluation needs the LIDAR_TOP records).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shards import conventions as cv
from shards.synth import rig, sensors
from shards.synth.world import ALL_CATEGORIES, make_world, scene_rng

VERSIONS: dict[str, tuple[str, ...]] = {
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-trainval": ("train", "val"),
    "v1.0-test": ("test",),
}
"""Versions the synthesiser writes and the devkit split lists their scene names come from."""

KEYFRAME_INTERVAL_US = 500_000
ANNOTATION_RANGE = 75.0
VISIBILITY_LEVELS = (("1", "v0-40", 0.4), ("2", "v40-60", 0.6), ("3", "v60-80", 0.8), ("4", "v80-100", 1.01))
LOCATIONS = ("singapore-onenorth", "singapore-hollandvillage", "singapore-queenstown", "boston-seaport")
JPEG_QUALITY = 90


class SynthError(ValueError):
    """Bad arguments to the synthesiser; the message names the argument."""


def scene_names(version: str, scenes: int | None = None) -> list[str]:
    """Scene names the synthetic ``version`` holds: the devkit's split lists (first ``scenes`` of each)."""
    from nuscenes.utils.splits import create_splits_scenes

    if version not in VERSIONS:
        raise SynthError(f"unknown version {version!r} (known: {', '.join(VERSIONS)})")
    if scenes is not None and scenes < 1:
        raise SynthError(f"--scenes must be >= 1, got {scenes}")
    lists = create_splits_scenes()
    names: list[str] = []
    for split in VERSIONS[version]:
        names += lists[split][:scenes] if scenes is not None else lists[split]
    return names


def _token(*parts: object) -> str:
    return hashlib.md5("|".join(str(p) for p in parts).encode()).hexdigest()


def _visibility_token(fraction: float) -> str:
    for token, _, upper in VISIBILITY_LEVELS:
        if fraction <= upper:
            return token
    return VISIBILITY_LEVELS[-1][0]


def _write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _pose_record(token: str, timestamp: int, m: np.ndarray) -> dict:
    return {"token": token, "timestamp": int(timestamp), "rotation": cv.matrix_to_quaternion(m[:3, :3]).tolist(),
            "translation": m[:3, 3].tolist()}


class _Tables:
    """Accumulates the 13 nuScenes tables."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.t: dict[str, list[dict]] = {n: [] for n in (
            "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
            "scene", "sample", "sample_data", "sample_annotation", "map")}
        self.category_token = {n: _token("category", n) for n in ALL_CATEGORIES}
        self.attribute_token = {n: _token("attribute", n) for n in cv.ATTRIBUTES}
        self.sensor_token = {n: _token("sensor", n) for n in (*rig.CAMERA_SPECS, "LIDAR_TOP")}
        for n in ALL_CATEGORIES:
            self.t["category"].append({"token": self.category_token[n], "name": n,
                                       "description": f"synthetic {n}"})
        for n in cv.ATTRIBUTES:
            self.t["attribute"].append({"token": self.attribute_token[n], "name": n, "description": ""})
        for token, level, _ in VISIBILITY_LEVELS:
            self.t["visibility"].append({"token": token, "level": level,
                                         "description": f"visibility of whole object is {level[1:]}%"})
        for n in rig.CAMERA_SPECS:
            self.t["sensor"].append({"token": self.sensor_token[n], "channel": n, "modality": "camera"})
        self.t["sensor"].append({"token": self.sensor_token["LIDAR_TOP"], "channel": "LIDAR_TOP",
                                 "modality": "lidar"})
        self.map_logs: dict[str, list[str]] = {}

    def write(self, root: Path, version: str) -> None:
        maps_dir = root / "maps"
        maps_dir.mkdir(parents=True, exist_ok=True)
        self.t["map"] = []
        for loc in sorted(self.map_logs):
            token = _token("map", loc)
            png = maps_dir / f"{token}.png"
            if not png.exists():
                Image.new("L", (16, 16), 255).save(png)
            self.t["map"].append({"token": token, "log_tokens": self.map_logs[loc], "category": "semantic_prior",
                                  "filename": f"maps/{token}.png"})
        table_dir = root / version
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, rows in self.t.items():
            _write_json_atomic(table_dir / f"{name}.json", rows)


def synthesize(out: Path | str, version: str = "v1.0-mini", scenes: int | None = None, frames_per_scene: int = 20,
               image_size: tuple[int, int] = (640, 360), seed: int = 0, lidar: bool = False,
               progress: bool = True) -> Path:
    """Write a synthetic nuScenes dataroot to ``out`` and return it.

    Args:
        out: dataroot directory (created).
        version: ``v1.0-mini`` (mini_train + mini_val scenes), ``v1.0-trainval`` or ``v1.0-test``.
        scenes: take the first ``scenes`` names of each split list of the version (all when None).
        frames_per_scene: keyframes per scene (2 Hz).
        image_size: ``(W, H)`` of every camera image.
        seed: world seed; each scene is laid out from ``(seed, scene name)``.
        lidar: also write ``samples/LIDAR_TOP/*.pcd.bin`` (float32 x 5 per point).
        progress: show a progress bar.
    """
    names = scene_names(version, scenes)
    if frames_per_scene < 1:
        raise SynthError(f"--frames-per-scene must be >= 1, got {frames_per_scene}")
    width, height = (int(v) for v in image_size)
    if width < 16 or height < 16:
        raise SynthError(f"--image-size must be at least 16x16, got {width}x{height}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for ch in (*rig.CAMERA_SPECS, "LIDAR_TOP"):
        (root / "samples" / ch).mkdir(parents=True, exist_ok=True)
    tables = _Tables(seed)
    annotate = version != "v1.0-test"
    bar = tqdm(total=len(names) * frames_per_scene, desc="synth", unit="frame", disable=not progress)
    with _single_threaded_blas():  # thousands of 4x4 inversions: BLAS threads only add overhead
        for name in names:
            _synth_scene(root, tables, name, frames_per_scene, (width, height), seed, lidar, annotate, bar)
    bar.close()
    tables.write(root, version)
    return root


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, quality=JPEG_QUALITY)


def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (a devkit dependency)
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _synth_scene(root: Path, tables: _Tables, name: str, frames: int, image_size: tuple[int, int], seed: int,
                 lidar: bool, annotate: bool, bar: tqdm) -> None:
    t = tables.t
    rng = scene_rng(seed + 1, name)  # sensor noise; the layout uses scene_rng(seed, name)
    duration = (frames - 1) * KEYFRAME_INTERVAL_US * 1e-6 + 0.2
    world = make_world(seed, name, duration)
    number = int("".join(ch for ch in name if ch.isdigit()) or 0)
    t0 = 1_531_000_000_000_000 + number * 1_000_000_000
    location = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
    logfile = f"n015-synth-{seed}-{name}"
    log_token = _token(seed, "log", name)
    t["log"].append({"token": log_token, "logfile": logfile, "vehicle": "n015", "date_captured": "2018-07-24",
                     "location": location})
    tables.map_logs.setdefault(location, []).append(log_token)
    scene_token = _token(seed, "scene", name)
    calib = {}
    for ch, spec in rig.CAMERA_SPECS.items():
        m = rig.cam2ego(spec)
        calib[ch] = _token(seed, "calib", name, ch)
        t["calibrated_sensor"].append({
            "token": calib[ch], "sensor_token": tables.sensor_token[ch], "translation": m[:3, 3].tolist(),
            "rotation": cv.matrix_to_quaternion(m[:3, :3]).tolist(),
            "camera_intrinsic": rig.intrinsics(spec, *image_size).tolist()})
    m = rig.lidar2ego()
    calib["LIDAR_TOP"] = _token(seed, "calib", name, "LIDAR_TOP")
    t["calibrated_sensor"].append({
        "token": calib["LIDAR_TOP"], "sensor_token": tables.sensor_token["LIDAR_TOP"],
        "translation": m[:3, 3].tolist(), "rotation": cv.matrix_to_quaternion(m[:3, :3]).tolist(),
        "camera_intrinsic": []})

    sample_tokens = [_token(seed, "sample", name, k) for k in range(frames)]
    sd_tokens = {ch: [_token(seed, "sd", name, ch, k) for k in range(frames)] for ch in calib}
    last_ann: dict[int, dict] = {}  # actor index -> its latest annotation record
    inst_records: dict[int, dict] = {}
    for k in range(frames):
        t_key = 0.05 + k * KEYFRAME_INTERVAL_US * 1e-6
        ts_key = t0 + int(round(t_key * 1e6))
        t["sample"].append({"token": sample_tokens[k], "timestamp": ts_key,
                            "prev": sample_tokens[k - 1] if k > 0 else "",
                            "next": sample_tokens[k + 1] if k + 1 < frames else "", "scene_token": scene_token})

        def sd_record(ch: str, ts: int, filename: str, fileformat: str, w: int, h: int, k: int = k) -> dict:
            return {"token": sd_tokens[ch][k], "sample_token": sample_tokens[k], "ego_pose_token": sd_tokens[ch][k],
                    "calibrated_sensor_token": calib[ch], "timestamp": ts, "fileformat": fileformat,
                    "is_key_frame": True, "height": h, "width": w, "filename": filename,
                    "prev": sd_tokens[ch][k - 1] if k > 0 else "",
                    "next": sd_tokens[ch][k + 1] if k + 1 < frames else ""}

        cams = sensors.render_cameras(world, t_key, image_size)
        jpegs = []
        for cam in cams:
            ts = t0 + int(round(cam.time * 1e6))
            fname = f"samples/{cam.name}/{logfile}__{cam.name}__{ts}.jpg"
            jpegs.append(sensors.pool().submit(_save_jpeg, cam.image, root / fname))
            t["ego_pose"].append(_pose_record(sd_tokens[cam.name][k], ts, cam.ego2global))
            t["sample_data"].append(sd_record(cam.name, ts, fname, "jpg", image_size[0], image_size[1]))
        points, lidar_counts = sensors.lidar_sweep(world, t_key, rng)
        for job in jpegs:
            job.result()
        fname = f"samples/LIDAR_TOP/{logfile}__LIDAR_TOP__{ts_key}.pcd.bin"
        if lidar:
            points.tofile(root / fname)
        t["ego_pose"].append(_pose_record(sd_tokens["LIDAR_TOP"][k], ts_key, world.ego_pose(t_key)))
        t["sample_data"].append(sd_record("LIDAR_TOP", ts_key, fname, "pcd", 0, 0))

        if annotate:
            radar = sensors.radar_counts(world, t_key)
            visible = np.sum([c.visible for c in cams], axis=0)
            total = np.sum([c.total for c in cams], axis=0)
            boxes = world.boxes(t_key)
            ego_xy = world.ego_pose(t_key)[:2, 3]
            near = np.flatnonzero(np.linalg.norm(boxes[:, :2] - ego_xy, axis=1) <= ANNOTATION_RANGE)
            fields = cv.boxes_to_nuscenes(boxes[near], np.eye(4))
            for j, i in enumerate(near):
                i = int(i)
                frac = visible[i] / total[i] if total[i] > 0 else 0.0
                attr = world.actors.attribute[i]
                rec = {"token": _token(seed, "ann", name, k, i), "sample_token": sample_tokens[k],
                       "instance_token": _token(seed, "instance", name, i),
                       "visibility_token": _visibility_token(frac),
                       "attribute_tokens": [tables.attribute_token[attr]] if attr else [],
                       "translation": fields["translation"][j].tolist(), "size": fields["size"][j].tolist(),
                       "rotation": fields["rotation"][j].tolist(), "prev": "", "next": "",
                       "num_lidar_pts": int(lidar_counts[i]), "num_radar_pts": int(radar[i])}
                if i in last_ann:
                    rec["prev"] = last_ann[i]["token"]
                    last_ann[i]["next"] = rec["token"]
                    inst_records[i]["nbr_annotations"] += 1
                    inst_records[i]["last_annotation_token"] = rec["token"]
                else:
                    cat = world.actors.category[i]
                    inst_records[i] = {"token": rec["instance_token"], "category_token": tables.category_token[cat],
                                       "nbr_annotations": 1, "first_annotation_token": rec["token"],
                                       "last_annotation_token": rec["token"]}
                last_ann[i] = rec
                t["sample_annotation"].append(rec)
        bar.update(1)
    t["instance"] += [inst_records[i] for i in sorted(inst_records)]
    t["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": frames,
                       "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1], "name": name,
                       "description": f"synthetic scene {name} (seed {seed}, {len(world.actors)} actors)"})



