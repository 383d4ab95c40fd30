"""Camera-matrix bookkeeping of the pipeline: pixel conventions, the projection invariant, and boxes
drawn on decoded synthetic images sitting over the rendered objects."""

from __future__ import annotations

import math

import kornia
import numpy as np
import pytest
import torch

from pipeline import LoaderConfig
from pipeline.augment import bev_aug_matrix, finish_batch, image_aug_matrix, warp_images
from pipeline.config import BevAugConfig, ImageAugConfig
from pipeline.stream import WindowStream
from pipeline.transport import FrameCache
from pipeline.urls import expand_shard_urls
from shards import conventions as cv
from shards.synth.render import PALETTE

RANDOM_AUG = dict(
    image_aug=ImageAugConfig(resize_range=(0.8, 1.2), rotate_deg=(-8.0, 8.0), flip_prob=0.5),
    bev_aug=BevAugConfig(rotate_deg=(-22.5, 22.5), scale_range=(0.95, 1.05), flip_x_prob=0.5, flip_y_prob=0.5),
)


def _raw_batches(shards, n: int, **kw):
    cfg = LoaderConfig(shards=str(shards), num_workers=0, **kw)
    ws = WindowStream(cfg, expand_shard_urls(cfg.shards), 0, 1)
    ws.spec.batches_per_worker = [n]
    cache = FrameCache(torch.device("cpu"))
    raws = [(raw, cache.assemble(raw)) for raw in ws]  # (RawBatch, [B, T, N, H, W, 3] uint8)
    return cfg, raws


def test_kornia_hflip_is_w_minus_1_minus_x():
    h, w = 5, 9
    img = torch.zeros(1, 3, h, w)
    img[0, :, 2, 1] = 1.0  # pixel (x=1, y=2)
    flipped = kornia.geometry.transform.hflip(img)
    assert flipped[0, 0, 2, w - 1 - 1] == 1.0 and flipped.sum() == 3.0
    a = image_aug_matrix(torch.ones(1), torch.zeros(1), torch.ones(1, dtype=torch.bool), torch.zeros(1, 2), (h, w))
    assert torch.allclose(a[0] @ torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64),
                          torch.tensor([w - 1 - 1.0, 2.0, 1.0], dtype=torch.float64))
    warped = warp_images(img, a)  # our warp with the flip matrix == kornia's flip, exactly
    assert torch.allclose(warped, flipped, atol=1e-6)


def test_warp_moves_content_by_a():
    """warp_images(img, A) puts source pixel x at A @ x (not A^-1), with integer pixel centres."""
    h, w = 40, 60
    img = torch.zeros(1, 3, h, w)
    img[0, :, 10, 20] = 1.0
    a = image_aug_matrix(torch.tensor([1.0]), torch.tensor([0.3]), torch.tensor([False]),
                         torch.tensor([[2.0, -1.0]]), (h, w))
    out = warp_images(img, a)[0, 0]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    m = out.double()
    centroid = torch.stack([(xs * m).sum() / m.sum(), (ys * m).sum() / m.sum()])
    expect = (a[0] @ torch.tensor([20.0, 10.0, 1.0], dtype=torch.float64))[:2]
    assert torch.allclose(centroid, expect, atol=0.05)


def test_bev_matrix_is_similarity_and_transforms_boxes():
    bm = bev_aug_matrix(torch.tensor([1.05]), torch.tensor([0.4]), torch.tensor([True]), torch.tensor([False]))[0]
    lin = bm[:3, :3]
    assert torch.allclose(lin.T @ lin, torch.eye(3, dtype=torch.float64) * 1.05**2)
    box = torch.tensor([[10.0, 2.0, 1.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.5]], dtype=torch.float64)
    out = cv.transform_boxes(box, bm)
    corners = cv.box_corners(box)[0]
    moved = corners @ lin.T + bm[:3, 3]
    got = cv.box_corners(out)[0]
    # same corner set (flips reorder corners)
    d = torch.cdist(moved, got).min(1).values
    assert d.max() < 1e-6
    assert torch.allclose(out[0, 7:9], box[0, 7:9] @ lin[:2, :2].T)


