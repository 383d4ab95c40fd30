"""``python -m eval``: streaming evaluation over shards with the official nuScenes metrics.

    python -m eval --shards URL|PATTERN|MANIFEST --checkpoint CKPT [--config CFG] [--out DIR]
                   [--max-samples N] [--predictions results.json] [--dataroot DIR] [--allow-partial]

Exit status: 0 scored every sample; 1 the stream ended early (the count scored is printed;
``--allow-partial`` scores what was read and exits 0); 2 bad input (shards, sidecars,
submission, checkpoint); 4 the devkit cross-check (``--dataroot``) disagrees.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from eval.gt import GroundTruth, GroundTruthError, load_ground_truth
from eval.inference import (
    STAGES,
    ModelPredictor,
    Predictor,
    StreamResult,
    eval_loader_config,
    load_model,
    pick_picture_tokens,
    stream_predictions,
    views_with_submission,
)
from eval.metrics import (
    compare_summaries,
    detection_config,
    devkit_cross_check,
    evaluate,
    format_table,
    write_summary,
)
from eval.submission import (
    SubmissionError,
    load_submission,
    make_submission,
    validate_submission,
    write_submission,
)
from shards.contracts.checkpoint import CheckpointError, read_run_config

log = logging.getLogger("eval")

EXIT_OK, EXIT_PARTIAL, EXIT_INPUT, EXIT_CROSS_CHECK = 0, 1, 2, 4


class EvalInputError(RuntimeError):
    """Input that makes the run impossible (message is printed as is)."""


def parse_args(argv: list[str] | None = None, need_model: bool = True) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--shards", required=True,
                    help="validation shards: local dir/manifest.json/tar, brace pattern, http(s):// or s3:// URL")
    ap.add_argument("--checkpoint", help="checkpoint dir with weights_fp32.pt + config.yaml (or the weights file)")
    ap.add_argument("--config", help="training config YAML to use instead of the checkpoint's config.yaml")
    ap.add_argument("--predictions", help="score this submission JSON instead of running a model")
    ap.add_argument("--stage", choices=STAGES, default="final",
                    help="final: the BEV head's detections; first: the perspective head's proposals (the first "
                         "stage of the two-stage model, as the hybrid queries receive them)")
    ap.add_argument("--random-init", action="store_true",
                    help="the untrained baseline: the checkpoint's model with fresh random weights")
    ap.add_argument("--out", default="eval_out", help="output directory")
    ap.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N samples")
    ap.add_argument("--allow-partial", action="store_true",
                    help="when the stream ends early, score the samples read and exit 0")
    ap.add_argument("--dataroot", help="nuScenes dataroot: also run the devkit's DetectionEval as a cross-check")
    ap.add_argument("--version", default=None, help="dataroot version (default: the one v1.0-* folder)")
    ap.add_argument("--eval-set", default=None, help="devkit split name (default: the split whose scenes these are)")
    ap.add_argument("--cross-check-tol", type=float, default=1e-5)
    ap.add_argument("--device", default="cpu", help="model (and batch) device")
    ap.add_argument("--num-workers", type=int, default=1, help="loader worker processes")
    ap.add_argument("--s3-endpoint-url", default=None, help="S3 endpoint (e.g. MinIO / moto)")
    ap.add_argument("--max-retries", type=int, default=5, help="retries per remote read (exponential backoff)")
    ap.add_argument("--retry-backoff", type=float, default=0.2, help="seconds before the first retry")
    ap.add_argument("--pictures", type=int, default=3, help="samples to draw (cameras + BEV)")
    ap.add_argument("--score-thr", type=float, default=0.3, help="score threshold of drawn predictions")
    ap.add_argument("--max-drawn", type=int, default=100,
                    help="draw at most this many predictions per picture, best first (with --score-thr 0: the "
                         "best N whatever their score, for a model whose scores are all low)")
    ap.add_argument("--curves", choices=("all", "classes", "none"), default="all",
                    help="devkit PR/TP curve plots: all (as DetectionEval.render), classes (without the slow "
                         "summary plot) or none")
    ap.add_argument("--no-curves", action="store_const", const="none", dest="curves", help="same as --curves none")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.max_drawn < 0:
        ap.error(f"--max-drawn must be >= 0, got {args.max_drawn}")
    if need_model and args.predictions is None and args.checkpoint is None:
        ap.error("one of --checkpoint or --predictions is required")
    if args.max_samples is not None and args.max_samples < 1:
        ap.error("--max-samples must be >= 1")
    return args


# --------------------------------------------------------------------------- steps


def io_options(args: argparse.Namespace):
    from pipeline.urls import IOOptions

    return IOOptions(s3_endpoint_url=args.s3_endpoint_url, max_retries=args.max_retries,
                     retry_backoff=args.retry_backoff)


def load_shard_ground_truth(shards: str, io_opts: Any) -> tuple[GroundTruth, list[Any]]:
    """Expand ``--shards`` and read every sidecar (the GT and the sample list of the run)."""
    from pipeline.meta import open_sidecar_table
    from pipeline.urls import ShardURLError, expand_shard_urls

    try:
        specs = expand_shard_urls(shards, io_opts=io_opts)
    except (ShardURLError, OSError) as e:
        raise EvalInputError(f"cannot resolve --shards {shards!r}: {e}") from e
    tables = []
    for spec in specs:
        try:
            tables.append(open_sidecar_table(spec.sidecar_url, io_opts))
        except Exception as e:  # noqa: BLE001 - any failure to fetch/parse names the sidecar
            raise EvalInputError(f"cannot read the sidecar of shard {spec.url}: {spec.sidecar_url}: "
                                 f"{type(e).__name__}: {e}") from e
    try:
        return load_ground_truth(tables), specs
    except GroundTruthError as e:
        raise EvalInputError(f"bad sidecar in {shards!r}: {e}") from e


def _build_loader(args: argparse.Namespace, data_section: dict | None):
    from pipeline.loader import build_loader

    cfg = eval_loader_config(args.shards, data_section, device=args.device, num_workers=args.num_workers,
                             s3_endpoint_url=args.s3_endpoint_url, max_retries=args.max_retries,
                             retry_backoff=args.retry_backoff)
    return build_loader(cfg)


def run_model(args: argparse.Namespace, gt: GroundTruth, expected: list[str],
              predictor: Predictor | None = None) -> StreamResult:
    """Stream the shards through the checkpoint's model (or through ``predictor`` when given)."""
    if predictor is None:
        try:
            model, run_cfg = load_model(args.checkpoint, args.config, args.device, random_init=args.random_init)
        except (CheckpointError, OSError) as e:
            raise EvalInputError(str(e)) from e
        if args.stage == "first" and (model.pers_head is None or model.cfg.head.num_hybrid < 1):
            raise EvalInputError(f"--stage first: the model of {args.checkpoint} has no first stage "
                                 f"(model.lambda_pers={model.cfg.lambda_pers}, "
                                 f"model.head.num_hybrid={model.cfg.head.num_hybrid})")
        predictor = ModelPredictor(model, args.device, args.stage)
    else:
        run_cfg = read_run_config(args.config) if args.config else {}
    loader = _build_loader(args, run_cfg.get("data"))
    return stream_predictions(loader, predictor, gt, max_samples=args.max_samples,
                              picture_tokens=pick_picture_tokens(expected, args.pictures),
                              progress=not args.no_progress)


