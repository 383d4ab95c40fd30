"""``manifest.json``: the typed record of a shard directory (docs/CONTRACTS.md, *manifest.json*).

:class:`Manifest` is what the builder writes and :func:`shards.reader.read_manifest` returns; its
field order is the key order of the JSON file. Shard file names in a manifest are plain names in the
manifest's own directory: :func:`check_member_name` is the one check, used by every reader (local or
remote), so a manifest can never point a reader at ``../x.tar``, an absolute path or another URL.

    m = read_manifest("out/mini_val")          # Manifest
    for e in m.shards: print(e.tar, e.samples, e.sha256)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.errors import BuildError, ShardFormatError
from shards.schema import SCHEMA_VERSION
from shards.typed_config import ConfigError, from_dict, to_dict

FORMAT = "bevstream-shards"
"""Value of the manifest's ``format`` key."""

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9_.+=-]*")


def check_member_name(name: object, manifest_path: str | Path) -> str:
    """Return ``name`` if it is a plain file name in the directory of ``manifest_path``, else raise.

    A plain name is one path component of letters, digits and ``_ . + = -`` that does not start
    with a dot: no ``/`` or ``\\``, no ``..``, no absolute path, no URL (``:``), no ``%``, ``?`` or
    ``#`` (which a URL would decode or cut). The check is on the string alone, so it serves local
    paths and HTTP/S3 manifests alike; join the result to the manifest's directory.

    Raises:
        ShardFormatError: naming the manifest and the offending name.
    """
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise ShardFormatError(f"manifest {manifest_path}: shard file {name!r} is not a plain file name in the "
                               "manifest's directory (no paths, '..', absolute paths or URLs)")
    return name


@dataclass(frozen=True)
class BuildSettings:
    """Settings that change the bytes of a build (recorded in the manifest as ``settings``)."""

    clip_frames: int = 8
    max_shard_mb: float = 256.0
    resize: list[int] | None = None  # [W, H]
    jpeg_quality: int = 90
    lidar: bool = False
    skip_missing: bool = False

    def validate(self) -> None:
        if self.clip_frames < 1:
            raise BuildError(f"clip_frames must be >= 1, got {self.clip_frames}")
        if not self.max_shard_mb > 0:
            raise BuildError(f"max_shard_mb must be > 0, got {self.max_shard_mb}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 8):
            raise BuildError(f"resize must be [W, H], each at least 8, got {self.resize}")
        if not 1 <= self.jpeg_quality <= 100:
            raise BuildError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class ManifestSource:
    """Where a build came from: nuScenes ``version``, ``split`` and the dataroot's directory name."""

    version: str
    split: str
    dataroot: str


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a manifest: its three files (plain names), counts and checksums."""

    name: str
    tar: str
    sidecar: str
    index: str
    samples: int
    clips: int
    scenes: list[str]
    first_key: str
    last_key: str
    boxes: int
    bytes: int
    sha256: str
    sidecar_bytes: int
    sidecar_sha256: str


@dataclass(frozen=True)
class SkippedSample:
    """A sample left out (``skip_missing``): its key, token and the dataroot-relative files it lacked."""

    key: str
    sample_token: str
    missing: list[str]


@dataclass(frozen=True)
class BuildState:
    """What identifies a build (``.build.json``, and the head of the manifest): a rerun must match it."""

    source: ManifestSource
    settings: BuildSettings
    plan_digest: str


@dataclass(frozen=True)
class Manifest:
    """A shard directory's ``manifest.json``; field order = key order of the file."""

    format: str
    schema_version: int
    source: ManifestSource
    settings: BuildSettings
    plan_digest: str
    num_shards: int
    num_samples: int
    num_clips: int
    num_scenes: int
    num_boxes: int
    bytes: int
    shards: list[ShardEntry]
    skipped: list[SkippedSample] = field(default_factory=list)

    @property
    def state(self) -> BuildState:
        return BuildState(self.source, self.settings, self.plan_digest)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_json(self) -> str:
        """The file's text (``indent=1``, newline-terminated)."""
        return json_text(self.to_dict())

    @classmethod
    def from_dict(cls, data: object, where: str | Path) -> Manifest:
        """Parse a decoded manifest strictly; every shard file name must pass :func:`check_member_name`.

        Raises:
            ShardFormatError: naming ``where`` and the key or entry at fault.
        """
        if not isinstance(data, dict):
            raise ShardFormatError(f"manifest {where} is not a JSON object (got {type(data).__name__})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ShardFormatError(f"manifest {where} has schema version {data.get('schema_version')!r}, "
                                   f"this reader reads {SCHEMA_VERSION}")
        if data.get("format") != FORMAT:
            raise ShardFormatError(f"manifest {where} has format {data.get('format')!r}, expected {FORMAT!r}")
        shards = data.get("shards")
        if isinstance(shards, list):
            for i, e in enumerate(shards):
                for k in ("tar", "sidecar", "index"):
                    if isinstance(e, dict) and k in e:
                        try:
                            check_member_name(e[k], where)
                        except ShardFormatError as err:
                            raise ShardFormatError(f"{err} (shards[{i}].{k})") from None
        try:
            return from_dict(cls, data)
        except (ConfigError, BuildError) as e:
            raise ShardFormatError(f"manifest {where}: {e}") from e


def json_text(obj: Any) -> str:
    """JSON as the builder writes it (``indent=1``, key order kept, newline-terminated)."""
    return json.dumps(obj, indent=1, sort_keys=False) + "\n"


def parse_manifest(data: bytes | str, where: str | Path) -> Manifest:
    """Decode ``manifest.json`` bytes (UTF-8 JSON object) into a :class:`Manifest`.

    Raises:
        ShardFormatError: not UTF-8, not JSON, not an object, wrong version or an unsafe shard name.
    """
    try:
        obj = json.loads(data if isinstance(data, str) else bytes(data).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ShardFormatError(f"manifest {where} is not UTF-8 text: {e}") from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise ShardFormatError(f"manifest {where} is not valid JSON: {e}") from e
    return Manifest.from_dict(obj, where)
