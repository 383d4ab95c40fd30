"""benchmarks/ablation_distill.py: each variant's overrides give the intended distillation terms, and its
summary pairs runs by seed (smoke test; the full ablation is not run in CI)."""

import pytest

from tests.scripts import ROOT, script_module
from train.ablation import summarize


@pytest.fixture(scope="module")
def abl():
    yield from script_module("benchmarks/ablation_distill.py")


def test_variants_resolve_to_the_intended_terms(abl, tmp_path):
    from train.config import load_train_config

    args = abl.parse_args(["--out", str(tmp_path), "--seeds", "4", "--steps", "5"])
    runs = abl.student_commands(args, tmp_path, tmp_path, tmp_path / "no_teacher_yet")
    assert [r["variant"] for r in runs] == ["student", "dense", "instance", "box", "heatmap", "all"]
    flags = {}
    for r in runs:
        cmd = r["train"]
        cfg = load_train_config(ROOT / "configs/distill_tiny.yaml", cmd[cmd.index("--config") + 2:cmd.index("--resume")])
        assert cfg.seed == 4 and cfg.schedule.total_steps == 5 and cfg.data.load_points
        d = cfg.model_config().distill
        flags[r["variant"]] = tuple(t for t in ("dense", "instance", "box", "heatmap") if getattr(d, t))
    assert flags == {"student": (), "dense": ("dense",), "instance": ("instance",), "box": ("box",),
                     "heatmap": ("heatmap",), "all": ("dense", "instance", "box", "heatmap")}


def test_summary_pairs_runs_by_seed(abl):
    m = lambda nds: {"NDS": nds, "mAP": 0.1, "mATE": 1.0, "mAOE": 1.0, "mAVE": 1.0}  # noqa: E731
    runs = [{"variant": "student", "seed": 0, "metrics": m(0.10)}, {"variant": "all", "seed": 0, "metrics": m(0.15)},
            {"variant": "student", "seed": 1, "metrics": m(0.20)}, {"variant": "all", "seed": 1, "metrics": m(0.21)}]
    s = summarize(runs, abl.PAIRS, abl.COLUMNS)
    assert s["pairs"]["all - student"]["NDS"]["mean"] == pytest.approx(0.03)
    assert s["variants"]["student"]["NDS"]["mean"] == pytest.approx(0.15)
