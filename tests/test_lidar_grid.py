"""The LiDAR teacher's pillars, its heatmap targets and the camera student's BEV anchors agree on [y, x] cells,
also after BEV augmentation; the teacher's grid follows the student's preset."""

import numpy as np
import pytest
import torch

from bev_model import build_model, get_preset, model_config_from_dict
from bev_model.bev_encoder import pillar_points
from bev_model.heatmap import heatmap_targets
from bev_model.lidar.synthetic import box_points
from bev_model.synthetic import random_bev_aug
from shards.conventions import transform_boxes
from shards.typed_config import ConfigError

BOX = [13.3, -27.1, 0.5, 1.0, 0.6, 1.0, 0.3, 0.0, 0.0]


def _student_cell(enc, xy: torch.Tensor) -> tuple[int, int]:
    """The student's cell of a metric point: its nearest BEV anchor (``pillar_points``), as (row, column)."""
    anchors = pillar_points(enc)[:, 0, :2]  # [H * W, 2], row-major over (h, w)
    i = int(torch.cdist(xy[None].float(), anchors).argmin())
    return i // enc.bev_w, i % enc.bev_w


def _teacher_cell(teacher, points: torch.Tensor) -> tuple[int, int]:
    """The BEV cell holding the teacher's pillar of the most points (one small box): pillar cell // stride."""
    pseudo = teacher.pillars([points])[0]  # [C, H * s, W * s]
    occupied = pseudo.abs().sum(0) > 0
    ys, xs = torch.nonzero(occupied, as_tuple=True)
    s = teacher.cfg.pillar.stride
    cells = torch.stack([ys // s, xs // s], 1)
    uniq, counts = cells.unique(dim=0, return_counts=True)
    y, x = uniq[counts.argmax()].tolist()
    return y, x


@pytest.fixture(scope="module")
def teacher():
    return build_model(get_preset("lidar_tiny")).eval()


@pytest.mark.parametrize("aug_seed", [None, 3, 7])
def test_one_box_lands_on_the_same_cell_for_teacher_pillars_teacher_targets_and_student_anchors(teacher, aug_seed):
    student = get_preset("tiny")
    grid = teacher.grid
    # the box's centre in the augmented frame: the centre of cell (row 12, column 37); far from both diagonals
    target = grid.centres()[0, 12, 37]
    aug = (torch.eye(4) if aug_seed is None
           else torch.as_tensor(random_bev_aug(np.random.default_rng(aug_seed)), dtype=torch.float32))
    inv = torch.linalg.inv(aug)
    box = torch.tensor([[*target[:2].tolist(), 0.5, 0.2, 0.2, 0.2, 0.3, 0.0, 0.0]])
    box = transform_boxes(box, inv)  # the un-augmented box ...
    pts = box_points(box, np.random.default_rng(0), per_box=50, ground=0)  # ... and its points
    if aug_seed is not None:
        assert (box[0, :2] - target[:2]).norm() > 2.0  # the augmentation moves the box
    # points and boxes go through bev_aug together
    box = transform_boxes(box, aug)
    pts = torch.cat([pts[:, :3] @ aug[:3, :3].T + aug[:3, 3], pts[:, 3:]], 1)
    s_cell = _student_cell(student.encoder, box[0, :2])
    t_cell = _teacher_cell(teacher, pts)
    hm = heatmap_targets([box], [torch.tensor([0])], grid, 10, 0.1, 2)[0, 0]
    peak = divmod(int(hm.argmax()), hm.shape[1])
    assert t_cell == s_cell == peak == (12, 37)
    assert hm[peak] == 1.0


def test_the_teacher_grid_is_derived_from_the_student_preset():
    for lidar, cam in (("lidar_tiny", "tiny"), ("lidar_base", "r50")):
        t, s = get_preset(lidar).grid, get_preset(cam).encoder
        assert (tuple(t.pc_range), t.bev_h, t.bev_w) == (tuple(s.pc_range), s.bev_h, s.bev_w)


def test_the_teacher_bev_has_the_grid_shape_and_a_misfit_stride_is_a_config_error():
    cfg = model_config_from_dict({"preset": "lidar_tiny", "grid": {"bev_h": 10, "bev_w": 12}})
    m = build_model(cfg).eval()
    pts = box_points(torch.tensor([BOX]), np.random.default_rng(0), per_box=20, ground=100)
    assert m.bev_features([pts]).shape == (1, cfg.embed_dims, 10, 12)
    with pytest.raises(ConfigError, match="backbone.layer_strides"):
        model_config_from_dict({"preset": "lidar_tiny", "pillar": {"stride": 3}})
    assert cfg.frame_offsets == (0,) and cfg.needs_points and cfg.needs_points_in_eval
