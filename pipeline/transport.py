"""Frame transport between a worker and the main process: each decoded frame crosses once.

Worker side: a :class:`Frame` is a decoded sample in a reusable shared-memory slot of the
worker's :class:`SlotPool`; the :class:`FrameLedger` records which frames were sent and which
are no longer needed. Main-process side: the :class:`FrameCache` keeps the frames by
(worker, id) on the batch device and assembles ``[B, T, N, H, W, 3]`` uint8 for each
:class:`pipeline.raw_batch.RawBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import get_worker_info

from .raw_batch import RawBatch


@dataclass
class Frame:
    """A sample read by a worker: ``imgs`` is ``[N, H, W, 3]`` uint8 (in-worker decode) or the N
    camera JPEGs (main-process decode); ``points`` ``[P, 4]`` float32 or None. ``fid`` is unique
    within the worker for the epoch (the main process caches frames by it); ``slot`` is its pool
    slot (-1: a one-off buffer or JPEG bytes); ``src_wh`` ``[N, 2]`` the sidecar's image sizes."""

    imgs: torch.Tensor | list[bytes]
    points: np.ndarray | None = None
    fid: int = -1
    slot: int = -1
    src_wh: np.ndarray | None = None


class SlotPool:
    """Reusable shared-memory frame buffers of one worker (no new segment, no page faults per frame).

    Slot buffers are allocated on first use (so shared memory holds only the peak number of live
    frames) and sent to the main process once; later only the slot number travels. ``flags`` (one
    shared int8 per slot, sent once) is 1 while a slot is in use; the main process sets it to 0
    when it drops the frame, the worker when it drops a frame it never sent. When all
    ``max_slots`` are busy a one-off buffer is used (slot -1), so the pool can never deadlock.
    """

    def __init__(self, frame_shape: tuple[int, ...], max_slots: int = 512):
        self.frame_shape = frame_shape
        self.flags = torch.zeros(max_slots, dtype=torch.int8)
        if get_worker_info() is not None:
            self.flags.share_memory_()
        self._flags = self.flags.numpy()
        self.buffers: list[torch.Tensor] = []
        self.flags_sent = False
        self.buffers_sent = 0

    def alloc(self) -> tuple[int, torch.Tensor]:
        """A free slot and its ``[N, H, W, 3]`` uint8 buffer (slot -1: a one-off buffer)."""
        n = len(self.buffers)
        free = np.flatnonzero(self._flags[:n] == 0)
        if len(free):
            i = int(free[0])
        elif n < len(self._flags):
            i = n
            self.buffers.append(shared_uint8(self.frame_shape))
        else:
            return -1, shared_uint8(self.frame_shape)
        self._flags[i] = 1
        return i, self.buffers[i]

    def free(self, slot: int) -> None:
        if slot >= 0:
            self._flags[slot] = 0


@dataclass
class FrameLedger:
    """Per-worker bookkeeping of the frame transport: every frame crosses to the main process
    once (in the first batch that uses it); the main process keeps it until it is released
    (its clip's last window was delivered)."""

    next_id: int = 0
    sent: set[int] = field(default_factory=set)
    released: list[int] = field(default_factory=list)
    slot_of: dict[int, int] = field(default_factory=dict)
    pool: SlotPool | None = None

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def take_new(self, frames: list[Frame]) -> list[Frame]:
        """The frames (in order, each once) that have not been sent yet; marks them sent."""
        new: list[Frame] = []
        for f in frames:
            if f.fid not in self.sent:
                self.sent.add(f.fid)
                new.append(f)
        return new

    def take_releases(self) -> list[int]:
        """Ids the main process may drop now; frees the slots of released frames never sent."""
        released = [i for i in self.released if i in self.sent]
        for i in self.released:
            slot = self.slot_of.pop(i, -1)
            if i not in self.sent and self.pool is not None:
                self.pool.free(slot)
        self.sent.difference_update(released)
        self.released = []
        return released


def shared_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor, in shared memory when inside a DataLoader worker (so the
    DataLoader sends it without another copy)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    n = int(np.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(n, 1))).view(-1)[:n].view(shape)


class FrameCache:
    """Main-process side of the frame transport: frames by (worker, id) on the batch device.

    Pool slots (see :class:`SlotPool`) are returned to the worker (flag set to 0) as soon as
    their frame is dropped; the cached tensor of a slot is a view on CPU devices and a copy on
    GPUs (copied from the shared, pageable buffer synchronously, so the slot can be reused).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.frames: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}
        self.flags: dict[int, torch.Tensor] = {}
        self.buffers: dict[tuple[int, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def assemble(self, raw: RawBatch, decoded: torch.Tensor | None = None) -> torch.Tensor:
        """Store the batch's new frames, apply its releases; ``[B, T, N, H, W, 3]`` uint8 on the device.

        ``decoded``: ``[F, N, H, W, 3]`` the new frames decoded in the main process (GPU decode);
        None when the worker decoded them (pixels in slots or ``new_pixels``).
        """
        w = raw.worker
        refs = raw.frames
        if refs.slot_flags is not None:
            self.flags[w] = refs.slot_flags
        for i, buf in (refs.slot_buffers or {}).items():
            self.buffers[(w, int(i))] = buf
        for i, fid in enumerate(refs.new_ids):
            slot = refs.new_slots[i]
            if decoded is not None:
                src = decoded[i]
            else:
                src = refs.new_pixels[i] if slot < 0 else self.buffers[(w, slot)]
            self.frames[(w, fid)] = (src.to(self.device, non_blocking=src.is_pinned()), slot)
        b, t = refs.frame_ids.shape
        imgs = torch.stack([self.frames[(w, int(f))][0] for f in np.asarray(refs.frame_ids).reshape(-1)])
        for fid in refs.release:
            entry = self.frames.pop((w, int(fid)), None)
            if entry is not None and entry[1] >= 0 and decoded is None:
                self.flags[w][entry[1]] = 0
        return imgs.reshape(b, t, *imgs.shape[1:])
