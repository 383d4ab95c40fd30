"""The README's multi-node launch, run for real: two torchrun agents on this machine act as two nodes
(``--nnodes 2``, c10d rendezvous on 127.0.0.1, one CPU process each) and train into one shared ``out_dir``;
both are killed after a checkpoint and resume with ``--resume auto``.

Slow (two 2-process runs on CPU): ``PYTHONPATH=$PWD .venv/bin/python -m pytest -q -m slow tests/test_train_multinode.py``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_train_run import CKPT_EVERY, ROOT, SMALL, STEPS, _backbone_weights, _env, _kill_tree, _samples


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_command(node: int, port: int, shards: Path, out_dir: Path, *extra: str) -> list[str]:
    import sys

    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
        "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
        "--rdzv_id", "bevstream-multinode-test", "-m", "train", "--config", "configs/tiny.yaml",
        f"data.shards={shards}", f"out_dir={out_dir}", f"schedule.total_steps={STEPS}", "schedule.warmup_steps=2",
        "deepspeed.zero_stage=2", f"checkpoint.every_steps={CKPT_EVERY}", "checkpoint.keep_last=0",
        "logging.log_samples=true", "logging.progress=false", *SMALL, f"model.backbone.weights={_backbone_weights()}",
        *extra,
    ]


def _start_nodes(shards: Path, out_dir: Path, logs: Path, *extra: str) -> list[subprocess.Popen]:
    port = _port()
    procs = []
    for node in (0, 1):
        f = open(logs / f"node{node}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(_node_command(node, port, shards, out_dir, *extra), cwd=ROOT, env=_env(),
                                      stdout=f, stderr=subprocess.STDOUT))
    return procs


def _placement(log: str) -> list[tuple[int, int, int, int]]:
    """``(rank, world, local_rank, node)`` lines the trainer prints at start."""
    return [tuple(map(int, m)) for m in re.findall(r"rank (\d+)/(\d+): local rank (\d+) of node (\d+)", log)]


@pytest.mark.slow
def test_two_nodes_train_into_one_out_dir_are_killed_and_resume(synth_shards, tmp_path) -> None:
    out = tmp_path / "shared_out"
    logs = tmp_path / "logs1"
    logs.mkdir()
    procs = _start_nodes(synth_shards["mini_train"], out, logs)
    marker = out / "checkpoints" / f"step_{CKPT_EVERY:08d}" / "complete"
    deadline = time.monotonic() + 500
    try:
        while not marker.exists():
            for p in procs:
                assert p.poll() is None, [(logs / f"node{i}.log").read_text()[-3000:] for i in (0, 1)]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
    finally:
        for p in procs:
            _kill_tree(p.pid)
            p.wait()
    first = [(logs / f"node{i}.log").read_text() for i in (0, 1)]
    placed = sorted(x for log in first for x in _placement(log))
    # one process per node: global ranks 0 and 1, each local rank 0, on nodes 0 and 1
    assert [(r, w, lr) for r, w, lr, _ in placed] == [(0, 2, 0), (1, 2, 0)], placed
    assert sorted(n for *_, n in placed) == [0, 1]
    ckpt = out / "checkpoints" / f"step_{CKPT_EVERY:08d}"
    assert sorted(p.name for p in (ckpt / "loader").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    ds = sorted(p.name for p in (ckpt / "ds").iterdir())
    assert ds == ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                  "zero_pp_rank_1_mp_rank_00_optim_states.pt"], ds
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2

    logs2 = tmp_path / "logs2"
    logs2.mkdir()
    procs = _start_nodes(synth_shards["mini_train"], out, logs2, "--resume", "auto")
    try:
        for p in procs:
            assert p.wait(timeout=600) == 0, [(logs2 / f"node{i}.log").read_text()[-4000:] for i in (0, 1)]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_tree(p.pid)
    second = "".join((logs2 / f"node{i}.log").read_text() for i in (0, 1))
    summary = json.loads([ln for ln in second.splitlines() if ln.startswith('{"done"')][-1])
    assert summary["step"] == STEPS and summary["world_size"] == 2
    assert summary["resumed_from"].endswith(f"step_{CKPT_EVERY:08d}")
    assert "data plan: restored" in second
    final = out / "checkpoints" / f"step_{STEPS:08d}"
    assert (final / "complete").is_file()
    assert sorted(p.name for p in (final / "loader").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    for rank in (0, 1):
        state = torch.load(final / "loader" / f"rank_{rank:05d}.pt", weights_only=True)
        assert state["rank"] == rank and state["world_size"] == 2
    r0, r1 = _samples(out, 0), _samples(out, 1)
    assert sorted(r0) == sorted(r1) == list(range(1, STEPS + 1))
    assert not {t for v in r0.values() for t in v} & {t for v in r1.values() for t in v}
