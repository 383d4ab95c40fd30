"""Benchmark the deformable-attention op: time and peak memory per backend, against ``reference`` in the same run.

Shapes are the REFERENCES.md table (M=8 heads, D=32). On CPU the backends are ``reference`` (grid_sample)
and ``cpu`` (numba); on a GPU ``reference`` and ``triton``. Shapes whose reference run would not fit the
machine are skipped with the reason printed (on a GPU, reference running out of memory is reported as OOM).

Each (shape, backend) runs in its own subprocess so peak memory is honest:
* CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs after setup) minus its RSS
  before the call; this sees torch's and numpy's allocations alike (glibc's mmap threshold is fixed at
  64 KiB in the worker so freed buffers leave RSS and new ones are counted).
* GPU: ``torch.cuda.max_memory_allocated`` minus the allocated bytes before the call.
The inputs (and the upstream gradient) are allocated before the measurement; the input gradients
returned by backward are inside it for every backend.

    python benchmarks/bench_deform_attn.py                      # all shapes that fit, fp32
    python benchmarks/bench_deform_attn.py --shapes tiny_sca,tiny_tsa --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bev_model.ops import multi_scale_deformable_attn  # noqa: E402
from bev_model.ops.measure import PeakMemory, timed_ms  # noqa: E402
from bev_model.ops.testing import Problem, random_inputs  # noqa: E402

DETR_LEVELS = ((64, 64), (32, 32), (16, 16), (8, 8))
SHAPES: dict[str, Problem] = {
    "base_sca": Problem(batch=6, shapes=((116, 200), (58, 100), (29, 50), (15, 25)), queries=40000, points=8),
    "base_tsa": Problem(batch=2, shapes=((200, 200),), queries=40000, points=4),
    "decoder": Problem(batch=1, shapes=((200, 200),), queries=900, points=4),
    "tiny_sca": Problem(batch=6, shapes=((15, 25),), queries=2500, points=8),
    "tiny_tsa": Problem(batch=2, shapes=((50, 50),), queries=2500, points=4),
    "detr_900": Problem(batch=4, shapes=DETR_LEVELS, queries=900, points=4),
    "detr_10000": Problem(batch=4, shapes=DETR_LEVELS, queries=10000, points=4),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def reference_bytes(p: Problem, itemsize: int = 4) -> int:
    """Rough peak of the grid_sample path for forward+backward: the sampled values ``[B*M, D, Q, L*P]`` are kept
    for backward and their gradient and the weighted product are as large again."""
    return 3 * p.batch * p.heads * p.head_dim * p.queries * len(p.shapes) * p.points * itemsize


def worker(shape: str, backend: str, dtype: str, device_name: str, repeats: int, budget_s: float) -> dict:
    """One (shape, backend) measurement; runs in its own process."""
    device = torch.device(device_name)
    problem = SHAPES[shape]
    inputs = random_inputs(problem, dtype=DTYPES[dtype], device=device, seed=0, requires_grad=True)
    leaves = (inputs["value"], inputs["sampling_locations"], inputs["attention_weights"])

    def fwd():
        return multi_scale_deformable_attn(**inputs, backend=backend)

    def fwd_bwd():
        out = fwd()
        return torch.autograd.grad(out, leaves, upstream)

    upstream = torch.randn(
        problem.batch, problem.queries, problem.heads * problem.head_dim, device=device
    ).to(DTYPES[dtype])
    try:
        # warm-up on the full problem (numba / Triton compilation, allocator pools, first-touch pages)
        fwd_bwd()
        with PeakMemory(device) as m_fwd:
            out = fwd()
        del out
        with PeakMemory(device) as m_bwd:
            grads = fwd_bwd()
        del grads
        fwd_ms = timed_ms(lambda: fwd(), device, repeats, budget_s, stat="median")
        bwd_ms = timed_ms(fwd_bwd, device, repeats, budget_s, stat="median")
    except torch.OutOfMemoryError:
        return {"shape": shape, "backend": backend, "oom": True}
    return {
        "shape": shape,
        "backend": backend,
        "fwd_ms": fwd_ms,
        "fwd_bwd_ms": bwd_ms,
        "fwd_mib": m_fwd.peak_mib,
        "fwd_bwd_mib": m_bwd.peak_mib,
    }


def _run_case(shape: str, backend: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", shape, backend, "--dtype", args.dtype, "--device", args.device,
           "--repeats", str(args.repeats), "--budget-s", str(args.budget_s)]  # fmt: skip
    # Fixed glibc mmap threshold: every large buffer is its own mmap, returned on free, so RSS follows
    # live memory (glibc's adaptive threshold would otherwise recycle warm-up buffers and hide allocations).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"shape": shape, "backend": backend, "error": tail[0][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fits(problem: Problem, device: torch.device) -> tuple[bool, str]:
    need = reference_bytes(problem)
    if device.type == "cuda":
        return True, ""  # run it; reference OOM is a result
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.4 * avail:
        return False, f"reference needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"
    return True, ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help="comma-separated subset of " + ", ".join(SHAPES)
    )
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--budget-s", type=float, default=4.0, help="stop timing a case after this many seconds"
    )
    parser.add_argument("--worker", nargs=2, metavar=("SHAPE", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(*args.worker, args.dtype, args.device, args.repeats, args.budget_s)
        print(json.dumps(result))
        return

    device = torch.device(args.device)
    backends = ["reference", "triton"] if device.type == "cuda" else ["reference", "cpu"]
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"deformable attention, {args.dtype}, {name}; M=8 heads, D=32; median of <= {args.repeats} runs")
    header = (
        f"{'shape':<11} {'backend':<9} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd MiB':>9} {'f+b MiB':>9} "
        f"{'speed f+b':>10} {'mem f+b':>8}"
    )
    print(header)
    print("-" * len(header))
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"--shapes: unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
        ok, why = _fits(SHAPES[shape], device)
        if not ok:
            print(f"{shape:<11} skipped: {why}")
            continue
        ref = None
        for backend in backends:
            r = _run_case(shape, backend, args)
            if "error" in r or r.get("oom"):
                print(f"{shape:<11} {backend:<9} {'OOM' if r.get('oom') else 'error: ' + r['error']}")
                continue
            if backend == "reference":
                ref = r
            speed = f"{ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x" if ref else "-"
            mem = f"{ref['fwd_bwd_mib'] / max(r['fwd_bwd_mib'], 1e-3):.1f}x" if ref else "-"
            print(
                f"{shape:<11} {backend:<9} {r['fwd_ms']:>9.2f} {r['fwd_bwd_ms']:>11.2f} {r['fwd_mib']:>9.1f} "
                f"{r['fwd_bwd_mib']:>9.1f} {speed:>10} {mem:>8}"
            )
    print("speed/mem: reference / backend for forward+backward (higher is better), same run")


if __name__ == "__main__":
    main()
