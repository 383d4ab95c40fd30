"""nuScenes detection metrics (NDS, mAP, TP errors) with the devkit's own algorithms.

The steps are those of ``nuscenes.eval.detection.evaluate.DetectionEval`` (``__init__`` and
``evaluate``), with the database replaced by the shards' sidecars (:mod:`eval.gt`):
``add_center_dist`` -> ``filter_eval_boxes`` on predictions and ground truth -> ``accumulate``
per class and distance threshold -> ``calc_ap`` / ``calc_tp`` -> ``DetectionMetrics``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.loaders import add_center_dist
from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp
from nuscenes.eval.detection.constants import TP_METRICS
from nuscenes.eval.detection.data_classes import DetectionConfig, DetectionMetricDataList, DetectionMetrics

from eval.gt import GroundTruth, filter_boxes, load_ground_truth
from eval.submission import to_eval_boxes, validate_submission

CONFIG_NAME = "detection_cvpr_2019"
TP_SHORT = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}
NAN_TP = {"traffic_cone": ("attr_err", "vel_err", "orient_err"), "barrier": ("attr_err", "vel_err")}
"""TP errors the devkit leaves undefined (NaN) per class."""


def detection_config() -> DetectionConfig:
    """The devkit's ``detection_cvpr_2019`` configuration."""
    return config_factory(CONFIG_NAME)


@dataclass
class EvalResult:
    """Metrics of one scoring run."""

    metrics: DetectionMetrics
    md_list: DetectionMetricDataList
    summary: dict[str, Any]  # metrics.serialize() + meta + num_samples (what metrics_summary.json holds)


def evaluate_boxes(gt_boxes, pred_boxes, cfg: DetectionConfig) -> tuple[DetectionMetrics, DetectionMetricDataList]:
    """``DetectionEval.evaluate`` on already filtered ``EvalBoxes``: accumulate, calc_ap, calc_tp."""
    start = time.time()
    md_list = DetectionMetricDataList()
    for class_name in cfg.class_names:
        for dist_th in cfg.dist_ths:
            md_list.set(class_name, dist_th, accumulate(gt_boxes, pred_boxes, class_name, cfg.dist_fcn_callable, dist_th))
    metrics = DetectionMetrics(cfg)
    for class_name in cfg.class_names:
        for dist_th in cfg.dist_ths:
            metrics.add_label_ap(class_name, dist_th, calc_ap(md_list[(class_name, dist_th)], cfg.min_recall, cfg.min_precision))
        for metric_name in TP_METRICS:
            if metric_name in NAN_TP.get(class_name, ()):
                tp = np.nan
            else:
                tp = calc_tp(md_list[(class_name, cfg.dist_th_tp)], cfg.min_recall, metric_name)
            metrics.add_label_tp(class_name, metric_name, tp)
    metrics.add_runtime(time.time() - start)
    return metrics, md_list


def evaluate(
    submission: Mapping,
    gt: GroundTruth,
    *,
    sample_tokens: Iterable[str] | None = None,
    cfg: DetectionConfig | None = None,
) -> EvalResult:
    """Score a submission against sidecar ground truth.

    Args:
        submission: a nuScenes submission dict (validated here).
        gt: ground truth from :func:`eval.gt.load_ground_truth`.
        sample_tokens: the samples to score (default: every sample of ``gt``); the submission
            must cover exactly these.
        cfg: detection config (default ``detection_cvpr_2019``).
    """
    cfg = cfg or detection_config()
    if sample_tokens is not None:
        gt = gt.subset(sample_tokens)
    validate_submission(submission, gt.order, max_boxes=cfg.max_boxes_per_sample)
    pred = to_eval_boxes(submission, gt.order)
    add_center_dist(gt.tables, pred)
    pred = filter_boxes(gt.tables, pred, cfg)
    gt_f = gt.filtered(cfg)
    metrics, md_list = evaluate_boxes(gt_f, pred, cfg)
    summary = metrics.serialize()
    summary["meta"] = dict(submission["meta"])
    summary["num_samples"] = len(gt.order)
    summary["num_gt_boxes"] = len(gt_f.all)
    summary["num_pred_boxes"] = len(pred.all)
    return EvalResult(metrics=metrics, md_list=md_list, summary=summary)


