"""Each training rank sizes its OpenMP and numba pools to its share of the host's cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import os; from train.dist import share_cpu_threads; share_cpu_threads(); import numba; "
    "print(os.environ['OMP_NUM_THREADS'], numba.config.NUMBA_NUM_THREADS)"
)


def _probe(**env: str) -> tuple[int, int]:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**base, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_local_ranks_split_the_cores_for_omp_and_numba():
    cores = os.cpu_count() or 1
    assert _probe(LOCAL_WORLD_SIZE="1") == (cores, cores)
    share = max(1, cores // 2)
    assert _probe(LOCAL_WORLD_SIZE="2") == (share, share)
    assert _probe(LOCAL_WORLD_SIZE=str(4 * cores)) == (1, 1)


def test_explicit_settings_win():
    assert _probe(LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1") == (1, 1)
