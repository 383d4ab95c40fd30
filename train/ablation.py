"""Ablations as a library: a plan of (variant, seed) training + evaluation runs, run or reused one after the other,
and their statistics (mean ± std over seeds, paired same-seed differences), shared by ``benchmarks/ablation_*.py``.

* :class:`RunPlan`: one run (its config, overrides, the weights file eval scores, the run it starts from);
* :func:`run_plan`: train (``train.workflow``), evaluate (``python -m eval``), reuse finished runs, resume
  interrupted ones; :func:`step_time`: the mean wall time of an optimizer step from the trainer's JSONL log;
* :func:`read_metrics`, :func:`mean_std`, :func:`summarize`, :func:`print_tables`, :func:`finish`;
* :func:`add_run_args` / :func:`parse_run_args` and :func:`execute`: a script's common options and its stages 2-3
  (the runs, then the results).

A metric is ``(column, key)``: the column printed and the key in eval's ``metrics_summary.json`` (top level, or
under ``tp_errors``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shards.contracts.checkpoint import WEIGHTS, step_dir_name

from . import workflow

Metric = tuple[str, str]
"""``(column, key in metrics_summary.json)``."""

HIGHER_IS_BETTER = ("NDS", "mAP")
"""Columns where a larger value is better (every other column: smaller is better)."""


@dataclass
class RunPlan:
    """One training + evaluation: ``variant`` at ``seed``, everything under ``dir``.

    ``config`` + ``overrides``: the training config; ``weights``: the file of the final checkpoint that eval scores;
    ``after``: the name of the run this one starts from (it runs later in the plan; when it failed, so does this).
    """

    variant: str
    seed: int
    dir: Path
    config: str
    overrides: tuple[str, ...] = ()
    weights: str = WEIGHTS
    after: str | None = None

    @property
    def name(self) -> str:
        return f"{self.variant}_seed{self.seed}"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "eval" / "metrics_summary.json"

    def train_command(self, train_shards: Path, steps: int, nproc: int) -> list:
        """The demo's training launch (``workflow.train_command``) with this run's seed and overrides."""
        return workflow.train_command(self.config, self.dir, train_shards, steps, nproc, f"seed={self.seed}",
                                      *self.overrides)

    def eval_checkpoint(self, steps: int) -> Path:
        """What ``python -m eval --checkpoint`` scores: the final checkpoint dir (its ``weights_fp32.pt``) or the
        ``weights`` file inside it."""
        final = workflow.final_checkpoint(self.dir, steps)
        return final if self.weights == WEIGHTS else final / self.weights


def eval_args(checkpoint: Path, val_shards: Path) -> list[str]:
    """``python -m eval`` arguments (besides ``--out``) scoring ``checkpoint`` on ``val_shards``."""
    return ["--shards", str(val_shards), "--checkpoint", str(checkpoint), "--pictures", "0", "--curves", "none"]


def check_train_shards(train_shards: Path, nproc: int, tool: str) -> None:
    """Exit when ``train_shards`` holds fewer shards than ranks (each rank reads at least one)."""
    n = json.loads((train_shards / "manifest.json").read_text())["num_shards"]
    if n < nproc:
        sys.exit(f"{tool}: {train_shards} holds {n} shard(s), fewer than --nproc {nproc} ranks "
                 "(each needs one): rebuild it with a smaller --max-shard-mb or lower --nproc")


def read_metrics(path: Path, metrics: Sequence[Metric]) -> dict[str, float]:
    """``metrics_summary.json`` -> ``{column: value}`` of ``metrics`` (+ ``num_samples``)."""
    m = json.loads(path.read_text())
    out: dict[str, float] = {}
    for col, key in metrics:
        src = m if key in m else m.get("tp_errors", {})
        if key not in src:
            raise KeyError(f"{path}: no '{key}' (top level or under 'tp_errors')")
        out[col] = float(src[key])
    out["num_samples"] = float(m.get("num_samples", float("nan")))
    return out


def step_time(run_dir: Path) -> float:
    """Mean wall seconds per optimizer step of the run in ``run_dir``, start-up excluded (NaN: not enough log).

    Read from the trainer's ``logs/train.jsonl`` (``train.logger``: a record with ``step`` and ``time`` every
    ``logging.every_steps`` steps, and event records such as checkpoints): the time between consecutive step
    records divided by the steps between them, summed over the intervals without an event (no checkpoint save,
    no resume, which starts after a checkpoint) -> data wait, forward, backward, optimizer and EMA of every step.
    The steps before the first record (start-up, first iterations) are not counted.
    """
    path = run_dir / "logs" / "train.jsonl"
    if not path.is_file():
        return float("nan")
    seconds = steps = 0.0
    prev: dict[str, Any] | None = None
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            prev = None
            continue
        if "event" in rec or "step" not in rec or "time" not in rec:
            prev = None
            continue
        if prev is not None and rec["step"] > prev["step"]:
            seconds += rec["time"] - prev["time"]
            steps += rec["step"] - prev["step"]
        prev = rec
    return seconds / steps if steps else float("nan")


def _scored(metrics_path: Path) -> tuple[str, str]:
    """``(checkpoint dir name, weights file name)`` that ``metrics_summary.json`` says it scored."""
    label = Path(str(json.loads(metrics_path.read_text()).get("checkpoint", "")))
    return (label.parent.name, label.name) if label.suffix == ".pt" else (label.name, WEIGHTS)


def run_plan(plan: Sequence[RunPlan], *, steps: int, nproc: int, train_shards: Path, val_shards: Path,
             metrics: Sequence[Metric], describe: Mapping[str, str], tool: str,
             extra: Callable[[RunPlan], dict[str, float]] | None = None,
             report_only: bool = False) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Train and evaluate every run of ``plan`` in order; returns ``(runs, failed run names)``.

    A run whose ``eval/metrics_summary.json`` exists is reused (it must score the ``steps`` checkpoint's
    ``weights``); a run whose final checkpoint is complete is only evaluated; an interrupted training resumes
    (``--resume auto``). ``runs``: name -> ``{variant, seed, dir, overrides, weights, train_s, eval_s, metrics}``
    (``train_s``/``eval_s`` also go to ``RUN/timing.json``); ``describe``: variant -> text of the run header;
    ``extra``: more metric columns per run (e.g. :func:`step_time`); ``report_only``: train and evaluate nothing,
    collect the runs already scored (the others are listed as not scored, not as failed).
    """
    runs: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for k, p in enumerate(plan, 1):
        print(f"\n--- run {k}/{len(plan)}: {p.name} ({describe[p.variant]}), seed {p.seed}", flush=True)
        rec: dict[str, Any] = {"variant": p.variant, "seed": p.seed, "dir": str(p.dir), "overrides": list(p.overrides),
                               "weights": p.weights}
        if p.metrics_path.is_file():
            want = (step_dir_name(steps), p.weights)
            if _scored(p.metrics_path) != want:
                sys.exit(f"{tool}: {p.metrics_path} scores {'/'.join(_scored(p.metrics_path))!r}, not the --steps "
                         f"{steps} one ({'/'.join(want)}): use another --out, or delete {p.dir}")
            print(f"  reusing {p.metrics_path}", flush=True)
            if (p.dir / "timing.json").is_file():
                rec.update(json.loads((p.dir / "timing.json").read_text()))
        elif report_only:
            print("  not scored yet (--report-only): left out", flush=True)
            continue
        else:
            if p.after is not None and p.after in failed:
                print(f"  FAILED: {p.name} starts from {p.after}, which failed", flush=True)
                failed.append(p.name)
                continue
            final = workflow.final_checkpoint(p.dir, steps)
            t = time.time()
            if not (final / "complete").is_file():
                rc = workflow.run(p.train_command(train_shards, steps, nproc), check=False)
                if rc != 0 or not (final / "complete").is_file():
                    print(f"  FAILED: training of {p.name} (exit {rc}; no complete {final})", flush=True)
                    failed.append(p.name)
                    continue
                rec["train_s"] = time.time() - t
            t = time.time()
            if workflow.evaluate(p.dir / "eval", *eval_args(p.eval_checkpoint(steps), val_shards), check=False) is None:
                print(f"  FAILED: evaluation of {p.name}", flush=True)
                failed.append(p.name)
                continue
            rec["eval_s"] = time.time() - t
            (p.dir / "timing.json").write_text(json.dumps({k2: rec[k2] for k2 in ("train_s", "eval_s") if k2 in rec}) + "\n")
        rec["metrics"] = read_metrics(p.metrics_path, metrics)
        if extra is not None:
            rec["metrics"].update(extra(p))
        runs[p.name] = rec
    return runs, failed


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std (ddof 1; NaN for one value), min, max and n of the finite ``values``."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else float("nan"),
            "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize(runs: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]],
              columns: Sequence[str]) -> dict[str, Any]:
    """Per-variant :func:`mean_std` over seeds and paired (same-seed) differences ``a - b`` of every column.

    ``runs``: finished runs ``{variant, seed, metrics: {column: value}}`` (a mapping by run name, or a list).
    Returns ``{"variants": {variant: {column: stats}}, "pairs": {"a - b": {seeds, per_seed, column: stats}}}``;
    a pair without a common seed is left out.
    """
    by_variant: dict[str, dict[int, Mapping[str, float]]] = {}
    for r in (runs.values() if isinstance(runs, Mapping) else runs):
        by_variant.setdefault(r["variant"], {})[r["seed"]] = r["metrics"]
    variants = {v: {c: mean_std([m[c] for m in per_seed.values()]) for c in columns}
                for v, per_seed in by_variant.items()}
    out_pairs = {}
    for a, b in pairs:
        seeds = sorted(set(by_variant.get(a, {})) & set(by_variant.get(b, {})))
        if not seeds:
            continue
        per_seed = {s: {c: by_variant[a][s][c] - by_variant[b][s][c] for c in columns} for s in seeds}
        out_pairs[f"{a} - {b}"] = {"seeds": seeds, "per_seed": per_seed,
                                   **{c: mean_std([d[c] for d in per_seed.values()]) for c in columns}}
    return {"variants": variants, "pairs": out_pairs}


