"""Detector families: a preset name -> a typed config, and a typed config -> a model.

Every family (BEVFormer v2, BEVNeXt, the LiDAR teacher, BEVDistill) defines one :class:`Family` value: its
config dataclass, its named presets and its ``build`` function. ``_families()`` lists them explicitly (no
registration on import): a reader finds what runs by reading this tuple and each family's ``build``.
``train``, ``eval`` and the benchmarks go through :func:`model_config_from_dict` and :func:`build_model`
only, so a new family plugs into ``python -m train`` and ``python -m eval`` by being added to the tuple.
A model is chosen by its config's *type*; the preset name only picks which config to start from.

The contract a family's config meets (:class:`DetectorConfig`) and the one its model meets
(:class:`Detector`) are written out below; docs/DESIGN.md ("Detector families") describes them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from shards.typed_config import ConfigError, from_dict, to_dict


@runtime_checkable
class DetectorConfig(Protocol):
    """What every family's top-level config dataclass provides.

    ``frame_offsets``: the keyframe offsets (0 = current, negative = past) whose frames a batch must carry,
    in the batch's time order; the loader's window is derived from it (``data.offsets`` must agree).
    ``needs_points``: whether training needs ``Batch.points`` (LiDAR) in every batch.
    ``needs_points_in_eval``: whether inference needs them too (a LiDAR detector).
    ``validate()``: cross-field checks raising ``ConfigError`` that names the key at fault.
    """

    @property
    def frame_offsets(self) -> tuple[int, ...]: ...

    @property
    def needs_points(self) -> bool: ...

    @property
    def needs_points_in_eval(self) -> bool: ...

    def validate(self) -> None: ...


@runtime_checkable
class Detector(Protocol):
    """What every family's model provides (an ``nn.Module``; ``batch`` is a ``shards.contracts.batch.Batch``).

    ``forward_train(batch) -> {"loss": scalar, "<group>.<term>": scalar, ...}``.
    ``predict(batch, history=None) -> [{"boxes" [K, 9], "scores" [K], "labels" [K], "attrs" [K]}]`` per
    sample, boxes in the un-augmented ego frame of the current frame (``shards.conventions`` box vector).
    ``new_history()``: the state ``predict`` carries across consecutive frames of a scene (or ``None``).
    """

    def forward_train(self, batch: Any) -> dict[str, Any]: ...

    def predict(self, batch: Any, history: Any = None) -> list[dict[str, Any]]: ...

    def new_history(self) -> Any: ...


@dataclass(frozen=True)
class Family:
    """One detector family.

    ``name``: the family's id (``bevformer_v2``, ``bevnext``, ...). ``config_type``: its top-level config
    dataclass. ``presets``: preset name -> builder of a fresh, complete config. ``build``: config -> model
    (imports the model code lazily, so loading a config never builds torch modules).
    """

    name: str
    config_type: type
    presets: Mapping[str, Callable[[], Any]]
    build: Callable[[Any], Any]


def _families() -> tuple[Family, ...]:
    """Every family, in the order presets are listed (imported here, not at module import, to avoid cycles)."""
    from .bevnext import FAMILY as bevnext
    from .distill.presets import FAMILY as distill
    from .lidar.presets import FAMILY as lidar
    from .presets import FAMILY as bevformer_v2

    return (bevformer_v2, bevnext, lidar, distill)


def _check_unique(families: tuple[Family, ...]) -> None:
    seen: dict[str, str] = {}
    for f in families:
        for p in f.presets:
            if p in seen:
                raise ValueError(f"preset {p!r} of family {f.name!r} already belongs to {seen[p]!r}")
            seen[p] = f.name


def preset_names() -> tuple[str, ...]:
    """Every preset name, family by family."""
    return tuple(p for f in _families() for p in f.presets)


def family_of_preset(name: str) -> Family:
    for f in _families():
        if name in f.presets:
            return f
    raise ConfigError(f"config key 'model.preset': unknown preset {name!r} (known: {', '.join(preset_names())})")


def family_of_config(cfg: Any) -> Family:
    for f in _families():
        if type(cfg) is f.config_type:
            return f
    raise TypeError(f"{type(cfg).__name__} is not the config type of a detector family (bev_model.registry._families)")


def get_preset(name: str) -> Any:
    """Preset name -> a fresh, validated config of its family."""
    cfg = family_of_preset(name).presets[name]()
    cfg.validate()
    return cfg


def _merge(base: dict[str, Any], over: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        key = f"{prefix}.{k}"
        if k not in out:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(out))})")
        if isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _merge(out[k], v, key)
        else:
            out[k] = v
    return out


def model_config_from_dict(data: Mapping[str, Any], prefix: str = "model") -> Any:
    """``{preset: name, ...overrides}`` -> the family's typed config; overrides merge into the preset."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix}': expected a mapping, got {data!r}")
    data = dict(data)
    name = data.pop("preset", None)
    if name is None:
        raise ConfigError(f"missing required config key '{prefix}.preset' (one of {', '.join(preset_names())})")
    family = family_of_preset(name)
    base = to_dict(family.presets[name]())
    cfg = from_dict(family.config_type, _merge(base, data, prefix), prefix=prefix)
    cfg.validate()
    return cfg


def build_model(cfg: Any) -> Any:
    """A family's config -> its randomly initialised model (backbone weights only from a local file)."""
    return family_of_config(cfg).build(cfg)


def families() -> tuple[Family, ...]:
    """Every detector family (checked: a preset name belongs to one family only)."""
    fams = _families()
    _check_unique(fams)
    return fams
