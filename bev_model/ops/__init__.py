"""Fused ops, three backends each: multi-scale deformable attention (and the ``MSDeformAttn`` module) and
BEVPoolv2 voxel pooling (``bev_pool_v2`` with its index preparation ``bev_pool_v2_prepare``)."""

from .bev_pool import BEV_POOL_ENV_VAR, bev_pool_v2, bev_pool_v2_reference
from .bev_pool_prepare import bev_pool_v2_prepare
from .functional import BACKENDS, ENV_VAR, multi_scale_deformable_attn, resolve_backend
from .module import MSDeformAttn
from .reference import multi_scale_deformable_attn_reference

__all__ = [
    "BACKENDS",
    "BEV_POOL_ENV_VAR",
    "ENV_VAR",
    "MSDeformAttn",
    "bev_pool_v2",
    "bev_pool_v2_prepare",
    "bev_pool_v2_reference",
    "multi_scale_deformable_attn",
    "multi_scale_deformable_attn_reference",
    "resolve_backend",
]
