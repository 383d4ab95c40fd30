"""Fused Triton kernels for ``bev_pool_v2`` (BEVPoolv2), forward and backward, no atomics.

* ``bev_pool_segment_kernel``: one program per (interval, channel block). Interval k's points share one BEV
  cell, which only this program writes: ``out[cell, c] = sum_i depth[rd[i]] * feat[rf[i], c]``, summed in a
  ``[BLOCK_P, BLOCK_C]`` float32 tile and stored once. The **feature gradient** is the same kernel over the
  points re-sorted by feature row (``feature_intervals``): ``grad_feat[row, c] = sum_i depth[rd[i]] *
  grad_out[rb[i], c]`` (roles of ``feat``/``ranks_feat`` and ``out``/``ranks_bev`` swapped); each row is one
  interval, so again plain stores.
* ``bev_pool_depth_grad_kernel``: one program per block of points, ``g[i] = <grad_out[rb[i], :],
  feat[rf[i], :]>`` over channel blocks in float32; the P scalars are summed into ``grad_depth`` at
  ``ranks_depth`` afterwards (a scatter of P values, not P x C).

fp16/bf16 inputs load in their dtype and accumulate in float32. Index tensors are int32; offsets are formed
in int64. Kernels are ``JITFunction`` objects (CUDA launches and ``compile_variant``); under
``TRITON_INTERPRET=1`` they run in Triton's interpreter on CPU tensors (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from .bev_pool_prepare import feature_intervals
from .triton_util import compile_jit, device_guard, kernel_for


def bev_pool_segment_kernel(
    weight_ptr,  # [*] flat depth probabilities
    rows_ptr,  # [*, C] rows (feat, or grad_out for the feature gradient)
    r_weight_ptr,  # [P] int32 index into weight
    r_row_ptr,  # [P] int32 row of rows
    r_out_ptr,  # [P] int32 row of out (read at each interval's start)
    starts_ptr,  # [I] int32
    lengths_ptr,  # [I] int32
    out_ptr,  # [*, C] zero-initialised; rows owned by one interval each
    C,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    k = tl.program_id(0)
    pid_c = tl.program_id(1)
    start = tl.load(starts_ptr + k)
    length = tl.load(lengths_ptr + k)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for p0 in range(0, length, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < length
        idx = start + offs_p
        rw = tl.load(r_weight_ptr + idx, mask=mask_p, other=0)
        rr = tl.load(r_row_ptr + idx, mask=mask_p, other=0).to(tl.int64)
        w = tl.load(weight_ptr + rw, mask=mask_p, other=0.0).to(tl.float32)
        f = tl.load(
            rows_ptr + rr[:, None] * C + offs_c[None, :], mask=mask_p[:, None] & mask_c[None, :], other=0.0
        ).to(tl.float32)
        acc += w[:, None] * f
    row = tl.load(r_out_ptr + start).to(tl.int64)
    tl.store(out_ptr + row * C + offs_c, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=mask_c)


def bev_pool_depth_grad_kernel(
    feat_ptr,  # [*, C]
    grad_out_ptr,  # [B*Z*Y*X, C]
    ranks_feat_ptr,  # [P] int32
    ranks_bev_ptr,  # [P] int32
    grad_point_ptr,  # [P] float32
    P,
    C,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    rf = tl.load(ranks_feat_ptr + offs_p, mask=mask_p, other=0).to(tl.int64)
    rb = tl.load(ranks_bev_ptr + offs_p, mask=mask_p, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m = mask_p[:, None] & (offs_c < C)[None, :]
        f = tl.load(feat_ptr + rf[:, None] * C + offs_c[None, :], mask=m, other=0.0).to(tl.float32)
        g = tl.load(grad_out_ptr + rb[:, None] * C + offs_c[None, :], mask=m, other=0.0).to(tl.float32)
        acc += f * g
    tl.store(grad_point_ptr + offs_p, tl.sum(acc, axis=1), mask=mask_p)


SEGMENT = JITFunction(bev_pool_segment_kernel)
DEPTH_GRAD = JITFunction(bev_pool_depth_grad_kernel)


def block_sizes(channels: int, kind: str = "segment") -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps): BLOCK_C the largest of 64/32/16 dividing C (else the next power of two,
    at most 64, masked), BLOCK_P filling a tile of 1024 (``segment``) or 2048 (``depth_grad``) elements,
    8 elements per thread. C=80 -> (64, 16, 4) segment; C=64 -> (16, 64, 4)."""
    if kind not in ("segment", "depth_grad"):
        raise ValueError(f"kind must be 'segment' or 'depth_grad', got {kind!r}")
    block_c = next((b for b in (64, 32, 16) if channels % b == 0), None)
    if block_c is None:
        block_c = min(64, max(16, triton.next_power_of_2(channels)))
    tile = 1024 if kind == "segment" else 2048
    block_p = max(16, tile // block_c)
    return block_p, block_c, max(1, min(8, block_p * block_c // (32 * 8)))


def _segment_sum(weight, rows, r_weight, r_row, r_out, starts, lengths, out, C: int) -> None:
    if starts.numel() == 0:
        return
    block_p, block_c, warps = block_sizes(C, "segment")
    grid = (starts.numel(), triton.cdiv(C, block_c))
    with device_guard(out.device):
        kernel_for(SEGMENT, out.device)[grid](
            weight, rows, r_weight, r_row, r_out, starts, lengths, out, C,
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
        )  # fmt: skip


class _BevPoolTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, depth, feat, ranks_depth, ranks_feat, ranks_bev, shape, starts, lengths):  # type: ignore[override]
        B, Z, Y, X, C = shape
        depth = depth.contiguous()
        feat = feat.contiguous()
        idx = [t.to(torch.int32).contiguous() for t in (ranks_depth, ranks_feat, ranks_bev, starts, lengths)]
        out = torch.zeros(B * Z * Y * X, C, dtype=torch.promote_types(depth.dtype, feat.dtype), device=depth.device)
        _segment_sum(depth, feat, *idx, out, C)
        ctx.save_for_backward(depth, feat, *idx[:3])
        ctx.shape = shape
        return out.view(B, Z, Y, X, C).permute(0, 4, 1, 2, 3).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        depth, feat, rd, rf, rb = ctx.saved_tensors
        C = ctx.shape[4]
        go = grad_out.permute(0, 2, 3, 4, 1).contiguous()  # [B, Z, Y, X, C] cell-major
        grad_depth = grad_feat = None
        if ctx.needs_input_grad[0]:
            P = rd.numel()
            grad_point = torch.empty(P, dtype=torch.float32, device=depth.device)
            if P:
                block_p, block_c, warps = block_sizes(C, "depth_grad")
                with device_guard(depth.device):
                    kernel_for(DEPTH_GRAD, depth.device)[(triton.cdiv(P, block_p),)](
                        feat, go, rf, rb, grad_point, P, C, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps
                    )
            grad_depth = torch.zeros(depth.numel(), dtype=torch.float32, device=depth.device)
            grad_depth = grad_depth.index_add_(0, rd, grad_point).view(depth.shape).to(depth.dtype)
        if ctx.needs_input_grad[1]:
            rd_s, rf_s, rb_s, st, ln = feature_intervals(rd, rf, rb)
            grad_feat = torch.zeros_like(feat)
            _segment_sum(depth, go, rd_s, rb_s, rf_s, st, ln, grad_feat, C)
        return grad_depth, grad_feat, None, None, None, None, None, None


def bev_pool_triton(
    depth: torch.Tensor,
    feat: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    bev_feat_shape: tuple[int, int, int, int, int],
    interval_starts: torch.Tensor,
    interval_lengths: torch.Tensor,
) -> torch.Tensor:
    """Fused Triton op (inputs validated by ``bev_pool_v2``) -> ``[B, C, Z, Y, X]``. Differentiable (once).

    CUDA tensors launch the compiled kernels; with ``TRITON_INTERPRET=1`` (set before triton is imported)
    they run in Triton's interpreter on any tensors (slow; for tests).
    """
    return _BevPoolTriton.apply(
        depth, feat, ranks_depth, ranks_feat, ranks_bev, tuple(bev_feat_shape), interval_starts, interval_lengths
    )


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compilation (no GPU needed): proves every variant builds for a named architecture.

KINDS = ("segment", "depth_grad")
_DTYPES = ("fp32", "fp16", "bf16")


def kernel_signature(kind: str, dtype: str) -> dict[str, str]:
    """Triton signature of the ``segment``/``depth_grad`` kernel for depth/feat/grad dtype ``dtype``."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if kind == "segment":
        ptrs = {"weight_ptr": f"*{dtype}", "rows_ptr": f"*{dtype}"}
        ptrs.update({n: "*i32" for n in ("r_weight_ptr", "r_row_ptr", "r_out_ptr", "starts_ptr", "lengths_ptr")})
        ptrs["out_ptr"] = f"*{dtype}"
        ints = {"C": "i32"}
    elif kind == "depth_grad":
        ptrs = {"feat_ptr": f"*{dtype}", "grad_out_ptr": f"*{dtype}", "ranks_feat_ptr": "*i32",
                "ranks_bev_ptr": "*i32", "grad_point_ptr": "*fp32"}  # fmt: skip
        ints = {"P": "i32", "C": "i32"}
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {**ptrs, **ints, "BLOCK_P": "constexpr", "BLOCK_C": "constexpr"}


def compile_variant(kind: str, dtype: str, arch: int, channels: int = 80):
    """Compile the ``segment`` (forward and feature gradient) or ``depth_grad`` kernel for ``dtype``
    (fp32/fp16/bf16) to PTX and cubin for ``sm_{arch}``, specialised for ``channels`` as the JIT would
    (``C`` divisible by 16 when it is). Returns Triton's ``CompiledKernel``. Needs ptxas, not a GPU."""
    block_p, block_c, warps = block_sizes(channels, kind)
    return compile_jit(
        SEGMENT if kind == "segment" else DEPTH_GRAD,
        kernel_signature(kind, dtype),
        {"BLOCK_P": block_p, "BLOCK_C": block_c},
        arch,
        warps,
        divisible_by_16={"C"} if channels % 16 == 0 else set(),
    )
