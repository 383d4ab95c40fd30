"""Resume never unpickles code: real DeepSpeed ZeRO 0-3 checkpoints (2 CPU ranks) load through
``weights_only=True`` with the allowlist in ``train.safe_load``, and a malicious pickle dropped into
``ds/`` is refused on every rank before anything of it runs (the error names the file)."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from train.safe_load import (
    ALLOWED_GLOBAL_NAMES,
    DamagedCheckpointError,
    UnsafeCheckpointError,
    check_file,
    safe_torch_load,
)

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``path`` (what an attacker's file would do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def write_malicious(path: Path, marker: Path) -> None:
    torch.save({"module": _Payload(marker), "global_steps": 2}, path)


WORKER = textwrap.dedent('''
    import builtins, json, os, sys
    from pathlib import Path
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch, deepspeed
    from torch import nn
    from shards.contracts.checkpoint import CheckpointError
    from train.checkpoint import load_checkpoint, save_checkpoint
    from train.config import OptimConfig, ScheduleConfig
    from train.optim import build_adamw, param_groups, scheduler_factory

    out, marker = Path(sys.argv[1]), Path(sys.argv[2])
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    rank = torch.distributed.get_rank()

    class Net(nn.Module):
        def __init__(self, bf16):
            super().__init__()
            self.bf16 = bf16
            self.backbone = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
            self.head = nn.Linear(8, 2)
        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                return self.head(self.backbone(x)).float().pow(2).mean()

    def engine(stage, precision, seed):
        torch.manual_seed(seed)
        m = Net(precision == "bf16")
        cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
               "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
               "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10**9}
        if precision == "bf16":
            cfg["bf16"] = {"enabled": True}
        groups = param_groups(m, OptimConfig())
        eng, *_ = deepspeed.initialize(model=m, model_parameters=groups, optimizer=build_adamw(groups, OptimConfig()),
                                       lr_scheduler=scheduler_factory(ScheduleConfig(warmup_steps=1, total_steps=9)),
                                       config=cfg)
        return eng

    def full(eng):
        from train.checkpoint import consolidated_fp32_state_dict
        return consolidated_fp32_state_dict(eng)

    results = {}
    for stage, precision in [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (2, "bf16")]:
        name = f"z{stage}_{precision}"
        eng = engine(stage, precision, 0)
        for _ in range(2):
            loss = eng(torch.randn(2, 4)); eng.backward(loss); eng.step()
        ckpt = save_checkpoint(eng, out / name, 2, rank=rank, loader_state={"epoch": 0, "rank": rank},
                               trainer_state={"step": 2, "world_size": 2}, config={"model": {}})
        saved = full(eng)
        fresh = engine(stage, precision, 1)
        loaded = load_checkpoint(fresh, ckpt, rank)
        again = full(fresh)
        same = all(torch.equal(saved[k], again[k]) for k in saved)
        results[name] = {"same_weights": same, "step": fresh.global_steps,
                         "loader_rank": loaded["loader_state"]["rank"],
                         "files": sorted(p.name for p in (ckpt / "ds").iterdir())}

    # an attacker replaces the module states of the stage-2 checkpoint
    ckpt = out / "z2_fp32" / "checkpoints" / "step_00000002"
    class Payload:
        def __reduce__(self):
            return (builtins.open, (str(marker), "w"))
    if rank == 0:
        torch.save({"module": Payload(), "global_steps": 2}, ckpt / "ds" / "mp_rank_00_model_states.pt")
    torch.distributed.barrier()
    fresh = engine(2, "fp32", 1)
    try:
        load_checkpoint(fresh, ckpt, rank)
        results["malicious"] = "loaded"
    except CheckpointError as e:
        results["malicious"] = f"{type(e).__name__}: {e}"
    results["marker_exists"] = marker.exists()
    print("RESULT" + str(rank) + " " + json.dumps(results), flush=True)
''')


@pytest.fixture(scope="module")
def ds_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("dsckpt")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    marker = tmp / "PWNED"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp / "out"), str(marker)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    res = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            rank, payload = line[len("RESULT"):].split(" ", 1)
            res[int(rank)] = json.loads(payload)
    assert set(res) == {0, 1}
    return {"results": res, "marker": marker, "out": tmp / "out"}


@pytest.mark.parametrize("name", ["z0_fp32", "z1_fp32", "z2_fp32", "z3_fp32", "z2_bf16"])
def test_real_zero_checkpoints_round_trip_through_weights_only(ds_run, name) -> None:
    for rank, res in ds_run["results"].items():
        r = res[name]
        assert r["same_weights"] and r["step"] == 2 and r["loader_rank"] == rank, r
    files = ds_run["results"][0][name]["files"]
    if name != "z0_fp32":  # ZeRO >= 1: per-rank optimizer partitions, which hold DeepSpeed's own types
        assert sum("optim_states" in f for f in files) == 2, files


def test_malicious_pickle_in_ds_is_refused_on_every_rank_and_never_runs(ds_run) -> None:
    for res in ds_run["results"].values():
        assert res["malicious"].startswith("UnsafeCheckpointError"), res["malicious"]
        assert "mp_rank_00_model_states.pt" in res["malicious"] and "refused" in res["malicious"]
        assert res["marker_exists"] is False
    assert not ds_run["marker"].exists()


def test_allowlist_is_exactly_what_real_checkpoints_reference(ds_run) -> None:
    """Every non-default global of the saved ds/*.pt is in the allowlist, and every allowlisted name but the
    fp16 loss scaler (fp16 does not run on CPU) occurs in them: the list holds nothing unused."""
    seen = set()
    for f in ds_run["out"].rglob("ds/*.pt"):
        if f.parent.parent.parent.parent.name == "z2_fp32":
            continue  # tampered above
        seen |= set(torch.serialization.get_unsafe_globals_in_checkpoint(f))
    assert seen <= set(ALLOWED_GLOBAL_NAMES)
    assert set(ALLOWED_GLOBAL_NAMES) - seen == {"deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"}


def test_safe_load_names_the_file_for_unsafe_and_damaged_files(tmp_path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    write_malicious(evil, marker)
    for fn in (safe_torch_load, check_file):
        with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*refused.*io\.open"):
            fn(evil)
    assert not marker.exists()
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(1000)}, good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    for fn in (safe_torch_load, check_file):
        with pytest.raises(DamagedCheckpointError, match=r"truncated\.pt.*cannot be read"):
            fn(bad)
    assert torch.equal(check_file(good) or safe_torch_load(good)["w"], torch.ones(1000))
