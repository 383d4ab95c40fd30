"""Fused CPU kernels (numba) for ``bev_pool_v2``, forward and backward, no atomics.

* ``_segment_sum`` (forward): parallel over intervals; interval k owns its BEV cell, so it accumulates
  ``depth[rd[i]] * feat[rf[i], :]`` over its points straight into ``out[cell, :]`` (the C loop vectorises).
  The feature gradient is the same segmented sum with the roles swapped: over the points re-sorted by
  feature row (``feature_intervals``), ``grad_feat[row, :] = sum depth[rd[i]] * grad_out[rb[i], :]``.
* ``_point_dot`` (depth gradient): parallel over points, ``g[i] = <grad_out[rb[i], :], feat[rf[i], :]>``;
  the P scalars are then summed into ``grad_depth`` at ``ranks_depth`` (a scatter of P values, not P x C).

Compute is float32 (float64 when an input is float64, e.g. for gradcheck); fp16/bf16 inputs are computed in
float32 and cast back. Problems under ``_PARALLEL_MIN_WORK`` points x channels run on one thread.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
import torch
from numba import njit, prange

from .bev_pool_prepare import feature_intervals


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _segment_sum(weight, rows, r_weight, r_row, r_out, starts, lengths, C, out):  # pragma: no cover - numba
    """``out[r_out[s_k], :] = sum_{i in interval k} weight[r_weight[i]] * rows[r_row[i], :]`` (flat 1D arrays,
    rows/out with C columns); ``out`` zero-initialised, each interval's ``r_out`` distinct."""
    for k in prange(starts.shape[0]):
        s = starts[k]
        o = np.int64(r_out[s]) * C
        dst = out[o : o + C]
        for i in range(s, s + lengths[k]):
            w = weight[r_weight[i]]
            f = np.int64(r_row[i]) * C
            src = rows[f : f + C]
            for c in range(C):
                dst[c] += w * src[c]


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _point_dot(feat, grad_out, ranks_feat, ranks_bev, C, grad_point):  # pragma: no cover - numba
    """``grad_point[i] = <grad_out[ranks_bev[i], :], feat[ranks_feat[i], :]>`` for every point i."""
    for i in prange(ranks_feat.shape[0]):
        f = np.int64(ranks_feat[i]) * C
        g = np.int64(ranks_bev[i]) * C
        a = feat[f : f + C]
        b = grad_out[g : g + C]
        acc = a[0] - a[0]
        for c in range(C):
            acc += a[c] * b[c]
        grad_point[i] = acc


_PARALLEL_MIN_WORK = 1 << 16  # points x channels


@contextlib.contextmanager
def _threads_for(work: int):
    """One thread for small problems: waking numba's pool costs more than they take (~10 ms vs < 1 ms)."""
    if work >= _PARALLEL_MIN_WORK:
        yield
        return
    prev = numba.get_num_threads()
    numba.set_num_threads(1)  # this thread's setting only
    try:
        yield
    finally:
        numba.set_num_threads(prev)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(-1).numpy()


class _BevPoolCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, depth, feat, ranks_depth, ranks_feat, ranks_bev, shape, starts, lengths):  # type: ignore[override]
        ctype = torch.float64 if torch.float64 in (depth.dtype, feat.dtype) else torch.float32
        B, Z, Y, X, C = shape
        d = depth.detach().to(ctype).contiguous()
        f = feat.detach().to(ctype).contiguous()
        out = torch.zeros(B * Z * Y * X * C, dtype=ctype)
        idx = [t.to(torch.int32).contiguous() for t in (ranks_depth, ranks_feat, ranks_bev, starts, lengths)]
        rd, rf, rb, st, ln = (_np(t) for t in idx)
        with _threads_for(rd.size * C):
            _segment_sum(_np(d), _np(f), rd, rf, rb, st, ln, C, out.numpy())
        ctx.save_for_backward(d, f, *idx[:3])
        ctx.meta = (depth.dtype, feat.dtype, shape)
        out_dtype = torch.promote_types(depth.dtype, feat.dtype)
        return out.view(B, Z, Y, X, C).permute(0, 4, 1, 2, 3).contiguous().to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        d, f, rd, rf, rb = ctx.saved_tensors
        depth_dtype, feat_dtype, (B, Z, Y, X, C) = ctx.meta
        go = grad_out.to(d.dtype).permute(0, 2, 3, 4, 1).contiguous()  # [B, Z, Y, X, C] cell-major
        grad_depth = grad_feat = None
        if ctx.needs_input_grad[0]:
            grad_point = torch.empty(rd.shape[0], dtype=d.dtype)
            with _threads_for(rd.numel() * C):
                _point_dot(_np(f), _np(go), _np(rf), _np(rb), C, grad_point.numpy())
            grad_depth = torch.zeros(d.numel(), dtype=d.dtype).index_add_(0, rd, grad_point)
            grad_depth = grad_depth.view(d.shape).to(depth_dtype)
        if ctx.needs_input_grad[1]:
            rd_s, rf_s, rb_s, st, ln = feature_intervals(rd, rf, rb)
            grad_feat = torch.zeros(f.numel(), dtype=d.dtype)
            with _threads_for(rd.numel() * C):
                _segment_sum(_np(d), _np(go), _np(rd_s), _np(rb_s), _np(rf_s), _np(st), _np(ln), C, grad_feat.numpy())
            grad_feat = grad_feat.view(f.shape).to(feat_dtype)
        return grad_depth, grad_feat, None, None, None, None, None, None


def bev_pool_cpu(
    depth: torch.Tensor,
    feat: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    bev_feat_shape: tuple[int, int, int, int, int],
    interval_starts: torch.Tensor,
    interval_lengths: torch.Tensor,
) -> torch.Tensor:
    """Fused numba op (inputs validated by ``bev_pool_v2``) -> ``[B, C, Z, Y, X]``. Differentiable (once)."""
    return _BevPoolCPU.apply(
        depth, feat, ranks_depth, ranks_feat, ranks_bev, tuple(bev_feat_shape), interval_starts, interval_lengths
    )
