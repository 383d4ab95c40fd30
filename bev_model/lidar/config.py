"""Typed configuration of the LiDAR teacher (loaded strictly with ``shards.typed_config``).

The teacher's BEV grid is the camera student's: :func:`grid_of_student` reads ``pc_range`` and
``bev_h x bev_w`` from a BEVFormer v2 ``ModelConfig`` (the presets build the teacher's grid from the
student preset they teach, so the numbers are written once, in ``bev_model.presets``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shards.typed_config import ConfigError

from ..bev_grid import BEVGrid
from ..config import PC_RANGE, HeadConfig, ModelConfig


@dataclass
class LidarGridConfig:
    """The output BEV grid ``[B, C, bev_h, bev_w]`` over ``pc_range`` (rows +y, columns +x; ``bev_model.bev_grid``)."""

    pc_range: tuple[float, float, float, float, float, float] = PC_RANGE
    bev_h: int = 200
    bev_w: int = 200

    def bev_grid(self) -> BEVGrid:
        return BEVGrid(tuple(self.pc_range), self.bev_h, self.bev_w)


def grid_of_student(student: ModelConfig) -> LidarGridConfig:
    """The BEV grid of a camera student's encoder, as the teacher's grid config."""
    e = student.encoder
    return LidarGridConfig(pc_range=tuple(e.pc_range), bev_h=e.bev_h, bev_w=e.bev_w)


@dataclass
class PillarConfig:
    """PointPillars encoding: pillars on a grid ``stride`` times finer than the BEV grid per axis.

    Point features (9): x, y, z, intensity, offsets to the pillar's point mean (3) and to its centre (x, y);
    a per-point ``Linear-BN-ReLU`` to ``channels``, max over the pillar's points.
    """

    stride: int = 2
    channels: int = 64
    max_points: int = 0
    """Keep at most this many points per sample (random subset in training, first ones in eval); 0 keeps all."""


@dataclass
class SecondConfig:
    """SECOND-style 2D BEV CNN on the pillar grid + SECOND-FPN to the BEV grid.

    Block i: a 3x3 conv of stride ``layer_strides[i]`` then ``layer_nums[i]`` 3x3 convs (conv-BN-ReLU),
    ``layer_channels[i]`` channels. Each block's output is brought to the BEV grid (the pillar grid /
    ``pillar.stride``) by a strided conv, a 1x1 conv or a transposed conv of ``fpn_channels`` channels; the
    concatenation goes through a 1x1 conv-BN-ReLU to ``embed_dims``.
    """

    layer_channels: tuple[int, ...] = (64, 128, 256)
    layer_nums: tuple[int, ...] = (3, 5, 5)
    layer_strides: tuple[int, ...] = (1, 2, 2)
    fpn_channels: int = 128


@dataclass
class HeatmapConfig:
    """Auxiliary CenterPoint heatmap head: shared 3x3 conv-BN-ReLU to ``shared_channels``, then a 3x3
    conv-BN-ReLU + 3x3 conv to one logit per class; Gaussian focal loss against Gaussians drawn at the GT
    centres (radius ``gaussian_radius(l, w in cells, min_overlap)``, at least ``min_radius``)."""

    enabled: bool = True
    shared_channels: int = 64
    weight: float = 1.0
    min_overlap: float = 0.1
    min_radius: int = 2


@dataclass
class LidarConfig:
    """The LiDAR teacher. ``L = sum(bev.*) + heatmap.weight * aux.heatmap``."""

    grid: LidarGridConfig = field(default_factory=LidarGridConfig)
    pillar: PillarConfig = field(default_factory=PillarConfig)
    backbone: SecondConfig = field(default_factory=SecondConfig)
    embed_dims: int = 256
    head: HeadConfig = field(default_factory=lambda: HeadConfig(num_hybrid=0, hybrid="none"))
    heatmap: HeatmapConfig = field(default_factory=HeatmapConfig)
    num_classes: int = 10
    num_attrs: int = 8
    attn_backend: str = "auto"

    @property
    def frame_offsets(self) -> tuple[int, ...]:
        """The teacher sees the current frame only."""
        return (0,)

    @property
    def needs_points(self) -> bool:
        return True

    @property
    def needs_points_in_eval(self) -> bool:
        return True

    def validate(self) -> None:
        """Cross-field checks; errors name the key at fault."""
        g = self.grid
        x0, y0, z0, x1, y1, z1 = g.pc_range
        if not (x1 > x0 and y1 > y0 and z1 > z0):
            raise ConfigError(f"config key 'grid.pc_range' {list(g.pc_range)}: need min < max on every axis")
        if g.bev_h < 1 or g.bev_w < 1:
            raise ConfigError("config keys 'grid.bev_h'/'grid.bev_w' must be >= 1")
        p = self.pillar
        if p.stride < 1 or p.channels < 1 or p.max_points < 0:
            raise ConfigError("config keys 'pillar.stride'/'pillar.channels' must be >= 1, 'pillar.max_points' >= 0")
        b = self.backbone
        if not (len(b.layer_channels) == len(b.layer_nums) == len(b.layer_strides)) or not b.layer_channels:
            raise ConfigError("config keys 'backbone.layer_channels/layer_nums/layer_strides' need one entry per "
                              "block (same, non-zero length)")
        if any(s < 1 for s in b.layer_strides):
            raise ConfigError(f"config key 'backbone.layer_strides' {list(b.layer_strides)}: must be >= 1")
        cum = 1
        for i, s in enumerate(b.layer_strides):
            cum *= s
            big, small = max(cum, p.stride), min(cum, p.stride)
            if big % small:
                raise ConfigError(f"config key 'backbone.layer_strides': block {i}'s stride {cum} and "
                                  f"'pillar.stride' {p.stride} must divide one another")
        if self.embed_dims % self.head.num_heads:
            raise ConfigError(f"config key 'head.num_heads' ({self.head.num_heads}) must divide embed_dims "
                              f"({self.embed_dims})")
        if self.head.hybrid != "none":
            if not self.heatmap.enabled:
                raise ConfigError(f"config key 'head.hybrid': {self.head.hybrid!r} places queries on the CenterPoint "
                                  "heatmap's peaks, which needs 'heatmap.enabled: true' (or set head.hybrid: none)")
            if self.head.num_hybrid < 1:
                raise ConfigError(f"config key 'head.num_hybrid' ({self.head.num_hybrid}) must be >= 1 with "
                                  f"head.hybrid {self.head.hybrid!r}")
        if len(self.head.code_weights) != 10:
            raise ConfigError(f"config key 'head.code_weights' needs 10 entries, got {len(self.head.code_weights)}")
        if self.head.group_detr < 1:
            raise ConfigError(f"config key 'head.group_detr' ({self.head.group_detr}) must be >= 1")
        if self.heatmap.weight < 0 or not 0 < self.heatmap.min_overlap < 1 or self.heatmap.min_radius < 0:
            raise ConfigError("config keys 'heatmap.weight' >= 0, 'heatmap.min_overlap' in (0, 1), "
                              "'heatmap.min_radius' >= 0")
        if self.attn_backend not in ("auto", "reference", "cpu", "triton"):
            raise ConfigError(f"config key 'attn_backend': {self.attn_backend!r} is not auto/reference/cpu/triton")
