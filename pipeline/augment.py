"""Augmentation on the batch's device (Kornia) with exact camera-matrix bookkeeping.

Pixel coordinates: integer coordinates are pixel centres (x in [0, W-1]); this is the
convention of ``kornia.geometry.transform.warp_affine(..., align_corners=True)`` and of
``kornia.geometry.transform.hflip`` (x' = W - 1 - x), which the tests pin.

Image augmentation per window (shared by its T frames; per camera unless
``per_camera=False``) is one affine ``A`` (3x3) about the image centre c = ((W-1)/2, (H-1)/2)::

    A = Tr(c + t) @ Rot(theta) @ Scale(s) @ Flip @ Tr(-c)

so ``K' = A @ K_decoded`` and the image is resampled once with ``warp_affine``. BEV
augmentation per window is ``B = Scale(s) @ Rz(theta) @ Flip_xy``; boxes become
``transform_boxes(boxes, B)``, every frame's ``ego2img' = ego2img @ inv(B)`` (each frame is
viewed in its own augmented ego frame) and ``cur_from_prev' = B @ cur_from_prev @ inv(B)``.
``ego2global`` stays the real (unaugmented) pose.
"""

from __future__ import annotations

import math

import kornia
import numpy as np
import torch

from shards import conventions
from shards.contracts.batch import Batch

from .config import BevAugConfig, ImageAugConfig, LoaderConfig
from .raw_batch import RawBatch


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)


def image_aug_matrix(scale: torch.Tensor, angle: torch.Tensor, flip: torch.Tensor, shift: torch.Tensor,
                     hw: tuple[int, int]) -> torch.Tensor:
    """``[...]`` scale, angle (rad), flip (bool), ``[..., 2]`` shift (px) -> ``[..., 3, 3]`` A."""
    h, w = hw
    c = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64)
    shape = scale.shape
    eye = torch.eye(3, dtype=torch.float64).expand(*shape, 3, 3)
    to_c = eye.clone()
    to_c[..., :2, 2] = -c
    back = eye.clone()
    back[..., :2, 2] = c + shift
    f = eye.clone()
    f[..., 0, 0] = torch.where(flip, -1.0, 1.0)
    rs = eye.clone()
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    rs[..., 0, 0], rs[..., 0, 1], rs[..., 1, 0], rs[..., 1, 1] = cos, -sin, sin, cos
    return back @ rs @ f @ to_c


def sample_image_aug(cfg: ImageAugConfig, b: int, n: int, hw: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """``[b, n, 3, 3]`` random image transforms (float64)."""
    m = n if cfg.per_camera else 1
    h, w = hw
    s = _uniform(gen, (b, m), *cfg.resize_range)
    ang = _uniform(gen, (b, m), *cfg.rotate_deg) * (math.pi / 180)
    flip = torch.rand((b, m), generator=gen, dtype=torch.float64) < cfg.flip_prob
    room = torch.clamp(s - 1.0, min=0.0)[..., None] * torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64)
    shift = (2 * torch.rand((b, m, 2), generator=gen, dtype=torch.float64) - 1) * room
    a = image_aug_matrix(s, ang, flip, shift, hw)
    return a.expand(b, n, 3, 3).clone()


def bev_aug_matrix(scale: torch.Tensor, angle: torch.Tensor, flip_x: torch.Tensor, flip_y: torch.Tensor) -> torch.Tensor:
    """``[b]`` parameters -> ``[b, 4, 4]`` B = Scale @ Rz(angle) @ Flip (float64)."""
    b = scale.shape[0]
    out = torch.eye(4, dtype=torch.float64).repeat(b, 1, 1)
    f = torch.eye(4, dtype=torch.float64).repeat(b, 1, 1)
    f[:, 0, 0] = torch.where(flip_x, -1.0, 1.0)
    f[:, 1, 1] = torch.where(flip_y, -1.0, 1.0)
    c, s = torch.cos(angle), torch.sin(angle)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, :3, :3] *= scale[:, None, None]
    return out @ f


def sample_bev_aug(cfg: BevAugConfig, b: int, gen: torch.Generator) -> torch.Tensor:
    s = _uniform(gen, (b,), *cfg.scale_range)
    ang = _uniform(gen, (b,), *cfg.rotate_deg) * (math.pi / 180)
    fx = torch.rand((b,), generator=gen, dtype=torch.float64) < cfg.flip_x_prob
    fy = torch.rand((b,), generator=gen, dtype=torch.float64) < cfg.flip_y_prob
    return bev_aug_matrix(s, ang, fx, fy)


