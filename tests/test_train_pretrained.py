"""Pretrained starts: backbone freezing only for loaded weights, mmdet/mmdet3d checkpoints mapped to our keys,
``init.from_checkpoint`` (weights only, exactly the listed prefixes dropped), clear errors for non-weights files."""

from __future__ import annotations

import builtins
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bev_model import build_model, get_preset
from bev_model.backbone import Backbone
from bev_model.config import BackboneConfig
from shards.contracts.checkpoint import CheckpointError
from train.checkpoint import write_complete_marker
from train.init_from import init_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _bn_modes(bb: Backbone) -> set[bool]:
    return {m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_random_backbone_ignores_frozen_stages_and_norm_eval_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="bev_model"):
        bb = Backbone(BackboneConfig(name="resnet18", frozen_stages=1, norm_eval=True))
    assert all(p.requires_grad for p in bb.parameters())
    bb.train()
    assert _bn_modes(bb) == {True}
    assert "random weights" in caplog.text and "frozen_stages=1" in caplog.text


def test_backbone_weights_that_are_not_weights_are_named(tmp_path):
    class Payload:
        def __reduce__(self):
            return (builtins.open, (str(tmp_path / "PWNED"), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(ValueError, match=r"backbone\.weights.*evil\.pth.*weights_only"):
        Backbone(BackboneConfig(name="resnet18", weights=path))
    assert not (tmp_path / "PWNED").exists()


@pytest.fixture(scope="module")
def tiny_pair():
    cfg = get_preset("tiny")
    cfg.backbone.frozen_stages = 1
    cfg.backbone.norm_eval = True
    torch.manual_seed(1)
    source = build_model(cfg).state_dict()
    torch.manual_seed(2)
    fresh = build_model(cfg)
    return cfg, source, {k: v.clone() for k, v in fresh.state_dict().items()}


def _fresh(cfg):
    torch.manual_seed(2)
    return build_model(cfg)


def test_init_drops_exactly_the_listed_prefixes(tmp_path, tiny_pair):
    cfg, source, init = tiny_pair
    ckpt = tmp_path / "step_00000010"
    ckpt.mkdir()
    torch.save(source, ckpt / "weights_fp32.pt")
    model = _fresh(cfg)
    lines: list[str] = []
    report = init_from_checkpoint(model, ckpt, drop=["head.", "encoder."], log=lines.append)
    now = model.state_dict()
    dropped = [k for k in source if k.startswith(("head.", "encoder."))]
    assert dropped and report["dropped"] == {"head.": sum(k.startswith("head.") for k in source),
                                             "encoder.": sum(k.startswith("encoder.") for k in source)}
    for k in now:
        expected = init[k] if k.startswith(("head.", "encoder.")) else source[k]
        assert torch.equal(now[k], expected), k
    assert any("dropped" in ln and "'head.'" in ln for ln in lines)
    # the loaded backbone is pretrained now: its stem/first stage are frozen
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    with pytest.raises(CheckpointError, match=r"init\.drop.*'heads\.'"):
        init_from_checkpoint(_fresh(cfg), ckpt, drop=["heads."], log=lambda m: None)


def test_init_refuses_keys_the_model_lacks_unless_dropped(tmp_path, tiny_pair):
    cfg, source, _ = tiny_pair
    path = tmp_path / "w.pt"
    torch.save({**source, "depth_net.0.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"depth_net\.0\.weight.*init\.drop"):
        init_from_checkpoint(_fresh(cfg), path, log=lambda m: None)
    init_from_checkpoint(_fresh(cfg), path, drop=["depth_net."], log=lambda m: None)


def test_mmdet3d_bevformer_v2_release_maps_backbone_and_neck(tmp_path, tiny_pair):
    cfg, source, init = tiny_pair
    theirs = {}
    for k, v in source.items():
        if k.startswith("backbone.body."):
            theirs["img_backbone." + k[len("backbone.body."):]] = v
    for i in range(3):
        for p in ("weight", "bias"):
            theirs[f"img_neck.lateral_convs.{i}.conv.{p}"] = source[f"neck.fpn.inner_blocks.{i}.0.{p}"]
            theirs[f"img_neck.fpn_convs.{i}.conv.{p}"] = source[f"neck.fpn.layer_blocks.{i}.0.{p}"]
    for j, name in enumerate(("p6", "p7")):
        for p in ("weight", "bias"):
            theirs[f"img_neck.fpn_convs.{3 + j}.conv.{p}"] = source[f"neck.fpn.extra_blocks.{name}.{p}"]
    theirs["pts_bbox_head.transformer.encoder.layers.0.attentions.0.value_proj.weight"] = torch.zeros(4, 4)
    path = tmp_path / "bevformerv2-r50-t1-base_epoch_48.pth"
    torch.save({"meta": {"epoch": 48}, "state_dict": theirs}, path)
    model = _fresh(cfg)
    report = init_from_checkpoint(model, path, log=lambda m: None)
    now = model.state_dict()
    assert report["unmapped"] == 1 and report["loaded"] == len(theirs) - 1
    for k in now:
        expected = source[k] if k.startswith(("backbone.", "neck.")) else init[k]
        assert torch.equal(now[k], expected), k


def test_backbone_weights_from_a_bevstream_run_of_another_family(tmp_path, tiny_pair):
    """A BEVFormer v2 run's weights file is a valid ``backbone.weights`` for a BEVNeXt (``backbone.body.*``)."""
    _, source, _ = tiny_pair
    path = tmp_path / "weights_fp32.pt"
    torch.save({**source, "backbone.extra.not_a_tensor_of_the_backbone": torch.zeros(1)}, path)
    cfg = get_preset("bevnext_tiny")
    cfg.backbone.weights = str(path)
    loaded = build_model(cfg).backbone.state_dict()
    assert len(loaded) > 100
    for k, v in loaded.items():
        assert torch.equal(v, source[f"backbone.{k}"]), k


def _cli(tmp_path, shards, *extra):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny.yaml", f"data.shards={shards}",
                           f"out_dir={tmp_path / 'run'}", "logging.progress=false", *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_exit_2_for_a_non_weights_init_file_and_a_malicious_resume(tmp_path, synth_shards):
    class Payload:
        def __reduce__(self):
            return (builtins.open, (str(tmp_path / "PWNED"), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"module": Payload()}, evil)
    res = _cli(tmp_path, synth_shards["mini_train"], f"init.from_checkpoint={evil}")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "evil.pt" in res.stderr and "weights_only" in res.stderr and "Traceback" not in res.stderr
    # a checkpoint whose DeepSpeed module states were replaced: refused before any model is built
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    (ckpt / "ds").mkdir(parents=True)
    torch.save({"module": Payload(), "global_steps": 2}, ckpt / "ds" / "mp_rank_00_model_states.pt")
    (ckpt / "trainer_state.json").write_text('{"step": 2, "world_size": 1}')
    (ckpt / "config.yaml").write_text("model: {preset: tiny}\n")
    write_complete_marker(ckpt, 2)
    res = _cli(tmp_path, synth_shards["mini_train"], "--resume", str(ckpt))
    assert res.returncode == 2, res.stderr[-3000:]
    assert "ds/mp_rank_00_model_states.pt" in res.stderr and "refused" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "PWNED").exists()