@pytest.mark.parametrize("offsets", [(-1, 0)])
def test_projection_invariant_under_random_augmentations(synth_shards, offsets):
    """Every GT corner projected with the augmented ego2img lands on A @ (original projection),
    in the current and (through cur_from_prev) in the previous frame, within 0.5 px."""
    cfg0, raws = _raw_batches(synth_shards["mini_train"], 3, batch_size=2, offsets=offsets, image_size=(96, 240),
                              augment=True, shuffle_buffer=4)
    cfg_aug = LoaderConfig(**{**cfg0.__dict__, **RANDOM_AUG})
    cfg_plain = LoaderConfig(**{**cfg0.__dict__, "augment": False})
    checked = 0
    for i, (raw, imgs) in enumerate(raws):
        plain = finish_batch(raw, imgs, cfg_plain, None, torch.device("cpu"))
        gen = torch.Generator().manual_seed(100 + i)
        aug = finish_batch(raw, imgs, cfg_aug, gen, torch.device("cpu"))
        a_img = aug.img_aug.double() @ torch.linalg.inv(plain.img_aug.double())  # [B, T, N, 3, 3]
        for b in range(aug.batch_size):
            if not len(plain.gt_boxes[b]):
                continue
            c0 = cv.box_corners(plain.gt_boxes[b].double()).reshape(-1, 3)
            c1 = cv.box_corners(aug.gt_boxes[b].double()).reshape(-1, 3)
            for t in range(len(offsets)):
                # current-frame points into frame t: inv(cur_from_prev[t])
                p0 = _apply(torch.linalg.inv(plain.cur_from_prev[b, t].double()), c0)
                p1 = _apply(torch.linalg.inv(aug.cur_from_prev[b, t].double()), c1)
                for n in range(6):
                    uv0, d0 = cv.project_points(p0, plain.ego2img[b, t, n].double())
                    uv1, d1 = cv.project_points(p1, aug.ego2img[b, t, n].double())
                    front = d0 > 1.0
                    if not front.any():
                        continue
                    expect = (torch.cat([uv0, torch.ones_like(uv0[:, :1])], 1) @ a_img[b, t, n].T)[:, :2]
                    # a BEV flip mirrors each box, permuting its corners: compare per box as corner sets
                    e8, f8 = expect.reshape(-1, 8, 2), front.reshape(-1, 8)
                    u8, g8 = uv1.reshape(-1, 8, 2), (d1 > 1.0).reshape(-1, 8)
                    dist = torch.cdist(e8, u8)  # [boxes, 8, 8]
                    dist = dist.masked_fill(~g8[:, None, :], float("inf")).min(2).values
                    err = dist[f8].max()
                    assert err <= 0.5, f"batch {i} sample {b} frame {t} cam {n}: {err:.3f} px"
                    assert torch.allclose(d1.sort().values, d0.sort().values, rtol=1e-4, atol=1e-3)
                    checked += int(front.sum())
    assert checked > 100


