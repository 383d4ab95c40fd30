"""Atomic checkpoints and resume (the layout is ``shards.contracts.checkpoint``).

Everything is written into ``.tmp-step_XXXXXXXX`` and renamed when complete, so a run killed at
any moment leaves either a whole checkpoint or none. The ``complete`` marker lists every file of the
checkpoint with its size; :func:`verify_checkpoint` checks them (and that every ``.pt`` file loads
with ``weights_only=True``) before anything is loaded. ``--resume auto`` takes the newest checkpoint
that verifies, skipping damaged ones with a warning that names them; a file whose pickle references
code is never loaded and stops the run (it is tampering, not damage). Every file is read through
:mod:`train.safe_load`, DeepSpeed's included.
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
from .safe_load import (
    DamagedCheckpointError,
    UnsafeCheckpointError,
    check_file,
    safe_torch_load,
    secure_engine,
)

__all__ = ["COMPLETE", "EMA_WEIGHTS", "WEIGHTS", "checkpoint_root", "list_complete", "load_checkpoint",
           "resolve_resume", "save_checkpoint", "step_dir_name", "verify_checkpoint"]


def _marker(ckpt: Path) -> dict[str, Any]:
    """The ``complete`` marker's JSON (``{"step", "time", "files": {relpath: size}}``; older ones lack files)."""
    try:
        data = json.loads((ckpt / COMPLETE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """``trainer_state.json`` (plain JSON) with an integer ``step``; :class:`DamagedCheckpointError` otherwise."""
    path = ckpt / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedCheckpointError(f"checkpoint file {path}: cannot be read ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpointError(f"checkpoint file {path}: expected a JSON object with an integer 'step'")
    return state


def verify_checkpoint(ckpt: Path) -> None:
    """Check a complete checkpoint before loading it (rank 0; cheap: tensor data is not read).

    Every file listed in the marker exists with its recorded size; ``trainer_state.json`` parses;
    ``ds/`` holds files; every ``.pt`` file's pickle loads with ``weights_only=True`` (tensor storage
    memory-mapped). Raises :class:`DamagedCheckpointError` or :class:`UnsafeCheckpointError` naming the file.
    """
    ckpt = Path(ckpt)
    if not (ckpt / COMPLETE).is_file():
        raise DamagedCheckpointError(f"checkpoint {ckpt}: not a complete checkpoint (no '{COMPLETE}' marker)")
    files = _marker(ckpt).get("files")
    if isinstance(files, dict):
        for rel, size in sorted(files.items()):
            f = _inside(ckpt, rel)
            if not f.is_file():
                raise DamagedCheckpointError(f"checkpoint file {f}: missing")
            if f.stat().st_size != size:
                raise DamagedCheckpointError(f"checkpoint file {f}: {f.stat().st_size} bytes, {size} when written "
                                             "(truncated or replaced)")
    read_trainer_state(ckpt)
    ds = ckpt / DS_TAG
    pts = sorted(ds.glob("*.pt")) if ds.is_dir() else []
    if not pts:
        raise DamagedCheckpointError(f"checkpoint {ckpt}: no DeepSpeed state files in {ds}")
    for f in [*pts, *sorted((ckpt / LOADER_DIR).glob("*.pt")), ckpt / WEIGHTS, ckpt / EMA_WEIGHTS]:
        if f.name in (WEIGHTS, EMA_WEIGHTS) and not f.exists():
            continue
        check_file(f)


def _inside(ckpt: Path, rel: str) -> Path:
    """``ckpt / rel`` for a marker entry; an entry that leaves the checkpoint directory is refused."""
    p = (ckpt / rel).resolve()
    if not str(rel) or Path(rel).is_absolute() or not p.is_relative_to(ckpt.resolve()):
        raise DamagedCheckpointError(f"checkpoint {ckpt}: marker names a path outside the checkpoint: {rel!r}")
    return ckpt / rel


def resolve_resume(resume: str | None, out_dir: Path, warn: Any = None) -> Path | None:
    """``None`` -> start fresh; ``auto`` -> newest checkpoint that verifies (or fresh); a path -> verified.

    Starting fresh in an ``out_dir`` that already holds complete checkpoints is refused: the new run's
    checkpoints would sit beside the old run's (and ``eval.curve``, ``--resume auto`` would mix them).
    ``auto`` skips a damaged checkpoint (missing/truncated file) with ``warn(message)`` naming it and takes
    the previous one; when every checkpoint is damaged it raises (never a silent fresh start). A file that
    is refused as unsafe raises :class:`UnsafeCheckpointError` whatever the mode. An explicit path must
    verify.
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
        damaged = []
        for _, p in reversed(list_complete(out_dir)):
            try:
                verify_checkpoint(p)
            except UnsafeCheckpointError:
                raise
            except DamagedCheckpointError as e:
                damaged.append(str(e))
                if warn is not None:
                    warn(f"warning: skipping damaged checkpoint {p.name}: {e}")
                continue
            return p
        if damaged:
            raise DamagedCheckpointError(f"--resume auto: every checkpoint in {checkpoint_root(out_dir)} is damaged: "
                                         + "; ".join(damaged))
        return None
    p = Path(resume)
    if not (p / COMPLETE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint (no '{COMPLETE}' marker)")
    try:
        verify_checkpoint(p)
    except DamagedCheckpointError as e:
        raise DamagedCheckpointError(f"--resume {resume}: damaged checkpoint: {e}") from None
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
        write_complete_marker(tmp, step)
        if final.exists():  # re-saving the same step (e.g. the final save right after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        prune(out_dir, keep_last)
    barrier()
    return final


def write_complete_marker(ckpt: Path, step: int) -> None:
    """Write ``complete`` (last): the step and every file of ``ckpt`` with its size, fsynced."""
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
             if p.is_file() and p.name != COMPLETE}
    with open(ckpt / COMPLETE, "w") as f:
        json.dump({"step": step, "time": time.time(), "files": files}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(ckpt)


def prune(out_dir: Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` complete checkpoints (0 keeps all) and stale temp dirs."""
    root = checkpoint_root(out_dir)
    for p in root.glob(f"{TMP_PREFIX}{STEP_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep_last > 0:
        for _, p in list_complete(out_dir)[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(engine: Any, ckpt: Path, rank: int, *, load_loader: bool = True) -> dict[str, Any]:
    """Restore the engine from ``ckpt``; returns ``{"trainer_state", "loader_state"}`` for this rank.

    Every file goes through ``weights_only=True`` (:func:`train.safe_load.secure_engine` for DeepSpeed's).
    ``load_loader=False`` (a fresh data plan) leaves the loader state out (``None``).
    """
    secure_engine(engine)
    load_path, _ = engine.load_checkpoint(
        str(ckpt), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise DamagedCheckpointError(f"checkpoint {ckpt}: DeepSpeed found no state to load in {ckpt / DS_TAG}")
    trainer_state = read_trainer_state(ckpt)
    lpath = ckpt / loader_state_name(rank)
    loader_state = safe_torch_load(lpath) if load_loader and lpath.is_file() else None
    return {"trainer_state": trainer_state, "loader_state": loader_state}
