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
``OUT/shards/{mini_train,mini_val}`` are made when missing, so a ``make demo`` output directory is reused as is).

Printed: NDS, mAP, mATE, mAOE of every run; mean +- std (over seeds) per variant; the paired
differences (same seed) ``pers_bev - bev_only`` (the paper reports +2.5 to +3.2 NDS) and
``pers_bev - pers_bev_1stage`` and ``pers_bev - pers_bev_refonly`` with their mean +- std and min..max. Everything goes to
``OUT/ablation/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train import workflow
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


@dataclass
class RunPlan:
    """One training + evaluation: ``variant`` at ``seed``, everything under ``dir``."""

    variant: str
    seed: int
    dir: Path
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.variant}_seed{self.seed}"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "eval" / "metrics_summary.json"


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
    return [RunPlan(v, s, root / f"{v}_seed{s}", (*VARIANTS[v], *args.overrides))
            for s in args.seeds for v in args.variants]


def train_command(args: argparse.Namespace, plan: RunPlan, train_shards: Path) -> list:
    """The demo's training launch for ``plan``: its seed and the variant's overrides on top."""
    return workflow.train_command(args.config, plan.dir, train_shards, args.steps, args.nproc, f"seed={plan.seed}",
                                  *plan.overrides)


def eval_args(plan: RunPlan, checkpoint: Path, val_shards: Path) -> list[str]:
    """``python -m eval`` arguments (besides ``--out``) scoring ``plan``'s final checkpoint."""
    return ["--shards", str(val_shards), "--checkpoint", str(checkpoint), "--pictures", "0", "--curves", "none"]


DEMO_SHARD_MB = workflow.SHARD_MB


