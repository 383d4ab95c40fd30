"""Baselines a trained detector must beat, scored with the same metrics.

* **constant boxes**: one fixed set of ego-frame boxes emitted for every sample — the training
  set's most frequent box placements per class (k-means of GT centres in the ego frame, mean size,
  the cluster's circular-mean yaw), scored by how often the cluster occurs. It knows the data's
  priors (where cars usually are relative to the ego) and nothing about the images.
* **untrained model**: ``python -m eval --checkpoint CKPT --random-init`` builds the checkpoint's
  model with fresh random weights (see ``eval.inference.load_model``).

    python -m eval.baselines constant --train-shards S/mini_train --shards S/mini_val --out const.json
    python -m eval --shards S/mini_val --predictions const.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.cluster.vq import kmeans2

from shards.conventions import CLASSES, DEFAULT_ATTRIBUTE, attribute_index


def train_boxes(train_shards: str) -> tuple[np.ndarray, np.ndarray]:
    """All detection-class GT boxes of the training shards: (``[N, 9]`` ego-frame boxes, ``[N]`` labels)."""
    from pipeline.meta import open_sidecar_table
    from pipeline.urls import expand_shard_urls

    boxes, labels = [], []
    for spec in expand_shard_urls(train_shards):
        t = open_sidecar_table(spec.sidecar_url)
        for b, lab in zip(t.column("gt_boxes").to_pylist(), t.column("gt_labels").to_pylist()):
            if b:
                boxes.append(np.asarray(b, dtype=np.float64).reshape(-1, 9))
                labels.append(np.asarray(lab, dtype=np.int64))
    if not boxes:
        raise ValueError(f"no GT boxes in the training shards {train_shards}")
    b, lab = np.concatenate(boxes), np.concatenate(labels)
    keep = lab >= 0
    return b[keep], lab[keep]


def constant_boxes(boxes: np.ndarray, labels: np.ndarray, per_class: int = 20, seed: int = 0,
                   max_range: float = 55.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The prior-only detector's fixed output.

    Args:
        boxes: ``[N, 9]`` training GT boxes (ego frame).
        labels: ``[N]`` class indices.
        per_class: clusters (boxes) per class.
    Returns:
        (``[K, 9]`` boxes, ``[K]`` scores in (0, 1], ``[K]`` labels).
    """
    out_b, out_s, out_l = [], [], []
    rng_seed = seed
    for c in range(len(CLASSES)):
        sel = (labels == c) & (np.linalg.norm(boxes[:, :2], axis=1) < max_range)
        cb = boxes[sel]
        if len(cb) == 0:
            continue
        k = min(per_class, len(cb))
        _, assign = kmeans2(cb[:, :2], k, minit="++", seed=rng_seed, missing="warn")
        rng_seed += 1
        counts = np.bincount(assign, minlength=k)
        for j in np.nonzero(counts)[0]:
            m = cb[assign == j]
            box = m.mean(0)
            box[6] = np.arctan2(np.sin(m[:, 6]).mean(), np.cos(m[:, 6]).mean())
            out_b.append(box)
            out_s.append(counts[j] / len(cb))
            out_l.append(c)
    return np.stack(out_b), np.asarray(out_s), np.asarray(out_l, dtype=np.int64)


def constant_submission(train_shards: str, val_shards: str, per_class: int = 20, seed: int = 0) -> dict:
    """A submission giving every val sample the same ego-frame boxes (converted to its global frame)."""
    from eval.api import load_shard_ground_truth
    from eval.submission import make_submission, sample_results

    b, s, lab = constant_boxes(*train_boxes(train_shards), per_class=per_class, seed=seed)
    attrs = np.asarray([attribute_index(DEFAULT_ATTRIBUTE[CLASSES[c]]) for c in lab])
    gt, _ = load_shard_ground_truth(val_shards)
    results = {tok: sample_results(tok, b, s, lab, attrs, info.ego2global) for tok, info in gt.samples.items()}
    return make_submission(results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.baselines", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("constant", help="the constant-boxes submission for the val shards")
    c.add_argument("--train-shards", required=True)
    c.add_argument("--shards", required=True, help="val shards (any form python -m eval takes)")
    c.add_argument("--per-class", type=int, default=20)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from eval.submission import write_submission

    sub_json = constant_submission(args.train_shards, args.shards, args.per_class, args.seed)
    n = sum(len(v) for v in sub_json["results"].values())
    print(f"constant boxes: {n // max(len(sub_json['results']), 1)} boxes x {len(sub_json['results'])} samples "
          f"-> {write_submission(sub_json, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


class NoisyOracle:
    """A deterministic stand-in for a model: each sample's GT boxes (``bev_aug`` undone) with noise seeded
    by the sample token, and optionally one false positive per sample. Same input, same output, whatever
    the transport: tests and benchmarks use it to compare streams and to time everything but inference.

    Args:
        xy_sigma: std of the centre noise (m). yaw_sigma: std of the heading noise (rad).
        false_positive: add one car-sized box at a random place per sample.
    """

    def __init__(self, xy_sigma: float = 0.3, yaw_sigma: float = 0.0, false_positive: bool = False):
        self.xy_sigma, self.yaw_sigma, self.false_positive = xy_sigma, yaw_sigma, false_positive

    def __call__(self, batch) -> list[dict]:
        import zlib

        from shards.conventions import transform_boxes

        out = []
        for b, token in enumerate(batch.sample_token):
            rng = np.random.default_rng(zlib.crc32(token.encode()))
            bev = batch.bev_aug[b].double().numpy()
            boxes = transform_boxes(batch.gt_boxes[b].double().numpy().reshape(-1, 9), np.linalg.inv(bev))
            boxes[:, :2] += rng.normal(0, self.xy_sigma, (len(boxes), 2))
            if self.yaw_sigma:
                boxes[:, 6] += rng.normal(0, self.yaw_sigma, len(boxes))
            labels, attrs = batch.gt_labels[b].numpy(), batch.gt_attrs[b].numpy()
            if self.false_positive:
                fp = np.array([[rng.uniform(-30, 30), rng.uniform(-30, 30), 0.0, 4.5, 2.0, 1.6, 0.0, 0.0, 0.0]])
                boxes = np.concatenate([boxes, fp])
                labels, attrs = np.concatenate([labels, [0]]), np.concatenate([attrs, [-1]])
            out.append({"boxes": boxes, "scores": rng.random(len(boxes)), "labels": labels, "attrs": attrs})
        return out
