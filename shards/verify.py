"""``python -m shards verify OUT [--deep]``: check a shard directory against its manifest.

Checks, per shard: the tar, sidecar and index exist; sizes and sha256 match the
manifest; the tar parses; every sample has the six camera members (and the LiDAR
member when built with it); the sidecar has one row per sample, in tar order, with
the same key; the DALI index matches the tar's offsets. ``--deep`` also decodes
every JPEG and loads every point cloud. Each problem names the shard and key. A manifest that
cannot be read, or that names a shard file outside its own directory (``../x.tar``, an absolute
path, a URL), is refused with :class:`~shards.errors.ShardFormatError` before any file is opened.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from shards.reader import ShardFormatError, load_points, open_sidecar, read_manifest, split_member
from shards.schema import CAMERA_MEMBERS, LIDAR_MEMBER


@dataclass(frozen=True)
class Problem:
    """One finding: the shard, the sample key ("" when shard-wide) and what is wrong."""

    shard: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.shard}" + (f" [{self.key}]" if self.key else "")
        return f"{where}: {self.message}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _tar_entries(path: Path, problems: list[Problem], shard: str):
    """Yield ``(name, data_offset, size, bytes)`` of a tar's regular files; damage is reported, not raised."""
    import tarfile

    last = ""
    try:
        with tarfile.open(path, mode="r:") as tf:
            for ti in tf:
                if not ti.isfile():
                    continue
                f = tf.extractfile(ti)
                data = f.read() if f is not None else b""
                if len(data) != ti.size:
                    key = ti.name.split(".", 1)[0]
                    problems.append(Problem(shard, key, f"member {ti.name} truncated ({len(data)} of {ti.size} bytes)"))
                    return
                last = ti.name.split(".", 1)[0]
                yield ti.name, ti.offset_data, ti.size, data
    except (tarfile.TarError, EOFError, OSError) as e:
        problems.append(Problem(shard, last, f"tar damaged after this sample: {e}" if last else f"tar damaged: {e}"))


def _check_index(path: Path, samples: list[tuple[str, list]], problems: list[Problem], shard: str) -> None:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        problems.append(Problem(shard, "", f"index {path.name} unreadable: {e}"))
        return
    if not lines or lines[0].split()[:1] != ["v1.2"] or len(lines[0].split()) != 2:
        problems.append(Problem(shard, "", f"index {path.name} lacks the 'v1.2 <count>' header"))
        return
    if int(lines[0].split()[1]) != len(samples) or len(lines) - 1 != len(samples):
        problems.append(Problem(shard, "", f"index {path.name} lists {lines[0].split()[1]} samples, "
                                           f"the tar holds {len(samples)}"))
        return
    for line, (key, comps) in zip(lines[1:], samples):
        want = " ".join(f"{ext} {off} {size} {name}" for name, ext, off, size in comps)
        if line != want:
            problems.append(Problem(shard, key, f"index {path.name} entry does not match the tar"))


def verify_shards(out: Path | str, deep: bool = False, progress: bool = False) -> list[Problem]:
    """Check the shard directory ``out``; return every problem found (empty: all good).

    Raises:
        ShardFormatError: the manifest is missing or unreadable, or names a file outside ``out``.
    """
    out = Path(out)
    manifest = read_manifest(out)
    lidar = manifest.settings.lidar
    problems: list[Problem] = []
    for entry in tqdm(manifest.shards, desc="verify", unit="shard", disable=not progress):
        name = entry.name
        tar, arrow, idx = out / entry.tar, out / entry.sidecar, out / entry.index
        for p in (tar, arrow, idx):
            if not p.is_file():
                problems.append(Problem(name, "", f"missing file {p.name}"))
        if not (tar.is_file() and arrow.is_file()):
            continue
        if tar.stat().st_size != entry.bytes:
            problems.append(Problem(name, "", f"{tar.name} has {tar.stat().st_size} bytes, manifest says "
                                              f"{entry.bytes}"))
        if _sha256(tar) != entry.sha256:
            problems.append(Problem(name, "", f"{tar.name} sha256 does not match the manifest"))
        if _sha256(arrow) != entry.sidecar_sha256:
            problems.append(Problem(name, "", f"{arrow.name} sha256 does not match the manifest"))

        # samples of the tar, grouped by key in order
        samples: list[tuple[str, list]] = []
        for mname, off, size, data in _tar_entries(tar, problems, name):
            try:
                key, ext = split_member(mname)
            except ShardFormatError as e:
                problems.append(Problem(name, "", str(e)))
                continue
            if not samples or samples[-1][0] != key:
                samples.append((key, []))
            samples[-1][1].append((mname, ext, off, size))
            if deep:
                _deep_check(name, key, ext, data, problems)
        want = set(CAMERA_MEMBERS) | ({LIDAR_MEMBER} if lidar else set())
        for key, comps in samples:
            have = {c[1] for c in comps}
            if have != want:
                lacking, extra = sorted(want - have), sorted(have - want)
                msg = (f"lacks {', '.join(lacking)}" if lacking else "") + \
                      ("; " if lacking and extra else "") + (f"unexpected {', '.join(extra)}" if extra else "")
                problems.append(Problem(name, key, msg))
        if len(samples) != entry.samples:
            problems.append(Problem(name, "", f"tar holds {len(samples)} samples, manifest says {entry.samples}"))

        try:
            keys = open_sidecar(arrow).column("key").to_pylist()
        except ShardFormatError as e:
            problems.append(Problem(name, "", str(e)))
            continue
        tar_keys = [k for k, _ in samples]
        for i, (tk, rk) in enumerate(zip(tar_keys, keys)):
            if tk != rk:
                problems.append(Problem(name, tk, f"sidecar row {i} has key {rk!r}, the tar sample is {tk!r}"))
        for tk in tar_keys[len(keys):]:
            problems.append(Problem(name, tk, "no sidecar row for this sample"))
        for rk in keys[len(tar_keys):]:
            problems.append(Problem(name, rk, "sidecar row without a sample in the tar"))
        if idx.is_file():
            _check_index(idx, samples, problems, name)
    return problems


def _deep_check(shard: str, key: str, ext: str, data: bytes, problems: list[Problem]) -> None:
    from PIL import Image

    if ext.endswith(".jpg"):
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.format != "JPEG":
                    raise OSError(f"format is {im.format}")
                im.load()
        except (OSError, SyntaxError, ValueError) as e:
            problems.append(Problem(shard, key, f"{ext} does not decode: {e}"))
    elif ext == LIDAR_MEMBER:
        try:
            load_points(data)
        except (ValueError, OSError) as e:
            problems.append(Problem(shard, key, f"{ext} does not load: {e}"))
