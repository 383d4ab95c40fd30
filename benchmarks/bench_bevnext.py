"""A BEVNeXt tiny training step against a BEVFormer v2 tiny step at the same image size, in the same run.

Cases (one process, steps interleaved round-robin so a busy machine slows all alike; median per case):

* ``bevformer_v2 tiny``: the baseline (preset ``tiny``, single frame, the same synthetic batch);
* ``bevnext_tiny crf=off|faithful|active``: the three CRF settings of ``model.depth.crf``.

A step is ``forward_train`` + ``backward`` (no optimizer). The ratio column is the case's time / the baseline's
(> 1: slower than BEVFormer v2 tiny). Also printed: parameters and the share of a BEVNeXt step spent in the CRF.

    python benchmarks/bench_bevnext.py [--steps 3] [--image 96 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(preset: str, **over):
    import torch

    from bev_model import build_model, model_config_from_dict

    torch.manual_seed(0)
    return build_model(model_config_from_dict({"preset": preset, **over})).train()


def step(model, batch, device: str) -> float:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.forward_train(batch)
    out["loss"].backward()
    model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--image", type=int, nargs=2, default=(96, 256))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    import torch

    from bev_model.bevnext.synthetic import with_points
    from bev_model.synthetic import make_batch

    hw = tuple(args.image)
    batch = with_points(make_batch(1, 1, hw, num_boxes=10, bev_aug=True, seed=0)).to(args.device)
    cases = {"bevformer_v2 tiny (baseline)": build("tiny", temporal={"offsets": [0]})}
    for crf in ("off", "faithful", "active"):
        cases[f"bevnext_tiny crf={crf}"] = build("bevnext_tiny", depth={"crf": crf})
    cases = {k: m.to(args.device) for k, m in cases.items()}
    for m in cases.values():  # warm-up (numba JIT of the deformable attention, allocator)
        step(m, batch, args.device)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.steps):
        for k, m in cases.items():
            times[k].append(step(m, batch, args.device))
    # CRF share: the mean-field iterations alone on this batch's depth logits shape
    nx = cases["bevnext_tiny crf=faithful"]
    with torch.no_grad():
        imgs = batch.imgs[:, 0]
        feat = nx.neck(nx.backbone((imgs.flatten(0, 1) - nx.mean) / nx.std))[0]
    logits = torch.randn(feat.shape[0], nx.cfg.depth.num_bins, *feat.shape[-2:], device=args.device, requires_grad=True)
    colour = torch.rand(feat.shape[0], 3, *feat.shape[-2:], device=args.device)
    crf_t = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        nx.crf(logits, colour).sum().backward()
        crf_t.append(time.perf_counter() - t0)
    base = statistics.median(times["bevformer_v2 tiny (baseline)"])
    print(f"device {args.device}, image {hw[0]}x{hw[1]}, 6 cameras, batch 1, {args.steps} steps (median), "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'case':34s} {'params M':>9s} {'step s':>8s} {'ratio':>7s}")
    for k, m in cases.items():
        t = statistics.median(times[k])
        n = sum(p.numel() for p in m.parameters()) / 1e6
        print(f"{k:34s} {n:9.2f} {t:8.3f} {t / base:7.2f}")
    t_nx = statistics.median(times["bevnext_tiny crf=faithful"])
    print(f"CRF (20 mean-field iterations, fwd+bwd) {statistics.median(crf_t):.3f} s = "
          f"{statistics.median(crf_t) / t_nx:.1%} of a bevnext_tiny crf=faithful step")


if __name__ == "__main__":
    main()
