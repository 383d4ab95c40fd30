"""Faults: truncated tar, corrupt JPEG, missing camera member, sidecar key mismatch. Bad samples are
skipped, counted and logged with shard and key; no wrong image is ever yielded; above
max_error_rate the loader stops with a clear error."""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from pipeline import LoaderConfig, build_loader
from pipeline.faults import LoaderError

BASE = dict(mode="eval", batch_size=2, offsets=(0,), image_size=(32, 80), num_workers=0)


def _run(shards: Path, **kw) -> tuple[list, object]:
    loader = build_loader(LoaderConfig(shards=str(shards), **{**BASE, **kw}))
    return list(loader), loader


@pytest.fixture(scope="module")
def clean(synth_shards):
    batches, _ = _run(synth_shards["mini_val"])
    return {t: b.imgs[i] for b in batches for i, t in enumerate(b.sample_token)}


@pytest.fixture
def shards(synth_shards, tmp_path) -> Path:
    out = tmp_path / "mini_val"
    shutil.copytree(synth_shards["mini_val"], out)
    return out


def _rewrite_tar(path: Path, edit) -> None:
    with tarfile.open(path) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf if ti.isfile()]
    members = edit(members)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for ti, data in members:
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def _check_no_wrong_images(batches, clean) -> list[str]:
    toks = [t for b in batches for t in b.sample_token]
    for b in batches:
        for i, t in enumerate(b.sample_token):
            assert torch.equal(b.imgs[i], clean[t]), f"wrong image for {t}"
    return toks


def _first_tar(d: Path) -> Path:
    return sorted(d.glob("*.tar"))[0]


def test_truncated_tar_skips_the_rest_of_the_shard(shards, clean, caplog):
    tar = _first_tar(shards)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        batches, loader = _run(shards, max_error_rate=0.6)
    toks = _check_no_wrong_images(batches, clean)
    assert 0 < len(toks) < len(clean)
    errors = sum(e for e, _ in loader.error_stats.values())
    assert errors == len(clean) - len(toks)
    assert any(tar.name in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)


def test_corrupt_jpeg_and_missing_member_are_skipped(shards, clean, caplog):
    tar = _first_tar(shards)
    bad = {}

    def edit(members):
        out = []
        for ti, data in members:
            key, ext = ti.name.split(".", 1)
            if ext == "cam_back.jpg" and "corrupt" not in bad:
                bad["corrupt"] = key
                data = data[:200] + bytes(len(data) - 200)  # header kept, entropy data zeroed... then cut
                data = data[: len(data) // 3]
            elif ext == "cam_front_left.jpg" and "corrupt" in bad and key != bad["corrupt"] and "missing" not in bad:
                bad["missing"] = key
                continue
            out.append((ti, data))
        return out

    _rewrite_tar(tar, edit)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        batches, loader = _run(shards, max_error_rate=0.5)
    toks = _check_no_wrong_images(batches, clean)
    assert len(toks) == len(clean) - 2
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    assert bad["corrupt"] in msgs and "CAM_BACK" in msgs and tar.name in msgs
    assert bad["missing"] in msgs and "cam_front_left.jpg" in msgs
    assert sum(e for e, _ in loader.error_stats.values()) == 2


def test_sidecar_key_mismatch_is_skipped(shards, clean, caplog):
    side = sorted(shards.glob("*.arrow"))[0]
    t = pa.ipc.open_file(pa.BufferReader(side.read_bytes())).read_all()  # not mmapped: rewritten below
    keys = t.column("key").to_pylist()
    wrong = keys[1]
    keys[1] = wrong + "x"
    t = t.set_column(t.schema.get_field_index("key"), "key", pa.array(keys))
    with pa.OSFile(str(side), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        batches, loader = _run(shards, max_error_rate=0.5)
    toks = _check_no_wrong_images(batches, clean)
    assert len(toks) == len(clean) - 1
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    assert wrong in msgs and "no sidecar row" in msgs


def test_too_many_errors_stop_the_loader(shards):
    for tar in sorted(shards.glob("*.tar")):
        data = tar.read_bytes()
        tar.write_bytes(data[: len(data) // 3])
    with pytest.raises(LoaderError, match="too many bad samples"):
        _run(shards, max_error_rate=0.05, error_grace=4)
