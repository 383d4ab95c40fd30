"""BEVNeXt (Li et al., CVPR 2024): a dense, depth-based BEV detector as a detector family.

Presets ``bevnext_tiny`` (CPU-sized, single frame) and ``bevnext_r50`` (official shapes, 9 frames);
``FAMILY`` is listed in ``bev_model.registry._families``. Modules: ``config`` (typed config, presets),
``depth`` (depth net, CRF, LiDAR targets), ``lift`` (frustum -> BEV through the fused
``bev_model.ops.bev_pool_v2``), ``bev`` (Res2Fusion, Res2Net BEV backbone, LSS-FPN),
``head`` (CenterPoint heads, refinement, decoding), ``model`` (``BEVNeXt``, ``FrustumHistory``).
"""

from __future__ import annotations

from ..registry import Family
from .config import BEVNeXtConfig, r50, tiny


def _build(cfg: BEVNeXtConfig):
    from .model import BEVNeXt

    return BEVNeXt(cfg)


FAMILY = Family(name="bevnext", config_type=BEVNeXtConfig, presets={"bevnext_tiny": tiny, "bevnext_r50": r50},
                build=_build)

__all__ = ["FAMILY", "BEVNeXtConfig"]
