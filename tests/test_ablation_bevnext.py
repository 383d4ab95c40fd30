"""benchmarks/ablation_bevnext.py: its plan (variants -> the trainer's resolved configs, order, dependencies), the
weights eval scores per variant, and ``train.ablation``'s reuse of scored runs, step time and statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bev_model.bevnext.config import BEVNeXtConfig
from bev_model.bevnext.model import STAGE2_DROP
from bev_model.config import ModelConfig
from shards.contracts.checkpoint import checkpoint_files
from tests.scripts import ROOT, script_module
from train import ablation, workflow
from train.config import load_train_config


@pytest.fixture(scope="module")
def abl():
    yield from script_module("benchmarks/ablation_bevnext.py")


def _fake_final_checkpoint(run_dir: Path, steps: int) -> Path:
    """What eval needs of a finished run: the final checkpoint's weights files and config.yaml (empty files)."""
    final = workflow.final_checkpoint(run_dir, steps)
    final.mkdir(parents=True)
    for f in ("weights_fp32.pt", "weights_ema_fp32.pt", "config.yaml", "complete"):
        (final / f).write_text("")
    return final


def test_variants_resolve_to_the_intended_models(abl, tmp_path):
    """Each run's training command, read by the trainer's own loader, gives the ablated model, budget and init."""
    args = abl.parse_args(["--out", str(tmp_path), "--seeds", "3", "--steps", "7"])
    plan = abl.build_plan(args, tmp_path)
    assert [p.variant for p in plan] == ["bevnext", "bevformer_v2", "bevnext_crf_off", "bevnext_crf_active",
                                         "bevnext_s1_cont", "bevnext_s2"]
    start = _fake_final_checkpoint(tmp_path / "ablation_bevnext" / "bevnext_seed3", 7) / "weights_ema_fp32.pt"
    train = tmp_path / "shards_lidar" / "mini_train"
    train.mkdir(parents=True)
    got = {}
    for p in plan:
        assert p.dir == tmp_path / "ablation_bevnext" / f"{p.variant}_seed3"
        cmd = [str(c) for c in p.train_command(train, args.steps, args.nproc)]
        assert cmd[cmd.index("--config") + 1] == p.config
        cfg = load_train_config(ROOT / p.config, cmd[cmd.index("--config") + 2:cmd.index("--resume")])
        assert cfg.seed == 3 and cfg.schedule.total_steps == 7 and cfg.out_dir == p.dir
        assert cfg.data.shards == str(train) or Path(cfg.data.shards) == train
        m = cfg.model_config()
        init = (cfg.init.from_checkpoint, tuple(cfg.init.drop))
        got[p.variant] = (type(m), getattr(getattr(m, "depth", None), "crf", None), tuple(m.frame_offsets), init,
                          cfg.ema.enabled, cfg.data.load_points)
    s1_init, s2_init = (Path(start), ()), (Path(start), STAGE2_DROP)
    assert got == {
        "bevformer_v2": (ModelConfig, None, (0,), (None, ()), False, False),
        "bevnext": (BEVNeXtConfig, "faithful", (0,), (None, ()), True, True),
        "bevnext_crf_off": (BEVNeXtConfig, "off", (0,), (None, ()), True, True),
        "bevnext_crf_active": (BEVNeXtConfig, "active", (0,), (None, ()), True, True),
        "bevnext_s1_cont": (BEVNeXtConfig, "faithful", (0,), s1_init, True, True),
        "bevnext_s2": (BEVNeXtConfig, "faithful", (-3, -2, -1, 0), s2_init, True, True),
    }


def test_bevnext_seed0_is_the_run_the_lead_started(abl):
    """The script reuses (``--resume auto``) the run launched by hand with exactly this command."""
    args = abl.parse_args(["--out", "/work/abl"])
    assert (args.steps, args.seeds, args.nproc) == (200, [0, 1, 2], 2)
    p = abl.build_plan(args, Path("/work/abl"))[0]
    cmd = [str(c) for c in p.train_command(Path("/work/abl/shards_lidar/mini_train"), args.steps, args.nproc)]
    assert cmd[1:] == (
        "-m torch.distributed.run --standalone --nproc_per_node 2 -m train --config configs/bevnext_tiny_stage1.yaml "
        "out_dir=/work/abl/ablation_bevnext/bevnext_seed0 data.shards=/work/abl/shards_lidar/mini_train "
        "schedule.total_steps=200 seed=0 --resume auto").split()


