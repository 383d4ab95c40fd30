"""Temporal fusion: alignment follows ego motion and BEV augmentation; invalid frames are filled;
eval history (T = 1 batches) reproduces fusion over batched frames."""

import math

import numpy as np
import pytest
import torch

from bev_model import build_model, get_preset
from bev_model.config import EncoderConfig
from bev_model.synthetic import SyntheticBatch, make_batch, random_bev_aug
from bev_model.temporal import BEVHistory, align_bev, augmented_transform, fill_invalid
from shards.conventions import cur_from_prev

GRID = EncoderConfig(bev_h=50, bev_w=50)


def _blob(xy: np.ndarray, sigma: float = 2.0) -> torch.Tensor:
    """A Gaussian bump at ego point ``xy`` on the 50x50 grid -> ``[1, 1, 50, 50]``."""
    x0, y0, _, x1, y1, _ = GRID.pc_range
    xs = x0 + (np.arange(GRID.bev_w) + 0.5) * (x1 - x0) / GRID.bev_w
    ys = y0 + (np.arange(GRID.bev_h) + 0.5) * (y1 - y0) / GRID.bev_h
    gx, gy = np.meshgrid(xs, ys)
    m = np.exp(-((gx - xy[0]) ** 2 + (gy - xy[1]) ** 2) / (2 * sigma**2))
    return torch.tensor(m, dtype=torch.float32)[None, None]


def _centroid(m: torch.Tensor) -> np.ndarray:
    x0, y0, _, x1, y1, _ = GRID.pc_range
    xs = x0 + (np.arange(GRID.bev_w) + 0.5) * (x1 - x0) / GRID.bev_w
    ys = y0 + (np.arange(GRID.bev_h) + 0.5) * (y1 - y0) / GRID.bev_h
    gx, gy = np.meshgrid(xs, ys)
    w = m[0, 0].numpy().clip(min=0)
    return np.array([(w * gx).sum() / w.sum(), (w * gy).sum() / w.sum()])


def _pose(x, y, yaw):
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:2, 3] = [x, y]
    return m


@pytest.mark.parametrize("augment", [False, True])
def test_alignment_moves_features_with_ego_motion_and_bev_aug(augment):
    e2g_prev, e2g_cur = _pose(100, 50, 0.3), _pose(103, 51.5, 0.45)
    cfp = cur_from_prev(e2g_cur, e2g_prev)
    aug = random_bev_aug(np.random.default_rng(5)) if augment else np.eye(4)
    p_prev = np.array([12.0, -6.0, 0.0, 1.0])  # an object in the previous ego frame
    prev_map = _blob((aug @ p_prev)[:2])  # the previous map lives in the augmented previous frame
    tr = augmented_transform(torch.tensor(cfp)[None], torch.tensor(aug)[None])
    aligned = align_bev(prev_map, tr, GRID.pc_range)
    expected = (aug @ cfp @ p_prev)[:2]  # where the augmented current frame sees it
    assert np.linalg.norm(_centroid(aligned) - expected) < 0.3
    assert np.linalg.norm((aug @ p_prev)[:2] - expected) > 2.0  # the motion was not trivial


def test_fill_invalid_copies_the_neighbour_toward_the_current_frame():
    frames = [torch.full((2, 1, 2, 2), float(v)) for v in (1, 2, 3, 4)]  # offsets -2, -1, 0, +1
    valid = torch.tensor([[False, False, True, False], [True, True, True, True]])
    out = fill_invalid(frames, valid, current=2)
    assert [float(f[0].mean()) for f in out] == [3.0, 3.0, 3.0, 3.0]
    assert [float(f[1].mean()) for f in out] == [1.0, 2.0, 3.0, 4.0]


def _frame(batch: SyntheticBatch, t: int) -> SyntheticBatch:
    """Frame ``t`` of a batch as a T = 1 batch (what streaming eval sees)."""
    sl = slice(t, t + 1)
    return SyntheticBatch(
        imgs=batch.imgs[:, sl], ego2img=batch.ego2img[:, sl], intrinsics=batch.intrinsics[:, sl],
        cam2ego=batch.cam2ego[:, sl], img_aug=batch.img_aug[:, sl], bev_aug=batch.bev_aug,
        cur_from_prev=torch.eye(4).expand(batch.imgs.shape[0], 1, 4, 4).clone(),
        valid_prev=torch.ones(batch.imgs.shape[0], 1, dtype=torch.bool), ego2global=batch.ego2global[:, sl],
        gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels, gt_attrs=batch.gt_attrs, gt_num_pts=batch.gt_num_pts,
        gt_visibility=batch.gt_visibility, sample_token=batch.sample_token, scene_token=batch.scene_token,
        timestamp=batch.timestamp,
    )


@pytest.fixture(scope="module")
def tiny_eval():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny")).eval()
    batch = make_batch(1, 2, (64, 176), num_boxes=6, bev_aug=True, seed=7)
    return model, batch


def test_history_reuse_matches_batched_previous_frame(tiny_eval):
    model, batch = tiny_eval
    batched = model.predict(batch)[0]
    history = model.new_history()
    model.predict(_frame(batch, 0), history)
    streamed = model.predict(_frame(batch, 1), history)[0]
    assert len(history) == 1
    torch.testing.assert_close(streamed["scores"], batched["scores"], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(streamed["boxes"], batched["boxes"], atol=1e-3, rtol=1e-3)
    # without history the previous frame is missing (filled from the current one): a different answer
    alone = model.predict(_frame(batch, 1))[0]
    assert float((alone["scores"] - batched["scores"]).abs().max()) > 1e-5


def test_invalid_previous_frame_is_ignored(tiny_eval):
    model, batch = tiny_eval
    invalid = SyntheticBatch(**{**batch.__dict__, "valid_prev": torch.tensor([[False, True]])})
    noisy = SyntheticBatch(**{**invalid.__dict__, "imgs": batch.imgs.clone()})
    noisy.imgs[:, 0] = torch.rand_like(noisy.imgs[:, 0])
    a = model.predict(invalid)[0]
    b = model.predict(noisy)[0]
    torch.testing.assert_close(a["scores"], b["scores"])  # the invalid frame's content does not matter
    alone = model.predict(_frame(batch, 1))[0]
    torch.testing.assert_close(a["scores"], alone["scores"], atol=1e-5, rtol=1e-4)


def test_history_forgets_least_recent_scenes():
    h = BEVHistory(max_frames=2, max_scenes=2)
    for i, scene in enumerate(["a", "b", "c"]):
        h.push(scene, torch.eye(4) * (i + 1), torch.eye(4), torch.zeros(1, 2, 2))
    assert len(h) == 2 and h.past("a", 1) is None and h.past("c", 1) is not None
    h.push("c", torch.eye(4) * 3, torch.eye(4), torch.zeros(1, 2, 2))  # same pose: not stored twice
    assert h.past("c", 2) is None
