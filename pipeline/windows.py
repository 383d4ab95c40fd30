"""Temporal windows and the deterministic read plan of a worker.

A *clip* is a run of consecutive sidecar rows of one scene whose ``frame_index`` increases
(the builder writes whole clips in time order; neighbouring clips of a scene in the same shard
simply join). A *window* is a current frame plus the frames at ``offsets`` (e.g. ``(-1, 0)``,
``(-7, ..., 0)``) before it, looked up **within the clip**, by ``frame_index``.

Missing previous frames (scene start, before the start of the clip in this shard, or a
frame the builder skipped) are flagged ``valid=False`` and filled with the nearest available
frame of the window (image *and* metadata are copied, so every matrix stays consistent with
its pixels; ``cur_from_prev`` of a copy of the current frame is the identity).

The plan is computed from sidecars only: shard order (shuffled per epoch with the seed),
node/worker split (webdataset's ``split_by_node``/``split_by_worker`` striding), and a
shuffle buffer that receives whole clips and releases whole windows. Because it depends on
(seed, epoch, rank, worker) and metadata alone, a resumed worker recomputes it and skips the
windows it already delivered without decoding them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """One training/eval example: ``rows`` are sidecar rows of shard ``shard`` (T, oldest first,
    the last is the current frame), ``valid[t]`` False where row t is a fill-in copy."""

    shard: int
    clip: int
    rows: tuple[int, ...]
    valid: tuple[bool, ...]
    cycle: int = 0


def find_clips(scene_token: Sequence[str], frame_index: np.ndarray) -> list[list[int]]:
    """Split rows (tar order) into clips: runs of one scene with increasing frame_index."""
    clips: list[list[int]] = []
    for i in range(len(scene_token)):
        if clips and scene_token[i] == scene_token[clips[-1][-1]] and frame_index[i] > frame_index[clips[-1][-1]]:
            clips[-1].append(i)
        else:
            clips.append([i])
    return clips


def clip_windows(rows: Sequence[int], frame_index: np.ndarray, offsets: Sequence[int]) -> list[tuple[tuple, tuple]]:
    """Windows (rows, valid) of every frame of one clip, in time order."""
    by_fi = {int(frame_index[r]): r for r in rows}
    out = []
    for r in rows:
        fi = int(frame_index[r])
        found = [by_fi.get(fi + o) for o in offsets]
        avail = [t for t, x in enumerate(found) if x is not None]  # the current frame is always there
        filled = []
        for t, x in enumerate(found):
            if x is None:
                near = min(avail, key=lambda a: (abs(offsets[a] - offsets[t]), -a))
                x = found[near]
            filled.append(x)
        out.append((tuple(filled), tuple(v is not None for v in found)))
    return out


def shard_windows(shard: int, scene_token: Sequence[str], frame_index: np.ndarray,
                  offsets: Sequence[int], cycle: int = 0) -> list[list[Window]]:
    """Windows of one shard, grouped per clip (clip order = tar order)."""
    out = []
    for c, rows in enumerate(find_clips(scene_token, frame_index)):
        out.append([Window(shard, c, rw, v, cycle) for rw, v in clip_windows(rows, frame_index, offsets)])
    return out


def split_for(items: Sequence[int], index: int, count: int) -> list[int]:
    """Strided split (webdataset ``split_by_node`` / ``split_by_worker`` semantics)."""
    return list(items[index::count])


def shard_order(n_shards: int, seed: int, epoch: int, cycle: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n_shards))
    rng = np.random.default_rng([seed, epoch, cycle, 0x5A4D])
    return [int(i) for i in rng.permutation(n_shards)]


def shuffled_windows(clips: list[list[Window]], bufsize: int, rng: np.random.Generator) -> list[Window]:
    """Shuffle buffer: whole clips enter, windows leave one at a time at random (whole)."""
    buf: list[Window] = []
    out: list[Window] = []
    for clip in clips:
        buf.extend(clip)
        while len(buf) > bufsize:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            out.append(buf.pop())
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        out.append(buf.pop())
    return out


def resampled_shards(n_shards: int, seed: int, epoch: int, cycle: int, rank: int, worker: int,
                     count: int) -> list[int]:
    """webdataset ``ResampledShards`` semantics: every (rank, worker) draws its own shards from a stream of its
    own, independent of every other worker's, so shards repeat across workers and passes and any number of
    ranks x workers can train on any number of shards. One pass draws ``count`` shards (distinct within the
    pass when ``count <= n_shards``, so a pass never holds the same window twice)."""
    rng = np.random.default_rng([seed, epoch, cycle, rank, worker, 0x5E5A])
    return [int(i) for i in rng.choice(n_shards, size=count, replace=count > n_shards)]


def train_cycle(shard_clips: Callable[[int, int], list[list[Window]]], n_shards: int, *, seed: int, epoch: int,
                cycle: int, rank: int, world: int, worker: int, num_workers: int, shuffle_shards: bool,
                bufsize: int, resampled: bool = False) -> tuple[list[int], list[Window]]:
    """One pass of a worker over its shards: (shard stream order, windows in emission order).

    Default: the epoch's shard permutation strided over ranks, then workers (each shard read by one worker
    per pass). ``resampled``: the worker draws ``ceil(n_shards / (world * num_workers))`` shards of its own
    (:func:`resampled_shards`).
    """
    if resampled:
        count = max(1, -(-n_shards // (world * max(1, num_workers))))
        mine = resampled_shards(n_shards, seed, epoch, cycle, rank, worker, count)
    else:
        order = shard_order(n_shards, seed, epoch, cycle, shuffle_shards)
        mine = split_for(split_for(order, rank, world), worker, num_workers)
    clips = [c for s in mine for c in shard_clips(s, cycle)]
    rng = np.random.default_rng([seed, epoch, cycle, rank, worker, 0xB0F])
    return mine, shuffled_windows(clips, bufsize, rng)


def eval_batches(shard_clips: Callable[[int, int], list[list[Window]]], shards: Sequence[int],
                 batch_size: int) -> list[list[Window]]:
    """Every frame once, in shard then tar (scene, time) order, cut into batches."""
    wins = [w for s in shards for clip in shard_clips(s, 0) for w in clip]
    return [wins[i:i + batch_size] for i in range(0, len(wins), batch_size)]


def contiguous_block(n: int, index: int, count: int) -> range:
    """The index-th of ``count`` contiguous, near-equal blocks of range(n) (eval split by node)."""
    lo = n * index // count
    hi = n * (index + 1) // count
    return range(lo, hi)
