"""Periodic evaluation during training: ``python -m eval`` on a saved checkpoint, run by rank 0 in a subprocess.

``python -m eval --shards {eval.shards} --checkpoint {ckpt} --out {ckpt}/eval {eval.args...}``
(``--checkpoint {ckpt}/weights_ema_fp32.pt`` when ``eval.weights`` names the EMA weights). In
``eval.args``, ``{ckpt}``, ``{step}`` and ``{weights}`` are substituted.

Why a subprocess and not :func:`eval.api.evaluate_checkpoint` in the rank itself: the evaluation builds a
second model, its own DataLoader workers and (with ``--curves``) matplotlib state; in a child they cannot
leak memory, threads or CUDA context into the training rank, a crash or hang of the evaluation is
contained (``eval.timeout_s`` kills it), and the rank's thread pools stay as ``train.dist`` set them.
The outcome is read back through the eval API's result file (``eval.api.read_result`` of
``{out}/eval_result.json``), never by parsing the child's output.

The child is a job of its own: it runs with :func:`eval.dist.single_process_env` (no ``RANK``,
``WORLD_SIZE``, ``MASTER_*`` or webdataset ``WORKER`` variables), so it reads every val shard, not the
training rank's share, and never joins the training's process group. The other ranks wait for rank 0 in
:func:`evaluate_on_main`, on a gloo group whose timeout covers ``eval.timeout_s`` (the training's own
process group times out sooner). A failing evaluation is a warning, never fatal to training.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eval.api import EvalInputError, read_result
from eval.dist import single_process_env

from .config import EvalSection

WAIT_MARGIN_S = 600
"""Seconds the waiting ranks allow beyond ``eval.timeout_s`` (process start, model load, result broadcast)."""


def eval_out_dir(cfg: EvalSection, ckpt: Path, step: int) -> Path:
    """Where the evaluation writes: ``--out`` of ``eval.args`` if given, else ``{ckpt}/eval``."""
    args = _args(cfg, ckpt, step)
    for i, a in enumerate(args):
        if a == "--out" and i + 1 < len(args):
            return Path(args[i + 1])
        if a.startswith("--out="):
            return Path(a.split("=", 1)[1])
    return ckpt / "eval"


def _args(cfg: EvalSection, ckpt: Path, step: int) -> list[str]:
    subst = {"ckpt": str(ckpt), "step": str(step), "weights": str(ckpt / cfg.weights)}
    return [a.format(**subst) for a in cfg.args]


def eval_command(cfg: EvalSection, ckpt: Path, step: int) -> list[str]:
    """The eval CLI call; ``--out`` defaults to ``{ckpt}/eval`` (where its ``eval_result.json`` lands)."""
    args = _args(cfg, ckpt, step)
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args = ["--out", str(ckpt / "eval"), *args]
    target = ckpt if cfg.weights == "weights_fp32.pt" else ckpt / cfg.weights
    return [sys.executable, "-m", "eval", "--shards", cfg.shards, "--checkpoint", str(target), *args]


def run_eval(cfg: EvalSection, ckpt: Path, step: int) -> dict[str, Any]:
    """Run the eval CLI as a job of its own; returns ``{"returncode", "metrics", "complete", "log"}``.

    ``metrics``: the summary's top-level numbers (``nd_score``, ``mean_ap``, ``num_samples``, ...) from the
    result file; ``log``: the output's tail."""
    cmd = eval_command(cfg, ckpt, step)
    out = eval_out_dir(cfg, ckpt, step)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.timeout_s, check=False,
                              env={**single_process_env(), "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"returncode": -1, "metrics": {}, "complete": False, "log": f"eval timed out after {cfg.timeout_s}s"}
    tail = (proc.stdout + proc.stderr)[-2000:]
    try:
        res = read_result(out)
    except EvalInputError as e:
        return {"returncode": proc.returncode, "metrics": {}, "complete": False, "log": f"{tail}\n{e}"}
    return {"returncode": proc.returncode, "metrics": res.metrics(), "complete": res.complete, "log": tail}


_WAIT_GROUPS: dict[int, Any] = {}


def _wait_group(timeout_s: float) -> Any:
    """A gloo group of every rank with a timeout of ``timeout_s`` (created once per timeout, collectively)."""
    import torch.distributed as td

    key = int(timeout_s)
    if key not in _WAIT_GROUPS:
        _WAIT_GROUPS[key] = td.new_group(backend="gloo", timeout=datetime.timedelta(seconds=key))
    return _WAIT_GROUPS[key]


def run_on_main(fn: Callable[[], Any], timeout_s: float, is_main: bool) -> Any:
    """Called by every rank: rank 0 computes ``fn()``, the others wait up to ``timeout_s`` for it; all return it.

    The wait is a broadcast on a gloo group of its own with that timeout, so a long evaluation does not trip
    the default process group's (possibly shorter) timeout."""
    import torch.distributed as td

    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return fn()
    group = _wait_group(timeout_s)
    box = [fn() if is_main else None]
    td.broadcast_object_list(box, src=0, group=group)
    return box[0]


def evaluate_on_main(cfg: EvalSection, ckpt: Path, step: int, is_main: bool) -> dict[str, Any]:
    """Every rank calls this; rank 0 runs :func:`run_eval`, the others wait ``eval.timeout_s + WAIT_MARGIN_S``."""
    return run_on_main(lambda: run_eval(cfg, ckpt, step), cfg.timeout_s + WAIT_MARGIN_S, is_main)
