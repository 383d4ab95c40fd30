"""Problems for ``bev_pool_v2`` (tests and benchmarks): random point clouds and a ring of pinhole frusta."""

from __future__ import annotations

import math

import torch

from ..bev_grid import BEVGrid
from .bev_pool_prepare import bev_pool_v2_prepare


def ring_frustum_points(
    batch: int,
    cams: int,
    bins: int,
    feat_hw: tuple[int, int],
    image_hw: tuple[int, int],
    depth_range: tuple[float, float] = (1.0, 60.0),
    fov_deg: float = 70.0,
    cam_height: float = 1.5,
) -> torch.Tensor:
    """``[B, N, D, H, W, 3]`` ego points of N pinhole cameras evenly spaced in yaw around the ego origin.

    Feature pixel (h, w) looks through the image pixel at its centre (stride = image / feature size); bin d is
    at depth ``depth_range[0] + d * step`` along the optical axis (BEVDet's ``grid_config['depth']``). A
    stand-in rig with the nuScenes geometry's statistics (ring of cameras, 1-60 m), not a dataset's cameras.
    """
    H, W = feat_hw
    ih, iw = image_hw
    f = (iw / 2) / math.tan(math.radians(fov_deg) / 2)
    us = (torch.arange(W, dtype=torch.float64) + 0.5) * (iw / W)
    vs = (torch.arange(H, dtype=torch.float64) + 0.5) * (ih / H)
    step = (depth_range[1] - depth_range[0]) / bins
    ds = depth_range[0] + torch.arange(bins, dtype=torch.float64) * step
    d, v, u = torch.meshgrid(ds, vs, us, indexing="ij")  # [D, H, W]
    cam = torch.stack([(u - iw / 2) * d / f, (v - ih / 2) * d / f, d], -1)  # x right, y down, z forward
    pts = []
    for n in range(cams):
        yaw = 2 * math.pi * n / cams
        c, s = math.cos(yaw), math.sin(yaw)
        # camera axes in ego: z (forward) -> (c, s, 0), x (right) -> (s, -c, 0), y (down) -> (0, 0, -1)
        rot = torch.tensor([[s, 0.0, c], [-c, 0.0, s], [0.0, -1.0, 0.0]], dtype=torch.float64)
        pts.append(cam @ rot.T + torch.tensor([0.0, 0.0, cam_height], dtype=torch.float64))
    return torch.stack(pts).float().expand(batch, cams, bins, H, W, 3).contiguous()


def random_inputs(
    batch: int,
    cams: int,
    bins: int,
    feat_hw: tuple[int, int],
    channels: int,
    grid: BEVGrid,
    spread: float = 1.3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Inputs of ``bev_pool_v2`` for uniform random points over ``spread`` times the grid's extent (so some
    fall outside; with few points per cell many cells stay empty). Keys: depth, feat, ranks_depth, ranks_feat,
    ranks_bev, bev_feat_shape, interval_starts, interval_lengths."""
    g = torch.Generator().manual_seed(seed)
    H, W = feat_hw
    lo = torch.tensor(grid.pc_range[:3])
    hi = torch.tensor(grid.pc_range[3:])
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * spread
    points = mid + (torch.rand(batch, cams, bins, H, W, 3, generator=g) * 2 - 1) * half
    ranks_bev, ranks_depth, ranks_feat, starts, lengths = bev_pool_v2_prepare(points, grid)
    return {
        "depth": torch.rand(batch, cams, bins, H, W, generator=g).to(dtype),
        "feat": torch.randn(batch, cams, H, W, channels, generator=g).to(dtype),
        "ranks_depth": ranks_depth,
        "ranks_feat": ranks_feat,
        "ranks_bev": ranks_bev,
        "bev_feat_shape": (batch, grid.Z, grid.H, grid.W, channels),
        "interval_starts": starts,
        "interval_lengths": lengths,
    }


def forward_and_grads(inputs: dict, backend: str, dtype: torch.dtype | None = None, seed: int = 1):
    """Run ``bev_pool_v2`` with ``backend`` on (fresh copies of) depth and feat cast to ``dtype`` and backprop a
    fixed random upstream gradient. Returns float64 CPU ``(out, grad_depth, grad_feat)``."""
    from .bev_pool import bev_pool_v2

    depth, feat = (inputs[k].detach().to(dtype or inputs[k].dtype).requires_grad_(True) for k in ("depth", "feat"))
    rest = {k: v for k, v in inputs.items() if k not in ("depth", "feat")}
    out = bev_pool_v2(depth, feat, backend=backend, **rest)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device)
    grads = torch.autograd.grad((out.float() * upstream).sum(), (depth, feat))
    return tuple(t.detach().double().cpu() for t in (out, *grads))
