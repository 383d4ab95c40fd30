"""``python -m shards synth|build|verify|info`` (see docs/DESIGN.md, Shards)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH (e.g. 640x360), got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shards", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write a synthetic nuScenes-format dataroot")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--version", default="v1.0-mini", help="v1.0-mini | v1.0-trainval | v1.0-test")
    s.add_argument("--scenes", type=int, default=None, help="first N scenes of each split list (default: all)")
    s.add_argument("--frames-per-scene", type=int, default=20)
    s.add_argument("--image-size", type=_size, default=(640, 360), help="WxH (default 640x360)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--lidar", action="store_true", help="also write samples/LIDAR_TOP/*.pcd.bin")

    b = sub.add_parser("build", help="build shards of one split from a nuScenes dataroot")
    b.add_argument("--dataroot", type=Path, required=True)
    b.add_argument("--version", required=True)
    b.add_argument("--split", required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--clip-frames", type=int, default=8)
    b.add_argument("--max-shard-mb", type=float, default=256.0)
    b.add_argument("--resize", type=_size, default=None, help="WxH: re-encode images at this size")
    b.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality with --resize")
    b.add_argument("--lidar", action="store_true", help="add {key}.lidar.npy (float32 N x 4, ego frame)")
    b.add_argument("--workers", type=int, default=1, help="shards written in parallel (threads)")
    b.add_argument("--processes", action="store_true", help="use worker processes instead of threads")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--skip-missing", action="store_true", help="skip samples whose files are missing")

    v = sub.add_parser("verify", help="check a shard directory (checksums, members, sidecar rows)")
    v.add_argument("out", type=Path)
    v.add_argument("--deep", action="store_true", help="also decode every JPEG and point cloud")

    i = sub.add_parser("info", help="summarise a shard directory")
    i.add_argument("out", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from shards.errors import BuildError, ShardFormatError
    from shards.synth import SynthError
    from shards.typed_config import ConfigError

    try:
        if args.cmd == "synth":
            from shards.synth import synthesize

            root = synthesize(args.out, version=args.version, scenes=args.scenes,
                              frames_per_scene=args.frames_per_scene, image_size=args.image_size, seed=args.seed,
                              lidar=args.lidar)
            print(f"wrote {root}")
        elif args.cmd == "build":
            from shards.build import build_shards

            m = build_shards(args.dataroot, args.version, args.split, args.out, clip_frames=args.clip_frames,
                             max_shard_mb=args.max_shard_mb, resize=args.resize, jpeg_quality=args.jpeg_quality,
                             lidar=args.lidar, workers=args.workers, overwrite=args.overwrite,
                             skip_missing=args.skip_missing, processes=args.processes)
            print(f"wrote {m.num_shards} shards, {m.num_samples} samples, {m.num_clips} clips "
                  f"({m.bytes / 1e6:.1f} MB) to {args.out}"
                  + (f"; skipped {len(m.skipped)} samples with missing files" if m.skipped else ""))
        elif args.cmd == "verify":
            from shards.verify import verify_shards

            problems = verify_shards(args.out, deep=args.deep, progress=True)
            for p in problems:
                print(p)
            if problems:
                print(f"{len(problems)} problem(s) in {args.out}", file=sys.stderr)
                return 1
            print(f"{args.out}: OK")
        elif args.cmd == "info":
            from shards.info import format_info, shard_info

            print(format_info(shard_info(args.out)))
    except (BuildError, SynthError, ShardFormatError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
