"""Fused CPU kernel (numba) for multi-scale deformable attention, forward and backward.

Parallel over (batch, head): each thread owns ``value[b, :, m, :]`` and its gradient, so the
scatter of ``grad_value`` needs no atomics. The inner loop runs over the contiguous head dimension
D, the four bilinear corners folded into one pass (out-of-map corners get weight 0 and a clamped,
valid address), so it vectorises. Nothing of size ``Q*L*P*D`` is materialised.

Compute is float32 (float64 when any input is float64, e.g. for gradcheck); fp16/bf16 inputs are
computed in float32 and cast back.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _forward_kernel(
    value, dims, shapes, starts, sizes_f, loc, attn, out, one, half
):  # pragma: no cover - numba
    """value [B,S,M,D], loc [B,Q,M,L,P,2], attn [B,Q,M,L,P] -> out [B,Q,M,D], all flat 1D.

    ``dims`` int64 (B, S, M, D, Q, L, P); ``shapes`` [L,2] int64 (H, W); ``starts`` [L] int64; ``sizes_f`` [L,2] (H, W) in the compute dtype;
    ``one``/``half`` scalars of the compute dtype (keep arithmetic in that dtype).
    """
    B, S, M, D, Q, L, P = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]
    zero = one - one
    for bm in prange(B * M):
        b = bm // M
        m = bm - b * M
        acc = np.empty(D, dtype=out.dtype)  # one per (b, m) task, reused for every query
        for q in range(Q):
            for d in range(D):
                acc[d] = zero
            lp_off = ((b * Q + q) * M + m) * L * P
            for lvl in range(L):
                H = shapes[lvl, 0]
                W = shapes[lvl, 1]
                Hf = sizes_f[lvl, 0]
                Wf = sizes_f[lvl, 1]
                row = b * S + starts[lvl]
                for p in range(P):
                    k = lp_off + lvl * P + p
                    x = loc[2 * k] * Wf - half
                    y = loc[2 * k + 1] * Hf - half
                    if not (x >= -one and x < Wf and y >= -one and y < Hf):
                        continue  # all four corners outside: contributes nothing
                    a = attn[k]
                    xf = np.floor(x)
                    yf = np.floor(y)
                    x0 = np.int64(xf)
                    y0 = np.int64(yf)
                    fx = x - xf
                    fy = y - yf
                    gx = one - fx
                    gy = one - fy
                    vx0 = x0 >= 0
                    vx1 = x0 + 1 < W
                    vy0 = y0 >= 0
                    vy1 = y0 + 1 < H
                    w00 = gy * gx * a if (vy0 and vx0) else zero
                    w01 = gy * fx * a if (vy0 and vx1) else zero
                    w10 = fy * gx * a if (vy1 and vx0) else zero
                    w11 = fy * fx * a if (vy1 and vx1) else zero
                    xa = max(x0, 0)
                    xb = min(x0 + 1, W - 1)
                    ya = max(y0, 0)
                    yb = min(y0 + 1, H - 1)
                    o00 = ((row + ya * W + xa) * M + m) * D
                    o01 = ((row + ya * W + xb) * M + m) * D
                    o10 = ((row + yb * W + xa) * M + m) * D
                    o11 = ((row + yb * W + xb) * M + m) * D
                    # slices (views, no allocation) let LLVM vectorise the D loop without alias checks
                    v00 = value[o00 : o00 + D]
                    v01 = value[o01 : o01 + D]
                    v10 = value[o10 : o10 + D]
                    v11 = value[o11 : o11 + D]
                    for d in range(D):
                        acc[d] += w00 * v00[d] + w01 * v01[d] + w10 * v10[d] + w11 * v11[d]
            o_off = ((b * Q + q) * M + m) * D
            for d in range(D):
                out[o_off + d] = acc[d]


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _backward_kernel(
    value, dims, shapes, starts, sizes_f, loc, attn, grad_out, grad_value, grad_loc, grad_attn, one, half
):  # pragma: no cover - numba
    """Gradients of ``_forward_kernel``; ``grad_*`` zero-initialised, flat 1D, same layouts as the inputs."""
    B, S, M, D, Q, L, P = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]
    zero = one - one
    for bm in prange(B * M):
        b = bm // M
        m = bm - b * M
        for q in range(Q):
            g_off = ((b * Q + q) * M + m) * D
            go = grad_out[g_off : g_off + D]
            lp_off = ((b * Q + q) * M + m) * L * P
            for lvl in range(L):
                H = shapes[lvl, 0]
                W = shapes[lvl, 1]
                Hf = sizes_f[lvl, 0]
                Wf = sizes_f[lvl, 1]
                row = b * S + starts[lvl]
                for p in range(P):
                    k = lp_off + lvl * P + p
                    x = loc[2 * k] * Wf - half
                    y = loc[2 * k + 1] * Hf - half
                    if not (x >= -one and x < Wf and y >= -one and y < Hf):
                        continue  # all four corners outside: zero gradients
                    a = attn[k]
                    xf = np.floor(x)
                    yf = np.floor(y)
                    x0 = np.int64(xf)
                    y0 = np.int64(yf)
                    fx = x - xf
                    fy = y - yf
                    gx = one - fx
                    gy = one - fy
                    m00 = one if (y0 >= 0 and x0 >= 0) else zero
                    m01 = one if (y0 >= 0 and x0 + 1 < W) else zero
                    m10 = one if (y0 + 1 < H and x0 >= 0) else zero
                    m11 = one if (y0 + 1 < H and x0 + 1 < W) else zero
                    c00 = gy * gx * m00
                    c01 = gy * fx * m01
                    c10 = fy * gx * m10
                    c11 = fy * fx * m11
                    xa = max(x0, 0)
                    xb = min(x0 + 1, W - 1)
                    ya = max(y0, 0)
                    yb = min(y0 + 1, H - 1)
                    o00 = ((row + ya * W + xa) * M + m) * D
                    o01 = ((row + ya * W + xb) * M + m) * D
                    o10 = ((row + yb * W + xa) * M + m) * D
                    o11 = ((row + yb * W + xb) * M + m) * D
                    v00 = value[o00 : o00 + D]
                    v01 = value[o01 : o01 + D]
                    v10 = value[o10 : o10 + D]
                    v11 = value[o11 : o11 + D]
                    ga = zero
                    gsx = zero
                    gsy = zero
                    for d in range(D):
                        g = go[d]
                        u00 = v00[d] * m00
                        u01 = v01[d] * m01
                        u10 = v10[d] * m10
                        u11 = v11[d] * m11
                        ga += g * (gy * (gx * u00 + fx * u01) + fy * (gx * u10 + fx * u11))
                        gsx += g * (gy * (u01 - u00) + fy * (u11 - u10))
                        gsy += g * (gx * (u10 - u00) + fx * (u11 - u01))
                    s00 = a * c00
                    s01 = a * c01
                    s10 = a * c10
                    s11 = a * c11
                    g00 = grad_value[o00 : o00 + D]
                    g01 = grad_value[o01 : o01 + D]
                    g10 = grad_value[o10 : o10 + D]
                    g11 = grad_value[o11 : o11 + D]
                    for d in range(D):
                        g00[d] += s00 * go[d]
                    for d in range(D):
                        g01[d] += s01 * go[d]
                    for d in range(D):
                        g10[d] += s10 * go[d]
                    for d in range(D):
                        g11[d] += s11 * go[d]
                    grad_attn[k] = ga
                    grad_loc[2 * k] = a * Wf * gsx
                    grad_loc[2 * k + 1] = a * Hf * gsy


def _layout(shapes: list[tuple[int, int]], value: torch.Tensor, q: int, points: int, np_dtype):
    """Problem sizes (B, S, M, D, Q, L, P), level shapes [L,2] (H, W), level starts [L], float shapes."""
    B, S, M, D = value.shape
    L = len(shapes)
    dims = np.array([B, S, M, D, q, L, points], dtype=np.int64)
    table = np.asarray(shapes, dtype=np.int64).reshape(L, 2)
    starts = np.zeros(L, dtype=np.int64)
    starts[1:] = np.cumsum(table[:, 0] * table[:, 1])[:-1]
    return dims, table, starts, table.astype(np_dtype)


def _np(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return t.detach().to(dtype).contiguous().view(-1).numpy()


class _DeformAttnCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, shapes, sampling_locations, attention_weights):  # type: ignore[override]
        ctype = (
            torch.float64
            if torch.float64 in (value.dtype, sampling_locations.dtype, attention_weights.dtype)
            else torch.float32
        )
        np_dtype = np.float64 if ctype == torch.float64 else np.float32
        B, S, M, D = value.shape
        _, Q, _, L, P, _ = sampling_locations.shape
        dims, table, starts, sizes_f = _layout(shapes, value, Q, P, np_dtype)
        v = value.detach().to(ctype).contiguous()
        loc = sampling_locations.detach().to(ctype).contiguous()
        attn = attention_weights.detach().to(ctype).contiguous()
        out = np.empty(B * Q * M * D, dtype=np_dtype)  # every (b, q, m) row is written
        one, half = np_dtype(1.0), np_dtype(0.5)
        _forward_kernel(
            v.view(-1).numpy(),
            dims,
            table,
            starts,
            sizes_f,
            loc.view(-1).numpy(),
            attn.view(-1).numpy(),
            out,
            one,
            half,
        )
        ctx.save_for_backward(v, loc, attn)
        ctx.shapes = shapes
        ctx.dtypes = (value.dtype, sampling_locations.dtype, attention_weights.dtype)
        return torch.from_numpy(out).view(B, Q, M * D).to(value.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        v, loc, attn = ctx.saved_tensors
        ctype = v.dtype
        np_dtype = np.float64 if ctype == torch.float64 else np.float32
        _, Q, _, L, P, _ = loc.shape
        dims, table, starts, sizes_f = _layout(ctx.shapes, v, Q, P, np_dtype)
        grad_value = np.zeros(v.numel(), dtype=np_dtype)
        grad_loc = np.zeros(loc.numel(), dtype=np_dtype)
        grad_attn = np.zeros(attn.numel(), dtype=np_dtype)
        _backward_kernel(
            v.view(-1).numpy(),
            dims,
            table,
            starts,
            sizes_f,
            loc.view(-1).numpy(),
            attn.view(-1).numpy(),
            _np(grad_out, ctype),
            grad_value,
            grad_loc,
            grad_attn,
            np_dtype(1.0),
            np_dtype(0.5),
        )
        vd, ld, ad = ctx.dtypes
        gv = torch.from_numpy(grad_value).view(v.shape).to(vd) if ctx.needs_input_grad[0] else None
        gl = torch.from_numpy(grad_loc).view(loc.shape).to(ld) if ctx.needs_input_grad[2] else None
        ga = torch.from_numpy(grad_attn).view(attn.shape).to(ad) if ctx.needs_input_grad[3] else None
        return gv, None, gl, ga


def deform_attn_cpu(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Fused numba op: ``value [B,S,M,D]``, level ``shapes`` [(H, W)], ``sampling_locations [B,Q,M,L,P,2]``,
    ``attention_weights [B,Q,M,L,P]`` -> ``[B, Q, M*D]`` in ``value.dtype``. Differentiable (once)."""
    return _DeformAttnCPU.apply(value, shapes, sampling_locations, attention_weights)
