"""Overhead of BEVDistill over the student alone, measured in the same run (ratios).

    python benchmarks/bench_distill.py                       # tiny student + lidar_tiny teacher, CPU, batch 1
    python benchmarks/bench_distill.py --device cuda --steps 20 --batch 2

Training step (forward + backward + AdamW step) of the plain ``tiny`` student and of ``distill_tiny`` (same student,
every term on, a randomly initialised ``lidar_tiny`` teacher: its cost does not depend on its weights), timed
alternately; peak memory on CUDA (``max_memory_allocated``); on CPU each case trains again alone in a fresh
process, which reports its peak resident memory (``VmHWM``, reset after the build) above its resident memory
after the build: what training steps add (activations, gradients, optimizer state, the teacher's forward); the
trainable-parameter counts; and inference (``predict``) of the distillation model against the plain student
loaded with its exported weights.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import numpy as np
import torch

from bev_model import build_model, model_config_from_dict
from bev_model.distill.model import student_state_dict
from bev_model.lidar.synthetic import box_points
from bev_model.ops.measure import PeakMemory
from bev_model.synthetic import make_batch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _build(args: argparse.Namespace, cases: tuple[str, ...] = ("student", "distill")) -> tuple[dict, object]:
    """({case: model} for the plain student and/or the distillation model, batch with points) on ``args.device``,
    each model seeded alike."""
    h, w = (int(v) for v in args.image_size.split("x"))
    dev = args.device
    student_section = {"preset": args.student}
    sections = {"student": student_section,
                "distill": {"preset": "distill_tiny", "student": student_section, "teacher": {"random_init": True}}}
    models = {}
    for case in cases:
        torch.manual_seed(0)
        models[case] = build_model(model_config_from_dict(sections[case])).to(dev)
    T = len(model_config_from_dict(student_section).temporal.offsets)
    batch = make_batch(batch_size=args.batch, frames=T, image_hw=(h, w), num_boxes=10, bev_aug=True, seed=0)
    rng = np.random.default_rng(0)
    batch.points = [box_points(b, rng, per_box=300, ground=20000) for b in batch.gt_boxes]
    return models, batch.to(dev)


def _train_peak_rss(args: argparse.Namespace, case: str, out: mp.Queue) -> None:
    """Child process: build, then train ``case`` alone; put the MiB its steps add over the built model on ``out``
    (``bev_model.ops.measure.PeakMemory``: the RSS high-water mark above the block's start)."""
    models, batch = _build(args, (case,))
    model = models[case]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    with PeakMemory(torch.device("cpu")) as mem:
        for _ in range(args.warmup + args.steps):
            loss = model.forward_train(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    out.put(mem.peak_mib)


def cpu_step_memory(args: argparse.Namespace) -> dict[str, float]:
    """Per case, MiB of resident memory a training step adds over the built model (fresh process each)."""
    ctx = mp.get_context("spawn")
    added = {}
    for case in ("student", "distill"):
        q = ctx.Queue()
        proc = ctx.Process(target=_train_peak_rss, args=(args, case, q))
        proc.start()
        added[case] = q.get()
        proc.join()
    return added


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--image-size", default="128x352")
    ap.add_argument("--student", default="tiny", help="student preset")
    args = ap.parse_args()
    h, w = (int(v) for v in args.image_size.split("x"))
    dev = args.device
    models, batch = _build(args)
    distill = models["distill"]
    opts = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
            for name, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    peak: dict[str, float] = {}
    for i in range(args.warmup + args.steps):
        for name, m in models.items():
            m.train()
            if dev.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            _sync(dev)
            t0 = time.perf_counter()
            loss = m.forward_train(batch)["loss"]
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            _sync(dev)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            if dev.startswith("cuda"):
                peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**20)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"device {dev}, batch {args.batch}, images {h}x{w}, {args.steps} timed steps (median), student {args.student}")
    print(f"train step  student {ms['student']:.1f} ms   distill {ms['distill']:.1f} ms   ratio {ms['distill'] / ms['student']:.2f}")
    if peak:
        print(f"peak memory student {peak['student']:.0f} MiB   distill {peak['distill']:.0f} MiB   "
              f"ratio {peak['distill'] / peak['student']:.2f}")
    else:
        added = cpu_step_memory(args)
        print(f"step memory student +{added['student']:.0f} MiB   distill +{added['distill']:.0f} MiB   ratio "
              f"{added['distill'] / max(added['student'], 1e-9):.2f}   (peak RSS over the built model, fresh process each)")
    n = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in models.items()}
    nt = sum(p.numel() for p in distill._teacher[0].parameters())
    print(f"trainable params student {n['student']:,}   distill {n['distill']:,} (+{n['distill'] - n['student']:,} "
          f"distill.*; teacher {nt:,} frozen, outside the module tree)")
    # inference: the exported student is the plain student
    exported = build_model(distill.distill_cfg.student_config()).to(dev)
    exported.load_state_dict(student_state_dict(distill.state_dict()), strict=True)
    inf: dict[str, list[float]] = {"student": [], "distill": []}
    for i in range(args.warmup + args.steps):
        for name, m in (("student", exported.eval()), ("distill", distill.eval())):
            _sync(dev)
            t0 = time.perf_counter()
            m.predict(batch)
            _sync(dev)
            if i >= args.warmup:
                inf[name].append(time.perf_counter() - t0)
    mi = {k: 1000 * statistics.median(v) for k, v in inf.items()}
    print(f"predict     exported student {mi['student']:.1f} ms   distill model {mi['distill']:.1f} ms   "
          f"ratio {mi['distill'] / mi['student']:.2f}")


if __name__ == "__main__":
    main()
