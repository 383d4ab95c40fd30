"""``build_loader(cfg) -> Loader``: shard URLs -> windows -> decode -> augment -> ``Batch``.

    loader = build_loader(LoaderConfig(shards="shards/mini_train", batch_size=2, offsets=(-1, 0)))
    for batch in loader:          # one epoch
        ...
    state = loader.state_dict()   # resume later with loader.load_state_dict(state)

Distribution: shards are shuffled per epoch (``seed``, epoch), split across ranks and then
across DataLoader workers by striding (webdataset ``split_by_node``/``split_by_worker``).
Every rank yields exactly ``len(loader)`` batches per epoch (webdataset ``with_epoch``
semantics): ``epoch_samples // (world_size * batch_size)``, split over the workers; a worker
whose shards run out continues with a fresh pass (next shard permutation), so uneven shards
never make ranks disagree (no DDP hang). Fewer shards than ranks x workers is an error.

Eval mode: every frame exactly once, in shard/scene/time order; each rank reads a contiguous
block of shards; batch i of a rank is built by worker ``i % num_workers`` and the DataLoader
returns them round-robin, i.e. in order (each worker streams the rank's shards and decodes
only its own batches).

Resume granularity: one batch. The state holds the epoch, the seed and, per worker, how many
plan windows it consumed and how many batches it delivered up to the last batch *returned*
(prefetched batches are not counted and are rebuilt after a resume). Restoring requires the
same seed, ranks and worker count; a resumed epoch recomputes each worker's plan from the
sidecars and skips the consumed windows without reading shards that hold none of the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from shards.contracts.batch import Batch

from .augment import finish_batch
from .config import LoaderConfig
from .decoder import dali_on_gpu
from .executor import io_options
from .faults import LoaderError
from .meta import open_sidecar_table
from .raw_batch import RawBatch
from .stream import EpochSpec, WindowStream
from .transport import FrameCache
from .urls import ShardSpec, expand_shard_urls

log = logging.getLogger("pipeline")


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def resolve_rank(cfg: LoaderConfig) -> tuple[int, int]:
    """(rank, world_size) from the config, else RANK/WORLD_SIZE or torch.distributed."""
    if cfg.rank is not None or cfg.world_size is not None:
        rank, world = int(cfg.rank or 0), int(cfg.world_size or 1)
    else:
        from webdataset.utils import pytorch_worker_info

        rank, world, _, _ = pytorch_worker_info()
    if not 0 <= rank < world:
        raise LoaderError(f"rank {rank} is not in [0, world_size={world})")
    return rank, world


def count_samples(shards: list[ShardSpec], cfg: LoaderConfig) -> int:
    """Frames over all shards: from the manifest when it has counts, else the sidecars' rows."""
    total = 0
    io = io_options(cfg)
    for s in shards:
        if s.num_samples is not None:
            total += s.num_samples
            continue
        try:
            total += open_sidecar_table(s.sidecar_url, io).num_rows
        except Exception as e:  # noqa: BLE001 - unreachable host, 404, damaged sidecar: one clear error
            raise LoaderError(f"cannot read sidecar {s.sidecar_url}: {type(e).__name__}: {e}") from e
    return total


