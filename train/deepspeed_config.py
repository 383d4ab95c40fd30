"""The DeepSpeed JSON, generated from ``TrainConfig`` (users never write it; they may override it).

The optimizer (torch AdamW with parameter groups, or DeepSpeed's CPU Adam under optimizer offload)
and the LR schedule (a ``LambdaLR``) are handed to ``deepspeed.initialize`` by the engine builder;
this module only writes the JSON: micro-batch, accumulation, clipping, precision, ZeRO.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from shards.typed_config import ConfigError

from .config import TrainConfig


def micro_batch_size(cfg: TrainConfig) -> int:
    """Samples per rank per micro-step (``data.batch_size``)."""
    bs = getattr(cfg.data, "batch_size", None)
    if not isinstance(bs, int) or bs < 1:
        raise ConfigError(f"config key 'data.batch_size': expected an integer >= 1, got {bs!r}")
    return bs


def _zero_section(cfg: TrainConfig) -> dict[str, Any]:
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage == 0:
        return zero
    zero.update(
        overlap_comm=ds.overlap_comm,
        contiguous_gradients=ds.contiguous_gradients,
        reduce_bucket_size=ds.reduce_bucket_size,
        allgather_bucket_size=ds.allgather_bucket_size,
    )
    if ds.zero_stage == 3:
        zero.pop("allgather_bucket_size")
        zero.update(
            stage3_prefetch_bucket_size=ds.stage3_prefetch_bucket_size,
            stage3_param_persistence_threshold=ds.stage3_param_persistence_threshold,
            # the fp32 weights file is assembled from the partitions by train.checkpoint
            stage3_gather_16bit_weights_on_model_save=False,
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return zero


def _precision_section(cfg: TrainConfig) -> dict[str, Any]:
    p = cfg.deepspeed.precision
    if p == "bf16":
        return {"bf16": {"enabled": True}}
    if p == "fp16":
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                         "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}}
    if p in ("bf16-mixed", "fp16-mixed"):
        dtype = "bfloat16" if p == "bf16-mixed" else "float16"
        return {"torch_autocast": {"enabled": True, "dtype": dtype}}
    return {}


def build_ds_config(cfg: TrainConfig) -> dict[str, Any]:
    """``TrainConfig`` -> DeepSpeed config dict (world-size independent: no ``train_batch_size``)."""
    ds = cfg.deepspeed
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size(cfg),
        "gradient_accumulation_steps": ds.grad_accum_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_optimization": _zero_section(cfg),
        # torch.optim.AdamW is a tested-enough client optimizer for ZeRO
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    out.update(_precision_section(cfg))
    if ds.communication_data_type != "auto":
        out["communication_data_type"] = ds.communication_data_type
    if ds.offload_optimizer:
        # DeepSpeed's CPU Adam (decoupled weight decay) is built from this block; the per-group
        # lr and weight_decay of our parameter groups override its defaults.
        out["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": cfg.optim.lr, "betas": list(cfg.optim.betas), "eps": cfg.optim.eps,
                       "weight_decay": cfg.optim.weight_decay},
        }
    if ds.config_json is not None:
        out = deep_merge(out, load_ds_json(ds.config_json))
    return out


def load_ds_json(path: str | Path) -> dict[str, Any]:
    """Read a user DeepSpeed JSON (a mapping), naming the file on error."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config key 'deepspeed.config_json': cannot read {p}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config key 'deepspeed.config_json': {p} must hold a JSON object")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def validate_ds_config(ds_config: dict[str, Any]) -> Any:
    """Parse with DeepSpeed's own ``DeepSpeedConfig`` (raises on an invalid config); returns it."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        return DeepSpeedConfig(copy.deepcopy(ds_config))
    except Exception as e:  # DeepSpeed raises assorted types (AssertionError, ValidationError, ...)
        raise ConfigError(f"generated DeepSpeed config is invalid: {e}") from e
