"""Each bad input to the builder gets a clear message naming what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shards.__main__ import main
from shards.build import BuildError, build_shards
from shards.synth import synthesize


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """scene-0061 (mini_train) and scene-0103 (mini_val), 2 keyframes, 64x36 images, no LiDAR files."""
    root = tmp_path_factory.mktemp("tiny") / "root"
    synthesize(root, "v1.0-mini", scenes=1, frames_per_scene=2, image_size=(64, 36), progress=False)
    return root


@pytest.fixture
def root_copy(tiny_root, tmp_path) -> Path:
    dst = tmp_path / "root"
    shutil.copytree(tiny_root, dst)
    return dst


def _build(root: Path, out: Path, split: str = "mini_train", version: str = "v1.0-mini", **kw) -> dict:
    return build_shards(root, version, split, out, progress=False, **kw)


def test_missing_dataroot(tmp_path):
    with pytest.raises(BuildError, match="dataroot not found: .*nowhere"):
        _build(tmp_path / "nowhere", tmp_path / "out")


def test_dataroot_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildError, match="dataroot is not a directory"):
        _build(tmp_path / "file", tmp_path / "out")


def test_unknown_version_lists_the_versions_found(tiny_root, tmp_path):
    with pytest.raises(BuildError, match=r"unknown version 'v1.0-trainval'.*found in the dataroot: v1.0-mini"):
        _build(tiny_root, tmp_path / "out", split="train", version="v1.0-trainval")


def test_unknown_split(tiny_root, tmp_path):
    with pytest.raises(BuildError, match=r"unknown split 'mini_test' \(known: .*mini_val"):
        _build(tiny_root, tmp_path / "out", split="mini_test")


def test_split_of_another_version(tiny_root, tmp_path):
    with pytest.raises(BuildError, match=r"split 'val' does not belong to version 'v1.0-mini'.*mini_train"):
        _build(tiny_root, tmp_path / "out", split="val")


def test_missing_table(root_copy, tmp_path):
    (root_copy / "v1.0-mini" / "sample_annotation.json").unlink()
    with pytest.raises(BuildError, match="table.* missing .*sample_annotation.json"):
        _build(root_copy, tmp_path / "out")


def test_missing_jpeg_is_named_or_skipped_and_recorded(root_copy, tmp_path):
    victim = sorted((root_copy / "samples" / "CAM_BACK").glob("*scene-0061*"))[1]
    victim.unlink()
    with pytest.raises(BuildError, match=f"missing on disk: .*{victim.name}.*--skip-missing"):
        _build(root_copy, tmp_path / "out")
    m = _build(root_copy, tmp_path / "out2", skip_missing=True)
    assert m["num_samples"] == 1
    assert m["skipped"] == [{"key": "scene-0061_0001", "sample_token": m["skipped"][0]["sample_token"],
                             "missing": [f"samples/CAM_BACK/{victim.name}"]}]


def test_missing_lidar_file_is_named(tiny_root, tmp_path):
    with pytest.raises(BuildError, match=r"missing on disk: .*LIDAR_TOP.*\.pcd\.bin"):
        _build(tiny_root, tmp_path / "out", lidar=True)


def test_corrupt_image_is_named(root_copy, tmp_path):
    victim = sorted((root_copy / "samples" / "CAM_FRONT").glob("*scene-0061*"))[0]
    victim.write_bytes(b"this is not a jpeg")
    with pytest.raises(BuildError, match=f"corrupt image .*{victim.name}"):
        _build(root_copy, tmp_path / "out")
    data = sorted((root_copy / "samples" / "CAM_FRONT").glob("*scene-0061*"))[1]
    data.write_bytes(data.read_bytes()[:200])  # truncated JPEG
    victim.unlink()
    with pytest.raises(BuildError, match="truncated JPEG"):
        _build(root_copy, tmp_path / "out2", skip_missing=True)


def test_out_built_with_other_settings_is_refused_unless_overwrite(tiny_root, tmp_path):
    out = tmp_path / "out"
    _build(tiny_root, out, clip_frames=2)
    with pytest.raises(BuildError, match=r"built differently \(clip_frames: 2 there, 1 now\).*--overwrite"):
        _build(tiny_root, out, clip_frames=1)
    m = _build(tiny_root, out, clip_frames=1, overwrite=True)
    assert m["settings"]["clip_frames"] == 1 and m["num_clips"] == 2


def test_foreign_out_directory_is_refused(tiny_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not empty"):
        _build(tiny_root, out)


def test_cli_prints_the_error_and_exits_2(tmp_path, capsys):
    rc = main(["build", "--dataroot", str(tmp_path / "missing"), "--version", "v1.0-mini", "--split", "mini_val",
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "error: dataroot not found" in capsys.readouterr().err


def test_bad_settings_are_named(tiny_root, tmp_path):
    with pytest.raises(BuildError, match="clip_frames must be >= 1"):
        _build(tiny_root, tmp_path / "out", clip_frames=0)
    with pytest.raises(BuildError, match="jpeg_quality"):
        _build(tiny_root, tmp_path / "out", resize=(32, 18), jpeg_quality=0)
