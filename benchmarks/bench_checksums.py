"""Cost of ``verify_checksums``: streaming loader throughput over HTTP with and without it.

    python benchmarks/bench_checksums.py            # synthetic 1600x900 world, served on loopback

Synthetic nuScenes-format scenes at 1600x900 (``shards.synth``) are built into shards (cached
under ``--work``) and served by the loopback HTTP server of the tests. The same eval loader
(every frame once, T=1, 320x800 output, CPU decoder) reads them through the manifest with
``verify_checksums`` off and on (the tar spooled and hashed before its samples are used, the
sidecar hashed), alternating, ``--repeats`` times each; the best time of each is compared.
Printed: frames/s of both and the ratio (on / off), and the raw sha256 rate for scale.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import LoaderConfig, build_loader  # noqa: E402
from tests.servers import http_server  # noqa: E402


def prepare(work: Path, scenes: int, frames: int) -> Path:
    """The input benchmark's synthetic 1600x900 world, in 8 MB shards (cached under ``work``)."""
    from benchmarks.bench_pipeline import prepare as prepare_world

    return prepare_world(work, scenes, frames, max_shard_mb=8.0)[1]


def run_once(url: str, verify: bool, workers: int) -> tuple[float, int]:
    cfg = LoaderConfig(shards=url, mode="eval", batch_size=1, offsets=(0,), image_size=(320, 800),
                       num_workers=workers, verify_checksums=verify)
    loader = build_loader(cfg)
    t0 = time.perf_counter()
    n = sum(raw.batch_size for raw in loader.host_batches())
    dt = time.perf_counter() - t0
    if sum(e for e, _ in loader.error_stats.values()):
        raise SystemExit("bad samples while benchmarking")
    return dt, n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench_out" / "bench_checksums")
    ap.add_argument("--scenes", type=int, default=2, help="synthetic scenes per split")
    ap.add_argument("--frames", type=int, default=8, help="keyframes per scene")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    shards = prepare(args.work, args.scenes, args.frames)
    tar_bytes = sum(p.stat().st_size for p in shards.glob("*.tar"))
    data = b"".join(p.read_bytes() for p in shards.glob("*.tar"))
    t0 = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    sha_rate = len(data) / (time.perf_counter() - t0) / 2**20
    best = {False: float("inf"), True: float("inf")}
    frames = 0
    with http_server(shards) as base:
        url = f"{base}/manifest.json"
        run_once(url, False, args.workers)  # warm-up (page cache, imports)
        for _ in range(args.repeats):
            for verify in (False, True):
                dt, frames = run_once(url, verify, args.workers)
                best[verify] = min(best[verify], dt)
    off, on = frames / best[False], frames / best[True]
    print(f"{frames} frames (6 cameras, 1600x900 JPEG -> 320x800), {tar_bytes / 2**20:.1f} MiB of tars over "
          f"HTTP loopback, {args.workers} worker(s), best of {args.repeats}")
    print(f"verify_checksums off: {off:7.2f} frames/s")
    print(f"verify_checksums on : {on:7.2f} frames/s")
    print(f"ratio on/off        : {on / off:.3f}   (sha256 alone: {sha_rate:.0f} MiB/s)")


if __name__ == "__main__":
    main()
