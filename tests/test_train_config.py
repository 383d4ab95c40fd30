"""Training config, generated DeepSpeed configs, optimizer groups and LR schedule (in-process, no ranks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shards.typed_config import ConfigError
from train.config import OptimConfig, ScheduleConfig, load_train_config
from train.deepspeed_config import build_ds_config, validate_ds_config
from train.loop import NonFiniteGuard, NonFiniteLossError
from train.optim import lr_factor, param_groups

ROOT = Path(__file__).resolve().parents[1]
PRESET_FILES = ("tiny", "r50", "large")


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    d = tmp_path / "shards"
    d.mkdir()
    return d


def _load(name: str, shard_dir: Path, *extra: str):
    return load_train_config(ROOT / "configs" / f"{name}.yaml", [f"data.shards={shard_dir}", *extra])


def test_unknown_config_key_fails_with_its_name(shard_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        _load("tiny", shard_dir, "optim.lrr=0.1")
    with pytest.raises(ConfigError, match=r"'optim\.lr'.*expected a number"):
        _load("tiny", shard_dir, "optim.lr=fast")
    with pytest.raises(ConfigError, match=r"model\.encoder\.num_layerz"):
        _load("tiny", shard_dir, "model.encoder.num_layerz=2")
    with pytest.raises(ConfigError, match=r"deepspeed\.zero_stage"):
        _load("tiny", shard_dir, "deepspeed.zero_stage=4")
    with pytest.raises(ConfigError, match=r"data\.shards.*path not found"):
        load_train_config(ROOT / "configs" / "tiny.yaml", [f"data.shards={shard_dir / 'nope'}"])


def test_cli_stops_at_start_naming_the_bad_key(shard_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/tiny.yaml", f"data.shards={shard_dir}",
         "schedule.total_stepz=5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "schedule.total_stepz" in proc.stderr


@pytest.mark.parametrize("name", PRESET_FILES)
def test_generated_deepspeed_config_is_valid(name: str, shard_dir: Path) -> None:
    cfg = _load(name, shard_dir)
    ds = build_ds_config(cfg)
    parsed = validate_ds_config(ds)  # DeepSpeed's own parser
    assert parsed.zero_optimization_stage == cfg.deepspeed.zero_stage
    assert parsed.gradient_clipping == pytest.approx(cfg.optim.grad_clip)  # the config's value, not a default
    assert parsed.train_micro_batch_size_per_gpu == cfg.data.batch_size
    assert parsed.gradient_accumulation_steps == cfg.deepspeed.grad_accum_steps
    if name == "large":
        assert parsed.zero_optimization_stage == 3 and parsed.bfloat16_config.enabled
        assert cfg.model_config().backbone.grad_checkpointing
    if name == "r50":
        assert parsed.torch_autocast_enabled and not parsed.bfloat16_config.enabled


def test_offload_and_user_json_override(shard_dir: Path, tmp_path: Path) -> None:
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1234}, "steps_per_print": 7}))
    cfg = _load("large", shard_dir, "deepspeed.offload_optimizer=true", "deepspeed.offload_params=true",
                f"deepspeed.config_json={user}")
    ds = build_ds_config(cfg)
    parsed = validate_ds_config(ds)
    assert parsed.zero_config.offload_optimizer.device == "cpu"
    assert parsed.zero_config.offload_param.device == "cpu"
    assert parsed.zero_config.reduce_bucket_size == 1234 and parsed.steps_per_print == 7
    assert ds["optimizer"]["type"] == "AdamW"
    with pytest.raises(ConfigError, match=r"deepspeed\.offload_params"):
        _load("tiny", shard_dir, "deepspeed.offload_params=true")


def test_param_groups_backbone_lr_and_no_decay_on_norms_and_biases() -> None:
    from bev_model import build_model, get_preset

    model = build_model(get_preset("tiny"))
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(lr=4e-4, weight_decay=0.01))}
    assert groups["backbone.decay"]["lr"] == pytest.approx(2e-4)
    assert groups["head.decay"]["lr"] == pytest.approx(4e-4)
    assert groups["backbone.no_decay"]["weight_decay"] == 0.0 and groups["head.no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups.values() if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in groups.values() if g["weight_decay"] > 0 for p in g["params"]}
    assert all(n.endswith(".bias") or model.get_parameter(n).ndim <= 1 or "norm" in n or ".bn" in n
               for n in no_decay)
    assert any("bn" in n for n in no_decay) and all(model.get_parameter(n).ndim > 1 for n in decay)
    backbone = {names[id(p)] for k in ("backbone.decay", "backbone.no_decay") for p in groups[k]["params"]}
    assert backbone and all(n.startswith("backbone.") for n in backbone)
    assert len(no_decay) + len(decay) == sum(p.requires_grad for p in model.parameters())


def test_lr_schedule_warmup_cosine_and_step() -> None:
    cos = ScheduleConfig(total_steps=100, warmup_steps=10, warmup_start_factor=0.25, kind="cosine", min_lr_ratio=0.01)
    assert lr_factor(0, cos) == pytest.approx(0.25)
    assert lr_factor(5, cos) == pytest.approx(0.625)
    assert lr_factor(10, cos) == pytest.approx(1.0)
    assert lr_factor(55, cos) == pytest.approx(0.505)
    assert lr_factor(100, cos) == pytest.approx(0.01)
    step = ScheduleConfig(total_steps=100, warmup_steps=0, kind="step", milestones=[50, 80], gamma=0.1)
    assert [lr_factor(s, step) for s in (0, 49, 50, 80)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_nonfinite_guard_skips_then_stops() -> None:
    g = NonFiniteGuard(limit=3)
    assert g.check(1.0, 1) and not g.check(float("nan"), 2) and not g.check(float("inf"), 3)
    assert g.check(2.0, 4) and g.streak == 0 and g.total == 2
    assert not g.check(float("nan"), 5) and not g.check(float("nan"), 6)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        g.check(float("nan"), 7)


def test_loader_frames_come_from_the_model_and_a_second_value_is_refused(shard_dir: Path) -> None:
    """``data.offsets`` is not a second source: it is the model's ``frame_offsets``, or an error naming both keys."""
    assert _load("tiny", shard_dir).data.offsets == (-1, 0)  # tiny.yaml holds no data.offsets: from the preset
    cfg = _load("tiny", shard_dir, "model.temporal.offsets=[-2,-1,0]")
    assert cfg.data.offsets == (-2, -1, 0) and cfg.data.T == 3
    assert _load("tiny", shard_dir, "data.offsets=[-1,0]").data.offsets == (-1, 0)  # agreeing is allowed
    with pytest.raises(ConfigError, match=r"'data\.offsets'.*'model\.temporal\.offsets'"):
        _load("tiny", shard_dir, "data.offsets=[0]")
    with pytest.raises(ConfigError, match=r"'data\.load_points'"):
        _load("tiny", shard_dir, "data.load_points=true")  # BEVFormer v2 does not train on LiDAR


