"""Perspective targets land on the right camera/location; a perfect dense prediction decodes to the GT."""

import math

import pytest
import torch

from bev_model import build_model, get_preset
from bev_model.perspective_head import decode_perspective
from bev_model.perspective_targets import build_perspective_targets, make_locations
from bev_model.proposals import select_proposals
from bev_model.synthetic import make_batch
from shards.conventions import project_points, transform_boxes, wrap_angle

IMAGE_HW = (128, 352)
STRIDES = [8, 16, 32, 64, 128]


def _locations():
    shapes, h, w = [], IMAGE_HW[0] // 8, IMAGE_HW[1] // 8
    for _ in STRIDES:
        shapes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return make_locations(shapes, STRIDES), shapes


@pytest.fixture(scope="module")
def setup():
    cfg = get_preset("tiny")
    batch = make_batch(1, 1, IMAGE_HW, num_boxes=12, bev_aug=True, seed=3)
    loc, shapes = _locations()
    tg = build_perspective_targets(batch, 0, loc, IMAGE_HW, cfg.perspective, cfg.num_classes)
    return cfg, batch, loc, shapes, tg


def test_targets_put_each_projected_centre_at_its_camera_and_cell(setup):
    cfg, batch, loc, shapes, tg = setup
    boxes = batch.gt_boxes[0]
    uv, depth = project_points(boxes[:, :3][None].expand(6, -1, -1), batch.ego2img[0, 0])  # [N, G, 2], [N, G]
    H, W = IMAGE_HW
    visible = (depth >= cfg.perspective.min_depth) & (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
    assert int(visible.sum()) >= 6, "synthetic scene should put several boxes in view"
    starts = torch.tensor([0] + [h * w for h, w in shapes]).cumsum(0)
    for n in range(6):
        for g in range(boxes.shape[0]):
            mine = tg.gt_index[n] == g
            if not bool(visible[n, g]):
                assert not bool(mine.any()), f"box {g} is not in camera {n} but got positives there"
                continue
            # the cell containing the projected centre belongs to this box (or to a nearer, occluding one)
            owners = []
            for lvl, s in enumerate(STRIDES):
                i, j = int(uv[n, g, 1] // s), int(uv[n, g, 0] // s)
                owners.append(int(tg.gt_index[n, int(starts[lvl]) + i * shapes[lvl][1] + j]))
            assert g in owners or any(o >= 0 and depth[n, o] < depth[n, g] for o in owners), (n, g, owners)
            if not bool(mine.any()):
                continue
            # every positive decodes to the projected centre, on one level only
            rec = loc.points[mine] + tg.offset[n, mine] * loc.stride[mine, None]
            torch.testing.assert_close(rec, uv[n, g][None].expand_as(rec), atol=1e-3, rtol=0)
            assert loc.level[mine].unique().numel() == 1
            # depth target is focal-scaled log depth
            focal = batch.intrinsics[0, 0, n, 0, 0].abs()
            d = tg.depth[n, mine].exp() * focal / cfg.perspective.focal_ref
            torch.testing.assert_close(d, depth[n, g].expand_as(d), atol=1e-3, rtol=1e-4)


def test_targets_drop_boxes_with_few_points_or_no_visibility(setup):
    cfg, batch, loc, _, tg = setup
    batch.gt_num_pts = [batch.gt_num_pts[0].clone()]
    batch.gt_visibility = [batch.gt_visibility[0].clone()]
    seen = tg.gt_index[tg.gt_index >= 0].unique()
    a, b = int(seen[0]), int(seen[1])
    batch.gt_num_pts[0][a] = 2
    batch.gt_visibility[0][b] = 0
    tg2 = build_perspective_targets(batch, 0, loc, IMAGE_HW, cfg.perspective, cfg.num_classes)
    assert not bool((tg2.gt_index == a).any()) and not bool((tg2.gt_index == b).any())
    assert set(tg2.gt_index[tg2.gt_index >= 0].unique().tolist()) == set(seen.tolist()) - {a, b}


def _perfect_prediction(tg, num_classes, num_attrs):
    pos = tg.labels < num_classes
    cls = torch.full(tg.labels.shape + (num_classes,), -20.0)
    cls[pos, tg.labels[pos]] = 20.0
    ctr = torch.logit(tg.centerness.clamp(1e-4, 1 - 1e-4))
    return {"cls": cls, "attr": torch.zeros(tg.labels.shape + (num_attrs,)), "ltrb": tg.ltrb,
            "centerness": ctr[..., None], "offset": tg.offset, "depth": tg.depth[..., None], "size": tg.size,
            "rot": tg.rot, "vel": tg.vel, "conf3d": torch.full_like(ctr[..., None], 20.0)}


def test_perfect_prediction_decodes_to_gt_boxes(setup):
    cfg, batch, loc, _, tg = setup
    preds = _perfect_prediction(tg, cfg.num_classes, cfg.num_attrs)
    dec = decode_perspective(preds, loc, batch.ego2img[0, 0], batch.intrinsics[0, 0], cfg.perspective)
    pos = tg.gt_index >= 0
    gt = batch.gt_boxes[0][tg.gt_index[pos]]
    got = dec["boxes"][pos]
    torch.testing.assert_close(got[:, :6], gt[:, :6], atol=2e-3, rtol=1e-4)
    assert float(wrap_angle(got[:, 6] - gt[:, 6]).abs().max()) < 1e-3  # allocentric yaw survives flips
    torch.testing.assert_close(got[:, 7:9], gt[:, 7:9], atol=1e-3, rtol=1e-4)


def test_hybrid_proposals_from_perfect_prediction_equal_gt_centres(setup):
    cfg, batch, loc, _, tg = setup
    model = build_model(cfg)
    preds = _perfect_prediction(tg, cfg.num_classes, cfg.num_attrs)
    props = model._proposals(preds, loc, batch, 0, 1)
    assert props["boxes"].shape == (1, cfg.head.num_hybrid, 9)
    visible = tg.gt_index[tg.gt_index >= 0].unique()
    k = visible.numel()
    top = props["boxes"][0, :k, :3]
    assert bool(props["kept"][0, :k].all())
    gt = batch.gt_boxes[0][visible, :3]
    dist = torch.cdist(top, gt)  # each proposal matches one GT, each GT once
    assert float(dist.min(1).values.max()) < 1e-2
    assert sorted(dist.argmin(1).tolist()) == list(range(k))
    # every other proposal that survived NMS is background (duplicates of a GT were suppressed)
    rest = props["kept"][0, k:]
    assert float(props["scores"][0, k:][rest].max()) < 1e-3 < float(props["scores"][0, :k].min())


def test_proposal_nms_merges_duplicates_within_radius():
    boxes = torch.zeros(1, 4, 9)
    boxes[0, :, :3] = torch.tensor([[10.0, 0, 0], [10.3, 0.2, 0], [20.0, 5, 0], [10.1, 0, 0]])
    boxes[0, :, 3:6] = 1.0
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    labels = torch.tensor([[0, 0, 0, 1]])  # the last is another class: not a duplicate
    out = select_proposals(boxes, scores, labels, torch.zeros(1, 4, 10), k=3, radius=1.0, pre_nms=10)
    assert out["kept"][0].tolist() == [True, True, True]
    torch.testing.assert_close(out["boxes"][0, :, 0], torch.tensor([10.0, 20.0, 10.1]))
    assert math.isclose(float(out["scores"][0, 0]), 0.9, abs_tol=1e-6)


def test_first_stage_detections_are_the_kept_proposals_in_the_unaugmented_frame(setup, monkeypatch):
    """``predict_first_stage`` with a perfect perspective head returns the visible GT boxes, BEV augmentation
    undone (the batch was made with a random ``bev_aug``), one detection per kept proposal."""
    cfg, batch, loc, _, tg = setup
    model = build_model(cfg).eval()
    preds = _perfect_prediction(tg, cfg.num_classes, cfg.num_attrs)
    monkeypatch.setattr(model.pers_head, "forward", lambda feats, strides: preds)
    dets = model.predict_first_stage(batch)[0]
    props = model._proposals(preds, loc, batch, 0, 1)
    assert dets["boxes"].shape[0] == int(props["kept"].sum()) <= cfg.head.num_hybrid
    assert bool((dets["attrs"] == -1).all())
    visible = tg.gt_index[tg.gt_index >= 0].unique()
    k = visible.numel()
    assert not torch.allclose(batch.bev_aug[0], torch.eye(4))
    gt_plain = transform_boxes(batch.gt_boxes[0][visible], torch.linalg.inv(batch.bev_aug[0]))
    dist = torch.cdist(dets["boxes"][:k, :3], gt_plain[:, :3])
    assert float(dist.min(1).values.max()) < 1e-2
    assert sorted(dist.argmin(1).tolist()) == list(range(k))
    torch.testing.assert_close(dets["scores"], props["scores"][0][props["kept"][0]])


def test_first_stage_needs_the_perspective_head():
    cfg = get_preset("tiny")
    cfg.lambda_pers = 0.0
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="lambda_pers"):
        model.predict_first_stage(make_batch(1, 1, IMAGE_HW, num_boxes=2, seed=0))
