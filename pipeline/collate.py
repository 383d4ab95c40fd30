"""``collate``: windows with their frames -> :class:`pipeline.raw_batch.RawBatch` (worker side)."""

from __future__ import annotations

import numpy as np

from .config import LoaderConfig
from .decode_cpu import decode_matrix
from .executor import Delivered
from .meta import ShardMeta
from .raw_batch import FrameRefs, RawBatch, WorkerProgress
from .transport import FrameLedger


def collate(items: list[Delivered], metas: dict[int, ShardMeta], cfg: LoaderConfig, decode_in_worker: bool,
            ledger: FrameLedger, progress: WorkerProgress) -> RawBatch:
    """Gather the sidecar metadata of B delivered windows (frames not None) and reference their frames
    (see :class:`RawBatch`).

    Frames used for the first time are marked sent in ``ledger``; frames it released are listed
    in ``frames.release`` (and slots of released frames that were never sent are freed here).
    """
    rows_meta = [(metas[d.window.shard], list(d.window.rows)) for d in items]

    def gather(attr: str) -> np.ndarray:
        return np.stack([getattr(m, attr)[rows] for m, rows in rows_meta])

    cam_size = gather("cam_size")  # [B, T, N, 2] (width, height)
    a_dec = np.zeros(cam_size.shape[:3] + (3, 3))  # [B, T, N, 3, 3]
    for idx in np.ndindex(*cam_size.shape[:3]):
        a_dec[idx] = decode_matrix(int(cam_size[idx][0]), int(cam_size[idx][1]), cfg.crop_box, cfg.image_size)

    fids = np.array([[f.fid for f in d.frames] for d in items], dtype=np.int64)  # [B, T]
    new = ledger.take_new([f for d in items for f in d.frames])
    if decode_in_worker:
        pool = ledger.pool
        flags = None
        if pool is not None and not pool.flags_sent:
            flags = pool.flags
            pool.flags_sent = True
        buffers: dict = {}
        if pool is not None and pool.buffers_sent < len(pool.buffers):
            buffers = {i: pool.buffers[i] for i in range(pool.buffers_sent, len(pool.buffers))}
            pool.buffers_sent = len(pool.buffers)
        refs = FrameRefs(frame_ids=fids, new_ids=[f.fid for f in new], new_slots=[f.slot for f in new],
                         new_pixels=[None if f.slot >= 0 else f.imgs for f in new], release=[],
                         slot_flags=flags, slot_buffers=buffers)
    else:
        refs = FrameRefs(frame_ids=fids, new_ids=[f.fid for f in new], new_slots=[-1] * len(new),
                         new_pixels=[None] * len(new), release=[], new_jpegs=[list(f.imgs) for f in new],
                         new_src_wh=[f.src_wh for f in new])
    refs.release = ledger.take_releases()

    boxes, labels, attrs, npts, vis, points = [], [], [], [], [], []
    tokens, scenes, stamps = [], [], []
    for (m, rows), d in zip(rows_meta, items):
        cur = rows[-1]
        sl = m.rows_boxes(cur)
        keep = np.ones(sl.stop - sl.start, bool) if cfg.keep_ignored_labels else m.labels[sl] >= 0
        boxes.append(np.ascontiguousarray(m.boxes[sl][keep], dtype=np.float32))
        labels.append(m.labels[sl][keep].astype(np.int64))
        attrs.append(m.attrs[sl][keep].astype(np.int64))
        npts.append(m.num_pts[sl][keep].astype(np.int64))
        vis.append(m.visibility[sl][keep].astype(np.int64))
        tokens.append(m.sample_token[cur])
        scenes.append(m.scene_token[cur])
        stamps.append(int(m.timestamp[cur]))
        if cfg.load_points:
            points.append(d.frames[-1].points)
    return RawBatch(
        progress=progress, frames=refs,
        intrinsics=gather("intrinsics"), cam2ego=gather("cam2ego"), cam_ego2global=gather("cam_ego2global"),
        ego2global=gather("ego2global"), decode_aug=a_dec,
        valid_prev=np.array([d.valid for d in items], dtype=bool),
        gt_boxes=boxes, gt_labels=labels, gt_attrs=attrs, gt_num_pts=npts, gt_visibility=vis,
        sample_token=tokens, scene_token=scenes, timestamp=np.array(stamps, dtype=np.int64),
        keys=[m.keys[rows[-1]] for m, rows in rows_meta], points=points if cfg.load_points else None)
