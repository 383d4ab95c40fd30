"""Typed training configuration (``python -m train --config configs/X.yaml [k=v ...]``).

A YAML file holds top-level sections; ``model:`` belongs to ``bev_model`` (``{preset: name,
...overrides}``, typed by ``bev_model.model_config_from_dict`` into its family's config), ``data:`` is a
``pipeline.LoaderConfig``, the rest are defined here. Loading is strict (``shards.typed_config``): an
unknown key, a wrong type, a bad value or a missing local shard path raises ``ConfigError`` naming the
dotted key before any process group or model is built.

One source per fact: what the model needs from the data is derived from the model's config, never
written twice. ``data.offsets`` (the frames of a window) is the model's ``frame_offsets`` (for BEVFormer v2
``model.temporal.offsets``); ``data.load_points`` is the model's ``needs_points``. A ``data`` section that
sets either to something else is refused naming both keys. ``python -m train --print-config`` prints the
resolved config (:func:`train_config_to_dict`), as checkpoints store it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config import LoaderConfig
from shards.typed_config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict

Precision = Literal["fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"]


@dataclass
class OptimConfig:
    """AdamW with parameter groups (BEVFormer v2: lr 4e-4, wd 0.01, backbone lr x 0.5, clip 35).

    ``backbone_prefix``: parameter-name prefix (in the model's ``named_parameters``) of the backbone.
    ``no_decay_norm_bias``: no weight decay on biases, norm weights and other 1-d parameters.
    ``grad_clip``: global grad-norm clipping (0 disables).
    """

    lr: float = 4e-4
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    backbone_lr_mult: float = 0.5
    backbone_prefix: str = "backbone."
    no_decay_norm_bias: bool = True
    grad_clip: float = 35.0

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"config key 'optim.lr': must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"config key 'optim.betas': need two values in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0 or self.backbone_lr_mult < 0 or self.grad_clip < 0:
            raise ConfigError("config keys 'optim.weight_decay', 'optim.backbone_lr_mult', 'optim.grad_clip' must be >= 0")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule over ``total_steps`` optimizer steps.

    Linear warm-up from ``warmup_start_factor * lr`` over ``warmup_steps``, then ``cosine`` (to
    ``min_lr_ratio * lr``), ``step`` (x ``gamma`` at each of ``milestones``) or ``constant``.
    """

    total_steps: int = 1000
    warmup_steps: int = 2000
    warmup_start_factor: float = 1.0 / 3.0
    kind: Literal["cosine", "step", "constant"] = "cosine"
    min_lr_ratio: float = 1e-3
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1

    def validate(self) -> None:
        if self.total_steps < 1:
            raise ConfigError(f"config key 'schedule.total_steps': must be >= 1, got {self.total_steps}")
        if self.warmup_steps < 0:
            raise ConfigError(f"config key 'schedule.warmup_steps': must be >= 0, got {self.warmup_steps}")
        if not 0 < self.warmup_start_factor <= 1:
            raise ConfigError(f"config key 'schedule.warmup_start_factor': must be in (0, 1], got {self.warmup_start_factor}")
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"config key 'schedule.milestones': must be increasing, got {self.milestones}")


