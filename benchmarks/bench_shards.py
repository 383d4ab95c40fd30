"""Shard build throughput against the I/O ceiling of plainly copying the same source files.

    python benchmarks/bench_shards.py [--out bench_out/shards] [--scenes 3] [--frames 10]
        [--image-size 1600x900] [--repeats 3] [--workers 1]

Synthesises a v1.0-trainval dataroot (first ``--scenes`` train and val scenes, cached
under ``--out``), then, in the same run and on the same (page-cached) files:

* copy ceiling: ``shutil.copyfile`` of every camera JPEG of the ``train`` split;
* build, passthrough: ``build_shards`` (JPEG bytes unchanged); the write phase (tar +
  sidecar + index + checksums) is compared with the copy, the end-to-end time (table
  load and planning included) is printed beside it;
* build, ``--resize`` to half size (re-encode), for reference.

Each figure is the best of ``--repeats`` runs. Target: passthrough >= 50 % of the copy ceiling.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.build import build_shards  # noqa: E402
from shards.synth import synthesize  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _camera_files(dataroot: Path, version: str, split: str) -> list[Path]:
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.splits import create_splits_scenes

    from shards.conventions import CAMERAS

    nusc = NuScenes(version, str(dataroot), verbose=False)
    names = set(create_splits_scenes()[split])
    files = []
    for sample in nusc.sample:
        if nusc.get("scene", sample["scene_token"])["name"] in names:
            files += [dataroot / nusc.get("sample_data", sample["data"][c])["filename"] for c in CAMERAS]
    return files


def _copy(files: list[Path], dst: Path) -> float:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    t = time.perf_counter()
    for i, f in enumerate(files):
        shutil.copyfile(f, dst / f"{i:06d}.jpg")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/shards"))
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--image-size", type=_size, default=(1600, 900))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    version, split = "v1.0-trainval", "train"
    w, h = args.image_size
    root = args.out / f"dataroot_{args.scenes}x{args.frames}_{w}x{h}"
    if not (root / version / "sample.json").is_file():
        print(f"synthesising {root} ...", flush=True)
        synthesize(root, version, scenes=args.scenes, frames_per_scene=args.frames, image_size=(w, h), seed=0)
    files = _camera_files(root, version, split)
    n_bytes = sum(f.stat().st_size for f in files)
    n_samples = len(files) // 6
    mb = n_bytes / 1e6
    print(f"source: {n_samples} samples, {len(files)} JPEGs ({w}x{h}), {mb:.1f} MB, split {split!r}")

    copy_s = min(_copy(files, args.out / "copy") for _ in range(args.repeats))
    write_s, total_s = [], []
    for _ in range(args.repeats):
        t = {}
        t0 = time.perf_counter()
        build_shards(root, version, split, args.out / "pass", clip_frames=8, max_shard_mb=64, workers=args.workers,
                     overwrite=True, progress=False, timings=t)
        total_s.append(time.perf_counter() - t0)
        write_s.append(t["write_s"])
    t = {}
    build_shards(root, version, split, args.out / "resize", clip_frames=8, max_shard_mb=64, resize=(w // 2, h // 2),
                 workers=args.workers, overwrite=True, progress=False, timings=t)
    resize_s = t["write_s"]

    def row(name: str, secs: float) -> str:
        return (f"{name:<44} {secs * 1e3:8.1f} ms  {n_samples / secs:9.1f} samples/s  {mb / secs:8.1f} MB/s  "
                f"ratio {copy_s / secs:5.2f}")

    print(row("copy ceiling (shutil.copyfile, same files)", copy_s))
    print(row(f"build passthrough, write phase (workers={args.workers})", min(write_s)))
    print(row("build passthrough, end to end (load+plan)", min(total_s)))
    print(row(f"build --resize {w // 2}x{h // 2}, write phase", resize_s))
    ratio = copy_s / min(write_s)
    print(f"passthrough / copy ceiling = {ratio:.2f} (target >= 0.50): {'PASS' if ratio >= 0.5 else 'BELOW TARGET'}")
    shutil.rmtree(args.out / "copy", ignore_errors=True)


if __name__ == "__main__":
    main()
