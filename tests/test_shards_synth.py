"""Synthetic world: devkit loads it, scenes and sensors look like nuScenes, objects are plausible."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from shards import conventions as cv
from shards.synth import scene_names, synthesize
from shards.synth.world import CLASS_SPECS, EGO_CLEARANCE, lateral_extent, make_world


@pytest.fixture(scope="module")
def nusc(synth_dataroot):
    from nuscenes.nuscenes import NuScenes

    root, version = synth_dataroot
    return NuScenes(version, str(root), verbose=False)


def test_devkit_loads_all_tables_with_the_mini_split_scene_names(nusc):
    from nuscenes.utils.splits import mini_train, mini_val

    for table in nusc.table_names:
        assert len(getattr(nusc, table)) > 0, table
    assert sorted(s["name"] for s in nusc.scene) == sorted(mini_train + mini_val)
    assert all(s["nbr_samples"] == 6 for s in nusc.scene)


def test_keyframes_at_2hz_with_per_camera_timestamps_and_poses(nusc):
    for scene in nusc.scene:
        samples = []
        tok = scene["first_sample_token"]
        while tok:
            samples.append(nusc.get("sample", tok))
            tok = samples[-1]["next"]
        assert len(samples) == 6 and samples[-1]["token"] == scene["last_sample_token"]
        assert np.all(np.diff([s["timestamp"] for s in samples]) == 500_000)
    sample = nusc.sample[3]
    assert set(sample["data"]) == {*cv.CAMERAS, "LIDAR_TOP"}
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    assert lidar["timestamp"] == sample["timestamp"]
    cams = [nusc.get("sample_data", sample["data"][c]) for c in cv.CAMERAS]
    stamps = [c["timestamp"] for c in cams]
    assert len(set(stamps)) == 6 and max(abs(t - sample["timestamp"]) for t in stamps) < 60_000
    poses = [nusc.get("ego_pose", c["ego_pose_token"])["translation"] for c in cams]
    assert len({tuple(np.round(p, 6)) for p in poses}) == 6  # the ego moves between exposures


def test_camera_rig_is_nuscenes_like(nusc):
    sample = nusc.sample[0]
    yaws = []
    for cam in cv.CAMERAS:
        sd = nusc.get("sample_data", sample["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        k = np.asarray(cs["camera_intrinsic"])
        assert (sd["width"], sd["height"]) == (320, 180)
        assert 0.3 * 320 < k[0, 0] < 0.9 * 320 and abs(k[0, 2] - 160) < 10 and abs(k[1, 2] - 90) < 10
        axis = cv.quaternion_to_matrix(cs["rotation"])[:, 2]  # optical axis in the ego frame
        assert abs(axis[2]) < 1e-6 and 1.4 < cs["translation"][2] < 1.7
        yaws.append(np.degrees(np.arctan2(axis[1], axis[0])))
    np.testing.assert_allclose(yaws, [0, -55, 55, 180, 110, -110], atol=1e-6)


def test_objects_cover_every_class_with_valid_attributes_and_sizes(nusc):
    by_class: dict[str, list] = {c: [] for c in cv.CLASSES}
    for ann in nusc.sample_annotation:
        lab = cv.category_to_class(ann["category_name"])
        attrs = [nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
        assert len(attrs) <= 1
        if lab < 0:
            continue
        cls = cv.CLASSES[lab]
        assert all(a in cv.CLASS_ATTRIBUTES[cls] for a in attrs), (cls, attrs)
        by_class[cls].append(ann)
        assert ann["visibility_token"] in {"1", "2", "3", "4"}
    for cls, anns in by_class.items():
        assert len(anns) >= 5, cls
        wlh = np.median([a["size"] for a in anns], axis=0)
        mean_lwh = np.array(CLASS_SPECS[cls].size)
        np.testing.assert_allclose(wlh[[1, 0, 2]], mean_lwh, rtol=0.35, err_msg=cls)


def test_density_and_lidar_points_near_the_ego(nusc):
    counts, near_pts = [], []
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ego = np.array(nusc.get("ego_pose", sd["ego_pose_token"])["translation"])
        anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
        d = np.array([np.linalg.norm(np.array(a["translation"][:2]) - ego[:2]) for a in anns])
        counts.append(int((d < 50).sum()))
        near_pts += [a["num_lidar_pts"] for a, di in zip(anns, d) if di < 20 and a["visibility_token"] == "4"]
    assert 15 <= np.mean(counts) <= 40, np.mean(counts)
    assert len(near_pts) > 50 and np.mean(np.array(near_pts) > 0) > 0.9  # visible objects are hit by the LiDAR


def _scene_samples(nusc, scene):
    tok = scene["first_sample_token"]
    while tok:
        sample = nusc.get("sample", tok)
        yield sample
        tok = sample["next"]


def test_every_scene_shows_every_class_within_its_class_range_with_points(nusc):
    """So perfect predictions score NDS 1: each class has a box the devkit keeps (range, lidar + radar points)."""
    from nuscenes.eval.common.config import config_factory

    class_range = config_factory("detection_cvpr_2019").class_range
    for scene in nusc.scene:
        kept = set()
        for sample in _scene_samples(nusc, scene):
            ego = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
            for tok in sample["anns"]:
                ann = nusc.get("sample_annotation", tok)
                lab = cv.category_to_class(ann["category_name"])
                dist = np.linalg.norm(np.subtract(ann["translation"][:2], ego["translation"][:2]))
                if lab >= 0 and dist <= class_range[cv.CLASSES[lab]] and ann["num_lidar_pts"] + ann["num_radar_pts"]:
                    kept.add(cv.CLASSES[lab])
        assert kept == set(cv.CLASSES), (scene["name"], set(cv.CLASSES) - kept)


def _box_distance(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Distance of ``points [P, 3]`` (ego frame) to the solid box ``[9]`` (0 inside)."""
    c, s = np.cos(box[6]), np.sin(box[6])
    rel = points - box[:3]
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], -1)
    return np.linalg.norm(np.maximum(np.abs(local) - box[3:6] / 2, 0.0), axis=1)


