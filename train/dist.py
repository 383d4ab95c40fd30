"""Process-group setup for every launcher: plain ``python -m train``, ``torchrun``, ``deepspeed``.

With no CUDA device, DeepSpeed's CPU accelerator is selected (``DS_ACCELERATOR=cpu``, before
DeepSpeed is imported) and the process group uses gloo.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def select_accelerator() -> str:
    """Pick DeepSpeed's accelerator before it is imported: ``cpu`` when CUDA is absent."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    return os.environ.get("DS_ACCELERATOR", "cuda")


def cpu_thread_share() -> int:
    """Cores of this host divided among its ranks (``LOCAL_WORLD_SIZE``, set by torchrun / deepspeed)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


def share_cpu_threads() -> None:
    """Cap the OpenMP and numba thread pools of this rank at its share of the cores (unless set).

    Must run before numba is imported (numba sizes its pool from ``NUMBA_NUM_THREADS`` then).
    numba's workers keep spinning after a parallel region, so ranks that each keep numba's default
    (one thread per core) starve each other's convolutions when they share the cores.
    """
    share = str(cpu_thread_share())
    os.environ.setdefault("OMP_NUM_THREADS", share)
    os.environ.setdefault("NUMBA_NUM_THREADS", share)


def init_distributed(backend: str = "auto") -> DistInfo:
    """Initialise the default process group (idempotent) and bind this rank to its device."""
    select_accelerator()
    if "RANK" not in os.environ:  # single process without a launcher
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if backend == "auto":
        backend = acc.communication_backend_name()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if acc.device_name() == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device(acc.device_name())
        torch.set_num_threads(cpu_thread_share())
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=backend,
    )


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a float tensor (gloo has no AVG: SUM / world)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return values
    out = values.clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out / torch.distributed.get_world_size()
