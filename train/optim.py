"""AdamW parameter groups and the warm-up + cosine/step learning-rate schedule.

Groups: {backbone, rest} x {decay, no decay}. The backbone's lr is ``lr * backbone_lr_mult``;
biases, norm weights and every other 1-d parameter get no weight decay. Each group carries its
``name`` and ``initial_lr`` so the schedule (a ``LambdaLR`` factor) scales every group alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import OptimConfig, ScheduleConfig

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _norm_param_names(model: nn.Module) -> set[str]:
    names = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, _NORM_TYPES) or "norm" in type(mod).__name__.lower():
            for pname, _ in mod.named_parameters(recurse=False):
                names.add(f"{mname}.{pname}" if mname else pname)
    return names


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Trainable parameters -> AdamW groups ``{"params", "lr", "weight_decay", "name"}`` (empty groups dropped)."""
    norm_names = _norm_param_names(model)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = name.startswith(cfg.backbone_prefix)
        no_decay = cfg.no_decay_norm_bias and (p.ndim <= 1 or name.endswith(".bias") or name in norm_names)
        buckets.setdefault((is_backbone, no_decay), []).append(p)
    groups = []
    for (is_backbone, no_decay), params in sorted(buckets.items()):
        lr = cfg.lr * (cfg.backbone_lr_mult if is_backbone else 1.0)
        groups.append({
            "params": params,
            "lr": lr,
            "initial_lr": lr,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            "name": f"{'backbone' if is_backbone else 'head'}.{'no_decay' if no_decay else 'decay'}",
        })
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_adamw(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """torch AdamW over ``groups`` (fused/foreach kernels chosen by torch for the device)."""
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base lr after ``step`` optimizer steps (``LambdaLR`` convention)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        a = cfg.warmup_start_factor
        return a + (1.0 - a) * step / cfg.warmup_steps
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "step":
        return cfg.gamma ** sum(1 for m in cfg.milestones if step >= m)
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def scheduler_factory(cfg: ScheduleConfig) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """A callable DeepSpeed applies to the optimizer it ends up with (client or DeepSpeed-built)."""

    def factor(step: int) -> float:  # a plain function: LambdaLR leaves it out of its state_dict
        return lr_factor(step, cfg)

    def make(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        for g in opt.param_groups:
            g.setdefault("initial_lr", g["lr"])
        return torch.optim.lr_scheduler.LambdaLR(opt, factor, last_epoch=-1)

    return make
