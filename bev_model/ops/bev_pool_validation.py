"""Input checks for ``bev_pool_v2``: shapes, dtypes, devices, index ranges and the interval layout.

Errors name the argument at fault. The value checks (index ranges; the intervals are exactly the runs of a
non-decreasing ``ranks_bev``) are a few O(P) reductions read back with one host sync: the kernels trust them
(no bounds checks inside; each interval owns its BEV cell, so plain stores, no atomics).
"""

from __future__ import annotations

import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTS = (torch.int32, torch.int64)
_INT32_MAX = 2**31 - 1


def check_bev_pool_inputs(
    depth: torch.Tensor,
    feat: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    bev_feat_shape,
    interval_starts: torch.Tensor,
    interval_lengths: torch.Tensor,
    check_values: bool = True,
) -> tuple[int, int, int, int, int]:
    """Validate the inputs of ``bev_pool_v2``; return ``bev_feat_shape`` as ints ``(B, Z, Y, X, C)``.

    ``check_values=False`` skips the data-dependent checks (index ranges, interval layout: one host sync).

    Raises ``TypeError``/``ValueError`` naming the offending argument, what it is and what was expected.
    """
    named = (
        ("depth", depth),
        ("feat", feat),
        ("ranks_depth", ranks_depth),
        ("ranks_feat", ranks_feat),
        ("ranks_bev", ranks_bev),
        ("interval_starts", interval_starts),
        ("interval_lengths", interval_lengths),
    )
    for name, t in named:
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in named[:2]:
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    for name, t in named[2:]:
        if t.dtype not in _INTS:
            raise TypeError(f"{name} must be an int32 or int64 tensor, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if depth.dim() != 5:
        raise ValueError(f"depth must be [B, N, D, H, W], got shape {tuple(depth.shape)}")
    if feat.dim() != 5:
        raise ValueError(f"feat must be [B, N, H, W, C], got shape {tuple(feat.shape)}")
    B, N, D, H, W = depth.shape
    if tuple(feat.shape[:4]) != (B, N, H, W):
        raise ValueError(
            f"feat must be [B={B}, N={N}, H={H}, W={W}, C] to match depth {tuple(depth.shape)}, "
            f"got shape {tuple(feat.shape)}"
        )
    C = feat.shape[4]
    try:
        shape = tuple(int(s) for s in bev_feat_shape)
    except (TypeError, ValueError):
        raise TypeError(f"bev_feat_shape must be 5 ints (B, Z, Y, X, C), got {bev_feat_shape!r}") from None
    if len(shape) != 5 or min(shape) <= 0:
        raise ValueError(f"bev_feat_shape must be 5 positive ints (B, Z, Y, X, C), got {shape}")
    if shape[0] != B or shape[4] != C:
        raise ValueError(
            f"bev_feat_shape {shape} must have B={B} (depth) and C={C} (feat), got B={shape[0]}, C={shape[4]}"
        )
    P = ranks_depth.shape[0]
    for name, t in (("ranks_feat", ranks_feat), ("ranks_bev", ranks_bev)):
        if t.shape[0] != P:
            raise ValueError(f"{name} must have the length of ranks_depth ({P}), got {t.shape[0]}")
    if interval_lengths.shape != interval_starts.shape:
        raise ValueError(
            f"interval_lengths must have the shape of interval_starts {tuple(interval_starts.shape)}, "
            f"got {tuple(interval_lengths.shape)}"
        )
    devices = {t.device for _, t in named}
    if len(devices) != 1:
        raise ValueError(f"all tensors must share a device, got {', '.join(f'{n}: {t.device}' for n, t in named)}")
    limits = {
        "ranks_depth": (depth.numel(), "B*N*D*H*W of depth"),
        "ranks_feat": (B * N * H * W, "B*N*H*W of feat"),
        "ranks_bev": (shape[0] * shape[1] * shape[2] * shape[3], "B*Z*Y*X of bev_feat_shape"),
    }
    for name, (limit, what) in limits.items():
        if limit > _INT32_MAX:
            raise ValueError(f"{name}: {what} = {limit} does not fit the kernels' int32 indices")
    n_int = interval_starts.shape[0]
    if P == 0 or n_int == 0:
        if P != 0 or n_int != 0:
            raise ValueError(
                f"interval_starts/interval_lengths must be the runs of ranks_bev: got {n_int} intervals for {P} points"
            )
        return shape  # type: ignore[return-value]
    if check_values:
        _check_values(ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths, limits)
    return shape  # type: ignore[return-value]


def _check_values(ranks_depth, ranks_feat, ranks_bev, starts, lengths, limits) -> None:
    """Index ranges and the interval layout, one host sync."""
    starts = starts.long()
    lengths = lengths.long()
    rb = ranks_bev.long()
    P = rb.shape[0]
    n_int = starts.shape[0]
    stats = [ranks_depth.min(), ranks_depth.max(), ranks_feat.min(), ranks_feat.max(), rb.min(), rb.max()]
    expected_starts = torch.cumsum(lengths, 0) - lengths
    stats += [
        lengths.min(),
        lengths.sum(),
        (starts != expected_starts).sum(),
        (rb[1:] < rb[:-1]).sum(),  # descending steps
        (rb[1:] != rb[:-1]).sum(),  # run boundaries
    ]
    if n_int > 1:
        inner = starts[1:].clamp(1, P - 1)
        stats.append((rb[inner] == rb[inner - 1]).sum())  # interval starts inside a run
    else:
        stats.append(rb.new_zeros(()))
    vals = torch.stack([s.long() for s in stats]).tolist()
    for k, name in enumerate(("ranks_depth", "ranks_feat", "ranks_bev")):
        lo, hi = vals[2 * k], vals[2 * k + 1]
        limit, what = limits[name]
        if lo < 0 or hi >= limit:
            raise ValueError(f"{name} values must lie in [0, {limit}) ({what}), got min {lo}, max {hi}")
    min_len, total, bad_starts, descending, boundaries, split_runs = vals[6:]
    if min_len < 1:
        raise ValueError(f"interval_lengths must all be >= 1, got a minimum of {min_len}")
    if total != P or bad_starts:
        raise ValueError(
            f"interval_starts/interval_lengths must tile the {P} points in order (starts = exclusive cumsum of "
            f"lengths, lengths summing to P): lengths sum to {total}, {bad_starts} starts differ"
        )
    if descending:
        raise ValueError(f"ranks_bev must be sorted (non-decreasing): {descending} descending steps")
    if boundaries != n_int - 1 or split_runs:
        raise ValueError(
            f"intervals must be exactly the runs of equal ranks_bev: ranks_bev has {boundaries + 1} runs, "
            f"got {n_int} intervals"
        )
