"""Two-step workflow on synthetic LiDAR shards, real DeepSpeed on CPU ranks (gloo): train the LiDAR teacher
(``configs/lidar_tiny.yaml``, 1 rank), then distil into the camera student (``configs/distill_tiny.yaml``,
2 ranks, ZeRO-2); the distillation checkpoint holds no teacher weights and its student weights load into a plain
student. Both runs shrunk by overrides to keep CPU time small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shards.contracts.checkpoint import list_complete, read_run_config, read_weights

ROOT = Path(__file__).resolve().parents[1]
BEV = ["model.encoder.bev_h=10", "model.encoder.bev_w=10"]
TEACHER = ["model.grid.bev_h=10", "model.grid.bev_w=10", "model.pillar.stride=1", "model.pillar.channels=8",
           "model.backbone.layer_channels=[16]", "model.backbone.layer_nums=[1]", "model.backbone.layer_strides=[1]",
           "model.backbone.fpn_channels=16", "model.embed_dims=32", "model.head.num_queries=20",
           "model.head.num_layers=2", "model.head.ffn_dims=64", "model.heatmap.shared_channels=16"]
STUDENT = ["model.student.backbone.frozen_stages=3", "model.student.encoder.bev_h=10", "model.student.encoder.bev_w=10",
           "model.student.head.num_queries=20", "model.student.head.num_hybrid=10"]
COMMON = ["data.num_workers=1", "data.image_size=[64,176]", "schedule.total_steps=2", "schedule.warmup_steps=1",
          "checkpoint.every_steps=0", "logging.progress=false", "logging.tensorboard=false", "deepspeed.zero_stage=2"]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train(config: str, nproc: int, *over: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "train", "--config", config, *COMMON, *over]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def lidar_train_shards(synth_dataroot, tmp_path_factory) -> Path:
    from shards.build import build_shards

    root, version = synth_dataroot
    out = tmp_path_factory.mktemp("shards_lidar_train") / "mini_train"
    build_shards(root, version, "mini_train", out, clip_frames=3, max_shard_mb=0.4, lidar=True, progress=False)
    return out


@pytest.mark.slow
def test_teacher_then_two_rank_distillation_exports_a_plain_student(lidar_train_shards, tmp_path):
    t_out, s_out = tmp_path / "teacher", tmp_path / "student"
    _train("configs/lidar_tiny.yaml", 1, f"data.shards={lidar_train_shards}", f"out_dir={t_out}", *TEACHER)
    (_, t_ckpt), = list_complete(t_out)
    t_state = read_weights(t_ckpt / "weights_fp32.pt")
    assert any(k.startswith("pillars.") for k in t_state)

    _train("configs/distill_tiny.yaml", 2, f"data.shards={lidar_train_shards}", f"out_dir={s_out}",
           f"model.teacher.checkpoint={t_ckpt}", *STUDENT)
    (_, ckpt), = list_complete(s_out)
    state = read_weights(ckpt / "weights_fp32.pt")
    assert not any(k.startswith("teacher") or "_teacher" in k or k.startswith("pillars.") for k in state)
    run_cfg = read_run_config(ckpt / "config.yaml")
    assert run_cfg["model"]["teacher"]["model"]["embed_dims"] == 32  # read from the teacher run's config.yaml

    from bev_model import build_model, model_config_from_dict
    from bev_model.distill.model import student_state_dict

    plain = build_model(model_config_from_dict(run_cfg["model"]["student"], prefix="model.student"))
    plain.load_state_dict(student_state_dict(state), strict=True)
    assert all(torch.isfinite(v).all() for v in plain.state_dict().values() if v.is_floating_point())
    # and the distillation run's own config rebuilds the model for eval without the teacher's files
    evaluated = build_model(model_config_from_dict(run_cfg["model"]))
    evaluated.load_state_dict(state, strict=True)
    assert not evaluated._teacher
