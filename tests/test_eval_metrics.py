"""Metrics from the shards' sidecars equal the devkit's own DetectionEval on the same dataroot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.gt import load_ground_truth
from eval.metrics import compare_summaries, detection_config, devkit_cross_check, evaluate, format_table
from eval.submission import make_submission, write_submission

TOL = 1e-6
"""NDS, mAP, the five mean TP errors, every AP and every per-class TP error agree with DetectionEval to this
(the sidecar's float64 gt_* columns are the devkit's own values)."""


def _assert_agree(mine, theirs):
    assert compare_summaries(mine, theirs) < TOL


@pytest.fixture(scope="module")
def devkit(synth_dataroot):
    """The devkit's view of mini_val: NuScenes, raw GT boxes and the GT after its own filtering."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_gt
    from nuscenes.eval.detection.data_classes import DetectionBox

    root, version = synth_dataroot
    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    raw = load_gt(nusc, "mini_val", DetectionBox)
    filtered = load_gt(nusc, "mini_val", DetectionBox)
    filtered = filter_eval_boxes(nusc, add_center_dist(nusc, filtered), detection_config().class_range)
    return nusc, raw, filtered


@pytest.fixture(scope="module")
def shard_gt(synth_shards):
    return load_ground_truth(sorted(synth_shards["mini_val"].glob("*.arrow")))


def _submission(boxes, tokens, rng=None, *, noise=0.0, drop=0.0, false_pos=0, score=None):
    """Predictions made from devkit GT boxes (optionally perturbed), one list per sample token."""
    results = {}
    for tok in tokens:
        out = []
        for b in boxes[tok]:
            if rng is not None and rng.random() < drop:
                continue
            t = np.array(b.translation, dtype=float)
            size = np.array(b.size, dtype=float)
            vel = np.nan_to_num(np.array(b.velocity, dtype=float))
            rot = np.array(b.rotation, dtype=float)
            attr = b.attribute_name
            if noise:
                t[:2] += rng.normal(0, noise, 2)
                size *= rng.uniform(1 - noise / 2, 1 + noise / 2, 3)
                vel += rng.normal(0, noise, 2)
                half = rng.normal(0, noise) / 2  # yaw noise: rotate about the global z axis
                q = np.array([np.cos(half), 0, 0, np.sin(half)])
                w1, x1, y1, z1 = q
                w2, x2, y2, z2 = rot
                rot = np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                                w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])
                if attr == "vehicle.parked" and rng.random() < 0.3:
                    attr = "vehicle.moving"
            out.append({"sample_token": tok, "translation": t.tolist(), "size": size.tolist(),
                        "rotation": rot.tolist(), "velocity": vel.tolist(), "detection_name": b.detection_name,
                        "detection_score": float(score if score is not None else rng.random()),
                        "attribute_name": attr})
        for _ in range(false_pos):
            ref = out[0]["translation"] if out else [0.0, 0.0, 0.0]
            out.append({"sample_token": tok, "translation": (np.array(ref) + rng.uniform(-20, 20, 3)).tolist(),
                        "size": [2.0, 4.5, 1.6], "rotation": [1.0, 0.0, 0.0, 0.0], "velocity": [0.0, 0.0],
                        "detection_name": "car", "detection_score": float(rng.random() * 0.5),
                        "attribute_name": "vehicle.parked"})
        results[tok] = out
    return make_submission(results)


def _devkit_summary(sub, synth_dataroot, tmp_path):
    root, version = synth_dataroot
    path = write_submission(sub, tmp_path / "results.json")
    return devkit_cross_check(path, root, version, "mini_val", tmp_path / "devkit")


def test_sidecar_ground_truth_matches_devkit_load_gt(devkit, shard_gt):
    _, raw, _ = devkit
    assert set(shard_gt.order) == set(raw.sample_tokens)
    for tok in shard_gt.order:
        mine, theirs = shard_gt.boxes[tok], raw[tok]
        assert len(mine) == len(theirs), tok
        for a, b in zip(mine, theirs):
            assert (a.detection_name, a.attribute_name, a.num_pts) == (b.detection_name, b.attribute_name, b.num_pts)
            for field in ("translation", "size", "rotation"):  # bit for bit
                assert tuple(getattr(a, field)) == tuple(getattr(b, field)), field
            # undefined velocities stay NaN (the devkit leaves those boxes out of mAVE)
            assert np.array_equal(a.velocity, b.velocity, equal_nan=True)
    assert any(np.isnan(b.velocity[0]) for b in raw.all), "the world should have single-frame instances"


