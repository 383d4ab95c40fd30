"""How good is a BEVNeXt checkpoint's depth where it matters? Arg-max bin against the LiDAR bin, per range,
on patches whose LiDAR points lie on GT objects and on the rest.

    python scripts/bevnext_depth_quality.py --checkpoint RUN/checkpoints/step_00001000 \
        --shards SHARDS_LIDAR/mini_train --batches 4

Batches come from ``--config`` (default: BEVNeXt tiny stage 1, its image and BEV augmentation on), one sample
each, on the CPU; the model runs in eval mode with the checkpoint's EMA weights when it has them. Targets are
:func:`bev_model.bevnext.depth.depth_targets` (the nearest LiDAR point per stride x stride patch); a point is
"on an object" when the devkit's ``points_in_box`` puts it inside a GT box.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from bev_model.bevnext.depth import depth_targets
from eval.inference import load_model
from pipeline.loader import build_loader
from shards.contracts.checkpoint import read_weights
from train.config import load_train_config

RANGES = ((0, 10), (10, 25), (25, 1000))
"""Bin-index ranges (1 m bins from 1 m in the tiny preset: about 1-11 m, 11-26 m, beyond)."""


def on_objects(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``points [P, 3]``, ``boxes [G, >=7]`` (x y z l w h yaw, ego frame) -> ``[P]`` bool: inside any box."""
    inside = np.zeros(points.shape[0], dtype=bool)
    xyz = points.T.double().numpy()
    for b in boxes.double().tolist():
        box = Box(b[:3], [b[4], b[3], b[5]], Quaternion(axis=[0, 0, 1], angle=b[6]))
        inside |= points_in_box(box, xyz)
    return torch.from_numpy(inside)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="checkpoint dir (config.yaml + weights)")
    ap.add_argument("--shards", type=Path, required=True, help="shards built with --lidar")
    ap.add_argument("--config", default="configs/bevnext_tiny_stage1.yaml", help="training config for the loader")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    model, _ = load_model(args.checkpoint)
    ema = args.checkpoint / "weights_ema_fp32.pt"
    if ema.is_file():
        model.load_state_dict(read_weights(ema))
    model.eval()
    cfg = load_train_config(args.config, [f"data.shards={args.shards}", "data.num_workers=0"])
    data = dataclasses.replace(cfg.data, rank=0, world_size=1, device="cpu", seed=args.seed)
    batches = iter(build_loader(data))
    dc = model.cfg.depth
    rows: dict[str, list[torch.Tensor]] = {"on objects": [], "background": []}
    for _ in range(args.batches):
        b = next(batches)
        with torch.no_grad():
            depth, _ = model.depth_and_context(b.imgs[:, -1], model._cams(b, -1))  # [N, D, h, w]
        boxes, _, _ = b.detection_targets("cpu")
        pts = b.points[0][:, :3].float()
        obj = on_objects(pts, boxes[0])
        for name, sel in (("on objects", pts[obj]), ("background", pts[~obj])):
            tgt = depth_targets([sel], b.ego2img[:, -1].float(), tuple(b.imgs.shape[-2:]), dc).flatten(0, 1)
            fg = tgt >= 0
            p, t = depth.permute(0, 2, 3, 1)[fg], tgt[fg]
            rows[name].append(torch.stack([t.float(), (p.argmax(1) - t).abs().float(), p[torch.arange(len(t)), t]], 1))
    print(f"{'patches':<12}{'bins':>9}{'n':>7}{'within 1 bin':>14}{'within 3':>10}{'p(true bin)':>13}")
    for name, parts in rows.items():
        r = torch.cat(parts)
        for lo, hi in RANGES:
            x = r[(r[:, 0] >= lo) & (r[:, 0] < hi)]
            if len(x):
                print(f"{name:<12}{f'{lo}-{min(hi, dc.num_bins)}':>9}{len(x):>7}{float((x[:, 1] <= 1).float().mean()):>14.2f}"
                      f"{float((x[:, 1] <= 3).float().mean()):>10.2f}{float(x[:, 2].mean()):>13.3f}")


if __name__ == "__main__":
    main()
