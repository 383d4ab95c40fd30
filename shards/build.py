"""nuScenes dataroot -> shards: tars of whole temporal clips + Arrow sidecars + DALI indexes + manifest.

:func:`build_shards` is the entry point; the steps live in one module each:

1. :mod:`shards.build_rows`: check the inputs, load the tables with nuscenes-devkit, turn every
   keyframe into a sidecar row and its source files (all inside the dataroot);
2. :mod:`shards.build_plan`: pack keyframes into clips and clips into shards, deterministically; the
   plan's digest;
3. :mod:`shards.build_outdir`: the output directory's state (refuse, resume or overwrite; ``.build.json``);
4. :mod:`shards.build_writer`: write each shard (tar, sidecar, index; atomically, the tar last);
5. :mod:`shards.manifest`: the :class:`~shards.manifest.Manifest` written as ``manifest.json``.

A rerun with the same settings skips complete shards and yields byte-identical output.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from shards.build_outdir import (
    BUILD_STATE_NAME,
    check_out_dir,
    existing_entry,
    prepare_out,
    write_json_atomic,
)
from shards.build_plan import plan_digest, plan_shards
from shards.build_rows import check_inputs, load_nuscenes
from shards.build_writer import write_shard
from shards.errors import BuildError
from shards.manifest import FORMAT, BuildSettings, BuildState, Manifest, ManifestSource, ShardEntry
from shards.schema import MANIFEST_NAME, SCHEMA_VERSION
from shards.typed_config import from_dict

__all__ = ["build_shards", "BuildError", "BuildSettings", "BUILD_STATE_NAME"]


def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (a devkit dependency)
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def build_shards(dataroot: Path | str, version: str, split: str, out: Path | str, *, clip_frames: int = 8,
                 max_shard_mb: float = 256.0, resize: tuple[int, int] | None = None, jpeg_quality: int = 90,
                 lidar: bool = False, workers: int = 1, overwrite: bool = False, skip_missing: bool = False,
                 progress: bool = True, processes: bool = False,
                 timings: dict[str, float] | None = None) -> Manifest:
    """Build the shards of ``split`` from a nuScenes ``dataroot`` into ``out``; return the manifest.

    Output: ``{split}-{i:06d}.tar/.arrow/.idx`` and ``manifest.json`` (docs/CONTRACTS.md).
    ``workers`` shards are written at once, by threads (file I/O, sha256, JPEG decode / resize /
    encode and Arrow all release the GIL) or, with ``processes=True``, by spawned processes
    (each pays an interpreter start-up). The bytes do not depend on either. ``timings``, when given,
    receives the seconds spent loading + planning (``plan_s``) and writing (``write_s``).

    Raises:
        BuildError: bad arguments, inputs or output directory, named.
    """
    t_start = time.perf_counter()
    dataroot, out = Path(dataroot), Path(out)
    settings = from_dict(BuildSettings, {
        "clip_frames": clip_frames, "max_shard_mb": float(max_shard_mb),
        "resize": [int(v) for v in resize] if resize is not None else None, "jpeg_quality": jpeg_quality,
        "lidar": lidar, "skip_missing": skip_missing})
    if workers < 1:
        raise BuildError(f"workers must be >= 1, got {workers}")
    check_out_dir(out)
    check_inputs(dataroot, version, split)
    # absolute paths in the plan (and its digest): the same dataroot named relatively or absolutely is one build
    dataroot = dataroot.resolve()
    nusc = load_nuscenes(dataroot, version)
    with _single_threaded_blas():  # many tiny 4x4 inversions: BLAS threads only add overhead
        shards, skipped, scenes = plan_shards(nusc, dataroot, split, settings, progress=progress)
    del nusc
    state = BuildState(ManifestSource(version=version, split=split, dataroot=dataroot.name), settings,
                       plan_digest(shards))
    prepare_out(out, state, split, overwrite)
    t_write = time.perf_counter()

    entries: dict[str, ShardEntry] = {}
    todo = []
    for sh in shards:
        e = existing_entry(out, sh)
        if e is None:
            todo.append(sh)
        else:
            entries[sh.name] = e
    bar = tqdm(total=sum(len(sh.samples) for sh in shards), initial=sum(e.samples for e in entries.values()),
               desc=f"build {split}", unit="sample", disable=not progress)
    if workers == 1 or len(todo) <= 1:
        for sh in todo:
            entries[sh.name] = write_shard(out, sh, settings)
            bar.update(len(sh.samples))
    else:
        n = min(workers, len(todo))
        with (ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn")) if processes
              else ThreadPoolExecutor(max_workers=n)) as pool:
            futures = {pool.submit(write_shard, out, sh, settings): sh for sh in todo}
            for fut in as_completed(futures):
                sh = futures[fut]
                entries[sh.name] = fut.result()
                bar.update(len(sh.samples))
    bar.close()

    shard_entries = [entries[sh.name] for sh in shards]
    manifest = Manifest(
        format=FORMAT, schema_version=SCHEMA_VERSION, source=state.source, settings=state.settings,
        plan_digest=state.plan_digest, num_shards=len(shards),
        num_samples=sum(e.samples for e in shard_entries),
        num_clips=sum(e.clips for e in shard_entries),
        num_scenes=len(scenes),
        num_boxes=sum(e.boxes for e in shard_entries),
        bytes=sum(e.bytes + e.sidecar_bytes for e in shard_entries),
        shards=shard_entries, skipped=skipped)
    write_json_atomic(out / MANIFEST_NAME, manifest.to_dict())
    if timings is not None:
        timings["plan_s"] = t_write - t_start
        timings["write_s"] = time.perf_counter() - t_write
    return manifest
