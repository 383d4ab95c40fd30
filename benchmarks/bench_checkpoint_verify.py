"""Cost of verifying a checkpoint file before resume vs loading it: ``python benchmarks/bench_checkpoint_verify.py``.

``train.safe_load.check_file`` (what ``--resume`` runs on every ``.pt`` of a checkpoint, rank 0) reads the pickle
with ``weights_only=True`` and memory-maps the tensor data; the baseline is the full ``weights_only`` load DeepSpeed
then does. Prints both (best of 3, after a warm-up that imports DeepSpeed) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from train.safe_load import check_file, safe_torch_load


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=400, help="size of the fake ZeRO optimizer partition")
    args = ap.parse_args()
    n = args.mb * 1_000_000 // 8 // 50
    state = {"optimizer_state_dict": {"state": {i: {"exp_avg": torch.randn(n), "exp_avg_sq": torch.randn(n)}
                                                for i in range(50)}}}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
        torch.save(state, path)
        del state
        check_file(path)  # warm-up: imports DeepSpeed's allowlisted classes
        best = {"check_file": 1e9, "full_load": 1e9}
        for _ in range(3):
            t = time.perf_counter()
            check_file(path)
            best["check_file"] = min(best["check_file"], time.perf_counter() - t)
            t = time.perf_counter()
            loaded = safe_torch_load(path)
            best["full_load"] = min(best["full_load"], time.perf_counter() - t)
            del loaded
        mb = os.path.getsize(path) / 1e6
    print(f"file {mb:.0f} MB: check_file {best['check_file']:.3f} s, full weights_only load (baseline) "
          f"{best['full_load']:.3f} s, ratio {best['full_load'] / best['check_file']:.1f}x")


if __name__ == "__main__":
    main()
