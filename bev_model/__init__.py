"""bev_model: the BEVFormer v2 detector (perspective supervision, hybrid queries, temporal fusion).

    from bev_model import build_model, get_preset
    model = build_model(get_preset("tiny"))
    losses = model.forward_train(batch)      # {"loss": ..., "bev.cls": ..., "pers.depth": ...}
    detections = model.predict(batch)        # [{"boxes", "scores", "labels", "attrs"}] per sample
"""

from __future__ import annotations

from .config import ModelConfig
from .presets import PRESETS, get_preset, model_config_from_dict


def build_model(cfg: ModelConfig):
    """``ModelConfig`` -> :class:`bev_model.detector.BEVFormerV2` (randomly initialised; backbone weights only
    from ``cfg.backbone.weights``, a local file)."""
    from .detector import BEVFormerV2

    return BEVFormerV2(cfg)


__all__ = ["PRESETS", "ModelConfig", "build_model", "get_preset", "model_config_from_dict"]
