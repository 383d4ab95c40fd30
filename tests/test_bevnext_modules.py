"""BEVNeXt building blocks: the mean-field CRF, its colour kernel, Res2Fusion, the CenterPoint targets, decoding, NMS."""

from __future__ import annotations

import math

import pytest
import torch

from bev_model import get_preset
from bev_model.bev_grid import BEVGrid
from bev_model.bevnext.bev import Res2Fusion
from bev_model.bevnext.config import DepthConfig, TemporalConfig
from bev_model.bevnext.depth import DepthNet, MeanFieldCRF, camera_params, colour_kernel, patch_colours
from bev_model.bevnext.head import REG_HEADS, center_targets, circle_nms, decode
from bev_model.heatmap import gaussian_focal_loss
from bev_model.synthetic import make_batch
from shards.conventions import transform_boxes


def test_crf_with_zero_weight_returns_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, 6, generator=g)
    colour = torch.rand(2, 3, 5, 6, generator=g)
    crf = MeanFieldCRF(iters=20, w_init=0.0, zeta=0.1)
    torch.testing.assert_close(crf(logits, colour), logits.softmax(1))


def test_crf_changes_the_distribution_and_is_differentiable_through_all_iterations():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    colour = torch.rand(1, 3, 3, 3, generator=g, dtype=torch.float64)
    crf = MeanFieldCRF(iters=20, w_init=0.3, zeta=0.5).double()
    q = crf(logits, colour)
    assert (q - logits.softmax(1)).abs().max() > 1e-3
    torch.testing.assert_close(q.sum(1), torch.ones(1, 3, 3, dtype=torch.float64))
    # the analytic gradient (through all 20 iterations) equals the numerical one, w.r.t. logits and w
    w = crf.w.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w_: torch.func.functional_call(crf, {"w": w_}, (x, colour)), (logits, w))


def test_faithful_colour_kernel_is_inactive_and_active_variant_is_not():
    g = torch.Generator().manual_seed(2)
    imgs = torch.rand(1, 3, 32, 48, generator=g)
    faithful = colour_kernel(patch_colours(imgs, 8, 255.0), 1e-3)  # official: 0-255 colours, zeta 1e-3
    active = colour_kernel(patch_colours(imgs, 8, 1.0), 0.1)
    centre = 4
    off = [i for i in range(9) if i != centre]
    assert torch.allclose(faithful[:, centre], torch.ones_like(faithful[:, centre]))
    assert float(faithful[:, off].max()) < 1e-6
    assert float(active[:, off].mean()) > 0.05


@pytest.mark.parametrize("frames,group", [(6, 2), (9, 3)])
def test_res2fusion_shapes_and_oldest_group_passes_most_convolutions(frames, group):
    torch.manual_seed(0)
    C = 16
    fusion = Res2Fusion(C, frames, TemporalConfig(offsets=tuple(range(-frames + 1, 1)), group_frames=group)).eval()
    x = torch.rand(1, frames * C, 15, 15) + 0.5
    base = fusion(x)
    assert base.shape == (1, C, 15, 15)
    G = frames // group
    radii = []
    for gi in range(G):
        y = x.clone()
        y[0, gi * group * C: (gi + 1) * group * C, 7, 7] += 10.0  # one pixel of every frame in group gi
        changed = torch.nonzero((fusion(y) - base).abs().sum((0, 1)) > 1e-6)
        radii.append(int((changed - 7).abs().max()))
    # group g (oldest first) goes through G - 1 - g 3x3 convs (the newest through none): receptive radius
    assert radii == [G - 1 - g for g in range(G)]


def test_center_targets_peak_at_the_box_cell_and_code_the_offset():
    grid = BEVGrid((-10.0, -10.0, -5.0, 10.0, 10.0, 3.0), 20, 20, 1)
    boxes = torch.tensor([[3.3, -4.6, 0.8, 4.0, 2.0, 1.5, 0.5, 1.0, -2.0], [30.0, 0.0, 0.0, 1, 1, 1, 0, 0, 0]])
    t = center_targets([boxes], [torch.tensor([0, 5])], [torch.tensor([1, -1])], grid, 10, 0.1, 1)
    iy, ix = int((-4.6 + 10) // 1), int((3.3 + 10) // 1)
    assert t["heatmap"][0, 0, iy, ix] == 1.0 and int((t["heatmap"] == 1).sum()) == 1  # the 2nd box is outside
    assert t["mask"][0].tolist() == [True, False] and int(t["ind"][0, 0]) == iy * 20 + ix
    torch.testing.assert_close(t["code"][0, 0, :3], torch.tensor([0.3, 0.4, 0.8]), atol=1e-5, rtol=0)
    low = gaussian_focal_loss(torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4)), t["heatmap"])
    high = gaussian_focal_loss(torch.zeros_like(t["heatmap"]), t["heatmap"])
    assert float(low) < 0.01 < float(high)


