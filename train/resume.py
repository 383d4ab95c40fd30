"""What a (re)started run continues from, decided on rank 0 before any model is built.

:func:`plan_start` picks the checkpoint (:func:`train.checkpoint.resolve_resume`: verified, damaged
ones skipped under ``--resume auto``), compares the new config with the checkpoint's resolved
``config.yaml`` and checks that the data plan can be restored. :func:`decide_on_rank0` runs it on
rank 0 and hands the decision (or the error) to every rank, so no rank waits in a collective while
rank 0 has already failed.

Config changes on resume. Keys under ``logging``, ``checkpoint``, ``eval``, ``init`` and ``out_dir``
may change freely (listed in the log). Every other key shapes the run (``data``: shards, image
size, augmentation ...; ``model``; ``seed``; ``optim``; ``schedule``; ``ema``; ``deepspeed``): a
difference stops the run with the list of keys, unless ``--allow-config-change`` names them (a key
or a section prefix, e.g. ``--allow-config-change schedule.total_steps`` for a longer schedule, or
``--allow-config-change`` alone for every key); allowed differences are logged as warnings.
Keys present on one side only (a newer code version added a field) are listed, not refused.

Data plan. By default the loader continues exactly where it stopped, which needs the same world
size, worker count and seed. ``--fresh-data-plan`` restores weights, optimizer, schedule and step but
starts the data of the current epoch anew under the current world size / workers (the samples the
interrupted epoch had already seen may be seen again); the log says which mode ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bev_model.config import upgrade_model_section
from shards.contracts.checkpoint import CONFIG, CheckpointError, read_run_config
from shards.typed_config import ConfigError

from .checkpoint import read_trainer_state, resolve_resume

FREE_SECTIONS = ("logging", "checkpoint", "eval", "init", "out_dir")
"""Top-level config keys whose values may differ from the checkpoint's without a flag."""


@dataclasses.dataclass
class StartPlan:
    """Rank 0's decision, shared with every rank."""

    checkpoint: str | None = None
    fresh_data_plan: bool = False
    backbone_pretrained: bool = False
    """The run's backbone was pretrained (frozen stages / norm_eval in force): restored before the engine is built,
    so the parameter groups match the checkpoint's even when the weights came from ``init.from_checkpoint``."""
    messages: list[str] = dataclasses.field(default_factory=list)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": leaf}`` (lists are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _matches(key: str, prefixes: list[str]) -> bool:
    return any(p in ("*", "") or key == p or key.startswith(p + ".") for p in prefixes)


def compare_configs(old: dict[str, Any], new: dict[str, Any], allow: list[str] | None) -> list[str]:
    """Raise :class:`ConfigError` listing the run-shaping keys that differ (not covered by ``allow``);
    returns log lines for the differences that are allowed."""
    a, b = flatten(old), flatten(new)
    lines, refused = [], []
    for key in sorted(set(a) & set(b)):
        if a[key] == b[key]:
            continue
        change = f"{key}: {a[key]!r} -> {b[key]!r}"
        if _matches(key, list(FREE_SECTIONS)):
            lines.append(f"config change on resume (operational): {change}")
        elif allow is not None and _matches(key, allow):
            lines.append(f"warning: config change on resume (allowed by --allow-config-change): {change}")
        else:
            refused.append(change)
    only = sorted((set(a) ^ set(b)) - {k for k in set(a) ^ set(b) if _matches(k, list(FREE_SECTIONS))})
    if only:
        lines.append(f"note: keys present on one side only (a code change?): {', '.join(only)}")
    if refused:
        raise ConfigError(
            "resume: the config differs from the checkpoint's config.yaml in keys that shape the run:\n  "
            + "\n  ".join(refused)
            + "\nContinue the old run with its config, start a new out_dir (init.from_checkpoint=... to start from "
            "its weights), or pass --allow-config-change KEY[,KEY...] (a key or section, e.g. schedule.total_steps "
            "for a longer schedule; no value allows every key) if the change is intended."
        )
    return lines


def plan_start(resume: str | None, out_dir: Path, config: dict[str, Any], *, world_size: int,
               allow_config_change: list[str] | None = None, fresh_data_plan: bool = False,
               init_from: str | None = None) -> StartPlan:
    """Rank 0: which checkpoint to continue, after checking it, the config and the data plan."""
    plan = StartPlan(fresh_data_plan=fresh_data_plan)
    if init_from and resume not in (None, "auto"):
        raise ConfigError(f"init.from_checkpoint={init_from} and --resume {resume}: give one (init.from_checkpoint "
                          "starts a new run from weights only; --resume continues a run)")
    ckpt = resolve_resume(resume, out_dir, warn=plan.messages.append)
    if ckpt is None:
        if fresh_data_plan:
            plan.messages.append("note: --fresh-data-plan has no effect on a fresh start")
        return plan
    plan.checkpoint = str(ckpt)
    old = read_run_config(ckpt / CONFIG)
    old["model"] = upgrade_model_section(old["model"])  # a checkpoint written before head.hybrid became a mode
    plan.messages += compare_configs(old, config, allow_config_change)
    ts = read_trainer_state(ckpt)
    plan.backbone_pretrained = bool(ts.get("backbone_pretrained", False))
    saved_world = ts.get("world_size")
    stage = (config.get("deepspeed") or {}).get("zero_stage", 0)
    if saved_world is not None and saved_world != world_size and stage >= 1:
        raise CheckpointError(
            f"resume from {ckpt}: written by {saved_world} rank(s), this run has {world_size}; ZeRO stage {stage} "
            "partitions the optimizer state by rank and DeepSpeed cannot re-partition it: resume with "
            f"{saved_world} rank(s), or start a new out_dir with init.from_checkpoint={ckpt} (weights only)"
        )
    if not fresh_data_plan and saved_world is not None and saved_world != world_size:
        raise CheckpointError(
            f"resume from {ckpt}: written by {saved_world} rank(s), this run has {world_size}; the data position "
            "cannot be restored across world sizes: pass --fresh-data-plan to restore weights/optimizer/step and "
            "start the current epoch's data anew (ZeRO stage >= 1 optimizer partitions still need the same world size)"
        )
    if init_from:
        plan.messages.append(f"note: init.from_checkpoint={init_from} ignored: continuing this run from {ckpt}")
    return plan


def decide_on_rank0(fn: Callable[[], StartPlan], is_main: bool) -> StartPlan:
    """Run ``fn`` on rank 0 and broadcast its result, or its error (re-raised on every rank, same type
    for ConfigError/CheckpointError/FileExistsError/FileNotFoundError)."""
    import torch

    box: list[Any] = [None]
    if is_main:
        try:
            box[0] = ("ok", dataclasses.asdict(fn()))
        except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError) as e:
            box[0] = ("err", type(e).__name__, str(e))
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    if box[0][0] == "ok":
        return StartPlan(**box[0][1])
    kind, msg = box[0][1], box[0][2]
    if kind == "ConfigError":
        raise ConfigError(msg)
    if kind == "FileExistsError":
        raise FileExistsError(msg)
    if kind == "FileNotFoundError":
        raise FileNotFoundError(msg)
    raise CheckpointError(msg)
