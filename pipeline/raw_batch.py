"""``RawBatch``: what a DataLoader worker hands to the main process (the worker -> main contract).

Shapes: B windows, T frames per window (oldest first, T-1 is the current frame), N = 6 cameras
(camera order of ``shards.conventions.CAMERAS``), H x W = ``LoaderConfig.image_size``, F frames
that cross to the main process for the first time with this batch, Ni boxes of sample i.

Metadata are numpy arrays (pickled inline: no shared-memory segment per small array). Images travel
deduplicated (:class:`FrameRefs`): every decoded frame crosses once, in the first batch that uses it,
and the main process (:class:`pipeline.transport.FrameCache`) keeps it until the worker releases it.
``pipeline.augment.finish_batch`` turns a ``RawBatch`` and its assembled images into a ``Batch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FrameRefs:
    """The images of a batch, by reference to the worker's frames.

    In-worker decode: a new frame is either in the worker's shared slot ``new_slots[i] >= 0`` (its
    buffer in ``slot_buffers`` of this or an earlier batch) or, when every slot was busy, in
    ``new_pixels[i]``. Main-process (GPU) decode: ``new_jpegs``/``new_src_wh`` instead, slots -1.
    """

    frame_ids: np.ndarray
    """``[B, T]`` int64: the worker's id of the frame in every window slot."""
    new_ids: list[int]
    """F ids of the frames this batch sends for the first time."""
    new_slots: list[int]
    """F pool slots of the new frames (-1: not in a slot)."""
    new_pixels: list[torch.Tensor | None]
    """F entries: ``[N, H, W, 3]`` uint8 where the slot is -1 (in-worker decode), else None."""
    release: list[int]
    """Ids no later batch of this worker uses: the main process drops them (and frees their slots)."""
    new_jpegs: list[list[bytes]] | None = None
    """Main-process decode only: F x N camera JPEGs."""
    new_src_wh: list[np.ndarray] | None = None
    """Main-process decode only: F x ``[N, 2]`` int64 source (width, height) from the sidecar."""
    slot_flags: torch.Tensor | None = None
    """``[S]`` int8 in shared memory, sent with the worker's first batch: 1 while a slot is in use."""
    slot_buffers: dict[int, torch.Tensor] | None = None
    """Slot buffers allocated since the last batch: slot -> ``[N, H, W, 3]`` uint8 (shared memory)."""


@dataclass
class WorkerProgress:
    """Resume and fault bookkeeping of the worker that built a batch (taken up by ``Loader``)."""

    worker: int
    consumed: int
    """Plan windows consumed by the worker up to and including this batch."""
    delivered: int
    """Batches the worker delivered, this one included."""
    errors: int
    """Bad samples skipped so far (``pipeline.faults.ErrorCounter``)."""
    seen: int
    """Samples read so far."""


@dataclass
class RawBatch:
    """One batch from a worker, before images are assembled and augmented (see the module docstring)."""

    progress: WorkerProgress
    frames: FrameRefs
    intrinsics: np.ndarray
    """``[B, T, N, 3, 3]`` float64: K of the stored source images (sidecar)."""
    cam2ego: np.ndarray
    """``[B, T, N, 4, 4]`` float64: camera -> ego (sidecar)."""
    cam_ego2global: np.ndarray
    """``[B, T, N, 4, 4]`` float64: ego pose at each camera's own timestamp."""
    ego2global: np.ndarray
    """``[B, T, 4, 4]`` float64: keyframe ego pose of every frame."""
    decode_aug: np.ndarray
    """``[B, T, N, 3, 3]`` float64: source pixels -> decoded pixels (``decode_cpu.decode_matrix``)."""
    valid_prev: np.ndarray
    """``[B, T]`` bool: False where the frame is a fill-in copy of another frame of the window."""
    gt_boxes: list[np.ndarray]
    """B x ``[Ni, 9]`` float32 box vectors of the current frame (ego frame, not augmented)."""
    gt_labels: list[np.ndarray]
    """B x ``[Ni]`` int64 class index."""
    gt_attrs: list[np.ndarray]
    """B x ``[Ni]`` int64 attribute index (-1: none)."""
    gt_num_pts: list[np.ndarray]
    """B x ``[Ni]`` int64 lidar + radar points."""
    gt_visibility: list[np.ndarray]
    """B x ``[Ni]`` int64 visibility level (0: unknown)."""
    sample_token: list[str]
    scene_token: list[str]
    timestamp: np.ndarray
    """``[B]`` int64 current frame's timestamp, µs."""
    keys: list[str]
    """B sample keys of the current frames."""
    points: list[np.ndarray] | None = None
    """B x ``[Pi, 4]`` float32 LiDAR of the current frame (ego frame), with ``load_points``."""

    @property
    def worker(self) -> int:
        return self.progress.worker

    @property
    def batch_size(self) -> int:
        return int(self.frames.frame_ids.shape[0])
