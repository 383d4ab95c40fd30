"""What a dense CenterPoint-head model (BEVNeXt) predicts at the GT centres, before any decoding, NMS or matching.

    stats = centre_quality(model, loader)      # model: BEVNeXt in eval mode; loader: eval batches in scene order
    stats.recall, stats.vel_err, stats.yaw_err

    python -m eval.centres --checkpoint RUN/checkpoints/step_00000500/weights_ema_fp32.pt --shards SHARDS/mini_val

Three numbers that move long before mAP does:

* ``recall``: of each sample's GT centre cells (``bev_model.bevnext.head.center_targets``: boxes whose centre lies on
  the grid; cells shared by two boxes count once), the fraction among that many highest-scoring cells of the
  heatmap (its maximum over classes);
* ``vel_err``: mean ``||v_pred - v_gt||`` (m/s) of the velocity branch read at each GT centre cell (GT with a
  finite velocity);
* ``yaw_err``: mean absolute heading difference (rad, in ``[0, pi]``) of the rotation branch there; random headings
  score pi / 2 on any GT; ``axis_err`` the same modulo pi (in ``[0, pi / 2]``: a reversed heading counts 0; random
  headings score pi / 4).

``speed`` (the mean GT speed, m/s) is the ``vel_err`` of a model that predicts zero velocity; ``rot_norm`` the mean
length of the predicted (sin, cos): near 0 where the rotation branch has not decided on a heading (the L1 optimum
between opposite ones). ``per_class`` repeats the box-level numbers for each class with GT.

Batches run through ``model.predict_maps`` with a history from ``model.new_history()``, as ``python -m eval``
streams them, so a temporal model sees its past frames; feed consecutive samples of each scene in order.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import islice

import torch

from bev_model.bevnext.head import center_targets, gather_code
from shards.conventions import CLASSES


@dataclass(frozen=True)
class CentreStats:
    """``samples`` scored, ``objects``: GT centre cells (``recall``), ``moving``: GT boxes with a finite velocity
    (``vel_err``, ``speed``); ``yaw_err``, ``axis_err`` and ``rot_norm`` are over every GT box on the grid;
    ``per_class``: class name -> ``{boxes, moving, vel_err, speed, yaw_err, axis_err, rot_norm}``."""

    samples: int
    objects: int
    moving: int
    recall: float
    vel_err: float
    yaw_err: float
    axis_err: float
    speed: float
    rot_norm: float
    per_class: dict[str, dict[str, float]]

    def to_dict(self) -> dict:
        return asdict(self)


def centre_errors(heat: torch.Tensor, reg: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                  labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One batch's per-object values.

    Args:
        heat: ``[B, K, H, W]`` heatmap logits; reg: the ``REG_HEADS`` maps ``[B, c, H, W]``;
        targets: :func:`bev_model.bevnext.head.center_targets` of the batch's GT (same grid, same frame);
        labels: B x ``[G_b]`` the GT's class indices (as given to ``center_targets``).
    Returns:
        ``hit [C]`` float (1: the centre cell is among the top-scoring cells; C unique cells over the batch);
        per GT box on the grid: ``label [G]``, ``yaw [G]`` (rad, in ``[0, pi]``), ``rot_norm [G]``, ``moving [G]``
        bool (finite GT velocity), ``vel [G]`` (m/s; NaN where not moving), ``speed [G]`` (GT, m/s).
    """
    mask, ind = targets["mask"], targets["ind"]
    score = heat.float().amax(1).flatten(1)  # [B, H W]
    hits = []
    for b in range(score.shape[0]):
        cells = ind[b][mask[b]].unique()
        if len(cells):
            top = score[b].topk(len(cells)).indices
            hits.append(torch.isin(cells, top).float())
    pred = gather_code(reg, ind).float()[mask]  # [G, 10]
    gt = targets["code"][mask]
    label = torch.cat([lab.to(mask.device)[mask[b, :len(lab)]] for b, lab in enumerate(labels)])
    moving = torch.isfinite(gt[:, 8:10]).all(-1)
    diff = torch.atan2(pred[:, 6], pred[:, 7]) - torch.atan2(gt[:, 6], gt[:, 7])
    return {"hit": torch.cat(hits) if hits else heat.new_zeros(0), "label": label,
            "yaw": torch.remainder(diff + math.pi, 2 * math.pi).sub(math.pi).abs(), "rot_norm": pred[:, 6:8].norm(dim=-1),
            "moving": moving, "vel": (pred[:, 8:10] - gt[:, 8:10]).norm(dim=-1), "speed": gt[:, 8:10].norm(dim=-1)}