def test_no_box_stands_on_or_beside_the_ego_path(nusc, synth_shards):
    """Every footprint keeps EGO_CLEARANCE from the ego's path, so no camera sees a box from 1-2 m."""
    from shards.reader import open_sidecar, sample_matrices

    for seed in (0, 1):
        for name in scene_names("v1.0-mini"):
            actors = make_world(seed, name, 10.0).actors
            gap = np.abs(actors.d) - lateral_extent(actors.size[:, :2], actors.yaw_offset)
            assert gap.min() >= EGO_CLEARANCE, (seed, name, gap.min())
    nearest = np.inf
    for split in synth_shards.values():
        for sidecar in sorted(split.glob("*.arrow")):
            for row in open_sidecar(sidecar).to_pylist():
                m = sample_matrices(row)
                ego2cam = cv.ego2cam(m["cam2ego"], m["cam_ego2global"], m["ego2global"][None])
                cams = np.linalg.inv(ego2cam)[:, :3, 3]  # camera centres [6, 3], keyframe ego frame
                for box in np.asarray(row["gt_boxes"], dtype=np.float64).reshape(-1, 9):
                    assert abs(box[1]) > EGO_CLEARANCE or abs(box[0]) > 10.0, (row["key"], box)
                    nearest = min(nearest, _box_distance(cams, box).min())
    assert EGO_CLEARANCE - 0.6 < nearest < EGO_CLEARANCE + 1.0, nearest  # cameras sit <= 0.5 m off the path


