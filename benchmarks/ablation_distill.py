"""BEVDistill's ablation at small scale on the synthetic world: the student alone, + each term, all terms.

    python benchmarks/ablation_distill.py --out demo_out                       # teacher once, 3 seeds x 6 variants
    python benchmarks/ablation_distill.py --out /tmp/abl --steps 2 --teacher-steps 2 --seeds 0 --variants student all

The whole plan is 18 student trainings and a teacher: about 3.5 hours on 2 CPU cores at ``--steps 200``
(results in ``docs/experiments.md``); ``tests/test_ablation_distill.py`` checks the plan. Steps:

1. the world and its shards, built **with LiDAR** (``python -m shards build --lidar``) under ``OUT/shards_lidar``;
2. the teacher: ``python -m train --config configs/lidar_tiny.yaml`` for ``--teacher-steps`` into
   ``OUT/ablation_distill/teacher`` (scored by ``python -m eval``, which streams points for it);
3. per seed and variant: ``python -m train --config configs/distill_tiny.yaml model.teacher.checkpoint=...``
   with the variant's switches, same data and budget (``--steps``), then ``python -m eval`` on the student.

Variants (``model.distill.*`` switches): ``student`` (all off: no teacher run), ``dense``, ``instance``, ``box``,
``heatmap`` (each alone), ``all``. Printed: NDS, mAP, mATE, mAOE, mAVE per run, mean +- std per variant, and
the paired (same seed) differences ``variant - student`` (the paper's claim to test: the gain comes mostly from
mATE, mAOE and mAVE). Everything goes to ``OUT/ablation_distill/results.json``; finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from train.ablation import print_tables, read_metrics, summarize

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TERMS = ("dense", "instance", "box", "heatmap")
VARIANTS: dict[str, tuple[str, ...]] = {
    "student": tuple(f"model.distill.{t}=false" for t in TERMS),
    **{t: tuple(f"model.distill.{u}={'true' if u == t else 'false'}" for u in TERMS) for t in TERMS},
    "all": tuple(f"model.distill.{t}=true" for t in TERMS),
}
"""Variant -> training-config overrides on top of ``configs/distill_tiny.yaml``."""
METRICS = (("NDS", "nd_score"), ("mAP", "mean_ap"), ("mATE", "trans_err"), ("mAOE", "orient_err"),
           ("mAVE", "vel_err"))
COLUMNS = tuple(c for c, _ in METRICS)
PAIRS = tuple((v, "student") for v in VARIANTS if v != "student")
"""Paired (same seed) differences ``variant - student``."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "demo_out")
    ap.add_argument("--steps", type=int, default=600, help="student budget (optimizer steps), every variant")
    ap.add_argument("--teacher-steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--frames-per-scene", type=int, default=40)
    ap.add_argument("--image-size", default="640x360")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.teacher_steps < 1 or args.nproc < 1:
        ap.error("--steps, --teacher-steps and --nproc must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds has duplicates: {args.seeds}")
    return args


def train_command(config: str, run_dir: Path, shards: Path, steps: int, nproc: int, *over: str) -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "train",
            "--config", config, f"out_dir={run_dir}", f"data.shards={shards}", f"schedule.total_steps={steps}",
            "checkpoint.every_steps=0", *over, "--resume", "auto"]


def student_commands(args: argparse.Namespace, root: Path, shards: Path, teacher_ckpt: Path) -> list[dict[str, Any]]:
    """Every (seed, variant) run, seed-major: ``{variant, seed, dir, train}``."""
    return [{"variant": v, "seed": s, "dir": root / f"{v}_seed{s}",
             "train": train_command("configs/distill_tiny.yaml", root / f"{v}_seed{s}", shards, args.steps, args.nproc,
                                    f"seed={s}", f"model.teacher.checkpoint={teacher_ckpt}", *VARIANTS[v],
                                    *args.overrides)}
            for s in args.seeds for v in args.variants]


def _run(cmd: list[str]) -> None:
    print("  $ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={"DS_ACCELERATOR": "cpu", **__import__("os").environ})


def _last_checkpoint(run_dir: Path) -> Path:
    from shards.contracts.checkpoint import list_complete

    done = list_complete(run_dir)
    if not done:
        sys.exit(f"ablation_distill: no complete checkpoint under {run_dir}")
    return done[-1][1]


def _evaluate(run_dir: Path, val: Path) -> dict[str, float]:
    out = run_dir / "eval"
    if not (out / "metrics_summary.json").is_file():
        _run([PY, "-m", "eval", "--shards", str(val), "--checkpoint", str(_last_checkpoint(run_dir)), "--out", str(out),
              "--pictures", "0", "--curves", "none"])
    return read_metrics(out / "metrics_summary.json", METRICS)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out
    world, shards = out / "world", out / "shards_lidar"
    if not (world / ".complete").is_file():
        _run([PY, "-m", "shards", "synth", "--out", str(world), "--version", "v1.0-mini", "--frames-per-scene",
              str(args.frames_per_scene), "--image-size", args.image_size, "--seed", "0"])
        (world / ".complete").write_text("ok\n")
    for split in ("mini_train", "mini_val"):
        if not (shards / split / "manifest.json").is_file():
            _run([PY, "-m", "shards", "build", "--dataroot", str(world), "--version", "v1.0-mini", "--split", split,
                  "--out", str(shards / split), "--clip-frames", "8", "--lidar"])
    root = out / "ablation_distill"
    teacher = root / "teacher"
    _run(train_command("configs/lidar_tiny.yaml", teacher, shards / "mini_train", args.teacher_steps, args.nproc))
    results: dict[str, Any] = {"teacher": _evaluate(teacher, shards / "mini_val"), "runs": []}
    for r in student_commands(args, root, shards / "mini_train", _last_checkpoint(teacher)):
        _run(r["train"])
        results["runs"].append({"variant": r["variant"], "seed": r["seed"],
                                "metrics": _evaluate(r["dir"], shards / "mini_val")})
        print(f"{r['variant']:>9} seed {r['seed']}: " + "  ".join(f"{k} {v:.4f}" for k, v in results["runs"][-1]["metrics"].items()))
    results["summary"] = summarize(results["runs"], PAIRS, COLUMNS)
    print("teacher: " + "  ".join(f"{k} {v:.4f}" for k, v in results["teacher"].items()))
    print_tables({f"{r['variant']}_seed{r['seed']}": r for r in results["runs"]}, results["summary"], COLUMNS)
    (root / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