def test_plan_is_seed_major_and_continuations_follow_their_start(abl, tmp_path):
    args = abl.parse_args(["--out", str(tmp_path), "--seeds", "1", "0", "--steps", "9",
                           "--variants", "bevnext_s2", "bevformer_v2", "bevnext", "bevnext_s1_cont"])
    plan = abl.build_plan(args, tmp_path)
    assert [p.name for p in plan] == ["bevnext_seed1", "bevformer_v2_seed1", "bevnext_s1_cont_seed1", "bevnext_s2_seed1",
                                      "bevnext_seed0", "bevformer_v2_seed0", "bevnext_s1_cont_seed0", "bevnext_s2_seed0"]
    names = [p.name for p in plan]
    for p in plan:
        if p.variant in ("bevnext_s1_cont", "bevnext_s2"):
            assert p.after == f"bevnext_seed{p.seed}" and names.index(p.after) < names.index(p.name)
            start = tmp_path / "ablation_bevnext" / p.after / "checkpoints" / "step_00000009" / "weights_ema_fp32.pt"
            assert f"init.from_checkpoint={start}" in p.overrides
        else:
            assert p.after is None
    with pytest.raises(SystemExit):
        abl.parse_args(["--seeds", "0", "0"])
    with pytest.raises(SystemExit):
        abl.parse_args(["--variants", "bevnext_crf_faithful"])


def test_eval_scores_the_ema_weights_of_bevnext_and_the_plain_ones_of_bevformer(abl, tmp_path):
    args = abl.parse_args(["--out", str(tmp_path), "--seeds", "0", "--steps", "4"])
    weights = {}
    for p in abl.build_plan(args, tmp_path):
        _fake_final_checkpoint(p.dir, 4)
        w, cfg = checkpoint_files(p.eval_checkpoint(4))  # how python -m eval --checkpoint resolves it
        assert cfg == workflow.final_checkpoint(p.dir, 4) / "config.yaml"
        weights[p.variant] = w.name
    assert weights == {"bevformer_v2": "weights_fp32.pt", **{v: "weights_ema_fp32.pt" for v in abl.VARIANTS
                                                             if v != "bevformer_v2"}}


def _metrics_summary(path: Path, checkpoint: Path, nds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"nd_score": nds, "mean_ap": nds / 2, "num_samples": 5, "checkpoint": str(checkpoint),
                                "tp_errors": {"trans_err": 0.5, "orient_err": 0.7, "vel_err": 0.9}}))


def test_scored_runs_are_reused_with_their_step_time(abl, tmp_path, capsys):
    """A run with its eval is not trained again; its metrics come back with the step time of its log, where the
    interval holding a checkpoint save is left out; a score of other weights than the variant's is refused."""
    args = abl.parse_args(["--out", str(tmp_path), "--seeds", "0", "--steps", "30",
                           "--variants", "bevnext", "bevformer_v2"])
    plan = abl.build_plan(args, tmp_path)
    for p, nds in zip(plan, (0.3, 0.2)):
        _metrics_summary(p.metrics_path, p.eval_checkpoint(30), nds)
    log = plan[0].dir / "logs" / "train.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join(json.dumps(r) for r in [
        {"step": 10, "time": 100.0, "loss": 1.0},
        {"step": 20, "time": 120.0, "loss": 1.0},  # 2 s a step
        {"step": 20, "event": "checkpoint", "time": 125.0},
        {"step": 30, "time": 160.0, "loss": 1.0},  # 4 s a step, but with a checkpoint save: left out
    ]) + "\n{\"step\": 4")  # a line cut by a kill
    kw = dict(steps=30, nproc=2, train_shards=tmp_path / "nope", val_shards=tmp_path / "nope", metrics=abl.METRICS,
              describe={v: v for v in abl.VARIANTS}, tool="t", extra=lambda p: {abl.STEP_S: ablation.step_time(p.dir)})
    runs, failed = ablation.run_plan(plan, **kw)
    assert failed == [] and "$ " not in capsys.readouterr().out  # nothing launched
    m = runs["bevnext_seed0"]["metrics"]
    assert (m["NDS"], m["mAVE"], m[abl.STEP_S]) == (0.3, 0.9, 2.0)
    assert math.isnan(runs["bevformer_v2_seed0"]["metrics"][abl.STEP_S])  # no log
    _metrics_summary(plan[0].metrics_path, workflow.final_checkpoint(plan[0].dir, 30), 0.3)  # weights_fp32.pt
    with pytest.raises(SystemExit, match="weights_ema_fp32.pt"):
        ablation.run_plan(plan, **kw)


