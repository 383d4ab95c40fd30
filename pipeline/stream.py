"""The worker side of the loader: one rank's ``IterableDataset`` of :class:`RawBatch` es.

Runs inside each torch DataLoader worker (or in the main process when ``num_workers=0``).
Each worker computes its read plan (:mod:`pipeline.windows`), follows it with an
:class:`pipeline.executor.Executor` (stream shards, decode frames) and yields whole
:class:`pipeline.raw_batch.RawBatch` es built by :func:`pipeline.collate.collate`, so the
DataLoader is used with ``batch_size=None``; augmentation happens later on the batch device.

A batch from shard to ``Batch``: ``ShardSpec`` (urls) -> ``ShardMeta`` (meta, the sidecar) ->
``Window`` (windows) -> ``Delivered`` (executor: the window with its ``Frame`` s) ->
``RawBatch`` (collate) ->
``FrameCache.assemble`` (transport) -> ``finish_batch`` (augment) -> ``Batch``.

Faults (:mod:`pipeline.faults`): bad samples are skipped, counted and logged with shard URL and
key. A bad previous frame of a window is treated like a missing one (filled with the nearest
good frame, ``valid=False``); a window whose current frame is bad is dropped. When bad samples
exceed ``max_error_rate`` of the samples read (after ``error_grace`` samples), the worker raises
:class:`LoaderError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from torch.utils.data import IterableDataset, get_worker_info

from .collate import collate
from .config import LoaderConfig
from .decoder import Decoder, dali_on_gpu, make_decoder
from .executor import Delivered, Executor, PlanSource, io_options
from .faults import ErrorCounter, LoaderError
from .meta import ShardMeta
from .raw_batch import RawBatch, WorkerProgress
from .transport import FrameCache, FrameLedger
from .urls import ShardSpec
from .windows import contiguous_block, eval_batches, train_cycle

__all__ = ["EpochSpec", "FrameCache", "LoaderError", "WindowStream", "dali_on_gpu", "io_options"]


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

    def __iter__(self) -> Iterator[RawBatch]:
        info = get_worker_info()
        worker, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self.spec.worker_offset) % nw
        errors = ErrorCounter(self.cfg.max_error_rate, self.cfg.error_grace)
        decoder = make_decoder(self.cfg)  # in-worker decode, or header checks only (GPU decode)
        src = PlanSource(self.shards, self.cfg)
        consumed, delivered = self.spec.resume.get(worker, (0, 0))
        if self.cfg.mode == "eval":
            yield from self._eval(src, worker, nw, decoder, errors, consumed, delivered)
        else:
            yield from self._train(src, worker, nw, decoder, errors, consumed, delivered)
        errors.check(final=True)

    def _collate(self, items: list[Delivered], metas: dict[int, ShardMeta], ledger: FrameLedger, worker: int,
                 consumed: int, delivered: int, errors: ErrorCounter) -> RawBatch:
        progress = WorkerProgress(worker, consumed, delivered, errors.errors, errors.seen)
        return collate(items, metas, self.cfg, self.decode_in_worker, ledger, progress)

    def _train(self, src: PlanSource, worker: int, nw: int, decoder: Decoder, errors: ErrorCounter,
               consumed: int, delivered: int) -> Iterator[RawBatch]:
        cfg = self.cfg
        quota = self.spec.batches_per_worker[worker] if worker < len(self.spec.batches_per_worker) else 0
        pos, cycle, pending = 0, 0, []
        ledger = FrameLedger()
        metas: dict[int, ShardMeta] = {}
        while delivered < quota:
            stream, wins = train_cycle(src.clips, len(self.shards), seed=cfg.seed, epoch=self.spec.epoch,
                                       cycle=cycle, rank=self.rank, world=self.world, worker=worker,
                                       num_workers=nw, shuffle_shards=cfg.shuffle_shards,
                                       bufsize=cfg.shuffle_buffer, resampled=cfg.resampled)
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
                    if item.frames is None:
                        continue
                    pending.append(item)
                    if len(pending) == cfg.batch_size:
                        delivered += 1
                        batch = self._collate(pending, metas, ledger, worker, pos, delivered, errors)
                        pending = []
                        yield batch
                        if delivered >= quota:
                            return
            cycle += 1
            if cycle > 1000:
                raise LoaderError("no usable windows after 1000 passes over the shards")

    def _eval(self, src: PlanSource, worker: int, nw: int, decoder: Decoder, errors: ErrorCounter,
              consumed: int, delivered: int) -> Iterator[RawBatch]:
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
            items = [x for x in (next(it) for _ in b) if x.frames is not None]
            delivered += 1
            if items:
                yield self._collate(items, ex.metas, ledger, worker, 0, delivered, errors)


