"""Geometry stays in float32 under mixed precision.

Camera matrices, pillar projections, box decoding and the targets built from them lose metres in
bf16 (8 mantissa bits: 0.25 m at 50 m) and ``torch.linalg`` refuses 16-bit inputs, so every function
that does such geometry is wrapped with :func:`float32_geometry`: inside it autocast is off and its
16-bit floating tensor arguments (also inside dicts, lists and tuples) arrive as float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
_LOW = (torch.float16, torch.bfloat16)


def to_float32(x: Any) -> Any:
    """``x`` with every fp16/bf16 tensor (also inside dicts, lists, tuples) cast to float32; anything else as is."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype in _LOW else x
    if isinstance(x, dict):
        return {k: to_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(to_float32(v) for v in x)
    return x


def float32_geometry(fn: F) -> F:
    """Decorator: run ``fn`` with autocast disabled (CPU and CUDA) and its 16-bit tensor arguments in float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*to_float32(args), **to_float32(kwargs))

    return wrapper  # type: ignore[return-value]
