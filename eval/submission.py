"""nuScenes detection submissions: build from model outputs, validate, read and write.

A submission is ``{"meta": {...}, "results": {sample_token: [box, ...]}}`` where a box is
``{"sample_token", "translation" [3], "size" [3] (w, l, h), "rotation" [4] (w, x, y, z),
"velocity" [2], "detection_name", "detection_score", "attribute_name"}`` in the global frame.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.detection.data_classes import DetectionBox

from shards.conventions import ATTRIBUTES, CLASS_ATTRIBUTES, CLASSES, DEFAULT_ATTRIBUTE, boxes_to_nuscenes

MAX_BOXES_PER_SAMPLE = 500
META_KEYS = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")
CAMERA_META = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}


class SubmissionError(ValueError):
    """A submission that the nuScenes evaluation would reject; the message names the sample/box/field."""


def attribute_name(class_name: str, attr_index: int) -> str:
    """Attribute index (into ATTRIBUTES, -1 none) -> a name the devkit accepts for ``class_name``.

    An attribute that does not belong to the class (or none) becomes the class's default.
    """
    if 0 <= attr_index < len(ATTRIBUTES) and ATTRIBUTES[attr_index] in CLASS_ATTRIBUTES[class_name]:
        return ATTRIBUTES[attr_index]
    return DEFAULT_ATTRIBUTE[class_name]


def sample_results(
    sample_token: str,
    boxes: Any,
    scores: Any,
    labels: Any,
    attrs: Any,
    ego2global: np.ndarray,
    max_boxes: int = MAX_BOXES_PER_SAMPLE,
) -> list[dict]:
    """One sample's predictions -> its list of submission boxes (global frame).

    Args:
        boxes: ``[K, 9]`` ``[x, y, z, l, w, h, yaw, vx, vy]`` in the keyframe ego frame.
        scores: ``[K]`` confidences.
        labels: ``[K]`` class indices into CLASSES (others are dropped).
        attrs: ``[K]`` attribute indices into ATTRIBUTES (-1 none).
        ego2global: ``[4, 4]`` keyframe ego pose of the sample.
        max_boxes: keep the ``max_boxes`` highest-scoring boxes.
    """
    b = _np(boxes).reshape(-1, 9).astype(np.float64)
    s = _np(scores).reshape(-1).astype(np.float64)
    lab = _np(labels).reshape(-1).astype(np.int64)
    att = _np(attrs).reshape(-1).astype(np.int64) if attrs is not None else np.full(len(lab), -1)
    if not (len(b) == len(s) == len(lab) == len(att)):
        raise SubmissionError(
            f"sample {sample_token}: boxes/scores/labels/attrs lengths differ: {len(b)}/{len(s)}/{len(lab)}/{len(att)}"
        )
    keep = (lab >= 0) & (lab < len(CLASSES)) & np.isfinite(s) & np.isfinite(b[:, :7]).all(1)
    b, s, lab, att = b[keep], s[keep], lab[keep], att[keep]
    order = np.argsort(-s, kind="stable")[:max_boxes]
    b, s, lab, att = b[order], s[order], lab[order], att[order]
    b[:, 7:9] = np.nan_to_num(b[:, 7:9])
    g = boxes_to_nuscenes(b, ego2global)
    out = []
    for i in range(len(b)):
        name = CLASSES[int(lab[i])]
        out.append(
            {
                "sample_token": sample_token,
                "translation": [float(v) for v in g["translation"][i]],
                "size": [float(v) for v in g["size"][i]],
                "rotation": [float(v) for v in g["rotation"][i]],
                "velocity": [float(v) for v in g["velocity"][i]],
                "detection_name": name,
                "detection_score": float(s[i]),
                "attribute_name": attribute_name(name, int(att[i])),
            }
        )
    return out


def make_submission(results: Mapping[str, list[dict]], meta: Mapping[str, bool] | None = None) -> dict:
    """Wrap per-sample box lists into a submission with a camera-only ``meta``."""
    m = dict(CAMERA_META)
    if meta:
        m.update(meta)
    return {"meta": m, "results": {k: list(v) for k, v in results.items()}}


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _finite_list(box: Mapping, key: str, n: int, where: str, allow_nan: bool = False) -> None:
    v = box.get(key)
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise SubmissionError(f"{where}: '{key}' must be a list of {n} numbers, got {v!r}")
    for x in v:
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            raise SubmissionError(f"{where}: '{key}' must be a list of {n} numbers, got {v!r}")
        if not allow_nan and not math.isfinite(x):
            raise SubmissionError(f"{where}: '{key}' has a non-finite value: {v!r}")


def validate_submission(
    submission: Any,
    sample_tokens: Iterable[str] | None = None,
    *,
    max_boxes: int = MAX_BOXES_PER_SAMPLE,
) -> None:
    """Raise :class:`SubmissionError` where the devkit would reject (or misread) the submission.

    Checks: ``meta`` with the five ``use_*`` booleans; ``results`` a dict of lists; at most
    ``max_boxes`` boxes per sample; every box has the fields above, its ``sample_token`` equals
    its key, a known ``detection_name``, a float ``detection_score``, and an ``attribute_name``
    that belongs to its class (or ""). With ``sample_tokens``, the results must cover exactly
    those samples (the devkit asserts it): missing or unknown tokens are named.
    """
    if not isinstance(submission, Mapping):
        raise SubmissionError(f"a submission is a JSON object with 'meta' and 'results', got {type(submission).__name__}")
    for key in ("meta", "results"):
        if key not in submission:
            raise SubmissionError(f"submission has no '{key}' field")
    meta = submission["meta"]
    if not isinstance(meta, Mapping):
        raise SubmissionError("submission 'meta' must be an object")
    for key in META_KEYS:
        if not isinstance(meta.get(key), bool):
            raise SubmissionError(f"submission meta['{key}'] must be true or false, got {meta.get(key)!r}")
    results = submission["results"]
    if not isinstance(results, Mapping):
        raise SubmissionError("submission 'results' must be an object mapping sample_token -> list of boxes")
    for token, boxes in results.items():
        if not isinstance(boxes, list):
            raise SubmissionError(f"sample {token}: results must be a list of boxes, got {type(boxes).__name__}")
        if len(boxes) > max_boxes:
            raise SubmissionError(f"sample {token}: {len(boxes)} boxes, at most {max_boxes} are allowed per sample")
        for i, box in enumerate(boxes):
            _validate_box(token, i, box)
    if sample_tokens is not None:
        expected = list(dict.fromkeys(sample_tokens))
        missing = [t for t in expected if t not in results]
        if missing:
            raise SubmissionError(
                f"submission lacks {len(missing)} of {len(expected)} sample tokens, e.g. {', '.join(missing[:3])}"
            )
        unknown = sorted(set(results) - set(expected))
        if unknown:
            raise SubmissionError(
                f"submission has {len(unknown)} sample token(s) not in the evaluated set, e.g. {', '.join(unknown[:3])}"
            )


def _validate_box(token: str, i: int, box: Any) -> None:
    where = f"sample {token} box {i}"
    if not isinstance(box, Mapping):
        raise SubmissionError(f"{where}: a box must be an object, got {type(box).__name__}")
    if box.get("sample_token") != token:
        raise SubmissionError(f"{where}: sample_token {box.get('sample_token')!r} differs from its key")
    _finite_list(box, "translation", 3, where)
    _finite_list(box, "size", 3, where)
    if min(box["size"]) <= 0:
        raise SubmissionError(f"{where}: size {box['size']} must be positive (w, l, h in metres)")
    _finite_list(box, "rotation", 4, where)
    if math.fsum(float(q) * float(q) for q in box["rotation"]) < 1e-12:
        raise SubmissionError(f"{where}: rotation {box['rotation']} is not a rotation (zero quaternion)")
    _finite_list(box, "velocity", 2, where, allow_nan=True)
    name = box.get("detection_name")
    if name not in CLASSES:
        raise SubmissionError(f"{where}: detection_name {name!r} is not one of the 10 classes {list(CLASSES)}")
    score = box.get("detection_score")
    if not isinstance(score, float) or not math.isfinite(score):
        raise SubmissionError(f"{where}: detection_score must be a finite float, got {score!r}")
    attr = box.get("attribute_name")
    if attr != "" and attr not in CLASS_ATTRIBUTES[name]:
        raise SubmissionError(
            f"{where}: attribute_name {attr!r} is not valid for class {name!r} "
            f"(allowed: {list(CLASS_ATTRIBUTES[name]) + ['']})"
        )


def to_eval_boxes(submission: Mapping, sample_tokens: Iterable[str] | None = None) -> EvalBoxes:
    """The devkit's ``EvalBoxes`` of the submission's boxes (all samples, or ``sample_tokens`` in order)."""
    results = submission["results"]
    tokens = list(results) if sample_tokens is None else list(sample_tokens)
    return EvalBoxes.deserialize({t: results[t] for t in tokens}, DetectionBox)


def load_submission(path: str | Path) -> dict:
    """Read a submission JSON file (not validated; see :func:`validate_submission`)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise SubmissionError(f"submission file {path} does not exist") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SubmissionError(f"submission file {path} is not valid UTF-8 JSON: {e}") from e
    except RecursionError as e:
        raise SubmissionError(f"submission file {path} is nested too deeply to be a submission") from e


def write_submission(submission: Mapping, path: str | Path) -> Path:
    """Write a submission JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(submission, f)
    tmp.replace(path)
    return path
