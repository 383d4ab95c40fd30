"""``python -m eval.curve``: the learning curve of a training run, one evaluation per checkpoint.

    python -m eval.curve --run RUN_DIR --shards VAL [--out DIR] [--every N] [--max-samples N]
                         [--baseline NAME=path/metrics_summary.json ...]

Every complete checkpoint of ``RUN_DIR/checkpoints`` (``shards.contracts.checkpoint.list_complete``) is scored by
``eval.api.evaluate_checkpoint`` (in this process) into ``OUT/step_XXXXXXXX/``; a checkpoint whose complete
``metrics_summary.json`` is already there (for the same shards and sample count) is not run again, so an
interrupted curve resumes where it stopped. The rows go to ``OUT/curve.json`` and a picture of mAP, car
AP and NDS against the step to ``OUT/curve.png``; each ``--baseline`` (an earlier eval's summary, e.g. the
untrained model or the constant-boxes baseline) is drawn as a dashed line.

Exit status: 0 every checkpoint scored; 2 bad input (no complete checkpoint, a bad ``--baseline``) or an
evaluation that failed (its exit status and output directory are printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from shards.contracts.checkpoint import list_complete

EXIT_OK, EXIT_INPUT = 0, 2


@dataclass
class CurvePoint:
    """One checkpoint's scores (the summary's ``mean_ap``, ``nd_score`` and car AP)."""

    step: int
    mAP: float
    NDS: float
    car_AP: float
    summary: str
    """Path of the full ``metrics_summary.json``."""


class CurveInputError(ValueError):
    pass


def parse_baseline(spec: str) -> tuple[str, dict]:
    """``NAME=path/metrics_summary.json`` -> (name, summary); errors name the spec at fault."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise CurveInputError(f"--baseline {spec!r}: expected NAME=path/metrics_summary.json")
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CurveInputError(f"--baseline {spec!r}: cannot read {path}: {e}") from e
    if not {"mean_ap", "nd_score"} <= set(summary) or "car" not in summary.get("mean_dist_aps", {}):
        raise CurveInputError(f"--baseline {spec!r}: {path} is not an eval summary "
                              "(needs mean_ap, nd_score and mean_dist_aps.car)")
    return name, summary


def read_summary(path: Path) -> dict | None:
    """An eval's ``metrics_summary.json``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def point_from_summary(step: int, s: dict, path: Path) -> CurvePoint:
    return CurvePoint(step=step, mAP=float(s["mean_ap"]), NDS=float(s["nd_score"]),
                      car_AP=float(s["mean_dist_aps"]["car"]), summary=str(path))


def _reusable(s: dict | None, shards: str, num_samples: int) -> bool:
    """An earlier evaluation of this checkpoint that scored ``num_samples`` samples of the same shards."""
    return (s is not None and s.get("complete") is True and s.get("shards") == shards
            and s.get("num_samples_expected") == num_samples and s.get("stage", "final") == "final")


def select_checkpoints(run_dir: Path, every: int) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, keeping steps that are multiples of ``every`` (and the last)."""
    found = list_complete(run_dir)
    if not found:
        raise CurveInputError(f"--run {run_dir}: no complete checkpoint under {run_dir / 'checkpoints'}")
    if every > 1:
        found = [c for c in found if c[0] % every == 0 or c is found[-1]]
    return found


