"""BEVFormer v2 temporal fusion: align past/future BEV maps into the current frame, stack, fuse.

Frames and the BEV augmentation ``B`` (one per clip, applied to every frame's ego2img, so each
frame's BEV map lives in that frame's *augmented* ego frame): the batch's ``cur_from_prev`` is already
``B · inv(e2g_cur) · e2g_prev · B⁻¹`` (pipeline convention); a frame from an earlier call
(``BEVHistory``, eval) with its own ``B_prev`` uses ``B_cur · inv(e2g_cur) · e2g_prev · B_prev⁻¹``
(:func:`augmented_transform`). Alignment samples the previous map at ``inv(T) · p`` for every current cell centre ``p`` with
``grid_sample`` (bilinear, zeros outside). Invalid frames are filled from their neighbour toward the
current frame; the stack ``[B, C * F, H, W]`` goes through a residual conv block (``ResNetFusion``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .precision import float32_geometry


@float32_geometry
def align_bev(prev: torch.Tensor, cur_from_prev: torch.Tensor, pc_range: tuple[float, ...]) -> torch.Tensor:
    """Resample BEV maps of another frame into the current frame.

    Args:
        prev: ``[B, C, H, W]`` BEV of the other frame (rows along y, columns along x over pc_range).
        cur_from_prev: ``[B, 4, 4]`` transform from the other frame into the current one (both in
            the BEV-augmented frames the maps live in).
        pc_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``.
    Returns:
        ``[B, C, H, W]``; cells that fall outside the other map are zero.
    """
    B, C, H, W = prev.shape
    x0, y0, _, x1, y1, _ = pc_range
    dev = prev.device
    xs = x0 + (torch.arange(W, device=dev, dtype=torch.float32) + 0.5) * (x1 - x0) / W
    ys = y0 + (torch.arange(H, device=dev, dtype=torch.float32) + 0.5) * (y1 - y0) / H
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.zeros_like(gx), torch.ones_like(gx)], -1).reshape(1, H * W, 4)
    prev_from_cur = torch.linalg.inv(cur_from_prev.float())
    q = (pts @ prev_from_cur.transpose(1, 2))[..., :2]  # [B, H*W, 2] metres in the other frame
    grid = torch.stack([(q[..., 0] - x0) / (x1 - x0) * 2 - 1, (q[..., 1] - y0) / (y1 - y0) * 2 - 1], -1)
    grid = grid.view(B, H, W, 2)
    # fp32 sampling: CPU grid_sample in bf16 is imprecise (and has produced NaN)
    out = F.grid_sample(prev.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(prev.dtype)


@float32_geometry
def augmented_transform(cur_from_prev: torch.Tensor, bev_aug_cur: torch.Tensor,
                        bev_aug_prev: torch.Tensor | None = None) -> torch.Tensor:
    """Raw ``cur_from_prev [..., 4, 4]`` -> the transform between BEV-augmented frames
    ``B_cur · cur_from_prev · B_prev⁻¹`` (``B_prev`` defaults to ``B_cur``)."""
    bev_aug_prev = bev_aug_cur if bev_aug_prev is None else bev_aug_prev
    return bev_aug_cur.float() @ cur_from_prev.float() @ torch.linalg.inv(bev_aug_prev.float())


def fill_invalid(frames: list[torch.Tensor], valid: torch.Tensor, current: int) -> list[torch.Tensor]:
    """Replace invalid frames by their neighbour toward the current frame.

    Args:
        frames: F maps ``[B, C, H, W]`` (already aligned); valid: ``[B, F]`` bool; current: index of the current frame.
    Returns:
        F maps; ``frames[t]`` of sample b is replaced by ``out[t + 1]`` (past) or ``out[t - 1]`` (future) where invalid.
    """
    out = list(frames)
    for t in list(range(current - 1, -1, -1)) + list(range(current + 1, len(frames))):
        src = out[t + 1] if t < current else out[t - 1]
        ok = valid[:, t].view(-1, 1, 1, 1)
        out[t] = torch.where(ok, out[t], src)
    return out


class _Block(nn.Module):
    """conv-BN-ReLU-conv-BN + identity, ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class ResNetFusion(nn.Module):
    """``[B, C * F, H, W]`` stacked frames -> ``[B, C, H, W]``: 3x3 reduce conv + residual blocks, plus the
    current frame (residual) and a LayerNorm over channels.

    Args:
        channels: C; num_frames: F; num_blocks.
    """

    def __init__(self, channels: int, num_frames: int, num_blocks: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(channels * num_frames, channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[_Block(channels) for _ in range(num_blocks)])
        self.norm = nn.LayerNorm(channels)

    def forward(self, stacked: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """stacked ``[B, C * F, H, W]``, current ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        x = current + self.blocks(self.reduce(stacked))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


@dataclass
class _Entry:
    ego2global: torch.Tensor  # [4, 4]
    bev_aug: torch.Tensor  # [4, 4]
    bev: torch.Tensor  # [C, H, W] single-frame BEV (before fusion)


class BEVHistory:
    """Single-frame BEV maps of earlier eval calls, per scene, for temporal fusion with T = 1 batches.

    Keyed by ``scene_token``; each scene keeps its last ``max_frames`` frames (oldest first). A frame
    whose ``ego2global`` equals the newest stored one is not stored twice. At most ``max_scenes`` scenes
    are kept (least recently used dropped). Assumes consecutive calls of a scene are consecutive keyframes.
    """

    def __init__(self, max_frames: int = 1, max_scenes: int = 64) -> None:
        self.max_frames = max_frames
        self.max_scenes = max_scenes
        self._scenes: OrderedDict[str, deque[_Entry]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._scenes)

    def clear(self) -> None:
        self._scenes.clear()

    def past(self, scene_token: str, steps_back: int) -> _Entry | None:
        """The frame ``steps_back`` (>= 1) keyframes before the current one, or None."""
        frames = self._scenes.get(scene_token)
        if not frames or steps_back > len(frames):
            return None
        return frames[-steps_back]

    def push(self, scene_token: str, ego2global: torch.Tensor, bev_aug: torch.Tensor, bev: torch.Tensor) -> None:
        """Store the current frame's single-frame BEV ``[C, H, W]`` after it was used."""
        frames = self._scenes.pop(scene_token, None) or deque(maxlen=self.max_frames)
        e2g = ego2global.detach().double().cpu()
        if not frames or not torch.allclose(frames[-1].ego2global, e2g):
            frames.append(_Entry(e2g, bev_aug.detach().double().cpu(), bev.detach()))
        self._scenes[scene_token] = frames
        while len(self._scenes) > self.max_scenes:
            self._scenes.popitem(last=False)

    def aligned(self, scene_token: str, steps_back: int, ego2global_cur: torch.Tensor, bev_aug_cur: torch.Tensor,
                pc_range: tuple[float, ...]) -> torch.Tensor | None:
        """The stored BEV ``steps_back`` frames ago, aligned into the current (augmented) frame: ``[C, H, W]`` or None."""
        e = self.past(scene_token, steps_back)
        if e is None:
            return None
        cfp = torch.linalg.inv(ego2global_cur.double().cpu()) @ e.ego2global
        t = augmented_transform(cfp, bev_aug_cur.double().cpu(), e.bev_aug).to(e.bev.device)
        return align_bev(e.bev[None], t[None], pc_range)[0]


@contextmanager
def eval_mode(modules: list[nn.Module]):
    """Temporarily put modules in eval mode: earlier frames are encoded without dropout and with frozen BN
    statistics (they run under ``no_grad``; only the current frame trains)."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
