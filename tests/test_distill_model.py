"""The BEVDistill wrapper: the teacher is frozen and not a submodule (no ``teacher.*`` weights, no optimizer
state), every term is finite and trains the student, the exported weights load into a plain student whose
predictions are the wrapper's."""

import numpy as np
import pytest
import torch

from bev_model import build_model, model_config_from_dict
from bev_model.distill.model import BEVDistill, student_state_dict
from bev_model.lidar.synthetic import box_points
from bev_model.synthetic import make_batch
from shards.contracts.checkpoint import CheckpointError
from shards.typed_config import ConfigError

STUDENT = {"preset": "tiny", "backbone": {"frozen_stages": 3}, "encoder": {"bev_h": 10, "bev_w": 10},
           "head": {"num_queries": 20, "num_hybrid": 10}, "temporal": {"offsets": [0]}}
TEACHER = {"preset": "lidar_tiny", "grid": {"bev_h": 10, "bev_w": 10}, "pillar": {"stride": 1, "channels": 8},
           "backbone": {"layer_channels": [16], "layer_nums": [1], "layer_strides": [1], "fpn_channels": 16},
           "embed_dims": 32, "head": {"num_queries": 20, "num_layers": 2, "ffn_dims": 64},
           "heatmap": {"shared_channels": 16}}


def _cfg(**distill):
    return model_config_from_dict({"preset": "distill_tiny", "student": STUDENT,
                                   "teacher": {"random_init": True, "model": TEACHER}, "distill": distill})


def _batch():
    batch = make_batch(batch_size=2, frames=1, image_hw=(32, 88), num_boxes=3, bev_aug=True, seed=2)
    rng = np.random.default_rng(0)
    batch.points = [box_points(b, rng, per_box=50, ground=300) for b in batch.gt_boxes]
    return batch


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = build_model(_cfg())
    assert isinstance(model, BEVDistill)
    out = model.forward_train(_batch())
    out["loss"].backward()
    return model, out


def test_every_term_is_finite_and_the_total_includes_them(trained):
    _, out = trained
    terms = ["distill.dense", "distill.instance", "distill.box", "distill.heatmap"]
    assert all(k in out and torch.isfinite(out[k]) and out[k] > 0 for k in terms)
    student = sum(v for k, v in out.items() if k.startswith(("bev.", "pers.")))
    assert torch.allclose(out["loss"], student + sum(out[k] for k in terms), rtol=1e-5)


def test_the_teacher_is_frozen_and_not_a_submodule(trained):
    model, _ = trained
    teacher = model._teacher[0]
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    names = [n for n, _ in model.named_parameters()] + list(model.state_dict())
    assert not any(n.startswith("teacher") or "_teacher" in n for n in names)
    ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in ids for p in teacher.parameters())
    assert model.distill["heatmap"].shared[0].weight.grad.abs().sum() > 0
    assert model.distill["instance"].teacher_proj.proj.weight.grad.abs().sum() > 0
    model.train()
    assert not teacher.training  # train() on the wrapper does not reach the teacher


def test_exported_weights_load_into_a_plain_student_with_the_same_predictions(trained):
    model, _ = trained
    plain = build_model(model.distill_cfg.student_config())
    state = student_state_dict(model.state_dict())
    plain.load_state_dict(state, strict=True)
    batch = _batch()
    batch.points = None  # the student needs no LiDAR
    a, b = model.eval().predict(batch), plain.eval().predict(batch)
    assert torch.equal(a[0]["boxes"], b[0]["boxes"]) and torch.equal(a[1]["scores"], b[1]["scores"])


def test_each_term_can_be_switched_off_and_a_missing_teacher_is_an_error():
    torch.manual_seed(0)
    model = build_model(_cfg(dense=False, instance=False, box=False, heatmap=False))
    assert len(model.distill) == 0
    out = model.forward_train(_batch())
    assert not any(k.startswith("distill.") for k in out)
    cfg = model_config_from_dict({"preset": "distill_tiny", "student": STUDENT, "teacher": {"model": TEACHER}})
    with pytest.raises(CheckpointError, match="teacher.checkpoint"):
        build_model(cfg).forward_train(_batch())
    with pytest.raises(ConfigError, match="grid"):
        model_config_from_dict({"preset": "distill_tiny", "student": STUDENT,
                                "teacher": {"model": {**TEACHER, "grid": {"bev_h": 12, "bev_w": 10}}}})