def _apply(m: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p @ m[:3, :3].T + m[:3, 3]


def _class_mask(img: np.ndarray, label: int) -> np.ndarray:
    """Pixels whose hue is within 20 degrees of the class colour and that are clearly saturated."""
    import colorsys

    target_h = colorsys.rgb_to_hsv(*PALETTE[label])[0]
    x = img.astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    hsv = kornia.color.rgb_to_hsv(torch.from_numpy(x).permute(2, 0, 1)[None])[0, 0].numpy() / (2 * math.pi)
    dh = np.abs(hsv - target_h)
    dh = np.minimum(dh, 1 - dh)
    return (sat > 0.35) & (dh < 20 / 360)


def test_boxes_drawn_on_decoded_image_cover_rendered_objects(synth_shards):
    """Project GT boxes with the augmented ego2img onto the augmented decoded image: the pixels
    inside each well-visible box's projected hull have the object's rendered colour."""
    from matplotlib.path import Path as MplPath

    cfg0, raws = _raw_batches(synth_shards["mini_val"], 2, batch_size=2, offsets=(0,), image_size=(128, 320),
                              crop_box=(0.0, 0.0, 1.0, 1.0), shuffle_buffer=2)
    cfg = LoaderConfig(**{**cfg0.__dict__, **RANDOM_AUG, "augment": True})
    scores = []
    for i, (raw, imgs) in enumerate(raws):
        batch = finish_batch(raw, imgs, cfg, torch.Generator().manual_seed(7 + i), torch.device("cpu"))
        for b in range(batch.batch_size):
            boxes = batch.gt_boxes[b].double()
            vis = batch.gt_visibility[b]
            for n in range(6):
                img = (batch.imgs[b, -1, n].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                hh, ww = img.shape[:2]
                uv, d = cv.project_points(cv.box_corners(boxes), batch.ego2img[b, -1, n].double())
                for j in range(len(boxes)):
                    lab = int(batch.gt_labels[b][j])
                    if vis[j] < 4 or (d[j] < 2).any() or lab not in (0, 1, 2, 3, 4):
                        continue
                    pts = uv[j].numpy()
                    lo, hi = pts.min(0), pts.max(0)
                    if lo[0] < 0 or lo[1] < 0 or hi[0] > ww - 1 or hi[1] > hh - 1 or (hi - lo).min() < 8:
                        continue
                    from scipy.spatial import ConvexHull

                    hull = MplPath(pts[ConvexHull(pts).vertices])
                    ys, xs = np.mgrid[0:hh, 0:ww]
                    inside = hull.contains_points(np.stack([xs.ravel(), ys.ravel()], 1)).reshape(hh, ww)
                    mask = _class_mask(img, lab)
                    frac_in = mask[inside].mean()
                    # the same hull moved by its own width must see far less of the colour
                    shift = int(math.ceil(hi[0] - lo[0]))
                    moved = np.zeros_like(inside)
                    if lo[0] - shift >= 0:
                        moved[:, : ww - shift] = inside[:, shift:]
                    else:
                        moved[:, shift:] = inside[:, : ww - shift]
                    frac_out = mask[moved & ~inside].mean() if (moved & ~inside).any() else 0.0
                    scores.append((frac_in, frac_out))
    assert len(scores) >= 3, "no well-visible vehicle boxes found in the synthetic images"
    fin = np.array([s[0] for s in scores])
    fout = np.array([s[1] for s in scores])
    assert np.median(fin) > 0.5, fin
    assert np.median(fin - fout) > 0.3, (fin, fout)


def _points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, margin: float) -> torch.Tensor:
    """``[P, 3+]`` points, ``[K, 9]`` boxes -> ``[K]`` counts of points inside each box grown by ``margin``
    (LiDAR points lie exactly on box faces: without a margin the test is decided by rounding)."""
    d = points[None, :, :3].double() - boxes[:, None, :3].double()
    c, s = torch.cos(boxes[:, 6:7].double()), torch.sin(boxes[:, 6:7].double())
    x = d[..., 0] * c + d[..., 1] * s
    y = -d[..., 0] * s + d[..., 1] * c
    half = boxes[:, None, 3:6].double() / 2 + margin
    return ((x.abs() <= half[..., 0]) & (y.abs() <= half[..., 1]) & (d[..., 2].abs() <= half[..., 2])).sum(1)


def test_lidar_points_follow_the_bev_augmentation(synth_shards_lidar):
    cfg0, raws = _raw_batches(synth_shards_lidar, 2, batch_size=2, offsets=(0,), image_size=(32, 80),
                              load_points=True, shuffle_buffer=2)
    cfg = LoaderConfig(**{**cfg0.__dict__, **RANDOM_AUG, "augment": True})
    plain_cfg = LoaderConfig(**{**cfg0.__dict__, "augment": False})
    total = 0
    for i, (raw, imgs) in enumerate(raws):
        plain = finish_batch(raw, imgs, plain_cfg, None, torch.device("cpu"))
        aug = finish_batch(raw, imgs, cfg, torch.Generator().manual_seed(i), torch.device("cpu"))
        for b in range(aug.batch_size):
            assert aug.points[b].shape == plain.points[b].shape and aug.points[b].shape[1] == 4
            scale = float(torch.linalg.norm(aug.bev_aug[b, :3, 0].double()))
            n0 = _points_in_boxes(plain.points[b], plain.gt_boxes[b], 0.1)
            n1 = _points_in_boxes(aug.points[b], aug.gt_boxes[b], 0.1 * scale)
            assert torch.equal(n0, n1)
            total += int(n0.sum())
    assert total > 50
