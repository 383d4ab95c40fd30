"""BEVDistill's terms: dense masked loss, InfoNCE (gradients reach the student's projection, never the teacher),
box distillation (zero L1 when the student outputs the teacher's boxes)."""

import math

import torch

from bev_model.box_coder import BoxCoder
from bev_model.distill.losses import (
    InstanceDistill,
    box_distill_loss,
    dense_feature_loss,
    info_nce,
    sample_bev,
    teacher_topk,
)
from bev_model.lidar.centerpoint import HeatmapHead


def test_dense_loss_is_zero_for_equal_features_and_positive_otherwise():
    torch.manual_seed(0)
    f = torch.randn(2, 8, 6, 7)
    mask = torch.rand(2, 6, 7)
    assert dense_feature_loss(f, f.clone(), mask) == 0
    g = f.clone()
    g[1, :, 2, 3] += 1.0  # one cell, every channel off by 1
    expect = 8 * mask[1, 2, 3] / mask.sum()
    assert torch.allclose(dense_feature_loss(f, g, mask), expect)
    assert dense_feature_loss(f, f + 1, torch.zeros(2, 6, 7)) == 0  # nothing masked in: nothing to distil


def test_info_nce_of_identical_features_is_far_below_random_features_near_log_n():
    torch.manual_seed(0)
    n = 256
    # wide features: random cosines ~ N(0, 1 / 2048), logits / 0.07 stay near 0, so the loss is near log n
    z = torch.nn.functional.normalize(torch.randn(n, 2048), dim=1)
    other = torch.nn.functional.normalize(torch.randn(n, 2048), dim=1)
    same, rand = info_nce(z, z, 0.07).item(), info_nce(z, other, 0.07).item()
    assert same < 0.05
    assert abs(rand - math.log(n)) < 0.5 and rand > 50 * same


def test_instance_gradients_reach_the_student_projection_and_never_the_teacher():
    torch.manual_seed(0)
    inst = InstanceDistill(16, 12, 32, 0.07)
    teacher = HeatmapHead(12, 8, 3).eval().requires_grad_(False)  # stands in for the frozen teacher's layers
    bev_s = torch.randn(2, 16, 10, 10, requires_grad=True)
    with torch.no_grad():
        bev_t, _ = teacher(torch.randn(2, 12, 10, 10))
        bev_t = torch.cat([bev_t, bev_t[:, :4]], 1)
    centres = torch.rand(2, 30, 2, requires_grad=True)
    loss = inst(bev_s, bev_t, centres)
    loss.backward()
    assert inst.student_proj.proj.weight.grad is not None and inst.student_proj.proj.weight.grad.abs().sum() > 0
    assert bev_s.grad is not None and bev_s.grad.abs().sum() > 0
    assert centres.grad is None  # the student's predicted centres are detached
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_sample_bev_reads_the_cell_under_a_centre_in_row_y_column_x():
    bev = torch.zeros(1, 1, 4, 8)
    bev[0, 0, 1, 6] = 5.0  # row 1 (y), column 6 (x)
    centre = torch.tensor([[[(6 + 0.5) / 8, (1 + 0.5) / 4]]])  # (x, y) in [0, 1]
    assert sample_bev(bev, centre).item() == 5.0


def test_box_distillation_has_zero_l1_when_the_student_outputs_the_teachers_boxes():
    torch.manual_seed(0)
    coder = BoxCoder((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0))
    Q, C = 20, 10
    boxes = torch.cat([torch.rand(2, Q, 2) * 80 - 40, torch.rand(2, Q, 1), torch.rand(2, Q, 3) + 1,
                       torch.rand(2, Q, 1) * 6 - 3, torch.randn(2, Q, 2)], -1)
    codes = coder.encode(boxes)
    logits = torch.randn(2, Q, C)
    t_prob, t_codes = teacher_topk(logits, codes, 5)
    assert t_prob.shape == (2, 5, C) and t_codes.shape == (2, 5, 10)
    weights = torch.ones(10)
    perm = torch.randperm(Q)  # the student's queries in another order: matching finds them
    s_codes = codes[:, perm].clone().requires_grad_(True)
    loss = box_distill_loss(logits[:, perm], s_codes, t_prob, t_codes, weights)
    assert loss.item() < 1e-6
    moved = codes[:, perm] + 0.5
    off = box_distill_loss(logits[:, perm], moved, t_prob, t_codes, weights)
    s = t_prob.amax(-1)
    assert torch.allclose(off, 10 * 0.5 * s.pow(2).sum() / s.sum(), rtol=1e-4)  # weight max score^2 / sum of scores
