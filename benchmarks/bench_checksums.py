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
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import LoaderConfig, build_loader  # noqa: E402
from tests.servers import http_server  # noqa: E402

SPLIT = "mini_train"
VERSION = "v1.0-mini"


def prepare(work: Path, scenes: int, frames: int) -> Path:
    """Synthetic 1600x900 dataroot and its shards (cached); returns the shard directory."""
    from shards.build import build_shards
    from shards.schema import SCHEMA_VERSION
    from shards.synth import synthesize

    root = work / "synth1600"
    done = root / ".complete"
    if not done.exists() or done.read_text() != f"{scenes} {frames}":
        if root.exists():
            shutil.rmtree(root)
        print(f"synthesizing {scenes} scene(s) per split x {frames} frames at 1600x900 ...", flush=True)
        synthesize(root, VERSION, scenes=scenes, frames_per_scene=frames, image_size=(1600, 900), seed=0)
        done.write_text(f"{scenes} {frames}")
    out = work / "shards" / SPLIT
    man = out / "manifest.json"
    if not man.exists() or json.loads(man.read_text()).get("schema_version") != SCHEMA_VERSION:
        if out.exists():
            shutil.rmtree(out)
        build_shards(root, VERSION, SPLIT, out, clip_frames=frames, max_shard_mb=8.0, progress=False)
    return out


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
