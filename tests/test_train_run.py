"""Two CPU ranks (torchrun, gloo, DeepSpeed ZeRO-2) train the tiny preset on synthetic shards; kill -9 + resume.

Real components throughout: ``pipeline.build_loader`` over the ``synth_shards`` fixture, the tiny
BEVFormer v2 (shrunk by overrides to keep CPU time small), DeepSpeed's CPU accelerator.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
CKPT_EVERY = 2
SMALL = [  # a smaller tiny: 64x176 images, 25x25 BEV, 50+20 queries, ResNet-18 stem..layer3 frozen (loaded weights)
    "data.image_size=[64,176]", "data.num_workers=1", "model.backbone.frozen_stages=3",
    "model.encoder.bev_h=25", "model.encoder.bev_w=25", "model.head.num_queries=50", "model.head.num_hybrid=20",
]


def _backbone_weights() -> Path:
    """A ResNet-18 weights file (timm naming, seeded): freezing applies to loaded weights only."""
    import tempfile

    import timm

    path = Path(tempfile.gettempdir()) / f"bevstream_test_resnet18_seed0_timm{timm.__version__}.pt"
    if not path.is_file():  # one file for every session (same seed, same bytes); written atomically
        torch.manual_seed(0)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp)
        os.replace(tmp, path)
    return path


def _command(shards: Path, out_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "train", "--config", "configs/tiny.yaml",
        f"data.shards={shards}", f"out_dir={out_dir}", f"schedule.total_steps={STEPS}", "schedule.warmup_steps=2",
        "optim.lr=1e-3", "deepspeed.zero_stage=2", "ema.enabled=true", f"checkpoint.every_steps={CKPT_EVERY}", "checkpoint.keep_last=0",
        "logging.log_samples=true", "logging.progress=false", *SMALL, f"model.backbone.weights={_backbone_weights()}",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (torchrun's workers run in their own sessions)."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def _records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "logs" / "train.jsonl").read_text().splitlines()]


def _steps(out_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in _records(out_dir) if "event" not in r}


def _samples(out_dir: Path, rank: int) -> dict[int, list[str]]:
    lines = (out_dir / "logs" / f"samples_rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["tokens"] for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def run_a(synth_shards, tmp_path_factory) -> Path:
    """An uninterrupted run: STEPS steps, checkpoints at every CKPT_EVERY."""
    out = tmp_path_factory.mktemp("train_a")
    proc = subprocess.run(_command(synth_shards["mini_train"], out), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def test_two_cpu_ranks_train_tiny_with_zero2(run_a: Path) -> None:
    steps = _steps(run_a)
    assert sorted(steps) == list(range(1, STEPS + 1))
    loss = [steps[s]["loss"] for s in range(1, STEPS + 1)]
    cls = [steps[s]["loss/bev.cls"] + steps[s]["loss/pers.cls"] for s in range(1, STEPS + 1)]
    # the loss falls: the classification terms steadily, the total (box terms vary per sample) on average
    assert cls[-1] < 0.85 * cls[0], cls
    assert sum(loss[-2:]) / 2 < loss[0], loss
    rec = steps[STEPS]
    for key in ("loss/bev.box", "loss/pers.depth", "lr/backbone.decay", "lr/head.decay", "grad_norm",
                "samples_per_s", "data_wait_s", "compute_s", "data_wait_frac"):
        assert key in rec, key
    assert rec["lr/backbone.decay"] == pytest.approx(0.5 * rec["lr/head.decay"])
    assert 0.0 <= rec["data_wait_frac"] <= 1.0 and rec["samples"] == 2 * STEPS
    assert list((run_a / "tb").glob("events.out.tfevents.*"))

    # both ranks consumed disjoint data (all steps lie in the first epoch: 24 batches per rank)
    r0, r1 = _samples(run_a, 0), _samples(run_a, 1)
    t0 = [t for s in sorted(r0) for t in r0[s]]
    t1 = [t for s in sorted(r1) for t in r1[s]]
    assert len(t0) == len(t1) == STEPS
    assert len(set(t0)) == STEPS and not set(t0) & set(t1)

    # checkpoints: complete, atomic (no temp dirs left), eval weights + config
    ckpt = run_a / "checkpoints" / f"step_{STEPS:08d}"
    assert (ckpt / "complete").is_file() and (run_a / "checkpoints" / f"step_{CKPT_EVERY:08d}" / "complete").is_file()
    assert not list((run_a / "checkpoints").glob(".tmp-*"))
    assert sorted(p.name for p in (ckpt / "loader").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    weights = torch.load(ckpt / "weights_fp32.pt", weights_only=True)
    from bev_model import build_model
    from train.config import build_train_config

    cfg = build_train_config(yaml.safe_load((ckpt / "config.yaml").read_text()))
    assert cfg.model_config().encoder.bev_h == 25 and cfg.schedule.total_steps == STEPS
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    model = build_model(cfg.model_config())
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    assert set(weights) == set(expected)
    assert all(weights[k].shape == expected[k].shape for k in expected)
    assert all(v.dtype == torch.float32 for k, v in weights.items() if expected[k].is_floating_point())
    model.load_state_dict(weights)
    moved = {k for k, v in expected.items() if k.endswith(".weight") and not torch.equal(v, weights[k])}
    assert any(k.startswith("backbone.") for k in moved) and any(k.startswith("head.") for k in moved)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and not set(frozen) & moved
    ema = torch.load(ckpt / "weights_ema_fp32.pt", weights_only=True)  # EMA lags the weights
    assert set(ema) == set(weights)
    assert all(torch.allclose(ema[k], weights[k], rtol=1e-5, atol=1e-7) for k in frozen)
    assert any(not torch.allclose(ema[k], weights[k]) for k in moved)


def test_sigkill_after_checkpoint_resumes_at_step_and_data_position(run_a: Path, synth_shards, tmp_path) -> None:
    out = tmp_path / "train_b"
    cmd = _command(synth_shards["mini_train"], out)
    log = tmp_path / "run_b.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=logf, stderr=subprocess.STDOUT)
    marker = out / "checkpoints" / f"step_{CKPT_EVERY:08d}" / "complete"
    deadline = time.monotonic() + 400
    try:
        while not marker.exists():
            assert proc.poll() is None, f"run exited early: {log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.05)
    finally:
        _kill_tree(proc.pid)  # torchrun and both ranks at once, like a node crash
        proc.wait()
    assert not (out / "checkpoints" / f"step_{STEPS:08d}").exists()

    res = subprocess.run([*cmd, "--resume", "auto"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    summary = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith('{"done"')][-1])
    assert summary["step"] == STEPS and summary["resumed_from"].endswith(f"step_{CKPT_EVERY:08d}")
    resumes = [r for r in _records(out) if r.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] == CKPT_EVERY

    # same steps, same LR, same data position as the uninterrupted run
    a, b = _steps(run_a), _steps(out)
    assert sorted(b) == list(range(1, STEPS + 1))
    for s in range(CKPT_EVERY + 1, STEPS + 1):
        assert b[s]["lr/head.decay"] == pytest.approx(a[s]["lr/head.decay"], rel=1e-9)
        assert b[s]["samples"] == a[s]["samples"]
    for rank in (0, 1):
        assert _samples(out, rank) == _samples(run_a, rank)
    # the run up to the checkpoint is reproducible, so the resumed run continues from the same weights
    wa = torch.load(run_a / "checkpoints" / f"step_{CKPT_EVERY:08d}" / "weights_fp32.pt", weights_only=True)
    wb = torch.load(out / "checkpoints" / f"step_{CKPT_EVERY:08d}" / "weights_fp32.pt", weights_only=True)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)
    assert (out / "checkpoints" / f"step_{STEPS:08d}" / "complete").is_file()


@pytest.mark.slow
def test_eval_hook_scores_a_checkpoint_with_the_eval_package(run_a: Path, synth_shards) -> None:
    from train.config import EvalSection
    from train.eval_hook import run_eval

    cfg = EvalSection(enabled=True, shards=str(synth_shards["mini_val"]),
                      args=["--max-samples", "2", "--pictures", "0", "--curves", "none"])
    ckpt = run_a / "checkpoints" / f"step_{STEPS:08d}"
    res = run_eval(cfg, ckpt, STEPS)
    assert res["returncode"] == 0, res["log"]
    assert (ckpt / "eval" / "metrics_summary.json").is_file()
    assert 0.0 <= res["metrics"]["nd_score"] <= 1.0 and res["metrics"]["num_samples"] == 2


def test_resume_refuses_a_changed_config_and_skips_a_damaged_newest_checkpoint(run_a: Path, synth_shards,
                                                                               tmp_path) -> None:
    import shutil

    out = tmp_path / "train_c"
    shutil.copytree(run_a, out)
    cmd = _command(synth_shards["mini_train"], out)
    # a different image size shapes the run: refused before any model is built, keys listed, exit 2
    res = subprocess.run([*cmd, "data.image_size=[96,256]", "optim.lr=2e-3", "--resume", "auto"], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and re.search(r"exitcode\s*: 2", res.stderr), res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stderr.count("data.image_size: [64, 176] -> [96, 256]") == 1 and "optim.lr" in res.stderr  # rank 0 only
    assert "--allow-config-change" in res.stderr and "train/loop.py" not in res.stderr  # no traceback of ours

    # the newest checkpoint is truncated: --resume auto continues from the previous one and says why
    victim = out / "checkpoints" / f"step_{STEPS:08d}" / "ds" / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[:1000])
    res = subprocess.run([*cmd, "--resume", "auto"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    summary = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith('{"done"')][-1])
    assert summary["resumed_from"].endswith(f"step_{CKPT_EVERY:08d}") and summary["step"] == STEPS
    assert f"skipping damaged checkpoint step_{STEPS:08d}" in res.stderr and "mp_rank_00_model_states.pt" in res.stderr
    assert "data plan: restored" in res.stderr
    assert (out / "checkpoints" / f"step_{STEPS:08d}" / "complete").is_file()  # re-written whole


@pytest.mark.slow
def test_resume_on_another_world_size_with_a_fresh_data_plan(synth_shards, tmp_path) -> None:
    """2 ranks (ZeRO-0: the optimizer state is whole) -> 1 process: refused unless --fresh-data-plan, which restores
    weights/optimizer/step and says so. Slow: ``pytest -m slow tests/test_train_run.py -k fresh_data_plan``."""
    out = tmp_path / "zero0"
    two = _command(synth_shards["mini_train"], out, "deepspeed.zero_stage=0", "ema.enabled=false")
    two[two.index(f"schedule.total_steps={STEPS}")] = f"schedule.total_steps={CKPT_EVERY}"
    res = subprocess.run(two, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    one = [sys.executable, "-m", "train", *two[two.index("--config"):], "--resume", "auto",
           "--allow-config-change", "schedule.total_steps"]
    one[one.index(f"schedule.total_steps={CKPT_EVERY}")] = f"schedule.total_steps={STEPS}"
    res = subprocess.run(one, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "--fresh-data-plan" in res.stderr, res.stderr[-4000:]
    res = subprocess.run([*one, "--fresh-data-plan"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    summary = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith('{"done"')][-1])
    assert summary["step"] == STEPS and summary["world_size"] == 1
    assert summary["resumed_from"].endswith(f"step_{CKPT_EVERY:08d}")
    assert "data plan: fresh (--fresh-data-plan)" in res.stderr and "schedule.total_steps" in res.stderr
    resumes = [r for r in _records(out) if r.get("event") == "resume"]
    assert resumes[-1]["data_plan"] == "fresh"


def test_init_from_checkpoint_starts_a_new_run_from_weights_only(run_a: Path, synth_shards, tmp_path) -> None:
    src = run_a / "checkpoints" / f"step_{STEPS:08d}"
    out = tmp_path / "stage2"
    cmd = [sys.executable, "-m", "train", *_command(synth_shards["mini_train"], out)[_command(
        synth_shards["mini_train"], out).index("--config"):], "schedule.total_steps=1", "ema.enabled=false",
        f"init.from_checkpoint={src}", "init.drop=[head.]"]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    source = torch.load(src / "weights_fp32.pt", weights_only=True)
    n_head = sum(k.startswith("head.") for k in source)
    assert f"init: dropped {n_head} tensor(s) under 'head.'" in res.stderr
    summary = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith('{"done"')][-1])
    assert summary["resumed_from"] is None and summary["step"] == 1  # fresh step counter and schedule
    after = torch.load(out / "checkpoints" / "step_00000001" / "weights_fp32.pt", weights_only=True)
    # the frozen stem (stages 1-3) carries the source's weights unchanged; the head was re-initialised
    assert torch.equal(after["backbone.body.conv1.weight"], source["backbone.body.conv1.weight"])
    assert torch.equal(after["backbone.body.layer3.0.conv1.weight"], source["backbone.body.layer3.0.conv1.weight"])
    head = [k for k in source if k.startswith("head.") and k.endswith(".weight")]
    assert all(not torch.allclose(after[k], source[k]) for k in head[:5])
