"""BEVDistill (``distill`` family): a BEVFormer v2 camera student trained with a frozen LiDAR teacher.

    python -m train --config configs/distill_tiny.yaml teacher.checkpoint=RUN/checkpoints/step_X
    python -m eval --checkpoint DISTILL_RUN/checkpoints/step_Y ...   (the student alone runs)
"""

from .config import DistillConfig

__all__ = ["DistillConfig"]