def test_perfect_predictions_match_detection_eval(devkit, shard_gt, synth_dataroot, tmp_path):
    _, _, filtered = devkit
    sub = _submission(filtered, shard_gt.order, score=1.0)
    mine = evaluate(sub, shard_gt).summary
    theirs = _devkit_summary(sub, synth_dataroot, tmp_path)
    _assert_agree(mine, theirs)
    # the synthetic world shows every class within its class range, so perfect predictions score 1
    assert {b.detection_name for b in filtered.all} == set(detection_config().class_names)
    for cls in detection_config().class_names:
        assert mine["mean_dist_aps"][cls] == pytest.approx(1.0)
        assert mine["label_tp_errors"][cls]["trans_err"] == 0.0
    assert mine["mean_ap"] == pytest.approx(1.0, abs=1e-9)
    assert all(abs(e) < 1e-9 for e in mine["tp_errors"].values()), mine["tp_errors"]
    assert mine["nd_score"] == pytest.approx(1.0, abs=1e-9)


def test_noisy_predictions_match_detection_eval(devkit, shard_gt, synth_dataroot, tmp_path):
    _, raw, _ = devkit
    rng = np.random.default_rng(0)
    sub = _submission(raw, shard_gt.order, rng, noise=0.4, drop=0.2, false_pos=3)
    mine = evaluate(sub, shard_gt).summary
    theirs = _devkit_summary(sub, synth_dataroot, tmp_path)
    _assert_agree(mine, theirs)
    assert 0.2 < mine["nd_score"] < 0.85
    assert 0.05 < mine["tp_errors"]["trans_err"] < 1.0
    assert 0.0 < mine["tp_errors"]["attr_err"] < 1.0
    assert "NDS:" in format_table(mine)


def test_empty_submission_scores_zero_like_detection_eval(shard_gt, synth_dataroot, tmp_path):
    empty = make_submission({t: [] for t in shard_gt.order})
    mine = evaluate(empty, shard_gt).summary
    assert mine["nd_score"] == 0.0 and mine["mean_ap"] == 0.0
    assert all(v == 1.0 for v in mine["tp_errors"].values())
    assert math.isnan(mine["label_tp_errors"]["traffic_cone"]["vel_err"])
    # DetectionEval cannot read a submission without a single box (its filter cannot tell the box
    # type); one box beyond every class range is removed by its range filter, leaving nothing.
    tok = shard_gt.order[0]
    far = shard_gt.samples[tok].ego2global[:3, 3] + np.array([500.0, 0.0, 0.0])
    nearly = make_submission({t: [] for t in shard_gt.order})
    nearly["results"][tok] = [{"sample_token": tok, "translation": far.tolist(), "size": [2.0, 4.5, 1.6],
                               "rotation": [1.0, 0.0, 0.0, 0.0], "velocity": [0.0, 0.0], "detection_name": "car",
                               "detection_score": 0.9, "attribute_name": "vehicle.parked"}]
    theirs = _devkit_summary(nearly, synth_dataroot, tmp_path)
    _assert_agree(mine, theirs)
    assert compare_summaries(evaluate(nearly, shard_gt).summary, mine) == 0.0


def test_subset_of_samples_is_scored_against_its_own_gt(shard_gt, devkit):
    _, _, filtered = devkit
    tokens = shard_gt.order[:4]
    sub = _submission(filtered, tokens, score=1.0)
    result = evaluate(sub, shard_gt, sample_tokens=tokens)
    assert result.summary["num_samples"] == 4
    assert result.summary["num_gt_boxes"] == sum(len(filtered[t]) for t in tokens)


def _noisy_result(raw, shard_gt):
    rng = np.random.default_rng(3)
    return evaluate(_submission(raw, shard_gt.order, rng, noise=0.3, drop=0.1, false_pos=1), shard_gt)


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_devkit_curves_render_as_png(devkit, shard_gt, tmp_path):
    from eval.plots import render_curves

    result = _noisy_result(devkit[1], shard_gt)
    paths = render_curves(result.md_list, result.metrics, detection_config(), tmp_path, summary=False,
                          classes=["car"], dist_ths=[2.0])
    assert [p.name for p in paths] == ["car_pr.png", "car_tp.png", "dist_pr_2.0.png"]
    assert all(_is_png(p) for p in paths)


