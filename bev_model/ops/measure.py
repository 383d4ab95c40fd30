"""Time and peak memory of an op, for the op benchmarks (``benchmarks/bench_deform_attn.py``,
``benchmarks/bench_bev_pool.py``): one meter, so every table measures the same way."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory of a ``with`` block above its start, in MiB (``.peak_mib``): on CPU the RSS high-water mark
    (reset through ``/proc/self/clear_refs``), on CUDA the caching allocator's peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.peak_mib = (_rss_kib("VmHWM") * 1024 - self.base) / 2**20


def timed_ms(fn: Callable[[], object], device: torch.device, repeats: int, budget_s: float,
             stat: str = "median") -> float:
    """Wall time (ms) of ``fn`` over up to ``repeats`` runs (at least 2), stopping early past ``budget_s``.

    ``stat``: ``median``, or ``min`` (on a shared machine the other tenants' load only ever adds time).
    """
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() - start < budget_s):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return min(times) if stat == "min" else statistics.median(times)
