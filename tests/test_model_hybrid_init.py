"""Hybrid queries anchored on their proposals (``head.hybrid: anchor``): an untrained decoder outputs the first
stage's boxes and scores for them, and the learned queries keep the branches' priors."""

import math

import pytest
import torch

from bev_model import get_preset
from bev_model.bev_head import CLS_PRIOR_LOGIT, CODE_PRIOR, BEVHead
from bev_model.box_coder import BoxCoder
from bev_model.config import HeadConfig
from shards.conventions import ATTRIBUTES, CLASSES

PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
DIMS = 32
Q, K = 6, 4


def _head(box_init: bool, groups: int = 1) -> BEVHead:
    torch.manual_seed(0)
    cfg = HeadConfig(num_queries=Q, num_hybrid=K, num_layers=2, num_heads=4, num_points=2, ffn_dims=64,
                     dropout=0.0, group_detr=groups, hybrid="anchor" if box_init else "centre")
    head = BEVHead(DIMS, cfg, BoxCoder(PC_RANGE), len(CLASSES), len(ATTRIBUTES), True, backend="reference")
    with torch.no_grad():  # class branches as their focal prior alone (their last weights start random)
        for branch in head.cls_branches:
            branch[-1].weight.zero_()
    return head


def _proposals() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    boxes = torch.cat([torch.rand(2, K, 2, generator=g) * 60 - 30, torch.rand(2, K, 1, generator=g),
                       torch.rand(2, K, 3, generator=g) * 4 + 0.5, torch.rand(2, K, 1, generator=g) * 6 - 3,
                       torch.randn(2, K, 2, generator=g)], -1)
    prob = torch.rand(2, K, len(CLASSES), generator=g) * 0.9 + 0.05
    scores = prob.amax(-1) * torch.rand(2, K, generator=g)  # x centerness x 3D confidence
    kept = torch.ones(2, K, dtype=torch.bool)
    kept[1, -1] = False  # a fill-in that NMS had suppressed
    return {"boxes": boxes, "cls_prob": prob, "scores": scores, "kept": kept}


@pytest.mark.parametrize("groups", [1, 2])
def test_untrained_hybrid_queries_output_their_proposals(groups):
    head = _head(True, groups).train()
    props = _proposals()
    out = head(torch.randn(2, DIMS, 8, 8, generator=torch.Generator().manual_seed(1)), props)
    coder = head.coder
    want_codes = coder.encode(props["boxes"])
    p = props["cls_prob"] * (props["scores"] / props["cls_prob"].amax(-1))[..., None]
    want_logits = torch.logit(p.clamp(1e-4, 1 - 1e-4))
    for g in range(groups):
        hyb = slice(g * (Q + K) + Q, (g + 1) * (Q + K))
        learned = slice(g * (Q + K), g * (Q + K) + Q)
        for layer in range(2):
            torch.testing.assert_close(out["codes"][layer][:, hyb], want_codes, atol=1e-4, rtol=1e-4)
            got = out["cls"][layer][:, hyb]
            torch.testing.assert_close(got[0], want_logits[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got[1, :-1], want_logits[1, :-1], atol=1e-4, rtol=1e-4)
            # the suppressed fill-in scores as low as a proposal can
            assert torch.allclose(got[1, -1], torch.full_like(got[1, -1], math.log(1e-4 / (1 - 1e-4))), atol=1e-3)
            # learned queries: the regression prior (a car, yaw 0, standing) and the focal prior
            torch.testing.assert_close(out["codes"][layer][:, learned, 3:],
                                       torch.tensor(CODE_PRIOR).expand(2, Q, -1), atol=1e-6, rtol=0)
            torch.testing.assert_close(out["cls"][layer][:, learned],
                                       torch.full((2, Q, len(CLASSES)), CLS_PRIOR_LOGIT))


def test_without_box_init_hybrid_queries_take_only_the_centre():
    head = _head(False).train()
    props = _proposals()
    out = head(torch.randn(2, DIMS, 8, 8, generator=torch.Generator().manual_seed(1)), props)
    codes = out["codes"][0][:, Q:]
    torch.testing.assert_close(codes[..., :3], props["boxes"][..., :3], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(codes[..., 3:], torch.tensor(CODE_PRIOR).expand(2, K, -1), atol=1e-6, rtol=0)
    assert torch.allclose(out["cls"][0][:, Q:], torch.tensor(CLS_PRIOR_LOGIT))


def test_box_init_is_a_residual_the_branches_learn():
    """Gradients reach the branches through anchored outputs, and a branch's change moves the box off the proposal."""
    head = _head(True).train()
    props = _proposals()
    bev = torch.randn(2, DIMS, 8, 8, generator=torch.Generator().manual_seed(1))
    out = head(bev, props)
    (out["codes"][-1][:, Q:, 3:6].sum() + out["cls"][-1][:, Q:].sum()).backward()
    assert head.reg_branches[-1][-1].weight.grad.abs().sum() > 0
    assert head.cls_branches[-1][-1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        head.reg_branches[-1][-1].bias[3] += 0.25  # log length + 0.25 for every query
    moved = head(bev, props)["codes"][-1][:, Q:, 3]
    torch.testing.assert_close(moved, head.coder.encode(props["boxes"])[..., 3] + 0.25, atol=1e-4, rtol=1e-4)


def test_presets_choose_the_hybrid_init():
    assert get_preset("tiny").head.hybrid_box_init  # the demo's model: measured faster to learn
    assert not get_preset("r50").head.hybrid_box_init  # the paper's hybrid queries (reference points only)


def test_checkpoints_resolved_before_the_key_load_with_centre_only_hybrid_queries(tmp_path):
    """A run config whose model section was resolved in full before ``hybrid_box_init`` existed was trained with the
    paper's hybrid queries; eval must not give it the preset's new default."""
    import yaml

    from bev_model import build_model
    from eval.inference import load_model
    from shards.typed_config import to_dict

    cfg = get_preset("tiny")
    full = {"preset": "tiny", **to_dict(cfg)}
    # the run configs of earlier versions: hybrid was a bool, hybrid_box_init a second switch (absent in the oldest)
    oldest = {**full, "head": {**full["head"], "hybrid": True}}
    older = {**full, "head": {**full["head"], "hybrid": True, "hybrid_box_init": True}}
    for name, model_section, want in (("oldest", oldest, False), ("older", older, True), ("new", full, True),
                                      ("preset", {"preset": "tiny"}, True)):
        ckpt = tmp_path / name
        ckpt.mkdir()
        torch.save(build_model(cfg).state_dict(), ckpt / "weights_fp32.pt")
        (ckpt / "config.yaml").write_text(yaml.safe_dump({"model": model_section, "data": {"shards": "unused"}}))
        model, _ = load_model(ckpt)
        assert model.cfg.head.hybrid_box_init is want, name
