"""Evaluation with several processes: ``torchrun -m eval`` (whole scenes per rank, rank 0 scores) and the
training's eval hook under a 2-rank torchrun (the eval child is a job of its own; the other ranks wait for it).

Real components: torchrun, gloo, the tiny model, the ``synth_shards`` val split (2 scenes in 2 shards).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from eval.dist import LAUNCHER_ENV, single_process_env, split_scenes

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = [64, 176]


def _env(**extra: str) -> dict[str, str]:
    env = single_process_env()
    return {**env, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}


def test_scenes_are_never_split_and_ranks_get_about_equal_shares():
    order = [f"s{s}_{i}" for s, n in enumerate((6, 2, 2, 6, 1, 3)) for i in range(n)]
    scene_of = {t: t.split("_")[0] for t in order}
    blocks = split_scenes(order, scene_of, 2)
    assert sum(blocks, []) == order  # contiguous, in order, nothing lost
    assert all(len({scene_of[t] for t in b} & {scene_of[t] for t in other}) == 0
               for b in blocks for other in blocks if other is not b)
    assert [len(b) for b in blocks] == [10, 10]
    assert [len(b) for b in split_scenes(order, scene_of, 3)] == [6, 10, 4]
    one = split_scenes(order[:6], scene_of, 3)  # one scene, three ranks: two ranks idle
    assert sorted(len(b) for b in one) == [0, 0, 6]


def test_a_child_of_a_rank_does_not_see_the_launcher_environment():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "1234", "WORKER": "0", "PATH": "/bin"}
    assert single_process_env(env) == {"PATH": "/bin"}
    assert {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NUM_WORKERS"} <= set(LAUNCHER_ENV)


def _wait_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as td

    from train.eval_hook import run_on_main

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                          timeout=datetime.timedelta(seconds=2))  # the training's group: a short timeout

    def slow_eval() -> dict:
        time.sleep(5)  # longer than the default group's timeout
        return {"returncode": 0, "metrics": {"nd_score": 0.25}}

    res = run_on_main(slow_eval, timeout_s=60, is_main=rank == 0)
    td.barrier()
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    td.destroy_process_group()


def test_ranks_wait_for_an_eval_longer_than_the_process_group_timeout(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_wait_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for r in (0, 1):
        assert json.loads((tmp_path / f"rank{r}.json").read_text())["metrics"] == {"nd_score": 0.25}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny model (t2 temporal fusion: history matters) saved like a checkpoint."""
    from bev_model import build_model, get_preset

    ckpt = tmp_path_factory.mktemp("ckpt") / "step_00000000"
    ckpt.mkdir()
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.encoder.bev_h = cfg.encoder.bev_w = 25
    torch.save(build_model(cfg).state_dict(), ckpt / "weights_fp32.pt")
    (ckpt / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"preset": "tiny", "encoder": {"bev_h": 25, "bev_w": 25}},
         "data": {"shards": "unused", "image_size": IMAGE_SIZE}}))
    return ckpt


def _numbers(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("timing", "eval_time", "shards", "predictions")}


def test_torchrun_eval_splits_scenes_and_scores_like_one_process(synth_shards, tiny_checkpoint, tmp_path):
    val = synth_shards["mini_val"]
    common = ["-m", "eval", "--shards", str(val), "--checkpoint", str(tiny_checkpoint), "--pictures", "2",
              "--curves", "none", "--no-progress", "--num-workers", "1"]
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *common, "--out", str(tmp_path / "two")], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "on 2 ranks" in two.stdout
    from eval.api import read_result
    from eval.gt import load_ground_truth

    r1, r2 = read_result(tmp_path / "one"), read_result(tmp_path / "two")
    gt = load_ground_truth(sorted(val.glob("*.arrow")))
    assert r1.complete and r2.complete and r1.num_samples == r2.num_samples == len(gt.order) == 12
    assert _numbers(r2.summary) == _numbers(r1.summary)
    assert json.loads((tmp_path / "two" / "results.json").read_text()) == \
        json.loads((tmp_path / "one" / "results.json").read_text())
    assert sorted(Path(p).name for p in r2.pictures) == sorted(Path(p).name for p in r1.pictures)
    # both scenes of the split were evaluated, one per rank: history never crossed a rank
    assert len({gt.samples[t].scene_token for t in gt.order}) == 2


@pytest.mark.slow
def test_two_rank_training_evaluates_every_val_sample(synth_shards, tmp_path):
    """The eval child of rank 0 reads all val shards (not rank 0's share) and both ranks finish.

    Slow (a DeepSpeed start on two ranks plus an eval child): ``pytest -m slow tests/test_eval_ranks.py``."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train",
           "--config", "configs/tiny.yaml", f"data.shards={synth_shards['mini_train']}", f"out_dir={out}",
           "schedule.total_steps=1", "schedule.warmup_steps=0", "checkpoint.every_steps=0", "logging.progress=false",
           "logging.tensorboard=false", "data.image_size=[64,176]", "model.backbone.frozen_stages=3",
           "model.encoder.bev_h=25", "model.encoder.bev_w=25", "model.head.num_queries=50",
           "model.head.num_hybrid=20", "eval.enabled=true", f"eval.shards={synth_shards['mini_val']}",
           "eval.args=[--pictures,'0',--curves,none,--no-progress,--num-workers,'1']"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    events = [r for r in map(json.loads, (out / "logs" / "train.jsonl").read_text().splitlines())
              if r.get("event") == "eval"]
    assert len(events) == 1, events
    ev = events[0]
    assert ev["returncode"] == 0 and ev["complete"] is True
    assert ev["num_samples"] == 12  # both val shards, though the training has 2 ranks
    assert os.path.isfile(out / "checkpoints" / "step_00000001" / "eval" / "eval_result.json")
