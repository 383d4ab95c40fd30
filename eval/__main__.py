"""``python -m eval``: streaming evaluation over shards with the official nuScenes metrics.

    python -m eval --shards URL|PATTERN|MANIFEST --checkpoint CKPT [--config CFG] [--out DIR]
                   [--max-samples N] [--predictions results.json] [--dataroot DIR] [--allow-partial]
    torchrun --nproc_per_node N -m eval --shards ... --checkpoint CKPT    (whole scenes per rank)

A thin command line over :mod:`eval.api` (``evaluate_checkpoint`` / ``evaluate_predictions``), which
also writes the outcome as ``OUT/eval_result.json`` (``eval.api.read_result``).

Exit status: 0 scored every sample; 1 the stream ended early (the count scored is printed;
``--allow-partial`` scores what was read and exits 0); 2 bad input (shards, sidecars,
submission, checkpoint); 4 the devkit cross-check (``--dataroot``) disagrees.
"""

from __future__ import annotations

import argparse
import logging
import sys

from eval.api import (
    EXIT_CROSS_CHECK,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_PARTIAL,
    EvalInputError,
    EvalResult,
    evaluate_checkpoint,
    evaluate_predictions,
    evaluate_predictor,
    load_shard_ground_truth,
)
from eval.inference import STAGES, Predictor

__all__ = ["EXIT_CROSS_CHECK", "EXIT_INPUT", "EXIT_OK", "EXIT_PARTIAL", "EvalInputError", "load_shard_ground_truth",
           "main", "parse_args", "run"]


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
    ap.add_argument("--device", default="auto",
                    help="model (and batch) device; auto: this rank's GPU when torch sees one, else cpu")
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


def options(args: argparse.Namespace) -> dict:
    """The :class:`eval.api.EvalOptions` fields given on the command line."""
    return dict(out=args.out, config=args.config, max_samples=args.max_samples, allow_partial=args.allow_partial,
                device=args.device, num_workers=args.num_workers, s3_endpoint_url=args.s3_endpoint_url,
                max_retries=args.max_retries, retry_backoff=args.retry_backoff, pictures=args.pictures,
                score_thr=args.score_thr, max_drawn=args.max_drawn, curves=args.curves, dataroot=args.dataroot,
                version=args.version, eval_set=args.eval_set, cross_check_tol=args.cross_check_tol,
                progress=not args.no_progress)


def run(args: argparse.Namespace, predictor: Predictor | None = None) -> EvalResult:
    """The evaluation the arguments ask for; ``predictor`` replaces the checkpoint's model (tests, benchmarks)."""
    if args.predictions:
        return evaluate_predictions(args.predictions, args.shards, **options(args))
    if predictor is not None:
        return evaluate_predictor(predictor, args.shards, label=args.checkpoint, **options(args))
    return evaluate_checkpoint(args.checkpoint, args.shards, stage=args.stage, random_init=args.random_init,
                               **options(args))


def main(argv: list[str] | None = None, predictor: Predictor | None = None) -> int:
    args = parse_args(argv, need_model=predictor is None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args, predictor).exit_code
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
