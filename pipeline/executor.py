"""The worker's read loop: follow a plan of windows, stream its shards, decode the frames it needs.

:class:`PlanSource` holds the sidecars of the shards a worker reads (opened once); the
:class:`Executor` delivers the plan's windows in emission order with their :class:`Frame` s,
decoding each frame when the tar stream passes it (only if a remaining window needs it) and
releasing it after its clip's last window. Faults are counted by
:class:`pipeline.faults.ErrorCounter` (see :mod:`pipeline.faults`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

import numpy as np
import pyarrow as pa

from shards.conventions import CAMERAS

from .config import LoaderConfig
from .decode_cpu import CameraDecodeError
from .decoder import Decoder
from .faults import ErrorCounter, LoaderError
from .meta import ShardMeta, open_sidecar_table
from .tario import TarReadError, iter_tar_samples
from .transport import Frame, FrameLedger, SlotPool
from .urls import IOOptions, ShardSpec, is_remote, open_stream
from .windows import Window, shard_windows

log = logging.getLogger("pipeline")

CAMERA_EXTS = tuple(c.lower() + ".jpg" for c in CAMERAS)
"""Tar member extension of each camera, camera order."""
LIDAR_EXT = "lidar.npy"


@dataclass
class Delivered:
    """A plan window as the executor delivers it: ``frames`` holds its T frames (oldest first; a bad
    or missing previous frame replaced by the nearest good one, its ``valid`` False, and ``window.rows``
    updated to match), or None when the current frame is bad (the window is dropped)."""

    window: Window
    frames: list[Frame] | None
    valid: list[bool]


def io_options(cfg: LoaderConfig) -> IOOptions:
    return IOOptions(cfg.s3_endpoint_url, cfg.http_timeout, cfg.max_retries, cfg.retry_backoff)


def verifies(cfg: LoaderConfig, spec: ShardSpec) -> bool:
    """Whether the shard's tar and sidecar are checked against the manifest's sha256."""
    if cfg.verify_checksums is None:
        return is_remote(spec.url) and spec.sha256 is not None
    return bool(cfg.verify_checksums)


def spool_verified(f: IO[bytes], spool_bytes: int) -> tuple[IO[bytes], str]:
    """Copy the stream ``f`` into a spooled file (memory up to ``spool_bytes``, then disk) while
    hashing it; returns (the copy at offset 0, the hex sha256 read). The caller compares."""
    h = hashlib.sha256()
    out = tempfile.SpooledTemporaryFile(max_size=spool_bytes)
    try:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out, h.hexdigest()


class PlanSource:
    """Sidecars of the shards a worker reads (opened once, kept) and their clips/windows."""

    def __init__(self, shards: list[ShardSpec], cfg: LoaderConfig):
        self.shards = shards
        self.cfg = cfg
        self.io = io_options(cfg)
        self._tables: dict[int, pa.Table] = {}
        self._clips: dict[int, list[list[Window]]] = {}
        self._metas: dict[int, ShardMeta] = {}

    def table(self, s: int) -> pa.Table:
        if s not in self._tables:
            spec = self.shards[s]
            try:
                self._tables[s] = open_sidecar_table(spec.sidecar_url, self.io,
                                                     spec.sidecar_sha256 if self.verify(s) else None)
            except Exception as e:  # noqa: BLE001
                raise LoaderError(f"cannot read sidecar {self.shards[s].sidecar_url}: {type(e).__name__}: {e}") from e
        return self._tables[s]

    def verify(self, s: int) -> bool:
        return verifies(self.cfg, self.shards[s])

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
            try:
                self._metas[s] = ShardMeta.from_table(self.shards[s].sidecar_url, self.table(s))
            except ValueError as e:
                raise LoaderError(str(e)) from e
        return self._metas[s]


class Executor:
    """Deliver the windows of a plan (emission order) with their decoded frames.

    ``stream`` is the order shards are read in; frames are decoded when the reader passes
    them, only if a remaining window needs them, and freed after their clip's last window.
    With ``decode_in_worker`` False the frames keep their JPEG bytes (headers checked) for
    the main process to decode. Shards verified against their sha256 are fetched (copied aside
    and hashed) by a background thread, the next shard of the stream while the current one
    decodes, so verification does not serialise transfer and decode.
    """

    def __init__(self, src: PlanSource, stream: list[int], windows: list[Window], decoder: Decoder,
                 errors: ErrorCounter, *, decode_in_worker: bool, load_points: bool,
                 ledger: FrameLedger | None = None):
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
        self._fetches: dict[int, Future] = {}
        self._fetcher: ThreadPoolExecutor | None = None

    # -- reading ----------------------------------------------------------------------
    def _open_next(self) -> bool:
        if self._stream_pos >= len(self.stream):
            return False
        s = self.stream[self._stream_pos]
        self._stream_pos += 1
        self._start_fetch(s)
        if self._stream_pos < len(self.stream):
            self._start_fetch(self.stream[self._stream_pos])  # overlap the next transfer with this decode
        self._reading = s
        self.metas[s] = self.src.meta(s)
        self._reader = self._read_shard(s)
        return True

    def _verified(self, s: int) -> bool:
        return self.src.verify(s) and self.src.shards[s].sha256 is not None

    def _start_fetch(self, s: int) -> None:
        if s in self._fetches or not self._verified(s):
            return
        if self._fetcher is None:
            self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="bevstream-fetch")
        spec = self.src.shards[s]
        spool = int(self.src.cfg.verify_spool_mb * 2**20)

        def fetch() -> tuple[IO[bytes], str]:
            with open_stream(spec.url, self.src.io) as f:
                return spool_verified(f, spool)

        self._fetches[s] = self._fetcher.submit(fetch)

    def close(self) -> None:
        """Stop background fetches (their spooled copies are dropped)."""
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=False, cancel_futures=True)
            self._fetcher = None
        for fut in self._fetches.values():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result()[0].close()
        self._fetches.clear()

    def _read_shard(self, s: int) -> Iterator[None]:
        """Stream shard ``s``: cache the frame (or None) of every needed row, yielding after each.

        With checksums the whole tar is first copied aside and hashed, so no sample of a
        mismatching tar is ever used. Tar samples must follow the sidecar's row order (rows
        may be missing: a damaged tar); a sample out of order is a bad sample.
        """
        spec = self.src.shards[s]
        meta = self.metas[s]
        rows = meta.row_of()
        need = self.needed[s]
        seen_rows: set[int] = set()
        last_key = None
        prev_row = -1
        try:
            with contextlib.ExitStack() as stack:
                if self._verified(s):
                    self._start_fetch(s)
                    f, got = self._fetches.pop(s).result()  # the copy (read errors raise here)
                    stack.callback(f.close)
                    if got != spec.sha256:
                        for row in need:
                            self.cache[(s, row)] = None
                        self.errors.bad(f"{spec.url}: sha256 {got} differs from the manifest's {spec.sha256}: "
                                        f"all {len(need)} sample(s) of the shard skipped", n=len(need))
                        return
                else:
                    f = stack.enter_context(open_stream(spec.url, self.src.io))
                for key, members in iter_tar_samples(f, spec.url):
                    last_key = key
                    row = rows.get(key)
                    if row is None:
                        self.errors.bad(f"{spec.url}: tar sample {key!r} has no sidecar row")
                        continue
                    if row <= prev_row:
                        self.errors.bad(f"{spec.url}: tar sample {key!r} is out of the sidecar's row order "
                                        f"(row {row} after row {prev_row})")
                        if row not in seen_rows and row in need:
                            self.cache[(s, row)] = None
                        seen_rows.add(row)
                        continue
                    prev_row = row
                    seen_rows.add(row)
                    if row in need:
                        self.cache[(s, row)] = self._frame(spec.url, key, meta, row, members)
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

    def _frame(self, url: str, key: str, meta: ShardMeta, row: int, members: dict[str, bytes]) -> Frame | None:
        """The frame of one tar sample (decoded, or its checked JPEGs), or None for a bad sample."""
        if row in meta.nonfinite:
            self.errors.bad(f"{url}: sample {key!r} has non-finite values in {meta.nonfinite[row]}")
            return None
        missing = [e for e in CAMERA_EXTS if e not in members]
        if missing:
            self.errors.bad(f"{url}: sample {key!r} lacks member(s) {', '.join(missing)}")
            return None
        datas = [members[e] for e in CAMERA_EXTS]
        src_wh = meta.cam_size[row]  # [N, 2] (width, height)
        whs = [(int(w), int(h)) for w, h in src_wh]
        points = None
        if self.load_points:
            if LIDAR_EXT not in members:
                self.errors.bad(f"{url}: sample {key!r} lacks member {LIDAR_EXT}")
                return None
            try:
                points = np.load(io.BytesIO(members[LIDAR_EXT]), allow_pickle=False).astype(np.float32)
                if points.ndim != 2 or points.shape[1] != 4:
                    raise ValueError(f"shape {points.shape}, expected [N, 4]")
            except Exception as e:  # noqa: BLE001
                self.errors.bad(f"{url}: sample {key!r} {LIDAR_EXT}: {e}")
                return None
        if not self.decode_in_worker:
            errs = self.decoder.check_sizes(datas, whs)
            bad = [(CAMERAS[c], e) for c, e in enumerate(errs) if e is not None]
            if bad:
                self.errors.bad(f"{url}: sample {key!r} camera {bad[0][0]}: {bad[0][1]}")
                return None
            self.errors.ok()
            return Frame(datas, points, self.ledger.new_id(), -1, src_wh)
        if self.ledger.pool is None:
            self.ledger.pool = SlotPool((len(CAMERAS),) + tuple(self.decoder.out_hw) + (3,))
        slot, buf = self.ledger.pool.alloc()  # [N, H, W, 3] uint8 in shared memory
        try:
            self.decoder.decode_frame(datas, whs, buf.numpy())
        except CameraDecodeError as e:
            self.ledger.pool.free(slot)
            self.errors.bad(f"{url}: sample {key!r} camera {CAMERAS[e.camera]} ({CAMERA_EXTS[e.camera]}): {e.error}")
            return None
        self.errors.ok()
        fid = self.ledger.new_id()
        self.ledger.slot_of[fid] = slot
        return Frame(buf, points, fid, slot, src_wh)

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
    def __iter__(self) -> Iterator[Delivered]:
        """One :class:`Delivered` per plan window, in plan order."""
        try:
            yield from self._deliver()
        finally:
            self.close()

    def _deliver(self) -> Iterator[Delivered]:
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
            yield Delivered(w, result, valid)
            if self.last_use.get((w.shard, w.clip)) == i:
                for r in self.clip_rows[(w.shard, w.clip)]:
                    f = self.cache.pop((w.shard, r), None)
                    if f is not None:
                        self.ledger.released.append(f.fid)
