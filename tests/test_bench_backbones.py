"""``benchmarks/bench_backbones.py`` runs and prints every candidate beside the ResNet-18 baseline."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_backbones_prints_ratios_against_the_baseline():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_backbones.py"), "--image", "32", "88",
                          "--rounds", "1", "--names", "regnetx_002"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)\s+([\d.]+)x", out.stdout, re.M)}
    assert set(rows) == {"resnet18", "regnetx_002"}, out.stdout
    assert rows["resnet18"][2] == "1.00" and rows["resnet18"][4] == "1.00"  # the baseline against itself
    assert float(rows["resnet18"][0]) > 4 * float(rows["regnetx_002"][0])  # parameters: 11.2 M vs 2.3 M
    assert "(baseline)" in out.stdout.splitlines()[2]