def _fmt(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def _pm(s: Mapping[str, float], signed: bool = False) -> str:
    std = "n/a" if not math.isfinite(s["std"]) else f"{s['std']:.4f}"
    return f"{_fmt(s['mean'], signed)} ± {std}"


def print_tables(runs: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any], columns: Sequence[str],
                 note: str | None = None) -> None:
    """Every run (+ train/eval seconds), mean ± std per variant, paired differences with min..max, ``note``."""
    cols = list(columns)
    print(f"\n{'run':<26}" + "".join(f"{c:>9}" for c in cols) + f"{'train s':>9}{'eval s':>8}")
    for name, r in runs.items():
        m = r["metrics"]
        print(f"{name:<26}" + "".join(f"{_fmt(m[c]):>9}" for c in cols)
              + f"{_secs(r.get('train_s')):>9}{_secs(r.get('eval_s')):>8}")
    w = max([34, *(len(k) + 2 for k in (*summary["variants"], *summary["pairs"]))])
    print(f"\n{'variant (mean ± std over seeds)':<{w}}{'n':>3}" + "".join(f"{c:>19}" for c in cols))
    for v, s in summary["variants"].items():
        print(f"{v:<{w}}{s[cols[0]]['n']:>3}" + "".join(f"{_pm(s[c]):>19}" for c in cols))
    higher = [c for c in cols if c in HIGHER_IS_BETTER]
    lower = [c for c in cols if c not in HIGHER_IS_BETTER]
    print(f"\npaired difference (same seed; {'/'.join(higher)}: higher is better, {'/'.join(lower)}: lower is better)")
    print(f"{'a - b':<{w}}{'n':>3}" + "".join(f"{c:>19}" for c in cols))
    for k, d in summary["pairs"].items():
        print(f"{k:<{w}}{d[cols[0]]['n']:>3}" + "".join(f"{_pm(d[c], signed=True):>19}" for c in cols))
        print(f"{'  min..max':<{w + 3}}" + "".join(
            f"{_fmt(d[c]['min'], True) + '..' + _fmt(d[c]['max'], True):>19}" for c in cols))
    if note:
        print(note)


