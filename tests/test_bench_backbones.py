"""``benchmarks/bench_backbones.py`` times each candidate in place of the ResNet-18 baseline, in one run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _backbone_params_m(name: str) -> float:
    from bev_model import build_model, get_preset

    cfg = get_preset("tiny")
    cfg.backbone.name = name
    return sum(p.numel() for p in build_model(cfg).backbone.parameters()) / 1e6


def test_bench_backbones_times_each_candidate_in_the_model_it_reports():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_backbones.py"), "--image", "32", "88",
                          "--rounds", "1", "--names", "regnetx_002"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {m.group(1): [float(x) for x in m.groups()[1:]] for m in re.finditer(
        r"^(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)\s+([\d.]+)x", out.stdout, re.M)}
    assert set(rows) == {"resnet18", "regnetx_002"}, out.stdout
    for name, (params, t_backbone, _, t_model, _) in rows.items():
        # the model that was timed carries that backbone (the tiny preset's, swapped by model.backbone.name)
        assert params == pytest.approx(_backbone_params_m(name), abs=0.051), name
        assert 0 < t_backbone < t_model  # the whole model's step includes the backbone's
    base, cand = rows["resnet18"], rows["regnetx_002"]
    # each ratio is the baseline's time over the candidate's, measured in this same run
    assert cand[2] == pytest.approx(base[1] / cand[1], rel=0.1, abs=0.02)  # of times printed to 1 ms
    assert cand[4] == pytest.approx(base[3] / cand[3], rel=0.1, abs=0.02)  # of times printed to 1 ms
