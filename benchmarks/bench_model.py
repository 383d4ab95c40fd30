"""A whole training step (forward+backward) with the fused deformable attention against the PyTorch reference.

Four cases side by side: {single frame (offsets (0,)), two frames (t2, offsets (-1, 0))} x
{fused deformable attention (numba ``cpu`` on CPU, ``triton`` on a GPU), PyTorch reference (``reference``,
grid_sample)}. The reference backend is the baseline measured in the same run; the ratio column is
reference time / fused time (> 1: fused is faster) and reference memory / fused memory.

Times: both backends in one process per frame count, steps interleaved (median per backend), so
a busy machine slows both alike. Memory: one fresh process (``spawn``) per case, so its peak
resident memory (``ru_maxrss``) can be measured; "peak MB" is the rise of the peak over the process's footprint after the model was built
and warmed up on small images (that step JIT-compiles the numba kernels and is not measured); it
approximates the activation memory of one training step.

On a GPU (``--device cuda``) times are taken between ``torch.cuda.synchronize`` calls and memory is the
peak of ``torch.cuda.max_memory_allocated`` over one step minus the bytes allocated before it, both
backends in one process; ``--amp bf16`` runs the step under bf16 autocast.

    python benchmarks/bench_model.py [--steps 3] [--image 128 352] [--batch 1]
    python benchmarks/bench_model.py --device cuda --preset r50 --image 450 800 --steps 10 --amp bf16
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


def _setup(offsets: tuple[int, ...], image_hw: tuple[int, int], batch_size: int, preset: str = "tiny",
           device: str = "cpu"):
    import torch

    from bev_model import build_model, get_preset
    from bev_model.synthetic import make_batch

    torch.manual_seed(0)
    cfg = get_preset(preset)
    cfg.temporal.offsets = offsets
    model = build_model(cfg).train().to(device)
    batch = make_batch(batch_size, len(offsets), image_hw, num_boxes=10, bev_aug=True, seed=0).to(device)
    small = make_batch(1, len(offsets), (32, 88), num_boxes=10, bev_aug=True, seed=0).to(device)
    return model, batch, small


def _set_backend(model, backend: str) -> None:
    from bev_model.ops import MSDeformAttn

    for m in model.modules():
        if isinstance(m, MSDeformAttn):
            m.backend = backend


def _step(model, batch) -> float:
    t0 = time.perf_counter()
    model.forward_train(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _time_case(offsets, steps, image_hw, batch_size, out: mp.Queue) -> None:
    """Both backends in one process, steps interleaved (so load changes hit both alike)."""
    import torch

    model, batch, small = _setup(offsets, image_hw, batch_size)
    times: dict[str, list[float]] = {"cpu": [], "reference": []}
    for b in times:  # warm-up: numba JIT on small images, then one full step
        _set_backend(model, b)
        _step(model, small)
        _step(model, batch)
    for _ in range(steps):
        for b in times:
            _set_backend(model, b)
            times[b].append(_step(model, batch) / batch_size)
    out.put({b: statistics.median(v) for b, v in times.items()} | {"threads": torch.get_num_threads()})


def _memory_case(offsets, backend, image_hw, batch_size, out: mp.Queue) -> None:
    """One backend per process: peak RSS rise of one full step over the warmed-up footprint."""
    model, batch, small = _setup(offsets, image_hw, batch_size)
    _set_backend(model, backend)
    _step(model, small)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    _step(model, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put({"peak_mb": max(peak - base, 0) / 1024 / batch_size, "rss_mb": peak / 1024})


def _gpu_case(offsets, steps, image_hw, batch_size, preset, amp, out: mp.Queue) -> None:
    """Both backends in one process on the GPU: peak memory of one step each, then interleaved timed steps."""
    import contextlib

    import torch

    model, batch, small = _setup(offsets, image_hw, batch_size, preset, "cuda")
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp == "bf16" else contextlib.nullcontext

    def step(b) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ctx():
            loss = model.forward_train(b)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    backends = ("triton", "reference")
    peak = {}
    for b in backends:  # warm-up (Triton JIT, cuDNN autotune), then one measured step for memory
        _set_backend(model, b)
        step(small)
        step(batch)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(batch)
        peak[b] = (torch.cuda.max_memory_allocated() - base) / 2**20 / batch_size
    times: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(steps):
        for b in backends:
            _set_backend(model, b)
            times[b].append(step(batch) / batch_size)
    out.put({b: {"time": statistics.median(times[b]), "peak_mb": peak[b]} for b in backends}
            | {"gpu": torch.cuda.get_device_name()})


def _in_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--image", type=int, nargs=2, default=(128, 352), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--preset", default="tiny", help="model preset (tiny, r50, large)")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast on the GPU")
    args = ap.parse_args()
    image_hw = tuple(args.image)
    if args.device == "cuda":
        return _main_gpu(args, image_hw)
    if args.preset != "tiny" or args.amp != "none":
        ap.error("--preset and --amp are for --device cuda; the CPU comparison uses the tiny preset in fp32")
    print(f"tiny preset, CPU, 6 cameras x {image_hw[0]}x{image_hw[1]}, batch {args.batch}, "
          f"median of {args.steps} forward+backward steps")
    print(f"{'frames':<8}{'backend':<11}{'s/sample':>10}{'peak MB':>10}{'rss MB':>9}"
          f"{'time ref/fused':>16}{'mem ref/fused':>15}")
    for offsets, label in (((0,), "1 (t1)"), ((-1, 0), "2 (t2)")):
        t = _in_process(_time_case, offsets, args.steps, image_hw, args.batch)
        mem = {b: _in_process(_memory_case, offsets, b, image_hw, args.batch) for b in ("cpu", "reference")}
        for b in ("cpu", "reference"):
            if b == "cpu":
                extra = f"{t['reference'] / t['cpu']:>16.2f}{mem['reference']['peak_mb'] / max(mem['cpu']['peak_mb'], 1e-6):>15.2f}"
            else:
                extra = f"{'(baseline)':>16}{'':>15}"
            name = "fused cpu" if b == "cpu" else "reference"
            print(f"{label:<8}{name:<11}{t[b]:>10.3f}{mem[b]['peak_mb']:>10.0f}{mem[b]['rss_mb']:>9.0f}{extra}", flush=True)
    print(f"(torch threads per process: {t['threads']}; time ratio = reference / fused, > 1: fused faster)")


def _main_gpu(args, image_hw) -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_model: --device cuda needs a CUDA device (none is visible to torch)")
    print(f"{args.preset} preset, 6 cameras x {image_hw[0]}x{image_hw[1]}, batch {args.batch}, amp {args.amp}, "
          f"median of {args.steps} forward+backward steps")
    print(f"{'frames':<8}{'backend':<11}{'s/sample':>10}{'peak MB':>10}{'time ref/fused':>16}{'mem ref/fused':>15}")
    for offsets, label in (((0,), "1 (t1)"), ((-1, 0), "2 (t2)")):
        r = _in_process(_gpu_case, offsets, args.steps, image_hw, args.batch, args.preset, args.amp)
        tri, ref = r["triton"], r["reference"]
        print(f"{label:<8}{'triton':<11}{tri['time']:>10.4f}{tri['peak_mb']:>10.0f}"
              f"{ref['time'] / tri['time']:>16.2f}{ref['peak_mb'] / max(tri['peak_mb'], 1e-6):>15.2f}")
        print(f"{label:<8}{'reference':<11}{ref['time']:>10.4f}{ref['peak_mb']:>10.0f}{'(baseline)':>16}", flush=True)
    print(f"({r['gpu']}; time ratio = reference / fused, > 1: fused faster)")


if __name__ == "__main__":
    main()
