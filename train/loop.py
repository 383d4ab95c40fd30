"""The training loop: loader -> DeepSpeed engine -> logs, checkpoints, EMA, eval.

A *step* is one optimizer step (``deepspeed.grad_accum_steps`` micro-batches per rank). A micro-batch
whose loss (mean over ranks) is not finite is dropped on every rank alike (no backward, no step)
with a warning; ``logging.max_nonfinite`` such losses in a row stop the run.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, train_config_to_dict
from .dist import DistInfo, all_reduce_mean, init_distributed
from .ema import EMA
from .engine import PREFIX, build_engine, group_names
from .eval_hook import evaluate_on_main
from .init_from import init_from_checkpoint
from .logger import RunLogger
from .resume import decide_on_rank0, plan_start
from .safe_load import safe_torch_load


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


class NonFiniteGuard:
    """Counts non-finite losses in a row; raises after ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.total = 0

    def check(self, value: float, step: int) -> bool:
        """True when ``value`` is finite (train on it); False to skip; raises after ``limit`` in a row."""
        if np.isfinite(value):
            self.streak = 0
            return True
        self.streak += 1
        self.total += 1
        if self.streak >= self.limit:
            raise NonFiniteLossError(
                f"step {step}: {self.streak} non-finite losses in a row (logging.max_nonfinite={self.limit}); stopping"
            )
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolved_config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The run's config as a plain mapping, ``model`` resolved in full (``{preset, ...every field}``) so
    that eval rebuilds exactly the trained detector even if the preset changes later."""
    return train_config_to_dict(cfg)


def _loader_config(cfg: TrainConfig, dist: DistInfo) -> Any:
    device = str(dist.device)
    if dist.device.type == "cuda" and not str(cfg.data.device).startswith("cuda"):
        device = str(cfg.data.device)  # user asked for CPU batches; the loop moves them
    return dataclasses.replace(cfg.data, rank=dist.rank, world_size=dist.world_size, device=device,
                               seed=cfg.data.seed if cfg.data.seed else cfg.seed)


class _Batches:
    """Endless batches over epochs of the loader (``set_epoch`` called when the loader has it)."""

    def __init__(self, loader: Any, epoch: int = 0) -> None:
        self.loader = loader
        self.epoch = epoch
        self._it = None

    def _start(self) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        self._it = iter(self.loader)

    def next(self) -> Any:
        if self._it is None:
            self._start()
        for _ in range(2):
            try:
                return next(self._it)
            except StopIteration:
                self.epoch += 1
                self._start()
        raise RuntimeError(f"the data loader produced no batch in epoch {self.epoch} (too few samples per rank?)")


def _grad_norm(engine: Any) -> float | None:
    g = engine.get_global_grad_norm()
    if g is None:
        return None
    return float(g.item() if torch.is_tensor(g) else g)


def train(cfg: TrainConfig, *, resume: str | None = None, allow_config_change: list[str] | None = None,
          fresh_data_plan: bool = False) -> dict[str, Any]:
    """Run (or continue) training as described by ``cfg``; returns a summary (every rank).

    ``resume``: ``None``, ``"auto"`` or a checkpoint path; ``allow_config_change``: config keys/sections
    that may differ from the checkpoint's (``["*"]``: all); ``fresh_data_plan``: restore weights, optimizer
    and step but not the data position (see ``train.resume``). Rank 0 checks all of it before any model
    is built; a refusal raises ``ConfigError``/``CheckpointError`` on every rank.
    """
    dist = init_distributed(cfg.deepspeed.dist_backend)
    from deepspeed.accelerator import get_accelerator

    from bev_model import build_model
    from pipeline import build_loader

    out_dir = Path(cfg.out_dir)
    config_dict = resolved_config_dict(cfg)
    init_src = str(cfg.init.from_checkpoint) if cfg.init.from_checkpoint is not None else None
    plan = decide_on_rank0(lambda: plan_start(resume, out_dir, config_dict, world_size=dist.world_size,
                                              allow_config_change=allow_config_change,
                                              fresh_data_plan=fresh_data_plan, init_from=init_src), dist.is_main)
    notes = list(plan.messages) if dist.is_main else []  # written to the run log once it exists
    print(f"rank {dist.rank}/{dist.world_size}: local rank {dist.local_rank} of node "
          f"{os.environ.get('GROUP_RANK', '0')} on {socket.gethostname()}, device {dist.device}", flush=True)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg.model_config())
    backbone = getattr(model, "backbone", None)
    if init_src and not plan.checkpoint:
        init_from_checkpoint(model, init_src, weights=cfg.init.weights, drop=cfg.init.drop,
                             log=notes.append if dist.is_main else (lambda m: None))
    elif plan.backbone_pretrained and backbone is not None and not getattr(backbone, "pretrained", True):
        backbone.mark_pretrained()  # pretrained by init.from_checkpoint at the run's start: same frozen stages
    engine, sched = build_engine(cfg, model)
    names = group_names(engine)
    loader = build_loader(_loader_config(cfg, dist))
    ema = EMA(engine.module, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None

    step, epoch, samples = 0, 0, 0
    resumed_from = None
    if plan.checkpoint:
        ckpt = Path(plan.checkpoint)
        loaded = load_checkpoint(engine, ckpt, dist.rank, load_loader=not plan.fresh_data_plan)
        ts = loaded["trainer_state"]
        step, epoch, samples = int(ts["step"]), int(ts.get("epoch", 0)), int(ts.get("samples", 0))
        if engine.global_steps != step:
            raise RuntimeError(f"checkpoint {ckpt}: engine step {engine.global_steps} != trainer step {step}")
        if plan.fresh_data_plan:
            notes.append(f"data plan: fresh (--fresh-data-plan): epoch {epoch} restarts from its first batch "
                         f"under world size {dist.world_size} x {cfg.data.num_workers} worker(s)")
        elif loaded["loader_state"] is not None:
            loader.load_state_dict(loaded["loader_state"])
            notes.append(f"data plan: restored from {ckpt.name} (epoch {epoch}, exact position)")
        elif dist.is_main:
            notes.append(f"warning: {ckpt} has no loader state for rank {dist.rank}; data restarts")
        if ema is not None and (ckpt / "weights_ema_fp32.pt").is_file():
            ema.load_state_dict(safe_torch_load(ckpt / "weights_ema_fp32.pt"),
                                int(ts.get("ema_updates", 0)), add_prefix=PREFIX)
        resumed_from = str(ckpt)
    torch.manual_seed(cfg.seed + 1000 * dist.rank + step)  # per-rank, per-resume stochasticity

    total = cfg.schedule.total_steps
    log = RunLogger(out_dir, rank=dist.rank, tensorboard=cfg.logging.tensorboard,
                    log_samples=cfg.logging.log_samples, progress=cfg.logging.progress,
                    total_steps=total, start_step=step)
    for m in notes:
        log.write(m)
    if resumed_from:
        log.write(f"resumed from {resumed_from} at step {step}")
        log.event(step, "resume", checkpoint=resumed_from,
                  data_plan="fresh" if plan.fresh_data_plan else "restored")
    batches = _Batches(loader, epoch)
    guard = NonFiniteGuard(cfg.logging.max_nonfinite)
    accum = cfg.deepspeed.grad_accum_steps
    acc = get_accelerator()
    last_saved = step if resumed_from else -1
    first_loss = last_loss = None

    def checkpoint_now() -> Path:
        nonlocal last_saved
        ckpt = save_checkpoint(
            engine, out_dir, step, rank=dist.rank, loader_state=loader.state_dict(),
            trainer_state={"step": step, "epoch": batches.epoch, "samples": samples,
                           "ema_updates": ema.num_updates if ema else 0, "world_size": dist.world_size,
                           "backbone_pretrained": bool(getattr(backbone, "pretrained", False))},
            config=config_dict, strip_prefix=PREFIX,
            ema_weights=ema.state_dict(PREFIX) if ema is not None else None,
            keep_last=cfg.checkpoint.keep_last,
        )
        last_saved = step
        log.event(step, "checkpoint", path=str(ckpt))
        return ckpt

    def evaluate(ckpt: Path) -> None:
        res = evaluate_on_main(cfg.eval, ckpt, step, dist.is_main)  # every rank waits for rank 0's eval
        if dist.is_main:
            if res["returncode"] != 0:
                log.write(f"warning: eval at step {step} failed (rc {res['returncode']}):\n{res['log']}")
            log.event(step, "eval", returncode=res["returncode"], complete=res["complete"], **res["metrics"])

    engine.train()
    try:
        while step < total:
            wait = compute = 0.0
            sums: dict[str, float] = {}
            done = 0
            while done < accum:
                t0 = time.perf_counter()
                batch = batches.next().to(dist.device)
                t1 = time.perf_counter()
                wait += t1 - t0
                log.log_samples(step + 1, done, list(batch.sample_token))
                out = engine(batch)
                keys = ["loss"] + sorted(k for k in out if k != "loss")
                vals = all_reduce_mean(torch.stack([out[k].detach().float().reshape(()) for k in keys]))
                vals = vals.cpu().tolist()
                if not guard.check(vals[0], step + 1):
                    log.write(f"warning: step {step + 1}: non-finite loss {vals[0]} "
                              f"({guard.streak} in a row); micro-batch skipped")
                    log.event(step + 1, "nonfinite_loss", streak=guard.streak,
                              **{f"loss/{k}": v for k, v in zip(keys, vals)})
                    del out
                    compute += time.perf_counter() - t1
                    continue
                engine.backward(out["loss"])
                engine.step()
                for k, v in zip(keys, vals):
                    sums[k] = sums.get(k, 0.0) + v
                done += 1
                acc.synchronize()
                compute += time.perf_counter() - t1
            step += 1
            samples += accum * dist.world_size * cfg.data.batch_size
            if engine.global_steps != step:
                raise RuntimeError(f"engine step {engine.global_steps} != loop step {step}")
            if ema is not None and step % cfg.ema.every_steps == 0:
                ema.update(engine.module)
            loss = sums["loss"] / accum
            first_loss = loss if first_loss is None else first_loss
            last_loss = loss
            if step % cfg.logging.every_steps == 0 or step == total:
                lrs = sched.get_last_lr()
                rec: dict[str, Any] = {f"loss/{k}" if k != "loss" else k: v / accum for k, v in sums.items()}
                rec.update({f"lr/{n}": lr for n, lr in zip(names, lrs)})
                rec["lr"] = max(lrs)
                gn = _grad_norm(engine)
                if gn is not None:
                    rec["grad_norm"] = gn
                rec["samples_per_s"] = accum * dist.world_size * cfg.data.batch_size / max(wait + compute, 1e-9)
                rec.update(data_wait_s=wait, compute_s=compute, data_wait_frac=wait / max(wait + compute, 1e-9),
                           epoch=batches.epoch, samples=samples)
                log.log_step(step, rec)
            log.advance(step)
            every = cfg.checkpoint.every_steps
            ckpt = None
            if every and step % every == 0:
                ckpt = checkpoint_now()
            if cfg.eval.enabled and cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < total:
                evaluate(ckpt or checkpoint_now())
        if step != last_saved and (cfg.checkpoint.save_final or cfg.eval.enabled):
            final = checkpoint_now()
        else:
            from .checkpoint import checkpoint_root, step_dir_name

            final = checkpoint_root(out_dir) / step_dir_name(step)
        if cfg.eval.enabled:
            evaluate(final)
    finally:
        log.close()
    return {"step": step, "resumed_from": resumed_from, "first_loss": first_loss, "last_loss": last_loss,
            "nonfinite": guard.total, "rank": dist.rank, "world_size": dist.world_size}
