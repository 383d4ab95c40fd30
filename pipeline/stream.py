"""The worker side: follow the read plan, stream shards, decode frames, build batches.

Runs inside each torch DataLoader worker (or in the main process when ``num_workers=0``).
Each worker yields whole *raw batches* (dicts of numpy arrays, uint8 images) so the
DataLoader is used with ``batch_size=None``; augmentation happens later on the batch device.

Faults: a sample whose key has no sidecar row, a missing camera member, a JPEG that does not
decode or has the wrong size, and every row of a tar that ends early are *bad samples*:
skipped, counted and logged with shard URL and key. A bad previous frame of a window is
treated like a missing one (filled with the nearest good frame, ``valid=False``); a window
whose current frame is bad is dropped. When bad samples exceed ``max_error_rate`` of the
samples read (after ``error_grace`` samples), the worker raises :class:`LoaderError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from shards.conventions import CAMERAS

from .config import LoaderConfig
from .decode_cpu import CpuDecoder, DecodeError, decode_matrix
from .meta import ShardMeta, open_sidecar_table
from .tario import TarReadError, iter_tar_samples
from .urls import IOOptions, ShardSpec, open_stream
from .windows import Window, contiguous_block, eval_batches, shard_windows, train_cycle

log = logging.getLogger("pipeline")

CAMERA_EXTS = tuple(c.lower() + ".jpg" for c in CAMERAS)
LIDAR_EXT = "lidar.npy"


class LoaderError(RuntimeError):
    """The loader cannot go on (too many bad samples, too few shards, ...)."""


@dataclass
class Frame:
    """A decoded sample: images ``[C, H, W, 3]`` uint8 (or JPEG bytes for main-process decode).
    ``fid`` is unique within the worker for the epoch (the main process caches frames by it)."""

    imgs: Any
    points: np.ndarray | None = None
    fid: int = -1
    slot: int = -1


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
        n = len(self.buffers)
        free = np.flatnonzero(self._flags[:n] == 0)
        if len(free):
            i = int(free[0])
        elif n < len(self._flags):
            i = n
            self.buffers.append(_shared_uint8(self.frame_shape))
        else:
            return -1, _shared_uint8(self.frame_shape)
        self._flags[i] = 1
        return i, self.buffers[i]

    def free(self, slot: int) -> None:
        if slot >= 0:
            self._flags[slot] = 0


@dataclass
class ErrorCounter:
    max_rate: float
    grace: int
    seen: int = 0
    errors: int = 0
    messages: list[str] = field(default_factory=list)

    def ok(self, n: int = 1) -> None:
        self.seen += n

    def bad(self, msg: str, n: int = 1) -> None:
        self.seen += n
        self.errors += n
        self.messages.append(msg)
        log.warning("skipped bad sample: %s", msg)
        self.check()

    def check(self, final: bool = False) -> None:
        denom = self.seen if final else max(self.seen, self.grace)
        if self.errors and self.errors > self.max_rate * denom:
            raise LoaderError(
                f"too many bad samples: {self.errors} of {self.seen} read "
                f"(max_error_rate={self.max_rate}); last: {self.messages[-1]}")


def io_options(cfg: LoaderConfig) -> IOOptions:
    return IOOptions(cfg.s3_endpoint_url, cfg.http_timeout, cfg.max_retries, cfg.retry_backoff)


def make_decoder(cfg: LoaderConfig, main_process: bool = False):
    """The decoder a worker uses: ``cpu`` (PIL + DCT downscale) or DALI on CPU."""
    if cfg.decoder == "cpu":
        return CpuDecoder(cfg.image_size, cfg.crop_box)
    from .decode_dali import DaliDecoder

    return DaliDecoder(cfg.image_size, cfg.crop_box, gpu=False, max_batch=len(CAMERAS))


def dali_on_gpu(cfg: LoaderConfig) -> bool:
    if cfg.decoder != "dali" or cfg.dali_device == "cpu":
        return False
    from .decode_dali import cuda_usable

    if cfg.dali_device == "gpu" and not cuda_usable():
        raise LoaderError("dali_device='gpu' but CUDA is not available")
    return cuda_usable() and str(cfg.device).startswith("cuda")


class PlanSource:
    """Sidecars of the shards a worker reads (opened once, kept) and their clips/windows."""

    def __init__(self, shards: list[ShardSpec], cfg: LoaderConfig):
        self.shards = shards
        self.cfg = cfg
        self.io = io_options(cfg)
        self._tables: dict[int, Any] = {}
        self._clips: dict[int, list[list[Window]]] = {}
        self._metas: dict[int, ShardMeta] = {}

    def table(self, s: int):
        if s not in self._tables:
            try:
                self._tables[s] = open_sidecar_table(self.shards[s].sidecar_url, self.io)
            except Exception as e:  # noqa: BLE001
                raise LoaderError(f"cannot read sidecar {self.shards[s].sidecar_url}: {type(e).__name__}: {e}") from e
        return self._tables[s]

    def clips(self, s: int, cycle: int) -> list[list[Window]]:
        if s not in self._clips:
            t = self.table(s)
            self._clips[s] = shard_windows(s, t.column("scene_token").to_pylist(),
                                           np.asarray(t.column("frame_index").to_numpy(), np.int64),
                                           self.cfg.offsets)
        if cycle == 0:
            return self._clips[s]
        return [[Window(w.shard, w.clip, w.rows, w.valid, cycle) for w in c] for c in self._clips[s]]

    def meta(self, s: int) -> ShardMeta:
        if s not in self._metas:
            self._metas[s] = ShardMeta.from_table(self.shards[s].sidecar_url, self.table(s))
        return self._metas[s]


class Executor:
    """Deliver the windows of a plan (emission order) with their decoded frames.

    ``stream`` is the order shards are read in; frames are decoded when the reader passes
    them, only if a remaining window needs them, and freed after their clip's last window.
    """

    def __init__(self, src: PlanSource, stream: list[int], windows: list[Window], decoder, errors: ErrorCounter,
                 *, decode_in_worker: bool, load_points: bool, ledger: FrameLedger | None = None):
        self.ledger = ledger or FrameLedger()
        self.src = src
        self.windows = windows
        self.decoder = decoder
        self.errors = errors
        self.decode_in_worker = decode_in_worker
        self.load_points = load_points
        self.needed: dict[int, set[int]] = {}
        self.last_use: dict[tuple[int, int], int] = {}
        self.clip_rows: dict[tuple[int, int], set[int]] = {}
        for i, w in enumerate(windows):
            self.needed.setdefault(w.shard, set()).update(w.rows)
            self.last_use[(w.shard, w.clip)] = i
            self.clip_rows.setdefault((w.shard, w.clip), set()).update(w.rows)
        self.stream = [s for s in stream if s in self.needed]
        missing = set(self.needed) - set(self.stream)
        if missing:  # pragma: no cover - plan invariant
            raise LoaderError(f"plan needs shards {sorted(missing)} that are not in the read stream")
        self.cache: dict[tuple[int, int], Frame | None] = {}
        self.metas: dict[int, ShardMeta] = {}
        self._stream_pos = 0
        self._reader: Iterator | None = None
        self._reading: int | None = None

    # -- reading ----------------------------------------------------------------------
    def _open_next(self) -> bool:
        if self._stream_pos >= len(self.stream):
            return False
        s = self.stream[self._stream_pos]
        self._stream_pos += 1
        self._reading = s
        self.metas[s] = self.src.meta(s)
        self._reader = self._read_shard(s)
        return True

    def _read_shard(self, s: int) -> Iterator[None]:
        spec = self.src.shards[s]
        meta = self.metas[s]
        rows = meta.row_of()
        need = self.needed[s]
        seen_rows: set[int] = set()
        last_key = None
        try:
            with open_stream(spec.url, self.src.io) as f:
                for key, members in iter_tar_samples(f, spec.url):
                    last_key = key
                    row = rows.get(key)
                    if row is None:
                        self.errors.bad(f"{spec.url}: tar sample {key!r} has no sidecar row")
                        continue
                    seen_rows.add(row)
                    if row in need:
                        self.cache[(s, row)] = self._decode(spec.url, key, meta, row, members)
                        yield
        except TarReadError as e:
            log.warning("%s", e)
            last_key = e.key or last_key
        except OSError as e:
            log.warning("reading %s failed after sample %r: %s", spec.url, last_key, e)
        lost = sorted(need - seen_rows)
        for row in lost:
            self.cache[(s, row)] = None
        if lost:
            keys = [meta.keys[r] for r in lost]
            self.errors.bad(f"{spec.url}: {len(lost)} sample(s) missing from the tar (after {last_key!r}): "
                            f"{', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}", n=len(lost))

    def _decode(self, url: str, key: str, meta: ShardMeta, row: int, members: dict[str, bytes]) -> Frame | None:
        missing = [e for e in CAMERA_EXTS if e not in members]
        if missing:
            self.errors.bad(f"{url}: sample {key!r} lacks member(s) {', '.join(missing)}")
            return None
        datas = [members[e] for e in CAMERA_EXTS]
        whs = [tuple(int(v) for v in meta.cam_size[row, c]) for c in range(len(CAMERAS))]
        points = None
        if self.load_points:
            if LIDAR_EXT not in members:
                self.errors.bad(f"{url}: sample {key!r} lacks member {LIDAR_EXT}")
                return None
            try:
                import io

                points = np.load(io.BytesIO(members[LIDAR_EXT]), allow_pickle=False).astype(np.float32)
                if points.ndim != 2 or points.shape[1] != 4:
                    raise ValueError(f"shape {points.shape}, expected [N, 4]")
            except Exception as e:  # noqa: BLE001
                self.errors.bad(f"{url}: sample {key!r} {LIDAR_EXT}: {e}")
                return None
        if not self.decode_in_worker:
            errs = self.decoder._check_sizes(datas, whs)
            bad = [(CAMERAS[c], e) for c, e in enumerate(errs) if e is not None]
            if bad:
                self.errors.bad(f"{url}: sample {key!r} camera {bad[0][0]}: {bad[0][1]}")
                return None
            self.errors.ok()
            return Frame(datas, points, self.ledger.new_id())
        if self.ledger.pool is None:
            self.ledger.pool = SlotPool((len(CAMERAS),) + tuple(self.decoder.out_hw) + (3,))
        slot, buf = self.ledger.pool.alloc()  # [C, H, W, 3] uint8 in shared memory
        view = buf.numpy()
        if isinstance(self.decoder, CpuDecoder):
            outs: list = []
            for c in range(len(CAMERAS)):
                try:
                    outs.append(self.decoder.decode(datas[c], whs[c], out=view[c]))
                except DecodeError as e:
                    outs.append(e)
                    break
        else:  # DALI on CPU: one pipeline run for the six cameras
            outs = self.decoder.decode_many(datas, whs)
        for c, o in enumerate(outs):
            if isinstance(o, Exception):
                self.ledger.pool.free(slot)
                self.errors.bad(f"{url}: sample {key!r} camera {CAMERAS[c]} ({CAMERA_EXTS[c]}): {o}")
                return None
            if o is not view[c]:
                view[c] = o
        self.errors.ok()
        fid = self.ledger.new_id()
        self.ledger.slot_of[fid] = slot
        return Frame(buf, points, fid, slot)

    def _ensure(self, s: int, rows: tuple[int, ...]) -> None:
        while any((s, r) not in self.cache for r in rows):
            if self._reader is None or self._reading is None:
                if not self._open_next():
                    for r in rows:
                        self.cache.setdefault((s, r), None)
                    return
            try:
                next(self._reader)
            except StopIteration:
                self._reader = None
                self._reading = None

    # -- delivering -------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Window, list[Frame] | None, list[bool]]]:
        for i, w in enumerate(self.windows):
            self._ensure(w.shard, w.rows)
            frames = [self.cache.get((w.shard, r)) for r in w.rows]
            result = None
            valid = list(w.valid)
            if frames[-1] is not None:
                # a bad previous frame is treated like a missing one: nearest good frame, invalid
                good = [t for t, f in enumerate(frames) if f is not None and w.valid[t]]
                rows = list(w.rows)
                for t in range(len(frames)):
                    if frames[t] is None:
                        near = min(good, key=lambda a: (abs(a - t), -a))
                        frames[t], rows[t], valid[t] = frames[near], w.rows[near], False
                w = Window(w.shard, w.clip, tuple(rows), w.valid, w.cycle)
                result = frames
            yield w, result, valid
            if self.last_use.get((w.shard, w.clip)) == i:
                for r in self.clip_rows[(w.shard, w.clip)]:
                    f = self.cache.pop((w.shard, r), None)
                    if f is not None:
                        self.ledger.released.append(f.fid)


def _shared_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor, in shared memory when inside a DataLoader worker (so the
    DataLoader sends it without another copy)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    n = int(np.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(n, 1))).view(-1)[:n].view(shape)


def collate(items: list[tuple[Window, list[Frame], list[bool]]], metas: dict[int, ShardMeta],
            cfg: LoaderConfig, decode_in_worker: bool, ledger: FrameLedger) -> dict[str, Any]:
    """Raw batch: metadata as numpy arrays (pickled inline: no shared-memory segment per small
    array), images as shared-memory uint8 tensors.

    Images travel deduplicated: ``new_frames [F, C, H, W, 3]`` uint8 holds the frames this
    batch uses for the first time (ids ``new_frame_ids``), ``frame_ids [B, T]`` names the frame
    of every window slot, and ``release`` lists ids no later batch of this worker uses. The
    main process keeps a frame cache (see :func:`assemble_images`).
    """
    rows_meta = [(metas[w.shard], w.rows) for w, _, _ in items]

    def gather(attr: str) -> np.ndarray:
        return np.stack([getattr(m, attr)[list(rows)] for m, rows in rows_meta])

    cam_size = gather("cam_size")  # [B, T, C, 2]
    a_dec = np.zeros(cam_size.shape[:3] + (3, 3))
    for idx in np.ndindex(*cam_size.shape[:3]):
        a_dec[idx] = decode_matrix(int(cam_size[idx][0]), int(cam_size[idx][1]), cfg.crop_box, cfg.image_size)
    out: dict[str, Any] = {
        "intrinsics": gather("intrinsics"),
        "cam2ego": gather("cam2ego"),
        "cam_ego2global": gather("cam_ego2global"),
        "ego2global": gather("ego2global"),
        "decode_aug": a_dec,
        "valid_prev": np.array([v for _, _, v in items], dtype=bool),
    }
    # frames: each crosses once; the batch refers to them by id
    fids = np.array([[f.fid for f in frames] for _, frames, _ in items], dtype=np.int64)
    new: list[Frame] = []
    for _, frames, _ in items:
        for f in frames:
            if f.fid not in ledger.sent:
                ledger.sent.add(f.fid)
                new.append(f)
    out["frame_ids"] = fids
    out["new_frame_ids"] = [f.fid for f in new]
    if decode_in_worker:
        pool = ledger.pool
        if pool is not None and not pool.flags_sent:
            out["slot_flags"] = pool.flags
            pool.flags_sent = True
        # slot >= 0: the frame is in pool slot `slot` (its buffer sent once); else the tensor itself
        out["new_slots"] = [f.slot for f in new]
        out["new_frames"] = [None if f.slot >= 0 else f.imgs for f in new]
        if pool is not None and pool.buffers_sent < len(pool.buffers):
            out["slot_buffers"] = {i: pool.buffers[i] for i in range(pool.buffers_sent, len(pool.buffers))}
            pool.buffers_sent = len(pool.buffers)
    else:
        out["new_jpegs"] = [f.imgs for f in new]
        out["src_wh"] = {f.fid: cam_size[b, t] for b, (_, frames, _) in enumerate(items) for t, f in enumerate(frames)}
        out["src_wh"] = [out["src_wh"][f.fid] for f in new]
    released = [i for i in ledger.released if i in ledger.sent]
    for i in ledger.released:  # frames never sent: the worker frees their slots itself
        slot = ledger.slot_of.pop(i, -1)
        if i not in ledger.sent and ledger.pool is not None:
            ledger.pool.free(slot)
    ledger.sent.difference_update(released)
    ledger.released = []
    out["release"] = released
    boxes, labels, attrs, npts, vis, points = [], [], [], [], [], []
    tokens, scenes, stamps = [], [], []
    for (m, rows), (_, frames, _) in zip(rows_meta, items):
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
            points.append(frames[-1].points)
    out.update(gt_boxes=boxes, gt_labels=labels, gt_attrs=attrs, gt_num_pts=npts, gt_visibility=vis,
               sample_token=tokens, scene_token=scenes, timestamp=np.array(stamps, dtype=np.int64),
               keys=[m.keys[rows[-1]] for m, rows in rows_meta],
               points=points if cfg.load_points else None)
    return out


@dataclass
class EpochSpec:
    """What the main process tells the workers for one epoch (picklable)."""

    epoch: int
    batches_per_worker: list[int]
    """Train: exact number of batches each worker yields (equal totals on every rank)."""
    resume: dict[int, tuple[int, int]] = field(default_factory=dict)
    """worker -> (plan windows consumed, batches delivered) from a saved state."""
    worker_offset: int = 0
    """DataLoader worker i plays logical worker (i + offset) % num_workers, so that after a resume
    the DataLoader's round-robin (which starts at worker 0) continues with the right worker."""


