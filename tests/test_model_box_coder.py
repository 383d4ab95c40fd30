"""Box coding round-trips (yaw wrap, velocity) and centre normalisation."""

import math

import torch

from bev_model.box_coder import BoxCoder
from bev_model.config import PC_RANGE


def _boxes(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = torch.zeros(n, 9, dtype=torch.float64)
    b[:, :3] = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 100
    b[:, 3:6] = torch.rand(n, 3, generator=g, dtype=torch.float64) * 10 + 0.2
    b[:, 6] = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    b[:, 7:9] = torch.randn(n, 2, generator=g, dtype=torch.float64) * 5
    return b


def test_encode_decode_round_trips_boxes_and_velocity():
    coder = BoxCoder(PC_RANGE)
    b = _boxes()
    codes = coder.encode(b)
    assert codes.shape == (64, 10)
    torch.testing.assert_close(coder.decode(codes), b)


def test_yaw_wraps_into_minus_pi_pi():
    coder = BoxCoder(PC_RANGE)
    b = _boxes(8)
    raw = torch.tensor([0.0, math.pi, -math.pi, 3 * math.pi, -2.5 * math.pi, 7.0, -7.0, 2 * math.pi], dtype=torch.float64)
    b[:, 6] = raw
    yaw = coder.decode(coder.encode(b))[:, 6]
    expected = torch.tensor([0.0, math.pi, math.pi, math.pi, -0.5 * math.pi, 7.0 - 2 * math.pi,
                             -7.0 + 2 * math.pi, 0.0], dtype=torch.float64)
    assert bool((yaw > -math.pi).all() and (yaw <= math.pi).all())
    torch.testing.assert_close(yaw, expected, atol=1e-9, rtol=0)


def test_centre_normalisation_round_trips_over_pc_range():
    coder = BoxCoder(PC_RANGE)
    xyz = torch.tensor([[-51.2, -51.2, -5.0], [51.2, 51.2, 3.0], [0.0, 0.0, -1.0]])
    unit = coder.normalize_xyz(xyz)
    torch.testing.assert_close(unit, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]]))
    torch.testing.assert_close(coder.denormalize_xyz(unit), xyz)
