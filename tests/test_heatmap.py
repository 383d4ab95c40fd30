"""CenterPoint's heatmap pieces (bev_model.heatmap) on hand-computed cases, and BEVNeXt's targets drawn with them."""

import math

import pytest
import torch

from bev_model.bev_grid import BEVGrid
from bev_model.bevnext.head import center_targets
from bev_model.heatmap import (
    box_gaussians,
    foreground_mask,
    gaussian_focal_loss,
    gaussian_radius,
    heatmap_targets,
)


def test_gaussian_radius_matches_cornernet_by_hand():
    # 10 x 4 cells, IoU 0.1: r1 = (14 + sqrt(196 - 4 * 40 * 0.9 / 1.1)) / 2 = 11.03,
    # r2 = (28 + sqrt(784 - 16 * 0.9 * 40)) / 2 = 21.21, r3 = (-2.8 + sqrt(2.8^2 + 4 * 0.4 * 0.9 * 40)) / 2
    # = (-2.8 + sqrt(65.44)) / 2 = 2.64475 (CenterPoint divides by 2, not by 2 a3 as the quadratic formula would)
    r = gaussian_radius(torch.tensor([10.0, 4.0], dtype=torch.float64), torch.tensor([4.0, 10.0], dtype=torch.float64),
                        0.1)
    assert r.tolist() == pytest.approx([(-2.8 + math.sqrt(65.44)) / 2] * 2, abs=1e-12)  # symmetric in h, w
    assert r[0].item() == pytest.approx(2.64475, abs=1e-5)
    assert gaussian_radius(torch.tensor(2.0), torch.tensor(2.0), 0.7) < gaussian_radius(torch.tensor(2.0),
                                                                                       torch.tensor(2.0), 0.1)


def test_box_gaussian_window_and_values_follow_the_floored_radius():
    grid = BEVGrid((0.0, 0.0, -5.0, 20.0, 20.0, 3.0), H=20, W=20)  # 1 m cells
    # l = 4 m along x, w = 10 m along y: gaussian_radius(10, 4, 0.1) = 2.64 -> r = 2, sigma = 5 / 6
    g = box_gaussians(torch.tensor([[9.5, 7.5, 0.0, 4.0, 10.0, 1.5, 0.3, 0.0, 0.0]]), grid, 0.1, 1)[0]
    expect = torch.zeros(20, 20)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            expect[7 + dy, 9 + dx] = math.exp(-(dx * dx + dy * dy) / (2 * (5 / 6) ** 2))
    torch.testing.assert_close(g, expect, atol=1e-7, rtol=0)
    assert g[7, 9] == 1.0 and int((g > 0).sum()) == 25


def test_foreground_mask_equals_centerpoints_gaussian_on_a_hand_computed_case():
    grid = BEVGrid((0.0, 0.0, -5.0, 10.0, 10.0, 3.0), H=10, W=10)  # 1 m cells
    # a 2 m x 2 m box at (3.5, 6.5): centre cell row 6, column 3; radius max(1, floor(0.86...)) = 1
    assert gaussian_radius(torch.tensor(2.0), torch.tensor(2.0), 0.1).floor() == 0
    mask = foreground_mask([torch.tensor([[3.5, 6.5, 0.0, 2.0, 2.0, 1.5, 0.0, 0.0, 0.0]])], grid)[0]
    sigma = 3 / 6  # diameter 2r + 1 = 3
    expect = torch.zeros(10, 10)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            expect[6 + dy, 3 + dx] = math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
    assert torch.allclose(mask, expect, atol=1e-6)
    # two boxes merge by their maximum; a box off the grid draws nothing
    two = foreground_mask([torch.tensor([[3.5, 6.5, 0, 2, 2, 1, 0, 0, 0], [4.5, 6.5, 0, 2, 2, 1, 0, 0, 0],
                                         [30.0, 6.5, 0, 2, 2, 1, 0, 0, 0]])], grid)[0]
    assert two[6, 3] == 1.0 and two[6, 4] == 1.0 and two[6, 5] == pytest.approx(math.exp(-2))
    assert two.sum() > mask.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bevnext_center_targets_heatmap_is_the_shared_heatmap_targets(seed):
    grid = BEVGrid((-20.0, -10.0, -3.0, 20.0, 10.0, 3.0), H=25, W=60)  # non-square cells: dx 0.667, dy 0.8
    g = torch.Generator().manual_seed(seed)
    boxes, labels, attrs = [], [], []
    for n in (12, 0, 30):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([64.0, 32.0]) - torch.tensor([32.0, 16.0])  # some outside
        size = torch.exp(torch.empty(n, 3).uniform_(-4, 4, generator=g))  # 2 cm .. 55 m
        boxes.append(torch.cat([xy, torch.randn(n, 1, generator=g), size, torch.randn(n, 3, generator=g)], 1))
        labels.append(torch.randint(0, 4, (n,), generator=g))
        attrs.append(torch.randint(-1, 8, (n,), generator=g))
    t = center_targets(boxes, labels, attrs, grid, 4, 0.1, 2)
    assert torch.equal(t["heatmap"], heatmap_targets(boxes, labels, grid, 4, 0.1, 2))
    inside = [grid.cell_of(torch.cat([b[:, :2], torch.zeros(len(b), 1)], 1))[1] for b in boxes]
    assert int(t["mask"].sum()) == sum(int(i.sum()) for i in inside) > 0
    assert int((t["heatmap"] == 1).sum()) <= int(t["mask"].sum())  # one peak per inside box (peaks may coincide)


def test_a_box_without_a_positive_finite_footprint_draws_no_gaussian_but_keeps_its_regression_target():
    grid = BEVGrid((0.0, 0.0, -5.0, 10.0, 10.0, 3.0), H=10, W=10)
    boxes = torch.tensor([[3.5, 6.5, 0, 0.0, 2, 1, 0, 0, 0], [5.5, 2.5, 0, 2, -1.0, 1, 0, 0, 0],
                          [7.5, 7.5, 0, float("nan"), 2, 1, 0, 0, 0], [1.5, 1.5, 0, 2, 2, 1, 0, 0, 0]])
    g = box_gaussians(boxes, grid, 0.1, 2)
    assert g[:3].abs().sum() == 0 and g[3, 1, 1] == 1.0  # as CenterPoint's `if length > 0 and width > 0`
    t = center_targets([boxes], [torch.zeros(4, dtype=torch.long)], [torch.full((4,), -1)], grid, 1, 0.1, 2)
    assert torch.equal(t["heatmap"][0, 0], g[3]) and t["mask"][0].all()


def test_gaussian_focal_loss_by_hand():
    # one peak predicted at p = 0.5: -log(0.5) * 0.5^2; one cell of target 0.5 at p = 0.5: -log(0.5) * 0.5^2 * 0.5^4
    logits = torch.zeros(1, 1, 1, 3)
    logits[0, 0, 0, 2] = -40.0  # p clamped to 1e-4 where the target is 0: -log(1 - 1e-4) * 1e-8
    target = torch.tensor([[[[1.0, 0.5, 0.0]]]])
    expect = math.log(2) * 0.25 * (1 + 0.5 ** 4) - math.log(1 - 1e-4) * 1e-8
    assert gaussian_focal_loss(logits, target).item() == pytest.approx(expect, rel=1e-6)
    assert gaussian_focal_loss(logits.half(), target).dtype == torch.float32