class WindowStream(IterableDataset):
    """IterableDataset of raw batches for one rank; see the module docstring."""

    def __init__(self, cfg: LoaderConfig, shards: list[ShardSpec], rank: int, world: int):
        super().__init__()
        self.cfg = cfg
        self.shards = shards
        self.rank = rank
        self.world = world
        self.spec = EpochSpec(0, [0])
        self.decode_in_worker = not dali_on_gpu(cfg)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self.spec.worker_offset) % nw
        errors = ErrorCounter(self.cfg.max_error_rate, self.cfg.error_grace)
        if self.decode_in_worker:
            decoder = make_decoder(self.cfg)
        else:
            from .decode_dali import DaliDecoder

            decoder = DaliDecoder
        src = PlanSource(self.shards, self.cfg)
        consumed, delivered = self.spec.resume.get(worker, (0, 0))
        if self.cfg.mode == "eval":
            yield from self._eval(src, worker, nw, decoder, errors, consumed, delivered)
        else:
            yield from self._train(src, worker, nw, decoder, errors, consumed, delivered)
        errors.check(final=True)

    def _tag(self, batch: dict, worker: int, consumed: int, delivered: int, errors: ErrorCounter) -> dict:
        batch["worker"] = worker
        batch["progress"] = {"worker": worker, "consumed": consumed, "delivered": delivered,
                             "errors": errors.errors, "seen": errors.seen}
        return batch

    def _train(self, src, worker, nw, decoder, errors, consumed, delivered):
        cfg = self.cfg
        quota = self.spec.batches_per_worker[worker] if worker < len(self.spec.batches_per_worker) else 0
        pos, cycle, pending = 0, 0, []
        ledger = FrameLedger()
        metas: dict[int, ShardMeta] = {}
        while delivered < quota:
            stream, wins = train_cycle(src.clips, len(self.shards), seed=cfg.seed, epoch=self.spec.epoch,
                                       cycle=cycle, rank=self.rank, world=self.world, worker=worker,
                                       num_workers=nw, shuffle_shards=cfg.shuffle_shards,
                                       bufsize=cfg.shuffle_buffer)
            if not wins:
                raise LoaderError(f"rank {self.rank} worker {worker} has no samples in its shards")
            skip = min(max(consumed - pos, 0), len(wins))
            pos += skip
            if skip < len(wins):
                ex = Executor(src, stream, wins[skip:], decoder, errors, decode_in_worker=self.decode_in_worker,
                              load_points=cfg.load_points, ledger=ledger)
                ex.metas = metas  # shared across passes: pending windows may come from the last pass
                for item in ex:
                    pos += 1
                    if item[1] is None:
                        continue
                    pending.append(item)
                    if len(pending) == cfg.batch_size:
                        delivered += 1
                        batch = collate(pending, metas, cfg, self.decode_in_worker, ledger)
                        pending = []
                        yield self._tag(batch, worker, pos, delivered, errors)
                        if delivered >= quota:
                            return
            cycle += 1
            if cycle > 1000:
                raise LoaderError("no usable windows after 1000 passes over the shards")

    def _eval(self, src, worker, nw, decoder, errors, consumed, delivered):
        cfg = self.cfg
        shards = list(contiguous_block(len(self.shards), self.rank, self.world))
        batches = eval_batches(src.clips, shards, cfg.batch_size)[worker::nw]
        batches = batches[delivered:]
        wins = [w for b in batches for w in b]
        if not wins:
            return
        ledger = FrameLedger()
        ex = Executor(src, shards, wins, decoder, errors, decode_in_worker=self.decode_in_worker,
                      load_points=cfg.load_points, ledger=ledger)
        it = iter(ex)
        for b in batches:
            items = [x for x in (next(it) for _ in b) if x[1] is not None]
            delivered += 1
            if items:
                yield self._tag(collate(items, ex.metas, cfg, self.decode_in_worker, ledger), worker, 0, delivered,
                                errors)


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

    def assemble(self, raw: dict[str, Any], new_frames: torch.Tensor | list | None = None) -> torch.Tensor:
        """Store the batch's new frames, build ``[B, T, C, H, W, 3]`` uint8 on the device, apply releases."""
        w = int(raw["worker"])
        if "slot_flags" in raw:
            self.flags[w] = raw.pop("slot_flags")
        for i, buf in raw.pop("slot_buffers", {}).items():
            self.buffers[(w, int(i))] = buf
        new = raw.pop("new_frames") if new_frames is None else new_frames
        slots = raw.pop("new_slots", None) or [-1] * len(raw["new_frame_ids"])
        for i, fid in enumerate(raw.pop("new_frame_ids")):
            src = new[i] if new_frames is not None or slots[i] < 0 else self.buffers[(w, slots[i])]
            self.frames[(w, fid)] = (src.to(self.device, non_blocking=src.is_pinned()), slots[i])
        fids = raw.pop("frame_ids")
        b, t = fids.shape
        imgs = torch.stack([self.frames[(w, int(f))][0] for f in np.asarray(fids).reshape(-1)])
        for fid in raw.pop("release"):
            entry = self.frames.pop((w, int(fid)), None)
            if entry is not None and entry[1] >= 0 and new_frames is None:
                self.flags[w][entry[1]] = 0
        return imgs.reshape(b, t, *imgs.shape[1:])
