"""Multi-scale deformable attention: the op (three backends) and the ``MSDeformAttn`` module."""

from .functional import BACKENDS, ENV_VAR, multi_scale_deformable_attn, resolve_backend
from .module import MSDeformAttn
from .reference import multi_scale_deformable_attn_reference

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "MSDeformAttn",
    "multi_scale_deformable_attn",
    "multi_scale_deformable_attn_reference",
    "resolve_backend",
]
