"""eval.centres: a dense model's heatmap recall and regression errors at the GT centres (the centre columns of
benchmarks/ablation_bevnext.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bev_model import build_model, get_preset, model_config_from_dict
from bev_model.bevnext.head import REG_HEADS, center_targets
from bev_model.synthetic import make_batch
from eval.centres import box_stats, centre_errors, centre_quality, format_per_class


def _ideal(seed: int = 5):
    """A batch's targets and the maps a perfect model would output (heat = target heatmap, codes at centres)."""
    cfg = get_preset("bevnext_tiny")
    grid = cfg.bev.grid
    batch = make_batch(2, 1, (32, 64), num_cams=1, num_boxes=8, bev_aug=True, seed=seed)
    boxes, labels, attrs = batch.detection_targets("cpu")
    t = center_targets(boxes, labels, attrs, grid, cfg.num_classes, 0.1, 1)
    maps = torch.zeros(2, 10, grid.H * grid.W)
    for b in range(2):
        maps[b, :, t["ind"][b][t["mask"][b]]] = t["code"][b][t["mask"][b]].t()
    reg = dict(zip([k for k, _ in REG_HEADS], maps.view(2, 10, grid.H, grid.W).split([c for _, c in REG_HEADS], 1)))
    heat = torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4))
    return heat, reg, t, labels


def test_a_perfect_model_scores_perfectly_and_each_error_is_in_its_units():
    heat, reg, t, labels = _ideal()
    G = int(t["mask"].sum())
    e = centre_errors(heat, reg, t, labels)
    assert e["label"].tolist() == torch.cat(labels).tolist() and bool(e["moving"].all())
    assert e["rot_norm"] == pytest.approx(torch.ones(G))
    assert len(e["hit"]) == len(t["ind"][0][t["mask"][0]].unique()) + len(t["ind"][1][t["mask"][1]].unique())
    assert float(e["hit"].mean()) == 1.0 and e["yaw"].shape == (G,) and float(e["yaw"].max()) < 1e-4
    assert e["vel"].shape == (G,) and float(e["vel"].max()) < 1e-5
    speed = torch.cat([t["code"][b][t["mask"][b]][:, 8:10] for b in range(2)]).norm(dim=-1)
    assert e["speed"] == pytest.approx(speed) and float(speed.max()) > 0
    # velocities off by (3, 4) m/s, headings reversed, the heatmap shifted by 3 cells along x
    bad = {k: v.clone() for k, v in reg.items()}
    bad["vel"] += torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    bad["rot"] = -bad["rot"]
    e = centre_errors(heat.roll(3, dims=3), bad, t, labels)
    assert e["vel"] == pytest.approx(torch.full((G,), 5.0), abs=1e-4)
    assert e["yaw"] == pytest.approx(torch.full((G,), math.pi), abs=1e-4)
    assert float(e["hit"].mean()) < 0.5


def test_velocity_error_leaves_out_gt_without_velocity():
    heat, reg, t, labels = _ideal()
    t["code"][0, 0, 8] = float("nan")
    e = centre_errors(heat, reg, t, labels)
    assert int(e["moving"].sum()) == int(t["mask"].sum()) - 1 and bool(torch.isfinite(e["vel"][e["moving"]]).all())
    stats = box_stats(e)
    assert stats["moving"] == int(t["mask"].sum()) - 1 and stats["vel_err"] < 1e-5 and stats["yaw_err"] < 1e-4


def test_centre_quality_runs_a_temporal_model_on_single_frame_batches():
    torch.manual_seed(0)
    cfg = model_config_from_dict({"preset": "bevnext_tiny", "bev": {"bev_h": 16, "bev_w": 16},
                                  "temporal": {"offsets": [-1, 0]}})
    model = build_model(cfg).eval()
    batches = [make_batch(1, 1, (32, 96), num_cams=2, num_boxes=6, seed=s) for s in range(3)]
    stats = centre_quality(model, batches, samples=2)
    assert stats.samples == 2 and stats.objects > 0 and stats.moving > 0
    assert 0 <= stats.recall <= 1 and math.isfinite(stats.vel_err) and 0 <= stats.yaw_err <= math.pi
    assert 0 <= stats.axis_err <= min(stats.yaw_err, math.pi / 2) and stats.speed > 0
    assert sum(r["boxes"] for r in stats.per_class.values()) >= stats.objects  # boxes sharing a cell count apart
    assert sum(r["moving"] for r in stats.per_class.values()) == stats.moving
    assert len(format_per_class(stats).splitlines()) == 1 + len(stats.per_class)
    with pytest.raises(ValueError, match="yielded no batch"):
        centre_quality(model, [])
    with pytest.raises(ValueError, match="dense-head model"):
        centre_quality(torch.nn.Linear(1, 1), batches)


def test_the_command_prints_the_stats_of_a_checkpoint(tmp_path, synth_shards_lidar, capsys):
    import json

    from eval.centres import main

    section = {"preset": "bevnext_tiny", "bev": {"bev_h": 16, "bev_w": 16}}
    torch.manual_seed(0)
    torch.save(build_model(model_config_from_dict(dict(section))).state_dict(), tmp_path / "weights_ema_fp32.pt")
    (tmp_path / "config.yaml").write_text(json.dumps({"model": section, "data": {"image_size": [32, 96]}}))
    main(["--checkpoint", str(tmp_path / "weights_ema_fp32.pt"), "--shards", str(synth_shards_lidar), "--samples", "3"])
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["samples"] == 3 and got["objects"] > 0 and 0 <= got["recall"] <= 1 and got["speed"] > 0
