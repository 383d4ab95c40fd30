"""Benchmark BEV pooling: the fused ``bev_pool_v2`` against the torch ``index_add_`` reference and the LSS
"cumsum trick", time and peak memory, all measured in the same run.

Frusta are a ring of 6 pinhole cameras (``ring_frustum_points``) lifted over D depth bins from 1 m to 60 m:

* ``tiny``: 6 cams x 40 bins x 12x32 features (stride 8 of 96x256), C=64, 50x50 BEV over +-51.2 m;
* ``r50``: 6 cams x 118 bins x 32x88 features (stride 8 of 256x704), C=80, 128x128 BEV at 0.8 m (BEVDet/
  BEVNeXt R50).

Methods: ``reference`` (``bev_pool_v2(backend="reference")``: gathers the ``[P, C]`` point features and
``index_add_``s them), ``cumsum`` (Lift-Splat-Shoot's QuickCumsum: the ``[P, C]`` point features, a cumulative
sum along the cell-sorted points, the difference at run ends; its custom backward gathers the cell gradient per
point; the sort is not timed since the prepared ranks are already sorted) and ``fused`` (``cpu``: numba on CPU,
``triton`` on CUDA). The index preparation (``bev_pool_v2_prepare``) is shared and timed once per shape.

Each (shape, method) runs in its own subprocess so peak memory is honest:
* CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) minus its RSS before the call
  (glibc's mmap threshold fixed at 64 KiB so freed buffers leave RSS and new ones are counted);
* GPU: ``torch.cuda.max_memory_allocated`` minus the allocated bytes before the call.
Inputs and the upstream gradient are allocated before the measurement; the input gradients are inside it.
``err`` is max |out - out64| / max |out64| against a float64 evaluation (fused CPU kernel, float64 inputs).

    python benchmarks/bench_bev_pool.py                  # tiny and r50
    python benchmarks/bench_bev_pool.py --shapes tiny --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bev_model.bev_grid import BEVGrid  # noqa: E402
from bev_model.ops import bev_pool_v2, bev_pool_v2_prepare  # noqa: E402
from bev_model.ops.bev_pool_testing import ring_frustum_points  # noqa: E402
from bev_model.ops.measure import PeakMemory, timed_ms  # noqa: E402


@dataclass(frozen=True)
class Shape:
    cams: int
    bins: int
    feat_hw: tuple[int, int]
    image_hw: tuple[int, int]
    channels: int
    grid: BEVGrid


RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
SHAPES = {
    "tiny": Shape(6, 40, (12, 32), (96, 256), 64, BEVGrid(RANGE, 50, 50, 1)),
    "r50": Shape(6, 118, (32, 88), (256, 704), 80, BEVGrid(RANGE, 128, 128, 1)),
}
DEFAULT_SHAPES = ("tiny", "r50")
SHAPES["smoke"] = Shape(6, 4, (2, 4), (16, 32), 8, BEVGrid(RANGE, 10, 10, 1))  # for the test of this script
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
METHODS = ("reference", "cumsum", "fused")


class _QuickCumsum(torch.autograd.Function):
    """LSS's cumsum trick over points sorted by cell: ``x [P, C]``, ``ranks [P]`` -> per-cell sums, cells."""

    @staticmethod
    def forward(ctx, x, ranks):  # type: ignore[override]
        x = x.cumsum(0)
        kept = torch.ones(x.shape[0], device=x.device, dtype=torch.bool)
        kept[:-1] = ranks[1:] != ranks[:-1]
        x, ranks = x[kept], ranks[kept]
        x = torch.cat((x[:1], x[1:] - x[:-1]))
        ctx.save_for_backward(kept)
        ctx.mark_non_differentiable(ranks)
        return x, ranks

    @staticmethod
    def backward(ctx, grad_x, _):  # type: ignore[override]
        (kept,) = ctx.saved_tensors
        back = torch.cumsum(kept, 0)
        back[kept] -= 1  # each point -> index of its run
        return grad_x[back], None


def cumsum_pool(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape, *_):
    """BEV pooling with the cumsum trick (autograd through the gather and the scatter); ``[B, C, Z, Y, X]``."""
    B, Z, Y, X, C = bev_feat_shape
    x = depth.reshape(-1)[ranks_depth.long()][:, None] * feat.reshape(-1, C)[ranks_feat.long()]
    x, cells = _QuickCumsum.apply(x, ranks_bev.long())
    out = x.new_zeros(B * Z * Y * X, C).index_put((cells,), x)
    return out.view(B, Z, Y, X, C).permute(0, 4, 1, 2, 3).contiguous()


