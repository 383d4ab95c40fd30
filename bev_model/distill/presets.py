"""BEVDistill presets.

* ``distill_tiny``: the ``tiny`` student, a ``lidar_tiny`` teacher on its grid (or the one
  ``teacher.checkpoint`` names), every term on with the official weights.
"""

from __future__ import annotations

from ..registry import Family
from .config import DistillConfig


def _distill_tiny() -> DistillConfig:
    return DistillConfig()


def _build(cfg: DistillConfig):
    from .model import BEVDistill

    return BEVDistill(cfg)


FAMILY = Family(name="distill", config_type=DistillConfig, presets={"distill_tiny": _distill_tiny}, build=_build)
