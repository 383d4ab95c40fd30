"""Submission building and validation (eval.submission): frames, limits and clear errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from eval.submission import (
    MAX_BOXES_PER_SAMPLE,
    SubmissionError,
    load_submission,
    make_submission,
    sample_results,
    to_eval_boxes,
    validate_submission,
)
from shards.conventions import ATTRIBUTES, CLASSES, boxes_from_nuscenes, pose_matrix


def _pose() -> np.ndarray:
    yaw = 0.7
    return pose_matrix([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)], [612.0, 1650.5, 0.0])


def _boxes(n: int, rng: np.random.Generator) -> np.ndarray:
    b = np.zeros((n, 9))
    b[:, :2] = rng.uniform(-40, 40, (n, 2))
    b[:, 2] = rng.uniform(-1, 1, n)
    b[:, 3:6] = rng.uniform(0.5, 5, (n, 3))
    b[:, 6] = rng.uniform(-np.pi, np.pi, n)
    b[:, 7:9] = rng.normal(0, 3, (n, 2))
    return b


def test_sample_results_go_to_global_frame_and_back():
    rng = np.random.default_rng(0)
    boxes, e2g = _boxes(20, rng), _pose()
    labels = rng.integers(0, len(CLASSES), 20)
    res = sample_results("tok", boxes, rng.random(20), labels, np.full(20, -1), e2g)
    assert len(res) == 20
    back = boxes_from_nuscenes([r["translation"] for r in res], [r["size"] for r in res],
                               [r["rotation"] for r in res], [r["velocity"] for r in res], e2g)
    order = np.argsort([-r["detection_score"] for r in res])
    assert np.allclose(np.sort(back[:, 0]), np.sort(boxes[:, 0]), atol=1e-9)
    # each returned box maps back onto one input box (sorted by score, so match by position)
    for r, b in zip(res, back):
        i = int(np.argmin(np.abs(boxes[:, :3] - b[:3]).sum(1)))
        assert np.allclose(b[[0, 1, 2, 3, 4, 5, 7, 8]], boxes[i, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-9)
        assert np.isclose(np.cos(b[6] - boxes[i, 6]), 1.0)
        assert r["size"] == pytest.approx([boxes[i, 4], boxes[i, 3], boxes[i, 5]])  # nuScenes w, l, h
    assert order.tolist() == list(range(20))  # written best first
    validate_submission(make_submission({"tok": res}), ["tok"])


def test_sample_results_keep_best_500_and_valid_attributes():
    rng = np.random.default_rng(1)
    n = 700
    labels = rng.integers(-1, len(CLASSES), n)
    attrs = rng.integers(-1, len(ATTRIBUTES), n)
    scores = rng.random(n)
    res = sample_results("tok", _boxes(n, rng), scores, labels, attrs, _pose())
    assert len(res) == MAX_BOXES_PER_SAMPLE
    kept = np.sort(scores[labels >= 0])[::-1][:MAX_BOXES_PER_SAMPLE]
    assert np.allclose([r["detection_score"] for r in res], kept)
    validate_submission(make_submission({"tok": res}), ["tok"])  # every attribute fits its class
    cones = [r for r in res if r["detection_name"] == "traffic_cone"]
    assert cones and all(r["attribute_name"] == "" for r in cones)


def _valid() -> dict:
    rng = np.random.default_rng(2)
    res = {t: sample_results(t, _boxes(5, rng), rng.random(5), rng.integers(0, 10, 5), np.full(5, -1), _pose())
           for t in ("s1", "s2", "s3")}
    return make_submission(res)


def test_more_than_500_boxes_is_an_error_naming_the_sample():
    sub = _valid()
    sub["results"]["s2"] = sub["results"]["s2"] * 101  # 505 boxes
    with pytest.raises(SubmissionError, match=r"sample s2: 505 boxes, at most 500"):
        validate_submission(sub, ["s1", "s2", "s3"])


def test_wrong_class_name_is_an_error_naming_sample_and_class():
    sub = _valid()
    sub["results"]["s3"][1]["detection_name"] = "vehicle.car"
    with pytest.raises(SubmissionError, match=r"sample s3 box 1: detection_name 'vehicle.car'"):
        validate_submission(sub)


def test_missing_sample_tokens_are_named():
    sub = _valid()
    del sub["results"]["s2"]
    with pytest.raises(SubmissionError, match=r"lacks 1 of 3 sample tokens, e.g. s2"):
        validate_submission(sub, ["s1", "s2", "s3"])
    with pytest.raises(SubmissionError, match=r"not in the evaluated set, e.g. s3"):
        validate_submission(_valid(), ["s1", "s2"])


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("meta",), None, "no 'meta' field"),
        (("meta", "use_camera"), "yes", r"meta\['use_camera'\] must be true or false"),
        (("results", "s1", 0, "attribute_name"), "pedestrian.moving-x", "is not valid for class"),
        (("results", "s1", 0, "detection_score"), 1, "detection_score must be a finite float"),
        (("results", "s1", 0, "translation"), [1.0, 2.0], "'translation' must be a list of 3 numbers"),
        (("results", "s1", 0, "rotation"), [1.0, 0.0, float("nan"), 0.0], "'rotation' has a non-finite value"),
        (("results", "s1", 0, "sample_token"), "s2", "differs from its key"),
        (("results", "s1", 0, "size"), [1.0, 0.0, 1.5], r"size \[1.0, 0.0, 1.5\] must be positive"),
        (("results", "s1", 0, "rotation"), [0.0, 0.0, 0.0, 0.0], "zero quaternion"),
    ],
)
def test_malformed_boxes_get_clear_errors(path, value, message):
    sub = copy.deepcopy(_valid())
    target = sub
    for p in path[:-1]:
        target = target[p]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(SubmissionError, match=message):
        validate_submission(sub)


def test_valid_submission_loads_into_devkit_boxes():
    sub = json.loads(json.dumps(_valid()))  # through JSON like a file
    validate_submission(sub, ["s1", "s2", "s3"])
    eb = to_eval_boxes(sub, ["s3", "s1"])
    assert eb.sample_tokens == ["s3", "s1"]
    assert len(eb["s1"]) == 5 and eb["s1"][0].detection_name in CLASSES


@pytest.mark.parametrize(("content", "message"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"meta": "\xff\xfe"}', "not valid UTF-8 JSON"),
])
def test_unreadable_submission_files_are_named(tmp_path, content, message):
    path = tmp_path / "results.json"
    path.write_bytes(content)
    with pytest.raises(SubmissionError, match=message) as e:
        load_submission(path)
    assert str(path) in str(e.value)
