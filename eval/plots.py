"""Pictures of an evaluation: the devkit's PR/TP curves, camera views and a BEV plot per sample.

Everything renders with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from nuscenes.eval.detection.data_classes import DetectionConfig, DetectionMetricDataList, DetectionMetrics  # noqa: E402
from nuscenes.eval.detection.render import class_pr_curve, class_tp_curve, dist_pr_curve, summary_plot  # noqa: E402

from shards.conventions import CAMERAS, CLASSES, box_corners, project_points  # noqa: E402

GRID = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
"""Camera layout of the picture (the car's view: front row on top, back row below)."""
GT_COLOR = (0.1, 0.8, 0.1)
PRED_COLOR = (0.9, 0.1, 0.1)
EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
"""Box edges over the corner order of :func:`shards.conventions.box_corners` (bottom 0-3, top 4-7)."""


def render_curves(
    md_list: DetectionMetricDataList,
    metrics: DetectionMetrics,
    cfg: DetectionConfig,
    out_dir: str | Path,
    *,
    summary: bool = True,
    classes: Sequence[str] | None = None,
    dist_ths: Sequence[float] | None = None,
) -> list[Path]:
    """The devkit's ``DetectionEval.render`` plots as PNGs: ``summary`` (the devkit's summary_plot, slow:
    20 panels), per-class PR and TP curves (``classes``, default all) and per-distance PR curves
    (``dist_ths``, default all)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def savepath(name: str) -> str:
        paths.append(out / f"{name}.png")
        return str(paths[-1])

    if summary:
        summary_plot(md_list, metrics, min_precision=cfg.min_precision, min_recall=cfg.min_recall,
                     dist_th_tp=cfg.dist_th_tp, savepath=savepath("summary"))
    for name in cfg.class_names if classes is None else classes:
        class_pr_curve(md_list, metrics, name, cfg.min_precision, cfg.min_recall, savepath=savepath(f"{name}_pr"))
        class_tp_curve(md_list, metrics, name, cfg.min_recall, cfg.dist_th_tp, savepath=savepath(f"{name}_tp"))
    for dist_th in cfg.dist_ths if dist_ths is None else dist_ths:
        dist_pr_curve(md_list, metrics, dist_th, cfg.min_precision, cfg.min_recall, savepath=savepath(f"dist_pr_{dist_th}"))
    plt.close("all")
    return paths


@dataclass
class SampleView:
    """What one sample's pictures need, all in the keyframe ego frame.

    images: six ``[H, W, 3]`` uint8 RGB images in CAMERAS order.
    ego2img: ``[6, 4, 4]`` ego -> pixel projection matching those images' pixels.
    gt_boxes ``[M, 9]``, gt_labels ``[M]``; pred_boxes ``[K, 9]``, pred_labels ``[K]``, pred_scores ``[K]``.
    """

    sample_token: str
    images: Sequence[np.ndarray]
    ego2img: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    pred_boxes: np.ndarray
    pred_labels: np.ndarray
    pred_scores: np.ndarray


def _shown_preds(view: SampleView, score_thr: float, max_boxes: int) -> np.ndarray:
    """Indices of the predictions to draw: score >= score_thr, best first, at most max_boxes."""
    order = np.argsort(-np.asarray(view.pred_scores), kind="stable")
    order = order[np.asarray(view.pred_scores)[order] >= score_thr]
    return order[:max_boxes]


def _pred_rule(score_thr: float, max_boxes: int) -> str:
    """How the drawn predictions were chosen, for titles."""
    return f"best {max_boxes}" if score_thr <= 0 else f"score >= {score_thr}, at most {max_boxes}"


def _draw_boxes_2d(ax, boxes: np.ndarray, ego2img: np.ndarray, size: tuple[int, int], color, lw: float) -> int:
    """Project ``[N, 9]`` boxes' corners with ``ego2img [4, 4]`` and draw the edges in front of the camera."""
    if len(boxes) == 0:
        return 0
    corners = box_corners(np.asarray(boxes, dtype=np.float64))  # [N, 8, 3]
    uv, depth = project_points(corners, ego2img)  # [N, 8, 2], [N, 8]
    w, h = size
    drawn = 0
    for n in range(len(boxes)):
        front = depth[n] > 0.1
        if front.sum() < 2:
            continue
        inside = front & (uv[n, :, 0] > -w) & (uv[n, :, 0] < 2 * w) & (uv[n, :, 1] > -h) & (uv[n, :, 1] < 2 * h)
        if not ((uv[n, front, 0] >= 0) & (uv[n, front, 0] < w) & (uv[n, front, 1] >= 0) & (uv[n, front, 1] < h)).any():
            continue
        for i, j in EDGES:
            if inside[i] and inside[j]:
                ax.plot(uv[n, [i, j], 0], uv[n, [i, j], 1], color=color, linewidth=lw)
        drawn += 1
    return drawn


def draw_cameras(view: SampleView, path: str | Path, score_thr: float = 0.3, max_boxes: int = 100) -> Path:
    """Six camera images (2 x 3 grid) with GT boxes (green) and predictions (red) projected."""
    keep = _shown_preds(view, score_thr, max_boxes)
    fig, axes = plt.subplots(2, 3, figsize=(18, 7))
    for r, row in enumerate(GRID):
        for c, cam in enumerate(row):
            ax = axes[r, c]
            i = CAMERAS.index(cam)
            img = np.asarray(view.images[i])
            h, w = img.shape[:2]
            ax.imshow(img)
            n_gt = _draw_boxes_2d(ax, view.gt_boxes, view.ego2img[i], (w, h), GT_COLOR, 1.2)
            n_pr = _draw_boxes_2d(ax, view.pred_boxes[keep], view.ego2img[i], (w, h), PRED_COLOR, 1.0)
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_title(f"{cam}  gt {n_gt}  pred {n_pr}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{view.sample_token}: GT green, predictions red ({_pred_rule(score_thr, max_boxes)})",
                 fontsize=10)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def draw_bev(view: SampleView, path: str | Path, score_thr: float = 0.3, max_boxes: int = 100,
             extent: float = 55.0) -> Path:
    """Bird's-eye view (ego x to the right, y up) of GT (green) and predicted (red) box footprints."""
    keep = _shown_preds(view, score_thr, max_boxes)
    fig, ax = plt.subplots(figsize=(8, 8))
    for boxes, color, style in (
        (view.gt_boxes, GT_COLOR, "-"),
        (view.pred_boxes[keep], PRED_COLOR, "--"),
    ):
        if len(boxes) == 0:
            continue
        foot = box_corners(np.asarray(boxes, dtype=np.float64))[:, [0, 1, 2, 3, 0], :2]  # [N, 5, 2]
        for n in range(len(boxes)):
            ax.plot(foot[n, :, 0], foot[n, :, 1], style, color=color, linewidth=1.0)
            front = foot[n, :2].mean(0)  # heading: centre -> middle of the front edge
            centre = np.asarray(boxes[n][:2])
            ax.plot([centre[0], front[0]], [centre[1], front[1]], color=color, linewidth=1.0)
    for radius in (30, 40, 50):
        ax.add_patch(plt.Circle((0, 0), radius, fill=False, color="0.7", linestyle=":"))
    ax.plot([0], [0], marker=">", color="k", markersize=10)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("ego x (m, forward)")
    ax.set_ylabel("ego y (m, left)")
    n_gt, n_pred = len(view.gt_boxes), len(keep)
    ax.set_title(f"{view.sample_token}: {n_gt} GT (green), {n_pred} predictions (red; "
                 f"{_pred_rule(score_thr, max_boxes)})", fontsize=9)
    return _save(fig, path)


def class_names(labels: np.ndarray) -> list[str]:
    """Class indices -> names (for legends and logs)."""
    return [CLASSES[int(i)] for i in labels]
