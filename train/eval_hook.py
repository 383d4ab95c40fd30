"""Periodic evaluation: run the eval package's CLI on a saved checkpoint (rank 0, a subprocess).

``python -m eval --shards {eval.shards} --checkpoint {ckpt} --out {ckpt}/eval {eval.args...}``
(``--checkpoint {ckpt}/weights_ema_fp32.pt`` when ``eval.weights`` names the EMA weights). In
``eval.args``, ``{ckpt}``, ``{step}`` and ``{weights}`` are substituted. The metrics are read from
the JSON summary the eval writes (``{ckpt}/eval/metrics_summary.json``) or, failing that, from the
last JSON object printed on stdout. A failing eval is reported as a warning, never fatal to training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .config import EvalSection


def eval_command(cfg: EvalSection, ckpt: Path, step: int) -> list[str]:
    """The eval CLI call; ``--out`` defaults to ``{ckpt}/eval`` (where its ``metrics_summary.json`` lands)."""
    subst = {"ckpt": str(ckpt), "step": str(step), "weights": str(ckpt / cfg.weights)}
    args = [a.format(**subst) for a in cfg.args]
    if "--out" not in args:
        args = ["--out", str(ckpt / "eval"), *args]
    target = ckpt if cfg.weights == "weights_fp32.pt" else ckpt / cfg.weights
    return [sys.executable, "-m", "eval", "--shards", cfg.shards, "--checkpoint", str(target), *args]


def _numbers(obj: Any) -> dict[str, float]:
    if not isinstance(obj, dict):
        return {}
    return {k: float(v) for k, v in obj.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _metrics_from(ckpt: Path, stdout: str) -> dict[str, float]:
    for p in sorted((ckpt / "eval").glob("*.json")) if (ckpt / "eval").is_dir() else []:
        try:
            found = _numbers(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
        if found:
            return found
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                found = _numbers(json.loads(line))
            except json.JSONDecodeError:
                continue
            if found:
                return found
    return {}


def run_eval(cfg: EvalSection, ckpt: Path, step: int) -> dict[str, Any]:
    """Run the eval CLI; returns ``{"returncode", "metrics", "log"}`` (log: the output's tail)."""
    cmd = eval_command(cfg, ckpt, step)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"returncode": -1, "metrics": {}, "log": f"eval timed out after {cfg.timeout_s}s"}
    tail = (proc.stdout + proc.stderr)[-2000:]
    return {"returncode": proc.returncode, "metrics": _metrics_from(ckpt, proc.stdout), "log": tail}
