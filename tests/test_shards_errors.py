"""Each bad input to the builder gets a clear message naming what is wrong."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from shards.__main__ import main
from shards.build import BuildError, build_shards
from shards.manifest import Manifest, SkippedSample
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


def _build(root: Path, out: Path, split: str = "mini_train", version: str = "v1.0-mini", **kw) -> Manifest:
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
    assert m.num_samples == 1
    assert m.skipped == [SkippedSample(key="scene-0061_0001", sample_token=m.skipped[0].sample_token,
                                       missing=[f"samples/CAM_BACK/{victim.name}"])]


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
    assert m.settings.clip_frames == 1 and m.num_clips == 2


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


# --------------------------------------------------------------------------- files outside the dataroot


def _point_sample_data_at(root: Path, channel: str, filename: str) -> str:
    """Set the filename of scene-0061's first ``channel`` sample_data row; return that row's token."""
    table = root / "v1.0-mini" / "sample_data.json"
    rows = json.loads(table.read_text())
    row = next(r for r in rows if f"scene-0061__{channel}__" in r["filename"])
    row["filename"] = filename
    table.write_text(json.dumps(rows))
    return row["token"]


def _outside_jpeg(root: Path) -> Path:
    """A valid JPEG beside the dataroot (a copy of one of its images)."""
    src = sorted((root / "samples" / "CAM_FRONT").glob("*scene-0061*"))[0]
    dst = root.parent / "outside.jpg"
    shutil.copy(src, dst)
    return dst


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "directory-symlink"])
def test_camera_file_outside_the_dataroot_is_refused(root_copy, tmp_path, how):
    outside = _outside_jpeg(root_copy)
    if how == "dotdot":
        name = "samples/CAM_FRONT/../../../outside.jpg"
    elif how == "absolute":
        name = str(outside)
    elif how == "symlink":
        (root_copy / "samples" / "CAM_FRONT" / "link.jpg").symlink_to(outside)
        name = "samples/CAM_FRONT/link.jpg"
    else:
        (root_copy / "samples" / "elsewhere").symlink_to(outside.parent, target_is_directory=True)
        name = "samples/elsewhere/outside.jpg"
    token = _point_sample_data_at(root_copy, "CAM_FRONT", name)
    with pytest.raises(BuildError, match=rf"sample_data {token} \(CAM_FRONT of sample scene-0061_0000\): "
                                         rf"filename '{re.escape(name)}' (leaves the dataroot|is an absolute path)"):
        _build(root_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused while planning, before anything is written


def test_symlink_inside_the_dataroot_is_followed(root_copy, tmp_path):
    src = sorted((root_copy / "samples" / "CAM_FRONT").glob("*scene-0061*"))[0]
    (root_copy / "samples" / "CAM_FRONT" / "link.jpg").symlink_to(src)
    _point_sample_data_at(root_copy, "CAM_FRONT", "samples/CAM_FRONT/link.jpg")
    assert _build(root_copy, tmp_path / "out").num_samples == 2


def test_lidar_file_outside_the_dataroot_is_refused(root_copy, tmp_path):
    np.zeros((10, 5), dtype=np.float32).tofile(root_copy.parent / "outside.pcd.bin")
    token = _point_sample_data_at(root_copy, "LIDAR_TOP", "../outside.pcd.bin")
    with pytest.raises(BuildError, match=rf"sample_data {token} \(LIDAR_TOP of sample scene-0061_0000\): "
                                         r"filename '../outside.pcd.bin' leaves the dataroot"):
        _build(root_copy, tmp_path / "out", lidar=True, skip_missing=True)


# --------------------------------------------------------------------------- the output directory


def _cli_build(root: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--dataroot", str(root), "--version", "v1.0-mini", "--split", "mini_train", "--out", str(out),
            *extra]


def test_out_that_is_a_file_exits_2(tiny_root, tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert main(_cli_build(tiny_root, tmp_path / "out")) == 2
    assert f"error: --out {tmp_path / 'out'}: {tmp_path / 'out'} exists and is not a directory" in \
        capsys.readouterr().err
    assert main(_cli_build(tiny_root, tmp_path / "out" / "sub")) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("name", [".build.json", "manifest.json"])
@pytest.mark.parametrize("content", [b"[1, 2]", b'"text"', b"\xff\xfe{}"], ids=["list", "string", "not-utf8"])
def test_unreadable_build_state_exits_2_and_overwrite_replaces_it(tiny_root, tmp_path, capsys, name, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    assert main(_cli_build(tiny_root, out)) == 2
    err = capsys.readouterr().err
    assert f"error: {out / name} " in err and "--overwrite" in err and "Traceback" not in err
    assert ("not a UTF-8 JSON file" in err) if content.startswith(b"\xff") else ("not an object" in err)
    assert main(_cli_build(tiny_root, out, "--overwrite")) == 0
    assert json.loads((out / ".build.json").read_text())["source"]["split"] == "mini_train"