def score(submission: Mapping, gt_sidecars: Any, *, sample_tokens: Iterable[str] | None = None) -> dict:
    """Metrics summary (the devkit's ``metrics_summary.json`` content) of ``submission``.

    ``gt_sidecars``: a :class:`GroundTruth` or an iterable of sidecar paths / bytes / tables.
    """
    gt = gt_sidecars if isinstance(gt_sidecars, GroundTruth) else load_ground_truth(gt_sidecars)
    return evaluate(submission, gt, sample_tokens=sample_tokens).summary


def format_table(summary: Mapping[str, Any]) -> str:
    """The devkit's printed report: mAP, the five TP errors, NDS, then per-class AP and errors."""
    lines = [f"mAP: {summary['mean_ap']:.4f}"]
    for name, value in summary["tp_errors"].items():
        lines.append(f"{TP_SHORT[name]}: {value:.4f}")
    lines.append(f"NDS: {summary['nd_score']:.4f}")
    if "num_samples" in summary:
        lines.append(f"Samples: {summary['num_samples']}")
    lines.append("")
    lines.append("Per-class results:")
    lines.append(f"{'Object Class':<20}\t{'AP':<6}\t{'ATE':<6}\t{'ASE':<6}\t{'AOE':<6}\t{'AVE':<6}\t{'AAE':<6}")
    for cls, ap in summary["mean_dist_aps"].items():
        tp = summary["label_tp_errors"][cls]
        errs = "\t".join(f"{tp[m]:<6.3f}" for m in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err"))
        lines.append(f"{cls:<20}\t{ap:<6.3f}\t{errs}")
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_summary(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``metrics_summary.json`` (NaN written as the devkit writes it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(summary), indent=2))
    return path


def compare_summaries(a: Mapping[str, Any], b: Mapping[str, Any], *, class_tp: bool = True) -> float:
    """Largest absolute difference between two summaries' NDS, mAP, mean TP errors, per-class and
    per-threshold APs and (``class_tp``) per-class TP errors (NaN equal to NaN; NaN against a number
    counts as infinite)."""

    def diff(x: float, y: float) -> float:
        if math.isnan(x) and math.isnan(y):
            return 0.0
        if math.isnan(x) or math.isnan(y):
            return math.inf
        return abs(x - y)

    worst = max(diff(a["nd_score"], b["nd_score"]), diff(a["mean_ap"], b["mean_ap"]))
    for cls, ap in a["mean_dist_aps"].items():
        worst = max(worst, diff(ap, b["mean_dist_aps"][cls]))
        for m, v in a["label_tp_errors"][cls].items():
            if class_tp:
                worst = max(worst, diff(v, b["label_tp_errors"][cls][m]))
        for th, v in a["label_aps"][cls].items():
            worst = max(worst, diff(v, b["label_aps"][cls][th]))
    for m, v in a["tp_errors"].items():
        worst = max(worst, diff(v, b["tp_errors"][m]))
    return worst


def devkit_cross_check(
    submission_path: str | Path, dataroot: str | Path, version: str, eval_set: str, out_dir: str | Path
) -> dict[str, Any]:
    """Run the devkit's ``DetectionEval`` itself on a dataroot; returns its metrics summary."""
    from nuscenes import NuScenes
    from nuscenes.eval.detection.evaluate import DetectionEval

    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    de = DetectionEval(
        nusc, detection_config(), result_path=str(submission_path), eval_set=eval_set, output_dir=str(out_dir), verbose=False
    )
    metrics, _ = de.evaluate()
    summary = metrics.serialize()
    summary["meta"] = de.meta
    return summary
