"""``make demo``: the main job end to end on the synthetic world, on CPU (on one GPU where torch sees one).

Stages (each prints a header; the tools print their own progress bars):

1. ``python -m shards synth``   a nuScenes-format world (v1.0-mini scene names; every scene laid out
   from its own seed, so val scenes share nothing with train scenes);
2. ``python -m shards build``   train and val shards (+ ``verify``);
3. ``torchrun -m train``        the ``tiny`` preset under DeepSpeed on 2 CPU ranks (gloo), fixed budget
   (on a GPU: one rank, batch 2, ``--gpu-steps``);
4. loopback HTTP server         ``python -m http.server`` on 127.0.0.1 serving the val shards;
5. ``python -m eval``           streaming evaluation of the trained checkpoint from that server,
   plus two baselines scored the same way: the untrained model and "constant boxes";
6. a summary: the three mAPs side by side, the metrics table, the paths of the pictures.

A second run reuses every stage whose output is complete (delete ``--out`` to start over).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from train.workflow import (
    PY,
    ROOT,
    config_steps,
    constant_baseline,
    evaluate,
    final_checkpoint,
    header,
    make_shards,
    make_world,
    run,
    run_budget,
    shard_size_mb,
    train_command,
)

T0 = time.time()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    """A real ``python -m http.server`` on loopback serving ``root``; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the loopback HTTP server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


GPU_STEPS = 1800
"""Training budget on a GPU: the GPU learning curve in the README (about 5 minutes on one H100, mAP 0.10)."""
GPU_WORKERS = 4
"""Loader worker processes of the GPU run (training and evaluation): the CPU decoder feeds the GPU."""
GPU_TRAIN = ["data.device=cuda", "data.batch_size=2", f"data.num_workers={GPU_WORKERS}"]
"""On a GPU: one rank with batch 2, as many samples per step as the CPU demo's 2 ranks x 1."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "demo_out")
    ap.add_argument("--frames-per-scene", type=int, default=30)
    ap.add_argument("--image-size", default="640x360")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None,
                    help="training budget in optimizer steps (default: the config's schedule.total_steps)")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--nproc", type=int, default=2, help="CPU ranks (on a GPU the demo trains on one)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where to train and evaluate (auto: the GPU when torch sees one)")
    ap.add_argument("--gpu-steps", type=int, default=GPU_STEPS,
                    help="training budget on a GPU when --steps is not given")
    args = ap.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps is None:
        args.steps = args.gpu_steps if args.device == "cuda" else config_steps(ROOT / args.config)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    n = 6

    header(1, n, "synthetic nuScenes-format world")
    world = out / "world"
    make_world(world, args.frames_per_scene, args.image_size, args.seed)

    gpu = args.device == "cuda"
    nproc = 1 if gpu else args.nproc
    header(2, n, "shards (train + val)")
    shard_dirs = make_shards(world, out / "shards", shard_size_mb(world, nproc, GPU_WORKERS if gpu else 1))
    run([PY, "-m", "shards", "info", shard_dirs["mini_train"]])

    train_extra, eval_extra = ((GPU_TRAIN, ["--device", "cuda", "--num-workers", str(GPU_WORKERS)]) if gpu
                               else ([], ["--device", "cpu"]))
    where = "1 GPU (batch 2)" if gpu else f"{nproc} CPU ranks"
    header(3, n, f"train tiny, DeepSpeed ZeRO-2 on {where}, {args.steps} steps")
    run_dir = out / "run"
    final = final_checkpoint(run_dir, args.steps)
    budget = run_budget(run_dir)
    if budget is not None and budget != args.steps:  # its step_{steps} would be a mid-run checkpoint
        print(f"  {run_dir} holds a run of {budget} steps; starting over for {args.steps}")
        shutil.rmtree(run_dir)
    if (final / "complete").is_file():
        print(f"  reusing {final}")
    else:
        # CPU ranks must not see a GPU: train.dist picks DeepSpeed's CUDA accelerator whenever torch sees one
        env = None if gpu else {"CUDA_VISIBLE_DEVICES": ""}
        run(train_command(args.config, run_dir, shard_dirs["mini_train"], args.steps, nproc, *train_extra), env=env)

    header(4, n, "loopback HTTP server for the val shards")
    results = {}
    with http_server(shard_dirs["mini_val"].parent) as base:
        url = f"{base}/mini_val/manifest.json"
        print(f"  serving {shard_dirs['mini_val']} at {url}")

        header(5, n, "streaming evaluation (trained, untrained, constant boxes)")
        const_json = constant_baseline(shard_dirs["mini_train"], url, out / "eval" / "constant_boxes.json")
        common = ["--shards", url, "--curves", "classes", *eval_extra]
        for name, extra in (
            # pictures: the model's best 20 boxes per sample, whatever their score (a short CPU budget
            # leaves every score low, and a fixed threshold would draw nothing)
            ("trained", ["--checkpoint", final, "--score-thr", "0", "--max-drawn", "20"]),
            ("untrained", ["--checkpoint", final, "--random-init", "--pictures", "0", "--curves", "none"]),
            ("constant", ["--predictions", const_json, "--pictures", "0", "--curves", "none"]),
        ):
            results[name] = evaluate(out / "eval" / name, *common, *extra).summary

    header(6, n, "summary")
    print(f"{'model':<12}{'mAP':>8}{'NDS':>8}{'car AP':>9}")
    for name, m in results.items():
        car = m.get("mean_dist_aps", {}).get("car", float("nan"))
        print(f"{name:<12}{m['mean_ap']:>8.4f}{m['nd_score']:>8.4f}{car:>9.4f}")
    pics = sorted((out / "eval" / "trained").rglob("*.png"))
    print("\npictures:")
    for p in pics:
        print(f"  {p}")
    print(f"\ndemo finished in {time.time() - T0:.0f} s; outputs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