def test_points_are_loaded_when_the_model_trains_on_them(shard_dir: Path) -> None:
    from types import SimpleNamespace

    from train.config import check_shards_have_points, derive_data_from_model

    lidar_model = SimpleNamespace(frame_offsets=(0,), needs_points=True)
    data = derive_data_from_model({"shards": str(shard_dir)}, lidar_model, "model.x")
    assert data["load_points"] is True and data["offsets"] == [0]
    with pytest.raises(ConfigError, match="load_points"):
        derive_data_from_model({"shards": str(shard_dir), "load_points": False}, lidar_model, "model.x")
    from pipeline.config import LoaderConfig

    (shard_dir / "manifest.json").write_text(json.dumps({"settings": {"lidar": False}, "shards": []}))
    with pytest.raises(ConfigError, match=r"data\.shards.*without LiDAR.*--lidar"):
        check_shards_have_points(LoaderConfig(shards=str(shard_dir)))
    (shard_dir / "manifest.json").write_text(json.dumps({"settings": {"lidar": True}, "shards": []}))
    check_shards_have_points(LoaderConfig(shards=str(shard_dir)))


def test_print_config_is_the_resolved_config_and_reads_back(shard_dir: Path) -> None:
    """``--print-config`` prints every model field (what checkpoints store); loading it gives the same run."""
    import yaml

    from train.config import build_train_config, train_config_to_dict

    proc = subprocess.run(
        [sys.executable, "-m", "train", "--print-config", "--config", "configs/demo.yaml", f"data.shards={shard_dir}",
         "model.encoder.num_layers=2", "optim.lr=1e-3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["model"]["preset"] == "tiny" and printed["model"]["encoder"]["num_layers"] == 2
    assert printed["model"]["head"]["num_queries"] == 150  # a preset value, written out in full
    assert printed["data"]["offsets"] == printed["model"]["temporal"]["offsets"] == [0]
    assert printed["optim"]["lr"] == pytest.approx(1e-3)
    again = build_train_config(printed)
    assert train_config_to_dict(again) == printed
    assert type(again.model).__name__ == "ModelConfig" and type(again.data).__name__ == "LoaderConfig"


def test_hybrid_queries_are_one_switch(shard_dir: Path) -> None:
    """``model.head.hybrid`` (none / centre / anchor) says what runs; contradictions are refused by name."""
    cfg = _load("tiny", shard_dir)
    assert (cfg.model.head.hybrid, cfg.model.use_hybrid) == ("anchor", True)
    assert _load("tiny", shard_dir, "model.head.hybrid=centre").model.head.hybrid_box_init is False
    assert _load("tiny", shard_dir, "model.head.hybrid=false").model.use_hybrid is False  # YAML false/off
    no_pers = _load("tiny", shard_dir, "model.lambda_pers=0.0").model
    assert no_pers.head.hybrid == "none" and not no_pers.use_hybrid  # no proposals without the perspective head
    with pytest.raises(ConfigError, match=r"head\.hybrid.*ambiguous"):
        _load("tiny", shard_dir, "model.head.hybrid=true")
    with pytest.raises(ConfigError, match=r"head\.num_hybrid.*head\.hybrid"):
        _load("tiny", shard_dir, "model.head.num_hybrid=0")
    with pytest.raises(ConfigError, match=r"hybrid_box_init"):
        _load("tiny", shard_dir, "model.head.hybrid_box_init=true")  # the old second switch is gone
