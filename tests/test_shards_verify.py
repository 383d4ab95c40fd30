"""verify and info: a clean build passes; a truncated tar and a corrupted JPEG are reported by shard and key;
a manifest naming files outside its directory, or not a UTF-8 JSON object, is refused (exit code 2)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from shards.__main__ import main
from shards.info import shard_info
from shards.manifest import check_member_name
from shards.reader import ShardFormatError, read_manifest
from shards.verify import verify_shards


@pytest.fixture
def shard_copy(synth_shards, tmp_path) -> Path:
    dst = tmp_path / "mini_val"
    shutil.copytree(synth_shards["mini_val"], dst)
    return dst


def test_clean_build_verifies_deeply(shard_copy, capsys):
    assert verify_shards(shard_copy, deep=True) == []
    assert main(["verify", str(shard_copy), "--deep"]) == 0
    assert "OK" in capsys.readouterr().out


def test_truncated_tar_is_reported_with_its_shard(shard_copy, capsys):
    m = read_manifest(shard_copy)
    name = m.shards[-1].name
    tar = shard_copy / f"{name}.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    problems = verify_shards(shard_copy)
    assert problems and all(p.shard == name for p in problems)
    text = "\n".join(str(p) for p in problems)
    assert "sha256 does not match" in text and "bytes, manifest says" in text
    assert any("truncated" in p.message or "damaged" in p.message or "holds" in p.message for p in problems)
    assert main(["verify", str(shard_copy)]) == 1
    assert name in capsys.readouterr().out


def test_corrupted_jpeg_is_reported_with_its_key_by_deep_verify(shard_copy):
    m = read_manifest(shard_copy)
    name = m.shards[0].name
    lines = (shard_copy / f"{name}.idx").read_text().splitlines()
    fields = lines[2].split()  # second sample: "ext offset size name" x members
    ext, offset, key = fields[4], int(fields[5]), fields[7].split(".", 1)[0]
    assert ext == "cam_front_right.jpg"
    tar = shard_copy / f"{name}.tar"
    with open(tar, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * 64)  # wipe the JPEG header
    shallow = verify_shards(shard_copy)
    assert [p.key for p in shallow] == [""]  # checksum only
    deep = verify_shards(shard_copy, deep=True)
    bad = [p for p in deep if p.key == key]
    assert len(bad) == 1 and bad[0].shard == name and "cam_front_right.jpg does not decode" in bad[0].message


def test_missing_sidecar_and_member_are_reported(shard_copy):
    m = read_manifest(shard_copy)
    (shard_copy / m.shards[1].sidecar).unlink()
    problems = verify_shards(shard_copy)
    assert any(p.shard == m.shards[1].name and "missing file" in p.message for p in problems)


def test_info_counts_samples_scenes_clips_and_boxes(synth_shards, capsys):
    info = shard_info(synth_shards["mini_train"])
    assert (info["samples"], info["scenes"], info["clips"]) == (48, 8, 16)
    assert sum(info["boxes_per_class"].values()) == info["boxes"] > 0
    assert all(info["boxes_per_class"][c] > 0 for c in ("car", "pedestrian", "traffic_cone", "barrier"))
    assert main(["info", str(synth_shards["mini_train"])]) == 0
    out = capsys.readouterr().out
    assert "samples" in out and "48" in out and "pedestrian" in out


def _set_entry(shard_copy: Path, key: str, value: str) -> None:
    path = shard_copy / "manifest.json"
    m = json.loads(path.read_text())
    m["shards"][0][key] = value
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("key", ["tar", "sidecar", "index"])
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "url", "subdir"])
def test_verify_refuses_a_shard_name_outside_the_manifests_directory(shard_copy, tmp_path, capsys, key, kind):
    """A manifest entry naming ``../x.tar`` (here a faithful copy, so following it would verify clean), an
    absolute path, a URL or a sub-directory is refused, naming the entry, before any file is read."""
    real = getattr(read_manifest(shard_copy).shards[0], key)
    shutil.copy(shard_copy / real, tmp_path / real)
    name = {"dotdot": f"../{real}", "absolute": str(tmp_path / real), "url": f"http://127.0.0.1:9/{real}",
            "subdir": f"sub/{real}"}[kind]
    _set_entry(shard_copy, key, name)
    with pytest.raises(ShardFormatError, match=rf"shard file '{re.escape(name)}' is not a plain file name.*"
                                               rf"\(shards\[0\]\.{key}\)"):
        verify_shards(shard_copy)
    assert main(["verify", str(shard_copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: manifest {shard_copy / 'manifest.json'}: shard file {name!r}")
    assert main(["info", str(shard_copy)]) == 2


@pytest.mark.parametrize("name", ["x.tar", "mini_val-000000.arrow", "a+b=c-1_2.idx"])
def test_plain_names_pass_the_member_check(name):
    assert check_member_name(name, "m.json") == name


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b.tar", "a\\b.tar", "/x.tar", "C:x.tar",
                                  "s3://b/x.tar", "x.tar?y", "x%2e.tar", "x.tar#f", "x\n.tar", 3, None])
def test_unsafe_names_fail_the_member_check(name):
    with pytest.raises(ShardFormatError, match=r"manifest m\.json: shard file .* is not a plain file name"):
        check_member_name(name, "m.json")


@pytest.mark.parametrize("content", [b"[]", b"42", b"\xff\xfe\x00"], ids=["list", "number", "not-utf8"])
def test_verify_and_info_of_an_unreadable_manifest_exit_2(shard_copy, capsys, content):
    (shard_copy / "manifest.json").write_bytes(content)
    for cmd in ("verify", "info"):
        assert main([cmd, str(shard_copy)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: manifest {shard_copy / 'manifest.json'} is not ")
        assert ("UTF-8" in err) if content.startswith(b"\xff") else ("not a JSON object" in err)