def box_stats(e: dict[str, torch.Tensor]) -> dict[str, float]:
    """Box-level means of :func:`centre_errors` values (NaN where there is nothing to average)."""
    def mean(x: torch.Tensor) -> float:
        return float(x.mean()) if len(x) else math.nan

    m, yaw = e["moving"], e["yaw"]
    return {"boxes": len(yaw), "moving": int(m.sum()), "vel_err": mean(e["vel"][m]), "speed": mean(e["speed"][m]),
            "yaw_err": mean(yaw), "axis_err": mean(torch.minimum(yaw, math.pi - yaw)), "rot_norm": mean(e["rot_norm"])}


@torch.no_grad()
def centre_quality(model, batches: Iterable, samples: int | None = None) -> CentreStats:
    """Score ``model`` (a BEVNeXt; call ``eval()`` first) on up to ``samples`` batches (see the module doc)."""
    if not hasattr(model, "predict_maps"):
        raise ValueError(f"centre quality needs a dense-head model (BEVNeXt); got {type(model).__name__}")
    cfg, h = model.cfg, model.cfg.head
    history = model.new_history()
    parts: dict[str, list[torch.Tensor]] = {}
    n = 0
    for batch in islice(batches, samples):
        out = model.predict_maps(batch, history)
        boxes, labels, attrs = batch.detection_targets(out["heat"].device)
        t = center_targets(boxes, labels, attrs, model.grid, cfg.num_classes, h.gaussian_overlap, h.min_radius)
        for k, v in centre_errors(out["heat"], out["reg"], t, labels).items():
            parts.setdefault(k, []).append(v.cpu())
        n += out["heat"].shape[0]
    if n == 0:
        raise ValueError("centre quality: the loader yielded no batch")
    e = {k: torch.cat(v) for k, v in parts.items()}
    hit = e.pop("hit")
    overall = box_stats(e)
    per_class = {CLASSES[c]: box_stats({k: v[e["label"] == c] for k, v in e.items()})
                 for c in e["label"].unique().tolist()}
    overall.pop("boxes")
    return CentreStats(samples=n, objects=len(hit), recall=float(hit.mean()) if len(hit) else math.nan,
                       per_class=per_class, **overall)


def format_per_class(stats: CentreStats) -> str:
    """``stats.per_class`` as a table, one row per class."""
    cols = ("boxes", "yaw_err", "axis_err", "rot_norm", "vel_err", "speed")
    lines = [f"{'class':<22}" + "".join(f"{c:>10}" for c in cols)]
    for name, row in stats.per_class.items():
        lines.append(f"{name:<22}" + "".join(f"{row[c]:>10}" if c == "boxes" else f"{row[c]:>10.2f}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print a checkpoint's :class:`CentreStats` on eval-streamed shards (one JSON line)."""
    from eval.inference import eval_loader_config, load_model
    from pipeline.loader import build_loader

    ap = argparse.ArgumentParser(prog="python -m eval.centres", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint dir (its weights_fp32.pt) or a weights file in one")
    ap.add_argument("--shards", required=True, help="shards dir or manifest (streamed as python -m eval does)")
    ap.add_argument("--samples", type=int, default=None, help="at most this many samples (default: all)")
    ap.add_argument("--per-class", action="store_true", help="also print the per-class table")
    args = ap.parse_args(argv)
    model, run_cfg = load_model(args.checkpoint)
    data = eval_loader_config(args.shards, run_cfg.get("data"), num_workers=0)
    stats = centre_quality(model, build_loader(data), args.samples)
    if args.per_class:
        print(format_per_class(stats))
    print(json.dumps({"checkpoint": args.checkpoint, **{k: v for k, v in stats.to_dict().items() if k != "per_class"}}))


__all__ = ["CentreStats", "box_stats", "centre_errors", "centre_quality", "format_per_class"]


if __name__ == "__main__":
    main()
