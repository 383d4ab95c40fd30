"""Reading shards: sidecars as Arrow tables, samples of a local tar, the manifest.

    table = open_sidecar("out/mini_train-000000.arrow")        # memory-mapped
    for s in iter_shard("out/mini_train-000000.tar"):          # sidecar found beside the tar
        jpeg = s.members["cam_front.jpg"]; boxes = s.meta["gt_boxes"]
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from shards import conventions as cv
from shards.errors import ShardFormatError
from shards.manifest import Manifest, parse_manifest
from shards.schema import MANIFEST_NAME, SCHEMA_VERSION, SCHEMA_VERSION_KEY

__all__ = ["ShardFormatError", "ShardSample", "open_sidecar", "split_member", "iter_tar_members", "iter_shard",
           "read_manifest", "load_points", "sample_matrices"]


@dataclass
class ShardSample:
    """One sample of a shard: its key, member bytes by extension (``cam_front.jpg``, ...) and sidecar row."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def open_sidecar(path_or_bytes: str | Path | bytes | pa.Buffer) -> pa.Table:
    """Open an Arrow IPC sidecar (memory-mapped when a local path) and check its schema version."""
    try:
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview, pa.Buffer)):
            source: Any = pa.BufferReader(path_or_bytes)
            where = "<bytes>"
        else:
            where = str(path_or_bytes)
            source = pa.memory_map(where, "r")
        table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise ShardFormatError(f"cannot read sidecar {where}: {e}") from e
    version = (table.schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is None or int(version) != SCHEMA_VERSION:
        raise ShardFormatError(f"sidecar {where} has schema version {version!r}, this reader reads "
                               f"{SCHEMA_VERSION}")
    return table


def split_member(name: str) -> tuple[str, str]:
    """``scene-0061_0003.cam_front.jpg`` -> (``scene-0061_0003``, ``cam_front.jpg``): key up to the first dot."""
    base = name.rsplit("/", 1)[-1]
    dot = base.find(".")
    if dot <= 0:
        raise ShardFormatError(f"tar member {name!r} has no '<key>.<ext>' name")
    prefix = name[: len(name) - len(base)]
    return prefix + base[:dot], base[dot + 1:]


def iter_tar_members(tar_path_or_fileobj: str | Path | IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` of every regular file of a tar, in order (streams; no seeking needed)."""
    where = str(getattr(tar_path_or_fileobj, "name", tar_path_or_fileobj))
    try:
        if isinstance(tar_path_or_fileobj, (str, Path)):
            tf = tarfile.open(tar_path_or_fileobj, mode="r|")
        else:
            tf = tarfile.open(fileobj=tar_path_or_fileobj, mode="r|")
        with tf:
            for ti in tf:
                if not ti.isfile():
                    continue
                f = tf.extractfile(ti)
                data = f.read() if f is not None else b""
                if len(data) != ti.size:
                    raise ShardFormatError(f"tar {where}: member {ti.name} truncated ({len(data)} of {ti.size} bytes)")
                yield ti.name, data
    except (tarfile.TarError, EOFError) as e:
        raise ShardFormatError(f"tar {where} is damaged: {e}") from e


def iter_shard(tar_path_or_fileobj: str | Path | IO[bytes],
               sidecar: str | Path | bytes | pa.Table | None = None) -> Iterator[ShardSample]:
    """Iterate the samples of a shard in tar order.

    Args:
        tar_path_or_fileobj: a local tar path or a binary file object (read sequentially).
        sidecar: the shard's sidecar (path, bytes or table); by default ``{stem}.arrow`` beside a local
            tar, none for a file object (then ``meta`` is empty).
    Returns:
        iterator of :class:`ShardSample`; ``meta`` is the sidecar row whose ``key`` matches.
    """
    if sidecar is None and isinstance(tar_path_or_fileobj, (str, Path)):
        cand = Path(tar_path_or_fileobj).with_suffix(".arrow")
        sidecar = cand if cand.is_file() else None
    rows: dict[str, dict] = {}
    if sidecar is not None:
        table = sidecar if isinstance(sidecar, pa.Table) else open_sidecar(sidecar)
        rows = {r["key"]: r for r in table.to_pylist()}
    cur: ShardSample | None = None
    for name, data in iter_tar_members(tar_path_or_fileobj):
        key, ext = split_member(name)
        if cur is None or key != cur.key:
            if cur is not None:
                yield cur
            cur = ShardSample(key, {}, rows.get(key, {}))
        cur.members[ext] = data
    if cur is not None:
        yield cur


def read_manifest(path: str | Path) -> Manifest:
    """Read ``manifest.json`` (path to the file or to the shard directory) into a :class:`Manifest`.

    Raises:
        ShardFormatError: missing, not UTF-8 JSON, not an object, another schema version, or a shard file
            name that is not a plain name in the manifest's directory.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    try:
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise ShardFormatError(f"manifest not found: {p}") from e
    except OSError as e:
        raise ShardFormatError(f"cannot read manifest {p}: {e}") from e
    return parse_manifest(data, p)


def load_points(data: bytes) -> np.ndarray:
    """``lidar.npy`` member bytes -> ``[N, 4]`` float32 (x, y, z, intensity) in the keyframe ego frame."""
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.dtype != np.float32:
        raise ShardFormatError(f"lidar member is {arr.dtype} {arr.shape}, expected float32 [N, 4]")
    return arr


def sample_matrices(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Matrices of a sidecar row as arrays (camera order as stored, N cameras).

    Returns:
        ``ego2global [4, 4]``, ``intrinsics [N, 3, 3]``, ``cam2ego [N, 4, 4]``,
        ``cam_ego2global [N, 4, 4]`` (ego pose at each camera's timestamp),
        ``ego2img [N, 4, 4]`` (keyframe ego frame -> pixels, via :func:`shards.conventions.ego2img`).
    """
    e2g = np.asarray(meta["ego2global"], dtype=np.float64).reshape(4, 4)
    cams = meta["cameras"]
    k = np.asarray([c["intrinsic"] for c in cams], dtype=np.float64).reshape(-1, 3, 3)
    c2e = np.asarray([c["cam2ego"] for c in cams], dtype=np.float64).reshape(-1, 4, 4)
    ce2g = np.asarray([c["ego2global"] for c in cams], dtype=np.float64).reshape(-1, 4, 4)
    e2c = cv.ego2cam(c2e, ce2g, e2g[None])
    return {"ego2global": e2g, "intrinsics": k, "cam2ego": c2e, "cam_ego2global": ce2g,
            "ego2img": cv.ego2img(k, e2c)}
