"""BEVNeXt tiny against BEVFormer v2 tiny, its CRF ablation and its two-stage training, at small scale on the
synthetic world (issue 17's "Measured").

    python benchmarks/ablation_bevnext.py --out demo_out                   # 3 seeds x 6 variants, 200 steps each
    python benchmarks/ablation_bevnext.py --out /tmp/abl --steps 2 --seeds 0 --variants bevnext bevnext_s2

Every run trains with the same data (``OUT/shards_lidar/mini_train``), budget (``--steps`` optimizer steps) and
seed, on ``--nproc`` DeepSpeed CPU ranks, into ``OUT/ablation_bevnext/{variant}_seed{s}/``:

* ``bevformer_v2``       ``configs/demo.yaml`` (the ``tiny`` preset, single frame), scored with ``weights_fp32.pt``
                         (EMA is off in that config);
* ``bevnext``            ``configs/bevnext_tiny_stage1.yaml`` (single frame; the faithful CRF, the preset's default),
                         scored with the EMA weights ``weights_ema_fp32.pt`` (as the paper evaluates);
* ``bevnext_crf_off``    the same, ``model.depth.crf=off`` (plain softmax depth);
* ``bevnext_crf_active`` the same, ``model.depth.crf=active`` (the colour term made active: zeta on 0-1 colours);
* ``bevnext_s1_cont``    stage 1 continued: the stage-1 config initialised from ``bevnext_seed{s}``'s final EMA
                         weights (``init.from_checkpoint``, nothing dropped), ``--steps`` more steps;
* ``bevnext_s2``         stage 2: ``configs/bevnext_tiny_stage2.yaml`` (4 frames, Res2Fusion) from the same weights,
                         with its ``init.drop`` (BEV encoder and heads; ``bev_model.bevnext.model.STAGE2_DROP``),
                         ``--steps`` steps. With ``bevnext_s1_cont`` it is stage-1-only vs two-stage at the same
                         total budget; both run after ``bevnext`` of their seed (and fail when it failed).

The data: ``OUT/world`` synthesised with LiDAR and ``OUT/shards_lidar/{mini_train,mini_val}`` built with
``--lidar`` (BEVNeXt's depth supervision projects the points); both are reused when their ``manifest.json`` exists.
Each run is scored on ``mini_val`` with ``python -m eval`` (its ``eval/metrics_summary.json``); a scored run is
reused, an interrupted training resumes (``--resume auto``). The run loop and the statistics are
``train.ablation``'s (shared with ``benchmarks/ablation_perspective.py``).

Printed: NDS, mAP, mATE, mAOE, mAVE and ``step s`` of every run, the mean wall seconds per optimizer step after
start-up (``train.ablation.step_time``: from the trainer's ``logs/train.jsonl``, intervals with a checkpoint save
or a resume left out; BEVNeXt's includes its EMA update, which BEVFormer v2's config does not run), and for BEVNeXt
runs four probes that move before mAP does: ``obj miss``, the fraction of stride-8 patches with LiDAR on GT
objects whose arg-max depth bin is more than one bin off (``eval.depth``, 20 unaugmented ``mini_val`` samples; what the
CRF is meant to improve), and at the GT centre cells (``eval.centres``, every ``mini_val`` sample streamed as eval
does): ``ctr miss`` (1 - heatmap recall), ``ctr vel`` (m/s, what the history of stage 2 should improve) and ``ctr yaw``
(rad); mean +- std
per variant; the paired (same seed) differences ``bevnext - bevformer_v2``, ``bevnext - bevnext_crf_off``,
``bevnext_crf_active - bevnext_crf_off`` and ``bevnext_s2 - bevnext_s1_cont``. Everything goes to
``OUT/ablation_bevnext/results.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from eval.centres import centre_quality
from eval.depth import DepthRow, depth_quality, overall
from eval.inference import eval_loader_config, load_model
from pipeline.loader import build_loader
from shards.contracts.checkpoint import EMA_WEIGHTS, WEIGHTS
from train import workflow
from train.ablation import RunPlan, add_run_args, check_train_shards, execute, parse_run_args, step_time
from train.workflow import SPLITS

TOOL = "ablation_bevnext"
STAGE1 = "configs/bevnext_tiny_stage1.yaml"
STAGE2 = "configs/bevnext_tiny_stage2.yaml"
BEVFORMER = "configs/demo.yaml"


@dataclass(frozen=True)
class Variant:
    """A row of the ablation: training ``config`` + ``overrides``, the ``weights`` eval scores, and ``starts_from``:
    the variant (same seed) whose final EMA weights initialise this one (``init.from_checkpoint``)."""

    text: str
    config: str
    overrides: tuple[str, ...] = ()
    weights: str = EMA_WEIGHTS
    starts_from: str | None = None


VARIANTS: dict[str, Variant] = {
    "bevnext": Variant("BEVNeXt tiny, stage 1, faithful CRF", STAGE1),
    "bevformer_v2": Variant("BEVFormer v2 tiny, single frame", BEVFORMER, weights=WEIGHTS),
    "bevnext_crf_off": Variant("BEVNeXt tiny, stage 1, no CRF", STAGE1, ("model.depth.crf=off",)),
    "bevnext_crf_active": Variant("BEVNeXt tiny, stage 1, CRF with an active colour term", STAGE1,
                                  ("model.depth.crf=active",)),
    "bevnext_s1_cont": Variant("BEVNeXt tiny, stage 1 continued from bevnext", STAGE1, ("init.drop=[]",),
                               starts_from="bevnext"),
    "bevnext_s2": Variant("BEVNeXt tiny, stage 2 (4 frames, Res2Fusion) from bevnext", STAGE2, starts_from="bevnext"),
}
"""Variant name -> how it is trained and scored (plan order within a seed)."""

PAIRS: tuple[tuple[str, str], ...] = (("bevnext", "bevformer_v2"), ("bevnext", "bevnext_crf_off"),
                                      ("bevnext_crf_active", "bevnext_crf_off"), ("bevnext_s2", "bevnext_s1_cont"))
"""Paired differences ``a - b`` reported (same seed, same data, same budget)."""

METRICS: tuple[tuple[str, str], ...] = (("NDS", "nd_score"), ("mAP", "mean_ap"), ("mATE", "trans_err"),
                                         ("mAOE", "orient_err"), ("mAVE", "vel_err"))
"""Column name -> key in ``metrics_summary.json`` (top level, or under ``tp_errors``)."""
STEP_S = "step s"
DEPTH_COLUMNS = {"obj miss": "on objects"}
"""Depth column -> ``eval.depth`` group: the fraction of the group's stride-8 patches (LiDAR in them) whose arg-max
depth bin is more than one bin from the LiDAR bin, on ``mini_val`` without augmentation."""
DEPTH_SAMPLES, DEPTH_EVERY = 20, 3
"""The depth column scores every ``DEPTH_EVERY``-th ``mini_val`` sample, ``DEPTH_SAMPLES`` of them."""
CENTRE_COLUMNS = {"ctr miss": "recall", "ctr vel": "vel_err", "ctr yaw": "yaw_err"}
"""Centre columns -> ``eval.centres.CentreStats`` field (``ctr miss`` is 1 - recall), on every ``mini_val`` sample in
scene order, streamed as eval does (a temporal model with its history)."""
COLUMNS = (*(c for c, _ in METRICS), STEP_S, *DEPTH_COLUMNS, *CENTRE_COLUMNS)
NOTE = ("(step s: mean wall seconds per optimizer step after start-up, from logs/train.jsonl; the paper, R50 "
        "256x704 val: BEVNeXt 56.0 NDS / 45.6 mAP)")


def _cached(p: RunPlan, name: str, weights: Path, settings: list, compute):
    """``compute()`` (a JSON-able value), kept in ``RUN/eval/{name}.json`` and reused while it names the same weights
    and settings."""
    cache = p.dir / "eval" / f"{name}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("checkpoint") == str(weights) and saved.get("settings") == settings:
            return saved["value"]
    print(f"  {name.replace('_', ' ')} of {weights}", flush=True)
    value = compute()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"checkpoint": str(weights), "settings": settings, "value": value}, indent=1) + "\n")
    return value


def probe_columns(p: RunPlan, val_shards: Path, steps: int) -> dict[str, float]:
    """The :data:`DEPTH_COLUMNS` and :data:`CENTRE_COLUMNS` of a BEVNeXt run (NaN for BEVFormer v2, which has neither
    depth nor a dense head), from the weights eval scores; each kept in ``RUN/eval/`` (see :func:`_cached`)."""
    if VARIANTS[p.variant].config == BEVFORMER:
        return {c: math.nan for c in (*DEPTH_COLUMNS, *CENTRE_COLUMNS)}
    weights = p.eval_checkpoint(steps)

    @functools.cache
    def model_and_config():
        return load_model(weights)  # (model in eval mode, run config): loaded once, only when a probe runs

    def batches(load_points: bool):
        model, run_cfg = model_and_config()
        data = eval_loader_config(str(val_shards), run_cfg.get("data"), num_workers=0,
                                  overrides={"load_points": load_points})
        return model, build_loader(data)

    def depth():
        model, loader = batches(load_points=True)
        return [r.to_dict() for r in depth_quality(model, islice(loader, 0, None, DEPTH_EVERY), DEPTH_SAMPLES)]

    def centres():
        return centre_quality(*batches(load_points=False)).to_dict()

    rows = overall([DepthRow(**r) for r in _cached(p, "depth_quality", weights, [DEPTH_SAMPLES, DEPTH_EVERY], depth)])
    ctr = _cached(p, "centre_quality", weights, ["all"], centres)
    out = {c: 1.0 - rows[g].within_1 if g in rows else math.nan for c, g in DEPTH_COLUMNS.items()}
    out.update({c: 1.0 - ctr[f] if f == "recall" else ctr[f] for c, f in CENTRE_COLUMNS.items()})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap, runs_dir=TOOL, steps=200, frames_per_scene=30, variants=list(VARIANTS))
    ap.add_argument("--max-shard-mb", type=float, default=2.0, help="only used when the shards are built")
    args = parse_run_args(ap, argv)
    args.variants = [v for v in VARIANTS if v in args.variants]  # the plan's order: a run after its start
    return args


def build_plan(args: argparse.Namespace, out: Path) -> list[RunPlan]:
    """Every (seed, variant) run, seed-major, variants in ``VARIANTS`` order (a run comes after the one it starts
    from)."""
    root = out / TOOL
    plan = []
    for s in args.seeds:
        for name in args.variants:
            v = VARIANTS[name]
            init: tuple[str, ...] = ()
            after = None
            if v.starts_from is not None:
                after = f"{v.starts_from}_seed{s}"
                start = workflow.final_checkpoint(root / after, args.steps) / EMA_WEIGHTS
                init = (f"init.from_checkpoint={start}",)
            plan.append(RunPlan(name, s, root / f"{name}_seed{s}", v.config, (*init, *v.overrides), v.weights, after))
    return plan


def prepare_data(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    """``OUT/shards_lidar/{split}`` (with LiDAR), reused when built, else made from ``OUT/world`` (synthesised with
    LiDAR when missing) by ``train.workflow``'s stages."""
    root = out / "shards_lidar"
    shards = {split: root / split for split in SPLITS}
    if all((d / "manifest.json").is_file() for d in shards.values()):
        print(f"  reusing {root}", flush=True)
    else:
        world = out / "world"
        workflow.make_world(world, args.frames_per_scene, args.image_size, args.world_seed, lidar=True)
        shards = workflow.make_shards(world, root, args.max_shard_mb, lidar=True)
    for d in shards.values():
        if not json.loads((d / "manifest.json").read_text())["settings"].get("lidar"):
            sys.exit(f"{TOOL}: {d} was built without --lidar (BEVNeXt's depth supervision needs the points)")
    check_train_shards(shards["mini_train"], args.nproc, TOOL)
    return shards


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return execute(args, "synthetic world and shards with LiDAR (reused when present)",
                   lambda out: prepare_data(args, out), lambda out: build_plan(args, out), runs_dir=TOOL,
                   info={"configs": {v: VARIANTS[v].config for v in args.variants}}, metrics=METRICS, columns=COLUMNS,
                   pairs=PAIRS, describe={k: v.text for k, v in VARIANTS.items()}, note=NOTE, tool=TOOL,
                   extra=lambda p: {STEP_S: step_time(p.dir),
                                    **probe_columns(p, args.out.resolve() / "shards_lidar" / "mini_val", args.steps)})


if __name__ == "__main__":
    sys.exit(main())
