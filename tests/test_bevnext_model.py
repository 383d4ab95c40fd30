"""BEVNeXt as a detector family: registry, output contract, LiDAR requirement, history, stage 2, overfitting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from bev_model import build_model, get_preset, model_config_from_dict
from bev_model.bevnext import BEVNeXtConfig
from bev_model.bevnext.model import STAGE2_DROP, FrustumHistory
from bev_model.bevnext.synthetic import with_points
from bev_model.registry import DetectorConfig, family_of_config
from bev_model.synthetic import make_batch
from shards.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HW = (48, 128)
CAMS = 2  # fewer cameras: test speed (the model takes any N)


def small(**over) -> BEVNeXtConfig:
    """``bevnext_tiny`` with a 32x32 grid (test speed)."""
    data = {"preset": "bevnext_tiny", "bev": {"bev_h": 32, "bev_w": 32}, **over}
    return model_config_from_dict(data)


def test_presets_are_registered_and_validated():
    for name in ("bevnext_tiny", "bevnext_r50"):
        cfg = get_preset(name)
        assert isinstance(cfg, BEVNeXtConfig) and isinstance(cfg, DetectorConfig)
        assert family_of_config(cfg).name == "bevnext"
        assert cfg.needs_points and not cfg.needs_points_in_eval
    r50 = get_preset("bevnext_r50")
    assert r50.depth.num_bins == 118 and (r50.bev.bev_h, r50.bev.bev_w) == (128, 128)
    assert r50.bev.grid.cell_size[:2] == pytest.approx((0.8, 0.8)) and len(r50.frame_offsets) == 9
    assert get_preset("bevnext_tiny").frame_offsets == (0,)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="temporal.group_frames"):
        model_config_from_dict({"preset": "bevnext_tiny", "temporal": {"offsets": [-1, 0], "group_frames": 3}})
    with pytest.raises(ConfigError, match="depth.stride"):
        model_config_from_dict({"preset": "bevnext_tiny", "depth": {"stride": 16}})
    with pytest.raises(ConfigError, match="depth.crf"):
        model_config_from_dict({"preset": "bevnext_tiny", "depth": {"crf": "sometimes"}})


def test_a_bare_crf_off_on_the_command_line_means_off(tmp_path):
    """YAML 1.1 reads `model.depth.crf=off` as false: it is the `off` mode, not an error."""
    from train.config import load_train_config

    (tmp_path / "train").mkdir()
    cfg = load_train_config(Path("configs/bevnext_tiny_stage1.yaml"), [f"data.shards={tmp_path / 'train'}",
                                                                        "model.depth.crf=off"])
    assert cfg.model_config().depth.crf == "off"


def test_train_losses_and_predict_contract():
    torch.manual_seed(0)
    model = build_model(small())
    batch = with_points(make_batch(1, 1, HW, num_cams=CAMS, bev_aug=True, seed=0))
    losses = model.forward_train(batch)
    assert set(losses) == {"loss", "depth.bce", "det.heatmap", "det.reg", "det.attr"}
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["depth.bce"].detach()) > 0
    losses["loss"].backward()
    assert model.crf.w.grad is not None and model.depth_net.reduce[0].weight.grad is not None
    model.eval()
    det = model.predict(batch)
    assert len(det) == 1
    d = det[0]
    K = d["boxes"].shape[0]
    assert d["boxes"].shape == (K, 9) and d["scores"].shape == (K,) and 0 < K <= model.cfg.head.max_detections
    assert d["labels"].dtype == torch.int64 and d["attrs"].dtype == torch.int64
    assert bool((d["labels"] >= 0).all() & (d["labels"] < 10).all()) and bool((d["attrs"] >= -1).all())
    assert bool((d["scores"][:-1] >= d["scores"][1:]).all()) and bool(torch.isfinite(d["boxes"]).all())


def test_training_without_points_is_refused_clearly():
    model = build_model(small())
    batch = make_batch(1, 1, HW, num_cams=CAMS, seed=0)
    with pytest.raises(ValueError, match=r"BEVNeXt.*no `points`.*--lidar.*data.load_points"):
        model.forward_train(batch)


def test_temporal_model_trains_on_windows_and_streams_with_history():
    torch.manual_seed(0)
    model = build_model(small(temporal={"offsets": [-2, -1, 0], "group_frames": 1}))
    assert model.bev_encoder.fusion is not None and model.bev_encoder.fusion.groups == 3
    batch = with_points(make_batch(1, 3, HW, num_cams=CAMS, seed=1))
    losses = model.forward_train(batch)
    assert torch.isfinite(losses["loss"])
    model.eval()
    history = model.new_history()
    assert isinstance(history, FrustumHistory) and history.max_frames == 2
    window = model.predict(batch)
    cur = dataclasses.replace(batch, imgs=batch.imgs[:, -1:], ego2img=batch.ego2img[:, -1:],
                              intrinsics=batch.intrinsics[:, -1:], cam2ego=batch.cam2ego[:, -1:],
                              img_aug=batch.img_aug[:, -1:], cur_from_prev=batch.cur_from_prev[:, -1:],
                              valid_prev=batch.valid_prev[:, -1:], ego2global=batch.ego2global[:, -1:])
    for t in range(3):  # stream the three frames one by one: the last call sees the two earlier ones
        frame = dataclasses.replace(cur, imgs=batch.imgs[:, t:t + 1], ego2img=batch.ego2img[:, t:t + 1],
                                    ego2global=batch.ego2global[:, t:t + 1])
        streamed = model.predict(frame, history)
    assert len(history) == 1 and len(history._scenes[batch.scene_token[0]]) == 2
    # streaming re-lifts the same past frames into the current frame as the window does
    torch.testing.assert_close(streamed[0]["scores"], window[0]["scores"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(streamed[0]["boxes"], window[0]["boxes"], atol=1e-3, rtol=1e-3)


def test_stage2_keeps_every_undropped_stage1_weight():
    """Stage 2 (more frames) loads stage 1's weights minus the BEV encoder and heads: every other key of the
    stage-2 model exists in stage 1 with the same shape, and the dropped prefixes cover every changed shape."""
    s1 = build_model(small()).state_dict()
    s2 = build_model(small(temporal={"offsets": [-1, 0], "group_frames": 1})).state_dict()
    for prefix in STAGE2_DROP:
        assert any(k.startswith(prefix) for k in s1), prefix
    kept = {k for k in s2 if not k.startswith(STAGE2_DROP)}
    assert kept and all(k in s1 and s1[k].shape == s2[k].shape for k in kept)
    assert any(k.startswith("bev_encoder.fusion.") for k in s2) and not any("fusion" in k for k in s1)


def test_stage_configs_load_and_stage2_drops_the_encoder_and_heads():
    s1 = yaml.safe_load((ROOT / "configs/bevnext_tiny_stage1.yaml").read_text())
    s2 = yaml.safe_load((ROOT / "configs/bevnext_tiny_stage2.yaml").read_text())
    c1 = model_config_from_dict(s1["model"])
    c2 = model_config_from_dict(s2["model"])
    assert c1.frame_offsets == (0,) and len(c2.frame_offsets) > 1
    assert c1.needs_points and c2.needs_points  # the loader's window and LiDAR loading are derived from these
    for s in (s1, s2):
        assert "offsets" not in s["data"] and "load_points" not in s["data"]  # one source: the model section
    assert tuple(s2["init"]["drop"]) == STAGE2_DROP and s2["init"]["from_checkpoint"]
    assert s1["ema"]["enabled"] and s2["ema"]["enabled"]


@pytest.mark.slow  # about 60 s on a quiet 2-core machine: pytest -m slow tests/test_bevnext_model.py
def test_tiny_model_overfits_a_synthetic_batch():
    torch.manual_seed(0)
    model = build_model(small(refine={"enabled": True, "num_heads": 4, "num_points": 4, "num_z_anchors": 4}))
    batch = with_points(make_batch(1, 1, HW, num_cams=CAMS, num_boxes=6, seed=3))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(25):
        loss = model.forward_train(batch)["loss"]
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(model.forward_train(batch)["loss"])
    assert last < 0.4 * first, (first, last)