@dataclass
class DeepSpeedSection:
    """What the generated DeepSpeed JSON holds (``train.deepspeed_config``).

    ``precision``: ``fp32``; ``bf16``/``fp16`` = DeepSpeed's low-precision weights with fp32 master
    copies in the optimizer; ``bf16-mixed``/``fp16-mixed`` = fp32 weights with ``torch.autocast``
    around the forward (DeepSpeed ``torch_autocast``; geometry stays fp32).
    ``offload_optimizer`` (stage >= 1) / ``offload_params`` (stage 3): ZeRO-Offload to CPU memory.
    ``activation_checkpointing``: force gradient checkpointing of the backbone
    (``model.backbone.grad_checkpointing``; the ``large`` preset turns it on itself).
    ``config_json``: a user DeepSpeed JSON deep-merged over the generated one (it wins).
    ``dist_backend``: ``auto`` = the accelerator's (nccl on CUDA, gloo on CPU).
    """

    zero_stage: int = 2
    precision: Precision = "fp32"
    grad_accum_steps: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    activation_checkpointing: bool = False
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000
    allgather_bucket_size: int = 50_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    communication_data_type: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    config_json: Path | None = None
    dist_backend: Literal["auto", "nccl", "gloo", "ccl"] = "auto"

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"config key 'deepspeed.zero_stage': must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.grad_accum_steps < 1:
            raise ConfigError(f"config key 'deepspeed.grad_accum_steps': must be >= 1, got {self.grad_accum_steps}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("config key 'deepspeed.offload_optimizer': needs deepspeed.zero_stage >= 1")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("config key 'deepspeed.offload_params': needs deepspeed.zero_stage 3")
        if self.config_json is not None and not Path(self.config_json).is_file():
            raise ConfigError(f"config key 'deepspeed.config_json': file not found: {self.config_json}")


@dataclass
class CheckpointConfig:
    """Checkpoints under ``{out_dir}/checkpoints/step_XXXXXXXX`` every ``every_steps`` and at the end.

    ``keep_last``: how many complete checkpoints to keep (0 keeps all).
    """

    every_steps: int = 1000
    keep_last: int = 3
    save_final: bool = True

    def validate(self) -> None:
        if self.every_steps < 0 or self.keep_last < 0:
            raise ConfigError("config keys 'checkpoint.every_steps'/'checkpoint.keep_last' must be >= 0")


@dataclass
class LoggingConfig:
    """Per-step JSONL (``{out_dir}/logs/train.jsonl``), TensorBoard (``{out_dir}/tb``), tqdm on rank 0.

    ``max_nonfinite``: stop after this many non-finite losses in a row (each one is skipped).
    ``log_samples``: every rank appends the sample tokens of each step to
    ``{out_dir}/logs/samples_rank{r}.jsonl`` (data-position audit).
    """

    every_steps: int = 1
    tensorboard: bool = True
    progress: bool = True
    max_nonfinite: int = 5
    log_samples: bool = False

    def validate(self) -> None:
        if self.every_steps < 1 or self.max_nonfinite < 1:
            raise ConfigError("config keys 'logging.every_steps'/'logging.max_nonfinite' must be >= 1")


@dataclass
class EMAConfig:
    """Exponential moving average of the weights (fp32 shadow; ZeRO stage 0-2).

    ``decay`` (with ``warmup``: ``min(decay, (1 + n) / (10 + n))`` after n updates).
    """

    enabled: bool = False
    decay: float = 0.9998
    warmup: bool = True
    every_steps: int = 1

    def validate(self) -> None:
        if not 0 < self.decay < 1:
            raise ConfigError(f"config key 'ema.decay': must be in (0, 1), got {self.decay}")
        if self.every_steps < 1:
            raise ConfigError(f"config key 'ema.every_steps': must be >= 1, got {self.every_steps}")


@dataclass
class EvalSection:
    """Periodic evaluation: ``python -m eval --shards {shards} --checkpoint {ckpt} {args...}`` on rank 0.

    ``every_steps``: 0 evaluates only at the end. ``weights``: which weights file of the checkpoint
    (``weights_fp32.pt`` or ``weights_ema_fp32.pt``).
    """

    enabled: bool = False
    every_steps: int = 0
    shards: str = ""
    weights: Literal["weights_fp32.pt", "weights_ema_fp32.pt"] = "weights_fp32.pt"
    args: list[str] = field(default_factory=list)
    timeout_s: int = 3600

    def validate(self) -> None:
        if self.enabled and not self.shards:
            raise ConfigError("config key 'eval.shards': required when eval.enabled is true")
        if self.enabled and "://" not in self.shards and not Path(self.shards).exists():
            raise ConfigError(f"config key 'eval.shards': path not found: {self.shards}")


@dataclass
class InitSection:
    """Start a new run from another run's weights (weights only: fresh optimizer, schedule, step, data).

    ``from_checkpoint``: a checkpoint directory or weights file (read with ``weights_only=True``).
    ``weights``: which weights file of a checkpoint directory. ``drop``: key prefixes left at their fresh
    initialisation (e.g. ``[head.]``); each must match at least one key; counts are logged. Distinct from
    ``--resume`` (see ``train.init_from``).
    """

    from_checkpoint: Path | None = None
    weights: Literal["weights_fp32.pt", "weights_ema_fp32.pt"] = "weights_fp32.pt"
    drop: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.from_checkpoint is not None and not Path(self.from_checkpoint).exists():
            raise ConfigError(f"config key 'init.from_checkpoint': path not found: {self.from_checkpoint}")
        if self.drop and self.from_checkpoint is None:
            raise ConfigError("config key 'init.drop': needs init.from_checkpoint")
        if any(not p for p in self.drop):
            raise ConfigError("config key 'init.drop': empty prefix")


@dataclass
class TrainConfig:
    """The whole run. ``model``: the detector family's typed config (``bev_model.model_config_from_dict`` of
    the YAML's ``{preset: name, ...overrides}``; ``model_preset`` keeps the name); ``data``: the loader's
    config with ``offsets`` and ``load_points`` derived from the model (:func:`build_train_config`)."""

    model: Any
    data: LoaderConfig
    out_dir: Path = Path("runs/default")
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    init: InitSection = field(default_factory=InitSection)
    model_preset: str = field(default="", init=False)
    """The preset the model section started from (``model.preset``)."""

    def model_config(self) -> Any:
        """The model's typed config (``deepspeed.activation_checkpointing`` already applied)."""
        return self.model

    def validate(self) -> None:
        if self.ema.enabled and self.deepspeed.zero_stage == 3:
            raise ConfigError("config key 'ema.enabled': EMA is supported with deepspeed.zero_stage 0-2")
        if self.eval.enabled and self.eval.weights == "weights_ema_fp32.pt" and not self.ema.enabled:
            raise ConfigError("config key 'eval.weights': weights_ema_fp32.pt needs ema.enabled")


def _check_local_paths(value: Any, key: str) -> None:
    """Every local (scheme-less) shard location named under ``data`` must exist."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_local_paths(v, f"{key}[{i}]")
        return
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value or "://" in value:
        return
    if value.startswith("file:"):
        value = value[len("file:"):]
    # brace patterns (shard-{000000..000009}.tar) name several files: check their directory
    probe = Path(value.split("{", 1)[0]).parent if "{" in value else Path(value)
    if not probe.exists():
        raise ConfigError(f"config key '{key}': path not found: {value}")


SHARD_KEYS = ("shards", "urls", "url", "path", "paths", "root", "manifest", "shard_dir", "shards_dir")
"""``data.*`` keys that name shard locations (checked for existence when local)."""


def derive_data_from_model(raw_data: dict[str, Any], mcfg: Any, model_key: str) -> dict[str, Any]:
    """``data`` with ``offsets`` / ``load_points`` from the model config; refuses a ``data`` value that disagrees.

    ``model_key``: where the model's offsets are written (named in the error)."""
    data = dict(raw_data)
    offsets = [int(o) for o in mcfg.frame_offsets]
    if "offsets" in data and [int(o) for o in (data["offsets"] or [])] != offsets:
        raise ConfigError(f"config key 'data.offsets' ({list(data['offsets'])}) disagrees with '{model_key}' "
                          f"({offsets}); the loader's frames are the model's: remove 'data.offsets'")
    data["offsets"] = offsets
    needs = bool(mcfg.needs_points)
    if data.get("load_points", needs) is not needs:
        raise ConfigError(f"config key 'data.load_points' ({data['load_points']}) disagrees with the model, which "
                          f"{'needs' if needs else 'does not use'} LiDAR points in training "
                          f"({type(mcfg).__name__}.needs_points); remove 'data.load_points'")
    data["load_points"] = needs
    return data


def _model_offsets_key(mcfg: Any) -> str:
    """The dotted key of the model's frame offsets (``model.temporal.offsets`` for BEVFormer v2)."""
    return "model.temporal.offsets" if hasattr(getattr(mcfg, "temporal", None), "offsets") else "model (frame_offsets)"


def check_shards_have_points(data: LoaderConfig) -> None:
    """A model that trains on LiDAR needs shards built with ``--lidar``: refuse local ones whose manifest says not."""
    import json

    shards = data.shards if isinstance(data.shards, list) else [data.shards]
    for spec in shards:
        spec = str(spec)
        if "://" in spec and not spec.startswith("file://"):
            continue  # remote: the loader names a missing lidar.npy member when it meets one
        path = Path(spec[len("file://"):] if spec.startswith("file://") else spec)
        manifest = path / "manifest.json" if path.is_dir() else path if path.suffix == ".json" else None
        if manifest is None or not manifest.is_file():
            continue
        try:
            lidar = json.loads(manifest.read_text()).get("settings", {}).get("lidar", True)
        except (OSError, ValueError, AttributeError):
            continue
        if lidar is False:
            raise ConfigError(f"config key 'data.shards': {spec} was built without LiDAR (its manifest's "
                              "settings.lidar is false: no lidar.npy members), but the model needs points in "
                              "training (needs_points); rebuild the shards with --lidar")


def build_train_config(data: dict[str, Any]) -> TrainConfig:
    """Nested mapping -> ``TrainConfig`` (strict): the model section typed by its family, ``data`` as a
    ``LoaderConfig`` with ``offsets``/``load_points`` derived from the model."""
    from bev_model import model_config_from_dict

    if not isinstance(data, dict):
        raise ConfigError(f"training config must be a mapping, got {data!r}")
    data = dict(data)
    if "data" not in data:
        raise ConfigError("missing required config key 'data'")
    if "model" not in data:
        raise ConfigError("missing required config key 'model'")
    raw_data, raw_model = data.pop("data"), data.pop("model")
    if not isinstance(raw_data, dict):
        raise ConfigError(f"config key 'data': expected a mapping, got {raw_data!r}")
    mcfg = model_config_from_dict(raw_model, prefix="model")  # raises ConfigError naming 'model.<key>'
    loader = from_dict(LoaderConfig, derive_data_from_model(raw_data, mcfg, _model_offsets_key(mcfg)), prefix="data")
    for f in dataclasses.fields(loader):
        if f.name in SHARD_KEYS:
            _check_local_paths(getattr(loader, f.name), f"data.{f.name}")
    if mcfg.needs_points:
        check_shards_have_points(loader)
    cfg = from_dict(TrainConfig, {**data, "model": mcfg, "data": loader})
    cfg.model_preset = str(raw_model["preset"])
    if cfg.deepspeed.activation_checkpointing and hasattr(mcfg, "backbone"):
        mcfg.backbone.grad_checkpointing = True
    return cfg


def _normalise_override(ov: str) -> str:
    """``optim.lr=1e-3`` -> ``optim.lr=0.001``: YAML 1.1 reads ``1e-3`` as a string, users mean a number."""
    if "=" not in ov:
        return ov
    key, raw = ov.split("=", 1)
    try:
        number = float(raw)
    except ValueError:
        return ov
    if isinstance(yaml.safe_load(raw), str) and math.isfinite(number):
        return f"{key}={number!r}"
    return ov


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML (optional) + ``a.b=value`` overrides -> validated ``TrainConfig``."""
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    apply_overrides(data, [_normalise_override(o) for o in overrides or []])
    return build_train_config(data)


def train_config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as a plain mapping (YAML-able) that :func:`build_train_config` reads back: ``model``
    in full (``{preset, ...every field}``), so that eval rebuilds exactly the trained detector even if the
    preset changes later, and ``data`` with its derived ``offsets``/``load_points``."""
    out = to_dict(cfg)
    out.pop("model_preset", None)
    out["model"] = {"preset": cfg.model_preset, **to_dict(cfg.model)}
    return out