def test_moving_objects_keep_their_instance_and_velocity(nusc):
    moving = 0
    for inst in nusc.instance:
        if inst["nbr_annotations"] < 3:
            continue
        ann = nusc.get("sample_annotation", inst["first_annotation_token"])
        nxt = nusc.get("sample_annotation", ann["next"])
        v = nusc.box_velocity(nxt["token"])[:2]
        speed = np.linalg.norm(v)
        yaw = cv.quaternion_to_matrix(nxt["rotation"])[:2, 0]
        attrs = [nusc.get("attribute", a)["name"] for a in nxt["attribute_tokens"]]
        if speed > 2.0:
            moving += 1
            assert abs(abs(np.dot(v / speed, yaw)) - 1.0) < 0.02  # moves along its heading
            assert attrs and attrs[0] in ("vehicle.moving", "cycle.with_rider", "pedestrian.moving")
    assert moving >= 10


def test_scene_layout_depends_only_on_seed_and_scene_name(synth_dataroot, tmp_path):
    """scene-0103 (mini_val) is the same whether or not the train scenes were generated; JPEGs identical."""
    root, _ = synth_dataroot
    small = synthesize(tmp_path / "one", scenes=1, frames_per_scene=6, image_size=(320, 180), seed=0,
                       progress=False)
    names = sorted(p.name for p in (small / "samples" / "CAM_FRONT").glob("*scene-0103*"))
    assert len(names) == 6
    for n in names:
        a = (small / "samples" / "CAM_FRONT" / n).read_bytes()
        b = (root / "samples" / "CAM_FRONT" / n).read_bytes()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    other = make_world(1, "scene-0103", 3.0).boxes(0.0)
    assert not np.allclose(make_world(0, "scene-0103", 3.0).boxes(0.0)[:3, :2], other[:3, :2])


def test_scene_names_follow_the_devkit_splits():
    from nuscenes.utils.splits import train, val

    assert scene_names("v1.0-trainval", 2) == train[:2] + val[:2]
    assert scene_names("v1.0-mini", 1) == ["scene-0061", "scene-0103"]
    with pytest.raises(ValueError, match="unknown version"):
        scene_names("v2.0-mini")


def test_lidar_sweeps_are_nuscenes_pcd_bin(nusc, synth_dataroot):
    root, _ = synth_dataroot
    sd = nusc.get("sample_data", nusc.sample[0]["data"]["LIDAR_TOP"])
    pts = np.fromfile(root / sd["filename"], dtype=np.float32)
    assert pts.size % 5 == 0 and pts.size // 5 > 10_000
    pts = pts.reshape(-1, 5)
    assert set(np.unique(pts[:, 4]).astype(int)) <= set(range(32))
    assert np.linalg.norm(pts[:, :3], axis=1).max() <= 70.5


def test_devkit_detection_eval_runs_on_the_synthetic_val_split(nusc, tmp_path):
    """Ground truth submitted as predictions scores (almost) perfectly with the devkit's DetectionEval."""
    import json

    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    from nuscenes.utils.splits import mini_val

    results = {}
    for sample in nusc.sample:
        if nusc.get("scene", sample["scene_token"])["name"] not in mini_val:
            continue
        preds = []
        for tok in sample["anns"]:
            ann = nusc.get("sample_annotation", tok)
            lab = cv.category_to_class(ann["category_name"])
            if lab < 0:
                continue
            attrs = [nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
            preds.append({"sample_token": sample["token"], "translation": ann["translation"], "size": ann["size"],
                          "rotation": ann["rotation"],
                          "velocity": np.nan_to_num(nusc.box_velocity(tok)[:2]).tolist(),
                          "detection_name": cv.CLASSES[lab],
                          "detection_score": 0.9 if ann["num_lidar_pts"] + ann["num_radar_pts"] > 0 else 0.05,
                          "attribute_name": attrs[0] if attrs else ""})
        results[sample["token"]] = preds
    meta = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": meta, "results": results}))
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), "mini_val", str(tmp_path),
                       verbose=False)
    metrics, _ = ev.evaluate()
    assert metrics.mean_ap > 0.95 and metrics.nd_score > 0.9, (metrics.mean_ap, metrics.nd_score)
