"""Which image backbone buys the most training steps on a CPU: forward+backward time per candidate.

The ``tiny`` preset's ResNet-18 is the baseline, measured in the same process; every other timm model
replaces it through ``model.backbone.name``. Two timings per candidate, one thread (one demo rank's
share of a 2-core machine), the same synthetic batch of 6 cameras:

* backbone: ``bev_model.backbone.Backbone`` alone, forward + backward of its three feature maps;
* whole model: ``BEVFormerV2.forward_train`` + backward of the full loss (the demo config's single frame).

Rounds run the candidates in turn (median per candidate), so a change of machine load hits all alike.
The ratio column is baseline time / candidate time (> 1: the candidate is faster).

    python benchmarks/bench_backbones.py [--image 96 256] [--rounds 3] [--names resnet18 regnetx_002 ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASELINE = "resnet18"
CANDIDATES = ("regnetx_002", "regnetx_004", "mobilenetv3_large_100", "resnet10t")


def _build(name: str, image_hw: tuple[int, int]):
    import torch

    from bev_model import build_model, get_preset
    from bev_model.synthetic import make_batch

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.temporal.offsets = (0,)
    cfg.backbone.name = name
    model = build_model(cfg).train()
    batch = make_batch(1, 1, image_hw, num_boxes=30, bev_aug=True, seed=0)
    params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    return model, batch, params


def _time_backbone(model, images) -> float:
    t0 = time.perf_counter()
    sum(f.float().mean() for f in model.backbone(images)).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _time_model(model, batch) -> float:
    t0 = time.perf_counter()
    model.forward_train(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=int, nargs=2, default=(96, 256), metavar=("H", "W"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--names", nargs="+", default=list(CANDIDATES), help=f"timm models to compare with {BASELINE}")
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before numba loads (the fused CPU attention kernel)
    import torch

    torch.set_num_threads(1)
    image_hw = tuple(args.image)
    names = [BASELINE] + [n for n in args.names if n != BASELINE]
    built = {n: _build(n, image_hw) for n in names}
    images = torch.rand(6, 3, *image_hw)  # the same 6 camera images for every candidate
    times: dict[str, dict[str, list[float]]] = {n: {"backbone": [], "model": []} for n in names}
    for model, batch, _ in built.values():  # warm-up (numba JIT, allocator)
        _time_backbone(model, images)
        _time_model(model, batch)
    for _ in range(args.rounds):
        for n, (model, batch, _) in built.items():
            times[n]["backbone"].append(_time_backbone(model, images))
            times[n]["model"].append(_time_model(model, batch))
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    base = med[BASELINE]
    print(f"tiny preset, 1 thread, 6 cameras x {image_hw[0]}x{image_hw[1]}, median of {args.rounds} rounds")
    print(f"{'backbone':<24}{'params M':>9}{'backbone s':>12}{'ratio':>8}{'model s':>10}{'ratio':>8}")
    for n in names:
        m = med[n]
        tag = "(baseline)" if n == BASELINE else ""
        print(f"{n:<24}{built[n][2]:>9.1f}{m['backbone']:>12.3f}{base['backbone'] / m['backbone']:>7.2f}x"
              f"{m['model']:>10.3f}{base['model'] / m['model']:>7.2f}x {tag}", flush=True)


if __name__ == "__main__":
    main()