@pytest.mark.slow
def test_all_devkit_curves_render(devkit, shard_gt, tmp_path):
    from eval.plots import render_curves

    result = _noisy_result(devkit[1], shard_gt)
    paths = render_curves(result.md_list, result.metrics, detection_config(), tmp_path)
    assert len(paths) == 1 + 2 * 10 + 4 and all(_is_png(p) for p in paths)


def _sidecar(rows: list[dict]):
    """A minimal sidecar table (the columns eval.gt reads) from per-sample dicts."""
    import pyarrow as pa

    from eval.gt import REQUIRED_COLUMNS
    from shards.schema import SIDECAR_SCHEMA

    return pa.table({name: pa.array([r[name] for r in rows], SIDECAR_SCHEMA.field(name).type)
                     for name in REQUIRED_COLUMNS})


def _row(token: str, ts: int, frame: int, boxes, names, pts=None):
    """One sample's sidecar fields; ``boxes [N, 9]`` ego-frame vectors, ego at (100, 200, 0) heading +x."""
    from shards.conventions import boxes_to_nuscenes

    n = len(boxes)
    e2g = np.eye(4)
    e2g[:3, 3] = [100.0, 200.0, 0.0]
    glob = boxes_to_nuscenes(np.asarray(boxes, dtype=np.float64).reshape(n, 9), e2g)
    return {"key": f"scene-0103_{frame:04d}", "sample_token": token, "scene_token": "sc", "scene_name": "scene-0103",
            "timestamp": ts, "frame_index": frame, "ego2global": e2g.ravel().tolist(),
            "gt_names": names, "gt_attrs": [""] * n,
            "num_lidar_pts": pts if pts is not None else [5] * n, "num_radar_pts": [0] * n,
            "ann_tokens": [f"{token}-{i}" for i in range(n)],
            **{f"gt_{k}": np.asarray(glob[k]).tolist() for k in ("translation", "size", "rotation", "velocity")}}


def test_bike_rack_range_and_point_filters_follow_the_devkit():
    rack = [10, 0, 0, 6, 3, 1.5, 0, 0, 0]
    boxes = [rack, [10, 1, 0, 1.7, 0.6, 1.2, 0, 0, 0], [10, -1, 0, 4.5, 2, 1.6, 0, 0, 0],
             [20, 5, 0, 1.7, 0.6, 1.2, 0, 0, 0], [45, 0, 0, 1.7, 0.6, 1.2, 0, 0, 0], [5, 5, 0, 4, 2, 1.5, 0, 0, 0]]
    names = ["static_object.bicycle_rack", "vehicle.bicycle", "vehicle.car", "vehicle.bicycle", "vehicle.bicycle",
             "vehicle.car"]
    gt = load_ground_truth([_sidecar([_row("s0", 0, 0, boxes, names, pts=[3, 3, 3, 3, 3, 0])])])
    assert [b.detection_name for b in gt.boxes["s0"]] == ["bicycle", "car", "bicycle", "bicycle", "car"]
    assert gt.boxes["s0"][0].ego_translation == pytest.approx((10.0, 1.0, 0.0))
    kept = gt.filtered(detection_config())["s0"]
    # bicycle in the rack: out; car in the rack: in; bicycle at 45 m (> 40 m): out; car with 0 points: out
    assert [(b.detection_name, b.translation[0] - 100.0) for b in kept] == [("car", 10.0), ("bicycle", 20.0)]


def test_sidecar_without_float64_columns_is_refused():
    """Shards of schema version 1 (no gt_translation ...) name the missing columns instead of scoring wrongly."""
    from eval.gt import GroundTruthError

    table = _sidecar([_row("s0", 0, 0, [[10, 0, 0, 4.5, 2, 1.6, 1.0, float("nan"), 0]], ["vehicle.car"])])
    assert np.isnan(table.column("gt_velocity")[0].as_py()[0][0])
    assert np.isnan(load_ground_truth([table]).boxes["s0"][0].velocity[0])
    old = table.drop_columns(["gt_rotation", "gt_velocity"])
    with pytest.raises(GroundTruthError, match=r"<table> lacks column\(s\) \['gt_rotation', 'gt_velocity'\]"):
        load_ground_truth([old])