def read_predictions(args: argparse.Namespace, expected: list[str]) -> tuple[dict, list[str]]:
    """The submission of ``--predictions`` restricted to ``expected`` and the tokens it covers."""
    try:
        sub = load_submission(args.predictions)
        validate_submission(sub)
    except SubmissionError as e:
        raise EvalInputError(f"invalid submission {args.predictions}: {e}") from e
    results = sub["results"]
    if args.max_samples is None:
        unknown = sorted(set(results) - set(expected))
        if unknown:
            raise EvalInputError(f"invalid submission {args.predictions}: {len(unknown)} sample token(s) are in "
                                 f"no shard of --shards, e.g. {', '.join(unknown[:3])}")
    present = [t for t in expected if t in results]
    sub = {"meta": sub["meta"], "results": {t: results[t] for t in present}}
    if len(present) < len(expected) and not args.allow_partial:
        try:
            validate_submission(sub, expected)
        except SubmissionError as e:
            raise EvalInputError(f"invalid submission {args.predictions}: {e} "
                                 "(--allow-partial scores the samples it has)") from e
    return sub, present


def pictures(args: argparse.Namespace, out: Path, views: list) -> list[Path]:
    from eval.plots import draw_bev, draw_cameras

    paths = []
    for v in views:
        paths.append(draw_cameras(v, out / "samples" / f"{v.sample_token}_cameras.png", score_thr=args.score_thr,
                                  max_boxes=args.max_drawn))
        paths.append(draw_bev(v, out / "samples" / f"{v.sample_token}_bev.png", score_thr=args.score_thr,
                              max_boxes=args.max_drawn))
    return paths


def infer_eval_set(gt: GroundTruth) -> str:
    """The devkit split whose scene list is exactly the scenes in the shards."""
    from nuscenes.utils.splits import create_splits_scenes

    scenes = {s.scene_name for s in gt.samples.values()}
    for name, split_scenes in create_splits_scenes(verbose=False).items():
        if set(split_scenes) == scenes:
            return name
    raise EvalInputError(f"the shards' {len(scenes)} scenes match no devkit split; pass --eval-set")


