"""Tiny-preset training step on CPU: forward+backward time and peak memory per sample.

Four cases side by side: {single frame (offsets (0,)), two frames (t2, offsets (-1, 0))} x
{fused CPU deformable attention (numba, ``cpu``), PyTorch reference (``reference``, grid_sample)}.
The reference backend is the baseline measured in the same run; the ratio column is
reference time / fused time (> 1: fused is faster) and reference memory / fused memory.

Each case runs in a fresh process (``spawn``) so its peak resident memory (``ru_maxrss``) can be
measured; "peak MB" is the rise of the peak over the process's footprint after the model was built
and warmed up on small images (that step JIT-compiles the numba kernels and is not measured); it
approximates the activation memory of one training step.

    python benchmarks/bench_model.py [--steps 3] [--image 128 352] [--batch 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _run_case(offsets: tuple[int, ...], backend: str, steps: int, image_hw: tuple[int, int], batch_size: int,
              out: mp.Queue) -> None:
    import torch

    from bev_model import build_model, get_preset
    from bev_model.synthetic import make_batch

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.temporal.offsets = offsets
    cfg.attn_backend = backend
    model = build_model(cfg).train()
    batch = make_batch(batch_size, len(offsets), image_hw, num_boxes=10, bev_aug=True, seed=0)
    small = make_batch(1, len(offsets), (32, 88), num_boxes=10, bev_aug=True, seed=0)
    model.forward_train(small)["loss"].backward()  # warm-up on small images: numba JIT without big activations
    model.zero_grad(set_to_none=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.forward_train(batch)["loss"].backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put({"time": statistics.median(times) / batch_size, "peak_mb": max(peak - base, 0) / 1024 / batch_size,
             "rss_mb": peak / 1024, "threads": torch.get_num_threads()})


def measure(offsets, backend, steps, image_hw, batch_size) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run_case, args=(offsets, backend, steps, image_hw, batch_size, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--image", type=int, nargs=2, default=(128, 352), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    image_hw = tuple(args.image)
    print(f"tiny preset, CPU, 6 cameras x {image_hw[0]}x{image_hw[1]}, batch {args.batch}, "
          f"median of {args.steps} forward+backward steps")
    print(f"{'frames':<8}{'backend':<11}{'s/sample':>10}{'peak MB':>10}{'rss MB':>9}"
          f"{'time ref/fused':>16}{'mem ref/fused':>15}")
    for offsets, label in (((0,), "1 (t1)"), ((-1, 0), "2 (t2)")):
        res = {b: measure(offsets, b, args.steps, image_hw, args.batch) for b in ("cpu", "reference")}
        for b in ("cpu", "reference"):
            r = res[b]
            ratio_t = res["reference"]["time"] / res["cpu"]["time"]
            ratio_m = res["reference"]["peak_mb"] / max(res["cpu"]["peak_mb"], 1e-6)
            extra = f"{ratio_t:>16.2f}{ratio_m:>15.2f}" if b == "cpu" else f"{'(baseline)':>16}{'':>15}"
            name = "fused cpu" if b == "cpu" else "reference"
            print(f"{label:<8}{name:<11}{r['time']:>10.3f}{r['peak_mb']:>10.0f}{r['rss_mb']:>9.0f}{extra}")
    print(f"(torch threads per process: {res['cpu']['threads']})")


if __name__ == "__main__":
    main()
