"""Reader API: samples from a path or a stream, sidecars from a path or bytes, manifest errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from shards.reader import (
    ShardFormatError,
    iter_shard,
    open_sidecar,
    read_manifest,
    sample_matrices,
    split_member,
)
from shards.schema import CAMERA_MEMBERS, SIDECAR_SCHEMA, camera_member, sample_key


def test_iter_shard_from_path_and_from_stream_agree(synth_shards):
    tar = sorted(synth_shards["mini_train"].glob("*.tar"))[0]
    from_path = list(iter_shard(tar))
    with open(tar, "rb") as f:
        from_stream = list(iter_shard(f, sidecar=tar.with_suffix(".arrow").read_bytes()))
    assert [s.key for s in from_path] == [s.key for s in from_stream]
    assert all(a.members == b.members and a.meta == b.meta for a, b in zip(from_path, from_stream))
    s = from_path[0]
    assert list(s.members) == list(CAMERA_MEMBERS)
    assert s.meta["key"] == s.key and len(s.meta["cameras"]) == 6
    with open(tar, "rb") as f:
        assert next(iter_shard(f)).meta == {}  # a stream without a sidecar has no metadata


def test_sample_matrices_shapes(synth_shards):
    s = next(iter_shard(sorted(synth_shards["mini_val"].glob("*.tar"))[0]))
    m = sample_matrices(s.meta)
    assert m["ego2global"].shape == (4, 4) and m["intrinsics"].shape == (6, 3, 3)
    assert m["ego2img"].shape == (6, 4, 4) and m["cam2ego"].shape == (6, 4, 4)
    np.testing.assert_allclose(m["ego2global"][3], [0, 0, 0, 1])


def test_open_sidecar_is_memory_mapped_and_checks_version(synth_shards, tmp_path):
    arrow = sorted(synth_shards["mini_val"].glob("*.arrow"))[0]
    t = open_sidecar(arrow)
    assert t.schema.equals(SIDECAR_SCHEMA)
    bad = SIDECAR_SCHEMA.with_metadata({b"bevstream.schema_version": b"999"})
    with pa.OSFile(str(tmp_path / "bad.arrow"), "wb") as sink, pa.ipc.new_file(sink, bad) as w:
        w.write_table(t.replace_schema_metadata(bad.metadata))
    with pytest.raises(ShardFormatError, match="schema version"):
        open_sidecar(tmp_path / "bad.arrow")
    with pytest.raises(ShardFormatError, match="cannot read sidecar"):
        open_sidecar(b"not arrow")


def test_read_manifest_errors(synth_shards, tmp_path):
    assert read_manifest(synth_shards["mini_val"]).source.split == "mini_val"
    with pytest.raises(ShardFormatError, match="manifest not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ShardFormatError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 0}))
    with pytest.raises(ShardFormatError, match="schema version"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ShardFormatError, match="is not a JSON object"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff{}")
    with pytest.raises(ShardFormatError, match="is not UTF-8"):
        read_manifest(tmp_path)


def test_read_manifest_is_strict_about_keys(synth_shards, tmp_path):
    m = json.loads((synth_shards["mini_val"] / "manifest.json").read_text())
    m["shards"][0]["extra"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardFormatError, match=r"manifest .*manifest.json: unknown config key 'shards\[0\].extra'"):
        read_manifest(tmp_path)
    del m["shards"][0]["extra"], m["num_boxes"]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardFormatError, match="missing required config key 'num_boxes'"):
        read_manifest(tmp_path)


def test_names():
    assert camera_member("CAM_BACK_LEFT") == "cam_back_left.jpg"
    assert sample_key("scene-0061", 7) == "scene-0061_0007"
    assert split_member("scene-0061_0007.cam_front.jpg") == ("scene-0061_0007", "cam_front.jpg")
    with pytest.raises(ValueError):
        camera_member("CAM_TOP")
    with pytest.raises(ValueError):
        sample_key("scene.1", 0)
