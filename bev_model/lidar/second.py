"""SECOND-style 2D BEV CNN and SECOND-FPN, from the pillar grid to the BEV grid.

``forward(pseudo [B, C_in, H * s, W * s]) -> [B, embed_dims, H, W]`` where ``s`` = the pillar stride: every
block's output is resampled to stride ``s`` (strided conv, 1x1 conv or transposed conv) and concatenated.
"""

from __future__ import annotations

import torch
from torch import nn

from .centerpoint import conv_bn_relu
from .config import SecondConfig


class SecondFPN(nn.Module):
    """Args: in_channels; cfg: SecondConfig; pillar_stride: s; out_channels: embed_dims."""

    def __init__(self, in_channels: int, cfg: SecondConfig, pillar_stride: int, out_channels: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.lateral = nn.ModuleList()
        cin, cum = in_channels, 1
        for ch, num, stride in zip(cfg.layer_channels, cfg.layer_nums, cfg.layer_strides):
            self.blocks.append(nn.Sequential(conv_bn_relu(cin, ch, 3, stride), *[conv_bn_relu(ch, ch) for _ in range(num)]))
            cum *= stride
            if cum < pillar_stride:
                k = pillar_stride // cum
                lat: nn.Module = conv_bn_relu(ch, cfg.fpn_channels, k, k) if k > 1 else conv_bn_relu(ch, cfg.fpn_channels, 1)
                if k > 1:
                    lat[0].padding = (0, 0)
            elif cum == pillar_stride:
                lat = conv_bn_relu(ch, cfg.fpn_channels, 1)
            else:
                k = cum // pillar_stride
                lat = nn.Sequential(nn.ConvTranspose2d(ch, cfg.fpn_channels, k, k, bias=False),
                                    nn.BatchNorm2d(cfg.fpn_channels), nn.ReLU(inplace=True))
            self.lateral.append(lat)
            cin = ch
        self.out = conv_bn_relu(cfg.fpn_channels * len(self.blocks), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for block, lat in zip(self.blocks, self.lateral):
            x = block(x)
            outs.append(lat(x))
        h = min(o.shape[-2] for o in outs)
        w = min(o.shape[-1] for o in outs)
        return self.out(torch.cat([o[..., :h, :w] for o in outs], 1))
