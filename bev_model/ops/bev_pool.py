"""``bev_pool_v2``: BEVPoolv2 (BEVDet) voxel pooling of a lifted frustum, one entry point, three backends.

For every interval (the run of frustum points sharing one BEV cell after sorting by ``ranks_bev``, see
``bev_pool_v2_prepare``)::

    out[b, :, z, y, x] = sum_{i in interval} depth.flat[ranks_depth[i]] * feat.flat_rows[ranks_feat[i], :]

so the ``[P, C]`` frustum features ``depth (x) feat`` are never materialised. Cells without points are 0.

Backend choice (first match wins), as ``multi_scale_deformable_attn``:
1. the ``backend`` argument when it is not ``"auto"``;
2. the environment variable ``BEVSTREAM_BEV_POOL_BACKEND`` (``reference``, ``cpu``, ``triton`` or ``auto``);
3. by device: ``triton`` for CUDA tensors, ``cpu`` (numba) for CPU tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .bev_pool_validation import check_bev_pool_inputs
from .functional import resolve_backend

BEV_POOL_ENV_VAR = "BEVSTREAM_BEV_POOL_BACKEND"


def bev_pool_v2_reference(
    depth: torch.Tensor,
    feat: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    bev_feat_shape: Sequence[int],
) -> torch.Tensor:
    """Plain torch (``index_add_``, autograd): materialises the ``[P, C]`` point features. Same contract."""
    B, Z, Y, X, C = (int(s) for s in bev_feat_shape)
    dtype = torch.promote_types(depth.dtype, feat.dtype)
    w = depth.reshape(-1)[ranks_depth.long()].to(dtype)  # [P]
    rows = feat.reshape(-1, C)[ranks_feat.long()].to(dtype)  # [P, C]
    out = rows.new_zeros(B * Z * Y * X, C).index_add(0, ranks_bev.long(), w[:, None] * rows)
    return out.view(B, Z, Y, X, C).permute(0, 4, 1, 2, 3).contiguous()


def bev_pool_v2(
    depth: torch.Tensor,
    feat: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    bev_feat_shape: Sequence[int],
    interval_starts: torch.Tensor,
    interval_lengths: torch.Tensor,
    backend: str = "auto",
    check_values: bool = True,
) -> torch.Tensor:
    """BEVPoolv2 voxel pooling (BEVDet's signature).

    Args:
        depth: ``[B, N, D, H, W]`` depth distribution of N cameras over D bins on an H x W feature map.
        feat: ``[B, N, H, W, C]`` context features.
        ranks_depth: ``[P]`` int32/int64 index into the flat ``depth`` of each in-grid frustum point.
        ranks_feat: ``[P]`` index into the flat feature rows ``feat.view(B*N*H*W, C)``.
        ranks_bev: ``[P]`` flat ``(b, z, y, x)`` cell of each point, sorted (non-decreasing).
        bev_feat_shape: ``(B, Z, Y, X, C)``.
        interval_starts, interval_lengths: ``[I]``, exactly the runs of equal ``ranks_bev``.
        backend: ``auto`` | ``reference`` | ``cpu`` | ``triton`` (see the module docstring).
        check_values: check the index values and the interval layout (the kernels index without bounds checks;
            this costs a few passes over the points and one host sync). Shapes and dtypes are always checked;
            pass False only for indices straight from :func:`bev_pool_v2_prepare`.

    Returns:
        ``[B, C, Z, Y, X]`` (contiguous) in the promoted dtype of ``depth`` and ``feat``; differentiable in
        ``depth`` and ``feat``. ``bev_pool_v2_prepare`` builds the index tensors from metric frustum points.
    """
    shape = check_bev_pool_inputs(
        depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape, interval_starts, interval_lengths,
        check_values=check_values,
    )
    which = resolve_backend(backend, depth.device, env_var=BEV_POOL_ENV_VAR)
    if which == "reference":
        return bev_pool_v2_reference(depth, feat, ranks_depth, ranks_feat, ranks_bev, shape)
    if which == "cpu":
        if depth.device.type != "cpu":
            raise ValueError(f"backend 'cpu' needs CPU tensors, got depth on {depth.device}")
        from .bev_pool_cpu import bev_pool_cpu

        return bev_pool_cpu(depth, feat, ranks_depth, ranks_feat, ranks_bev, shape, interval_starts, interval_lengths)
    from .bev_pool_triton import bev_pool_triton

    return bev_pool_triton(depth, feat, ranks_depth, ranks_feat, ranks_bev, shape, interval_starts, interval_lengths)
