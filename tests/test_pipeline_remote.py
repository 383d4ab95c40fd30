"""Streaming from a real HTTP server and a real S3-compatible server (moto_server) on loopback gives the
same batches as local files; a server that resets connections mid-shard is survived."""

from __future__ import annotations

import io

import pytest
import torch

from pipeline import LoaderConfig, build_loader
from pipeline.urls import IOOptions, RangeReader, open_stream, read_bytes
from tests.servers import TEST_S3_CREDENTIALS, http_server, s3_server

BASE = dict(mode="eval", batch_size=3, offsets=(-1, 0), image_size=(32, 80), num_workers=2)


def _run(shards, **kw) -> list:
    return list(build_loader(LoaderConfig(shards=shards, **{**BASE, **kw})))


def _same(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.sample_token == y.sample_token
        assert torch.equal(x.imgs, y.imgs)
        assert torch.equal(x.ego2img, y.ego2img)
        assert all(torch.equal(p, q) for p, q in zip(x.gt_boxes, y.gt_boxes))


@pytest.fixture(scope="module")
def local_batches(synth_shards):
    return _run(str(synth_shards["mini_val"]))


def test_http_stream_equals_local(synth_shards, local_batches):
    with http_server(synth_shards["mini_val"]) as url:
        _same(_run(f"{url}/manifest.json"), local_batches)


def test_http_reset_mid_shard_is_survived(synth_shards, local_batches, caplog):
    with http_server(synth_shards["mini_val"], reset_after_bytes=70_000) as url:
        tars = sorted(p.name for p in synth_shards["mini_val"].glob("*.tar"))
        # num_workers=0 so the retry warnings are logged in this process
        _same(_run([f"{url}/{t}" for t in tars], num_workers=0, retry_backoff=0.01), local_batches)
    assert any("retrying" in r.getMessage() for r in caplog.records)


def test_range_reader_resumes_from_last_offset(synth_shards):
    tar = sorted(synth_shards["mini_val"].glob("*.tar"))[0]
    data = tar.read_bytes()
    with http_server(synth_shards["mini_val"], reset_after_bytes=12_345) as url:
        f = open_stream(f"{url}/{tar.name}", IOOptions(retry_backoff=0.01))
        got = f.read()
        assert got == data
        raw = f.raw
        assert isinstance(raw, RangeReader) and raw.retries >= 1


def test_http_error_is_clear(synth_shards):
    with http_server(synth_shards["mini_val"]) as url:
        with pytest.raises(OSError, match="404|Not Found|not found"):
            read_bytes(f"{url}/missing.arrow", IOOptions(max_retries=1, retry_backoff=0.01))


def test_s3_stream_equals_local(synth_shards, local_batches, monkeypatch):
    for k, v in TEST_S3_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    with s3_server(synth_shards["mini_val"]) as (endpoint, bucket):
        _same(_run(f"s3://{bucket}/manifest.json", s3_endpoint_url=endpoint), local_batches)
        tars = sorted(p.name for p in synth_shards["mini_val"].glob("*.tar"))
        body = io.BytesIO(bytes(read_bytes(f"s3://{bucket}/{tars[0]}", IOOptions(s3_endpoint_url=endpoint))))
        assert body.getvalue() == (synth_shards["mini_val"] / tars[0]).read_bytes()


def test_shard_replaced_mid_read_is_detected_with_if_range(synth_shards, tmp_path):
    """A resumed read sends If-Range with the first response's ETag: a shard replaced between the
    first response and the resume is an error naming the URL, never old and new bytes spliced."""
    import os
    import shutil

    root = tmp_path / "srv"
    shutil.copytree(synth_shards["mini_val"], root)
    tar = sorted(root.glob("*.tar"))[0]
    data = tar.read_bytes()
    with http_server(root, reset_after_bytes=40_000) as url:
        raw = RangeReader(f"{url}/{tar.name}", _opener(f"{url}/{tar.name}"), max_retries=3, backoff=0.01)
        head = raw.read(1000)
        assert head == data[:1000]
        new = bytes(reversed(data))  # same size, other bytes, a new file (new inode and ETag)
        (root / "tmp.tar").write_bytes(new)
        os.replace(root / "tmp.tar", tar)
        with pytest.raises(OSError, match=f"{tar.name}.*changed while it was read"):
            while raw.read(1 << 16):
                pass


def test_range_reply_from_another_byte_is_refused(synth_shards):
    """A 206 whose Content-Range starts elsewhere than the byte asked for is refused, naming the URL."""
    tar = sorted(synth_shards["mini_val"].glob("*.tar"))[0]
    with http_server(synth_shards["mini_val"], reset_after_bytes=30_000, range_skew=512) as url:
        f = open_stream(f"{url}/{tar.name}", IOOptions(retry_backoff=0.01))
        with pytest.raises(OSError, match=f"{tar.name}.*Content-Range.*starts at"):
            f.read()


def _opener(url: str):
    from pipeline.urls import _http_opener

    return _http_opener(url, 10.0)


def _write_manifest(path, edit) -> None:
    import json

    m = json.loads(path.read_text())
    edit(m["shards"])
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("entry", ["/etc/passwd.tar", "../mini_train/x.tar", "file:///etc/x.tar",
                                   "http://169.254.169.254/latest.tar", "sub/x.tar", "pipe:cat x.tar"])
def test_remote_manifest_cannot_point_elsewhere(synth_shards, tmp_path, entry):
    """Manifest entries are plain names in the manifest's directory; anything else is refused by
    name (entry and manifest), over HTTP as locally."""
    import shutil

    from pipeline.urls import ShardURLError, expand_shard_urls

    root = tmp_path / "srv"
    shutil.copytree(synth_shards["mini_val"], root)

    def edit(shards):
        shards[0]["tar"] = entry

    _write_manifest(root / "manifest.json", edit)
    with pytest.raises(ShardURLError, match="manifest .*manifest.json.*not a plain file name"):
        expand_shard_urls(str(root))
    with http_server(root) as url:
        with pytest.raises(ShardURLError, match=f"{url}/manifest.json.*{entry[:8]}"):
            expand_shard_urls(f"{url}/manifest.json")


def test_manifest_sidecar_entry_is_checked(synth_shards, tmp_path):
    import shutil

    from pipeline.urls import ShardURLError, expand_shard_urls

    root = tmp_path / "srv"
    shutil.copytree(synth_shards["mini_val"], root)

    def edit(shards):
        shards[0]["sidecar"] = "/tmp/x.arrow"

    _write_manifest(root / "manifest.json", edit)
    with pytest.raises(ShardURLError, match="/tmp/x.arrow"):
        expand_shard_urls(str(root))


def test_unreachable_remote_shards_give_a_clear_error():
    """Shard URLs on a host that does not answer: a LoaderError naming the URL, not a traceback."""
    import socket

    from pipeline import LoaderError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    for shards in (f"http://127.0.0.1:{port}/mini_val-{{000000..000001}}.tar",
                   f"http://127.0.0.1:{port}/manifest.json"):
        with pytest.raises(LoaderError, match=f"127.0.0.1:{port}/(mini_val-000000.arrow|manifest.json)"):
            build_loader(LoaderConfig(shards=shards, max_retries=1, retry_backoff=0.01, **{
                k: v for k, v in BASE.items() if k != "num_workers"}))


def test_tampered_remote_shard_is_a_counted_fault_by_default(synth_shards, tmp_path, caplog):
    """Remote shards listed by a manifest are checked against its sha256 by default: a tar whose
    bytes changed (two cameras' JPEGs swapped: same members, other pixels) yields none of its
    samples, and they are counted and named."""
    import logging
    import shutil

    root = tmp_path / "srv"
    shutil.copytree(synth_shards["mini_val"], root)
    tar = sorted(root.glob("*.tar"))[0]
    _swap_two_jpegs(tar)
    with http_server(root) as url, caplog.at_level(logging.WARNING, logger="pipeline"):
        loader = build_loader(LoaderConfig(shards=f"{url}/manifest.json", **{**BASE, "num_workers": 0,
                                                                            "max_error_rate": 0.9}))
        batches = list(loader)
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    assert f"{tar.name}: sha256" in msgs
    errors = sum(e for e, _ in loader.error_stats.values())
    n_tar = _count_samples(tar)
    assert errors == n_tar > 0
    assert sum(len(b.sample_token) for b in batches) == _count_samples_dir(root) - n_tar


def _swap_two_jpegs(tar) -> None:
    import io
    import tarfile

    with tarfile.open(tar) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf if ti.isfile()]
    jpgs = [i for i, (ti, _) in enumerate(members) if ti.name.endswith("cam_front.jpg")]
    a, b = jpgs[0], jpgs[1]
    members[a], members[b] = (members[a][0], members[b][1]), (members[b][0], members[a][1])
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for ti, data in members:
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def _count_samples(tar) -> int:
    import tarfile

    with tarfile.open(tar) as tf:
        return len({m.name.split(".", 1)[0] for m in tf if m.isfile()})


def _count_samples_dir(root) -> int:
    return sum(_count_samples(t) for t in root.glob("*.tar"))