def finish(results_path: Path, results: dict[str, Any], columns: Sequence[str], note: str | None, t0: float,
           tool: str) -> int:
    """Write ``results`` (with ``runs``, ``summary``, ``failed``) as JSON, print the tables; exit status 1 when a
    run failed."""
    results["wall_s"] = time.time() - t0
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    print_tables(results["runs"], results["summary"], columns, note)
    print(f"\nwrote {results_path}; {tool} finished in {time.time() - t0:.0f} s")
    if results["failed"]:
        print(f"failed runs: {', '.join(results['failed'])}", file=sys.stderr)
        return 1
    return 0


def add_run_args(ap: argparse.ArgumentParser, *, runs_dir: str, steps: int, frames_per_scene: int,
                 variants: Sequence[str]) -> None:
    """The options every ablation script takes: ``--out --steps --seeds --nproc --frames-per-scene --image-size
    --world-seed --variants`` (defaults ``steps``, ``frames_per_scene``, all ``variants``)."""
    ap.add_argument("--out", type=Path, default=workflow.ROOT / "demo_out",
                    help=f"world/shards dir (reused when present); runs go to OUT/{runs_dir}/")
    ap.add_argument("--steps", type=int, default=steps, help="training budget in optimizer steps (every run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks (CPU processes) per training")
    ap.add_argument("--frames-per-scene", type=int, default=frames_per_scene, help="only used when the world is created")
    ap.add_argument("--image-size", default="640x360", help="only used when the world is created")
    ap.add_argument("--world-seed", type=int, default=0, help="only used when the world is created")
    ap.add_argument("--variants", nargs="+", default=list(variants), choices=list(variants))
    ap.add_argument("--report-only", action="store_true",
                    help="train and evaluate nothing: the tables and results.json of the runs already scored")


