"""bev_model: the detector families (BEVFormer v2 on main; BEVNeXt, the LiDAR teacher, BEVDistill).

    from bev_model import build_model, get_preset
    model = build_model(get_preset("tiny"))
    losses = model.forward_train(batch)      # {"loss": ..., "bev.cls": ..., "pers.depth": ...}
    detections = model.predict(batch)        # [{"boxes", "scores", "labels", "attrs"}] per sample

The families are listed in :mod:`bev_model.registry` (``_families``).
"""

from __future__ import annotations

from .config import ModelConfig
from .registry import build_model, get_preset, model_config_from_dict, preset_names

PRESETS = preset_names()

__all__ = ["PRESETS", "ModelConfig", "build_model", "get_preset", "model_config_from_dict", "preset_names"]
