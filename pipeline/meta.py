"""Per-shard metadata from the Arrow sidecar, as numpy arrays (one shard at a time).

The sidecar is the only metadata source: memory-mapped for local shards, fetched once for
remote ones, opened by the worker that reads the shard (never copied between workers).
Opening one checks that its keys are unique (and, given the manifest's sha256, its bytes);
rows with non-finite values are listed in :attr:`ShardMeta.nonfinite` (bad samples).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.conventions import CAMERAS, attribute_index

from .urls import IOOptions, local_path, read_bytes, scheme_of


def open_sidecar_table(url: str, io_opts: IOOptions | None = None, sha256: str | None = None) -> pa.Table:
    """The sidecar table of a shard: memory-mapped when local, fetched once when remote.

    Raises ``ValueError`` naming the sidecar when a key repeats (a row of the tar would get
    another row's labels), or when ``sha256`` is given and the bytes differ from it.
    """
    from shards.reader import open_sidecar

    if sha256 is not None:
        data = read_bytes(url, io_opts)
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise ValueError(f"sidecar {url}: sha256 {got} differs from the manifest's {sha256}")
        table = open_sidecar(local_path(url) if scheme_of(url) in ("", "file") else bytes(data))
    elif scheme_of(url) in ("", "file"):
        table = open_sidecar(local_path(url))
    else:
        table = open_sidecar(bytes(read_bytes(url, io_opts)))
    check_unique_keys(url, table)
    return table


def check_unique_keys(url: str, table: pa.Table) -> None:
    """Raise ``ValueError`` naming the sidecar and the first repeated key."""
    keys = table.column("key")
    if pc.count_distinct(keys).as_py() == table.num_rows:
        return
    seen: dict[str, int] = {}
    for i, k in enumerate(keys.to_pylist()):
        if k in seen:
            raise ValueError(f"sidecar {url}: key {k!r} appears in rows {seen[k]} and {i} (keys must be unique)")
        seen[k] = i


def _list_values(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    return offsets, arr.values


def _fixed(values: pa.Array, width: int) -> np.ndarray:
    flat = values.flatten() if pa.types.is_fixed_size_list(values.type) else values
    return np.asarray(flat.to_numpy(zero_copy_only=False)).reshape(-1, width)


@dataclass
class ShardMeta:
    """Numpy view of one sidecar. Row i describes the i-th sample of the tar.

    Shapes: ``N`` rows, ``C`` = 6 cameras, ``G`` total boxes over all rows.
    """

    url: str
    keys: list[str]
    sample_token: list[str]
    scene_token: list[str]
    frame_index: np.ndarray  # [N] int64
    timestamp: np.ndarray  # [N] int64
    ego2global: np.ndarray  # [N, 4, 4] float64
    intrinsics: np.ndarray  # [N, C, 3, 3] float64
    cam2ego: np.ndarray  # [N, C, 4, 4] float64
    cam_ego2global: np.ndarray  # [N, C, 4, 4] float64
    cam_size: np.ndarray  # [N, C, 2] int64 (width, height)
    box_offsets: np.ndarray  # [N + 1] into the box arrays
    boxes: np.ndarray  # [G, 9] float32
    labels: np.ndarray  # [G] int64
    attrs: np.ndarray  # [G] int64
    num_pts: np.ndarray  # [G] int64 (lidar + radar)
    visibility: np.ndarray  # [G] int64
    nonfinite: dict[int, str] = field(default_factory=dict)
    """row -> name of the first column with a NaN/inf value (``gt_boxes``, camera or ego matrices)."""

    @property
    def num_rows(self) -> int:
        return len(self.keys)

    def row_of(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    @classmethod
    def from_table(cls, url: str, t: pa.Table) -> ShardMeta:
        n = t.num_rows
        cams_off, cams = _list_values(t.column("cameras"))
        if not np.array_equal(np.diff(cams_off), np.full(n, len(CAMERAS))):
            raise ValueError(f"sidecar {url}: every row needs {len(CAMERAS)} cameras")
        names = cams.field("name").to_pylist()
        expected = list(CAMERAS) * n
        if names != expected:
            bad = next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b)
            raise ValueError(f"sidecar {url}: row {bad // len(CAMERAS)} camera {bad % len(CAMERAS)} is "
                             f"{names[bad]!r}, expected {expected[bad]!r} (camera order)")
        c = len(CAMERAS)
        k = _fixed(cams.field("intrinsic"), 9).reshape(n, c, 3, 3)
        c2e = _fixed(cams.field("cam2ego"), 16).reshape(n, c, 4, 4)
        ce2g = _fixed(cams.field("ego2global"), 16).reshape(n, c, 4, 4)
        size = np.stack([cams.field("width").to_numpy(zero_copy_only=False),
                         cams.field("height").to_numpy(zero_copy_only=False)], -1).astype(np.int64).reshape(n, c, 2)
        box_off, box_vals = _list_values(t.column("gt_boxes"))
        boxes = _fixed(box_vals, 9).astype(np.float32)

        def ints(name: str) -> np.ndarray:
            off, vals = _list_values(t.column(name))
            if not np.array_equal(off, box_off):
                raise ValueError(f"sidecar {url}: column {name} does not align with gt_boxes")
            return np.asarray(vals.to_numpy(zero_copy_only=False), dtype=np.int64)

        attr_off, attr_vals = _list_values(t.column("gt_attrs"))
        attrs = np.array([attribute_index(a) for a in attr_vals.to_pylist()], dtype=np.int64)
        ego2global = np.asarray(_fixed(t.column("ego2global").combine_chunks(), 16)).reshape(n, 4, 4)
        bad_box = np.zeros(n, bool)  # rows with a non-finite box value
        box_rows = np.repeat(np.arange(n), np.diff(box_off))
        bad_box[box_rows[~np.isfinite(boxes).all(axis=1)]] = True
        nonfinite: dict[int, str] = {}
        for name, rows_ok in (("gt_boxes", ~bad_box), ("ego2global", np.isfinite(ego2global).all(axis=(1, 2))),
                              ("cameras.intrinsic", np.isfinite(k).all(axis=(1, 2, 3))),
                              ("cameras.cam2ego", np.isfinite(c2e).all(axis=(1, 2, 3))),
                              ("cameras.ego2global", np.isfinite(ce2g).all(axis=(1, 2, 3)))):
            for r in np.flatnonzero(~rows_ok):
                nonfinite.setdefault(int(r), name)
        return cls(
            url=url,
            keys=t.column("key").to_pylist(),
            sample_token=t.column("sample_token").to_pylist(),
            scene_token=t.column("scene_token").to_pylist(),
            frame_index=np.asarray(t.column("frame_index").to_numpy(), dtype=np.int64),
            timestamp=np.asarray(t.column("timestamp").to_numpy(), dtype=np.int64),
            ego2global=ego2global,
            intrinsics=k,
            cam2ego=c2e,
            cam_ego2global=ce2g,
            cam_size=size,
            box_offsets=box_off,
            boxes=boxes,
            labels=ints("gt_labels"),
            attrs=attrs if np.array_equal(attr_off, box_off) else np.full(len(boxes), -1, np.int64),
            num_pts=ints("num_lidar_pts") + ints("num_radar_pts"),
            visibility=ints("visibility"),
            nonfinite=nonfinite,
        )

    def rows_boxes(self, row: int) -> slice:
        return slice(int(self.box_offsets[row]), int(self.box_offsets[row + 1]))


def load_shard_meta(url: str, io_opts: IOOptions | None = None) -> ShardMeta:
    return ShardMeta.from_table(url, open_sidecar_table(url, io_opts))


def sidecar_num_rows(url: str, io_opts: IOOptions | None = None) -> int:
    return open_sidecar_table(url, io_opts).num_rows
