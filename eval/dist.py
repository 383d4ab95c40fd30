"""Evaluation on several processes (``torchrun --nproc_per_node N -m eval ...``): whole scenes per rank.

Temporal models carry a per-scene history from frame to frame, so a scene is never split: the scenes
of the run (in shard order) are cut into ``N`` contiguous blocks of about equal sample counts, each
rank streams the shards that hold its scenes and skips the other scenes' samples, and the
predictions are gathered to rank 0 (gloo, on CPU, whatever the model's device), which scores them
exactly as one process would.

Only objects travel between ranks (predictions, picture views, timings); the process group is
always gloo, so the same code runs on CPU ranks and on GPU ranks.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
                "TORCHELASTIC_ERROR_FILE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "WORKER", "NUM_WORKERS",
                "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE")
"""Environment variables by which torchrun / the DeepSpeed launcher (and webdataset's ``pytorch_worker_info``:
``WORKER``, ``NUM_WORKERS``) tell a process its place in a job. A process started by one rank of a job
(the training's eval) must not see them, or it takes itself for a rank of that job."""


def single_process_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ``os.environ``) without :data:`LAUNCHER_ENV`: a child that is a job of its own."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in LAUNCHER_ENV}


@dataclass(frozen=True)
class EvalRanks:
    """This process's place among the evaluation's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_ranks() -> EvalRanks:
    """The place given by a launcher's environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return EvalRanks()
    return EvalRanks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(ranks: EvalRanks, timeout_s: float = 3 * 3600) -> None:
    """Join the launcher's job with a gloo process group (idempotent; nothing to do for one process).

    The timeout bounds how long rank 0 waits for the slowest rank's scenes and the others wait for
    rank 0's scoring."""
    import torch.distributed as td

    if ranks.distributed and not td.is_initialized():
        td.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world_size,
                              timeout=datetime.timedelta(seconds=timeout_s))


def split_scenes(order: Sequence[str], scene_of: dict[str, str], world_size: int) -> list[list[str]]:
    """Sample tokens (in ``order``) cut into ``world_size`` blocks of whole scenes, about equal in samples.

    Args:
        order: the samples to evaluate, in stream (shard, scene, time) order.
        scene_of: sample token -> scene token.
    Returns:
        per rank, its sample tokens in ``order``; a rank gets no sample only when there are fewer scenes than ranks.
    """
    scenes: list[list[str]] = []
    for tok in order:
        if scenes and scene_of[scenes[-1][0]] == scene_of[tok]:
            scenes[-1].append(tok)
        else:
            scenes.append([tok])
    blocks: list[list[str]] = [[] for _ in range(world_size)]
    total, done = max(len(order), 1), 0
    for scene in scenes:
        # the rank whose share [r / N, (r + 1) / N) of the samples holds this scene's middle sample
        r = min(world_size - 1, int((done + len(scene) / 2) * world_size / total))
        blocks[r].extend(scene)
        done += len(scene)
    return blocks


def gather_to_main(ranks: EvalRanks, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None on the other ranks."""
    if not ranks.distributed:
        return [obj]
    import torch.distributed as td

    out: list[Any] | None = [None] * ranks.world_size if ranks.is_main else None
    td.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(ranks: EvalRanks, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ranks.distributed:
        return obj
    import torch.distributed as td

    box = [obj if ranks.is_main else None]
    td.broadcast_object_list(box, src=0)
    return box[0]
