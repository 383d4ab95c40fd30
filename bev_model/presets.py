"""BEVFormer v2 presets: a name that builds a whole ``ModelConfig`` (the timm idea applied to our detector).

* ``tiny``: ResNet-18, 128-channel FPN, 50x50 BEV at 2.048 m, 1 encoder / 3 decoder layers,
  150 learned + 50 hybrid queries (anchored on their proposals' boxes and scores: ``head.hybrid=anchor``),
  t2 temporal fusion. Meant for CPU training on small images
  (6 cameras x about 128x352).
* ``r50``: the official BEVFormer v2 R50 t2 shapes: 200x200 BEV at 0.512 m, 6 encoder layers,
  900 learned queries (+300 hybrid), 6 decoder layers, Group-DETR with 11 groups in training (as the
  official configs); frozen stem + stage 1, BN in eval mode.
* ``large``: ConvNeXt-XL (``convnext_xlarge``) with gradient checkpointing, otherwise r50 shapes;
  meant for DeepSpeed ZeRO-3.

YAML: ``model: {preset: tiny, encoder: {num_layers: 2}}`` -> :func:`bev_model.registry.model_config_from_dict`.
"""

from __future__ import annotations

from .config import (
    BackboneConfig,
    EncoderConfig,
    HeadConfig,
    ModelConfig,
    NeckConfig,
    PerspectiveConfig,
    TemporalConfig,
)
from .registry import Family


def _tiny() -> ModelConfig:
    return ModelConfig(
        backbone=BackboneConfig(name="resnet18", out_strides=(8, 16, 32)),
        neck=NeckConfig(out_channels=128, num_levels=5),
        perspective=PerspectiveConfig(
            num_convs=1,
            # objects in ~0.22x nuScenes images are about 4x smaller than at full resolution
            size_ranges=((0.0, 16.0), (16.0, 32.0), (32.0, 64.0), (64.0, 128.0), (128.0, 1e8)),
            focal_ref=120.0,
        ),
        encoder=EncoderConfig(
            bev_h=50, bev_w=50, embed_dims=128, num_layers=1, num_heads=4, num_levels=4,
            num_points=4, num_z_anchors=4, ffn_dims=256, dropout=0.0,
        ),
        temporal=TemporalConfig(offsets=(-1, 0), num_blocks=1),
        head=HeadConfig(
            num_queries=150, num_hybrid=50, num_layers=3, num_heads=4, num_points=4, ffn_dims=256,
            dropout=0.0, proposal_nms_radius=2.0, proposal_pre_nms=1000, hybrid="anchor",
        ),
    )


def _r50() -> ModelConfig:
    return ModelConfig(
        backbone=BackboneConfig(name="resnet50", out_strides=(8, 16, 32), frozen_stages=1, norm_eval=True),
        neck=NeckConfig(out_channels=256, num_levels=5),
        perspective=PerspectiveConfig(num_convs=4),
        encoder=EncoderConfig(bev_h=200, bev_w=200, embed_dims=256, num_layers=6, num_points=8, num_z_anchors=4),
        temporal=TemporalConfig(offsets=(-1, 0), num_blocks=2),
        head=HeadConfig(num_queries=900, num_hybrid=300, num_layers=6, group_detr=11),
    )


def _large() -> ModelConfig:
    cfg = _r50()
    cfg.backbone = BackboneConfig(
        name="convnext_xlarge", out_strides=(8, 16, 32), frozen_stages=0, grad_checkpointing=True
    )
    return cfg


def _build(cfg: ModelConfig):
    from .detector import BEVFormerV2

    return BEVFormerV2(cfg)


FAMILY = Family(
    name="bevformer_v2", config_type=ModelConfig, presets={"tiny": _tiny, "r50": _r50, "large": _large}, build=_build,
)
