"""Which checkpoint a run starts from: fresh, ``--resume auto`` or a path; a fresh start never mixes with an old
run; damaged checkpoints are skipped (auto) or named (explicit path); the config and world size must match."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from shards.contracts.checkpoint import CheckpointError
from shards.typed_config import ConfigError
from train.checkpoint import COMPLETE, checkpoint_root, resolve_resume, write_complete_marker
from train.resume import compare_configs, plan_start
from train.safe_load import DamagedCheckpointError, UnsafeCheckpointError

CONFIG = {"model": {"preset": "tiny", "encoder": {"bev_h": 25}}, "data": {"shards": "a", "image_size": [64, 176]},
          "optim": {"lr": 1e-3}, "schedule": {"total_steps": 4}, "seed": 0, "deepspeed": {"zero_stage": 2},
          "logging": {"every_steps": 1}, "out_dir": "runs/x"}


def _checkpoint(out_dir, step: int, complete: bool = True, config: dict | None = None, world_size: int = 2,
                **state):
    """A checkpoint directory with the layout ``train.checkpoint.save_checkpoint`` writes."""
    d = checkpoint_root(out_dir) / f"step_{step:08d}"
    (d / "ds").mkdir(parents=True)
    (d / "loader").mkdir()
    torch.save({"module": {"w": torch.ones(64)}, "global_steps": step}, d / "ds" / "mp_rank_00_model_states.pt")
    for r in range(world_size):
        torch.save({"optimizer_state_dict": {"m": torch.zeros(64)}}, d / "ds" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        torch.save({"epoch": 0, "rank": r}, d / "loader" / f"rank_{r:05d}.pt")
    torch.save({"w": torch.ones(64)}, d / "weights_fp32.pt")
    (d / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": world_size, **state}))
    (d / "config.yaml").write_text(yaml.safe_dump(config or CONFIG))
    if complete:
        write_complete_marker(d, step)
    return d


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_fresh_start_in_an_empty_or_incomplete_out_dir(tmp_path):
    assert resolve_resume(None, tmp_path / "new") is None
    _checkpoint(tmp_path, 5, complete=False)  # a crash mid-save leaves no complete checkpoint
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None


def test_fresh_start_over_an_earlier_run_is_refused(tmp_path):
    _checkpoint(tmp_path, 200)
    newest = _checkpoint(tmp_path, 400)
    with pytest.raises(FileExistsError, match=r"step_00000400.*--resume auto"):
        resolve_resume(None, tmp_path)
    assert resolve_resume("auto", tmp_path) == newest
    assert resolve_resume(str(newest), tmp_path) == newest


def test_resume_from_an_incomplete_checkpoint_is_named(tmp_path):
    partial = _checkpoint(tmp_path, 7, complete=False)
    with pytest.raises(FileNotFoundError, match="step_00000007"):
        resolve_resume(str(partial), tmp_path)


@pytest.mark.parametrize("damage", ["truncate_ds", "delete_optim", "truncate_loader", "bad_trainer_state"])
def test_auto_falls_back_past_a_damaged_newest_checkpoint_with_a_warning(tmp_path, damage):
    older = _checkpoint(tmp_path, 200)
    newest = _checkpoint(tmp_path, 400)
    victim = {"truncate_ds": newest / "ds" / "mp_rank_00_model_states.pt",
              "delete_optim": newest / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt",
              "truncate_loader": newest / "loader" / "rank_00001.pt",
              "bad_trainer_state": newest / "trainer_state.json"}[damage]
    if damage == "delete_optim":
        victim.unlink()
    else:
        _truncate(victim)
    warnings: list[str] = []
    assert resolve_resume("auto", tmp_path, warn=warnings.append) == older
    assert len(warnings) == 1 and "step_00000400" in warnings[0] and victim.name in warnings[0]
    with pytest.raises(DamagedCheckpointError, match=rf"--resume .*step_00000400.*{victim.name}"):
        resolve_resume(str(newest), tmp_path)


def test_auto_with_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    only = _checkpoint(tmp_path, 200)
    _truncate(only / "ds" / "mp_rank_00_model_states.pt")
    with pytest.raises(DamagedCheckpointError, match=r"every checkpoint.*mp_rank_00_model_states\.pt"):
        resolve_resume("auto", tmp_path)


def test_a_damaged_checkpoint_without_a_size_manifest_is_still_detected(tmp_path):
    """Older markers list no files: the weights_only check of every .pt still finds a truncated file."""
    older = _checkpoint(tmp_path, 200)
    newest = _checkpoint(tmp_path, 400)
    (newest / COMPLETE).write_text("ok\n")
    _truncate(newest / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert resolve_resume("auto", tmp_path, warn=lambda m: None) == older


def test_a_malicious_file_stops_auto_instead_of_falling_back(tmp_path):
    import builtins

    class Payload:
        def __reduce__(self):
            return (builtins.open, (str(tmp_path / "PWNED"), "w"))

    _checkpoint(tmp_path, 200)
    newest = _checkpoint(tmp_path, 400)
    torch.save({"module": Payload()}, newest / "ds" / "mp_rank_00_model_states.pt")
    write_complete_marker(newest, 400)  # the attacker rewrote the marker too
    with pytest.raises(UnsafeCheckpointError, match=r"step_00000400/ds/mp_rank_00_model_states\.pt.*refused"):
        resolve_resume("auto", tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_marker_entries_cannot_leave_the_checkpoint(tmp_path):
    ckpt = _checkpoint(tmp_path, 200)
    (ckpt / COMPLETE).write_text(json.dumps({"step": 200, "files": {"../../../etc/passwd": 1}}))
    with pytest.raises(DamagedCheckpointError, match="outside the checkpoint"):
        resolve_resume(str(ckpt), tmp_path)


def test_config_differences_that_shape_the_run_are_refused_with_their_keys():
    new = json.loads(json.dumps(CONFIG))
    new["data"]["image_size"] = [128, 352]
    new["data"]["shards"] = "b"
    new["optim"]["lr"] = 4e-4
    new["logging"]["every_steps"] = 10
    with pytest.raises(ConfigError) as e:
        compare_configs(CONFIG, new, None)
    msg = str(e.value)
    assert "data.image_size: [64, 176] -> [128, 352]" in msg and "data.shards" in msg and "optim.lr" in msg
    assert "logging.every_steps" not in msg and "--allow-config-change" in msg
    with pytest.raises(ConfigError, match=r"data\.image_size") as e:
        compare_configs(CONFIG, new, ["optim", "data.shards"])
    assert "optim.lr" not in str(e.value)
    lines = compare_configs(CONFIG, new, ["*"])
    assert any("data.image_size" in ln and ln.startswith("warning") for ln in lines)
    assert any("logging.every_steps" in ln for ln in lines)


def test_a_longer_schedule_needs_the_flag_naming_it(tmp_path):
    _checkpoint(tmp_path, 200)
    longer = json.loads(json.dumps(CONFIG))
    longer["schedule"]["total_steps"] = 8
    with pytest.raises(ConfigError, match=r"schedule\.total_steps: 4 -> 8"):
        plan_start("auto", tmp_path, longer, world_size=2)
    plan = plan_start("auto", tmp_path, longer, world_size=2, allow_config_change=["schedule.total_steps"])
    assert plan.checkpoint.endswith("step_00000200")
    assert any("schedule.total_steps" in m for m in plan.messages)


def test_another_world_size_needs_a_fresh_data_plan_and_zero_stage_0(tmp_path):
    _checkpoint(tmp_path, 200, world_size=2)
    stage0 = {**CONFIG, "deepspeed": {"zero_stage": 0}}
    (checkpoint_root(tmp_path) / "step_00000200" / "config.yaml").write_text(yaml.safe_dump(stage0))
    with pytest.raises(CheckpointError, match=r"2 rank\(s\), this run has 1.*--fresh-data-plan"):
        plan_start("auto", tmp_path, stage0, world_size=1)
    plan = plan_start("auto", tmp_path, stage0, world_size=1, fresh_data_plan=True)
    assert plan.fresh_data_plan and plan.checkpoint
    other = tmp_path / "zero2"
    _checkpoint(other, 200, world_size=2)
    with pytest.raises(CheckpointError, match=r"ZeRO stage 2.*init\.from_checkpoint"):
        plan_start("auto", other, CONFIG, world_size=1, fresh_data_plan=True)


def test_init_from_checkpoint_and_an_explicit_resume_path_are_refused_together(tmp_path):
    ckpt = _checkpoint(tmp_path, 200)
    with pytest.raises(ConfigError, match=r"init\.from_checkpoint.*--resume"):
        plan_start(str(ckpt), tmp_path, CONFIG, world_size=2, init_from=str(ckpt))
    # --resume auto continues the run itself once it has a checkpoint (init applied at its start)
    plan = plan_start("auto", tmp_path, CONFIG, world_size=2, init_from="elsewhere")
    assert plan.checkpoint and any("ignored" in m for m in plan.messages)


def test_a_backbone_pretrained_by_init_stays_frozen_on_resume(tmp_path):
    """The resumed process builds a random backbone (init is not applied again): the plan carries the flag so
    the same stages are frozen and the optimizer's parameter groups match the checkpoint's."""
    _checkpoint(tmp_path, 200, backbone_pretrained=True)
    assert plan_start("auto", tmp_path, CONFIG, world_size=2).backbone_pretrained
    other = tmp_path / "other"
    _checkpoint(other, 200)
    assert not plan_start("auto", other, CONFIG, world_size=2).backbone_pretrained
