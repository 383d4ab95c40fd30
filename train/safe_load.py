"""Loading checkpoint files without unpickling code: ``torch.load(weights_only=True)`` + a short allowlist.

DeepSpeed's own checkpoint engines read ``ds/*.pt`` with ``torch.load(weights_only=False)``, i.e. a
file dropped into a shared ``out_dir`` would run code on every rank. :func:`secure_engine` replaces
the ``load`` of an engine's checkpoint engine with :func:`safe_torch_load`, so every file DeepSpeed
reads while resuming (module states, ZeRO 1-3 optimizer partitions, LR scheduler) goes through the
restricted unpickler. The allowlist is what DeepSpeed's ZeRO 0-3 checkpoints actually hold besides
tensors and plain containers (found by saving real 2-rank checkpoints, fp32/bf16/bf16-mixed, with and
without optimizer offload): the loss-scaler object, the ZeRO stage enum and the tensor-fragment
address dataclass; fp16 runs store ``DynamicLossScaler`` instead of ``LossScaler``.

A file that references anything else is *refused* (:class:`UnsafeCheckpointError`, never loaded); one
that cannot be read (truncated, not a torch file) is *damaged* (:class:`DamagedCheckpointError`).
Both name the file.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from shards.contracts.checkpoint import CheckpointError


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file whose pickle references code outside the allowlist (refused, nothing ran)."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file that cannot be read (missing, truncated, not a torch file)."""


ALLOWED_GLOBAL_NAMES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""Every non-torch global DeepSpeed's ZeRO 0-3 checkpoints may reference (dotted ``module.name``)."""


def allowed_globals() -> list[Any]:
    """The classes of :data:`ALLOWED_GLOBAL_NAMES` (imported here: DeepSpeed is imported lazily)."""
    import importlib

    out = []
    for dotted in ALLOWED_GLOBAL_NAMES:
        module, _, name = dotted.rpartition(".")
        out.append(getattr(importlib.import_module(module), name))
    return out


def _first_line(e: BaseException) -> str:
    """The informative part of a ``torch.load`` error (the unpickler's reason, without torch's advice)."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip()
        return reason.split(" Please use", 1)[0].splitlines()[0].strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_refusal(e: BaseException) -> bool:
    """Whether ``torch.load`` refused the pickle's content (as opposed to failing to read the file)."""
    return isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e)


def safe_torch_load(path: str | Path, map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with DeepSpeed's types allowlisted.

    Raises :class:`UnsafeCheckpointError` when the file references anything else (nothing of it runs),
    :class:`DamagedCheckpointError` when it cannot be read; both name ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise DamagedCheckpointError(f"checkpoint file {path}: missing")
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        if _is_refusal(e):
            raise UnsafeCheckpointError(
                f"checkpoint file {path} was refused: it is not plain tensors/containers "
                f"(weights_only=True; {_first_line(e)}); it was not loaded. Remove the file or the checkpoint "
                "if it was not written by this trainer"
            ) from None
        raise DamagedCheckpointError(f"checkpoint file {path}: cannot be read ({_first_line(e)})") from None


def check_file(path: str | Path) -> None:
    """Cheap check that ``path`` loads safely: the pickle is read, tensor data is memory-mapped, not read.

    Raises like :func:`safe_torch_load`.
    """
    path = Path(path)
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError:
        is_zip = False
    safe_torch_load(path, map_location="cpu", mmap=is_zip)


def secure_engine(engine: Any) -> Any:
    """Make every file the DeepSpeed ``engine`` reads on ``load_checkpoint`` go through :func:`safe_torch_load`.

    Universal checkpoints (``checkpoint.load_universal``) read files with their own ``torch.load``
    and are refused.
    """
    if getattr(engine, "load_universal_checkpoint", lambda: False)():
        raise CheckpointError("DeepSpeed universal checkpoints are not supported: DeepSpeed unpickles their "
                              "files with weights_only=False (remove checkpoint.load_universal from the JSON)")
    ce = engine.checkpoint_engine

    def load(path: str, map_location: Any = None) -> Any:
        return safe_torch_load(path, map_location=map_location if map_location is not None else "cpu")

    ce.load = load
    ce._bevstream_safe = True
    return engine


def is_secured(engine: Any) -> bool:
    """Whether :func:`secure_engine` was applied to ``engine``'s checkpoint engine."""
    return bool(getattr(engine.checkpoint_engine, "_bevstream_safe", False))


