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


def _rewrite_sidecar(side: Path, edit) -> None:
    t = pa.ipc.open_file(pa.BufferReader(side.read_bytes())).read_all()  # not mmapped: rewritten below
    t = edit(t)
    with pa.OSFile(str(side), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)


def test_duplicate_sidecar_keys_are_refused(shards):
    """Two rows with one key (the last used to win silently): the sidecar is refused, naming it and the key."""
    side = sorted(shards.glob("*.arrow"))[0]
    keys = []

    def edit(t):
        keys.extend(t.column("key").to_pylist())
        dup = keys[:2] + [keys[1]] + keys[3:]
        return t.set_column(t.schema.get_field_index("key"), "key", pa.array(dup))

    _rewrite_sidecar(side, edit)
    with pytest.raises(LoaderError, match=f"{side.name}.*{keys[1]}.*rows 1 and 2"):
        _run(shards)


def test_sidecar_rows_out_of_tar_order_are_bad_samples(shards, clean, caplog):
    """Sidecar rows must follow the tar: a tar sample that comes after a later row is counted and named."""
    side = sorted(shards.glob("*.arrow"))[0]
    keys = []

    def edit(t):
        keys.extend(t.column("key").to_pylist())
        order = [0, 2, 1] + list(range(3, t.num_rows))
        return t.take(order)

    _rewrite_sidecar(side, edit)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        batches, loader = _run(shards, max_error_rate=0.5)
    toks = _check_no_wrong_images(batches, clean)
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    assert f"tar sample {keys[2]!r} is out of the sidecar's row order" in msgs and side.stem in msgs
    assert sum(e for e, _ in loader.error_stats.values()) == 1
    assert len(toks) == len(clean) - 1


def test_nonfinite_sidecar_boxes_are_bad_samples(shards, clean, caplog):
    """NaN/inf in gt_boxes (which the matcher and losses would swallow) make the sample bad: skipped,
    counted and named; the other samples are untouched."""
    side = sorted(shards.glob("*.arrow"))[0]
    hit = {}

    def edit(t):
        boxes = t.column("gt_boxes").to_pylist()
        i = next(r for r, b in enumerate(boxes) if b)
        boxes[i][0][3] = float("nan")
        j = next(r for r, b in enumerate(boxes) if b and r > i)
        boxes[j][-1][0] = float("inf")
        hit["keys"] = [t.column("key")[i].as_py(), t.column("key")[j].as_py()]
        col = pa.array(boxes, type=t.schema.field("gt_boxes").type)
        return t.set_column(t.schema.get_field_index("gt_boxes"), t.schema.field("gt_boxes"), col)

    _rewrite_sidecar(side, edit)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        batches, loader = _run(shards, max_error_rate=0.5)
    toks = _check_no_wrong_images(batches, clean)
    assert len(toks) == len(clean) - 2
    assert all(torch.isfinite(b).all() for batch in batches for b in batch.gt_boxes)
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    for k in hit["keys"]:
        assert f"sample {k!r} has non-finite values in gt_boxes" in msgs
    assert sum(e for e, _ in loader.error_stats.values()) == 2


def test_verify_checksums_catches_swapped_jpegs(shards, clean, caplog):
    """Swapped JPEG bytes pass every structural check (images paired with another sample's boxes);
    verify_checksums skips the whole mismatching shard (counted, named) and leaves the others."""
    tar = _first_tar(shards)

    def edit(members):
        jpgs = [i for i, (ti, _) in enumerate(members) if ti.name.endswith("cam_front.jpg")]
        a, b = jpgs[0], jpgs[1]
        members[a], members[b] = (members[a][0], members[b][1]), (members[b][0], members[a][1])
        return members

    _rewrite_tar(tar, edit)
    unchecked, _ = _run(shards)  # local shards are not verified by default: the swap goes through
    assert any(not torch.equal(b.imgs[i], clean[t]) for b in unchecked for i, t in enumerate(b.sample_token))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        batches, loader = _run(shards, verify_checksums=True, max_error_rate=0.9)
    toks = _check_no_wrong_images(batches, clean)
    with tarfile.open(tar) as tf:
        n_tar = len({m.name.split(".", 1)[0] for m in tf if m.isfile()})
    assert len(toks) == len(clean) - n_tar
    assert sum(e for e, _ in loader.error_stats.values()) == n_tar
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    assert f"{tar.name}: sha256" in msgs and "differs from the manifest's" in msgs


def test_verify_checksums_needs_a_manifest(shards):
    tars = [str(t) for t in sorted(shards.glob("*.tar"))]
    with pytest.raises(LoaderError, match="no sha256 is known"):
        build_loader(LoaderConfig(shards=tars, verify_checksums=True, **BASE))
