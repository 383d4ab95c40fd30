"""BEV side of BEVNeXt: per-frame pre-process, Res2Fusion over frames, a Res2Net BEV backbone and an LSS-FPN.

``[B, C, H, W]`` per frame -> :class:`PreBEV` (basic blocks) -> stack ``F`` frames oldest first ``[B, F C, H, W]``
-> :class:`Res2Fusion` ``[B, C, H, W]`` -> :class:`Res2NetBEV` (stride-2 stages ``2C, 4C, 8C``) ->
:class:`LSSFPN` (first + last stage, back to ``H x W``) ``[B, C_neck, H, W]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.res2net import Bottle2neck
from timm.models.resnet import BasicBlock
from torch import nn

from .config import BEVConfig, TemporalConfig


class PreBEV(nn.Sequential):
    """Per-frame BEV pre-process (the official ``pre_process`` CustomResNet): ``n`` basic blocks at C."""

    def __init__(self, channels: int, n: int) -> None:
        super().__init__(*[BasicBlock(channels, channels) for _ in range(n)])


class Res2Fusion(nn.Module):
    """Res2Fusion's fusion layer: ``[B, F C, H, W]`` (frames oldest first) -> ``[B, C, H, W]``.

    A grouped 1x1 conv gives ``G = F / group_frames`` groups of ``width`` channels, group ``g`` seeing only
    frames ``g w .. (g + 1) w - 1``; BN, ReLU. Groups are chained oldest first:
    ``y_0 = conv3x3(x_0)``, ``y_g = conv3x3(x_g + y_{g-1})`` for ``g < G - 1`` (each conv + BN + ReLU), the
    newest group ``y_{G-1} = x_{G-1}`` unchanged; concat, 1x1 to C, BN, ReLU (no residual). So the oldest
    group passes through ``G - 1`` 3x3 convs, the newest through none.
    """

    def __init__(self, channels: int, num_frames: int, cfg: TemporalConfig) -> None:
        super().__init__()
        self.groups = num_frames // cfg.group_frames
        self.width = int(math.floor(channels // cfg.expansion * cfg.base_width / 64))
        G, w = self.groups, self.width
        self.reduce = nn.Sequential(nn.Conv2d(channels * num_frames, w * G, 1, groups=G, bias=False),
                                    nn.BatchNorm2d(w * G), nn.ReLU(inplace=True))
        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                                 nn.ReLU(inplace=True)) for _ in range(G - 1))
        self.project = nn.Sequential(nn.Conv2d(w * G, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                     nn.ReLU(inplace=True))

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.reduce(stacked), self.width, 1)  # G x [B, w, H, W], oldest first
        outs = []
        y = None
        for g, conv in enumerate(self.convs):
            y = conv(parts[g] if y is None else parts[g] + y)
            outs.append(y)
        outs.append(parts[-1])
        return self.project(torch.cat(outs, 1))


def _res2_stage(cin: int, cout: int, blocks: int, scales: int, width: int) -> nn.Sequential:
    """One stride-2 stage of timm ``Bottle2neck`` blocks (``planes = cout / 4``), avg-pool downsample shortcut."""
    down = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
    layers = [Bottle2neck(cin, cout // 4, stride=2, downsample=down, base_width=width, scale=scales,
                          norm_layer=nn.BatchNorm2d)]
    layers += [Bottle2neck(cout, cout // 4, base_width=width, scale=scales, norm_layer=nn.BatchNorm2d) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Res2NetBEV(nn.Module):
    """BEV backbone: ``[B, C, H, W]`` -> stage outputs ``[B, C 2^(i+1), H / 2^(i+1), W / 2^(i+1)]``."""

    def __init__(self, channels: int, cfg: BEVConfig) -> None:
        super().__init__()
        chans = [channels * 2 ** (i + 1) for i in range(len(cfg.layers))]
        self.out_channels = chans
        ins = [channels] + chans[:-1]
        self.stages = nn.ModuleList(_res2_stage(i, o, n, cfg.scales, cfg.width) for i, o, n in zip(ins, chans, cfg.layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class LSSFPN(nn.Module):
    """BEVDet's ``FPN_LSS``: upsample the last stage to the first's size, concat, two 3x3 convs (2 C_out), then
    x2 upsample, 3x3 conv to C_out, 1x1: ``[B, C_out, H, W]`` at the input grid."""

    def __init__(self, c_first: int, c_last: int, out_channels: int) -> None:
        super().__init__()
        c2 = out_channels * 2
        self.conv = nn.Sequential(nn.Conv2d(c_first + c_last, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2),
                                  nn.ReLU(inplace=True), nn.Conv2d(c2, c2, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c2), nn.ReLU(inplace=True))
        self.up = nn.Sequential(nn.Conv2d(c2, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                                nn.ReLU(inplace=True), nn.Conv2d(out_channels, out_channels, 1))

    def forward(self, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        last = F.interpolate(last, size=first.shape[-2:], mode="bilinear", align_corners=True)
        x = self.conv(torch.cat([first, last], 1))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.up(x)


class BEVEncoder(nn.Module):
    """Frames ``[B, F, C, H, W]`` (oldest first, already pre-processed) -> ``[B, C_neck, H, W]``."""

    def __init__(self, cfg: BEVConfig, temporal: TemporalConfig) -> None:
        super().__init__()
        C = cfg.channels
        F_ = len(temporal.offsets)
        self.fusion = Res2Fusion(C, F_, temporal) if F_ > 1 else None
        self.backbone = Res2NetBEV(C, cfg)
        self.neck = LSSFPN(self.backbone.out_channels[0], self.backbone.out_channels[-1], cfg.neck_channels)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.fusion(frames.flatten(1, 2)) if self.fusion is not None else frames[:, -1]
        feats = self.backbone(x)
        return self.neck(feats[0], feats[-1])
