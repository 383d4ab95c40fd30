"""eval.baselines: the constant-boxes prior is one fixed ego-frame box set, valid for the devkit."""

import numpy as np

from eval.baselines import constant_boxes, constant_submission, train_boxes
from eval.submission import validate_submission
from shards.conventions import boxes_from_nuscenes


def test_constant_boxes_cluster_each_class():
    rng = np.random.default_rng(0)
    boxes = np.zeros((200, 9))
    boxes[:100, :2] = rng.normal([10, 0], 0.1, (100, 2))
    boxes[100:, :2] = rng.normal([-10, 5], 0.1, (100, 2))
    boxes[:, 3:6] = [4.5, 1.9, 1.6]
    labels = np.zeros(200, dtype=np.int64)
    b, s, lab = constant_boxes(boxes, labels, per_class=2)
    assert len(b) == 2 and (lab == 0).all()
    centres = sorted(map(tuple, np.round(b[:, :2])))
    assert centres == [(-10.0, 5.0), (10.0, 0.0)]
    np.testing.assert_allclose(s, [0.5, 0.5])


def test_constant_submission_is_the_same_ego_boxes_for_every_sample(synth_shards):
    sub = constant_submission(str(synth_shards["mini_train"]), str(synth_shards["mini_val"]), per_class=3)
    validate_submission(sub)
    from eval.api import load_shard_ground_truth
    from pipeline.urls import IOOptions

    gt, _ = load_shard_ground_truth(str(synth_shards["mini_val"]), IOOptions())
    ego = []
    for tok, boxes in list(sub["results"].items())[:2]:
        e2g = gt.samples[tok].ego2global
        ego.append(boxes_from_nuscenes([b["translation"] for b in boxes], [b["size"] for b in boxes],
                                       [b["rotation"] for b in boxes], [b["velocity"] for b in boxes], e2g))
    np.testing.assert_allclose(ego[0], ego[1], atol=1e-6)
    b, lab = train_boxes(str(synth_shards["mini_train"]))
    assert len(ego[0]) <= 3 * len(np.unique(lab))
