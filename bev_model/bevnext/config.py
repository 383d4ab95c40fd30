"""Typed configuration of BEVNeXt (loaded strictly with ``shards.typed_config``) and its presets.

``BEVNeXtConfig`` composes one dataclass per component. Presets:

* ``bevnext_tiny``: ResNet-18, stride-8 depth feature, 59 depth bins (1 m) over 1-60 m, 64-channel lift,
  48x48 BEV (2.13 m cells; the BEV backbone needs a multiple of 8) over the ``tiny`` preset's ``pc_range``,
  single frame (stage 1). Meant for CPU
  training on 6 x 96x256 images.
* ``bevnext_r50``: the official shapes (configs/bevnext/bevnext-stage2.py): ResNet-50, 256x704 input,
  stride 8, D = 118 bins over [1, 60) m at 0.5 m, 160-channel lift, 128x128 BEV at 0.8 m, 9 frames
  (Res2Fusion with 3 frames a group), 256-channel BEV neck, one SCA refinement layer (8 points, 8 z-anchors).

YAML: ``model: {preset: bevnext_tiny, temporal: {offsets: [-2, -1, 0]}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shards.typed_config import ConfigError

from ..bev_grid import BEVGrid
from ..config import PC_RANGE, BackboneConfig


@dataclass
class DepthConfig:
    """BEVDepth-style depth net on the stride-``stride`` image feature, CRF and depth supervision.

    Bins: ``D = round((d_max - d_min) / d_step)``; bin ``k`` covers ``[d_min + k step, d_min + (k + 1) step)``
    and is lifted at its centre. ``crf``: ``off`` (softmax), ``faithful`` (official ``MeanField``: colour
    0-255, ``zeta_faithful = 1e-3``, which makes the colour kernel ~0 off the centre pixel) or ``active``
    (colour 0-1, ``zeta_active = 0.1``: neighbours of similar colour exchange messages).
    ``context_dcn``: the context branch's 3x3 is ``torchvision.ops.deform_conv2d`` (mmcv DCN in the official
    code), else a plain 3x3 conv.
    """

    stride: int = 8
    d_min: float = 1.0
    d_max: float = 60.0
    d_step: float = 0.5
    mid_channels: int = 256
    num_res_blocks: int = 3
    aspp: bool = True
    context_dcn: bool = True
    crf: Literal["off", "faithful", "active"] = "faithful"
    crf_iters: int = 20
    crf_w_init: float = 0.015
    zeta_faithful: float = 1e-3
    zeta_active: float = 0.1
    loss_weight: float = 3.0

    @property
    def num_bins(self) -> int:
        return int(round((self.d_max - self.d_min) / self.d_step))


@dataclass
class BEVConfig:
    """Lift target grid and the BEV encoder.

    ``channels``: lifted feature channels (``numC_Trans``). The grid is ``bev_h x bev_w`` over ``pc_range``
    (one height cell: frustum points outside ``[z_min, z_max)`` are dropped). Per frame: ``pre_blocks``
    basic blocks; then Res2Fusion (``temporal``), a Res2Net backbone of ``len(layers)`` stride-2 stages
    (channels ``channels * 2**(i+1)``, timm ``Bottle2neck`` blocks: ``scales`` splits of ``width``/64 of a
    quarter of the stage's channels, expansion 4 as the official config)
    and an LSS-FPN to ``neck_channels`` at the full grid. ``pool``: ``sum`` (BEVPoolv2, the official lift) or
    ``mean`` (the sum over the cell's depth mass when that is above 1; see ``bevnext.lift.lift``).
    """

    pc_range: tuple[float, float, float, float, float, float] = PC_RANGE
    bev_h: int = 128
    bev_w: int = 128
    channels: int = 160
    pre_blocks: int = 2
    layers: tuple[int, ...] = (2, 2, 2)
    scales: int = 4
    width: int = 32
    neck_channels: int = 256
    pool: Literal["sum", "mean"] = "sum"

    @property
    def grid(self) -> BEVGrid:
        return BEVGrid(tuple(self.pc_range), self.bev_h, self.bev_w, 1)


@dataclass
class TemporalConfig:
    """Frames at ``offsets`` (keyframes, oldest first, 0 = current, last). Res2Fusion groups
    ``group_frames`` consecutive frames per 1x1 group (``len(offsets)`` must be a multiple); fusion widths
    follow the official ``FusionLayer``: ``base_width``/64 of ``channels / expansion`` per group."""

    offsets: tuple[int, ...] = (-8, -7, -6, -5, -4, -3, -2, -1, 0)
    group_frames: int = 3
    base_width: int = 48
    expansion: int = 2


@dataclass
class RefineConfig:
    """Perspective refinement: one SCA layer (BEVFormer-style) from every BEV cell to the current frame's
    context features + an embedding of the detached CRF depth; ``num_points`` per head, ``num_z_anchors``
    pillar anchors over ``pc_range``'s height. ``enabled=False`` skips it (heads read the BEV neck)."""

    enabled: bool = True
    num_heads: int = 8
    num_points: int = 8
    num_z_anchors: int = 8
    ffn_mult: int = 4


@dataclass
class HeadConfig:
    """CenterPoint heads: heatmap (Gaussian focal loss) on the BEV neck, regression on the refined BEV.

    Targets: Gaussian radius from the box footprint in cells (``gaussian_overlap``, ``min_radius``).
    Regression per centre cell: offset (2), z (1), log size (3), sin/cos yaw (2), velocity (2); L1 with
    ``code_weights`` and ``weight_reg``. Decoding: top ``pre_max`` heatmap peaks over ``score_threshold``,
    per-class circle NMS with ``nms_radius`` metres (class order of ``shards.conventions.CLASSES``),
    at most ``max_detections``.
    """

    share_channels: int = 64
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    weight_heatmap: float = 1.0
    weight_reg: float = 0.25
    weight_attr: float = 0.2
    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    pre_max: int = 1000
    score_threshold: float = 0.05
    nms_radius: tuple[float, ...] = (2.0, 3.46, 3.16, 3.16, 3.46, 0.42, 0.92, 0.92, 0.42, 1.0)
    """Metres per class (CenterPoint's ``min_radius`` thresholds are squared distances: 4, 12, 10, 1, 0.85, 0.175)."""
    max_detections: int = 300


@dataclass
class BEVNeXtConfig:
    """The whole detector. ``L = L_depth + L_heatmap + L_reg (+ attr)``.

    ``attn_backend``: deformable-attention backend of the refinement (``auto``, ``reference``, ``cpu``, ``triton``).
    """

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(name="resnet50", out_strides=(8, 16, 32)))
    neck_channels: int = 512
    depth: DepthConfig = field(default_factory=DepthConfig)
    bev: BEVConfig = field(default_factory=BEVConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    num_classes: int = 10
    num_attrs: int = 8
    attn_backend: str = "auto"
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def frame_offsets(self) -> tuple[int, ...]:
        return tuple(self.temporal.offsets)

    @property
    def needs_points(self) -> bool:
        """Depth supervision projects the current frame's LiDAR (``Batch.points``)."""
        return True

    @property
    def needs_points_in_eval(self) -> bool:
        return False

    def validate(self) -> None:
        """Cross-field checks; errors name the key at fault."""
        d = self.depth
        if not self.backbone.out_strides or d.stride != self.backbone.out_strides[0]:
            raise ConfigError(f"config key 'depth.stride' ({d.stride}) must equal the first of "
                              f"'backbone.out_strides' {list(self.backbone.out_strides)} (the FPN's finest map)")
        if not (0 < d.d_min < d.d_max) or d.d_step <= 0 or d.num_bins < 2:
            raise ConfigError(f"config keys 'depth.d_min/d_max/d_step' ({d.d_min}, {d.d_max}, {d.d_step}) must give "
                              "0 < d_min < d_max and at least 2 bins")
        if abs(d.num_bins * d.d_step - (d.d_max - d.d_min)) > 1e-6:
            raise ConfigError(f"config key 'depth.d_step' ({d.d_step}) must divide d_max - d_min ({d.d_max - d.d_min})")
        if d.crf not in ("off", "faithful", "active"):
            raise ConfigError(f"config key 'depth.crf': {d.crf!r} is not off/faithful/active")
        if d.crf_iters < 1 or d.zeta_faithful <= 0 or d.zeta_active <= 0:
            raise ConfigError("config keys 'depth.crf_iters', 'depth.zeta_faithful', 'depth.zeta_active' must be > 0")
        if d.mid_channels % 4 != 0:
            raise ConfigError(f"config key 'depth.mid_channels' ({d.mid_channels}) must be divisible by 4 "
                              "(grouped deformable conv)")
        offs = tuple(self.temporal.offsets)
        if not offs or offs[-1] != 0 or any(b <= a for a, b in zip(offs, offs[1:])):
            raise ConfigError(f"config key 'temporal.offsets' {list(offs)} must increase strictly and end with 0")
        if len(offs) > 1 and len(offs) % self.temporal.group_frames != 0:
            raise ConfigError(f"config key 'temporal.group_frames' ({self.temporal.group_frames}) must divide the "
                              f"number of frames ({len(offs)})")
        if len(offs) > 1 and len(offs) // self.temporal.group_frames < 2:
            raise ConfigError(f"config key 'temporal.group_frames' ({self.temporal.group_frames}) must leave at "
                              f"least 2 groups for {len(offs)} frames")
        b = self.bev
        x0, y0, z0, x1, y1, z1 = b.pc_range
        if not (x0 < x1 and y0 < y1 and z0 < z1):
            raise ConfigError(f"config key 'bev.pc_range' {list(b.pc_range)} must have min < max on every axis")
        if b.bev_h % 2 ** len(b.layers) or b.bev_w % 2 ** len(b.layers):
            raise ConfigError(f"config keys 'bev.bev_h/bev_w' ({b.bev_h}, {b.bev_w}) must be divisible by "
                              f"2**len(bev.layers) = {2 ** len(b.layers)}")
        if len(b.layers) < 2:
            raise ConfigError("config key 'bev.layers' needs at least 2 stages (the LSS-FPN joins the first and last)")
        if b.scales < 2:
            raise ConfigError(f"config key 'bev.scales' ({b.scales}) must be >= 2 (Res2Net)")
        r = self.refine
        if r.enabled:
            if b.channels % r.num_heads:
                raise ConfigError(f"config key 'refine.num_heads' ({r.num_heads}) must divide 'bev.channels' "
                                  f"({b.channels})")
            if r.num_points % r.num_z_anchors:
                raise ConfigError(f"config key 'refine.num_points' ({r.num_points}) must be divisible by "
                                  f"'refine.num_z_anchors' ({r.num_z_anchors})")
        h = self.head
        if len(h.code_weights) != 10:
            raise ConfigError(f"config key 'head.code_weights' needs 10 entries, got {len(h.code_weights)}")
        if len(h.nms_radius) != self.num_classes:
            raise ConfigError(f"config key 'head.nms_radius' needs {self.num_classes} entries, got {len(h.nms_radius)}")
        if not 0 < h.max_detections <= 500:
            raise ConfigError(f"config key 'head.max_detections' ({h.max_detections}) must be in 1..500")
        if self.attn_backend not in ("auto", "reference", "cpu", "triton"):
            raise ConfigError(f"config key 'attn_backend': {self.attn_backend!r} is not auto/reference/cpu/triton")


def tiny() -> BEVNeXtConfig:
    """CPU-sized BEVNeXt (single frame: stage 1)."""
    return BEVNeXtConfig(
        backbone=BackboneConfig(name="resnet18", out_strides=(8, 16, 32)),
        neck_channels=128,
        depth=DepthConfig(d_step=1.0, mid_channels=64, num_res_blocks=1),
        bev=BEVConfig(bev_h=48, bev_w=48, channels=64, pre_blocks=1, layers=(1, 1, 1), scales=4, width=16,
                      neck_channels=96),
        temporal=TemporalConfig(offsets=(0,), group_frames=1),
        refine=RefineConfig(num_heads=4, num_points=4, num_z_anchors=4, ffn_mult=2),
        head=HeadConfig(share_channels=32, min_radius=1, pre_max=500),
    )


def r50() -> BEVNeXtConfig:
    """The official stage-2 shapes (9 frames); stage 1 is ``temporal.offsets: [0]``."""
    return BEVNeXtConfig()
