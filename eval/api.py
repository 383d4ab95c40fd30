"""Evaluation as a library: score a checkpoint, a predictions file or any predictor on shards.

    from eval.api import evaluate_checkpoint, evaluate_predictions, read_result

    res = evaluate_checkpoint("runs/x/checkpoints/step_00001000", "shards/mini_val", out="eval_out")
    res.summary["nd_score"], res.per_class_ap["car"], res.complete, res.paths["summary"]
    res = evaluate_predictions("results.json", "shards/mini_val", out="eval_out")

Every call writes into ``out``: ``results.json`` (the submission, model runs), ``metrics_summary.json``
(the devkit-format metrics, when scored), the optional pictures and curves, and
``eval_result.json`` (:data:`RESULT_FILE`): the returned :class:`EvalResult` itself, also for an
incomplete run or bad input, so a caller in another process (``python -m eval`` in the training's eval
hook) reads the outcome back with :func:`read_result` instead of parsing output.

Under ``torchrun --nproc_per_node N`` (``RANK``/``WORLD_SIZE`` in the environment) a model run splits
whole scenes across the ranks and rank 0 scores the gathered predictions (:mod:`eval.dist`); every rank
returns the same :class:`EvalResult`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from eval.dist import (
    EvalRanks,
    broadcast_from_main,
    gather_to_main,
    init_process_group,
    launched_ranks,
    split_scenes,
)
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

RESULT_FILE = "eval_result.json"
"""The :class:`EvalResult` of a call, as JSON, in its output directory."""
SUMMARY_FILE = "metrics_summary.json"
SUBMISSION_FILE = "results.json"

EXIT_OK, EXIT_PARTIAL, EXIT_INPUT, EXIT_CROSS_CHECK = 0, 1, 2, 4
"""``EvalResult.exit_code`` (and ``python -m eval``'s exit status): scored every sample; the stream ended
early (nothing scored unless ``allow_partial``); bad input; the devkit cross-check disagrees."""

Curves = Literal["all", "classes", "none"]


class EvalInputError(RuntimeError):
    """Input that makes the run impossible (the message names the file, key or value at fault)."""


@dataclass
class EvalResult:
    """The outcome of one evaluation.

    ``summary``: the content of ``metrics_summary.json`` (``nd_score``, ``mean_ap``, ``tp_errors``,
    ``mean_dist_aps``, ...); empty when nothing was scored. ``per_class_ap``: class -> AP (mean over the
    distance thresholds). ``paths``: ``submission``, ``summary``, ``result``, ``plots`` (those written).
    ``complete``: every expected sample was scored. ``num_samples``: samples scored, of ``num_expected``.
    ``exit_code``: :data:`EXIT_OK` and friends. ``message``: why a run failed or is incomplete.
    """

    complete: bool
    num_samples: int
    num_expected: int
    summary: dict[str, Any] = field(default_factory=dict)
    per_class_ap: dict[str, float] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    pictures: list[str] = field(default_factory=list)
    exit_code: int = EXIT_OK
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    def metrics(self) -> dict[str, float]:
        """The summary's top-level numbers (``nd_score``, ``mean_ap``, ``num_samples``, ...) for logs."""
        return {k: float(v) for k, v in self.summary.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, out: str | Path) -> Path:
        """``out/eval_result.json`` (NaN written as the devkit writes it)."""
        path = Path(out) / RESULT_FILE
        self.paths.setdefault("result", str(path))
        return write_summary(self.to_dict(), path)


def read_result(path: str | Path) -> EvalResult:
    """The :class:`EvalResult` written by an evaluation into ``path`` (its output dir or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalInputError(f"cannot read the eval result {path}: {e}") from e
    names = {f.name for f in dataclasses.fields(EvalResult)}
    if not isinstance(data, dict) or not {"complete", "num_samples", "num_expected"} <= set(data):
        raise EvalInputError(f"{path} is not an eval result (needs complete, num_samples, num_expected)")
    return EvalResult(**{k: v for k, v in data.items() if k in names})


@dataclass
class EvalOptions:
    """Everything but the thing scored. ``device``: ``auto`` = this rank's GPU when torch sees one, else CPU."""

    out: str | Path = "eval_out"
    config: str | Path | None = None
    max_samples: int | None = None
    allow_partial: bool = False
    device: str = "auto"
    num_workers: int = 1
    s3_endpoint_url: str | None = None
    max_retries: int = 5
    retry_backoff: float = 0.2
    pictures: int = 3
    score_thr: float = 0.3
    max_drawn: int = 100
    curves: Curves = "all"
    dataroot: str | Path | None = None
    version: str | None = None
    eval_set: str | None = None
    cross_check_tol: float = 1e-5
    progress: bool = True
    verbose: bool = True

    def validate(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise EvalInputError(f"max_samples must be >= 1, got {self.max_samples}")
        if self.max_drawn < 0:
            raise EvalInputError(f"max_drawn must be >= 0, got {self.max_drawn}")
        if self.curves not in ("all", "classes", "none"):
            raise EvalInputError(f"curves must be all, classes or none, got {self.curves!r}")

    def io(self) -> Any:
        from pipeline.urls import IOOptions

        return IOOptions(s3_endpoint_url=self.s3_endpoint_url, max_retries=self.max_retries,
                         retry_backoff=self.retry_backoff)


def resolve_device(device: str, ranks: EvalRanks | None = None) -> str:
    """``auto`` -> ``cuda:{local rank}`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return f"cuda:{(ranks or EvalRanks()).local_rank}" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- inputs


def load_shard_ground_truth(shards: str, io_opts: Any = None) -> tuple[GroundTruth, list[Any]]:
    """Expand ``shards`` and read every sidecar: (the ground truth, the shard specs in order)."""
    gt, specs, _ = _load_shards(shards, io_opts)
    return gt, specs


def _load_shards(shards: str, io_opts: Any) -> tuple[GroundTruth, list[Any], list[list[str]]]:
    """(ground truth, shard specs, per shard its sample tokens in order)."""
    from pipeline.meta import open_sidecar_table
    from pipeline.urls import IOOptions, ShardURLError, expand_shard_urls

    io_opts = io_opts or IOOptions()
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
        gt = load_ground_truth(tables)
    except GroundTruthError as e:
        raise EvalInputError(f"bad sidecar in {shards!r}: {e}") from e
    return gt, specs, [t.column("sample_token").to_pylist() for t in tables]


def _data_section(config: str | Path | None) -> dict | None:
    if config is None:
        return None
    try:
        return read_run_config(config).get("data")
    except (CheckpointError, OSError) as e:
        raise EvalInputError(str(e)) from e


def _build_loader(shards: str | list[str], data_section: dict | None, opts: EvalOptions, device: str,
                  load_points: bool = False):
    from pipeline.loader import build_loader

    cfg = eval_loader_config(shards, data_section, device=device, num_workers=opts.num_workers,
                             s3_endpoint_url=opts.s3_endpoint_url, max_retries=opts.max_retries,
                             retry_backoff=opts.retry_backoff, overrides={"load_points": load_points})
    return build_loader(cfg)


def check_points_available(specs: list[Any], io_opts: Any, why: str) -> None:
    """Refuse, naming the first shard at fault, shards without ``{key}.lidar.npy`` members (built without --lidar)."""
    from pipeline.urls import read_bytes

    manifests: dict[str, bool] = {}
    for spec in specs:
        base = spec.url.rsplit("/", 1)[0]
        if base not in manifests:
            try:
                manifest = json.loads(bytes(read_bytes(base + "/manifest.json", io_opts)))
                manifests[base] = bool(manifest.get("settings", {}).get("lidar", False))
            except Exception:  # noqa: BLE001 - no manifest: the loader names a missing member itself
                manifests[base] = True
        if not manifests[base]:
            raise EvalInputError(f"{why}, but shard {spec.url} was built without LiDAR (its manifest's "
                                 "settings.lidar is false: no lidar.npy members); rebuild with --lidar")


# --------------------------------------------------------------------------- the runs


def evaluate_checkpoint(checkpoint: str | Path, shards: str, *, stage: str = "final", random_init: bool = False,
                        ranks: EvalRanks | None = None, **options: Any) -> EvalResult:
    """Stream ``shards`` through the checkpoint's model and score it (``options``: :class:`EvalOptions` fields).

    ``stage``: ``final`` (the detections) or ``first`` (a two-stage model's proposals).
    ``random_init``: the checkpoint's model with fresh random weights (the untrained baseline).
    ``ranks``: this process's place among several (default: from a launcher's environment).
    Raises :class:`EvalInputError` for bad input (after writing ``eval_result.json``).
    """
    if stage not in STAGES:
        raise EvalInputError(f"stage must be one of {STAGES}, got {stage!r}")
    opts = EvalOptions(**options)
    ranks = ranks or launched_ranks()

    def make_predictor(device: str) -> tuple[Predictor, dict, bool]:
        try:
            model, run_cfg = load_model(checkpoint, opts.config, device, random_init=random_init)
        except (CheckpointError, OSError) as e:
            raise EvalInputError(str(e)) from e
        if stage == "first" and (model.pers_head is None or not model.cfg.use_hybrid):
            raise EvalInputError(f"--stage first: the model of {checkpoint} has no first stage "
                                 f"(model.lambda_pers={model.cfg.lambda_pers}, "
                                 f"model.head.hybrid={model.cfg.head.hybrid!r}, "
                                 f"model.head.num_hybrid={model.cfg.head.num_hybrid})")
        needs_points = bool(getattr(model.cfg, "needs_points_in_eval", False))
        return ModelPredictor(model, device, stage), run_cfg.get("data"), needs_points

    return _run(opts, ranks, make_predictor=make_predictor,
                label={"checkpoint": str(checkpoint), "stage": stage}, shards=shards)


def evaluate_predictor(predictor: Predictor, shards: str, *, label: str | None = None,
                       ranks: EvalRanks | None = None, **options: Any) -> EvalResult:
    """Like :func:`evaluate_checkpoint` with any ``predictor(batch) -> [per-sample dict]`` (tests, benchmarks).

    ``config``: a run config whose ``data`` section gives the image geometry; ``label``: the summary's
    ``checkpoint`` entry."""
    opts = EvalOptions(**options)
    data = _data_section(opts.config)

    def make_predictor(device: str) -> tuple[Predictor, dict | None, bool]:
        return predictor, data, False

    return _run(opts, ranks or launched_ranks(), make_predictor=make_predictor,
                label={"checkpoint": label, "stage": "final"}, shards=shards)


def evaluate_predictions(results_json: str | Path, shards: str, **options: Any) -> EvalResult:
    """Score a nuScenes submission JSON against ``shards`` (``options``: :class:`EvalOptions` fields).

    With ``max_samples``, the first samples of the shards are scored; otherwise a token in no shard is
    an error, and so is a missing sample unless ``allow_partial``. Runs in one process (under a launcher,
    rank 0 scores and the others receive the result)."""
    opts = EvalOptions(**options)
    ranks = launched_ranks()
    return _run(opts, ranks, predictions=Path(results_json),
                label={"checkpoint": None, "stage": None}, shards=shards)


def _say(opts: EvalOptions, *msg: Any, err: bool = False) -> None:
    if opts.verbose:
        print(*msg, file=sys.stderr if err else sys.stdout, flush=True)


def _run(opts: EvalOptions, ranks: EvalRanks, *, shards: str, label: dict,
         make_predictor: Callable[[str], tuple[Predictor, dict | None, bool]] | None = None,
         predictions: Path | None = None) -> EvalResult:
    """One evaluation on every rank: stream (split by scene), gather, score on rank 0, broadcast the result."""
    out = Path(opts.out)
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / RESULT_FILE).unlink(missing_ok=True)  # a stale result must not pass for this run's
    init_process_group(ranks)
    outcome: tuple[str, Any]
    try:
        opts.validate()
        outcome = ("ok", _run_ranks(opts, ranks, shards, label, make_predictor, predictions))
    except EvalInputError as e:
        outcome = ("error", str(e))
    if ranks.distributed:
        outcome = broadcast_from_main(ranks, outcome)
    if outcome[0] == "error":
        if ranks.is_main:
            EvalResult(complete=False, num_samples=0, num_expected=0, exit_code=EXIT_INPUT,
                       message=outcome[1]).write(out)
        raise EvalInputError(outcome[1])
    return outcome[1]


def _run_ranks(opts: EvalOptions, ranks: EvalRanks, shards: str, label: dict,
               make_predictor: Callable | None, predictions: Path | None) -> EvalResult | None:
    t_start = time.perf_counter()
    io_opts = opts.io()
    gt, specs, shard_tokens = _load_shards(shards, io_opts)
    expected = gt.order[: opts.max_samples] if opts.max_samples else list(gt.order)
    if ranks.is_main:
        _say(opts, f"{len(specs)} shard(s), {len(gt.order)} samples in the sidecars; evaluating {len(expected)}"
             + (f" on {ranks.world_size} ranks" if ranks.distributed and predictions is None else ""))

    stream: StreamResult | None = None
    if predictions is not None:
        if not ranks.is_main:
            return None
        submission, scored = _read_predictions(predictions, expected, opts)
        results_path = predictions
    else:
        stream = _stream_ranks(opts, ranks, shards, gt, specs, shard_tokens, expected, make_predictor)
        if not ranks.is_main:
            return None
        submission = make_submission(stream.results)
        scored = [t for t in expected if t in stream.results]
        results_path = write_submission(submission, out_path(opts, SUBMISSION_FILE))
        _say(opts, f"submission: {results_path} ({sum(len(v) for v in submission['results'].values())} boxes)")
    return _score(opts, gt, expected, scored, submission, results_path, stream, label, shards, t_start)


def out_path(opts: EvalOptions, name: str) -> Path:
    return Path(opts.out) / name


def _stream_ranks(opts: EvalOptions, ranks: EvalRanks, shards: str, gt: GroundTruth, specs: list[Any],
                  shard_tokens: list[list[str]], expected: list[str], make_predictor: Callable) -> StreamResult | None:
    """This rank's scenes through its predictor; on rank 0 the merged result of every rank (None elsewhere)."""
    device = resolve_device(opts.device, ranks)
    pics = pick_picture_tokens(expected, opts.pictures)
    local: tuple[str, Any]
    try:
        predictor, data_section, needs_points = make_predictor(device)
        if ranks.rank > 0 and isinstance(predictor, ModelPredictor):
            predictor.warm_up = True  # its first frame is not the run's first (see ModelPredictor)
        if needs_points:
            check_points_available(specs, opts.io(), "the model needs LiDAR points in eval (needs_points_in_eval)")
        if not ranks.distributed:
            loader = _build_loader(shards, data_section, opts, device, needs_points)
            return stream_predictions(loader, predictor, gt, max_samples=opts.max_samples, picture_tokens=pics,
                                      progress=opts.progress)
        mine = split_scenes(expected, {t: gt.samples[t].scene_token for t in expected}, ranks.world_size)[ranks.rank]
        if mine:
            loader = _build_loader(shards_arg(specs, set(mine), shard_tokens), data_section, opts, device,
                                   needs_points)
            part = stream_predictions(loader, predictor, gt, keep=mine, picture_tokens=[t for t in pics if t in mine],
                                      progress=opts.progress and ranks.is_main)
        else:
            part = StreamResult()
        if part.error is not None:
            part.error = RuntimeError(_last_line(part.error))  # a plain error travels to rank 0
        local = ("ok", part)
    except EvalInputError as e:
        if not ranks.distributed:
            raise
        local = ("error", f"rank {ranks.rank}: {e}")
    parts = gather_to_main(ranks, local)
    if parts is None:
        return None
    errors = [p[1] for p in parts if p[0] == "error"]
    if errors:
        raise EvalInputError("; ".join(errors))
    return merge_streams([p[1] for p in parts], expected)


def shards_arg(specs: list[Any], keep: set[str] | None, shard_tokens: list[list[str]]) -> list[str]:
    """The shard URLs holding any of ``keep`` (all when None), in order."""
    return [s.url for s, toks in zip(specs, shard_tokens) if keep is None or keep.intersection(toks)]


def merge_streams(parts: list[StreamResult], expected: list[str]) -> StreamResult:
    """Several ranks' stream results as one: results in ``expected`` order, the first error, the longest times."""
    merged = StreamResult()
    found: dict[str, list[dict]] = {}
    for p in parts:
        found.update(p.results)
        merged.views.extend(p.views)
        merged.duplicates += p.duplicates
        if merged.error is None and p.error is not None:
            merged.error = p.error
    merged.results = {t: found[t] for t in expected if t in found}
    order = {t: i for i, t in enumerate(expected)}
    merged.views.sort(key=lambda v: order.get(v.sample_token, len(order)))
    merged.seconds_load = max((p.seconds_load for p in parts), default=0.0)
    merged.seconds_infer = max((p.seconds_infer for p in parts), default=0.0)
    merged.seconds_total = max((p.seconds_total for p in parts), default=0.0)
    return merged


def _read_predictions(path: Path, expected: list[str], opts: EvalOptions) -> tuple[dict, list[str]]:
    """The submission at ``path`` restricted to ``expected`` and the tokens it covers."""
    try:
        sub = load_submission(path)
        validate_submission(sub)
    except SubmissionError as e:
        raise EvalInputError(f"invalid submission {path}: {e}") from e
    results = sub["results"]
    if opts.max_samples is None:
        unknown = sorted(set(results) - set(expected))
        if unknown:
            raise EvalInputError(f"invalid submission {path}: {len(unknown)} sample token(s) are in "
                                 f"no shard of --shards, e.g. {', '.join(unknown[:3])}")
    present = [t for t in expected if t in results]
    sub = {"meta": sub["meta"], "results": {t: results[t] for t in present}}
    if len(present) < len(expected) and not opts.allow_partial:
        try:
            validate_submission(sub, expected)
        except SubmissionError as e:
            raise EvalInputError(f"invalid submission {path}: {e} (--allow-partial scores the samples it has)") from e
    return sub, present


def _score(opts: EvalOptions, gt: GroundTruth, expected: list[str], scored: list[str], submission: dict,
           results_path: Path, stream: StreamResult | None, label: dict, shards: str, t_start: float) -> EvalResult:
    out = Path(opts.out)
    paths = {"submission": str(results_path)}
    complete = len(scored) == len(expected)
    message = ""
    if not complete:
        why = f" ({_last_line(stream.error)})" if stream is not None and stream.error else ""
        done = set(scored)
        missing = [gt.samples[t].key for t in expected if t not in done]
        message = (f"INCOMPLETE: scored {len(scored)} of {len(expected)} samples{why}; not scored: "
                   f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        _say(opts, message, err=True)
        if not opts.allow_partial or not scored:
            _say(opts, "no metrics written; rerun, or pass --allow-partial to score the samples read" if scored
                 else "nothing to score", err=True)
            res = EvalResult(complete=False, num_samples=0, num_expected=len(expected), paths=paths,
                             exit_code=EXIT_PARTIAL, message=message)
            res.write(out)
            return res

    t_score = time.perf_counter()
    try:
        result = evaluate(submission, gt, sample_tokens=scored)
    except SubmissionError as e:
        raise EvalInputError(f"invalid submission: {e}") from e
    score_s = time.perf_counter() - t_score
    summary = result.summary
    summary.update(complete=complete, num_samples_expected=len(expected), shards=shards,
                   checkpoint=label["checkpoint"], stage=label["stage"], predictions=str(results_path),
                   timing={"score_s": score_s})
    if stream is not None:
        n = max(len(stream.results), 1)
        summary["timing"].update(load_s=stream.seconds_load, infer_s=stream.seconds_infer,
                                 stream_s=stream.seconds_total, samples_per_s=n / max(stream.seconds_total, 1e-9))

    header = "" if complete else f"PARTIAL RESULT: {len(scored)} of {len(expected)} samples\n"
    _say(opts, header + format_table(summary))

    status = EXIT_OK
    if opts.dataroot:
        status = _cross_check(opts, gt, summary, results_path, complete, out)
    if opts.curves != "none":
        from eval.plots import render_curves

        render_curves(result.md_list, result.metrics, detection_config(), out / "plots", summary=opts.curves == "all")
        paths["plots"] = str(out / "plots")
    views = stream.views if stream is not None else []
    if stream is None and opts.pictures > 0:
        try:
            side = stream_predictions(_build_loader(shards, _data_section(opts.config), opts,
                                                    resolve_device(opts.device)),
                                      None, gt, picture_tokens=pick_picture_tokens(scored, opts.pictures, evenly=False),
                                      progress=False)
            views = views_with_submission(side.views, submission, gt)
        except Exception as e:  # noqa: BLE001 - pictures are optional in predictions runs
            _say(opts, f"pictures skipped: {type(e).__name__}: {e}", err=True)
    drawn = _pictures(opts, out, views)
    summary["timing"]["total_s"] = time.perf_counter() - t_start
    paths["summary"] = str(write_summary(summary, out / SUMMARY_FILE))
    _say(opts, f"wrote {out / SUMMARY_FILE}, {len(drawn)} picture(s) under {out / 'samples'}"
         + ("" if opts.curves == "none" else f", curves under {out / 'plots'}"))
    if not complete:
        _say(opts, f"PARTIAL RESULT (--allow-partial): {len(scored)} of {len(expected)} samples scored", err=True)
    res = EvalResult(complete=complete, num_samples=len(scored), num_expected=len(expected),
                     summary=json.loads((out / SUMMARY_FILE).read_text()),
                     per_class_ap=dict(summary.get("mean_dist_aps", {})), paths=paths,
                     pictures=[str(p) for p in drawn], exit_code=status, message=message)
    res.write(out)
    return res


def _pictures(opts: EvalOptions, out: Path, views: list) -> list[Path]:
    from eval.plots import draw_bev, draw_cameras

    paths = []
    for v in views:
        paths.append(draw_cameras(v, out / "samples" / f"{v.sample_token}_cameras.png", score_thr=opts.score_thr,
                                  max_boxes=opts.max_drawn))
        paths.append(draw_bev(v, out / "samples" / f"{v.sample_token}_bev.png", score_thr=opts.score_thr,
                              max_boxes=opts.max_drawn))
    return paths


def infer_eval_set(gt: GroundTruth) -> str:
    """The devkit split whose scene list is exactly the scenes in the shards."""
    from nuscenes.utils.splits import create_splits_scenes

    scenes = {s.scene_name for s in gt.samples.values()}
    for name, split_scenes_ in create_splits_scenes(verbose=False).items():
        if set(split_scenes_) == scenes:
            return name
    raise EvalInputError(f"the shards' {len(scenes)} scenes match no devkit split; pass --eval-set")


def infer_version(dataroot: Path) -> str:
    found = sorted(p.name for p in dataroot.glob("v1.0-*") if p.is_dir())
    if len(found) != 1:
        raise EvalInputError(f"--dataroot {dataroot}: found versions {found}; pass --version")
    return found[0]


def _cross_check(opts: EvalOptions, gt: GroundTruth, summary: dict, results_path: Path, complete: bool,
                 out: Path) -> int:
    """Run the devkit's DetectionEval on ``dataroot`` and compare (needs the whole split)."""
    if not complete or opts.max_samples:
        _say(opts, "devkit cross-check skipped: DetectionEval needs every sample of the split", err=True)
        return EXIT_OK
    dataroot = Path(opts.dataroot)
    version = opts.version or infer_version(dataroot)
    eval_set = opts.eval_set or infer_eval_set(gt)
    devkit = devkit_cross_check(results_path, dataroot, version, eval_set, out / "devkit")
    diff = compare_summaries(summary, devkit)
    summary["devkit_cross_check"] = {"version": version, "eval_set": eval_set, "nd_score": devkit["nd_score"],
                                     "mean_ap": devkit["mean_ap"], "max_abs_diff": diff}
    ok = diff <= opts.cross_check_tol
    _say(opts, f"devkit DetectionEval ({version} {eval_set}): NDS {devkit['nd_score']:.6f} "
               f"mAP {devkit['mean_ap']:.6f}; max |difference| {diff:.3g} -> {'agrees' if ok else 'DISAGREES'}")
    return EXIT_OK if ok else EXIT_CROSS_CHECK


def _last_line(e: BaseException) -> str:
    """``Type: message`` of an error, without a DataLoader worker's embedded traceback."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
