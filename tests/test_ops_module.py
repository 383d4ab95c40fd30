"""MSDeformAttn: initialisation, reference-point layouts, padding mask, backends agree, and it trains."""

from __future__ import annotations

import math

import pytest
import torch

from bev_model.ops import MSDeformAttn
from bev_model.ops.testing import fit_toy_target, level_tensors

SHAPES = ((8, 10), (4, 5))


def _toy(batch=2, queries=12, embed=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_tensors(SHAPES)
    S = sum(h * w for h, w in SHAPES)
    return (
        torch.randn(batch, queries, embed, generator=g),
        torch.randn(batch, S, embed, generator=g),
        spatial_shapes,
        level_start_index,
        g,
    )


def test_offsets_start_on_a_circle_of_directions():
    attn = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head m points along angle 2*pi*m/4, scaled onto the unit square; point i at radius i+1; same per level
    expected_dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for m in range(4):
        for i in range(3):
            torch.testing.assert_close(bias[m, 0, i], expected_dirs[m] * (i + 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[:, 0], bias[:, 1])
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.sampling_offsets.weight.abs().sum() == 0
    assert math.isclose(
        float(torch.softmax(attn.attention_weights.bias.detach().view(4, 6), -1)[0, 0]), 1 / 6, rel_tol=1e-6
    )


def test_levels_layout_locations():
    attn = MSDeformAttn(embed_dims=16, num_heads=2, num_levels=2, num_points=2)
    spatial_shapes, _ = level_tensors(SHAPES)
    offsets = torch.randn(1, 3, 2, 2, 2, 2)
    ref = torch.rand(1, 3, 2, 2)
    loc = attn.sampling_locations(offsets, ref, spatial_shapes)
    # level 1 is 4 x 5 (H x W): x offsets are in units of 1/W, y of 1/H
    torch.testing.assert_close(
        loc[0, 1, 0, 1, 1], ref[0, 1, 1] + offsets[0, 1, 0, 1, 1] / torch.tensor([5.0, 4.0])
    )
    shared = attn.sampling_locations(
        offsets, ref[:, :, :1], spatial_shapes
    )  # [B, Q, 1, 2] broadcasts over levels
    want = ref[:, :, None, None, 0] + offsets[:, :, :, 1] / torch.tensor([5.0, 4.0])  # [B, Q, M, P, 2]
    torch.testing.assert_close(shared[:, :, :, 1], want)
    boxes = torch.cat([ref, torch.full_like(ref, 0.2)], -1)  # [B, Q, L, 4] (cx, cy, w, h)
    box_loc = attn.sampling_locations(offsets, boxes, spatial_shapes)
    torch.testing.assert_close(box_loc[0, 2, 1, 0, 1], ref[0, 2, 0] + offsets[0, 2, 1, 0, 1] / 2 * 0.2 * 0.5)


def test_anchors_layout_splits_points_over_height_anchors():
    """BEVFormer SCA: reference_points [B, Q, Zr, 2]; point p of each level belongs to anchor p % Zr."""
    attn = MSDeformAttn(embed_dims=16, num_heads=2, num_levels=2, num_points=8, reference_layout="anchors")
    spatial_shapes, _ = level_tensors(SHAPES)
    offsets = torch.randn(2, 3, 2, 2, 8, 2)
    anchors = torch.rand(2, 3, 4, 2)
    loc = attn.sampling_locations(offsets, anchors, spatial_shapes)
    norm = torch.tensor([[10.0, 8.0], [5.0, 4.0]])
    for lvl in range(2):
        for p in range(8):
            want = anchors[:, :, None, p % 4] + offsets[:, :, :, lvl, p] / norm[lvl]
            torch.testing.assert_close(loc[:, :, :, lvl, p], want)
    with pytest.raises(ValueError, match="divisible"):
        attn.sampling_locations(offsets, torch.rand(2, 3, 3, 2), spatial_shapes)


def test_bad_reference_points_are_named():
    attn = MSDeformAttn(embed_dims=16, num_heads=2, num_levels=2, num_points=2)
    query, value, spatial_shapes, level_start_index, _ = _toy(embed=16)
    with pytest.raises(ValueError, match="reference_points"):
        attn(query, torch.rand(2, 12, 3, 2), value, spatial_shapes, level_start_index)
    with pytest.raises(ValueError, match="num_levels=2"):
        attn(query, torch.rand(2, 12, 1, 2), value, spatial_shapes[:1], level_start_index[:1])


def test_key_padding_mask_hides_padded_values():
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=4, backend="cpu")
    query, value, spatial_shapes, level_start_index, g = _toy()
    ref = torch.rand(2, 12, 2, 2, generator=g)
    mask = torch.zeros(2, value.shape[1], dtype=torch.bool)
    mask[:, 40:] = True
    out = attn(query, ref, value, spatial_shapes, level_start_index, key_padding_mask=mask)
    changed = value.clone()
    changed[:, 40:] += 5.0
    out2 = attn(query, ref, changed, spatial_shapes, level_start_index, key_padding_mask=mask)
    torch.testing.assert_close(out, out2)
    out3 = attn(query, ref, changed, spatial_shapes, level_start_index)
    assert (out3 - out).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["levels", "anchors"])
def test_cpu_and_reference_modules_agree(layout):
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=4, reference_layout=layout)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    query, value, spatial_shapes, level_start_index, g = _toy()
    ref = torch.rand(2, 12, 2, 2, generator=g)
    outs, grads = [], []
    for backend in ("reference", "cpu"):
        attn.backend = backend
        attn.zero_grad()
        out = attn(query, ref, value, spatial_shapes, level_start_index)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in attn.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_module_trains_on_toy_target(backend):
    """A few Adam steps toward a random target: the loss falls and gradients reach the offsets and weights."""
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=4, backend=backend)
    query, value, spatial_shapes, level_start_index, g = _toy()
    ref = torch.rand(2, 12, 2, 2, generator=g)
    target = torch.randn(2, 12, 32, generator=g)
    losses = fit_toy_target(attn, query, ref, value, spatial_shapes, level_start_index, target, steps=15, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0], losses
