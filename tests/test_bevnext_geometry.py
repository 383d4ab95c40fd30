"""BEVNeXt geometry: the frustum lift puts a point in the BEV cell of its ego position (also under image and BEV
augmentation, and for a past frame through cur_from_prev), depth targets match a direct projection of the LiDAR,
and the temporary pooling matches a dense per-point sum."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bev_model.bev_grid import BEVGrid
from bev_model.bevnext.config import DepthConfig
from bev_model.bevnext.depth import depth_targets
from bev_model.bevnext.lift import frustum, lift
from bev_model.ops import bev_pool_v2, bev_pool_v2_prepare
from bev_model.synthetic import make_batch
from shards.conventions import project_points

H, W = 96, 256
CFG = DepthConfig(stride=8, d_min=1.0, d_max=60.0, d_step=1.0)
GRID = BEVGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), 64, 64, 1)


def image_aug(flip: bool, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """A source-pixel -> output-pixel matrix: resize about the origin, shift, optional horizontal flip."""
    a = np.array([[scale, 0, shift[0]], [0, scale, shift[1]], [0, 0, 1.0]])
    if flip:
        a = np.array([[-1.0, 0, W - 1], [0, 1, 0], [0, 0, 1]]) @ a
    return a


def augmented_batch(seed: int, flip: bool):
    """A synthetic batch (random BEV augmentation) with a random image augmentation applied to every camera."""
    b = make_batch(1, 2, (H, W), bev_aug=True, seed=seed)
    A = torch.as_tensor(image_aug(flip, 1.1, (-6.0, -4.0)), dtype=torch.float32)
    A4 = torch.eye(4)
    A4[:3, :3] = A
    return dataclasses.replace(b, ego2img=A4 @ b.ego2img, intrinsics=A @ b.intrinsics,
                               img_aug=A.expand_as(b.img_aug).clone())


def ego_point(batch, t: int, n: int, u: float, v: float, d: float) -> np.ndarray:
    """The augmented-ego point seen at output pixel (u, v) and depth d by camera n of frame t, composed from the
    separate matrices (img_aug, K, cam2ego, bev_aug), not from the inverse of the composed ego2img."""
    A = batch.img_aug[0, t, n].double().numpy()
    K = (torch.linalg.inv(batch.img_aug[0, t, n].double()) @ batch.intrinsics[0, t, n].double()).numpy()
    src = np.linalg.solve(A, np.array([u, v, 1.0]))
    cam = np.linalg.solve(K, src) * d  # z = d
    ego = batch.cam2ego[0, t, n].double().numpy() @ np.append(cam, 1.0)
    return (batch.bev_aug[0].double().numpy() @ ego)[:3]


@pytest.mark.parametrize("flip", [False, True])
def test_point_lifted_at_its_depth_bin_lands_in_its_bev_cell(flip):
    batch = augmented_batch(3, flip)
    fr = frustum((H, W), CFG)
    D, h, w, _ = fr.shape
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(12):
        n, k, i, j = int(rng.integers(6)), int(rng.integers(2, 40)), int(rng.integers(h)), int(rng.integers(w))
        u, v, d = (float(x) for x in fr[k, i, j])
        p = ego_point(batch, 1, n, u, v, d)
        cell, inside = GRID.cell_of(torch.tensor(p, dtype=torch.float32)[None])
        if not bool(inside[0]):
            continue
        depth = torch.zeros(1, 6, D, h, w)
        depth[0, n, k, i, j] = 1.0
        context = torch.zeros(1, 6, 1, h, w)
        context[0, n, 0, i, j] = 1.0
        bev = lift(depth, context, batch.ego2img[:, 1], fr, GRID)  # [1, 1, H, W]
        hit = torch.nonzero(bev[0, 0])
        assert hit.tolist() == [[int(cell[0, 1]), int(cell[0, 2])]]
        assert float(bev.sum()) == pytest.approx(1.0)
        checked += 1
    assert checked >= 4


def test_past_frame_lifts_into_the_current_frame():
    """A static world point seen by a past frame lands in the cell of its *current* position when the past frame's
    ego2img is composed with inv(cur_from_prev) (sensor(t-1) -> ego(t))."""
    batch = augmented_batch(5, False)
    fr = frustum((H, W), CFG)
    D, h, w, _ = fr.shape
    n, k, i, j = 0, 12, 6, 16
    u, v, d = (float(x) for x in fr[k, i, j])
    p_prev = ego_point(batch, 0, n, u, v, d)  # augmented ego frame of frame 0
    p_cur = (batch.cur_from_prev[0, 0].double().numpy() @ np.append(p_prev, 1.0))[:3]
    assert np.linalg.norm(p_cur - p_prev) > 1.0  # the ego moved
    cell, inside = GRID.cell_of(torch.tensor(p_cur, dtype=torch.float32)[None])
    assert bool(inside[0])
    depth = torch.zeros(1, 6, D, h, w)
    depth[0, n, k, i, j] = 1.0
    context = torch.ones(1, 6, 1, h, w)
    e2i = batch.ego2img[:, 0] @ torch.linalg.inv(batch.cur_from_prev[:, 0])
    bev = lift(depth, context, e2i, fr, GRID)
    assert torch.nonzero(bev[0, 0]).tolist() == [[int(cell[0, 1]), int(cell[0, 2])]]


def test_depth_targets_match_a_direct_projection():
    batch = augmented_batch(7, True)
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(-60, 60, (4000, 2)), rng.uniform(-2, 3, (4000, 1)), np.zeros((4000, 1))], 1)
    tgt = depth_targets([torch.tensor(pts, dtype=torch.float32)], batch.ego2img[:, 1], (H, W), CFG)  # [1, 6, h, w]
    h, w = tgt.shape[-2:]
    expect = np.full((6, h, w), np.inf)
    e2i = batch.ego2img[0, 1].double().numpy()
    for n in range(6):
        uv, dep = project_points(pts[:, :3], e2i[n])
        for (u, v), d in zip(uv, dep):
            if CFG.d_min <= d < CFG.d_max and -0.5 <= u < W - 0.5 and -0.5 <= v < H - 0.5:
                i, j = int(np.floor((v + 0.5) / 8)), int(np.floor((u + 0.5) / 8))
                expect[n, i, j] = min(expect[n, i, j], d)
    bins = np.where(np.isfinite(expect), np.floor((expect - CFG.d_min) / CFG.d_step), -1).astype(np.int64)
    assert (bins >= 0).sum() > 50
    np.testing.assert_array_equal(tgt[0].numpy(), bins)


def test_depth_targets_without_points_in_view_are_empty():
    batch = make_batch(1, 1, (H, W), seed=0)
    far = torch.tensor([[500.0, 0.0, 0.0, 0.0]])
    assert bool((depth_targets([far], batch.ego2img[:, 0], (H, W), CFG) == -1).all())


def test_lift_pooling_matches_a_dense_sum_and_drops_out_of_range_points():
    g = torch.Generator().manual_seed(0)
    B, N, D, h, w, C = 2, 2, 3, 4, 5, 3
    grid = BEVGrid((-4.0, -4.0, -1.0, 4.0, 4.0, 1.0), 4, 4, 2)
    pts = torch.rand(B, N, D, h, w, 3, generator=g) * torch.tensor([12.0, 12.0, 3.0]) - torch.tensor([6.0, 6.0, 1.5])
    depth = torch.rand(B, N, D, h, w, generator=g, dtype=torch.float64)
    feat = torch.rand(B, N, h, w, C, generator=g, dtype=torch.float64)
    rb, rd, rf, starts, lengths = bev_pool_v2_prepare(pts, grid)
    assert bool((rb[1:] >= rb[:-1]).all()) and int(lengths.sum()) == rb.numel()
    out = bev_pool_v2(depth, feat, rd, rf, rb, (B, 2, 4, 4, C), starts, lengths)
    cells, inside = grid.cell_of(pts)
    assert 0 < int(inside.sum()) < inside.numel()
    ref = torch.zeros(B, C, 2, 4, 4, dtype=torch.float64)
    for idx in torch.nonzero(inside).tolist():
        b, n, d, i, j = idx
        z, y, x = cells[b, n, d, i, j].tolist()
        ref[b, :, z, y, x] += depth[b, n, d, i, j] * feat[b, n, i, j]
    torch.testing.assert_close(out, ref)


def test_mean_pool_returns_a_constant_feature_wherever_the_depth_mass_reaches_one():
    """With the same feature c on every pixel, the summed lift is mass x c (it grows with the rays through a
    cell) and the mean lift is c where the mass is >= 1, the sum below it."""
    batch = make_batch(1, 1, (H, W), bev_aug=True, seed=5)
    fr = frustum((H, W), CFG)
    D, h, w, _ = fr.shape
    N = batch.ego2img.shape[2]
    depth = torch.randn(1, N, D, h, w, generator=torch.Generator().manual_seed(0)).softmax(2)
    c = torch.tensor([0.5, -2.0, 3.0])
    context = c.view(1, 1, 3, 1, 1).expand(1, N, 3, h, w).contiguous()
    e2i = batch.ego2img[:, 0].float()
    summed = lift(depth, context, e2i, fr, GRID)[0]
    mass = lift(depth, torch.ones_like(context[:, :, :1]), e2i, fr, GRID)[0, 0]
    mean = lift(depth, context, e2i, fr, GRID, pool="mean")[0]
    full, some = mass >= 1.0, (mass > 0) & (mass < 1.0)
    assert int(full.sum()) > 20 and int(some.sum()) > 20 and float(mass.max()) > 5.0
    torch.testing.assert_close(summed, c.view(3, 1, 1) * mass, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mean[:, full], c[:, None].expand(3, int(full.sum())), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mean[:, some], summed[:, some])
    with pytest.raises(ValueError, match="pool"):
        lift(depth, context, e2i, fr, GRID, pool="max")
