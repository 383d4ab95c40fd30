"""Ground truth for the nuScenes metrics, taken from the shards' Arrow sidecars (no dataroot).

The devkit builds its ground truth from the database tables (``load_gt``), adds each box's
offset from the ego vehicle (``add_center_dist``) and filters boxes by class range, by lidar +
radar points and by bike racks (``filter_eval_boxes``). Those two functions only ask the
database for four kinds of record (``sample``, ``sample_data``, ``ego_pose``,
``sample_annotation``), so :class:`SidecarTables` serves exactly those records from the
sidecars and the devkit's own functions run unchanged. The sidecars keep every annotation of a
sample, including non-detection categories, so bicycle racks are there too.

Boxes come from the sidecar's float64 global-frame annotation columns (``gt_translation``,
``gt_size``, ``gt_rotation``, ``gt_velocity``), which hold the devkit's own values: the sidecar is
the source of truth, and the ground truth equals ``load_gt``'s exactly, NaN velocities (undefined
``box_velocity``, left out of mAVE by the devkit) included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes
from nuscenes.eval.detection.data_classes import DetectionBox, DetectionConfig
from nuscenes.eval.detection.utils import category_to_detection_name

LIDAR_CHANNEL = "LIDAR_TOP"


class GroundTruthError(ValueError):
    """The sidecars cannot give the ground truth asked for (names the sidecar/sample at fault)."""


@dataclass
class SampleInfo:
    """One keyframe as the sidecar describes it."""

    sample_token: str
    scene_token: str
    scene_name: str
    key: str
    timestamp: int
    frame_index: int
    ego2global: np.ndarray  # [4, 4] keyframe ego pose (LIDAR_TOP timestamp)
    source: str  # sidecar it came from


@dataclass
class _Annotation:
    token: str
    category_name: str
    translation: list[float]
    size: list[float]
    rotation: list[float]


@dataclass
class SidecarTables:
    """The four devkit tables ``add_center_dist`` and ``filter_eval_boxes`` read, served from sidecars.

    ``get(table, token)`` answers like ``NuScenes.get`` for ``sample``, ``sample_data``
    (the sample's LIDAR_TOP record), ``ego_pose`` and ``sample_annotation``.
    """

    samples: dict[str, SampleInfo] = field(default_factory=dict)
    anns: dict[str, _Annotation] = field(default_factory=dict)
    sample_anns: dict[str, list[str]] = field(default_factory=dict)

    def get(self, table: str, token: str) -> dict[str, Any]:
        if table == "sample":
            s = self._sample(token)
            return {
                "token": token,
                "scene_token": s.scene_token,
                "timestamp": s.timestamp,
                "anns": list(self.sample_anns.get(token, [])),
                "data": {LIDAR_CHANNEL: f"{token}/{LIDAR_CHANNEL}"},
            }
        if table in ("sample_data", "ego_pose"):
            sample_token, _, channel = token.partition("/")
            if channel != LIDAR_CHANNEL:
                raise KeyError(f"sidecar tables hold only {LIDAR_CHANNEL} {table} records, not {token!r}")
            s = self._sample(sample_token)
            if table == "sample_data":
                return {"token": token, "sample_token": sample_token, "ego_pose_token": token}
            return {"token": token, "translation": s.ego2global[:3, 3].tolist(), "timestamp": s.timestamp}
        if table == "sample_annotation":
            a = self.anns.get(token)
            if a is None:
                raise KeyError(f"annotation {token!r} is in no sidecar")
            return {
                "token": a.token,
                "category_name": a.category_name,
                "translation": a.translation,
                "size": a.size,
                "rotation": a.rotation,
            }
        raise KeyError(f"sidecar tables do not serve the {table!r} table")

    def _sample(self, token: str) -> SampleInfo:
        s = self.samples.get(token)
        if s is None:
            raise KeyError(f"sample {token!r} is in no sidecar")
        return s


@dataclass
class GroundTruth:
    """Everything the scorer needs from the sidecars.

    ``boxes`` holds detection-class boxes in the global frame with ``ego_translation`` and
    ``num_pts`` set as the devkit sets them, before filtering; ``order`` lists sample tokens in
    shard (scene, time) order.
    """

    tables: SidecarTables
    boxes: EvalBoxes
    order: list[str]

    @property
    def samples(self) -> dict[str, SampleInfo]:
        return self.tables.samples

    def subset(self, sample_tokens: Iterable[str]) -> GroundTruth:
        """The same ground truth restricted to ``sample_tokens`` (kept in shard order)."""
        keep = set(sample_tokens)
        unknown = keep - set(self.order)
        if unknown:
            raise GroundTruthError(f"{len(unknown)} sample token(s) are in no sidecar, e.g. {sorted(unknown)[0]!r}")
        boxes = EvalBoxes()
        order = [t for t in self.order if t in keep]
        for t in order:
            boxes.add_boxes(t, list(self.boxes[t]))
        return GroundTruth(tables=self.tables, boxes=boxes, order=order)

    def filtered(self, cfg: DetectionConfig) -> EvalBoxes:
        """The devkit's GT filtering (class range, zero lidar+radar points, bike racks), on a copy."""
        return filter_boxes(self.tables, self.boxes, cfg)


def _matrix(flat: Sequence[float], what: str) -> np.ndarray:
    m = np.asarray(flat, dtype=np.float64)
    if m.size != 16:
        raise GroundTruthError(f"{what}: expected 16 values for a 4x4 matrix, got {m.size}")
    return m.reshape(4, 4)


def _as_table(sidecar: str | Path | bytes | pa.Table) -> tuple[pa.Table, str]:
    if isinstance(sidecar, pa.Table):
        return sidecar, "<table>"
    from shards.reader import open_sidecar

    name = "<bytes>" if isinstance(sidecar, (bytes, bytearray, memoryview)) else str(sidecar)
    try:
        return open_sidecar(sidecar), name
    except FileNotFoundError as e:
        raise GroundTruthError(f"sidecar {name} does not exist") from e


REQUIRED_COLUMNS = (
    "sample_token",
    "scene_token",
    "scene_name",
    "key",
    "timestamp",
    "frame_index",
    "ego2global",
    "gt_names",
    "gt_attrs",
    "num_lidar_pts",
    "num_radar_pts",
    "ann_tokens",
    "gt_translation",
    "gt_size",
    "gt_rotation",
    "gt_velocity",
)
"""Sidecar columns the ground truth is read from (``gt_*`` float64 global frame: shards schema version >= 2)."""

_GLOBAL_FIELDS = {"translation": 3, "size": 3, "rotation": 4, "velocity": 2}
"""The float64 global-frame columns ``gt_{name}`` and their widths."""


def load_ground_truth(sidecars: Iterable[str | Path | bytes | pa.Table]) -> GroundTruth:
    """Read sidecars (paths, IPC bytes or tables, in shard order) into a :class:`GroundTruth`.

    Detection boxes are built like the devkit's ``load_gt``: the category maps to a detection
    name with ``category_to_detection_name`` (others are skipped but kept as annotations, for
    the bike-rack filter), ``num_pts = num_lidar_pts + num_radar_pts``, ``detection_score -1``,
    translation / size / rotation / velocity from the sidecar's float64 ``gt_*`` columns as
    they are. ``ego_translation`` is then set by the devkit's ``add_center_dist``.
    """
    tables = SidecarTables()
    boxes = EvalBoxes()
    order: list[str] = []
    for sidecar in sidecars:
        table, name = _as_table(sidecar)
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise GroundTruthError(f"sidecar {name} lacks column(s) {missing} (shards built before schema "
                                   "version 2 have no float64 gt_* columns: rebuild them)")
        for row in table.select(list(REQUIRED_COLUMNS)).to_pylist():
            token = row["sample_token"]
            if token in tables.samples:
                raise GroundTruthError(
                    f"sample {token!r} (key {row['key']!r}) appears twice: in {tables.samples[token].source} and {name}"
                )
            info = SampleInfo(
                sample_token=token,
                scene_token=row["scene_token"],
                scene_name=row["scene_name"],
                key=row["key"],
                timestamp=int(row["timestamp"]),
                frame_index=int(row["frame_index"]),
                ego2global=_matrix(row["ego2global"], f"{name} key {row['key']} ego2global"),
                source=name,
            )
            tables.samples[token] = info
            order.append(token)
            boxes.add_boxes(token, _sample_boxes(row, info, tables, name))
    add_center_dist(tables, boxes)
    return GroundTruth(tables=tables, boxes=boxes, order=order)


def _sample_boxes(row: dict, info: SampleInfo, tables: SidecarTables, name: str) -> list[DetectionBox]:
    n = len(row["ann_tokens"])
    for col in ("gt_names", "gt_attrs", "num_lidar_pts", "num_radar_pts", *(f"gt_{k}" for k in _GLOBAL_FIELDS)):
        if len(row[col]) != n:
            raise GroundTruthError(f"sidecar {name} key {info.key}: {col} has {len(row[col])} entries for {n} "
                                   "annotations")
    glob = {k: [tuple(float(v) for v in x) for x in row[f"gt_{k}"]] for k in _GLOBAL_FIELDS}
    out: list[DetectionBox] = []
    tables.sample_anns[info.sample_token] = list(row["ann_tokens"])
    for i in range(n):
        translation, size, rotation = glob["translation"][i], glob["size"][i], glob["rotation"][i]
        category = row["gt_names"][i]
        tables.anns[row["ann_tokens"][i]] = _Annotation(
            token=row["ann_tokens"][i],
            category_name=category,
            translation=list(translation),
            size=list(size),
            rotation=list(rotation),
        )
        detection_name = category_to_detection_name(category)
        if detection_name is None:
            continue
        out.append(
            DetectionBox(
                sample_token=info.sample_token,
                translation=translation,
                size=size,
                rotation=rotation,
                velocity=glob["velocity"][i],
                num_pts=int(row["num_lidar_pts"][i]) + int(row["num_radar_pts"][i]),
                detection_name=detection_name,
                detection_score=-1.0,
                attribute_name=row["gt_attrs"][i] or "",
            )
        )
    return out


def copy_boxes(boxes: EvalBoxes) -> EvalBoxes:
    """A shallow copy: new per-sample lists, the same (unmodified) box objects."""
    out = EvalBoxes()
    for t in boxes.sample_tokens:
        out.add_boxes(t, list(boxes[t]))
    return out


def filter_boxes(tables: SidecarTables, boxes: EvalBoxes, cfg: DetectionConfig) -> EvalBoxes:
    """The devkit's ``filter_eval_boxes`` on a copy of ``boxes`` (which need ``ego_translation`` set).

    The devkit function cannot tell the box type of a set with no boxes at all; such a set has
    nothing to filter and comes back unchanged.
    """
    out = copy_boxes(boxes)
    if not out.all:
        return out
    return filter_eval_boxes(tables, out, cfg.class_range, verbose=False)
