"""How good is a BEVNeXt checkpoint's depth where it matters? Arg-max bin against the LiDAR bin, per range,
on patches whose LiDAR points lie on GT objects and on the rest (:mod:`eval.depth`).

    python scripts/bevnext_depth_quality.py --checkpoint RUN/checkpoints/step_00001000 \
        --shards SHARDS_LIDAR/mini_train --batches 4
    python scripts/bevnext_depth_quality.py --checkpoint RUN/checkpoints/step_00000200 \
        --shards SHARDS_LIDAR/mini_val --no-augment --batches 60

Batches come from ``--config`` (default: BEVNeXt tiny stage 1, its image and BEV augmentation on), one sample
each, on the CPU; ``--no-augment`` streams them as eval does instead (the checkpoint's image geometry, no
augmentation, shard order). The model runs in eval mode with the checkpoint's EMA weights when it has them.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from eval.depth import depth_quality, format_table
from eval.inference import eval_loader_config, load_model
from pipeline.loader import build_loader
from shards.contracts.checkpoint import EMA_WEIGHTS
from train.config import load_train_config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="checkpoint dir (config.yaml + weights)")
    ap.add_argument("--shards", type=Path, required=True, help="shards built with --lidar")
    ap.add_argument("--config", default="configs/bevnext_tiny_stage1.yaml", help="training config for the loader")
    ap.add_argument("--no-augment", action="store_true", help="stream as eval does (no augmentation, shard order)")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    ema = args.checkpoint / EMA_WEIGHTS
    model, run_cfg = load_model(ema if ema.is_file() else args.checkpoint)  # eval mode
    if args.no_augment:
        data = eval_loader_config(str(args.shards), run_cfg.get("data"), num_workers=0,
                                  overrides={"load_points": True})
    else:
        cfg = load_train_config(args.config, [f"data.shards={args.shards}", "data.num_workers=0"])
        data = dataclasses.replace(cfg.data, rank=0, world_size=1, device="cpu", seed=args.seed)
    print(format_table(depth_quality(model, build_loader(data), args.batches)))


if __name__ == "__main__":
    main()
