"""The stages of an end-to-end run on the synthetic world, shared by ``scripts/demo.py`` and
the ablations (``benchmarks/ablation_*.py`` through :mod:`train.ablation`; scripts are never imported as
libraries; they call this).

* :func:`make_world`: ``python -m shards synth`` (reused when complete);
* :func:`make_shards` (+ :func:`shard_size_mb`): ``python -m shards build`` + ``verify`` per split;
* :func:`train_command` / :func:`run`: the DeepSpeed training launch (``torchrun -m train``);
* :func:`evaluate` / :func:`constant_baseline`: ``python -m eval`` read back with :func:`eval.api.read_result`;
* :func:`config_steps` / :func:`run_budget`: a config's and an existing run's training budget.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shards.contracts.checkpoint import CONFIG, STEP_PREFIX, checkpoint_root, step_dir_name
from shards.typed_config import from_dict, load_yaml

from .config import ScheduleConfig

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

VERSION = "v1.0-mini"
SPLITS = ("mini_train", "mini_val")
SHARD_MB = 8.0
"""``--max-shard-mb`` of the demo's shards."""

T0 = time.time()


def header(i: int, n: int, text: str) -> None:
    """``[###...] stage i/n: text (t = seconds since import)``."""
    bar = "#" * i + "." * (n - i)
    print(f"\n[{bar}] stage {i}/{n}: {text}   (t = {time.time() - T0:.0f} s)", flush=True)


def run(cmd: list[Any], env: dict[str, str] | None = None, check: bool = True) -> int:
    """Run ``cmd`` from the repository root (echoed); ``check``: exit with a message when it fails."""
    print("  $ " + " ".join(str(c) for c in cmd), flush=True)
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        sys.exit(f"stage failed (exit {proc.returncode}): {' '.join(str(c) for c in cmd)}")
    return proc.returncode


def make_world(world: Path, frames_per_scene: int, image_size: str, seed: int, lidar: bool = False) -> None:
    """``python -m shards synth`` into ``world``, unless a complete world is there (an incomplete one is redone).

    ``lidar``: also synthesise the LiDAR sweeps (``--lidar``); a complete world without them is refused."""
    if (world / VERSION / "sample.json").is_file() and (world / ".complete").is_file():
        if lidar and not (world / "samples" / "LIDAR_TOP").is_dir():
            sys.exit(f"{world} was synthesised without --lidar (no samples/LIDAR_TOP): use another output dir")
        print(f"  reusing {world}")
        return
    shutil.rmtree(world, ignore_errors=True)
    run([PY, "-m", "shards", "synth", "--out", world, "--version", VERSION, "--frames-per-scene", frames_per_scene,
         "--image-size", image_size, "--seed", seed, *(["--lidar"] if lidar else [])])
    (world / ".complete").write_text("ok\n")


def shard_size_mb(world: Path, nproc: int, workers: int = 1) -> float:
    """The demo's shard size (``SHARD_MB``), smaller when the world is so small that ``mini_train`` would give some
    reader no shard (the loader needs one per rank and worker): aim at >= 2 train shards per rank and >= 1 per
    loader worker (``nproc`` ranks x ``workers``).

    v1.0-mini puts 8 of its 10 scenes in ``mini_train``; the shard size follows the source files' bytes.
    """
    total = sum(f.stat().st_size for f in (world / "samples").rglob("*") if f.is_file())
    train_mb = 0.8 * total / 2**20
    return round(min(SHARD_MB, max(0.25, train_mb / max(2 * nproc, nproc * workers))), 2)


def make_shards(world: Path, root: Path, max_shard_mb: float = SHARD_MB, lidar: bool = False) -> dict[str, Path]:
    """Build + verify ``root/{split}`` for both splits; returns split -> shard dir. ``lidar``: with each sample's
    points (``--lidar``; the world must have them).

    The builder resumes an interrupted build and refuses other settings, so rerunning is safe.
    """
    dirs = {}
    for split in SPLITS:
        d = dirs[split] = root / split
        run([PY, "-m", "shards", "build", "--dataroot", world, "--version", VERSION, "--split", split, "--out", d,
             "--clip-frames", "8", "--max-shard-mb", max_shard_mb, "--workers", "2", *(["--lidar"] if lidar else [])])
        run([PY, "-m", "shards", "verify", d])
    return dirs


def train_command(config: str, run_dir: Path, train_shards: Path, steps: int, nproc: int,
                  *overrides: str) -> list:
    """DeepSpeed training on ``nproc`` CPU ranks (each rank sizes its own thread pools, ``train.dist``)."""
    return [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", nproc, "-m", "train",
            "--config", config, f"out_dir={run_dir}", f"data.shards={train_shards}", f"schedule.total_steps={steps}",
            *overrides, "--resume", "auto"]


def final_checkpoint(run_dir: Path, steps: int) -> Path:
    """The trainer's end-of-run checkpoint of a ``steps``-step run in ``run_dir``."""
    return checkpoint_root(run_dir) / step_dir_name(steps)


def config_steps(path: Path) -> int:
    """``schedule.total_steps`` of a training config YAML (only its ``schedule`` section is checked: the whole
    config's checks want the shards to exist, which on a fresh machine they do not yet)."""
    return from_dict(ScheduleConfig, load_yaml(path).get("schedule", {}), "schedule").total_steps


def run_budget(run_dir: Path) -> int | None:
    """``schedule.total_steps`` of the training run already in ``run_dir`` (None: no checkpoint there)."""
    configs = sorted(checkpoint_root(run_dir).glob(f"{STEP_PREFIX}*/{CONFIG}"))
    return config_steps(configs[-1]) if configs else None


def evaluate(out: Path, *args: Any, env: dict[str, str] | None = None, check: bool = True) -> Any:
    """``python -m eval --out OUT ARGS...`` in a fresh process (as a user runs it; every evaluation starts from
    the same process state, so its numbers do not depend on what ran before), read back with
    :func:`eval.api.read_result`. ``check``: exit with the eval's message when it fails; else None on failure."""
    from eval.api import EvalInputError, read_result

    rc = run([PY, "-m", "eval", "--out", out, *args], env=env, check=False)
    try:
        res = read_result(out)
    except EvalInputError as e:
        if check:
            sys.exit(f"evaluation into {out} failed (exit {rc}): {e}")
        return None
    if rc != 0 or not res.ok:
        if check:
            sys.exit(f"evaluation into {out} failed (exit {rc}): {res.message}")
        return None
    return res


def constant_baseline(train_shards: Path, val_shards: str, out: Path) -> Path:
    """The constant-boxes submission (``python -m eval.baselines constant``) at ``out``."""
    run([PY, "-m", "eval.baselines", "constant", "--train-shards", train_shards, "--shards", val_shards, "--out", out])
    return out
