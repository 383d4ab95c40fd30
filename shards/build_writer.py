"""Writing one shard: a deterministic USTAR tar (source or re-encoded JPEGs, LiDAR as ``.npy``), its
Arrow sidecar and DALI index, each under a temporary name renamed into place (the tar last, so a
shard whose tar exists is complete). Tar headers are fixed (mtime 0, uid/gid 0, mode 0644), so the
same plan always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from shards.errors import BuildError
from shards.manifest import BuildSettings, ShardEntry
from shards.schema import LIDAR_MEMBER, SIDECAR_SCHEMA

if TYPE_CHECKING:
    from shards.build_plan import ShardJob

TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK


def shard_paths(out: Path, name: str) -> tuple[Path, Path, Path]:
    """``(tar, sidecar, index)`` paths of shard ``name`` in ``out``."""
    return out / f"{name}.tar", out / f"{name}.arrow", out / f"{name}.idx"


def check_jpeg(data: bytes, path: str) -> None:
    """Raise :class:`BuildError` unless ``data`` starts and ends like a JPEG."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise BuildError(f"corrupt image {path}: not a JPEG (no start-of-image marker)")
    if data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:
        raise BuildError(f"corrupt image {path}: truncated JPEG (no end-of-image marker)")


def resize_jpeg(data: bytes, path: str, size: tuple[int, int], quality: int) -> bytes:
    """Re-encode JPEG ``data`` at ``size`` (W, H)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size[0], size[1]))
            im = im.convert("RGB")
            if im.size != tuple(size):
                im = im.resize(size, Image.BILINEAR)
    except OSError as e:
        raise BuildError(f"corrupt image {path}: {e}") from e
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def lidar_npy(path: str, lidar2ego: list[float]) -> bytes:
    """A nuScenes ``.pcd.bin`` (float32 ``[P, 5]``) -> ``.npy`` bytes of float32 ``[P, 4]`` in the ego frame."""
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 5:
        raise BuildError(f"corrupt lidar file {path}: {raw.size * 4} bytes is not a multiple of 5 float32")
    pts = raw.reshape(-1, 5)
    m = np.asarray(lidar2ego, dtype=np.float64).reshape(4, 4)
    out = np.empty((pts.shape[0], 4), dtype=np.float32)
    out[:, :3] = pts[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    out[:, 3] = pts[:, 3]
    buf = io.BytesIO()
    np.save(buf, out, allow_pickle=False)
    return buf.getvalue()


class TarWriter:
    """Deterministic USTAR writer that records DALI index entries and hashes what it writes.

    The sha256 runs on a background thread (hashlib releases the GIL), so hashing overlaps
    reading and writing; at most ``max_pending`` chunks wait for it.
    """

    def __init__(self, f, max_pending: int = 64) -> None:
        self.f = f
        self.pos = 0
        self.sha = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(max_workers=1)
        self._pending: deque = deque()
        self._max_pending = max_pending

    def _write(self, b: bytes) -> None:
        self.f.write(b)
        self._pending.append(self._hasher.submit(self.sha.update, b))  # one thread: updates stay in order
        if len(self._pending) > self._max_pending:
            self._pending.popleft().result()
        self.pos += len(b)

    def add(self, name: str, data: bytes) -> int:
        """Append member ``name``; return the offset of its data."""
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o644, 0, 0, "", ""
        self._write(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
        offset = self.pos
        self._write(data)
        pad = -len(data) % TAR_BLOCK
        if pad:
            self._write(b"\0" * pad)
        return offset

    def close(self) -> str:
        """Write the end-of-archive blocks; return the tar's sha256."""
        self._write(b"\0" * (2 * TAR_BLOCK))
        pad = -self.pos % TAR_RECORD
        if pad:
            self._write(b"\0" * pad)
        while self._pending:
            self._pending.popleft().result()
        self._hasher.shutdown()
        return self.sha.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(out: Path, shard: ShardJob, settings: BuildSettings) -> ShardEntry:
    """Write ``{name}.arrow``, ``{name}.idx`` and ``{name}.tar`` atomically; return the shard's manifest entry."""
    tar_path, arrow_path, idx_path = shard_paths(out, shard.name)
    tmp_tar = tar_path.with_name(tar_path.name + ".tmp")
    idx_lines = []
    with open(tmp_tar, "wb") as f:
        w = TarWriter(f)
        for s in shard.samples:
            comps = []
            for member, path, _ in s.cam_files:
                try:
                    with open(path, "rb") as src:
                        data = src.read()
                except OSError as e:
                    raise BuildError(f"cannot read image {path} (sample {s.key}): {e}") from e
                check_jpeg(data, path)
                if settings.resize is not None:
                    data = resize_jpeg(data, path, tuple(settings.resize), settings.jpeg_quality)
                name = f"{s.key}.{member}"
                comps.append(f"{member} {w.add(name, data)} {len(data)} {name}")
            if s.lidar_file is not None:
                data = lidar_npy(s.lidar_file[0], s.lidar2ego)
                name = f"{s.key}.{LIDAR_MEMBER}"
                comps.append(f"{LIDAR_MEMBER} {w.add(name, data)} {len(data)} {name}")
            idx_lines.append(" ".join(comps))
        tar_sha = w.close()
    tar_bytes = w.pos

    table = pa.Table.from_pylist([s.row for s in shard.samples], schema=SIDECAR_SCHEMA)
    tmp_arrow = arrow_path.with_name(arrow_path.name + ".tmp")
    with pa.OSFile(str(tmp_arrow), "wb") as sink, pa.ipc.new_file(sink, SIDECAR_SCHEMA) as writer:
        writer.write_table(table)
    arrow_sha = sha256_file(tmp_arrow)
    tmp_idx = idx_path.with_name(idx_path.name + ".tmp")
    tmp_idx.write_text(f"v1.2 {len(shard.samples)}\n" + "\n".join(idx_lines) + "\n")
    os.replace(tmp_arrow, arrow_path)
    os.replace(tmp_idx, idx_path)
    os.replace(tmp_tar, tar_path)  # last: a tar under its final name means the shard is complete
    return shard_entry(shard, tar_bytes, tar_sha, arrow_path.stat().st_size, arrow_sha)


def shard_entry(shard: ShardJob, tar_bytes: int, tar_sha: str, arrow_bytes: int, arrow_sha: str) -> ShardEntry:
    """The manifest entry of a written shard."""
    tar_path, arrow_path, idx_path = shard_paths(Path(), shard.name)
    return ShardEntry(
        name=shard.name, tar=tar_path.name, sidecar=arrow_path.name, index=idx_path.name,
        samples=len(shard.samples), clips=shard.clips,
        scenes=list(dict.fromkeys(s.row["scene_name"] for s in shard.samples)),
        first_key=shard.samples[0].key, last_key=shard.samples[-1].key,
        boxes=sum(len(s.row["ann_tokens"]) for s in shard.samples),
        bytes=tar_bytes, sha256=tar_sha, sidecar_bytes=arrow_bytes, sidecar_sha256=arrow_sha)
