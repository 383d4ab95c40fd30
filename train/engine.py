"""Model + optimizer + schedule -> a DeepSpeed engine.

The detector is wrapped in :class:`TrainModule` whose ``forward(batch)`` returns
``model.forward_train(batch)`` (a dict whose ``"loss"`` is the total), so DeepSpeed's forward,
hooks (ZeRO-3 parameter fetch) and autocast wrap the whole training forward. Weights saved for
eval strip the wrapper's ``model.`` prefix.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .deepspeed_config import build_ds_config
from .optim import build_adamw, param_groups, scheduler_factory

PREFIX = "model."


class TrainModule(nn.Module):
    """``forward(batch) -> dict[str, Tensor]`` (``"loss"`` + named scalar terms) of the wrapped detector.

    ``autocast``: ``(device_type, dtype)`` to run the forward under ``torch.autocast`` -- used with
    DeepSpeed's 16-bit weights (precision ``bf16``/``fp16``) so fp32 batch tensors meet 16-bit layers.
    """

    def __init__(self, model: nn.Module, autocast: tuple[str, torch.dtype] | None = None) -> None:
        super().__init__()
        self.model = model
        self.autocast = autocast

    def forward(self, batch: Any) -> dict[str, Any]:
        if self.autocast is None:
            return self.model.forward_train(batch)
        with torch.autocast(self.autocast[0], dtype=self.autocast[1]):
            return self.model.forward_train(batch)


def build_engine(cfg: TrainConfig, model: nn.Module, ds_config: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Returns ``(engine, lr_scheduler)``; the optimizer is torch AdamW with our parameter groups, or
    DeepSpeed's CPU Adam (same groups) when the optimizer is offloaded."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    pure16 = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.deepspeed.precision)
    wrapper = TrainModule(model, (get_accelerator().device_name(), pure16) if pure16 is not None else None)
    groups = param_groups(model, cfg.optim)
    ds_config = ds_config if ds_config is not None else build_ds_config(cfg)
    if cfg.deepspeed.zero_stage == 3:
        # parameters owned directly by the detector (not by a submodule) are used inside
        # forward_train without the detector's own forward hook: let ZeRO-3 fetch them
        for p in model.parameters(recurse=False):
            deepspeed.zero.register_external_parameter(wrapper, p)
    if "optimizer" in ds_config:
        engine, _, _, sched = deepspeed.initialize(
            model=wrapper, model_parameters=groups, lr_scheduler=scheduler_factory(cfg.schedule), config=ds_config
        )
    else:
        engine, _, _, sched = deepspeed.initialize(
            model=wrapper, optimizer=build_adamw(groups, cfg.optim),
            lr_scheduler=scheduler_factory(cfg.schedule), config=ds_config,
        )
    return engine, sched


def group_names(engine: Any) -> list[str]:
    """Names of the optimizer's parameter groups (``backbone.decay``, ``head.no_decay``, ...)."""
    opt = getattr(engine, "basic_optimizer", None) or engine.optimizer
    return [g.get("name", f"group{i}") for i, g in enumerate(opt.param_groups)]