def render(points: list[CurvePoint], baselines: dict[str, dict], path: Path, title: str) -> Path:
    """mAP and car AP (left), NDS (right) against the step; baselines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p.step for p in points]
    fig, (ax_ap, ax_nds) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_ap.plot(steps, [p.mAP for p in points], "o-", color="tab:blue", label="mAP")
    ax_ap.plot(steps, [p.car_AP for p in points], "s-", color="tab:orange", label="car AP")
    ax_nds.plot(steps, [p.NDS for p in points], "o-", color="tab:green", label="NDS")
    styles = ("--", ":", "-.")
    for i, (name, s) in enumerate(baselines.items()):
        ls = styles[i % len(styles)]
        ax_ap.axhline(float(s["mean_ap"]), color="gray", ls=ls, lw=1, label=f"{name} mAP")
        ax_nds.axhline(float(s["nd_score"]), color="gray", ls=ls, lw=1, label=f"{name} NDS")
    for ax, what in ((ax_ap, "AP"), (ax_nds, "NDS")):
        ax.set_xlabel("training step")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_rows(points: list[CurvePoint]) -> str:
    lines = [f"{'step':>10} {'mAP':>8} {'NDS':>8} {'car AP':>8}"]
    lines += [f"{p.step:>10d} {p.mAP:>8.4f} {p.NDS:>8.4f} {p.car_AP:>8.4f}" for p in points]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m eval.curve", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--run", required=True, help="training run directory (the one holding checkpoints/)")
    ap.add_argument("--shards", required=True, help="validation shards, as for python -m eval")
    ap.add_argument("--out", default=None, help="output directory (default: RUN/curve)")
    ap.add_argument("--every", type=int, default=1, help="score only checkpoints whose step is a multiple of N "
                                                         "(and the last one)")
    ap.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N samples")
    ap.add_argument("--num-workers", type=int, default=1, help="loader worker processes of each evaluation")
    ap.add_argument("--device", default="auto", help="model (and batch) device of each evaluation, as for python -m eval")
    ap.add_argument("--s3-endpoint-url", default=None, help="S3 endpoint (e.g. MinIO / moto), as for python -m eval")
    ap.add_argument("--baseline", action="append", default=[], metavar="NAME=SUMMARY",
                    help="an earlier eval's metrics_summary.json, drawn as a dashed line (repeatable)")
    ap.add_argument("--title", default=None, help="picture title (default: the run directory)")
    args = ap.parse_args(argv)
    if args.every < 1:
        ap.error(f"--every must be >= 1, got {args.every}")
    if args.max_samples is not None and args.max_samples < 1:
        ap.error(f"--max-samples must be >= 1, got {args.max_samples}")
    return args


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from eval.api import EvalInputError, evaluate_checkpoint, load_shard_ground_truth
    from pipeline.urls import IOOptions

    run_dir = Path(args.run)
    out = Path(args.out) if args.out else run_dir / "curve"
    baselines = dict(parse_baseline(b) for b in args.baseline)
    checkpoints = select_checkpoints(run_dir, args.every)
    try:
        gt, _ = load_shard_ground_truth(args.shards, IOOptions(s3_endpoint_url=args.s3_endpoint_url))
    except EvalInputError as e:
        raise CurveInputError(str(e)) from e
    num_samples = len(gt.order[: args.max_samples] if args.max_samples else gt.order)
    points: list[CurvePoint] = []
    bar = tqdm(checkpoints, desc="curve", unit="ckpt")
    for step, ckpt in bar:
        step_out = out / ckpt.name
        summary = step_out / "metrics_summary.json"
        found = read_summary(summary)
        if not _reusable(found, args.shards, num_samples):
            bar.set_postfix_str(f"evaluating step {step}")
            try:
                res = evaluate_checkpoint(ckpt, args.shards, out=step_out, pictures=0, curves="none", progress=False,
                                          num_workers=args.num_workers, device=args.device,
                                          max_samples=args.max_samples, s3_endpoint_url=args.s3_endpoint_url)
                code, why = res.exit_code, res.message
            except EvalInputError as e:
                code, why = 2, str(e)
            found = res.summary if code == 0 else None
            if found is None:
                print(f"error: evaluating {ckpt} failed (exit {code}: {why}); output under {step_out}",
                      file=sys.stderr)
                return EXIT_INPUT
        points.append(point_from_summary(step, found, summary))
    out.mkdir(parents=True, exist_ok=True)
    record = {"run": str(run_dir), "shards": args.shards, "points": [asdict(p) for p in points],
              "baselines": {k: {"mAP": v["mean_ap"], "NDS": v["nd_score"]} for k, v in baselines.items()}}
    (out / "curve.json").write_text(json.dumps(record, indent=2))
    picture = render(points, baselines, out / "curve.png", args.title or f"learning curve: {run_dir}")
    print(format_rows(points))
    for name, s in baselines.items():
        print(f"{name:>10} {float(s['mean_ap']):>8.4f} {float(s['nd_score']):>8.4f} "
              f"{float(s['mean_dist_aps']['car']):>8.4f}")
    print(f"wrote {out / 'curve.json'} and {picture}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except CurveInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
