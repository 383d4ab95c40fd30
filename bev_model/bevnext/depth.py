"""Depth: the camera-aware depth net (BEVDepth), the mean-field CRF (BEVNeXt) and LiDAR depth supervision.

Shapes: ``I = B * N`` images, stride-``s`` feature ``[I, C_in, h, w]``, ``D`` depth bins (``DepthConfig``).
Bin ``k`` covers ``[d_min + k step, d_min + (k + 1) step)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock
from torch import nn
from torchvision.ops import DeformConv2d

from shards.conventions import project_points

from ..precision import float32_geometry
from .config import DepthConfig

NUM_CAMERA_PARAMS = 27


@float32_geometry
def camera_params(intrinsics: torch.Tensor, img_aug: torch.Tensor, bev_aug: torch.Tensor,
                  cam2ego: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """The 27 numbers of BEVDepth's camera-aware MLP, from the batch's matrices, each of order 1.

    BEVDepth standardises its 27 numbers with a ``BatchNorm1d``. With one sample per rank (our CPU presets)
    the BEV-augmentation numbers are the same for every camera of the batch, so that BN's running variance
    collapses to ~0 and, in eval mode, they come out ~100-300x too large: the SE gates saturate and the
    eval-mode depth and context differ from the trained ones (a 1000-step ``bevnext_tiny``: recall of the
    heatmap's top cells 0.04 in eval mode vs 0.12 with the camera BN on batch statistics). Here the numbers
    are made scale-free instead, so train and eval see the same values at any batch size: pixel quantities
    are divided by the output image size.

    Args:
        intrinsics: ``[B, N, 3, 3]`` augmented ``K' = img_aug K``; img_aug: ``[B, N, 3, 3]``;
        bev_aug: ``[B, 4, 4]``; cam2ego: ``[B, N, 4, 4]``; image_hw: the output ``(H, W)`` in pixels.
    Returns:
        ``[B, N, 27]``: fx', fy', cx', cy' of ``K'`` over (W, H, W, H); img_aug rows 0-1 (6, the
        translations over W and H); bev_aug ``[0,0], [0,1], [1,0], [1,1], [2,2]`` (5); cam2ego rows 0-2 (12,
        metres).
    """
    B, N = intrinsics.shape[:2]
    H, W = (float(v) for v in image_hw)
    bda = bev_aug[:, None].expand(B, N, 4, 4)
    a = img_aug[..., :2, :]
    return torch.cat([
        torch.stack([intrinsics[..., 0, 0] / W, intrinsics[..., 1, 1] / H, intrinsics[..., 0, 2] / W,
                     intrinsics[..., 1, 2] / H], -1),
        torch.stack([a[..., 0, 0], a[..., 0, 1], a[..., 0, 2] / W, a[..., 1, 0], a[..., 1, 1], a[..., 1, 2] / H], -1),
        torch.stack([bda[..., 0, 0], bda[..., 0, 1], bda[..., 1, 0], bda[..., 1, 1], bda[..., 2, 2]], -1),
        cam2ego[..., :3, :].reshape(B, N, 12),
    ], -1)


class _Mlp(nn.Sequential):
    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class _SE(nn.Module):
    """Channel gate from the camera embedding: ``x * sigmoid(expand(relu(reduce(e))))``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, c, 1)
        self.expand = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(e))))


