"""Sequential reading of a shard tar into samples (key -> {member extension: bytes}).

Uses :func:`shards.reader.iter_tar_members` (streaming ``tarfile`` mode ``r|``, works over
HTTP/S3 streams) and groups consecutive members of one key into a sample. A truncated or
unreadable tar raises :class:`TarReadError` after the complete samples before the damage
were yielded (the partial sample is not yielded).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from shards.reader import ShardFormatError, iter_tar_members, split_member


class TarReadError(OSError):
    """The tar stream ended early or is damaged; ``key`` is the sample being read."""

    def __init__(self, msg: str, key: str | None):
        super().__init__(msg)
        self.key = key


def iter_tar_samples(fileobj: IO[bytes], name: str = "<stream>") -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` in tar order."""
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        for member, data in iter_tar_members(fileobj):
            k, ext = split_member(member)
            if k != key:
                if key is not None:
                    yield key, members
                key, members = k, {}
            members[ext] = data
    except (ShardFormatError, OSError) as e:
        raise TarReadError(f"{name}: tar read failed in sample {key!r}: {type(e).__name__}: {e}", key) from e
    if key is not None:
        yield key, members
