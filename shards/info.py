"""``python -m shards info OUT``: what a shard directory holds (samples, scenes, clips, boxes, bytes)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.compute as pc

from shards.conventions import CLASSES
from shards.reader import open_sidecar, read_manifest
from shards.typed_config import to_dict


def shard_info(out: Path | str) -> dict:
    """Summary of ``out``: counts from the manifest, boxes per class from the sidecars."""
    out = Path(out)
    m = read_manifest(out)
    per_class: Counter[str] = Counter()
    scenes: set[str] = set()
    for e in m.shards:
        t = open_sidecar(out / e.sidecar)
        scenes.update(t.column("scene_name").to_pylist())
        labels = pc.list_flatten(t.column("gt_labels")).to_numpy(zero_copy_only=False)
        for lab, n in Counter(labels.tolist()).items():
            per_class[CLASSES[lab] if lab >= 0 else "(other categories)"] += n
    return {
        "source": to_dict(m.source), "settings": to_dict(m.settings), "shards": m.num_shards,
        "samples": m.num_samples, "scenes": len(scenes), "clips": m.num_clips, "boxes": sum(per_class.values()),
        "boxes_per_class": {c: per_class.get(c, 0) for c in (*CLASSES, "(other categories)")},
        "tar_bytes": sum(e.bytes for e in m.shards),
        "sidecar_bytes": sum(e.sidecar_bytes for e in m.shards), "skipped": len(m.skipped),
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def format_info(info: dict) -> str:
    """A readable two-column table of :func:`shard_info`."""
    src, st = info["source"], info["settings"]
    rows = [
        ("source", f"{src['version']} / {src['split']} ({src['dataroot']})"),
        ("settings", ", ".join(f"{k}={v}" for k, v in st.items())),
        ("shards", f"{info['shards']:,}"),
        ("samples", f"{info['samples']:,}"),
        ("scenes", f"{info['scenes']:,}"),
        ("clips", f"{info['clips']:,}"),
        ("skipped samples", f"{info['skipped']:,}"),
        ("tar bytes", _mb(info["tar_bytes"])),
        ("sidecar bytes", _mb(info["sidecar_bytes"])),
        ("boxes", f"{info['boxes']:,}"),
    ]
    rows += [(f"  {c}", f"{n:,}") for c, n in info["boxes_per_class"].items()]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
