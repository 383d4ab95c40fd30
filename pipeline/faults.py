"""Fault accounting of the loader: bad samples are skipped, counted and named; too many stop it.

A *bad sample* (named in the log with its shard URL and key) is one of: a tar sample without a
sidecar row, a sidecar row missing from the tar (truncated or damaged tar), a missing camera or
LiDAR member, a JPEG that does not decode or has the wrong size, a sidecar row with non-finite
values (``gt_boxes``, camera or ego matrices), a tar sample out of the sidecar's row order, and
every sample of a shard whose sha256 differs from its manifest's (``verify_checksums``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("pipeline")


class LoaderError(RuntimeError):
    """The loader cannot go on (too many bad samples, too few shards, an unreadable source, ...)."""


@dataclass
class ErrorCounter:
    """Samples read and bad samples of one worker; raises :class:`LoaderError` when bad samples
    exceed ``max_rate`` of the samples read (after ``grace`` samples, and at the end)."""

    max_rate: float
    grace: int
    seen: int = 0
    errors: int = 0
    messages: list[str] = field(default_factory=list)

    def ok(self, n: int = 1) -> None:
        self.seen += n

    def bad(self, msg: str, n: int = 1) -> None:
        self.seen += n
        self.errors += n
        self.messages.append(msg)
        log.warning("skipped bad sample: %s", msg)
        self.check()

    def check(self, final: bool = False) -> None:
        denom = self.seen if final else max(self.seen, self.grace)
        if self.errors and self.errors > self.max_rate * denom:
            raise LoaderError(
                f"too many bad samples: {self.errors} of {self.seen} read "
                f"(max_error_rate={self.max_rate}); last: {self.messages[-1]}")