def test_report_only_collects_the_scored_runs_and_launches_nothing(abl, tmp_path, capsys):
    args = abl.parse_args(["--out", str(tmp_path), "--seeds", "0", "--steps", "30", "--variants", "bevnext",
                           "bevformer_v2", "--report-only"])
    plan = abl.build_plan(args, tmp_path)
    _metrics_summary(plan[1].metrics_path, plan[1].eval_checkpoint(30), 0.2)
    runs, failed = ablation.run_plan(plan, steps=30, nproc=2, train_shards=tmp_path / "nope",
                                     val_shards=tmp_path / "nope", metrics=abl.METRICS,
                                     describe={v: v for v in abl.VARIANTS}, tool="t", report_only=args.report_only)
    out = capsys.readouterr().out
    assert list(runs) == ["bevformer_v2_seed0"] and failed == [] and "$ " not in out and "not scored yet" in out


def test_summary_means_and_paired_differences(abl):
    """Hand-computed: per-variant mean/std over seeds and same-seed differences (a seed without partner dropped)."""
    def m(nds: float, step: float) -> dict[str, float]:
        return {"NDS": nds, "mAP": nds / 2, "mATE": 1 - nds, "mAOE": 0.5, "mAVE": 0.8, abl.STEP_S: step,
                "obj miss": 0.5 - nds, "ctr miss": math.nan, "ctr vel": 1.0, "ctr yaw": 2.0}

    table = {("bevnext", 0): m(0.30, 1.5), ("bevnext", 1): m(0.34, 1.7), ("bevnext", 2): m(0.20, 1.6),
             ("bevformer_v2", 0): m(0.25, 1.0), ("bevformer_v2", 1): m(0.26, 1.2),
             ("bevnext_crf_off", 0): m(0.28, 1.4), ("bevnext_crf_off", 1): m(0.30, 1.4),
             ("bevnext_crf_active", 0): m(0.31, 1.6), ("bevnext_crf_active", 1): m(0.29, 1.6)}
    runs = {f"{v}_seed{s}": {"variant": v, "seed": s, "metrics": x} for (v, s), x in table.items()}
    s = ablation.summarize(runs, abl.PAIRS, abl.COLUMNS)
    bn = s["variants"]["bevnext"]
    assert bn["NDS"]["n"] == 3 and bn["NDS"]["mean"] == pytest.approx(0.28)
    # deviations 0.02, 0.06, -0.08 -> variance (0.0004 + 0.0036 + 0.0064) / 2 = 0.0052
    assert bn["NDS"]["std"] == pytest.approx(math.sqrt(0.0052))
    assert bn[abl.STEP_S]["mean"] == pytest.approx(1.6) and bn[abl.STEP_S]["std"] == pytest.approx(0.1)
    d = s["pairs"]["bevnext - bevformer_v2"]
    assert d["seeds"] == [0, 1]  # seed 2 has no bevformer_v2 run
    assert d["NDS"]["mean"] == pytest.approx(0.065)  # (0.05 + 0.08) / 2
    assert d["NDS"]["std"] == pytest.approx(0.03 / math.sqrt(2))
    assert d["mATE"]["mean"] == pytest.approx(-0.065) and d["mAOE"]["mean"] == pytest.approx(0.0)
    assert d[abl.STEP_S]["min"] == pytest.approx(0.5) and d[abl.STEP_S]["max"] == pytest.approx(0.5)
    crf = s["pairs"]["bevnext_crf_active - bevnext_crf_off"]
    assert crf["per_seed"][0]["NDS"] == pytest.approx(0.03) and crf["per_seed"][1]["NDS"] == pytest.approx(-0.01)
    assert crf["NDS"]["mean"] == pytest.approx(0.01)
    assert s["pairs"]["bevnext - bevnext_crf_off"]["NDS"]["mean"] == pytest.approx(0.03)
    assert "bevnext_s2 - bevnext_s1_cont" not in s["pairs"]  # neither ran
    assert s["pairs"]["bevnext - bevnext_crf_off"]["obj miss"]["mean"] == pytest.approx(-0.03)
    assert s["pairs"]["bevnext - bevnext_crf_off"]["ctr miss"]["n"] == 0  # NaN (BEVFormer v2's columns) left out
    ablation.print_tables(runs, s, abl.COLUMNS, abl.NOTE)  # long pair names and NaN stds format without raising


