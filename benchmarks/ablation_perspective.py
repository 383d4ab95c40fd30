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
import time
from pathlib import Path

from train import workflow
from train.ablation import RunPlan, check_train_shards, finish, run_plan, summarize
from train.workflow import ROOT, shard_size_mb

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
    ap.add_argument("--out", type=Path, default=ROOT / "demo_out",
                    help="world/shards dir (reused when present); runs go to OUT/ablation/")
    ap.add_argument("--steps", type=int, default=600, help="training budget in optimizer steps (every run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks (CPU processes) per training")
    ap.add_argument("--frames-per-scene", type=int, default=40, help="only used when the world is created")
    ap.add_argument("--image-size", default="640x360", help="only used when the world is created")
    ap.add_argument("--world-seed", type=int, default=0, help="only used when the world is created")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--config", default="configs/demo.yaml", help="training config shared by every variant")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra training-config override applied to every variant (repeatable)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.nproc < 1:
        ap.error("--nproc must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds has duplicates: {args.seeds}")
    args.variants = list(dict.fromkeys(args.variants))
    return args


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
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    workflow.header(1, 3, "synthetic world and shards (reused when present)")
    shards = prepare_data(args, out)

    plan = build_plan(args, out)
    workflow.header(2, 3, f"{len(plan)} runs: {len(args.variants)} variant(s) x {len(args.seeds)} seed(s), "
                      f"{args.steps} steps each, {args.nproc} rank(s)")
    runs, failed = run_plan(plan, steps=args.steps, nproc=args.nproc, train_shards=shards["mini_train"],
                            val_shards=shards["mini_val"], metrics=METRICS, describe=VARIANT_TEXT, tool="ablation")

    workflow.header(3, 3, "results")
    results = {"steps": args.steps, "seeds": args.seeds, "variants": args.variants, "nproc": args.nproc,
               "config": args.config, "extra_overrides": args.overrides, "world": str(out / "world"),
               "shards": {k: str(v) for k, v in shards.items()}, "runs": runs,
               "summary": summarize(runs, PAIRS, COLUMNS), "failed": failed}
    return finish(out / "ablation" / "results.json", results, COLUMNS, NOTE, t0, "ablation")


if __name__ == "__main__":
    sys.exit(main())
