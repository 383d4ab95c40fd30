"""Streaming inference: shards -> pipeline (eval mode) -> model -> submission boxes.

Frames arrive one keyframe at a time in scene order (the pipeline's eval mode, batch size 1,
T = 1); the model's ``BEVHistory`` carries the BEV features of earlier frames of the same
scene and resets at scene starts. Each sample's ego-frame boxes go to the global frame with
the keyframe's ``ego2global`` from the sidecar (:func:`eval.submission.sample_results`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.gt import GroundTruth, GroundTruthError
from eval.plots import SampleView
from eval.submission import sample_results
from shards.contracts.checkpoint import CheckpointError, checkpoint_files, read_run_config, read_weights
from shards.conventions import CLASSES, boxes_from_nuscenes, transform_boxes

log = logging.getLogger(__name__)

Predictor = Callable[[Any], list[dict]]
"""``predictor(batch) -> [per-sample dict(boxes [K, 9], scores [K], labels [K], attrs [K])]``."""

GEOMETRY_KEYS = ("image_size", "crop_box", "decoder", "dali_device")
"""Keys of the training ``data`` section that eval keeps (the images must look as in training)."""


# --------------------------------------------------------------------------- model


def load_model(checkpoint: str | Path, config: str | Path | None = None, device: str = "cpu",
               random_init: bool = False, seed: int = 0):
    """Build the model from ``config.yaml`` (or ``config``) and load ``weights_fp32.pt``.

    ``random_init``: keep the freshly initialised weights (seeded with ``seed``) instead of loading
    the checkpoint's: the untrained baseline, built exactly like the trained model.
    Returns ``(model in eval mode on device, run config mapping)``.
    """
    import torch

    from bev_model import build_model, model_config_from_dict

    weights, cfg_path = checkpoint_files(checkpoint, config)
    run_cfg = read_run_config(cfg_path)
    if isinstance(run_cfg.get("model"), Mapping):
        # a model section written before head.hybrid became one mode (hybrid + hybrid_box_init): today's keys
        from bev_model.config import upgrade_model_section

        run_cfg["model"] = upgrade_model_section(dict(run_cfg["model"]))
    torch.manual_seed(seed)
    model = build_model(model_config_from_dict(run_cfg["model"], prefix="model"))
    if random_init:
        return model.to(device).eval(), run_cfg
    state = read_weights(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {weights}: weights do not fit the model of {cfg_path}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    return model.to(device).eval(), run_cfg


def new_history(model: Any) -> Any:
    """A fresh ``bev_model.temporal.BEVHistory`` for ``model``."""
    from bev_model.temporal import BEVHistory

    if hasattr(model, "new_history"):
        return model.new_history()
    offsets = getattr(getattr(getattr(model, "cfg", None), "temporal", None), "offsets", (0,))
    return BEVHistory(max_frames=max(1, -min(offsets)))


STAGES = ("final", "first")
"""What eval scores: ``final`` the BEV head's detections, ``first`` the perspective head's proposals."""


class ModelPredictor:
    """``model.predict`` over consecutive eval batches, with one BEVHistory reused across calls.

    ``stage="first"``: ``model.predict_first_stage`` instead (the two-stage model's proposals; no history).
    ``warm_up``: run the first batch once more, unscored, before scoring it. A process's very first forward
    differs from later ones in the last float bits (oneDNN prepares its convolutions on the first call), so
    a rank whose first frame is not the run's first frame (``torchrun -m eval``, ranks > 0) warms up to
    compute exactly what one process computes.
    """

    def __init__(self, model: Any, device: str = "cpu", stage: str = "final", warm_up: bool = False):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.model = model
        self.device = device
        self.stage = stage
        self.history = new_history(model)
        self.warm_up = warm_up

    def __call__(self, batch: Any) -> list[dict]:
        import torch

        with torch.inference_mode():
            if self.warm_up:
                self.warm_up = False
                self.model.predict(batch.to(self.device), history=new_history(self.model))
            if self.stage == "first":
                return self.model.predict_first_stage(batch.to(self.device))
            return self.model.predict(batch.to(self.device), history=self.history)


# --------------------------------------------------------------------------- loader


def eval_loader_config(
    shards: str | list[str],
    data_section: Mapping[str, Any] | None = None,
    *,
    device: str = "cpu",
    num_workers: int = 1,
    s3_endpoint_url: str | None = None,
    max_retries: int = 5,
    retry_backoff: float = 0.2,
    overrides: Mapping[str, Any] | None = None,
):
    """``LoaderConfig`` for eval: training image geometry, no augmentation, T = 1, batch 1, shard order."""
    from pipeline.config import LoaderConfig
    from shards.typed_config import from_dict

    geometry = {k: v for k, v in dict(data_section or {}).items() if k in GEOMETRY_KEYS}
    data: dict[str, Any] = dict(
        shards=shards,
        mode="eval",
        batch_size=1,
        offsets=(0,),
        augment=False,
        shuffle_shards=False,
        rank=0,  # the loader never splits eval shards: eval.api splits whole scenes across ranks itself
        world_size=1,
        device=device,
        num_workers=num_workers,
        load_points=False,
        s3_endpoint_url=s3_endpoint_url,
        max_retries=max_retries,
        retry_backoff=retry_backoff,
        max_error_rate=0.0,
    )
    data.update(overrides or {})
    cfg = from_dict(LoaderConfig, data, prefix="data")
    # geometry keys are set after typing: tuples from YAML lists keep their element types
    for key, value in geometry.items():
        setattr(cfg, key, tuple(value) if isinstance(value, list) else value)
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------- streaming


@dataclass
class StreamResult:
    """What one pass over the shards produced."""

    results: dict[str, list[dict]] = field(default_factory=dict)  # submission boxes per sample, in stream order
    views: list[SampleView] = field(default_factory=list)
    error: BaseException | None = None  # the data error that ended the stream early, if any
    seconds_load: float = 0.0  # waiting for the loader
    seconds_infer: float = 0.0  # in the predictor
    seconds_total: float = 0.0
    duplicates: int = 0


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _view_from_batch(batch: Any, b: int, pred: Mapping[str, Any]) -> SampleView:
    """Images and projection of batch sample ``b``'s current frame, GT and predictions in its ego frame."""
    imgs = _np(batch.imgs[b, -1]).astype(np.float32)  # [N, 3, H, W] in [0, 1]
    images = [np.clip(im.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8) for im in imgs]
    bev = _np(batch.bev_aug[b]).astype(np.float64)  # [4, 4] original ego -> augmented ego
    ego2img = _np(batch.ego2img[b, -1]).astype(np.float64) @ bev  # [N, 4, 4] original ego -> pixels
    gt = _np(batch.gt_boxes[b]).astype(np.float64).reshape(-1, 9)
    gt = transform_boxes(gt, np.linalg.inv(bev)) if len(gt) else gt
    return SampleView(
        sample_token=batch.sample_token[b],
        images=images,
        ego2img=ego2img,
        gt_boxes=gt,
        gt_labels=_np(batch.gt_labels[b]).reshape(-1),
        pred_boxes=_np(pred["boxes"]).astype(np.float64).reshape(-1, 9),
        pred_labels=_np(pred["labels"]).reshape(-1),
        pred_scores=_np(pred["scores"]).reshape(-1),
    )


def stream_predictions(
    loader: Iterable,
    predictor: Predictor | None,
    gt: GroundTruth,
    *,
    max_samples: int | None = None,
    keep: Collection[str] | None = None,
    picture_tokens: Sequence[str] = (),
    progress: bool = True,
) -> StreamResult:
    """Run ``predictor`` over every batch of ``loader``; collect submission boxes and picture views.

    A data error raised by the loader (after the pipeline's own retries) ends the stream; it is
    returned in ``error`` with everything scored before it, never swallowed silently.
    ``predictor=None`` only collects views (for ``--predictions`` runs).
    ``keep``: only these samples (one rank's scenes): batches of other samples are skipped unseen by the
    predictor (its history sees a kept scene's frames in order) and the stream stops once all are done.
    """
    from tqdm import tqdm

    out = StreamResult()
    wanted = set(picture_tokens)
    keep = set(keep) if keep is not None else None
    total = min(len(gt.order), max_samples) if max_samples else len(gt.order)
    total = len(keep) if keep is not None else total
    bar = tqdm(total=total, desc="eval", unit="sample", disable=not progress)
    start = time.perf_counter()
    it = iter(loader)
    try:
        while max_samples is None or len(out.results) < max_samples:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - a data/transport failure: report it with the partial count
                out.error = e
                log.error("the shard stream failed after %d samples: %s: %s", len(out.results), type(e).__name__, e)
                break
            if keep is not None and keep.isdisjoint(batch.sample_token):
                out.seconds_load += time.perf_counter() - t0
                continue
            t1 = time.perf_counter()
            preds = predictor(batch) if predictor is not None else None
            out.seconds_load += t1 - t0
            out.seconds_infer += time.perf_counter() - t1
            for b, token in enumerate(batch.sample_token):
                if keep is not None and token not in keep:
                    continue
                if token in out.results:
                    out.duplicates += 1
                    continue
                info = gt.samples.get(token)
                if info is None:
                    raise GroundTruthError(f"the stream delivered sample {token!r}, which is in no sidecar")
                if preds is None:
                    out.results[token] = []
                    if token in wanted:
                        out.views.append(_view_from_batch(batch, b, _empty_pred()))
                    continue
                p = preds[b]
                out.results[token] = sample_results(
                    token, p["boxes"], p["scores"], p["labels"], p.get("attrs"), info.ego2global
                )
                if token in wanted:
                    out.views.append(_view_from_batch(batch, b, p))
                bar.update(1)
                if max_samples is not None and len(out.results) >= max_samples:
                    break
            if predictor is None and wanted and wanted <= set(out.results):
                break
            if keep is not None and len(out.results) >= len(keep):
                break
    finally:
        bar.close()
        del it
    out.seconds_total = time.perf_counter() - start
    return out


def _empty_pred() -> dict[str, np.ndarray]:
    return {"boxes": np.zeros((0, 9)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}


def views_with_submission(views: Iterable[SampleView], submission: Mapping, gt: GroundTruth) -> list[SampleView]:
    """Fill the views' predictions from a submission (global -> each sample's ego frame)."""
    out = []
    for v in views:
        boxes = submission["results"].get(v.sample_token, [])
        e2g = gt.samples[v.sample_token].ego2global
        if boxes:
            ego = boxes_from_nuscenes(
                [b["translation"] for b in boxes],
                [b["size"] for b in boxes],
                [b["rotation"] for b in boxes],
                [b["velocity"] for b in boxes],
                e2g,
            )
        else:
            ego = np.zeros((0, 9))
        v.pred_boxes = ego
        v.pred_labels = np.array([CLASSES.index(b["detection_name"]) for b in boxes], dtype=np.int64)
        v.pred_scores = np.array([b["detection_score"] for b in boxes], dtype=np.float64)
        out.append(v)
    return out


def pick_picture_tokens(order: Sequence[str], count: int, evenly: bool = True) -> list[str]:
    """``count`` sample tokens to draw: evenly spread over ``order`` (or its first ``count``)."""
    if count <= 0 or not order:
        return []
    if not evenly or count >= len(order):
        return list(order[:count])
    idx = np.linspace(0, len(order) - 1, count).round().astype(int)
    return [order[i] for i in dict.fromkeys(idx.tolist())]


def checkpoint_label(checkpoint: str | Path | None) -> str:
    return str(Path(checkpoint).resolve()) if checkpoint else ""