def warp_images(imgs: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``[M, 3, H, W]`` images, ``[M, 3, 3]`` pixel transforms -> warped ``[M, 3, H, W]`` (zeros outside)."""
    h, w = imgs.shape[-2:]
    return kornia.geometry.transform.warp_affine(imgs, a[:, :2, :].to(imgs), dsize=(h, w), mode="bilinear",
                                                 padding_mode="zeros", align_corners=True)


def photometric(imgs: torch.Tensor, cfg: ImageAugConfig, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter ``[B, T, N, 3, H, W]`` in [0, 1]; one parameter set per (sample, camera)."""
    if not (cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue):
        return imgs
    b, t, n = imgs.shape[:3]
    dev = imgs.device

    def per(lo: float, hi: float) -> torch.Tensor:  # [b, n] -> [b * t * n] (shared over T)
        v = _uniform(gen, (b, 1, n), lo, hi).expand(b, t, n).reshape(-1)
        return v.to(dev, torch.float32)

    x = imgs.reshape(b * t * n, *imgs.shape[3:])
    if cfg.brightness:
        x = kornia.enhance.adjust_brightness(x, per(-cfg.brightness, cfg.brightness), clip_output=True)
    if cfg.contrast:
        x = kornia.enhance.adjust_contrast(x, per(1 - cfg.contrast, 1 + cfg.contrast), clip_output=True)
    if cfg.saturation:
        x = kornia.enhance.adjust_saturation(x, per(1 - cfg.saturation, 1 + cfg.saturation))
    if cfg.hue:
        x = kornia.enhance.adjust_hue(x, per(-cfg.hue, cfg.hue) * math.pi)
    return x.clamp_(0, 1).reshape(imgs.shape)


def _transform_points(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    out = p.clone()
    out[:, :3] = (p[:, :3].double() @ m[:3, :3].T + m[:3, 3]).to(p.dtype)
    return out


def _tensors(arrays: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(a)) for a in arrays]


def finish_batch(raw: RawBatch, imgs_u8: torch.Tensor, cfg: LoaderConfig, gen: torch.Generator | None,
                 device: torch.device) -> Batch:
    """A worker's :class:`RawBatch` and its images -> augmented :class:`Batch` on ``device``.

    ``imgs_u8``: ``[B, T, N, H, W, 3]`` uint8 images (on ``device`` or host), from
    :meth:`pipeline.transport.FrameCache.assemble`. ``gen`` None: no random augmentation.
    """
    k = torch.from_numpy(raw.intrinsics)  # [B, T, N, 3, 3] float64
    b, t, n = k.shape[:3]
    hw = tuple(cfg.image_size)
    train_aug = cfg.mode == "train" and cfg.augment and gen is not None
    eye3 = torch.eye(3, dtype=torch.float64)
    a_img = sample_image_aug(cfg.image_aug, b, n, hw, gen) if train_aug else eye3.expand(b, n, 3, 3)
    bev = sample_bev_aug(cfg.bev_aug, b, gen) if train_aug else torch.eye(4, dtype=torch.float64).repeat(b, 1, 1)
    bev_inv = torch.linalg.inv(bev)
    img_aug = a_img[:, None] @ torch.from_numpy(raw.decode_aug)  # [B, T, N, 3, 3]
    k_aug = img_aug @ k
    e2g = torch.from_numpy(raw.ego2global)  # [B, T, 4, 4]
    cam2ego = torch.from_numpy(raw.cam2ego)  # [B, T, N, 4, 4]
    e2c = conventions.ego2cam(cam2ego, torch.from_numpy(raw.cam_ego2global), e2g[:, :, None])
    e2i = conventions.ego2img(k_aug, e2c) @ bev_inv[:, None, None]
    cfp = bev[:, None] @ conventions.cur_from_prev(e2g[:, -1:], e2g) @ bev_inv[:, None]

    x = imgs_u8.to(device, non_blocking=True)
    x = x.permute(0, 1, 2, 5, 3, 4).float().div_(255.0)  # [B, T, N, 3, H, W]
    if train_aug and not torch.equal(a_img, eye3.expand_as(a_img)):
        a_all = a_img[:, None].expand(b, t, n, 3, 3).reshape(-1, 3, 3).to(device, torch.float32)
        x = warp_images(x.reshape(b * t * n, *x.shape[3:]), a_all).reshape(x.shape)
    if train_aug:
        x = photometric(x, cfg.image_aug, gen)

    boxes = [conventions.transform_boxes(bx.double(), bev[i]).float() if len(bx) else bx
             for i, bx in enumerate(_tensors(raw.gt_boxes))]
    points = None
    if raw.points is not None:
        points = [_transform_points(p, bev[i]).to(device, non_blocking=True)
                  for i, p in enumerate(_tensors(raw.points))]

    def dev(v: torch.Tensor) -> torch.Tensor:
        return v.to(device=device, dtype=torch.float32, non_blocking=True)

    return Batch(
        imgs=x.contiguous(),
        ego2img=dev(e2i),
        intrinsics=dev(k_aug),
        cam2ego=dev(cam2ego),
        img_aug=dev(img_aug),
        bev_aug=dev(bev),
        cur_from_prev=dev(cfp),
        valid_prev=torch.from_numpy(raw.valid_prev).to(device, non_blocking=True),
        ego2global=dev(e2g),
        gt_boxes=[bx.to(device, non_blocking=True) for bx in boxes],
        gt_labels=[v.to(device, non_blocking=True) for v in _tensors(raw.gt_labels)],
        gt_attrs=[v.to(device, non_blocking=True) for v in _tensors(raw.gt_attrs)],
        gt_num_pts=[v.to(device, non_blocking=True) for v in _tensors(raw.gt_num_pts)],
        gt_visibility=[v.to(device, non_blocking=True) for v in _tensors(raw.gt_visibility)],
        sample_token=list(raw.sample_token),
        scene_token=list(raw.scene_token),
        timestamp=torch.from_numpy(raw.timestamp).to(device, non_blocking=True),
        points=points,
    )
