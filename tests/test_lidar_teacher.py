"""The LiDAR teacher trains: it overfits one synthetic batch (loss < 10 % of its start, every GT found within
0.5 m). Slow on a loaded 2-core machine (400 steps): ``pytest -m slow tests/test_lidar_teacher.py``."""

import numpy as np
import pytest
import torch

from bev_model import build_model, model_config_from_dict
from bev_model.bev_grid import BEVGrid
from bev_model.lidar.centerpoint import heatmap_proposals
from bev_model.lidar.synthetic import box_points
from bev_model.synthetic import make_batch
from shards.conventions import transform_boxes
from shards.typed_config import ConfigError

SMALL = {"preset": "lidar_tiny", "grid": {"bev_h": 25, "bev_w": 25}, "pillar": {"stride": 1, "channels": 16},
         "backbone": {"layer_channels": [32, 64], "layer_nums": [1, 1], "layer_strides": [1, 2], "fpn_channels": 32},
         "embed_dims": 64, "head": {"num_queries": 10, "num_hybrid": 20, "num_layers": 2, "ffn_dims": 128},
         "heatmap": {"shared_channels": 16}}


def _batch(seed: int = 1):
    batch = make_batch(batch_size=2, frames=1, image_hw=(32, 88), num_boxes=4, bev_aug=True, seed=seed)
    rng = np.random.default_rng(seed)
    batch.points = [box_points(b, rng) for b in batch.gt_boxes]
    return batch


def test_the_teacher_losses_and_predictions_have_the_contract_shapes():
    torch.manual_seed(0)
    model = build_model(model_config_from_dict(SMALL))
    batch = _batch()
    out = model.forward_train(batch)
    assert {"loss", "bev.cls", "bev.box", "bev.attr", "aux.heatmap", "bev.d0.cls"} <= set(out)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.pillars.linear.weight.grad.abs().sum() > 0
    dets = model.eval().predict(batch)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 9 and model.new_history() is None
    batch.points = None
    with pytest.raises(ValueError, match="load_points"):
        model.predict(batch)


def test_heatmap_proposals_are_the_best_peaks_at_their_cell_centres_with_the_bev_feature_there():
    """Two classes on a 4x5 grid of 2 m cells: peaks at (y=1, x=3) class 1 (0.9) and (y=2, x=0) class 0 (0.6); the
    0.8 next to the 0.9 is not a peak (3x3 max-pool NMS), so it is not among the two best proposals."""
    grid = BEVGrid((-5.0, -4.0, -2.0, 5.0, 4.0, 2.0), H=4, W=5)
    prob = torch.full((1, 2, 4, 5), 0.01)
    prob[0, 1, 1, 3], prob[0, 1, 1, 4], prob[0, 0, 2, 0] = 0.9, 0.8, 0.6
    bev = torch.arange(3 * 20, dtype=torch.float32).reshape(1, 3, 4, 5)
    p = heatmap_proposals(torch.logit(prob), bev, grid, k=2, prior_size=(4.0, 2.0, 1.5))
    assert p["labels"].tolist() == [[1, 0]] and p["kept"].tolist() == [[True, True]]
    assert torch.allclose(p["scores"], torch.tensor([[0.9, 0.6]]))
    # x = -5 + (ix + 0.5) * 2, y = -4 + (iy + 0.5) * 2, z mid-range
    assert torch.allclose(p["boxes"][0, :, :3], torch.tensor([[2.0, -1.0, 0.0], [-4.0, 1.0, 0.0]]))
    assert torch.allclose(p["boxes"][0, 0, 3:], torch.tensor([4.0, 2.0, 1.5, 0.0, 0.0, 0.0]))
    assert torch.allclose(p["cls_prob"][0, 0], torch.tensor([0.01, 0.9]))
    assert torch.equal(p["content"][0, 0], bev[0, :, 1, 3]) and torch.equal(p["content"][0, 1], bev[0, :, 2, 0])
    # one class on a 1x3 grid [0.5, 0.9, 0.7]: one peak; the non-peaks fill in, best first, not kept
    line = BEVGrid((0.0, 0.0, -1.0, 3.0, 1.0, 1.0), H=1, W=3)
    p = heatmap_proposals(torch.logit(torch.tensor([[[[0.5, 0.9, 0.7]]]])), torch.zeros(1, 2, 1, 3), line, k=3,
                          prior_size=(4.0, 2.0, 1.5))
    assert p["boxes"][0, :, 0].tolist() == [1.5, 2.5, 0.5] and p["kept"].tolist() == [[True, False, False]]
    with pytest.raises(ValueError, match="grid"):
        heatmap_proposals(torch.zeros(1, 2, 3, 5), bev, grid, k=2, prior_size=(4.0, 2.0, 1.5))


def test_heatmap_queries_need_the_heatmap_and_learned_only_teachers_still_build():
    with pytest.raises(ConfigError, match="heatmap.enabled"):
        model_config_from_dict({**SMALL, "heatmap": {"enabled": False}})
    with pytest.raises(ConfigError, match="head.num_hybrid"):
        model_config_from_dict({**SMALL, "head": {**SMALL["head"], "num_hybrid": 0}})
    cfg = model_config_from_dict({**SMALL, "head": {**SMALL["head"], "hybrid": "none", "num_hybrid": 0}})
    out = build_model(cfg).forward_train(_batch())
    assert out["bev.cls"].isfinite()
    assert build_model(model_config_from_dict(SMALL)).outputs(_batch())["cls"].shape[2] == 30  # 10 learned + 20


@pytest.mark.slow
def test_the_teacher_overfits_a_synthetic_batch_and_finds_every_gt_within_half_a_metre():
    torch.manual_seed(0)
    model = build_model(model_config_from_dict(SMALL))
    batch = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    first = None
    for _ in range(400):
        loss = model.forward_train(batch)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert loss.item() < 0.1 * first
    dets = model.eval().predict(batch)
    for b in range(2):
        gt = transform_boxes(batch.gt_boxes[b], torch.linalg.inv(batch.bev_aug[b]))
        top = dets[b]["boxes"][: 2 * len(gt), :2]
        assert torch.cdist(gt[:, :2], top).min(1).values.max() < 0.5
