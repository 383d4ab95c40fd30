"""The LiDAR teacher family (``lidar``): pillars -> SECOND-style BEV CNN + FPN -> Deformable-DETR head
(+ an auxiliary CenterPoint heatmap), on exactly the BEV grid of the camera student it teaches.

    from bev_model import build_model, get_preset
    teacher = build_model(get_preset("lidar_tiny"))
    teacher.forward_train(batch)   # batch.points: list of [P_i, 4] (x y z intensity, augmented ego frame)
"""

from .config import LidarConfig

__all__ = ["LidarConfig"]