class Loader:
    """Iterable of :class:`Batch` (one epoch per ``iter``), resumable; see the module docstring."""

    def __init__(self, cfg: LoaderConfig):
        self.cfg = cfg
        self.shards = expand_shard_urls(cfg.shards, allow_pipe=cfg.allow_pipe, io_opts=io_options(cfg))
        if cfg.verify_checksums:
            unknown = [s.url for s in self.shards if s.sha256 is None]
            if unknown:
                raise LoaderError(f"verify_checksums=true but no sha256 is known for {unknown[0]} (and "
                                  f"{len(unknown) - 1} more): list the shards through their manifest.json")
        self.rank, self.world = resolve_rank(cfg)
        self.num_workers = cfg.num_workers
        nw = max(1, cfg.num_workers)
        n = len(self.shards)
        if cfg.mode == "train" and n < self.world * nw and not cfg.resampled:
            raise LoaderError(f"{n} shard(s) for {self.world} rank(s) x {nw} worker(s): every worker needs at "
                              f"least one shard (use fewer workers, build smaller shards, or data.resampled=true)")
        if cfg.mode == "eval" and n < self.world:
            raise LoaderError(f"{n} shard(s) for {self.world} rank(s): every rank needs at least one shard")
        self.device = torch.device(cfg.device)
        self.pin = cfg.pin_memory if cfg.pin_memory is not None else self.device.type == "cuda"
        self.epoch_samples = cfg.epoch_samples if cfg.epoch_samples is not None else count_samples(self.shards, cfg)
        self.batches_per_rank = self.epoch_samples // (self.world * cfg.batch_size)
        if cfg.mode == "train" and self.batches_per_rank == 0:
            raise LoaderError(f"{self.epoch_samples} samples are not enough for one batch of {cfg.batch_size} "
                              f"on each of {self.world} rank(s)")
        self.epoch = 0
        self._batches_done = 0
        self._progress: dict[int, tuple[int, int]] = {}
        self.error_stats: dict[int, tuple[int, int]] = {}
        self._gpu_decoder = None

    def __len__(self) -> int:
        if self.cfg.mode == "train":
            return self.batches_per_rank
        raise TypeError("eval loaders have no fixed length (every frame once)")

    def per_worker_batches(self) -> list[int]:
        nw = max(1, self.num_workers)
        q, r = divmod(self.batches_per_rank, nw)
        return [q + (1 if w < r else 0) for w in range(nw)]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._batches_done, self._progress = epoch, 0, {}

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.cfg.seed, "batches_done": self._batches_done,
                "workers": {int(w): list(v) for w, v in self._progress.items()},
                "num_workers": self.num_workers, "world_size": self.world, "rank": self.rank,
                "mode": self.cfg.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, mine in (("seed", self.cfg.seed), ("num_workers", self.num_workers), ("world_size", self.world),
                        ("mode", self.cfg.mode)):
            if state.get(k) != mine:
                raise LoaderError(f"cannot resume: saved {k}={state.get(k)!r} but this loader has {k}={mine!r}")
        self.epoch = int(state["epoch"])
        self._batches_done = int(state["batches_done"])
        self._progress = {int(w): (int(v[0]), int(v[1])) for w, v in state["workers"].items()}

    # -- iteration -----------------------------------------------------------------------
    def _decode_on_gpu(self, raw: RawBatch) -> torch.Tensor | None:
        """DALI nvJPEG decode of the batch's new frames: ``[F, N, H, W, 3]`` uint8 on the GPU."""
        from .decode_dali import DaliDecoder

        jpegs = raw.frames.new_jpegs or []
        src_wh = raw.frames.new_src_wh or []
        if not jpegs:
            return None
        n = len(jpegs[0])
        flat = [d for frame in jpegs for d in frame]
        whs = [tuple(int(v) for v in wh[c]) for wh in src_wh for c in range(n)]
        if self._gpu_decoder is None:
            dev = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._gpu_decoder = DaliDecoder(self.cfg.image_size, self.cfg.crop_box, gpu=True,
                                            max_batch=max(len(flat), 6 * self.cfg.batch_size * self.cfg.T),
                                            num_threads=2, device_id=dev)
        out = self._gpu_decoder.decode_many(flat, whs)
        bad = [i for i, o in enumerate(out) if isinstance(o, Exception)]
        if bad:
            raise LoaderError(f"GPU decode failed for frame {raw.frames.new_ids[bad[0] // n]}: {out[bad[0]]}")
        return torch.stack(out).reshape(len(jpegs), n, *out[0].shape)

    def host_batches(self) -> Iterator[RawBatch]:
        """One epoch of :class:`RawBatch` es, as the workers produce them: the frames used for the
        first time (in shared slots, or their JPEG bytes for GPU decode), ``frame_ids [B, T]``,
        releases, and float64 metadata (numpy).
        Each decoded frame crosses to the main process (and to the GPU) once, however many
        windows use it; :meth:`__iter__` assembles ``[B, T, N, ...]`` on the device
        (:class:`pipeline.transport.FrameCache`) and augments."""
        cfg = self.cfg
        ds = WindowStream(cfg, self.shards, self.rank, self.world)
        ds.spec = EpochSpec(self.epoch, self.per_worker_batches(), dict(self._progress),
                            self._batches_done % max(1, cfg.num_workers))
        kw: dict[str, Any] = {}
        if cfg.num_workers > 0:
            kw = {"prefetch_factor": cfg.prefetch_factor, "worker_init_fn": _worker_init}
        # no DataLoader pinning: it would copy the workers' shared frame slots (FrameCache copies
        # each frame from shared memory to the device once instead)
        dl = DataLoader(ds, batch_size=None, num_workers=cfg.num_workers, pin_memory=False, **kw)
        for raw in dl:
            prog = raw.progress
            self._progress[prog.worker] = (prog.consumed, prog.delivered)
            self.error_stats[prog.worker] = (prog.errors, prog.seen)
            self._batches_done += 1  # counted when handed out (state_dict right after is exact)
            yield raw
        errs = sum(e for e, _ in self.error_stats.values())
        if errs:
            log.warning("epoch %d: %d bad sample(s) skipped of %d read", self.epoch, errs,
                        sum(s for _, s in self.error_stats.values()))
        self.epoch += 1
        self._batches_done = 0
        self._progress = {}

    def __iter__(self) -> Iterator[Batch]:
        cfg = self.cfg
        gpu_decode = dali_on_gpu(cfg)
        cache = FrameCache(self.device)
        for raw in self.host_batches():
            index = self._batches_done - 1  # of this batch within the epoch
            gen = torch.Generator().manual_seed(hash((cfg.seed, self.epoch, self.rank, index)) & (2**63 - 1))
            new = self._decode_on_gpu(raw) if gpu_decode else None
            imgs = cache.assemble(raw, new)  # [B, T, N, H, W, 3] uint8 on the device
            yield finish_batch(raw, imgs, cfg, gen, self.device)


def build_loader(cfg: LoaderConfig) -> Loader:
    """The streaming loader for ``cfg`` (see :class:`Loader`)."""
    return Loader(cfg)