class _ASPP(nn.Module):
    """BEVDepth's ASPP: 1x1, three dilated 3x3 (6, 12, 18) and a global-pool branch, concat, 1x1 (no dropout)."""

    def __init__(self, c: int) -> None:
        super().__init__()

        def cbr(k: int, d: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c, c, k, padding=0 if k == 1 else d, dilation=d, bias=False),
                                 nn.BatchNorm2d(c), nn.ReLU(inplace=True))

        self.branches = nn.ModuleList([cbr(1, 1), cbr(3, 6), cbr(3, 12), cbr(3, 18)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(5 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand_as(outs[0]))
        return self.project(torch.cat(outs, 1))


class _DeformBlock(nn.Module):
    """A 3x3 deformable conv (torchvision, 4 groups; offsets from a zero-initialised 3x3 conv) + BN + ReLU:
    mmcv's ``DCN`` (``DeformConv2dPack``) of the official context branch."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.offset = nn.Conv2d(c, 18, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(c, c, 3, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x, self.offset(x))))


class DepthNet(nn.Module):
    """BEVDepth depth net with BEVNeXt's context branch.

    ``feat [I, C_in, h, w]``, ``cams [I, 27]`` -> (depth logits ``[I, D, h, w]``, context ``[I, C_out, h, w]``).
    reduce 3x3 -> camera-aware SE per branch; depth: ``num_res_blocks`` basic blocks, ASPP, 1x1 to D;
    context: deformable 3x3 (or plain, ``context_dcn``) + BN + ReLU, 1x1 to C_out.
    """

    def __init__(self, in_channels: int, out_channels: int, cfg: DepthConfig) -> None:
        super().__init__()
        m = cfg.mid_channels
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, m, 3, padding=1), nn.BatchNorm2d(m), nn.ReLU(inplace=True))
        self.depth_mlp, self.depth_se = _Mlp(NUM_CAMERA_PARAMS, m, m), _SE(m)
        self.context_mlp, self.context_se = _Mlp(NUM_CAMERA_PARAMS, m, m), _SE(m)
        blocks: list[nn.Module] = [BasicBlock(m, m) for _ in range(cfg.num_res_blocks)]
        if cfg.aspp:
            blocks.append(_ASPP(m))
        blocks.append(nn.Conv2d(m, cfg.num_bins, 1))
        self.depth_branch = nn.Sequential(*blocks)
        first = _DeformBlock(m) if cfg.context_dcn else nn.Sequential(
            nn.Conv2d(m, m, 3, padding=1, bias=False), nn.BatchNorm2d(m), nn.ReLU(inplace=True))
        self.context_branch = nn.Sequential(first, nn.Conv2d(m, out_channels, 1))

    def forward(self, feat: torch.Tensor, cams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = cams.to(feat.dtype)  # already of order 1 (camera_params): no BatchNorm1d, see there
        x = self.reduce(feat)
        depth = self.depth_branch(self.depth_se(x, self.depth_mlp(e)[..., None, None]))
        context = self.context_branch(self.context_se(x, self.context_mlp(e)[..., None, None]))
        return depth, context


def patch_colours(imgs: torch.Tensor, stride: int, scale: float) -> torch.Tensor:
    """``imgs [I, 3, H, W]`` RGB in [0, 1] -> mean colour per stride x stride patch ``[I, 3, ceil(H/s), ceil(W/s)]``
    times ``scale`` (255: the official 0-255 colours)."""
    return F.avg_pool2d(imgs.float() * scale, stride, stride, ceil_mode=True, count_include_pad=False)


def colour_kernel(colour: torch.Tensor, zeta: float) -> torch.Tensor:
    """``colour [I, 3, h, w]`` -> 3x3 neighbourhood weights ``exp(-|c_i - c_j|^2 / 2 zeta^2)`` ``[I, 9, h * w]``
    (the centre, index 4, is 1; zero-padded neighbours outside the image carry q = 0 and so no message)."""
    n_img, C, h, w = colour.shape
    nb = F.unfold(colour, 3, padding=1).view(n_img, C, 9, h * w)
    return torch.exp(-((nb - colour.view(n_img, C, 1, h * w)) ** 2).sum(1) / (2 * zeta ** 2))


class MeanFieldCRF(nn.Module):
    """Mean-field CRF over depth bins (BEVNeXt's ``MeanField``).

    ``q0 = softmax(logits)``; ``iters`` times: ``m_i = w * sum_j k_ij q_j`` over the 3x3 neighbourhood (centre
    included), ``q = softmax(logits - mu m)`` with label compatibility ``mu[d, d'] = |d - d'|`` (bin index).
    ``w`` is learned (init ``w_init``). Differentiable through every iteration.
    """

    def __init__(self, iters: int, w_init: float, zeta: float) -> None:
        super().__init__()
        self.iters = iters
        self.zeta = zeta
        self.w = nn.Parameter(torch.full((1,), float(w_init)))  # 1-d: DeepSpeed cannot broadcast 0-d parameters

    def forward(self, logits: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """``logits [I, D, h, w]``, ``colour [I, 3, h, w]`` -> depth probabilities ``[I, D, h, w]`` (float32 or float64)."""
        n, D, h, w = logits.shape
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        kernel = colour_kernel(colour.to(logits.dtype), self.zeta)[:, None]  # [I, 1, 9, hw]
        bins = torch.arange(D, device=logits.device, dtype=logits.dtype)
        mu = (bins[:, None] - bins[None]).abs()  # [D, D]
        flat = logits.view(n, D, h * w)
        q = flat.softmax(1)
        for _ in range(self.iters):
            nb = F.unfold(q.view(n, D, h, w), 3, padding=1).view(n, D, 9, h * w)
            msg = (nb * kernel).sum(2) * self.w.to(q.dtype)  # [I, D, hw]
            q = (flat - torch.einsum("de,iep->idp", mu, msg)).softmax(1)
        return q.view(n, D, h, w)


@float32_geometry
def depth_targets(points: list[torch.Tensor], ego2img: torch.Tensor, image_hw: tuple[int, int],
                  cfg: DepthConfig) -> torch.Tensor:
    """LiDAR -> per-patch depth-bin targets (the nearest point of each stride x stride patch).

    Args:
        points: B tensors ``[P_b, >=3]`` in the augmented ego frame of the current frame.
        ego2img: ``[B, N, 4, 4]`` augmented ego -> output pixels (pixel centres at integers).
        image_hw: ``(H, W)``.
    Returns:
        ``[B, N, h, w]`` int64 bin index, -1 where no point with depth in ``[d_min, d_max)`` projects into the patch.
    """
    B, N = ego2img.shape[:2]
    H, W = image_hw
    s = cfg.stride
    h, w = -(-H // s), -(-W // s)
    out = torch.full((B, N * h * w), float("inf"), device=ego2img.device)
    for b in range(B):
        p = points[b][:, :3].to(ego2img.device).float()
        uv, d = project_points(p[None].expand(N, -1, 3), ego2img[b])  # [N, P, 2], [N, P]
        u, v = uv[..., 0], uv[..., 1]
        ok = (d >= cfg.d_min) & (d < cfg.d_max) & (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
        px = torch.floor((u + 0.5) / s).long().clamp(0, w - 1)
        py = torch.floor((v + 0.5) / s).long().clamp(0, h - 1)
        cam = torch.arange(N, device=ego2img.device)[:, None].expand_as(px)
        idx = ((cam * h + py) * w + px)[ok]
        out[b].scatter_reduce_(0, idx, d[ok], reduce="amin")
    bins = torch.floor((out - cfg.d_min) / cfg.d_step)
    bins = torch.where(torch.isfinite(out), bins, torch.full_like(bins, -1.0)).clamp(max=cfg.num_bins - 1)
    return bins.long().view(B, N, h, w)


def depth_loss(prob: torch.Tensor, target: torch.Tensor, weight: float) -> torch.Tensor:
    """BCE between depth probabilities ``[I, D, h, w]`` and one-hot targets ``[I, h, w]`` (-1: none), summed over
    bins and averaged over patches with LiDAR, times ``weight`` (BEVDepth: 3)."""
    D = prob.shape[1]
    p = prob.float().permute(0, 2, 3, 1).reshape(-1, D)
    t = target.reshape(-1)
    fg = t >= 0
    if not bool(fg.any()):
        return p.sum() * 0.0
    onehot = F.one_hot(t[fg], D).float()
    bce = F.binary_cross_entropy(p[fg].clamp(1e-7, 1 - 1e-7), onehot, reduction="sum")
    return weight * bce / fg.sum().clamp(min=1)
