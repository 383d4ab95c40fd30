"""``bev_pool_v2_prepare`` (frustum points -> sorted ranks and intervals) and ``bev_pool_v2``'s input checks."""

from __future__ import annotations

import pytest
import torch

from bev_model.bev_grid import BEVGrid
from bev_model.ops import bev_pool_v2, bev_pool_v2_prepare
from bev_model.ops.bev_pool_prepare import feature_intervals, interval_runs
from bev_model.ops.bev_pool_testing import random_inputs, ring_frustum_points

GRID = BEVGrid(pc_range=(-10.0, -10.0, -2.0, 10.0, 10.0, 2.0), H=20, W=20, Z=2)


def test_point_lands_in_the_cell_bev_grid_names():
    """One in-grid point among out-of-grid ones: its ranks name its depth element, feature row and cell
    (x = 3.3 -> column 13, y = -4.5 -> row 5, z = 0.5 -> height cell 1 on a 1 m grid from -10/-2)."""
    B, N, D, H, W = 2, 3, 4, 2, 5
    points = torch.full((B, N, D, H, W, 3), 50.0)
    b, n, d, h, w = 1, 2, 3, 1, 4
    points[b, n, d, h, w] = torch.tensor([3.3, -4.5, 0.5])
    ranks_bev, ranks_depth, ranks_feat, starts, lengths = bev_pool_v2_prepare(points, GRID)
    assert ranks_bev.dtype == ranks_depth.dtype == ranks_feat.dtype == starts.dtype == torch.int32
    assert ranks_bev.tolist() == [((b * GRID.Z + 1) * GRID.H + 5) * GRID.W + 13]
    assert ranks_depth.tolist() == [(((b * N + n) * D + d) * H + h) * W + w]
    assert ranks_feat.tolist() == [((b * N + n) * H + h) * W + w]
    assert starts.tolist() == [0] and lengths.tolist() == [1]
    cells, inside = GRID.cell_of(points[b, n, d, h, w])
    assert inside and cells.tolist() == [1, 5, 13]


def test_prepare_matches_cell_of_for_every_point():
    """Random points (some outside): exactly the inside points are kept, each with the cell ``cell_of`` gives,
    sorted by cell with intervals the runs of equal cells."""
    g = torch.Generator().manual_seed(0)
    B, N, D, H, W = 2, 2, 5, 3, 4
    points = (torch.rand(B, N, D, H, W, 3, generator=g) * 2 - 1) * torch.tensor([13.0, 13.0, 2.6])
    ranks_bev, ranks_depth, ranks_feat, starts, lengths = bev_pool_v2_prepare(points, GRID)
    cells, inside = GRID.cell_of(points)
    assert ranks_bev.numel() == int(inside.sum()) < inside.numel()
    flat_points = points.reshape(-1, 3)[ranks_depth.long()]
    c, ok = GRID.cell_of(flat_points)
    assert ok.all()
    b = ranks_depth.long() // (N * D * H * W)
    assert torch.equal(ranks_bev.long(), ((b * GRID.Z + c[:, 0]) * GRID.H + c[:, 1]) * GRID.W + c[:, 2])
    # feature row: the depth element's (b, n, h, w) without d
    rd = ranks_depth.long()
    hw = rd % (H * W)
    bn = rd // (D * H * W)
    assert torch.equal(ranks_feat.long(), bn * H * W + hw)
    assert (ranks_bev[1:] >= ranks_bev[:-1]).all()
    assert torch.equal(starts.long(), torch.cumsum(lengths, 0).long() - lengths.long())
    assert lengths.sum() == ranks_bev.numel()
    assert torch.equal(torch.repeat_interleave(ranks_bev[starts.long()], lengths.long()), ranks_bev)
    assert ranks_bev[starts.long()].unique().numel() == starts.numel()


def test_feature_intervals_group_points_by_feature_row():
    rd = torch.tensor([5, 1, 7, 2, 9], dtype=torch.int32)
    rf = torch.tensor([3, 0, 3, 0, 1], dtype=torch.int32)
    rb = torch.tensor([0, 0, 1, 2, 2], dtype=torch.int32)
    rd_s, rf_s, rb_s, starts, lengths = feature_intervals(rd, rf, rb)
    assert rf_s.tolist() == [0, 0, 1, 3, 3]
    assert rd_s.tolist() == [1, 2, 9, 5, 7]  # stable: input order within a row
    assert rb_s.tolist() == [0, 2, 2, 0, 1]
    assert starts.tolist() == [0, 2, 3] and lengths.tolist() == [2, 1, 2]


