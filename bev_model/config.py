"""Typed configuration of the BEVFormer v2 detector (loaded strictly with ``shards.typed_config``).

One dataclass per component; ``ModelConfig`` composes them. A preset (``bev_model.presets``) is a
name that builds a whole ``ModelConfig``; YAML files hold ``model: {preset: tiny, ...overrides}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shards.typed_config import ConfigError

PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
"""BEVFormer's point-cloud range ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in metres.

Used in the ego frame (ground at z = 0), whereas BEVFormer's numbers are in the LiDAR frame, whose
origin sits 1.84 m above the ground in nuScenes: the 4 pillar anchors of the ``tiny``/``r50`` encoders
sit at z = -4, -2, 0, 2 m here, 1.84 m lower than the paper's. Moving them above the ground
(``model.encoder.pc_range=[-51.2,-51.2,-1.0,51.2,51.2,4.0]``) gave no gain on the demo (400 steps, mAP
0.0026 against 0.0008-0.0045 for the unchanged config), so the numbers stay as they are; the paper's
geometry in this frame would be z in [-3.16, 4.84] (every figure in the README was measured with [-5, 3]).
"""


HybridMode = Literal["none", "centre", "anchor"]
HYBRID_MODES: tuple[str, ...] = ("none", "centre", "anchor")


@dataclass
class BackboneConfig:
    """A timm image backbone (``features_only``); never downloads (``pretrained=False``).

    ``weights``: optional local checkpoint (``.pt``/``.pth`` loaded with ``weights_only=True``, or
    ``.safetensors``) of the full timm model; head keys are ignored.
    ``frozen_stages``: -1 trains everything; k >= 0 freezes the stem and the first k feature stages.
    ``out_strides``: strides of the feature maps handed to the neck.
    """

    name: str = "resnet50"
    weights: Path | None = None
    out_strides: tuple[int, ...] = (8, 16, 32)
    frozen_stages: int = -1
    norm_eval: bool = False
    grad_checkpointing: bool = False


@dataclass
class NeckConfig:
    """torchvision FPN to ``out_channels`` with ``num_levels`` outputs (extra P6/P7 convs beyond the backbone)."""

    out_channels: int = 256
    num_levels: int = 5


@dataclass
class PerspectiveConfig:
    """FCOS3D/DD3D-style dense 3D head on every FPN level, and its targets and losses.

    ``size_ranges``: per level ``[lo, hi)`` of a location's max 2D regression distance (pixels);
    ``center_radius``: centre sampling radius in strides around the projected 3D centre.
    ``min_num_pts``/``min_visibility_level``: GT filter (lidar+radar points; nuScenes visibility
    level 1..4 = 0-40/40-60/60-80/80-100 %; "visibility >= 0.2" maps to level >= 1, since level 1's
    bin reaches 40 %).
    ``focal_ref``: depth is predicted as ``log(depth * focal_ref / focal)``.
    """

    num_convs: int = 4
    size_ranges: tuple[tuple[float, float], ...] = (
        (0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8),
    )
    center_radius: float = 1.5
    min_num_pts: int = 3
    min_visibility_level: int = 1
    min_depth: float = 0.5
    focal_ref: float = 500.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    weight_cls: float = 1.0
    weight_box2d: float = 1.0
    weight_centerness: float = 1.0
    weight_box3d: float = 2.0
    smooth_l1_beta: float = 0.05
    weight_conf3d: float = 1.0
    weight_attr: float = 0.2
    weight_vel: float = 0.2
    conf3d_temperature: float = 1.0


@dataclass
class EncoderConfig:
    """BEV grid and the spatial cross-attention encoder (SCA + FFN per layer, post-norm).

    The BEV tensor is ``[B, C, bev_h, bev_w]``: rows run along +y, columns along +x, over ``pc_range``.
    """

    bev_h: int = 200
    bev_w: int = 200
    pc_range: tuple[float, float, float, float, float, float] = PC_RANGE
    embed_dims: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_levels: int = 4
    num_points: int = 8
    num_z_anchors: int = 4
    ffn_dims: int = 512
    dropout: float = 0.1


@dataclass
class TemporalConfig:
    """v2 temporal fusion: frames at ``offsets`` (keyframes relative to the current one, 0 included).

    ``(0,)`` disables fusion; ``(-1, 0)`` is t2; ``(-7, ..., 0)`` t8; positive offsets are future
    frames (offline mode). The batch's T frames are the offsets in order (current at ``offsets.index(0)``).
    """

    offsets: tuple[int, ...] = (-1, 0)
    num_blocks: int = 2


@dataclass
class HeadConfig:
    """Deformable-DETR BEV head with iterative refinement, learned + hybrid queries, and its losses.

    ``group_detr``: Group-DETR one-to-many training (Chen et al. 2022, used by the BEVFormer v2 configs
    with 11 groups): in training the decoder runs ``group_detr`` independent query groups (each with its
    own learned queries plus a copy of the hybrid queries; self-attention stays inside a group), each
    group is matched one-to-one with the GT and the losses are averaged over groups. Inference runs
    group 0 only, so the deployed model and its cost do not change. 1 = plain DETR.

    ``hybrid``: the one switch of the hybrid (two-stage) queries, ``num_hybrid`` of them from the perspective
    head's proposals. ``"none"``: learned queries only (one-stage). ``"centre"``: a hybrid query takes its
    proposal's centre as its reference point (the paper's hybrid queries). ``"anchor"``: also its box and class
    scores, as anchors that every decoder layer refines (the two-stage Deformable DETR's way): a layer's size,
    yaw and velocity codes are the proposal's plus the regression branch's change from its initial output, and
    its class logits are the logits of the proposal's scores (class probability x centerness x 3D confidence)
    plus the class branch's change from the focal prior; before training, the hybrid queries output the first
    stage's boxes and scores. Without the perspective head (``lambda_pers = 0``) there are no proposals: the
    resolved config says ``"none"`` (:class:`ModelConfig`). ``false`` (YAML) reads as ``"none"``. Run configs
    written before this switch (``hybrid: true/false`` + ``hybrid_box_init``) are read by
    :func:`upgrade_model_section`.
    """

    num_queries: int = 900
    group_detr: int = 1
    num_hybrid: int = 300
    hybrid: HybridMode | bool = "centre"
    proposal_nms_radius: float = 1.0
    proposal_pre_nms: int = 2000
    num_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dims: int = 512
    dropout: float = 0.1
    weight_cls: float = 2.0
    weight_box: float = 0.75
    weight_attr: float = 0.2
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
    max_detections: int = 300

    def __post_init__(self) -> None:
        if self.hybrid is False:
            self.hybrid = "none"
        elif self.hybrid is True or self.hybrid not in HYBRID_MODES:
            raise ConfigError(f"config key 'head.hybrid': {self.hybrid!r} is not one of {list(HYBRID_MODES)} "
                              "(true is ambiguous: 'centre' is the paper's hybrid queries, 'anchor' the box-anchored)")

    @property
    def hybrid_box_init(self) -> bool:
        """Hybrid queries anchored on their proposals' boxes and scores (``hybrid == "anchor"``)."""
        return self.hybrid == "anchor"


def upgrade_model_section(model: dict) -> dict:
    """A run config's ``model`` mapping written before ``head.hybrid`` became a mode, in today's keys (a copy).

    ``hybrid: true`` + ``hybrid_box_init: true`` -> ``"anchor"``; ``hybrid: true`` (with ``hybrid_box_init``
    false or absent: configs resolved before that key existed were trained with centre-only hybrid queries)
    -> ``"centre"``; ``hybrid: false`` -> ``"none"``. Current sections come back unchanged."""
    head = model.get("head") if isinstance(model, dict) else None
    if not isinstance(head, dict) or not (isinstance(head.get("hybrid"), bool) or "hybrid_box_init" in head):
        return model
    head = dict(head)
    box_init = bool(head.pop("hybrid_box_init", False))
    on = head.get("hybrid", True)
    if isinstance(on, bool):
        head["hybrid"] = ("anchor" if box_init else "centre") if on else "none"
    return {**model, "head": head}


@dataclass
class ModelConfig:
    """The whole detector. ``L_total = lambda_bev * L_bev + lambda_pers * L_pers``.

    ``lambda_pers = 0`` drops the perspective head (and with it the hybrid queries): BEV-only ablation.
    ``attn_backend``: deformable-attention backend (``auto``, ``reference``, ``cpu``, ``triton``).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    perspective: PerspectiveConfig = field(default_factory=PerspectiveConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    num_classes: int = 10
    num_attrs: int = 8
    lambda_bev: float = 1.0
    lambda_pers: float = 1.0
    attn_backend: str = "auto"
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.lambda_pers == 0:  # no perspective head, hence no proposals: the resolved config says so
            self.head.hybrid = "none"

    @property
    def frame_offsets(self) -> tuple[int, ...]:
        """The keyframe offsets a batch carries (``temporal.offsets``; ``bev_model.registry.DetectorConfig``)."""
        return tuple(self.temporal.offsets)

    @property
    def needs_points(self) -> bool:
        """BEVFormer v2 trains from images alone."""
        return False

    @property
    def needs_points_in_eval(self) -> bool:
        return False

    @property
    def use_perspective(self) -> bool:
        """Whether the perspective head is built (it is skipped entirely when ``lambda_pers == 0``)."""
        return self.lambda_pers > 0

    @property
    def use_hybrid(self) -> bool:
        """Hybrid (two-stage) queries are on (``head.hybrid`` is not ``none``; they need the perspective head)."""
        return self.head.hybrid != "none" and self.use_perspective

    def validate(self) -> None:
        """Cross-field checks; errors name the key at fault."""
        if self.neck.out_channels != self.encoder.embed_dims:
            raise ConfigError(
                f"config key 'neck.out_channels' ({self.neck.out_channels}) must equal "
                f"'encoder.embed_dims' ({self.encoder.embed_dims})"
            )
        if self.encoder.num_levels > self.neck.num_levels:
            raise ConfigError(
                f"config key 'encoder.num_levels' ({self.encoder.num_levels}) exceeds 'neck.num_levels' "
                f"({self.neck.num_levels})"
            )
        if self.neck.num_levels < len(self.backbone.out_strides):
            raise ConfigError(
                f"config key 'neck.num_levels' ({self.neck.num_levels}) is below the number of backbone "
                f"outputs 'backbone.out_strides' ({len(self.backbone.out_strides)})"
            )
        if len(self.perspective.size_ranges) != self.neck.num_levels:
            raise ConfigError(
                f"config key 'perspective.size_ranges' has {len(self.perspective.size_ranges)} entries, "
                f"expected one per FPN level ({self.neck.num_levels})"
            )
        if self.encoder.num_points % self.encoder.num_z_anchors != 0:
            raise ConfigError(
                f"config key 'encoder.num_points' ({self.encoder.num_points}) must be divisible by "
                f"'encoder.num_z_anchors' ({self.encoder.num_z_anchors})"
            )
        for key, dims, heads in (
            ("encoder", self.encoder.embed_dims, self.encoder.num_heads),
            ("head", self.encoder.embed_dims, self.head.num_heads),
        ):
            if dims % heads != 0:
                raise ConfigError(f"config key '{key}.num_heads' ({heads}) must divide embed_dims ({dims})")
        offs = self.temporal.offsets
        if 0 not in offs or list(offs) != sorted(set(offs)):
            raise ConfigError(f"config key 'temporal.offsets' {list(offs)} must be sorted, unique and contain 0")
        if len(self.head.code_weights) != 10:
            raise ConfigError(f"config key 'head.code_weights' needs 10 entries, got {len(self.head.code_weights)}")
        if self.attn_backend not in ("auto", "reference", "cpu", "triton"):
            raise ConfigError(f"config key 'attn_backend': {self.attn_backend!r} is not auto/reference/cpu/triton")
        if self.lambda_pers < 0 or self.lambda_bev < 0:
            raise ConfigError("config keys 'lambda_bev'/'lambda_pers' must be >= 0")
        if self.head.hybrid != "none" and self.head.num_hybrid < 1:
            raise ConfigError(f"config key 'head.num_hybrid' ({self.head.num_hybrid}) must be >= 1 with "
                              f"'head.hybrid' {self.head.hybrid!r} (set head.hybrid=none for no hybrid queries)")
        if self.head.group_detr < 1:
            raise ConfigError(f"config key 'head.group_detr' ({self.head.group_detr}) must be >= 1")
        if self.head.max_detections > 300:
            raise ConfigError(f"config key 'head.max_detections' ({self.head.max_detections}) must be <= 300")
