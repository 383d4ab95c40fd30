"""Shapes and wiring: the tiny preset fully, r50 with a tiny image, configs, lambda_pers = 0, backbone options."""

import pytest
import timm
import torch

from bev_model import build_model, get_preset, model_config_from_dict
from bev_model.backbone import Backbone
from bev_model.config import BackboneConfig
from bev_model.synthetic import make_batch
from shards.conventions import ATTRIBUTES, CLASS_ATTRIBUTES, CLASSES
from shards.typed_config import ConfigError

PERS_TERMS = {"cls", "box2d", "centerness", "offset", "depth", "size", "rot", "conf3d", "attr", "vel"}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(get_preset("tiny"))


@pytest.fixture(scope="module")
def batch():
    return make_batch(2, 2, (64, 176), num_boxes=5, bev_aug=True, seed=1)


def test_tiny_forward_train_reports_every_term_and_reaches_every_module(tiny, batch):
    tiny.train()
    tiny.zero_grad()
    out = tiny.forward_train(batch)
    layers = tiny.cfg.head.num_layers
    expected = {"loss"} | {f"pers.{t}" for t in PERS_TERMS} | {f"bev.{t}" for t in ("cls", "box", "attr")}
    expected |= {f"bev.d{i}.{t}" for i in range(layers - 1) for t in ("cls", "box", "attr")}
    assert set(out) == expected
    assert all(v.dim() == 0 and bool(torch.isfinite(v)) for v in out.values())
    bev = sum(v for k, v in out.items() if k.startswith("bev."))
    pers = sum(v for k, v in out.items() if k.startswith("pers."))
    torch.testing.assert_close(out["loss"], bev + pers)  # lambda_bev = lambda_pers = 1
    out["loss"].backward()
    for name in ("backbone", "neck", "encoder", "fusion", "pers_head", "head"):
        grads = [p.grad for p in getattr(tiny, name).parameters() if p.requires_grad]
        assert grads and any(g is not None and float(g.abs().sum()) > 0 for g in grads), name
    assert tiny.head.proposal_content[0].weight.grad is not None  # hybrid queries are in the graph


def test_tiny_predict_returns_contract_detections(tiny, batch):
    tiny.eval()
    dets = tiny.predict(batch)
    assert len(dets) == 2
    for d in dets:
        k = d["boxes"].shape[0]
        assert k <= 300 and d["boxes"].shape == (k, 9)
        assert d["scores"].shape == d["labels"].shape == d["attrs"].shape == (k,)
        assert d["labels"].dtype == torch.int64 and d["attrs"].dtype == torch.int64
        assert bool((d["scores"][:-1] >= d["scores"][1:]).all())
        for lab, att in zip(d["labels"].tolist(), d["attrs"].tolist()):
            allowed = CLASS_ATTRIBUTES[CLASSES[lab]]
            assert (att == -1) if not allowed else ATTRIBUTES[att] in allowed


def test_hybrid_query_count_follows_config(tiny, batch):
    tiny.eval()
    with torch.no_grad():
        out, *_ = tiny._run(batch, None)
    q = tiny.cfg.head.num_queries + tiny.cfg.head.num_hybrid
    assert out["cls"].shape == (tiny.cfg.head.num_layers, 2, q, 10)
    assert out["codes"].shape == (tiny.cfg.head.num_layers, 2, q, 10)


def test_lambda_pers_zero_removes_every_perspective_term(batch):
    cfg = model_config_from_dict({"preset": "tiny", "lambda_pers": 0.0})
    model = build_model(cfg)
    assert model.pers_head is None and not model.head.hybrid
    out = model.forward_train(batch)
    assert not any(k.startswith("pers.") for k in out)
    torch.testing.assert_close(out["loss"], sum(v for k, v in out.items() if k != "loss"))
    with torch.no_grad():
        res, *_ = model._run(batch, None)
    assert res["cls"].shape[2] == cfg.head.num_queries  # no hybrid queries


def test_one_stage_model_keeps_perspective_loss_without_hybrid_queries(batch):
    model = build_model(model_config_from_dict({"preset": "tiny", "head": {"hybrid": False}}))
    assert model.pers_head is not None and not model.head.hybrid
    out = model.forward_train(batch)
    assert {f"pers.{t}" for t in PERS_TERMS} <= set(out)


def test_r50_forward_with_a_tiny_image():
    # official r50 shapes except the BEV grid: 200x200 (40k queries x 6 layers) is too heavy for a CPU
    # test, so the grid is overridden to 50x50 (cells 2.048 m); everything else is the preset.
    cfg = model_config_from_dict({"preset": "r50", "encoder": {"bev_h": 50, "bev_w": 50}})
    assert cfg.encoder.num_layers == 6 and cfg.head.num_queries == 900 and cfg.head.num_layers == 6
    assert cfg.head.group_detr == 11
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.strides == [8, 16, 32, 64, 128]
    b = make_batch(1, 2, (64, 160), num_boxes=4, seed=2)
    out = model.forward_train(b)
    assert bool(torch.isfinite(out["loss"])) and "bev.d4.cls" in out and "pers.depth" in out
    with torch.no_grad():
        feats = model.image_features(b.imgs[:, -1].flatten(0, 1))
        bev = model.encoder(feats, b.ego2img[:, -1], (64, 160))
    assert [tuple(f.shape[-2:]) for f in feats] == [(8, 20), (4, 10), (2, 5), (1, 3), (1, 2)]
    assert all(f.shape[1] == 256 for f in feats) and bev.shape == (1, 256, 50, 50)


def test_presets_and_config_errors_name_the_key():
    assert get_preset("r50").encoder.bev_h == 200 and get_preset("r50").encoder.pc_range[3] == 51.2
    large = get_preset("large")
    assert large.backbone.name in timm.list_models() and large.backbone.grad_checkpointing
    tiny = get_preset("tiny")
    assert tiny.backbone.name == "resnet18" and (tiny.encoder.bev_h, tiny.encoder.bev_w) == (50, 50)
    with pytest.raises(ConfigError, match="model.encoder.bogus"):
        model_config_from_dict({"preset": "tiny", "encoder": {"bogus": 1}})
    with pytest.raises(ConfigError, match="model.preset"):
        model_config_from_dict({"preset": "huge"})
    with pytest.raises(ConfigError, match="neck.out_channels"):
        model_config_from_dict({"preset": "tiny", "neck": {"out_channels": 64}})


def test_backbone_frozen_stages_norm_eval_and_local_weights(tmp_path):
    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pt"
    torch.save(src.state_dict(), path)
    # freezing and norm_eval apply to loaded weights (a random backbone trains fully: tests/test_train_pretrained.py)
    bb = Backbone(BackboneConfig(name="resnet18", weights=path, frozen_stages=1, norm_eval=True))
    assert not any(p.requires_grad for p in bb.body.conv1.parameters())
    assert not any(p.requires_grad for p in bb.body.layer1.parameters())
    assert all(p.requires_grad for p in bb.body.layer2.parameters())
    bb.train()
    assert not any(m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))  # every BN in eval
    loaded = Backbone(BackboneConfig(name="resnet18", weights=path))
    torch.testing.assert_close(loaded.body.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match="backbone.weights"):
        Backbone(BackboneConfig(name="resnet18", weights=tmp_path / "missing.pt"))