def test_ring_frustum_is_pooled_alike_by_reference_and_cpu():
    """A ring of 6 pinhole frusta (the benchmark's geometry) at small size: points near the cameras crowd into
    few cells (long intervals), far ones are dropped."""
    grid = BEVGrid(pc_range=(-20.0, -20.0, -5.0, 20.0, 20.0, 3.0), H=10, W=10, Z=1)
    points = ring_frustum_points(1, 6, 8, (2, 4), (16, 32), depth_range=(1.0, 30.0))
    ranks_bev, ranks_depth, ranks_feat, starts, lengths = bev_pool_v2_prepare(points, grid)
    assert 0 < ranks_bev.numel() < points[..., 0].numel()
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(1, 6, 8, 2, 4, generator=g)
    feat = torch.randn(1, 6, 2, 4, 7, generator=g)
    args = (ranks_depth, ranks_feat, ranks_bev, (1, 1, 10, 10, 7), starts, lengths)
    ref = bev_pool_v2(depth.double(), feat.double(), *args, backend="reference")
    torch.testing.assert_close(bev_pool_v2(depth, feat, *args, backend="cpu").double(), ref, rtol=1e-5, atol=1e-5)
    # prepared indices need no value checks (the lift skips them): same result without the host sync
    unchecked = bev_pool_v2(depth, feat, *args, backend="cpu", check_values=False)
    torch.testing.assert_close(unchecked, bev_pool_v2(depth, feat, *args, backend="cpu"), rtol=0, atol=0)


def _inputs():
    grid = BEVGrid(pc_range=(-4.0, -3.0, -1.0, 4.0, 3.0, 1.0), H=6, W=8, Z=2)
    return random_inputs(batch=1, cams=2, bins=3, feat_hw=(2, 3), channels=4, grid=grid, seed=1)


def _with(**changes):
    inputs = _inputs()
    for key, fn in changes.items():
        inputs[key] = fn(inputs[key])
    return inputs


BAD = {
    "depth_rank": (dict(depth=lambda d: d[0]), "depth must be"),
    "feat_mismatch": (dict(feat=lambda f: f[:, :, :, :2]), "feat must be"),
    "float_ranks": (dict(ranks_bev=lambda r: r.float()), "ranks_bev must be an int32 or int64"),
    "int_depth": (dict(depth=lambda d: (d * 10).long()), "depth must be float"),
    "shape_len": (dict(bev_feat_shape=lambda s: s[:4]), "bev_feat_shape must be 5"),
    "shape_channels": (dict(bev_feat_shape=lambda s: (*s[:4], s[4] + 1)), "C=4"),
    "ranks_length": (dict(ranks_feat=lambda r: r[1:]), "ranks_feat must have the length"),
    "depth_out_of_range": (dict(ranks_depth=lambda r: r + 1000), "ranks_depth values must lie in"),
    "negative_feat": (dict(ranks_feat=lambda r: r - 1000), "ranks_feat values must lie in"),
    "bev_out_of_range": (dict(ranks_bev=lambda r: r + 96), "ranks_bev values must lie in"),
    "zero_length": (dict(interval_lengths=lambda n: torch.cat([n[:1] * 0, n[1:]])), "must all be >= 1"),
    "not_tiling": (dict(interval_starts=lambda s: s + 1), "tile the"),
    "unsorted": (dict(ranks_bev=lambda r: r.flip(0)), "must be sorted"),
    "merged_runs": (dict(interval_lengths=lambda n: n[:-1], interval_starts=lambda s: s[:-1]), "tile the"),
    "intervals_shape": (dict(interval_lengths=lambda n: n[1:]), "interval_lengths must have the shape"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_raise_naming_the_argument(case):
    changes, message = BAD[case]
    inputs = _with(**changes)
    with pytest.raises((ValueError, TypeError), match=message):
        bev_pool_v2(**inputs, backend="reference")


def test_intervals_that_split_a_run_are_rejected():
    """Splitting one cell's run into two intervals would make two programs store into one cell."""
    inputs = _inputs()
    lengths = inputs["interval_lengths"]
    k = int(torch.nonzero(lengths > 1)[0])
    starts = inputs["interval_starts"]
    new_starts = torch.cat([starts[: k + 1], starts[k : k + 1] + 1, starts[k + 1 :]])
    new_lengths = torch.cat([lengths[:k], torch.tensor([1, int(lengths[k]) - 1], dtype=lengths.dtype), lengths[k + 1 :]])
    inputs.update(interval_starts=new_starts, interval_lengths=new_lengths)
    with pytest.raises(ValueError, match="exactly the runs of equal ranks_bev"):
        bev_pool_v2(**inputs, backend="cpu")
    bad_range = dict(_inputs())
    bad_range["ranks_depth"] = bad_range["ranks_depth"] + 10**6
    with pytest.raises(ValueError, match="ranks_depth values must lie in"):
        bev_pool_v2(**bad_range, backend="reference")  # checked by default, whatever the backend


def test_interval_runs():
    starts, lengths = interval_runs(torch.tensor([2, 2, 2, 5, 7, 7]))
    assert starts.tolist() == [0, 3, 4] and lengths.tolist() == [3, 1, 2]
