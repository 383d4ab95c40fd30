"""shards.typed_config: strict dataclass configs whose errors name the key at fault."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from shards.typed_config import ConfigError, from_dict, load_config, to_dict


@dataclass
class Inner:
    size: tuple[int, int] = (1, 2)
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    lr: float = 1e-3
    steps: int = 10
    flag: bool = False
    path: Path | None = None
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def test_fixed_length_tuple_keeps_values_in_order():
    cfg = from_dict(Outer, {"name": "x", "inner": {"size": [3, 4]}})
    assert cfg.inner.size == (3, 4)


def test_ints_widen_to_float_and_paths_convert():
    cfg = from_dict(Outer, {"name": "x", "lr": 1, "path": "a/b"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.path == Path("a/b")


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"name": "x", "lerning_rate": 1}, "unknown config key 'lerning_rate'"),
        ({"name": "x", "inner": {"sise": [1, 2]}}, "unknown config key 'inner.sise'"),
        ({"name": "x", "steps": 1.5}, "config key 'steps'"),
        ({"name": "x", "flag": "yes"}, "config key 'flag'"),
        ({"name": "x", "inner": {"mode": "c"}}, "config key 'inner.mode'"),
        ({"name": "x", "inner": {"size": [1, 2, 3]}}, "config key 'inner.size'"),
        ({"name": "x", "tags": [1]}, "config key 'tags[0]'"),
        ({}, "missing required config key 'name'"),
    ],
)
def test_bad_values_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Outer, data)


@dataclass
class Switch:
    crf: Literal["off", "faithful", "active"] = "faithful"
    power: Literal["on", "off"] = "on"


def test_a_bare_on_or_off_that_yaml_read_as_a_bool_is_the_literal_choice_spelled_so():
    assert from_dict(Switch, {"crf": False, "power": True}) == Switch(crf="off", power="on")
    with pytest.raises(ConfigError, match="config key 'crf': True"):  # no choice is spelled on/yes/true
        from_dict(Switch, {"crf": True})


def test_yaml_file_with_overrides_round_trips(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  size: [5, 6]\n")
    cfg = load_config(Outer, p, overrides=["steps=7", "inner.mode=b", "tags=[x, y]"])
    assert (cfg.steps, cfg.inner.mode, cfg.inner.size, cfg.tags) == (7, "b", (5, 6), ["x", "y"])
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(Outer, tmp_path / "nope.yaml")


@dataclass
class WithAny:
    extra: dict = field(default_factory=dict)
    anything: object = None
    values: list[float] = field(default_factory=list)


@pytest.mark.parametrize("text, key", [
    ("name: x\nlr: .nan\n", "lr"),
    ("name: x\nlr: .inf\n", "lr"),
    ("name: x\nlr: -.inf\n", "lr"),
])
def test_nan_and_inf_from_yaml_are_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"'{key}'.*not a finite number"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match=r"'lr'.*not a finite number"):
        load_config(Outer, None, overrides=["name=x", "lr=.nan"])


def test_nan_is_refused_inside_lists_and_untyped_sections():
    with pytest.raises(ConfigError, match=r"'values\[1\]'"):
        from_dict(WithAny, {"values": [1.0, float("nan")]})
    with pytest.raises(ConfigError, match=r"'extra\.a\.b'"):
        from_dict(WithAny, {"extra": {"a": {"b": float("inf")}}})
    with pytest.raises(ConfigError, match=r"'outer\.anything\[0\]'"):
        from_dict(WithAny, {"anything": [float("nan")]}, prefix="outer")
    assert from_dict(WithAny, {"values": [1.0, 1e30]}).values == [1.0, 1e30]


def test_train_config_nan_grad_clip_is_refused(tmp_path):
    from train.config import load_train_config

    shards = tmp_path / "shards"
    shards.mkdir()
    with pytest.raises(ConfigError, match=r"'optim\.grad_clip'.*not a finite number"):
        load_train_config("configs/tiny.yaml", [f"data.shards={shards}", "optim.grad_clip=.nan"])
    with pytest.raises(ConfigError, match=r"'model\.head\..*'.*not a finite number"):
        load_train_config("configs/tiny.yaml", [f"data.shards={shards}", "model.head.dropout=.inf"])
