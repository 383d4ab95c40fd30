"""BEV box coding: box vectors ``[x, y, z, l, w, h, yaw, vx, vy]`` <-> regression codes.

Code layout (BEVFormer's "normalised bbox", our order), 10 numbers:
``[x, y, z, log l, log w, log h, sin yaw, cos yaw, vx, vy]``; centres stay in metres (the L1 loss
and the matcher work on metres, as in the reference), and :meth:`BoxCoder.normalize_xyz` maps
centres into ``[0, 1]^3`` over ``pc_range`` for reference points.
"""

from __future__ import annotations

import math

import torch

CODE_SIZE = 10


class BoxCoder:
    """Encode/decode boxes and (de)normalise centres over ``pc_range``.

    Args:
        pc_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in metres.
    """

    def __init__(self, pc_range: tuple[float, ...]) -> None:
        self.pc_range = tuple(float(v) for v in pc_range)

    def encode(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[..., 9]`` boxes -> ``[..., 10]`` codes. NaN velocities stay NaN (callers mask them)."""
        size = boxes[..., 3:6].clamp(min=1e-3).log()
        yaw = boxes[..., 6:7]
        return torch.cat([boxes[..., :3], size, yaw.sin(), yaw.cos(), boxes[..., 7:9]], -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``[..., 10]`` codes -> ``[..., 9]`` boxes, yaw = atan2(sin, cos) in (-pi, pi]."""
        yaw = torch.atan2(codes[..., 6], codes[..., 7])
        yaw = torch.where(yaw <= -math.pi, yaw + 2 * math.pi, yaw)
        return torch.cat([codes[..., :3], codes[..., 3:6].exp(), yaw[..., None], codes[..., 8:10]], -1)

    def _lo_span(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.tensor(self.pc_range, dtype=ref.dtype, device=ref.device)
        return r[:3], r[3:] - r[:3]

    def normalize_xyz(self, xyz: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` metres -> ``[..., 3]`` in ``[0, 1]`` over pc_range (not clamped)."""
        lo, span = self._lo_span(xyz)
        return (xyz - lo) / span

    def denormalize_xyz(self, unit: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` in ``[0, 1]`` -> ``[..., 3]`` metres."""
        lo, span = self._lo_span(unit)
        return unit * span + lo
