"""LiDAR teacher presets, each on the BEV grid of the camera preset it teaches.

* ``lidar_tiny``: the ``tiny`` student's grid; pillars at half its cell size, a 3-block SECOND
  (32/64/128 channels), 128-channel BEV, the tiny student's decoder shape (3 layers, 200 queries: 150 on the
  heatmap's peaks, ``head.hybrid=anchor``, and 50 learned).
* ``lidar_base``: the ``r50`` student's grid; the official teacher's widths (SECOND [128, 256] style,
  256-channel FPN, 6 decoder layers, 900 queries: 600 on heatmap peaks, 300 learned).
"""

from __future__ import annotations

from ..config import HeadConfig
from ..presets import _r50, _tiny
from ..registry import Family
from .config import HeatmapConfig, LidarConfig, PillarConfig, SecondConfig, grid_of_student


def _lidar_tiny() -> LidarConfig:
    student = _tiny()
    h = student.head
    return LidarConfig(
        grid=grid_of_student(student),
        pillar=PillarConfig(stride=2, channels=32),
        backbone=SecondConfig(layer_channels=(32, 64, 128), layer_nums=(1, 2, 2), layer_strides=(1, 2, 2),
                              fpn_channels=64),
        embed_dims=student.encoder.embed_dims,
        head=HeadConfig(num_queries=h.num_hybrid, num_hybrid=h.num_queries, hybrid="anchor", num_layers=h.num_layers,
                        num_heads=h.num_heads, num_points=h.num_points, ffn_dims=h.ffn_dims, dropout=0.0),
        heatmap=HeatmapConfig(shared_channels=64),
    )


def _lidar_base() -> LidarConfig:
    student = _r50()
    return LidarConfig(
        grid=grid_of_student(student),
        pillar=PillarConfig(stride=2, channels=64),
        backbone=SecondConfig(layer_channels=(128, 256), layer_nums=(5, 5), layer_strides=(1, 2), fpn_channels=256),
        embed_dims=256,
        head=HeadConfig(num_queries=300, num_hybrid=600, hybrid="anchor", num_layers=6),
        heatmap=HeatmapConfig(shared_channels=64),
    )


def _build(cfg: LidarConfig):
    from .detector import LidarDetector

    return LidarDetector(cfg)


FAMILY = Family(name="lidar", config_type=LidarConfig,
                presets={"lidar_tiny": _lidar_tiny, "lidar_base": _lidar_base}, build=_build)
