"""The output directory's state: refuse what is not ours, resume a build, write JSON atomically.

``.build.json`` (a :class:`~shards.manifest.BuildState`) is written before any shard and left in
place; a rerun with the same state skips every shard whose tar exists (written last, so complete)
and rewrites the rest; a different state is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shards.build_writer import sha256_file, shard_entry, shard_paths
from shards.errors import BuildError
from shards.manifest import BuildState, ShardEntry, json_text
from shards.schema import MANIFEST_NAME
from shards.typed_config import to_dict

if TYPE_CHECKING:
    from shards.build_plan import ShardJob

BUILD_STATE_NAME = ".build.json"
"""Written at the start of a build: the settings and plan a resumed build must match."""


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as the builder's JSON (``indent=1``) under a temporary name, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json_text(obj))
    os.replace(tmp, path)


def check_out_dir(out: Path) -> None:
    """Raise :class:`BuildError` unless ``out`` is a directory or can become one."""
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise BuildError(f"--out {out}: {p} exists and is not a directory")
            return


def own_files(out: Path, split: str) -> list[Path]:
    """The files of ``out`` that a build of ``split`` writes (shards, manifest, state, their temporaries)."""
    return sorted(p for p in out.iterdir() if p.name.startswith(f"{split}-") or p.name in (
        MANIFEST_NAME, BUILD_STATE_NAME, MANIFEST_NAME + ".tmp", BUILD_STATE_NAME + ".tmp"))


def _read_state(p: Path, out: Path) -> dict[str, Any]:
    """``source``, ``settings`` and ``plan_digest`` of a previous ``.build.json`` or manifest, as stored."""
    try:
        prev = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BuildError(f"{p} is not a UTF-8 JSON file ({type(e).__name__}: {e}); "
                         f"pass --overwrite to replace the build in {out}") from e
    except OSError as e:
        raise BuildError(f"cannot read {p}: {e}") from e
    if not isinstance(prev, dict):
        raise BuildError(f"{p} holds a JSON {type(prev).__name__}, not an object; "
                         f"pass --overwrite to replace the build in {out}")
    return {k: prev.get(k) for k in ("source", "settings", "plan_digest")}


def _differences(previous: dict[str, Any], state: dict[str, Any]) -> list[str]:
    diffs = []
    for section in ("source", "settings"):
        old, new = previous.get(section), state[section]
        if not isinstance(old, dict):
            diffs.append(f"{section} unreadable")
            continue
        prefix = "source." if section == "source" else ""
        for k in new:
            if old.get(k) != new[k]:
                diffs.append(f"{prefix}{k}: {old.get(k)!r} there, {new[k]!r} now")
    if not diffs and previous.get("plan_digest") != state["plan_digest"]:
        diffs.append("the source tables or files changed since")
    return diffs


def prepare_out(out: Path, build_state: BuildState, split: str, overwrite: bool) -> None:
    """Create OUT, or check that it holds a build of the same state (resume), or clear it (overwrite)."""
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    state = to_dict(build_state)
    previous = None
    for name in (BUILD_STATE_NAME, MANIFEST_NAME):
        p = out / name
        if p.is_file():
            try:
                previous = _read_state(p, out)
            except BuildError:
                if not overwrite:
                    raise
                previous = {"source": "unreadable"}
            break
    others = [p for p in out.iterdir() if p not in own_files(out, split)]
    if previous is not None and previous != state:
        if not overwrite:
            diffs = "; ".join(_differences(previous, state))
            raise BuildError(f"{out} already holds shards built differently ({diffs}); pass --overwrite to replace them")
        for p in own_files(out, split):
            p.unlink()
    elif previous is None and (others or own_files(out, split)):
        if not overwrite:
            raise BuildError(f"{out} is not empty and holds no shard build of split {split!r} "
                             f"(e.g. {sorted(p.name for p in out.iterdir())[:3]}); pass --overwrite to write there")
        for p in own_files(out, split):
            p.unlink()
    for p in out.glob(f"{split}-*.tmp"):
        p.unlink()
    write_json_atomic(out / BUILD_STATE_NAME, state)


def existing_entry(out: Path, shard: ShardJob) -> ShardEntry | None:
    """Manifest entry of an already complete shard (resume), or None."""
    tar_path, arrow_path, idx_path = shard_paths(out, shard.name)
    if not (tar_path.is_file() and arrow_path.is_file() and idx_path.is_file()):
        return None
    return shard_entry(shard, tar_path.stat().st_size, sha256_file(tar_path), arrow_path.stat().st_size,
                       sha256_file(arrow_path))
