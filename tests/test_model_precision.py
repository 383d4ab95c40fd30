"""Mixed precision: the detector trains under bf16 autocast and with bf16 weights, and its geometry stays fp32.

The GPU path of the large preset runs under ``torch.autocast`` (``deepspeed.precision: bf16-mixed``) or with
DeepSpeed's bf16 weights; CPU autocast exercises the same code paths here.
"""

from __future__ import annotations

import pytest
import torch

from bev_model import build_model, get_preset
from bev_model.bev_encoder import pillar_points, project_pillars
from bev_model.precision import float32_geometry, to_float32
from bev_model.synthetic import make_batch


def _model():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.temporal.offsets = (-1, 0)
    return build_model(cfg).train()


@pytest.mark.parametrize("weights", ["fp32", "bf16"])
def test_training_step_under_bf16_autocast(weights):
    model = _model()
    if weights == "bf16":
        model = model.to(torch.bfloat16)  # DeepSpeed's ``precision: bf16`` holds the weights in bf16
    batch = make_batch(1, 2, (64, 176), num_boxes=6, bev_aug=True, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.forward_train(batch)
    assert torch.isfinite(losses["loss"]), losses
    losses["loss"].backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_pillar_projection_is_float32_under_autocast():
    """Inside autocast the projection gives the same bits as in fp32 (it would lose pixels in bf16)."""
    cfg = get_preset("tiny").encoder
    batch = make_batch(1, 1, (450, 800), num_boxes=2, seed=3)
    pts = pillar_points(cfg)
    ref, hit = project_pillars(pts, batch.ego2img[:, 0], (450, 800))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_ac, hit_ac = project_pillars(pts.bfloat16(), batch.ego2img[:, 0], (450, 800))
    assert ref_ac.dtype == torch.float32
    # the bf16 anchor points are rounded (0.25 m steps at 50 m): compare with fp32 on the same rounded points
    ref_r, hit_r = project_pillars(pts.bfloat16().float(), batch.ego2img[:, 0], (450, 800))
    assert torch.equal(ref_ac, ref_r) and torch.equal(hit_ac, hit_r)
    assert hit.any()


def test_float32_geometry_casts_nested_arguments_and_disables_autocast():
    seen = {}

    @float32_geometry
    def f(x, d, *, items):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["dtypes"] = (x.dtype, d["a"].dtype, d["i"].dtype, items[0].dtype, items[1])
        return x @ x

    x = torch.randn(3, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = f(x, {"a": x, "i": torch.arange(3)}, items=[x.half(), "name"])
    assert seen == {"autocast": False, "dtypes": (torch.float32, torch.float32, torch.int64, torch.float32, "name")}
    assert out.dtype == torch.float32
    assert to_float32((x, 1.5))[0].dtype == torch.float32