def test_probe_columns_score_the_evaluated_weights_and_are_kept(abl, tmp_path, synth_shards_lidar, capsys):
    """A BEVNeXt run's depth and centre columns come from its final EMA weights on the LiDAR shards, are kept in
    ``RUN/eval/{depth,centre}_quality.json`` (reused while they name the same weights and sampling) and are NaN for
    BEVFormer v2, which has neither depth nor a dense head."""
    import torch

    from bev_model import build_model, model_config_from_dict

    args = abl.parse_args(["--out", str(tmp_path), "--seeds", "0", "--steps", "4", "--variants", "bevnext",
                           "bevformer_v2"])
    bevnext, bevformer = abl.build_plan(args, tmp_path)
    final = workflow.final_checkpoint(bevnext.dir, 4)
    final.mkdir(parents=True)
    model_section = {"preset": "bevnext_tiny", "bev": {"bev_h": 16, "bev_w": 16}}
    torch.manual_seed(0)
    torch.save(build_model(model_config_from_dict(dict(model_section))).state_dict(), final / "weights_ema_fp32.pt")
    (final / "config.yaml").write_text(json.dumps({"model": model_section, "data": {"image_size": [32, 96]}}))
    cols = abl.probe_columns(bevnext, synth_shards_lidar, 4)
    assert list(cols) == ["obj miss", "ctr miss", "ctr vel", "ctr yaw"]
    assert 0 < cols["obj miss"] <= 1 and 0 <= cols["ctr miss"] <= 1 and cols["ctr vel"] > 0
    assert 0 < cols["ctr yaw"] <= math.pi
    depth = json.loads((bevnext.dir / "eval" / "depth_quality.json").read_text())
    centre = json.loads((bevnext.dir / "eval" / "centre_quality.json").read_text())
    assert depth["checkpoint"] == centre["checkpoint"] == str(final / "weights_ema_fp32.pt")
    assert depth["settings"] == [abl.DEPTH_SAMPLES, abl.DEPTH_EVERY]
    assert centre["value"]["samples"] == json.loads((synth_shards_lidar / "manifest.json").read_text())["num_samples"]
    out = capsys.readouterr().out
    assert "depth quality of" in out and "centre quality of" in out
    for r in depth["value"]:
        r["within_1"] = 0.25
    centre["value"]["recall"] = 0.125
    (bevnext.dir / "eval" / "depth_quality.json").write_text(json.dumps(depth))
    (bevnext.dir / "eval" / "centre_quality.json").write_text(json.dumps(centre))
    again = abl.probe_columns(bevnext, synth_shards_lidar, 4)
    assert (again["obj miss"], again["ctr miss"], again["ctr vel"]) == (0.75, 0.875, cols["ctr vel"])
    assert "quality of" not in capsys.readouterr().out  # reused, not recomputed
    assert all(math.isnan(v) for v in abl.probe_columns(bevformer, synth_shards_lidar, 4).values())
