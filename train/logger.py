"""Run logs: per-step JSONL + TensorBoard scalars (rank 0), per-rank sample audit, tqdm progress.

``{out_dir}/logs/train.jsonl``: one object per logged step with every loss term by name
(``loss``, ``loss/bev.cls``, ...), ``lr`` per group, ``grad_norm``, ``samples_per_s``,
``data_wait_s``, ``compute_s`` and ``data_wait_frac`` (= wait / (wait + compute)); a data
bottleneck shows as ``data_wait_frac`` near 1. On resume, lines past the resumed step are dropped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def _truncate_after(path: Path, step: int) -> None:
    """Keep only JSONL records with ``step <= step`` (a killed run may have logged past its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if rec.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLogger:
    """Writes the run's logs; all methods are no-ops where they do not apply to this rank."""

    def __init__(self, out_dir: Path, *, rank: int, tensorboard: bool, log_samples: bool,
                 progress: bool, total_steps: int, start_step: int) -> None:
        self.rank = rank
        self.main = rank == 0
        self.log_dir = Path(out_dir) / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.log_dir / "train.jsonl"
        self.samples_path = self.log_dir / f"samples_rank{rank}.jsonl" if log_samples else None
        if self.main:
            _truncate_after(self.jsonl_path, start_step)
        if self.samples_path is not None:
            _truncate_after(self.samples_path, start_step)
        self._jsonl = open(self.jsonl_path, "a") if self.main else None
        self._samples = open(self.samples_path, "a") if self.samples_path is not None else None
        self._tb = None
        if self.main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tb"), purge_step=start_step + 1)
        self._bar = None
        if self.main and progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                             dynamic_ncols=True, mininterval=1.0, file=sys.stderr)

    def log_step(self, step: int, record: dict[str, Any]) -> None:
        """Rank 0: append ``record`` (flat scalars) to the JSONL and TensorBoard; update the bar."""
        if not self.main:
            return
        rec = {"step": step, "time": time.time(), **{k: _clean(v) for k, v in record.items()}}
        self._jsonl.write(json.dumps(rec) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                                  wait=f"{record.get('data_wait_frac', 0.0):.2f}", refresh=False)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def log_samples(self, step: int, micro: int, tokens: list[str]) -> None:
        """Every rank (when enabled): which samples this rank consumed at ``step``."""
        if self._samples is not None:
            self._samples.write(json.dumps({"step": step, "micro": micro, "tokens": list(tokens)}) + "\n")
            self._samples.flush()

    def event(self, step: int, kind: str, **fields: Any) -> None:
        """Rank 0: a non-step record (checkpoint, eval, warning) in the JSONL."""
        if not self.main:
            return
        self._jsonl.write(json.dumps({"step": step, "event": kind, "time": time.time(),
                                      **{k: _clean(v) for k, v in fields.items()}}) + "\n")
        self._jsonl.flush()
        if self._tb is not None and kind == "eval":
            for k, v in fields.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"eval/{k}", v, step)

    def write(self, msg: str) -> None:
        """Rank 0 message that does not break the progress bar."""
        if not self.main:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        for f in (self._jsonl, self._samples):
            if f is not None:
                f.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
