"""bev_model: the detector families (BEVFormer v2 on main; BEVNeXt, the LiDAR teacher, BEVDistill).

    from bev_model import build_model, get_preset
    model = build_model(get_preset("tiny"))
    losses = model.forward_train(batch)      # {"loss": ..., "bev.cls": ..., "pers.depth": ...}
    detections = model.predict(batch)        # [{"boxes", "scores", "labels", "attrs"}] per sample

Each family registers itself in :mod:`bev_model.registry` when its registration module is imported below.
"""

from __future__ import annotations

from . import presets as _bevformer_v2  # noqa: F401  (registers the BEVFormer v2 family)
from .config import ModelConfig
from .registry import FAMILIES, build_model, get_preset, model_config_from_dict, preset_names

PRESETS = preset_names()

__all__ = ["FAMILIES", "PRESETS", "ModelConfig", "build_model", "get_preset", "model_config_from_dict", "preset_names"]
