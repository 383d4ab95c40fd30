"""benchmarks/ablation_perspective.py: its plan (variants -> real training configs) and its statistics; the
``train.workflow`` stages it shares with scripts/demo.py."""

from __future__ import annotations

import json
import math

import pytest

from tests.scripts import ROOT, script_module
from train import ablation, workflow


@pytest.fixture(scope="module")
def abl():
    yield from script_module("benchmarks/ablation_perspective.py")


def test_variants_resolve_to_the_intended_models(abl, tmp_path):
    """Each variant's overrides, applied to the demo config by the trainer's own loader, give the ablated model."""
    from train.config import load_train_config

    args = abl.parse_args(["--out", str(tmp_path), "--seeds", "3", "--steps", "5"])
    plan = abl.build_plan(args, tmp_path)
    assert [p.variant for p in plan] == ["bev_only", "pers_bev", "pers_bev_1stage", "pers_bev_refonly"]
    (tmp_path / "train").mkdir()
    flags = {}
    for p in plan:
        assert p.dir == tmp_path / "ablation" / f"{p.variant}_seed3"
        cmd = [str(c) for c in p.train_command(tmp_path / "train", args.steps, args.nproc)]
        overrides = cmd[cmd.index("--config") + 2:cmd.index("--resume")]
        cfg = load_train_config(ROOT / args.config, overrides)
        assert cfg.seed == 3 and cfg.schedule.total_steps == 5 and cfg.out_dir == p.dir
        mcfg = cfg.model_config()
        flags[p.variant] = (mcfg.use_perspective, mcfg.use_hybrid, mcfg.head.hybrid)
    assert flags == {"bev_only": (False, False, "none"), "pers_bev": (True, True, "anchor"),
                     "pers_bev_1stage": (True, False, "none"), "pers_bev_refonly": (True, True, "centre")}


def test_plan_is_seed_major_and_extra_overrides_reach_every_run(abl, tmp_path):
    args = abl.parse_args(["--out", str(tmp_path), "--seeds", "0", "1", "--variants", "pers_bev", "bev_only",
                           "--set", "optim.lr=1e-3"])
    names = [p.name for p in abl.build_plan(args, tmp_path)]
    assert names == ["pers_bev_seed0", "bev_only_seed0", "pers_bev_seed1", "bev_only_seed1"]
    assert all(p.overrides[-1] == "optim.lr=1e-3" for p in abl.build_plan(args, tmp_path))
    with pytest.raises(SystemExit):
        abl.parse_args(["--seeds", "0", "0"])
    with pytest.raises(SystemExit):
        abl.parse_args(["--variants", "nope"])


def test_summary_pairs_runs_by_seed(abl, tmp_path):
    """Means/stds per variant and same-seed differences, from metrics_summary.json files as eval writes them."""
    nds = {("pers_bev", 0): 0.30, ("pers_bev", 1): 0.20, ("bev_only", 0): 0.25, ("bev_only", 1): 0.19,
           ("bev_only", 2): 0.5}
    runs = {}
    for (v, s), x in nds.items():
        f = tmp_path / f"{v}_{s}.json"
        f.write_text(json.dumps({"nd_score": x, "mean_ap": x / 2, "num_samples": 12,
                                 "tp_errors": {"trans_err": 1 - x, "orient_err": 1.5 - x}}))
        runs[f"{v}_seed{s}"] = {"variant": v, "seed": s, "metrics": ablation.read_metrics(f, abl.METRICS)}
    summary = ablation.summarize(runs, abl.PAIRS, abl.COLUMNS)
    assert summary["variants"]["bev_only"]["NDS"]["n"] == 3
    assert summary["variants"]["pers_bev"]["NDS"]["mean"] == pytest.approx(0.25)
    assert summary["variants"]["pers_bev"]["mATE"]["mean"] == pytest.approx(0.75)
    pair = summary["pairs"]["pers_bev - bev_only"]
    assert pair["seeds"] == [0, 1]  # seed 2 has no partner
    assert pair["NDS"]["mean"] == pytest.approx(0.03)
    assert pair["NDS"]["std"] == pytest.approx(math.sqrt(2) * 0.02)
    assert pair["mAOE"]["min"] == pytest.approx(-0.05) and pair["mAOE"]["max"] == pytest.approx(-0.01)
    assert "pers_bev - pers_bev_1stage" not in summary["pairs"]
    ablation.print_tables(runs, summary, abl.COLUMNS, abl.NOTE)  # formats NaN stds (one value) without raising


def test_small_worlds_get_shards_small_enough_for_every_rank(abl, tmp_path):
    cam = tmp_path / "world" / "samples" / "CAM_FRONT"
    cam.mkdir(parents=True)
    (cam / "a.jpg").write_bytes(b"\0" * 10 * 2**20)  # 10 MiB of source files: about 8 MiB in mini_train
    assert abl.shard_size_mb(tmp_path / "world", nproc=2) == pytest.approx(2.0)
    # the demo's GPU run: one rank but 8 loader workers, each needs a shard -> at least 8 shards
    assert abl.shard_size_mb(tmp_path / "world", nproc=1, workers=8) == pytest.approx(1.0)
    (cam / "b.jpg").write_bytes(b"\0" * 90 * 2**20)
    assert abl.shard_size_mb(tmp_path / "world", nproc=2) == abl.DEMO_SHARD_MB  # large worlds: the demo's size


def test_demo_knows_the_budget_of_an_existing_run(abl, tmp_path):
    """``make demo`` must not take a longer run's mid-run checkpoint ``step_{steps}`` for a finished one."""
    import yaml

    run_dir = tmp_path / "run"
    assert workflow.run_budget(run_dir) is None
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["schedule"]["total_steps"] = 500
    ckpt = run_dir / "checkpoints" / "step_00000400"
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert workflow.run_budget(run_dir) == 500
    assert workflow.config_steps(ROOT / "configs" / "demo.yaml") > 0  # no shards needed (fresh machine)
