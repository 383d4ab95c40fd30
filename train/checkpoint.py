"""Atomic checkpoints and resume (the layout is ``shards.contracts.checkpoint``).

Everything is written into ``.tmp-step_XXXXXXXX`` and renamed when complete, so a run killed at
any moment leaves either a whole checkpoint or none; ``--resume auto`` takes the newest complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from shards.contracts.checkpoint import (
    COMPLETE,
    CONFIG,
    DS_TAG,
    EMA_WEIGHTS,
    LOADER_DIR,
    STEP_PREFIX,
    TMP_PREFIX,
    TRAINER_STATE,
    WEIGHTS,
    checkpoint_root,
    list_complete,
    loader_state_name,
    step_dir_name,
)

from .dist import barrier

__all__ = ["COMPLETE", "EMA_WEIGHTS", "WEIGHTS", "checkpoint_root", "list_complete", "load_checkpoint",
           "resolve_resume", "save_checkpoint", "step_dir_name"]

def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    """``None`` -> start fresh; ``auto`` -> newest complete checkpoint (or fresh); a path -> checked.

    Starting fresh in an ``out_dir`` that already holds complete checkpoints is refused: the new run's
    checkpoints would sit beside the old run's (and ``eval.curve``, ``--resume auto`` would mix them).
    """
    if resume is None:
        done = list_complete(out_dir)
        if done:
            raise FileExistsError(
                f"out_dir {out_dir} already holds {len(done)} checkpoint(s) of an earlier run (newest: {done[-1][1].name}); "
                "pass --resume auto to continue it, or choose another out_dir"
            )
        return None
    if resume == "auto":
        done = list_complete(out_dir)
        return done[-1][1] if done else None
    p = Path(resume)
    if not (p / COMPLETE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint (no '{COMPLETE}' marker)")
    return p


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@torch.no_grad()
def consolidated_fp32_state_dict(engine: Any, strip_prefix: str = "") -> dict[str, torch.Tensor]:
    """Full fp32 weights of the engine's module (collective: every rank calls; rank 0's result is whole).

    Trainable parameters come from the optimizer's fp32 master copy (ZeRO 1-3, bf16 optimizer) via
    ``deepspeed.utils.safe_get_full_fp32_param``; others (stage 0 fp32, frozen) from the module,
    gathered under ZeRO-3. Buffers are copied.
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    params = dict(module.named_parameters())
    out: dict[str, torch.Tensor] = {}
    n = len(strip_prefix)
    for key, value in module.state_dict(keep_vars=True).items():
        name = key[n:] if strip_prefix and key.startswith(strip_prefix) else key
        p = params.get(key)
        if p is None:
            out[name] = value.detach().cpu().clone()
            continue
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        if full is None and hasattr(p, "ds_id"):
            with deepspeed.zero.GatheredParameters([p]):
                full = p.data.detach().clone()
        if full is None:
            full = p.detach()
        out[name] = full.float().cpu().clone()
    return out


def save_checkpoint(
    engine: Any,
    out_dir: Path,
    step: int,
    *,
    rank: int,
    loader_state: Any,
    trainer_state: dict[str, Any],
    config: dict[str, Any],
    strip_prefix: str = "",
    ema_weights: dict[str, torch.Tensor] | None = None,
    keep_last: int = 0,
) -> Path:
    """Write checkpoint ``step`` atomically (collective). Returns its final directory."""
    root = checkpoint_root(out_dir)
    final = root / step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / LOADER_DIR).mkdir(parents=True)
    barrier()
    engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state={"train_step": step}, save_latest=False)
    torch.save(loader_state, tmp / loader_state_name(rank))
    weights = consolidated_fp32_state_dict(engine, strip_prefix)
    if rank == 0:
        torch.save(weights, tmp / WEIGHTS)
        if ema_weights is not None:
            torch.save(ema_weights, tmp / EMA_WEIGHTS)
        (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
    del weights
    barrier()
    if rank == 0:
        marker = tmp / COMPLETE
        with open(marker, "w") as f:
            json.dump({"step": step, "time": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. the final save right after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        prune(out_dir, keep_last)
    barrier()
    return final


def prune(out_dir: Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` complete checkpoints (0 keeps all) and stale temp dirs."""
    root = checkpoint_root(out_dir)
    for p in root.glob(f"{TMP_PREFIX}{STEP_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep_last > 0:
        for _, p in list_complete(out_dir)[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(engine: Any, ckpt: Path, rank: int) -> dict[str, Any]:
    """Restore the engine from ``ckpt``; returns ``{"trainer_state", "loader_state"}`` for this rank."""
    load_path, _ = engine.load_checkpoint(
        str(ckpt), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {ckpt}")
    trainer_state = json.loads((ckpt / TRAINER_STATE).read_text())
    lpath = ckpt / loader_state_name(rank)
    loader_state = torch.load(lpath, weights_only=True) if lpath.is_file() else None
    return {"trainer_state": trainer_state, "loader_state": loader_state}
