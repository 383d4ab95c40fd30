"""The checkpoint layout: what ``train`` writes, what ``eval`` and tools read.

``{out_dir}/checkpoints/step_XXXXXXXX/``::

    ds/                    DeepSpeed engine state (module, optimizer partitions, LR scheduler)
    loader/rank_XXXXX.pt   each rank's loader state_dict
    trainer_state.json     step, epoch, samples seen, EMA updates, world size
    weights_fp32.pt        consolidated fp32 state_dict of the model (eval / export)
    weights_ema_fp32.pt    EMA weights (when enabled)
    config.yaml            the resolved training config (model section resolved in full)
    complete               written last: JSON {step, time, files: {relative path: size}}; only
                           directories holding it count, and resume checks the listed sizes

Every name of that layout is spelled here once. Reading is safe on untrusted directories: weights
go through ``torch.load(weights_only=True)``, the config through ``yaml.safe_load``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
DS_TAG = "ds"
LOADER_DIR = "loader"
TRAINER_STATE = "trainer_state.json"
WEIGHTS = "weights_fp32.pt"
EMA_WEIGHTS = "weights_ema_fp32.pt"
CONFIG = "config.yaml"
COMPLETE = "complete"


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be used (the message names the path and what is wrong)."""


def checkpoint_root(out_dir: str | Path) -> Path:
    """``out_dir`` of a run -> the folder holding its ``step_*`` checkpoints."""
    return Path(out_dir) / CHECKPOINTS_DIR


def step_dir_name(step: int) -> str:
    """Optimizer step -> checkpoint directory name (``step_00000400``)."""
    return f"{STEP_PREFIX}{step:08d}"


def loader_state_name(rank: int) -> str:
    """Rank -> its loader state file, relative to the checkpoint directory."""
    return f"{LOADER_DIR}/rank_{rank:05d}.pt"


def is_complete(ckpt: str | Path) -> bool:
    """Whether ``ckpt`` holds the ``complete`` marker (written last)."""
    return (Path(ckpt) / COMPLETE).is_file()


def list_complete(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, path)``, oldest first."""
    root = checkpoint_root(out_dir)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(STEP_PREFIX) and is_complete(p):
                try:
                    found.append((int(p.name[len(STEP_PREFIX):]), p))
                except ValueError:
                    continue
    return sorted(found)


def checkpoint_files(checkpoint: str | Path, config: str | Path | None = None,
                     weights_name: str = WEIGHTS) -> tuple[Path, Path]:
    """A checkpoint directory (or a weights file inside one) -> ``(weights file, config file)``.

    ``config`` overrides the checkpoint's own ``config.yaml``. Raises :class:`CheckpointError` naming
    the missing file.
    """
    ckpt = Path(checkpoint)
    if ckpt.is_dir():
        weights = ckpt / weights_name
    else:
        weights, ckpt = ckpt, ckpt.parent
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {checkpoint}: no weights file {weights}")
    cfg_path = Path(config) if config is not None else ckpt / CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"checkpoint {checkpoint}: no config {cfg_path} (pass --config)")
    return weights, cfg_path


def read_run_config(path: str | Path) -> dict[str, Any]:
    """A resolved training config (``config.yaml``: ``model:`` + ``data:`` + ...) as a plain mapping."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"config {path}: cannot be read as YAML ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"config {path}: expected a mapping with a 'model' section")
    return data


def read_weights(path: str | Path) -> dict[str, Any]:
    """A weights file -> its state_dict, unpickled with ``weights_only=True`` (tensors and plain types only).

    A DeepSpeed-style ``{"module": state_dict}`` wrapper is unwrapped. Raises :class:`CheckpointError`
    for a file that is not a weights file (e.g. a pickle of arbitrary objects).
    """
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path}: not a weights file that loads with weights_only=True ({first})") from e
    if isinstance(state, Mapping) and "module" in state and not any(k.startswith("module.") for k in state):
        state = state["module"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path}: expected a state_dict mapping, got {type(state).__name__}")
    return dict(state)