def prepare_data(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    """``OUT/world`` and ``OUT/shards/{split}`` made (or reused) by the demo's own stages, with the shard
    size lowered for small worlds (``shard_size_mb``)."""
    world = out / "world"
    workflow.make_world(world, args.frames_per_scene, args.image_size, args.world_seed)
    shards = workflow.make_shards(world, out / "shards", shard_size_mb(world, args.nproc))
    n = json.loads((shards["mini_train"] / "manifest.json").read_text())["num_shards"]
    if n < args.nproc:
        sys.exit(f"ablation: {shards['mini_train']} holds {n} shard(s), fewer than --nproc {args.nproc} ranks "
                 "(each needs one): rebuild it with a smaller --max-shard-mb or lower --nproc")
    return shards


def read_metrics(path: Path) -> dict[str, float]:
    """``metrics_summary.json`` -> ``{NDS, mAP, mATE, mAOE}`` (+ the sample count)."""
    m = json.loads(path.read_text())
    out: dict[str, float] = {}
    for col, key in METRICS:
        src = m if key in m else m.get("tp_errors", {})
        if key not in src:
            raise KeyError(f"{path}: no '{key}' (top level or under 'tp_errors')")
        out[col] = float(src[key])
    out["num_samples"] = float(m.get("num_samples", float("nan")))
    return out


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample std (ddof 1; NaN for one value), min, max and n of ``values``."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else float("nan"),
            "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-variant mean/std over seeds and paired (same-seed) differences of every metric.

    ``runs``: run name -> ``{variant, seed, metrics: {NDS, mAP, mATE, mAOE}}`` (finished runs only).
    """
    cols = [c for c, _ in METRICS]
    by_variant: dict[str, dict[int, dict[str, float]]] = {}
    for r in runs.values():
        by_variant.setdefault(r["variant"], {})[r["seed"]] = r["metrics"]
    variants = {v: {c: mean_std([m[c] for m in per_seed.values()]) for c in cols}
                for v, per_seed in by_variant.items()}
    pairs = {}
    for a, b in PAIRS:
        seeds = sorted(set(by_variant.get(a, {})) & set(by_variant.get(b, {})))
        if not seeds:
            continue
        per_seed = {s: {c: by_variant[a][s][c] - by_variant[b][s][c] for c in cols} for s in seeds}
        pairs[f"{a} - {b}"] = {"seeds": seeds, "per_seed": per_seed,
                               **{c: mean_std([d[c] for d in per_seed.values()]) for c in cols}}
    return {"variants": variants, "pairs": pairs}


def _fmt(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def _pm(s: dict[str, float], signed: bool = False) -> str:
    std = "n/a" if not math.isfinite(s["std"]) else f"{s['std']:.4f}"
    return f"{_fmt(s['mean'], signed)} ± {std}"


def print_tables(runs: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
    cols = [c for c, _ in METRICS]
    print(f"\n{'run':<26}" + "".join(f"{c:>9}" for c in cols) + f"{'train s':>9}{'eval s':>8}")
    for name, r in runs.items():
        m = r["metrics"]
        print(f"{name:<26}" + "".join(f"{_fmt(m[c]):>9}" for c in cols)
              + f"{_secs(r.get('train_s')):>9}{_secs(r.get('eval_s')):>8}")
    print(f"\n{'variant (mean ± std over seeds)':<34}{'n':>3}" + "".join(f"{c:>19}" for c in cols))
    for v, s in summary["variants"].items():
        print(f"{v:<34}{s[cols[0]]['n']:>3}" + "".join(f"{_pm(s[c]):>19}" for c in cols))
    print("\npaired difference (same seed; NDS/mAP: higher is better, mATE/mAOE: lower is better)")
    print(f"{'a - b':<34}{'n':>3}" + "".join(f"{c:>19}" for c in cols))
    for k, d in summary["pairs"].items():
        print(f"{k:<34}{d[cols[0]]['n']:>3}" + "".join(f"{_pm(d[c], signed=True):>19}" for c in cols))
        print(f"{'  min..max':<37}" + "".join(
            f"{_fmt(d[c]['min'], True) + '..' + _fmt(d[c]['max'], True):>19}" for c in cols))
    print("(the paper, full nuScenes, R50: perspective + BEV over BEV only = +2.5 to +3.2 NDS)")


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
    results_path = out / "ablation" / "results.json"
    runs: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for k, p in enumerate(plan, 1):
        print(f"\n--- run {k}/{len(plan)}: {p.name} ({VARIANT_TEXT[p.variant]}), seed {p.seed}", flush=True)
        rec: dict[str, Any] = {"variant": p.variant, "seed": p.seed, "dir": str(p.dir), "overrides": list(p.overrides)}
        if p.metrics_path.is_file():
            done_ckpt = Path(str(json.loads(p.metrics_path.read_text()).get("checkpoint", ""))).name
            if done_ckpt != f"step_{args.steps:08d}":
                sys.exit(f"ablation: {p.metrics_path} scores checkpoint {done_ckpt!r}, not the --steps {args.steps} "
                         f"one: use another --out, or delete {p.dir}")
            print(f"  reusing {p.metrics_path}", flush=True)
            if (p.dir / "timing.json").is_file():
                rec.update(json.loads((p.dir / "timing.json").read_text()))
        else:
            final = workflow.final_checkpoint(p.dir, args.steps)
            t = time.time()
            if not (final / "complete").is_file():
                rc = workflow.run(train_command(args, p, shards["mini_train"]), check=False)
                if rc != 0 or not (final / "complete").is_file():
                    print(f"  FAILED: training of {p.name} (exit {rc}; no complete {final})", flush=True)
                    failed.append(p.name)
                    continue
                rec["train_s"] = time.time() - t
            t = time.time()
            if workflow.evaluate(p.dir / "eval", *eval_args(p, final, shards["mini_val"]), check=False) is None:
                print(f"  FAILED: evaluation of {p.name}", flush=True)
                failed.append(p.name)
                continue
            rec["eval_s"] = time.time() - t
            (p.dir / "timing.json").write_text(json.dumps({k2: rec[k2] for k2 in ("train_s", "eval_s") if k2 in rec}) + "\n")
        rec["metrics"] = read_metrics(p.metrics_path)
        runs[p.name] = rec

    workflow.header(3, 3, "results")
    summary = summarize(runs)
    results = {"steps": args.steps, "seeds": args.seeds, "variants": args.variants, "nproc": args.nproc,
               "config": args.config, "extra_overrides": args.overrides, "world": str(out / "world"),
               "shards": {k: str(v) for k, v in shards.items()}, "runs": runs, "summary": summary,
               "failed": failed, "wall_s": time.time() - t0}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    print_tables(runs, summary)
    print(f"\nwrote {results_path}; ablation finished in {time.time() - t0:.0f} s")
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