def worker(shape_name: str, method: str, args) -> dict:
    """One (shape, method) measurement; runs in its own process."""
    device = torch.device(args.device)
    if getattr(args, "threads", None):
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    s = SHAPES[shape_name]
    B = args.batch
    H, W = s.feat_hw
    points = ring_frustum_points(B, s.cams, s.bins, s.feat_hw, s.image_hw).to(device)
    prep_ms = timed_ms(lambda: bev_pool_v2_prepare(points, s.grid), device, 3, 0.0, stat="min")
    ranks_bev, ranks_depth, ranks_feat, starts, lengths = bev_pool_v2_prepare(points, s.grid)
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(B, s.cams, s.bins, H, W, generator=g).softmax(2)
    feat = torch.randn(B, s.cams, H, W, s.channels, generator=g)
    index = (ranks_depth, ranks_feat, ranks_bev, (B, s.grid.Z, s.grid.H, s.grid.W, s.channels), starts, lengths)
    out64 = bev_pool_v2(depth.double(), feat.double(), *(t.cpu() if torch.is_tensor(t) else t for t in index),
                        backend="cpu")  # fmt: skip
    depth = depth.to(device=device, dtype=dtype).requires_grad_(True)
    feat = feat.to(device=device, dtype=dtype).requires_grad_(True)
    upstream = torch.randn(out64.shape, generator=g).to(device=device, dtype=dtype)
    fused = "triton" if device.type == "cuda" else "cpu"

    def fwd():
        if method == "cumsum":
            return cumsum_pool(depth, feat, *index)
        return bev_pool_v2(depth, feat, *index, backend="reference" if method == "reference" else fused)

    def fwd_bwd():
        return torch.autograd.grad(fwd(), (depth, feat), upstream)

    try:
        fwd_bwd()  # warm-up on the full problem (numba / Triton compilation, allocator pools, first-touch pages)
        with torch.no_grad():
            err = ((fwd().double().cpu() - out64).abs().max() / out64.abs().max()).item()
        with PeakMemory(device) as m_fwd:
            out = fwd()
        del out
        with PeakMemory(device) as m_bwd:
            grads = fwd_bwd()
        del grads
        fwd_ms = timed_ms(fwd, device, args.repeats, args.budget_s, stat="min")
        bwd_ms = timed_ms(fwd_bwd, device, args.repeats, args.budget_s, stat="min")
    except torch.OutOfMemoryError:
        return {"method": method, "oom": True}
    return {
        "method": method,
        "backend": fused if method == "fused" else method,
        "points": ranks_bev.numel(),
        "frustum": depth.numel(),
        "intervals": starts.numel(),
        "max_interval": int(lengths.max()),
        "prep_ms": prep_ms,
        "fwd_ms": fwd_ms,
        "fwd_bwd_ms": bwd_ms,
        "fwd_mib": m_fwd.peak_mib,
        "fwd_bwd_mib": m_bwd.peak_mib,
        "err": err,
    }


def _run_case(shape: str, method: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", shape, method, "--dtype", args.dtype, "--device", args.device,
           "--repeats", str(args.repeats), "--budget-s", str(args.budget_s), "--batch", str(args.batch)]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    # Fixed glibc mmap threshold: every large buffer is its own mmap, returned on free, so RSS follows live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"method": method, "error": tail[0][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="comma-separated, of " + ", ".join(SHAPES))
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=6.0, help="stop timing a case after this many seconds")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and numba (default: all)")
    parser.add_argument("--worker", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return
    shapes = args.shapes.split(",")
    for shape in shapes:
        if shape not in SHAPES:
            raise SystemExit(f"--shapes: unknown shape {shape!r}; choose from {', '.join(SHAPES)}")

    device = torch.device(args.device)
    threads = args.threads or torch.get_num_threads()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {threads} threads"
    print(f"BEV pooling, {args.dtype}, batch {args.batch}, {name}; best of <= {args.repeats} runs")
    header = (
        f"{'shape':<6} {'method':<10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd MiB':>9} {'f+b MiB':>9} "
        f"{'speed f+b':>10} {'mem f+b':>8} {'err':>8}"
    )
    print(header)
    print("-" * len(header))
    for shape in shapes:
        ref = None
        for method in METHODS:
            r = _run_case(shape, method, args)
            if "error" in r or r.get("oom"):
                print(f"{shape:<6} {method:<10} {'OOM' if r.get('oom') else 'error: ' + r['error']}")
                continue
            if ref is None and method == "reference":
                ref = r
                print(
                    f"{shape:<6} {r['points']} of {r['frustum']} frustum points in the grid, {r['intervals']} "
                    f"non-empty cells (longest {r['max_interval']} points); prepare {r['prep_ms']:.1f} ms"
                )
            speed = f"{ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x" if ref else "-"
            mem = f"{ref['fwd_bwd_mib'] / max(r['fwd_bwd_mib'], 1e-3):.1f}x" if ref else "-"
            label = f"fused/{r['backend']}" if method == "fused" else method
            print(
                f"{shape:<6} {label:<10} {r['fwd_ms']:>9.2f} {r['fwd_bwd_ms']:>11.2f} {r['fwd_mib']:>9.1f} "
                f"{r['fwd_bwd_mib']:>9.1f} {speed:>10} {mem:>8} {r['err']:>8.1e}"
            )
    print("speed/mem: reference / method for forward+backward (higher is better), same run")


if __name__ == "__main__":
    main()