def parse_run_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the :func:`add_run_args` options (``--variants`` without repeats, in the order given)."""
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.nproc < 1:
        ap.error("--nproc must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds has duplicates: {args.seeds}")
    args.variants = list(dict.fromkeys(args.variants))
    return args


def execute(args: argparse.Namespace, data_text: str, prepare: Callable[[Path], Mapping[str, Path]],
            build_plan: Callable[[Path], Sequence[RunPlan]], *, runs_dir: str, info: Mapping[str, Any],
            metrics: Sequence[Metric], columns: Sequence[str], pairs: Sequence[tuple[str, str]],
            describe: Mapping[str, str], note: str | None, tool: str,
            extra: Callable[[RunPlan], dict[str, float]] | None = None) -> int:
    """An ablation script's three stages under ``OUT = args.out``: ``prepare(OUT)`` -> the ``mini_train`` and
    ``mini_val`` shards (stage 1, ``data_text``); :func:`run_plan` of ``build_plan(OUT)`` (stage 2); then
    :func:`summarize` and :func:`finish` into ``OUT/runs_dir/results.json`` (the :func:`add_run_args` settings,
    ``info``, the world and shards, runs, summary and failed runs). Returns the exit status."""
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    workflow.header(1, 3, data_text)
    shards = prepare(out)
    plan = build_plan(out)
    workflow.header(2, 3, f"{len(plan)} runs: {len(args.variants)} variant(s) x {len(args.seeds)} seed(s), "
                      f"{args.steps} steps each, {args.nproc} rank(s)")
    runs, failed = run_plan(plan, steps=args.steps, nproc=args.nproc, train_shards=shards["mini_train"],
                            val_shards=shards["mini_val"], metrics=metrics, describe=describe, tool=tool, extra=extra,
                            report_only=getattr(args, "report_only", False))
    workflow.header(3, 3, "results")
    results = {"steps": args.steps, "seeds": args.seeds, "variants": args.variants, "nproc": args.nproc, **info,
               "world": str(out / "world"), "shards": {k: str(v) for k, v in shards.items()}, "runs": runs,
               "summary": summarize(runs, pairs, columns), "failed": failed}
    return finish(out / runs_dir / "results.json", results, columns, note, t0, tool)
