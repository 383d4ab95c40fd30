"""The paper's perspective-supervision ablation (BEVFormer v2, table 3) at small scale, on the synthetic world.

    python benchmarks/ablation_perspective.py --out demo_out                     # 3 seeds x 4 variants
    python benchmarks/ablation_perspective.py --out /tmp/abl --steps 2 --seeds 0 --frames-per-scene 6

The ``tiny`` preset is trained with the same config (``--config``, default ``configs/demo.yaml``),
budget (``--steps``) and data in each variant, for each seed of ``--seeds``:

* ``bev_only``         ``model.lambda_pers=0`` -> no perspective head, hence no hybrid queries (the resolved
                       config says ``head.hybrid: none``);
* ``pers_bev``         perspective + BEV, two-stage: hybrid queries from perspective proposals (the preset's
                       ``head.hybrid``; ``anchor`` for ``tiny``);
* ``pers_bev_1stage``  perspective + BEV, one-stage: ``model.head.hybrid=none`` (learned queries only);
* ``pers_bev_refonly`` perspective + BEV, two-stage with the paper's hybrid queries, which take only their
                       proposal's centre (``model.head.hybrid=centre``).

Each run trains with ``torch.distributed.run ... -m train`` (DeepSpeed, ``--nproc`` CPU ranks) into
``OUT/ablation/{variant}_seed{s}/`` and is scored on the val shards with ``python -m eval`` (its
``eval/metrics_summary.json``). A run whose ``metrics_summary.json`` exists is reused; an interrupted
training resumes from its newest complete checkpoint. The world, the shards, the training launch and the
evaluation are the stages of ``train.workflow`` that ``scripts/demo.py`` also runs (``OUT/world`` /
``OUT/shards/{mini_train,mini_val}`` are made when missing, so a ``make demo`` output directory is reused as is);
the run loop and the statistics are ``train.ablation``'s.

Printed: NDS, mAP, mATE, mAOE of every run; mean +- std (over seeds) per variant; the paired
differences (same seed) ``pers_bev - bev_only`` (the paper reports +2.5 to +3.2 NDS) and
``pers_bev - pers_bev_1stage`` and ``pers_bev - pers_bev_refonly`` with their mean +- std and min..max. Everything goes to
``OUT/ablation/results.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train import workflow
from train.ablation import RunPlan, add_run_args, check_train_shards, execute, parse_run_args
from train.workflow import shard_size_mb

VARIANTS: dict[str, tuple[str, ...]] = {
    "bev_only": ("model.lambda_pers=0.0",),
    "pers_bev": (),
    "pers_bev_1stage": ("model.head.hybrid=none",),
    "pers_bev_refonly": ("model.head.hybrid=centre",),
}
"""Variant name -> training-config overrides (on top of ``--config``) that make it."""

VARIANT_TEXT = {
    "bev_only": "BEV only (lambda_pers = 0)",
    "pers_bev": "perspective + BEV, two-stage",
    "pers_bev_1stage": "perspective + BEV, one-stage",
    "pers_bev_refonly": "perspective + BEV, two-stage, hybrid queries from proposal centres only",
}

PAIRS: tuple[tuple[str, str], ...] = (("pers_bev", "bev_only"), ("pers_bev", "pers_bev_1stage"),
                                      ("pers_bev", "pers_bev_refonly"))
"""Paired differences ``a - b`` reported (same seed, same data, same budget)."""

METRICS: tuple[tuple[str, str], ...] = (("NDS", "nd_score"), ("mAP", "mean_ap"), ("mATE", "trans_err"),
                                         ("mAOE", "orient_err"))
"""Column name -> key in ``metrics_summary.json`` (top level, or under ``tp_errors``)."""
COLUMNS = tuple(c for c, _ in METRICS)
NOTE = "(the paper, full nuScenes, R50: perspective + BEV over BEV only = +2.5 to +3.2 NDS)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap, runs_dir="ablation", steps=600, frames_per_scene=40, variants=list(VARIANTS))
    ap.add_argument("--config", default="configs/demo.yaml", help="training config shared by every variant")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra training-config override applied to every variant (repeatable)")
    return parse_run_args(ap, argv)


def build_plan(args: argparse.Namespace, out: Path) -> list[RunPlan]:
    """Every (seed, variant) run, seed-major so the paired runs of a seed finish together."""
    root = out / "ablation"
    return [RunPlan(v, s, root / f"{v}_seed{s}", args.config, (*VARIANTS[v], *args.overrides))
            for s in args.seeds for v in args.variants]


DEMO_SHARD_MB = workflow.SHARD_MB


def prepare_data(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    """``OUT/world`` and ``OUT/shards/{split}`` made (or reused) by the demo's own stages, with the shard
    size lowered for small worlds (``shard_size_mb``)."""
    world = out / "world"
    workflow.make_world(world, args.frames_per_scene, args.image_size, args.world_seed)
    shards = workflow.make_shards(world, out / "shards", shard_size_mb(world, args.nproc))
    check_train_shards(shards["mini_train"], args.nproc, "ablation")
    return shards


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return execute(args, "synthetic world and shards (reused when present)", lambda out: prepare_data(args, out),
                   lambda out: build_plan(args, out), runs_dir="ablation",
                   info={"config": args.config, "extra_overrides": args.overrides}, metrics=METRICS, columns=COLUMNS,
                   pairs=PAIRS, describe=VARIANT_TEXT, note=NOTE, tool="ablation")


if __name__ == "__main__":
    sys.exit(main())