def infer_version(dataroot: Path) -> str:
    found = sorted(p.name for p in dataroot.glob("v1.0-*") if p.is_dir())
    if len(found) != 1:
        raise EvalInputError(f"--dataroot {dataroot}: found versions {found}; pass --version")
    return found[0]


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, predictor: Predictor | None = None) -> int:
    """The whole evaluation; ``predictor`` replaces the checkpoint's model (tests, benchmarks)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    io_opts = io_options(args)
    t_start = time.perf_counter()
    gt, specs = load_shard_ground_truth(args.shards, io_opts)
    expected = gt.order[: args.max_samples] if args.max_samples else list(gt.order)
    print(f"{len(specs)} shard(s), {len(gt.order)} samples in the sidecars; evaluating {len(expected)}", flush=True)

    stream: StreamResult | None = None
    if args.predictions:
        submission, scored = read_predictions(args, expected)
        results_path = Path(args.predictions)
    else:
        stream = run_model(args, gt, expected, predictor)
        submission = make_submission(stream.results)
        scored = [t for t in expected if t in stream.results]
        results_path = write_submission(submission, out / "results.json")
        print(f"submission: {results_path} ({sum(len(v) for v in submission['results'].values())} boxes)")

    complete = len(scored) == len(expected)
    if not complete:
        why = f" ({_last_line(stream.error)})" if stream is not None and stream.error else ""
        done = set(scored)
        missing = [gt.samples[t].key for t in expected if t not in done]
        print(f"INCOMPLETE: scored {len(scored)} of {len(expected)} samples{why}; not scored: "
              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", file=sys.stderr, flush=True)
        if not args.allow_partial:
            print("no metrics written; rerun, or pass --allow-partial to score the samples read", file=sys.stderr)
            return EXIT_PARTIAL
        if not scored:
            print("nothing to score", file=sys.stderr)
            return EXIT_PARTIAL

    t_score = time.perf_counter()
    try:
        result = evaluate(submission, gt, sample_tokens=scored)
    except SubmissionError as e:
        raise EvalInputError(f"invalid submission: {e}") from e
    score_s = time.perf_counter() - t_score
    summary = result.summary
    summary.update(
        complete=complete,
        num_samples_expected=len(expected),
        shards=args.shards,
        checkpoint=args.checkpoint,
        stage=None if args.predictions else args.stage,
        predictions=str(results_path),
        timing={"score_s": score_s},
    )
    if stream is not None:
        n = max(len(stream.results), 1)
        summary["timing"].update(load_s=stream.seconds_load, infer_s=stream.seconds_infer,
                                 stream_s=stream.seconds_total, samples_per_s=n / max(stream.seconds_total, 1e-9))

    header = "" if complete else f"PARTIAL RESULT: {len(scored)} of {len(expected)} samples\n"
    print(header + format_table(summary), flush=True)

    status = EXIT_OK
    if args.dataroot:
        status = cross_check(args, gt, summary, results_path, complete, out)

    if args.curves != "none":
        from eval.plots import render_curves

        render_curves(result.md_list, result.metrics, detection_config(), out / "plots", summary=args.curves == "all")
    views = stream.views if stream is not None else []
    if args.predictions and args.pictures > 0:
        try:
            loader_data = read_run_config(args.config).get("data") if args.config else None
            side = stream_predictions(_build_loader(args, loader_data), None, gt,
                                      picture_tokens=pick_picture_tokens(scored, args.pictures, evenly=False),
                                      progress=False)
            views = views_with_submission(side.views, submission, gt)
        except Exception as e:  # noqa: BLE001 - pictures are optional in --predictions runs
            print(f"pictures skipped: {type(e).__name__}: {e}", file=sys.stderr)
    drawn = pictures(args, out, views)
    summary["timing"]["total_s"] = time.perf_counter() - t_start
    write_summary(summary, out / "metrics_summary.json")
    print(f"wrote {out / 'metrics_summary.json'}, {len(drawn)} picture(s) under {out / 'samples'}"
          + ("" if args.curves == "none" else f", curves under {out / 'plots'}"))
    if not complete:
        print(f"PARTIAL RESULT (--allow-partial): {len(scored)} of {len(expected)} samples scored", file=sys.stderr)
    return status


def cross_check(args: argparse.Namespace, gt: GroundTruth, summary: dict, results_path: Path, complete: bool,
                out: Path) -> int:
    """Run the devkit's DetectionEval on ``--dataroot`` and compare (needs the whole split)."""
    if not complete or args.max_samples:
        print("devkit cross-check skipped: DetectionEval needs every sample of the split", file=sys.stderr)
        return EXIT_OK
    dataroot = Path(args.dataroot)
    version = args.version or infer_version(dataroot)
    eval_set = args.eval_set or infer_eval_set(gt)
    devkit = devkit_cross_check(results_path, dataroot, version, eval_set, out / "devkit")
    diff = compare_summaries(summary, devkit)
    summary["devkit_cross_check"] = {"version": version, "eval_set": eval_set, "nd_score": devkit["nd_score"],
                                     "mean_ap": devkit["mean_ap"], "max_abs_diff": diff}
    ok = diff <= args.cross_check_tol
    print(f"devkit DetectionEval ({version} {eval_set}): NDS {devkit['nd_score']:.6f} mAP {devkit['mean_ap']:.6f}; "
          f"max |difference| {diff:.3g} -> {'agrees' if ok else 'DISAGREES'}", flush=True)
    return EXIT_OK if ok else EXIT_CROSS_CHECK


def _last_line(e: BaseException) -> str:
    """``Type: message`` of an error, without a DataLoader worker's embedded traceback."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def main(argv: list[str] | None = None, predictor: Predictor | None = None) -> int:
    args = parse_args(argv, need_model=predictor is None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args, predictor)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
