"""eval.depth: the depth-quality table of a depth-based model against LiDAR (scripts/bevnext_depth_quality.py and
the depth columns of benchmarks/ablation_bevnext.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from bev_model import build_model, model_config_from_dict
from bev_model.bevnext.depth import depth_targets
from bev_model.bevnext.synthetic import with_points
from bev_model.synthetic import make_batch
from eval.depth import GROUPS, depth_quality, format_table, on_objects, overall, patch_errors, summarize

HW = (48, 128)
CAMS = 2


def _sample():
    batch = with_points(make_batch(1, 1, HW, num_cams=CAMS, num_boxes=6, bev_aug=True, seed=4), per_box=300)
    boxes, _, _ = batch.detection_targets("cpu")
    return batch, batch.points[0], boxes[0], batch.ego2img[0, -1].float()


def _depth_from_bins(bins: torch.Tensor, num_bins: int) -> torch.Tensor:
    """``[N, h, w]`` bin indices (-1: none) -> one-hot probabilities ``[N, D, h, w]`` (uniform where -1)."""
    p = F.one_hot(bins.clamp(0, num_bins - 1), num_bins).permute(0, 3, 1, 2).float()
    return torch.where((bins >= 0)[:, None], p, torch.full_like(p, 1.0 / num_bins))


def test_on_objects_follows_each_box_length_along_its_heading():
    box = torch.tensor([[10.0, -3.0, 1.0, 4.0, 1.0, 1.5, math.pi / 3]])
    heading = torch.tensor([math.cos(math.pi / 3), math.sin(math.pi / 3), 0.0])
    side = torch.tensor([-math.sin(math.pi / 3), math.cos(math.pi / 3), 0.0])
    c = box[0, :3]
    pts = torch.stack([c, c + 1.8 * heading, c + 2.2 * heading, c + 0.4 * side, c + 0.6 * side,
                       c + torch.tensor([0.0, 0.0, 0.8])])
    assert on_objects(pts, box).tolist() == [True, True, False, True, False, False]
    assert not on_objects(pts, box[:0]).any()


def test_the_lidar_depth_itself_scores_perfectly_and_a_shift_is_counted_in_bins():
    model_cfg = model_config_from_dict({"preset": "bevnext_tiny"})
    cfg = model_cfg.depth
    _, points, boxes, e2i = _sample()
    obj = on_objects(points[:, :3], boxes)
    assert 0 < int(obj.sum()) < len(obj)
    tables = {}
    for shift in (0, 2, -5):
        per_group = {}
        for g, sel in zip(GROUPS, (points[obj], points[~obj])):
            bins = depth_targets([sel[:, :3]], e2i[None], HW, cfg)[0]
            per_group[g] = patch_errors(_depth_from_bins(bins + shift * (bins >= 0), cfg.num_bins), sel, boxes, e2i,
                                        HW, cfg)
        # each group's depth scored against its own LiDAR: only that group's rows are exact
        tables[shift] = {g: overall(summarize([per_group[g]], cfg.num_bins))[g] for g in GROUPS}
    for g in GROUPS:
        exact, two, five = tables[0][g], tables[2][g], tables[-5][g]
        assert exact.n > 0 and exact.within_1 == exact.within_3 == 1.0 and exact.p_true == pytest.approx(1.0)
        # +2 bins (clamped at the last bin: those patches come closer); -5 clamps at bin 0 near the camera
        assert two.within_1 < 0.2 and two.within_3 == 1.0 and two.p_true < 0.2
        assert five.within_3 < 0.5 and five.n == exact.n


def test_rows_cover_every_range_and_the_table_prints_them():
    cfg = model_config_from_dict({"preset": "bevnext_tiny"}).depth
    part = {g: torch.tensor([[2.0, 0.0, 0.9], [12.0, 2.0, 0.2], [30.0, 5.0, 0.0], [40.0, 1.0, 0.5]]) for g in GROUPS}
    rows = summarize([part, part], cfg.num_bins)
    assert [(r.group, r.lo, r.hi, r.n) for r in rows] == [
        (g, lo, hi, n) for g in GROUPS for lo, hi, n in ((0, 59, 8), (0, 10, 2), (10, 25, 2), (25, 59, 4))]
    assert (rows[0].within_1, rows[0].within_3, rows[0].p_true) == (0.5, 0.75, pytest.approx(0.4))
    assert rows[3].within_1 == 0.5 and rows[3].within_3 == 0.5
    text = format_table(rows)
    assert len(text.splitlines()) == 9 and "on objects" in text and "25-59" in text


def test_depth_quality_of_a_model_and_its_errors():
    torch.manual_seed(0)
    model = build_model(model_config_from_dict({"preset": "bevnext_tiny", "bev": {"bev_h": 32, "bev_w": 32}})).eval()
    batch, _, _, _ = _sample()
    rows = depth_quality(model, [batch, batch], samples=1)
    got = overall(rows)
    assert set(got) == set(GROUPS)
    assert all(0 <= r.within_1 <= r.within_3 <= 1 and 0 < r.p_true < 1 for r in rows)
    assert got["on objects"].n + got["background"].n >= (depth_targets(batch.points, batch.ego2img[:, -1].float(), HW,
                                                                       model.cfg.depth) >= 0).sum()
    with pytest.raises(ValueError, match="no `points`"):
        depth_quality(model, [dataclasses.replace(batch, points=None)])
    with pytest.raises(ValueError, match="yielded no batch"):
        depth_quality(model, [])
    with pytest.raises(ValueError, match="depth-based model"):
        depth_quality(torch.nn.Linear(2, 2), [batch])
