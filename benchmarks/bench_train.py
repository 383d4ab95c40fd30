"""Training benchmark on CPU with 2 ranks (torchrun, gloo, DeepSpeed's CPU accelerator).

1. Per-rank memory of the ``large`` preset's parameters + gradients + optimizer states under ZeRO
   stage 0, 1, 2 and 3 (fp32 weights, torch AdamW; a tiny 1-frame input). Measured on each rank
   after the backward of the second step (Adam states exist, gradients are alive): the bytes of
   every live tensor storage, split into module parameters, fp32 master copies, optimizer states and
   the rest (gradients, DeepSpeed's reduction buckets); plus the process's peak RSS. Printed side by
   side with stage 0 as the baseline (ratio).
2. Steps/s of the ``tiny`` preset with the loader's wait fraction: background loader workers
   (``data.num_workers=1``) beside synchronous loading in the training process
   (``data.num_workers=0``, the baseline), same run, same shards.
3. Steps/s of the demo config (``configs/demo.yaml``) with each rank's numba pool at numba's default
   (one thread per core, the baseline) beside ``train.dist.share_cpu_threads`` (the cores divided
   among the local ranks), same run, same shards.
4. Steps/s of the demo config with Group-DETR (``model.head.group_detr=4``: four query groups in the
   decoder, each matched on its own) beside the plain one-to-one head (the baseline), same run.

    python benchmarks/bench_train.py                  # all parts
    python benchmarks/bench_train.py --part groups --steps 12 --shards demo_out/shards/mini_train
    python benchmarks/bench_train.py --part threads --steps 8 --shards demo_out/shards/mini_train
    python benchmarks/bench_train.py --part memory --backbone convnext_base   # smaller large-class model
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY_INPUT = ["data.image_size=[32,88]", "data.offsets=[0]", "model.temporal.offsets=[0]", "data.num_workers=0",
              "data.decoder=cpu", "data.device=cpu", "data.augment=false"]
# CPU time: a 50x50 BEV instead of 200x200 (2.5 % fewer parameters: the BEV query embedding), and
# the same DeepSpeed bucket sizes for every stage (they are buffers of a fixed size, not per parameter)
MEMORY_RUN = ["model.encoder.bev_h=50", "model.encoder.bev_w=50", "deepspeed.reduce_bucket_size=50000000",
              "deepspeed.allgather_bucket_size=50000000", "deepspeed.stage3_prefetch_bucket_size=50000000"]
SAMPLES_IN_BACKWARD = 12


# --------------------------------------------------------------------------------------------- helpers
def _env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(args: list[str], timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=ROOT, env={**_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _timed_run(shards: Path, out: Path, steps: int, config: str, extra: list[str], env: dict[str, str] | None,
               what: str) -> dict[str, float]:
    """Train ``steps`` steps on 2 CPU ranks; steps/s, samples/s and data-wait fraction (step 1 excluded)."""
    proc = _torchrun(["-m", "train", "--config", config, f"data.shards={shards}", f"out_dir={out}",
                      f"schedule.total_steps={steps}", "checkpoint.every_steps=0", "checkpoint.save_final=false",
                      "logging.progress=false", "logging.tensorboard=false", "logging.every_steps=1", *extra],
                     timeout=3600, env=env)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-6000:], file=sys.stderr)
        raise SystemExit(f"training run ({what}) failed")
    recs = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "event" not in r and r["step"] > 1]  # step 1: warm-up
    span = recs[-1]["time"] - recs[0]["time"]
    return {
        "steps_per_s": (len(recs) - 1) / span,
        "wait_frac": sum(r["data_wait_s"] for r in recs) / sum(r["data_wait_s"] + r["compute_s"] for r in recs),
        "samples_per_s": sum(r["samples_per_s"] for r in recs) / len(recs),
    }


def make_shards(base: Path) -> Path:
    """A small synthetic nuScenes world -> mini_train shards (as the tests build them)."""
    from shards.build import build_shards
    from shards.synth import synthesize

    root = base / "nuscenes"
    synthesize(root, "v1.0-mini", frames_per_scene=6, image_size=(320, 180), seed=0, lidar=False, progress=False)
    out = base / "mini_train"
    build_shards(root, "v1.0-mini", "mini_train", out, clip_frames=3, max_shard_mb=0.4, progress=False)
    return out


def _gib(n: float) -> str:
    return f"{n / 2**30:7.2f}"


# --------------------------------------------------------------------------------------------- memory worker
def live_tensor_bytes(engine, extra_tensors=(), params=()) -> dict[str, int]:
    """Bytes of every live tensor storage on this rank, by role (each storage counted once)."""
    import torch

    seen: set[int] = set()
    out = {"params": 0, "master_fp32": 0, "optimizer_states": 0, "grads": 0, "other": 0, "batch": 0}

    def add(t, cat: str) -> None:
        if t is None or not torch.is_tensor(t) or t.device.type == "meta":
            return
        st = t.untyped_storage()
        key = st.data_ptr()
        if st.nbytes() == 0 or key in seen:
            return
        seen.add(key)
        out[cat] += st.nbytes()

    base = getattr(engine, "basic_optimizer", None) or engine.optimizer
    for p in engine.module.parameters():
        add(p.ds_tensor if hasattr(p, "ds_tensor") else p.data, "params")
    for b in engine.module.buffers():
        add(b, "params")
    for g in base.param_groups:
        for p in g["params"]:
            add(p.data, "master_fp32")
    for state in base.state.values():
        for v in state.values():
            add(v, "optimizer_states")
    for t in extra_tensors:
        add(t, "batch")
    for p in params:
        add(p.grad, "grads")
    for g in base.param_groups:
        for p in g["params"]:
            add(p.grad, "grads")
    zero = engine.optimizer
    for buf in (getattr(zero, "averaged_gradients", None) or {}).values():  # ZeRO 1/2 gradient partitions
        for t in buf or []:
            add(t, "grads")
    add(getattr(zero, "grad_partitions_flat_buffer", None), "grads")  # ZeRO-3
    gc.collect()
    for obj in gc.get_objects():
        try:
            if torch.is_tensor(obj):
                add(obj, "other")
        except Exception:  # noqa: S112 - exotic objects in gc
            continue
    return out


def memory_worker(args: argparse.Namespace) -> None:
    import torch

    from train.config import load_train_config
    from train.dist import init_distributed
    from train.engine import build_engine

    overrides = [f"data.shards={args.shards}", f"deepspeed.zero_stage={args.stage}", "deepspeed.precision=fp32",
                 "deepspeed.overlap_comm=false", *TINY_INPUT, *MEMORY_RUN]
    if args.backbone:
        overrides.append(f"model.backbone.name={args.backbone}")
    cfg = load_train_config(ROOT / "configs" / "large.yaml", overrides)
    dist = init_distributed("auto")
    import dataclasses

    from bev_model import build_model
    from pipeline import build_loader

    torch.manual_seed(0)
    model = build_model(cfg.model_config())
    n_params = sum(p.numel() for p in model.parameters())
    engine, _ = build_engine(cfg, model)
    del model
    loader = build_loader(dataclasses.replace(cfg.data, rank=dist.rank, world_size=dist.world_size))
    it = iter(loader)
    # peak during the backward of step 2: sample the live tensors at evenly spaced gradient hooks
    params = [p for p in engine.module.parameters() if p.requires_grad]
    every = max(1, len(params) // SAMPLES_IN_BACKWARD)
    samples: list[dict[str, int]] = []
    state = {"armed": False, "calls": 0, "batch": None}

    def hook(_p) -> None:
        if state["armed"]:
            state["calls"] += 1
            if state["calls"] % every == 0:
                samples.append(live_tensor_bytes(engine, [state["batch"].imgs], params))

    handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
    t0 = time.perf_counter()
    for step in range(2):
        batch = next(it)
        state["batch"] = batch
        out = engine(batch)
        state["armed"] = step == 1  # step 1 allocated the Adam states
        engine.backward(out["loss"])
        state["armed"] = False
        if step == 1:
            samples.append(live_tensor_bytes(engine, [batch.imgs], params))
        engine.step()
        del out
    for h in handles:
        h.remove()
    keys = ("params", "master_fp32", "optimizer_states", "grads")
    mem = max(samples, key=lambda m: sum(m[k] for k in keys))
    rec = {"rank": dist.rank, "stage": args.stage, "n_params": n_params, **mem,
           "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "step_s": (time.perf_counter() - t0) / 2}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"stage{args.stage}_rank{dist.rank}.json").write_text(json.dumps(rec))


def run_memory(shards: Path, backbone: str | None, work: Path, stages: list[int]) -> None:
    rows = []
    for stage in stages:
        t = time.perf_counter()
        extra = ["--backbone", backbone] if backbone else []
        proc = _torchrun([str(Path(__file__).resolve()), "--worker-memory", "--stage", str(stage), "--shards",
                          str(shards), "--out", str(work / "mem"), *extra], timeout=1800)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-6000:], file=sys.stderr)
            raise SystemExit(f"memory run for ZeRO stage {stage} failed")
        recs = [json.loads((work / "mem" / f"stage{stage}_rank{r}.json").read_text()) for r in (0, 1)]
        rows.append((stage, recs, time.perf_counter() - t))
        print(f"  stage {stage} measured in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    n = rows[0][1][0]["n_params"]
    name = backbone or "convnext_xlarge (large preset)"
    print(f"\nZeRO memory per rank, large preset, backbone {name}: {n / 1e6:.1f} M parameters, 2 CPU ranks,")
    print("fp32 weights + torch AdamW, 50x50 BEV; peak of the live tensor storage over the backward of step 2 "
          f"(sampled at {SAMPLES_IN_BACKWARD} gradient hooks, and after it), GiB, the larger of the two ranks:")
    hdr = (f"{'stage':>5} | {'params':>7} | {'master':>7} | {'optim':>7} | {'grads':>7} | "
           f"{'total':>7} | {'B/param':>7} | {'vs st.0':>7} | {'other':>7} | {'peak RSS':>8}")
    print(hdr)
    print("-" * len(hdr))
    keys = ("params", "master_fp32", "optimizer_states", "grads")
    base_total = None
    for stage, recs, _ in rows:
        worst = max(recs, key=lambda r: sum(r[k] for k in keys))
        total = sum(worst[k] for k in keys)
        base_total = base_total or total
        rss = max(r["peak_rss"] for r in recs)
        print(f"{stage:>5} | {_gib(worst['params'])} | {_gib(worst['master_fp32'])} | "
              f"{_gib(worst['optimizer_states'])} | {_gib(worst['grads'])} | {_gib(total)} | "
              f"{total / n:7.2f} | {total / base_total:6.2f}x | {_gib(worst['other'])} | {_gib(rss):>8}")
    print("(params: module weights held by the rank (ZeRO-3: its partition); master: fp32 copies the optimizer "
          "steps (ZeRO 1-3: its partition);\n optim: Adam exp_avg/exp_avg_sq; grads: .grad of the module and master "
          "tensors + DeepSpeed's gradient partitions;\n total = params + master + optim + grads; other: every other "
          "live tensor seen by Python (reduction buckets, activations held during backward), not in the total)")


# --------------------------------------------------------------------------------------------- throughput
def run_throughput(shards: Path, work: Path, steps: int) -> None:
    results = {w: _timed_run(shards, work / f"tiny_w{w}", steps, "configs/tiny.yaml", [f"data.num_workers={w}"],
                             None, f"num_workers={w}") for w in (0, 1)}
    b, m = results[0], results[1]
    print(f"\nTiny preset, 2 CPU ranks, ZeRO-2, batch 1/rank, {steps} steps (first excluded):")
    print(f"{'loader':>28} | {'steps/s':>8} | {'samples/s':>9} | {'data wait':>9}")
    print(f"{'synchronous (workers=0)':>28} | {b['steps_per_s']:8.3f} | {b['samples_per_s']:9.3f} | "
          f"{b['wait_frac']:8.1%}")
    print(f"{'background worker (workers=1)':>28} | {m['steps_per_s']:8.3f} | {m['samples_per_s']:9.3f} | "
          f"{m['wait_frac']:8.1%}")
    print(f"speed-up of background loading: {m['steps_per_s'] / b['steps_per_s']:.2f}x")


def run_threads(shards: Path, work: Path, steps: int) -> None:
    """The demo config on 2 CPU ranks: numba's default pool (one thread per core in every rank) vs
    ``train.dist.share_cpu_threads`` (each rank's pools sized to its share of the cores)."""
    cores = str(os.cpu_count() or 1)
    base = _timed_run(shards, work / "threads_default", steps, "configs/demo.yaml", [],
                      {"NUMBA_NUM_THREADS": cores}, "numba default")
    ours = _timed_run(shards, work / "threads_shared", steps, "configs/demo.yaml", [], None, "shared")
    print(f"\nDemo config, 2 CPU ranks on {cores} cores, {steps} steps (first excluded):")
    print(f"{'numba pool per rank':>36} | {'steps/s':>8} | {'data wait':>9} | ratio")
    print(f"{'numba default (' + cores + ' threads, baseline)':>36} | {base['steps_per_s']:8.3f} | "
          f"{base['wait_frac']:8.1%} | 1.00x")
    print(f"{'share of the cores (ours)':>36} | {ours['steps_per_s']:8.3f} | {ours['wait_frac']:8.1%} | "
          f"{ours['steps_per_s'] / base['steps_per_s']:.2f}x")


def run_groups(shards: Path, work: Path, steps: int, groups: int = 4) -> None:
    """The demo config on 2 CPU ranks: one-to-one head (baseline) vs Group-DETR with ``groups`` groups."""
    base = _timed_run(shards, work / "groups_1", steps, "configs/demo.yaml", [], None, "group_detr=1")
    grouped = _timed_run(shards, work / f"groups_{groups}", steps, "configs/demo.yaml",
                         [f"model.head.group_detr={groups}"], None, f"group_detr={groups}")
    print(f"\nDemo config, 2 CPU ranks, {steps} steps (first excluded):")
    print(f"{'BEV head in training':>30} | {'steps/s':>8} | ratio")
    print(f"{'one-to-one (baseline)':>30} | {base['steps_per_s']:8.3f} | 1.00x")
    print(f"{f'Group-DETR, {groups} groups':>30} | {grouped['steps_per_s']:8.3f} | "
          f"{grouped['steps_per_s'] / base['steps_per_s']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "memory", "throughput", "threads", "groups"], default="all")
    ap.add_argument("--backbone", default=None, help="timm backbone replacing convnext_xlarge in the memory part")
    ap.add_argument("--stages", default="0,1,2,3", help="ZeRO stages of the memory part (the first is the baseline)")
    ap.add_argument("--steps", type=int, default=10, help="tiny steps per throughput run")
    ap.add_argument("--shards", default=None, help="existing mini_train shards (else synthesised)")
    ap.add_argument("--worker-memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_memory:
        memory_worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        shards = Path(args.shards) if args.shards else make_shards(work)
        print(f"shards: {shards} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
        if args.part in ("all", "memory"):
            run_memory(shards, args.backbone, work, [int(x) for x in args.stages.split(",")])
        if args.part in ("all", "throughput"):
            run_throughput(shards, work, args.steps)
        if args.part in ("all", "threads"):
            run_threads(shards, work, args.steps)
        if args.part in ("all", "groups"):
            run_groups(shards, work, args.steps)


if __name__ == "__main__":
    main()
