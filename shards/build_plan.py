"""Planning a build: keyframes -> clips -> shards, deterministically, and the plan's digest.

A clip is up to ``clip_frames`` consecutive kept keyframes of one scene; clips are packed in
split order into shards of at most ``max_shard_mb`` (estimated from the source file sizes), and a
clip never straddles two shards. The digest identifies what a build writes, so a rerun can tell a
resumable build from a different one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from shards.build_rows import DatarootFiles, SampleJob, sample_job
from shards.build_writer import TAR_BLOCK
from shards.errors import BuildError
from shards.manifest import BuildSettings, SkippedSample
from shards.schema import shard_name


@dataclass
class ShardJob:
    """One shard to write: name and samples in tar order."""

    name: str
    samples: list[SampleJob] = field(default_factory=list)

    @property
    def clips(self) -> int:
        return len({s.clip for s in self.samples})


def estimated_bytes(sample: SampleJob, settings: BuildSettings) -> int:
    """Tar bytes a sample will take (resized JPEGs scaled by pixel count; LiDAR as float32 ``[P, 4]``)."""
    n = 0
    for _, _, size in sample.cam_files:
        if settings.resize is not None:
            scale = settings.resize[0] * settings.resize[1] / max(1, sample.src_size[0] * sample.src_size[1])
            size = int(size * scale)
        n += TAR_BLOCK + size
    if sample.lidar_file is not None:
        n += TAR_BLOCK + 128 + sample.lidar_file[1] // 20 * 16
    return n


def plan_shards(nusc, dataroot: Path, split: str, settings: BuildSettings,
                progress: bool = False) -> tuple[list[ShardJob], list[SkippedSample], list[str]]:
    """Deterministic shard plan of ``split``.

    Returns:
        (shards in order, samples skipped for missing files, scene names used).
    """
    from nuscenes.utils.splits import create_splits_scenes

    by_name = {s["name"]: s for s in nusc.scene}
    wanted = create_splits_scenes()[split]
    names = [n for n in wanted if n in by_name]
    if not names:
        raise BuildError(f"none of the {len(wanted)} scenes of split {split!r} are in the {nusc.version} tables "
                         f"of {dataroot}")
    max_bytes = int(settings.max_shard_mb * 1024 * 1024)
    shards: list[ShardJob] = [ShardJob(shard_name(split, 0))]
    cur_bytes = 0
    missing: list[SkippedSample] = []
    clip_id = 0
    files = DatarootFiles(dataroot)
    for name in tqdm(names, desc=f"plan {split}", unit="scene", disable=not progress):
        scene = by_name[name]
        clips: list[list[SampleJob]] = []
        token, frame, prev_kept = scene["first_sample_token"], 0, False
        while token:
            sample = nusc.get("sample", token)
            job = sample_job(nusc, files, scene, sample, frame, settings, missing)
            if job is not None:
                if not prev_kept or len(clips[-1]) >= settings.clip_frames:
                    clips.append([])
                clips[-1].append(job)
            prev_kept = job is not None
            token, frame = sample["next"], frame + 1
        for clip in clips:
            size = sum(estimated_bytes(s, settings) for s in clip)
            if shards[-1].samples and cur_bytes + size > max_bytes:
                shards.append(ShardJob(shard_name(split, len(shards))))
                cur_bytes = 0
            for s in clip:
                s.clip = clip_id
            shards[-1].samples.extend(clip)
            cur_bytes += size
            clip_id += 1
    if not shards[-1].samples:
        raise BuildError(f"split {split!r} has no samples to write (all {len(missing)} skipped for missing files)")
    return shards, missing, names


def plan_digest(shards: Iterable[ShardJob]) -> str:
    """sha256 over the shard names, keys, source files and rows of a plan (identifies what a build writes)."""
    h = hashlib.sha256()
    for sh in shards:
        h.update(sh.name.encode())
        for s in sh.samples:
            h.update(json.dumps([s.key, s.clip, [c[1:] for c in s.cam_files], s.lidar_file, s.row],
                                sort_keys=True).encode())
    return h.hexdigest()
