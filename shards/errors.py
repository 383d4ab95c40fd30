"""The error types of the shard package: each message names the file, table row or argument at fault."""

from __future__ import annotations


class BuildError(ValueError):
    """Bad input to the builder; the message names the file, table or argument at fault."""


class ShardFormatError(ValueError):
    """A shard, sidecar or manifest is not what the format promises; the message names the file."""
