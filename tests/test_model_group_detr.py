"""Group-DETR: independent query groups in training, group 0 alone at inference, losses averaged over groups."""

import pytest
import torch

from bev_model import model_config_from_dict
from bev_model.bev_head import BEVHead
from bev_model.box_coder import BoxCoder
from bev_model.config import HeadConfig
from bev_model.losses import SetCriterion
from shards.conventions import ATTRIBUTES, CLASSES
from shards.typed_config import ConfigError

PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
DIMS = 32


def _head(groups: int, hybrid: bool = True) -> BEVHead:
    torch.manual_seed(0)
    cfg = HeadConfig(num_queries=6, num_hybrid=4, num_layers=2, num_heads=4, num_points=2, ffn_dims=64,
                     dropout=0.0, group_detr=groups)
    return BEVHead(DIMS, cfg, BoxCoder(PC_RANGE), len(CLASSES), len(ATTRIBUTES), hybrid, backend="reference")


def _proposals(k: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    boxes = torch.cat([torch.rand(2, k, 2, generator=g) * 60 - 30, torch.full((2, k, 1), 0.8),
                       torch.full((2, k, 3), 2.0), torch.rand(2, k, 1, generator=g), torch.zeros(2, k, 2)], -1)
    return {"boxes": boxes, "cls_prob": torch.rand(2, k, len(CLASSES), generator=g)}


def test_groups_run_in_training_only_and_group_zero_is_the_inference_model():
    head = _head(groups=3)
    bev = torch.randn(2, DIMS, 8, 8, generator=torch.Generator().manual_seed(1))
    props = _proposals()
    head.train()
    tr = head(bev, props)
    head.eval()
    ev = head(bev, props)
    per_group = 6 + 4
    assert tr["groups"] == 3 and ev["groups"] == 1
    assert tr["cls"].shape == (2, 2, 3 * per_group, len(CLASSES))
    assert ev["cls"].shape == (2, 2, per_group, len(CLASSES))
    # Self-attention stays inside a group: group 0 in training is exactly the eval-mode detector ...
    torch.testing.assert_close(tr["cls"][:, :, :per_group], ev["cls"])
    torch.testing.assert_close(tr["codes"][:, :, :per_group], ev["codes"])
    # ... and every group carries the same hybrid queries but its own learned ones.
    torch.testing.assert_close(tr["ref"][:, 6:per_group], tr["ref"][:, per_group + 6:2 * per_group])
    assert not torch.allclose(tr["ref"][:, :6], tr["ref"][:, per_group:per_group + 6])


def test_group_outputs_do_not_depend_on_other_groups():
    head = _head(groups=2, hybrid=False).train()
    bev = torch.randn(1, DIMS, 8, 8, generator=torch.Generator().manual_seed(2))
    out = head(bev)
    with torch.no_grad():
        head.query_embed.weight[6:] += 5.0  # change group 1's queries only
    out2 = head(bev)
    torch.testing.assert_close(out["cls"][:, :, :6], out2["cls"][:, :, :6])
    assert not torch.allclose(out["cls"][:, :, 6:], out2["cls"][:, :, 6:])


def test_loss_is_the_mean_over_groups():
    cfg = HeadConfig(num_queries=5)
    crit = SetCriterion(cfg, BoxCoder(PC_RANGE), len(CLASSES))
    g = torch.Generator().manual_seed(4)
    gt_boxes = [torch.tensor([[3.0, 4.0, 0.8, 4.5, 1.9, 1.7, 0.3, 1.0, 0.0], [-10.0, 2.0, 0.9, 0.7, 0.6, 1.8, 1.0, 0.0, 0.0]])]
    gt_labels, gt_attrs = [torch.tensor([0, 5])], [torch.tensor([1, -1])]

    def outputs(q: int) -> dict[str, torch.Tensor]:
        return {"cls": torch.randn(2, 1, q, len(CLASSES), generator=g), "codes": torch.randn(2, 1, q, 10, generator=g),
                "attr": torch.randn(2, 1, q, len(ATTRIBUTES), generator=g)}

    a, b = outputs(5), outputs(5)
    grouped = {k: torch.cat([a[k], b[k]], 2) for k in a} | {"groups": 2}
    la, lb, lg = crit(a, gt_boxes, gt_labels, gt_attrs), crit(b, gt_boxes, gt_labels, gt_attrs), \
        crit(grouped, gt_boxes, gt_labels, gt_attrs)
    assert set(lg) == set(la) == {"cls", "box", "attr", "d0.cls", "d0.box", "d0.attr"}
    for k in la:
        torch.testing.assert_close(lg[k], (la[k] + lb[k]) / 2)
    assert float((la["box"] - lb["box"]).abs()) > 1e-3  # the two groups really differ


def test_group_detr_config_key_is_checked():
    cfg = model_config_from_dict({"preset": "tiny", "head": {"group_detr": 4}})
    assert cfg.head.group_detr == 4
    with pytest.raises(ConfigError, match="head.group_detr"):
        model_config_from_dict({"preset": "tiny", "head": {"group_detr": 0}}).validate()
