"""Neck: torchvision's FeaturePyramidNetwork to ``out_channels``, extra stride-2 convs up to ``num_levels``.

``FPNNeck(in_channels, cfg)(feats) -> list of num_levels maps [B, C, H / s, W / s]`` for
``s = s_0, 2 s_0, 4 s_0, ...`` (strides 8..128 for the default 3 backbone maps + P6, P7).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from .config import NeckConfig


class _ExtraConvs(ExtraFPNBlock):
    """``n`` extra levels from the last FPN output: stride-2 3x3 convs (ReLU between), RetinaNet style."""

    def __init__(self, channels: int, n: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(n))

    def forward(self, results, x, names):
        last = results[-1]
        for i, conv in enumerate(self.convs):
            last = conv(F.relu(last) if i > 0 else last)
            results.append(last)
            names.append(f"p_extra{i}")
        return results, names


class FPNNeck(nn.Module):
    """FPN over the backbone maps plus extra stride-2 levels.

    Args:
        in_channels: channels of each backbone map (strides increasing by 2x).
        cfg: NeckConfig (out_channels, num_levels >= len(in_channels)).
    """

    def __init__(self, in_channels: list[int], cfg: NeckConfig) -> None:
        super().__init__()
        n_extra = cfg.num_levels - len(in_channels)
        extra: ExtraFPNBlock | None
        if n_extra == 2:
            extra = LastLevelP6P7(cfg.out_channels, cfg.out_channels)  # P6 from P5, P7 from relu(P6)
        elif n_extra > 0:
            extra = _ExtraConvs(cfg.out_channels, n_extra)
        else:
            extra = None
        self.fpn = FeaturePyramidNetwork(in_channels, cfg.out_channels, extra_blocks=extra)
        self.num_levels = cfg.num_levels

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``feats``: list of ``[B, C_i, H_i, W_i]`` -> list of ``num_levels`` ``[B, C, H_l, W_l]``."""
        out = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return list(out.values())[: self.num_levels]