def test_decode_of_the_target_maps_returns_the_gt_boxes_in_the_unaugmented_frame():
    """Targets -> ideal maps (heat = the target heatmap, codes at the centre cells) -> decode: every GT box back,
    un-augmented, with its class. Pins the code <-> decode conventions (offsets, log sizes, yaw, bev_aug)."""
    cfg = get_preset("bevnext_tiny")
    grid = cfg.bev.grid
    batch = make_batch(1, 1, (32, 64), num_cams=1, num_boxes=8, bev_aug=True, seed=5)
    assert not torch.allclose(batch.bev_aug[0], torch.eye(4, dtype=batch.bev_aug.dtype))
    boxes, labels, attrs = batch.detection_targets("cpu")
    t = center_targets(boxes, labels, attrs, grid, cfg.num_classes, 0.1, 1)
    assert bool(t["mask"].all())
    maps = torch.zeros(1, 10, grid.H * grid.W)
    maps[0, :, t["ind"][0]] = t["code"][0].t()
    reg = dict(zip([k for k, _ in REG_HEADS], maps.view(1, 10, grid.H, grid.W).split([c for _, c in REG_HEADS], 1)))
    reg["attr"] = torch.zeros(1, cfg.num_attrs, grid.H, grid.W)
    dets = decode(torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4)), reg, grid, cfg, batch.bev_aug)[0]
    top = dets["scores"] > 0.99  # the peaks; Gaussian shoulders decode as lower-scored neighbours
    gt = transform_boxes(boxes[0], torch.linalg.inv(batch.bev_aug[0].float()))
    got = dets["boxes"][top]
    assert got.shape[0] == gt.shape[0]
    match = torch.cdist(gt[:, :2], got[:, :2]).argmin(1)
    assert sorted(match.tolist()) == list(range(gt.shape[0]))
    assert dets["labels"][top][match].tolist() == labels[0].tolist()
    torch.testing.assert_close(got[match, :6], gt[:, :6], atol=1e-3, rtol=1e-4)
    dyaw = torch.remainder(got[match, 6] - gt[:, 6] + math.pi, 2 * math.pi) - math.pi
    assert float(dyaw.abs().max()) < 1e-3
    torch.testing.assert_close(got[match, 7:], gt[:, 7:], atol=1e-3, rtol=1e-4)


def test_circle_nms_suppresses_same_class_neighbours_only():
    xy = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.6, 0.0], [10.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 0])
    radius = torch.tensor([2.0, 0.1])
    assert circle_nms(xy, labels, radius).tolist() == [0, 2, 3]


def test_camera_params_are_of_order_one_for_a_nuscenes_rig():
    """fx ~1266 px on a 1600x900 source resized to 704x396 and cropped to 256: every number stays small."""
    K = torch.tensor([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
    A = torch.tensor([[0.44, 0.0, 0.0], [0.0, 0.44, -140.0], [0.0, 0.0, 1.0]])  # resize, crop the top
    cam2ego = torch.eye(4)
    cam2ego[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    cam2ego[:3, 3] = torch.tensor([1.7, 0.0, 1.5])
    bev = torch.eye(4)
    p = camera_params((A @ K)[None, None], A[None, None], bev[None], cam2ego[None, None], (256, 704))
    assert p.shape == (1, 1, 27)
    assert float(p.abs().max()) < 3.0  # fy' / H = 2.18 is the largest
    assert p[0, 0, 0] == pytest.approx(0.44 * 1266.4 / 704, rel=1e-5)  # fx' / W
    assert p[0, 0, 9] == pytest.approx(-140.0 / 256, rel=1e-5)  # img_aug's row translation / H


def test_camera_embedding_stays_bounded_in_eval_after_one_sample_batches():
    """Training with one sample per batch (the bev_aug numbers equal over its cameras) must not teach the depth
    net statistics that blow the eval-mode camera embedding up: BEVDepth's BatchNorm1d did (variance -> 0,
    then |x| in the hundreds)."""
    cfg = DepthConfig(d_step=5.0, mid_channels=16, num_res_blocks=1, aspp=False, context_dcn=False)
    net = DepthNet(8, 8, cfg)
    seen: list[torch.Tensor] = []
    net.depth_mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    feat = torch.randn(6, 8, 4, 6)
    g = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(30):
        yaw = float(torch.rand((), generator=g)) * 0.8 - 0.4
        bev = torch.eye(4)
        bev[:2, :2] = torch.tensor([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
        K = torch.tensor([[100.0, 0.0, 24.0], [0.0, 100.0, 16.0], [0.0, 0.0, 1.0]]).expand(1, 6, 3, 3)
        cams = camera_params(K, torch.eye(3).expand(1, 6, 3, 3), bev[None], torch.eye(4).expand(1, 6, 4, 4), (32, 48))
        net(feat, cams.flatten(0, 1))
    net.eval()
    with torch.no_grad():
        cams = camera_params(K, torch.eye(3).expand(1, 6, 3, 3), torch.eye(4)[None], torch.eye(4).expand(1, 6, 4, 4),
                             (32, 48))
        net(feat, cams.flatten(0, 1))
    assert float(seen[-1].abs().max()) < 10.0
    assert torch.equal(seen[-1], cams.flatten(0, 1))  # the same numbers in train and eval mode
