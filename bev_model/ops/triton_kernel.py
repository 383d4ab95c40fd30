"""Fused Triton kernels for multi-scale deformable attention (forward and backward).

One program owns a tile of ``BLOCK_Q`` queries x ``BLOCK_D`` channels of one (batch, head) and
walks all levels and points: bilinear sampling with zero padding (``align_corners=False``) and the
attention-weighted sum stay in registers, in float32. Nothing of size ``Q*L*P*D`` is materialised.

Backward recomputes the samples: ``grad_attention_weights`` and ``grad_sampling_locations`` are
reductions over D inside the tile (each (query, head, level, point) is owned by one program, so
they are plain stores); ``grad_value`` is scattered with float32 atomic adds into a float32
buffer (cast to the value dtype at the end), so fp16/bf16 inputs never accumulate in low precision.

Kernels are plain functions wrapped twice: ``FORWARD``/``BACKWARD`` are ``JITFunction`` objects
(CUDA launches and ahead-of-time compilation, see ``compile_variant``); when the process imported
Triton with ``TRITON_INTERPRET=1`` they run through Triton's interpreter instead (CPU tensors too).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from .triton_util import compile_jit, device_guard, interpreter_active, kernel_for, resource_usage

__all__ = ["compile_variant", "deform_attn_triton", "interpreter_active", "resource_usage"]


def deform_attn_fwd_kernel(
    value_ptr,  # [B, S, M, D]
    shapes_ptr,  # [L, 2] int32 (H, W)
    starts_ptr,  # [L] int32
    loc_ptr,  # [B, Q, M, L, P, 2]
    attn_ptr,  # [B, Q, M, L, P]
    out_ptr,  # [B, Q, M, D]
    S,
    Q,
    M,
    D,
    L,
    P,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bm = tl.program_id(1)
    b = (pid_bm // M).to(tl.int64)
    m = pid_bm % M
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    mask_q = offs_q < Q
    mask_qd = mask_q[:, None] & (offs_d < D)[None, :]
    row = (b * Q + offs_q) * M + m  # [BLOCK_Q] int64: (b, q, m) row of loc/attn/out
    value_bm = value_ptr + b * S * M * D + m * D
    MD = M * D
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for lvl in range(L):
        H = tl.load(shapes_ptr + 2 * lvl)
        W = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        Hf = H.to(tl.float32)
        Wf = W.to(tl.float32)
        for p in range(P):
            k = row * (L * P) + lvl * P + p
            x = tl.load(loc_ptr + 2 * k, mask=mask_q, other=0.0).to(tl.float32) * Wf - 0.5
            y = tl.load(loc_ptr + 2 * k + 1, mask=mask_q, other=0.0).to(tl.float32) * Hf - 0.5
            a = tl.load(attn_ptr + k, mask=mask_q, other=0.0).to(tl.float32)
            # clamp far-away points (all corners outside either way) so the int conversion is defined
            x = tl.minimum(tl.maximum(x, -2.0), Wf + 1.0)
            y = tl.minimum(tl.maximum(y, -2.0), Hf + 1.0)
            xf = tl.floor(x)
            yf = tl.floor(y)
            fx = x - xf
            fy = y - yf
            x0 = xf.to(tl.int32)
            y0 = yf.to(tl.int32)
            x1 = x0 + 1
            y1 = y0 + 1
            okx0 = (x0 >= 0) & (x0 < W)
            okx1 = (x1 >= 0) & (x1 < W)
            oky0 = (y0 >= 0) & (y0 < H) & mask_q
            oky1 = (y1 >= 0) & (y1 < H) & mask_q
            base = start + y0 * W + x0
            p00 = value_bm + base.to(tl.int64) * MD
            p01 = p00 + MD
            p10 = p00 + W.to(tl.int64) * MD
            p11 = p10 + MD
            v00 = tl.load(p00[:, None] + offs_d[None, :], mask=mask_qd & (oky0 & okx0)[:, None], other=0.0)
            v01 = tl.load(p01[:, None] + offs_d[None, :], mask=mask_qd & (oky0 & okx1)[:, None], other=0.0)
            v10 = tl.load(p10[:, None] + offs_d[None, :], mask=mask_qd & (oky1 & okx0)[:, None], other=0.0)
            v11 = tl.load(p11[:, None] + offs_d[None, :], mask=mask_qd & (oky1 & okx1)[:, None], other=0.0)
            gx = 1.0 - fx
            gy = 1.0 - fy
            w00 = (gy * gx * a)[:, None]
            w01 = (gy * fx * a)[:, None]
            w10 = (fy * gx * a)[:, None]
            w11 = (fy * fx * a)[:, None]
            acc += (
                w00 * v00.to(tl.float32)
                + w01 * v01.to(tl.float32)
                + w10 * v10.to(tl.float32)
                + w11 * v11.to(tl.float32)
            )
    out_ptrs = out_ptr + row[:, None] * D + offs_d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_qd)


def deform_attn_bwd_kernel(
    value_ptr,  # [B, S, M, D]
    shapes_ptr,  # [L, 2] int32 (H, W)
    starts_ptr,  # [L] int32
    loc_ptr,  # [B, Q, M, L, P, 2]
    attn_ptr,  # [B, Q, M, L, P]
    grad_out_ptr,  # [B, Q, M, D]
    grad_value_ptr,  # [B, S, M, D] float32, zero-initialised (atomic adds)
    grad_loc_ptr,  # [B, Q, M, L, P, 2]
    grad_attn_ptr,  # [B, Q, M, L, P]
    S,
    Q,
    M,
    D,
    L,
    P,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bm = tl.program_id(1)
    b = (pid_bm // M).to(tl.int64)
    m = pid_bm % M
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    mask_q = offs_q < Q
    mask_qd = mask_q[:, None] & (offs_d < D)[None, :]
    row = (b * Q + offs_q) * M + m
    bm_off = b * S * M * D + m * D
    value_bm = value_ptr + bm_off
    grad_value_bm = grad_value_ptr + bm_off
    MD = M * D
    go = tl.load(grad_out_ptr + row[:, None] * D + offs_d[None, :], mask=mask_qd, other=0.0).to(tl.float32)
    for lvl in range(L):
        H = tl.load(shapes_ptr + 2 * lvl)
        W = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        Hf = H.to(tl.float32)
        Wf = W.to(tl.float32)
        for p in range(P):
            k = row * (L * P) + lvl * P + p
            x = tl.load(loc_ptr + 2 * k, mask=mask_q, other=0.0).to(tl.float32) * Wf - 0.5
            y = tl.load(loc_ptr + 2 * k + 1, mask=mask_q, other=0.0).to(tl.float32) * Hf - 0.5
            a = tl.load(attn_ptr + k, mask=mask_q, other=0.0).to(tl.float32)
            x = tl.minimum(tl.maximum(x, -2.0), Wf + 1.0)
            y = tl.minimum(tl.maximum(y, -2.0), Hf + 1.0)
            xf = tl.floor(x)
            yf = tl.floor(y)
            fx = x - xf
            fy = y - yf
            x0 = xf.to(tl.int32)
            y0 = yf.to(tl.int32)
            x1 = x0 + 1
            y1 = y0 + 1
            okx0 = (x0 >= 0) & (x0 < W)
            okx1 = (x1 >= 0) & (x1 < W)
            oky0 = (y0 >= 0) & (y0 < H) & mask_q
            oky1 = (y1 >= 0) & (y1 < H) & mask_q
            m00 = mask_qd & (oky0 & okx0)[:, None]
            m01 = mask_qd & (oky0 & okx1)[:, None]
            m10 = mask_qd & (oky1 & okx0)[:, None]
            m11 = mask_qd & (oky1 & okx1)[:, None]
            o00 = (start + y0 * W + x0).to(tl.int64) * MD
            o01 = o00 + MD
            o10 = o00 + W.to(tl.int64) * MD
            o11 = o10 + MD
            d2 = offs_d[None, :]
            v00 = tl.load(value_bm + o00[:, None] + d2, mask=m00, other=0.0).to(tl.float32)
            v01 = tl.load(value_bm + o01[:, None] + d2, mask=m01, other=0.0).to(tl.float32)
            v10 = tl.load(value_bm + o10[:, None] + d2, mask=m10, other=0.0).to(tl.float32)
            v11 = tl.load(value_bm + o11[:, None] + d2, mask=m11, other=0.0).to(tl.float32)
            gx = 1.0 - fx
            gy = 1.0 - fy
            gx2 = gx[:, None]
            gy2 = gy[:, None]
            fx2 = fx[:, None]
            fy2 = fy[:, None]
            sample = gy2 * (gx2 * v00 + fx2 * v01) + fy2 * (gx2 * v10 + fx2 * v11)
            dsx = gy2 * (v01 - v00) + fy2 * (v11 - v10)
            dsy = gx2 * (v10 - v00) + fx2 * (v11 - v01)
            g_attn = tl.sum(go * sample, axis=1)
            g_x = tl.sum(go * dsx, axis=1) * a * Wf
            g_y = tl.sum(go * dsy, axis=1) * a * Hf
            tl.store(grad_attn_ptr + k, g_attn.to(grad_attn_ptr.dtype.element_ty), mask=mask_q)
            tl.store(grad_loc_ptr + 2 * k, g_x.to(grad_loc_ptr.dtype.element_ty), mask=mask_q)
            tl.store(grad_loc_ptr + 2 * k + 1, g_y.to(grad_loc_ptr.dtype.element_ty), mask=mask_q)
            ga = go * a[:, None]
            tl.atomic_add(grad_value_bm + o00[:, None] + d2, ga * (gy2 * gx2), mask=m00)
            tl.atomic_add(grad_value_bm + o01[:, None] + d2, ga * (gy2 * fx2), mask=m01)
            tl.atomic_add(grad_value_bm + o10[:, None] + d2, ga * (fy2 * gx2), mask=m10)
            tl.atomic_add(grad_value_bm + o11[:, None] + d2, ga * (fy2 * fx2), mask=m11)


FORWARD = JITFunction(deform_attn_fwd_kernel)
BACKWARD = JITFunction(deform_attn_bwd_kernel)


def block_sizes(head_dim: int, num_queries: int | None = None, kind: str = "fwd") -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_D, num_warps) for a head dim: BLOCK_D covers it (masked when ragged), tiles of 2K
    elements; 8 elements per thread forward, 4 backward (its scalar atomics need a 64-bit address per
    element; 8 would cost 188 registers on sm_80). No spills for head dims 32/64 (``resource_usage``).

    head_dim 32 -> (64, 32, 8 fwd / 16 bwd); 64 -> (32, 64, 8 / 16); smaller tiles when Q is small.
    """
    if kind not in ("fwd", "bwd"):
        raise ValueError(f"kind must be 'fwd' or 'bwd', got {kind!r}")
    block_d = max(triton.next_power_of_2(head_dim), 16)
    block_q = max(16, min(128, 2048 // block_d))
    if num_queries is not None:
        block_q = max(16, min(block_q, triton.next_power_of_2(max(num_queries, 1))))
    per_thread = 8 if kind == "fwd" else 4
    num_warps = max(1, min(16, block_q * block_d // (32 * per_thread)))
    return block_q, block_d, num_warps


@functools.lru_cache(maxsize=64)
def _level_tables(
    shapes: tuple[tuple[int, int], ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    table = torch.tensor(shapes, dtype=torch.int32).reshape(-1, 2)
    starts = torch.zeros(len(shapes), dtype=torch.int32)
    starts[1:] = torch.cumsum(table[:, 0] * table[:, 1], 0)[:-1]
    return table.to(device), starts.to(device)


class _DeformAttnTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, shapes, sampling_locations, attention_weights):  # type: ignore[override]
        value = value.contiguous()
        loc = sampling_locations.contiguous()
        attn = attention_weights.contiguous()
        B, S, M, D = value.shape
        _, Q, _, L, P, _ = loc.shape
        table, starts = _level_tables(tuple(shapes), value.device)
        out = torch.empty(B, Q, M, D, dtype=value.dtype, device=value.device)
        block_q, block_d, warps = block_sizes(D, Q)
        if out.numel() > 0:
            grid = (triton.cdiv(Q, block_q), B * M)
            with device_guard(value.device):
                kernel_for(FORWARD, value.device)[grid](
                    value, table, starts, loc, attn, out, S, Q, M, D, L, P,
                    BLOCK_Q=block_q, BLOCK_D=block_d, num_warps=warps,
                )  # fmt: skip
        ctx.save_for_backward(value, loc, attn)
        ctx.shapes = tuple(shapes)
        return out.view(B, Q, M * D)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        value, loc, attn = ctx.saved_tensors
        B, S, M, D = value.shape
        _, Q, _, L, P, _ = loc.shape
        table, starts = _level_tables(ctx.shapes, value.device)
        grad_out = grad_out.contiguous()
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        grad_loc = torch.empty_like(loc)  # every element is written by the kernel
        grad_attn = torch.empty_like(attn)
        block_q, block_d, warps = block_sizes(D, Q, "bwd")
        if grad_out.numel() > 0:
            grid = (triton.cdiv(Q, block_q), B * M)
            with device_guard(value.device):
                kernel_for(BACKWARD, value.device)[grid](
                    value, table, starts, loc, attn, grad_out, grad_value, grad_loc, grad_attn, S, Q, M, D, L, P,
                    BLOCK_Q=block_q, BLOCK_D=block_d, num_warps=warps,
                )  # fmt: skip
        return grad_value.to(value.dtype), None, grad_loc, grad_attn


def deform_attn_triton(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Fused Triton op: ``value [B,S,M,D]``, level ``shapes`` [(H, W)], ``sampling_locations [B,Q,M,L,P,2]``,
    ``attention_weights [B,Q,M,L,P]`` -> ``[B, Q, M*D]`` in ``value.dtype``. Differentiable (once).

    CUDA tensors launch the compiled kernel; with ``TRITON_INTERPRET=1`` (set before triton is imported)
    it runs in Triton's interpreter on any tensors (slow; for tests).
    """
    return _DeformAttnTriton.apply(value, [tuple(s) for s in shapes], sampling_locations, attention_weights)


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compilation (no GPU needed): proves every variant builds for a named architecture.

_TRITON_DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


def kernel_signature(kind: str, dtype: str) -> dict[str, str]:
    """Triton signature of the ``fwd``/``bwd`` kernel for value/location/weight dtype ``dtype``."""
    t = _TRITON_DTYPES[dtype]
    ptrs = {
        "value_ptr": f"*{t}",
        "shapes_ptr": "*i32",
        "starts_ptr": "*i32",
        "loc_ptr": f"*{t}",
        "attn_ptr": f"*{t}",
    }
    if kind == "fwd":
        ptrs["out_ptr"] = f"*{t}"
    elif kind == "bwd":
        ptrs.update(grad_out_ptr=f"*{t}", grad_value_ptr="*fp32", grad_loc_ptr=f"*{t}", grad_attn_ptr=f"*{t}")
    else:
        raise ValueError(f"kind must be 'fwd' or 'bwd', got {kind!r}")
    ints = {name: "i32" for name in ("S", "Q", "M", "D", "L", "P")}
    return {**ptrs, **ints, "BLOCK_Q": "constexpr", "BLOCK_D": "constexpr"}


def compile_variant(kind: str, dtype: str, arch: int, head_dim: int = 32):
    """Compile the ``fwd``/``bwd`` kernel for ``dtype`` (fp32/fp16/bf16) to PTX and cubin for ``sm_{arch}``.

    Specialised as the JIT would for ``head_dim``: 16-byte aligned pointers, and ``D`` divisible by 16
    when it is (that lets loads vectorise). Returns Triton's ``CompiledKernel`` (``.asm["ptx"]``,
    ``.asm["cubin"]``). Needs ptxas (shipped with triton), not a GPU.
    """
    jit_fn = FORWARD if kind == "fwd" else BACKWARD
    block_q, block_d, warps = block_sizes(head_dim, kind=kind)
    return compile_jit(
        jit_fn,
        kernel_signature(kind, dtype),
        {"BLOCK_Q": block_q, "BLOCK_D": block_d},
        arch,
        warps,
        divisible_by_16={"D"} if head_dim % 16 == 0 else set(),
    )
